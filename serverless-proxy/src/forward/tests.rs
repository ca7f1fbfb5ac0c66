use std::net::SocketAddr;

use http::header::HeaderName;

use super::headers::{add_forwarded, strip_hop_by_hop, upgrade_protocol, PresentHeaders};
use super::*;

fn empty() -> ReqBody {
    http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}

#[test]
fn hop_by_hop_headers_are_removed() {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("close, x-secret"),
    );
    h.insert("x-secret", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(header::TE, HeaderValue::from_static("trailers, gzip"));
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    h.insert("x-kept", HeaderValue::from_static("yes"));
    strip_hop_by_hop(&mut h);
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(h[header::TE], "trailers");
}

#[test]
fn forwarded_headers_append() {
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    h.insert(header::HOST, HeaderValue::from_static("hello.localhost"));
    let present = PresentHeaders::scan(&h);
    add_forwarded(
        &mut h,
        ClientInfo {
            addr: "[::1]:5000".parse().unwrap(),
            tls: false,
        },
        &present,
    );
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h[header::FORWARDED],
        "for=\"[::1]\";proto=http;host=\"hello.localhost\""
    );
}

#[test]
fn forwarding_values_reused_only_for_the_same_client_and_host() {
    // Each row follows the one before it, so a value kept from the last request would
    // show up wrong in the next.
    let rows = [
        ("192.0.2.1:1000", false, Some("a.localhost")),
        ("192.0.2.1:1001", false, Some("a.localhost")),
        ("192.0.2.2:1000", false, Some("a.localhost")),
        ("192.0.2.2:1000", true, Some("a.localhost")),
        ("192.0.2.2:1000", true, Some("b.localhost")),
        ("192.0.2.2:1000", true, None),
        ("[2001:db8::1]:1000", true, None),
        ("192.0.2.1:1000", false, Some("a.localhost")),
    ];
    for (addr, tls, host) in rows {
        let addr: SocketAddr = addr.parse().unwrap();
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(header::HOST, HeaderValue::from_static(host));
        }
        let present = PresentHeaders::scan(&h);
        add_forwarded(&mut h, ClientInfo { addr, tls }, &present);
        let ip = addr.ip();
        let proto = if tls { "https" } else { "http" };
        let node = if ip.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.to_string()
        };
        let host = host.map_or(String::new(), |h| format!(";host=\"{h}\""));
        assert_eq!(
            h["x-forwarded-for"],
            ip.to_string().as_str(),
            "{addr} {tls}"
        );
        assert_eq!(h["x-forwarded-proto"], proto);
        assert_eq!(
            h[header::FORWARDED],
            format!("for={node};proto={proto}{host}").as_str()
        );
    }
}

#[test]
fn upgrade_needs_connection_upgrade() {
    let mut h = HeaderMap::new();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    assert!(upgrade_protocol(&h).is_none());
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, Upgrade"),
    );
    assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
    h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    assert!(
        upgrade_protocol(&h).is_none(),
        "h2c upgrade is answered as HTTP/1.1"
    );
}

/// App `a` and its pool over the fake backend, and connections over that backend (with the
/// lean client on).
struct App {
    spec: Arc<AppSpec>,
    pool: serverless_limits::Pool,
    backend: Arc<dyn serverless_core::ContainerBackend>,
}

async fn app_over_fake() -> (Upstreams, App) {
    let backend: Arc<dyn serverless_core::ContainerBackend> =
        Arc::new(serverless_core::fake::FakeBackend::new());
    let spec = AppSpec::new("a", serverless_core::ImageRef::Registry("x:1".into()));
    let pool = serverless_limits::Pool::new(spec.clone(), backend.clone()).unwrap();
    let upstreams = Upstreams::with_lean_client(backend.clone(), true);
    let app = App {
        spec: Arc::new(spec),
        pool,
        backend,
    };
    (upstreams, app)
}

/// `prepare` on a GET for `uri` with `headers` from client 192.0.2.7 over plain HTTP,
/// holding a lease on an instance of `app`.
async fn prepare_get(
    app: &App,
    upstreams: &Upstreams,
    uri: &str,
    headers: &[(&str, &str)],
) -> Prepared<ReqBody> {
    let mut req = Request::new(empty());
    *req.uri_mut() = uri.parse().unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    req.extensions_mut().insert(ClientInfo {
        addr: "192.0.2.7:4000".parse().unwrap(),
        tls: false,
    });
    req.extensions_mut()
        .insert(app.pool.acquire().await.unwrap());
    prepare(&app.spec, upstreams, req).unwrap()
}

#[tokio::test]
async fn prepare_rewrites_headers_for_the_instance() {
    let (upstreams, app) = app_over_fake().await;
    let names = |headers: &HeaderMap| {
        let mut names: Vec<String> = headers.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    };

    // Hop-by-hop headers go, earlier hops are appended to, the rest stays.
    let prepared = prepare_get(
        &app,
        &upstreams,
        "/p?q=1",
        &[
            ("host", "a.localhost"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    let h = prepared.req.headers();
    assert_eq!(
        names(h),
        [
            "forwarded",
            "host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-kept"
        ]
    );
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
    assert_eq!(
        h[header::FORWARDED],
        "for=10.0.0.1, for=192.0.2.7;proto=http;host=\"a.localhost\""
    );
    assert_eq!(prepared.req.uri(), "/p?q=1");
    assert!(prepared.may_resend && prepared.client_upgrade.is_none());
    assert!(upstreams.sends_lean(false, &prepared.req));
    assert!(
        prepared.resend.is_none(),
        "the lean client gives the request back: no copy is kept"
    );
    drop(prepared);

    // Without `Host` (an HTTP/2 client), the authority becomes it; the target is origin-form.
    let prepared = prepare_get(&app, &upstreams, "http://a.localhost:8080/x", &[]).await;
    let h = prepared.req.headers();
    assert_eq!(h[header::HOST], "a.localhost:8080");
    assert_eq!(h["x-forwarded-for"], "192.0.2.7");
    assert_eq!(
        h[header::FORWARDED],
        "for=192.0.2.7;proto=http;host=\"a.localhost:8080\""
    );
    assert_eq!(prepared.req.uri(), "/x");
    drop(prepared);

    // An upgrade keeps its two headers, and the lean client does not take it.
    let prepared = prepare_get(
        &app,
        &upstreams,
        "/ws",
        &[
            ("host", "a.localhost"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ],
    )
    .await;
    let h = prepared.req.headers();
    assert_eq!(h[header::CONNECTION], "upgrade");
    assert_eq!(h[header::UPGRADE], "websocket");
    assert!(prepared.client_upgrade.is_some());
    assert!(!upstreams.sends_lean(false, &prepared.req));
    drop(prepared);

    // With the lean client off, a request that may be sent again keeps what rebuilds it.
    let hyper_only = Upstreams::with_lean_client(app.backend.clone(), false);
    let prepared = prepare_get(&app, &hyper_only, "/p", &[("host", "a.localhost")]).await;
    assert!(prepared.may_resend && prepared.resend.is_some());
    drop(prepared);
    app.pool.shutdown().await;
}

/// Every request allocates its forward future and copies it into place: it stays small.
#[tokio::test]
async fn the_forward_future_stays_small() {
    let (upstreams, app) = app_over_fake().await;
    let mut req = Request::new(empty());
    req.extensions_mut()
        .insert(app.pool.acquire().await.unwrap());
    let prepared = prepare(&app.spec, &upstreams, req).unwrap();
    let future = forward(app.spec.clone(), upstreams, None, prepared);
    let size = std::mem::size_of_val(&future);
    assert!(size <= 2304, "forward future: {size} bytes");
    drop(future);
    app.pool.shutdown().await;
}

/// Embedders' bodies need not be `Sync` (axum's is not): `Forward` serves them, and its future
/// is `Send`.
#[test]
fn forward_takes_bodies_that_are_not_sync() {
    struct NotSync(
        http_body_util::Empty<bytes::Bytes>,
        std::marker::PhantomData<std::cell::Cell<()>>,
    );
    impl http_body::Body for NotSync {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            std::pin::Pin::new(&mut self.0).poll_frame(cx)
        }
    }
    fn serves<S: tower::Service<Request<B>, Future: Send> + Clone + Send + Sync, B>() {}
    serves::<Forward<NotSync>, NotSync>();
    serves::<Forward<hyper::body::Incoming>, hyper::body::Incoming>();
    serves::<Forward, ReqBody>();
}
