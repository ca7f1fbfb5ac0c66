//! Forwarding to an instance: connections kept per instance over the backend's dialer, hop-by-hop
//! headers, `x-forwarded-*`/`forwarded`, upgrades (WebSocket) and sending again requests that
//! were not written (or, idempotent and bodiless, broke before an answer).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serverless_core::{AppSpec, InstanceId};
use serverless_limits::Lease;

use crate::response::{BoxError, ReqBody, ResBody, COLD_START_HEADER};
use crate::upstream::SendError;
pub(crate) use crate::upstream::Upstreams;

/// Where a request came from, set by the server on each request.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The peer address.
    pub addr: SocketAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
}

/// The request could not be forwarded or the instance failed while answering: `502`.
#[derive(Debug, thiserror::Error)]
#[error("instance {instance} of app {} {what}", app.name)]
pub struct ForwardError {
    app: Arc<AppSpec>,
    instance: InstanceId,
    what: &'static str,
    #[source]
    source: BoxError,
}

/// The innermost service: sends the request to the instance of its [`Lease`].
#[derive(Clone)]
pub struct Forward {
    app: Arc<AppSpec>,
    upstreams: Upstreams,
}

impl Forward {
    pub(crate) fn new(app: Arc<AppSpec>, upstreams: Upstreams) -> Self {
        Self { app, upstreams }
    }
}

impl tower::Service<Request<ReqBody>> for Forward {
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The request is rewritten here, synchronously; the future keeps only what sending it
        // (and sending it again) takes, so each request allocates and moves less.
        match prepare(&self.app, req) {
            Ok(prepared) => Box::pin(forward(self.app.clone(), self.upstreams.clone(), prepared)),
            Err(err) => Box::pin(std::future::ready(Err(err))),
        }
    }
}

const MAX_ATTEMPTS: usize = 4;

/// A request rewritten for the instance, with what it takes to send it again.
struct Prepared {
    lease: Lease,
    req: Request<ReqBody>,
    /// Idempotent and without a body: may be sent again after it was written.
    may_resend: bool,
    /// Method, target and headers to rebuild it when the client that sends it does not give it
    /// back (hyper's paths), for a request that may be sent again.
    resend: Option<Box<(Method, Uri, HeaderMap)>>,
    /// The client's side of an upgrade it asked for.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

fn prepare(app: &AppSpec, mut req: Request<ReqBody>) -> Result<Prepared, BoxError> {
    let lease = req
        .extensions_mut()
        .remove::<Lease>()
        .ok_or("request reached Forward without a lease")?;
    let client_info = req.extensions().get::<ClientInfo>().copied();
    let present = Present::of(req.headers());
    let upgrade = present
        .hop_by_hop
        .then(|| upgrade_protocol(req.headers()))
        .flatten();
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    if !present.host {
        // HTTP/2 clients send the authority instead of `Host`; HTTP/1.1 apps need `Host`.
        if let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, host);
        }
    }
    if present.hop_by_hop {
        strip_hop_by_hop(&mut headers);
    }
    if let Some(proto) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    if let Some(info) = client_info {
        add_forwarded(&mut headers, info, &present);
    }
    let uri = upstream_uri(parts.uri, app.h2c, &headers)?;
    let version = if app.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    // A request that was not written to an instance comes back and is sent elsewhere. One
    // without a body that is idempotent may also be sent again when its connection broke
    // before any response byte (the instance died with it in flight). The lean client gives
    // such a request back whole; for the others, keep what it takes to rebuild it. One with a
    // body could only be if it had not been read, which the instance does not tell us, so it
    // gets a 502.
    let may_resend = body.is_end_stream() && parts.method.is_idempotent();
    let mut next_req = Request::new(body);
    *next_req.method_mut() = parts.method;
    *next_req.uri_mut() = uri;
    *next_req.version_mut() = version;
    *next_req.headers_mut() = headers;
    let lean = !app.h2c && crate::h1::fits(&next_req);
    let resend = (may_resend && !lean).then(|| {
        (
            next_req.method().clone(),
            next_req.uri().clone(),
            next_req.headers().clone(),
        )
    });
    Ok(Prepared {
        lease,
        req: next_req,
        may_resend,
        resend: resend.map(Box::new),
        client_upgrade,
    })
}

async fn forward(
    app: Arc<AppSpec>,
    upstreams: Upstreams,
    prepared: Prepared,
) -> Result<Response<ResBody>, BoxError> {
    let Prepared {
        lease,
        req,
        may_resend,
        resend,
        client_upgrade,
    } = prepared;
    let version = req.version();
    let mut next = Some(req);
    let mut attempt = 0;
    let mut res = loop {
        attempt += 1;
        let instance = lease.instance();
        let req = match next.take() {
            Some(req) => req,
            None => match resend.as_deref() {
                Some((method, uri, headers)) => {
                    let mut req = Request::new(empty());
                    *req.method_mut() = method.clone();
                    *req.uri_mut() = uri.clone();
                    *req.version_mut() = version;
                    *req.headers_mut() = headers.clone();
                    req
                }
                None => return Err("request body already sent".into()),
            },
        };
        let failed = match upstreams.send(&instance, app.h2c, req).await {
            Ok(res) => break res,
            Err(failed) => failed,
        };
        next = failed.request.filter(|_| !failed.sent || may_resend);
        let unreachable = matches!(failed.error, SendError::Connect(_));
        if attempt < MAX_ATTEMPTS && (next.is_some() || resend.is_some()) {
            if unreachable {
                tracing::debug!(app = %app.name, %instance, error = ?failed.error, "instance unreachable, rerouting");
                lease.reroute().await?;
            } else {
                // Not written, or idempotent without a body: again. A new connection to the
                // same instance tells whether it is gone (then the connect error reroutes).
                tracing::debug!(app = %app.name, %instance, error = ?failed.error, "connection to the instance broke before an answer, retrying");
            }
            continue;
        }
        if unreachable {
            lease.pool().evict(&instance);
        }
        let (what, source): (_, BoxError) = match failed.error {
            SendError::Connect(e) => ("could not be reached", Box::new(e)),
            SendError::Failed(e) => ("failed before answering", Box::new(e)),
            SendError::Io(e) => ("failed before answering", Box::new(e)),
        };
        return Err(Box::new(ForwardError {
            app: app.clone(),
            instance,
            what,
            source,
        }));
    };
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let server_upgrade = hyper::upgrade::on(&mut res);
            let tunnel_lease = lease.clone();
            tokio::spawn(async move {
                let (client, server) = tokio::join!(client_upgrade, server_upgrade);
                if let (Ok(client), Ok(server)) = (client, server) {
                    let mut client = TokioIo::new(client);
                    let mut server = TokioIo::new(server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                // The slot is held until either side closes.
                drop(tunnel_lease);
            });
        }
    } else {
        strip_hop_by_hop(res.headers_mut());
    }
    if let Some(waited) = lease.cold_start() {
        res.headers_mut().insert(
            COLD_START_HEADER,
            HeaderValue::from(waited.as_millis() as u64),
        );
    }
    let instance = lease.instance();
    Ok(res.map(move |b| {
        b.map_err(move |e| -> BoxError {
            Box::new(ForwardError {
                app: app.clone(),
                instance: instance.clone(),
                what: "failed while sending the response body",
                source: e,
            })
        })
        .boxed_unsync()
    }))
}

/// The request target for the instance: origin-form (`/path?query`) for HTTP/1.1, absolute
/// (`http://host/path`) for h2c, whose `:authority` and `:scheme` come from it.
fn upstream_uri(uri: Uri, h2c: bool, headers: &HeaderMap) -> Result<Uri, BoxError> {
    if !h2c && uri.scheme().is_none() && uri.authority().is_none() {
        return Ok(uri);
    }
    let path = uri
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    if !h2c {
        return Ok(Uri::from(path));
    }
    let authority = headers
        .get(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
    Ok(Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()?)
}

fn empty() -> ReqBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|e| match e {})
        .boxed()
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` + `Upgrade: X`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    // `Upgrade: h2c` (RFC 7540 §3.2, removed in RFC 9113) is not tunnelled: the request goes on
    // as HTTP/1.1, which the upgrade mechanism allows; clients use prior knowledge for h2c.
    headers
        .get(header::UPGRADE)
        .filter(|p| asks && !p.as_bytes().eq_ignore_ascii_case(b"h2c"))
        .cloned()
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Which of the headers that rewriting a request looks at it carries: one pass over its names
/// (a request has few) instead of a hashed lookup for each.
#[derive(Debug, Default)]
struct Present {
    host: bool,
    hop_by_hop: bool,
    x_forwarded_for: bool,
    forwarded: bool,
}

impl Present {
    fn of(headers: &HeaderMap) -> Self {
        let mut present = Self::default();
        for name in headers.keys() {
            if name == header::HOST {
                present.host = true;
            } else if name == X_FORWARDED_FOR {
                present.x_forwarded_for = true;
            } else if name == header::FORWARDED {
                present.forwarded = true;
            } else if is_hop_by_hop(name) {
                present.hop_by_hop = true;
            }
        }
        present
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names, and
/// the classic list. `TE: trailers` is kept (gRPC needs it end to end).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of a lookup per name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ] {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Writes an IP address as text (IPv4 by hand: this runs for every request).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// A header value built here (only visible ASCII and spaces, so always valid): one allocation.
fn value(bytes: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(bytes).ok()
}

/// The `x-forwarded-for` and `forwarded` values built for the last request without earlier
/// hops, and what they were built from.
struct Built {
    ip: IpAddr,
    tls: bool,
    host: Option<Vec<u8>>,
    values: (Option<HeaderValue>, Option<HeaderValue>),
}

thread_local! {
    /// Consecutive requests mostly come from one client for one host (a keep-alive
    /// connection): they share their forwarding values instead of formatting and allocating
    /// their own.
    static LAST_BUILT: std::cell::RefCell<Option<Built>> = const { std::cell::RefCell::new(None) };
}

/// Appends the client to `x-forwarded-for` and `forwarded`, sets `x-forwarded-proto`.
/// `present`: which of them (and `Host`) the request has.
fn add_forwarded(headers: &mut HeaderMap, info: ClientInfo, present: &Present) {
    let ip = info.addr.ip();
    // Only a host that fits in a quoted string without escapes is passed on in `forwarded`.
    let host = headers
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .filter(|h| {
            h.iter()
                .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        });
    let prev = |present: bool, name: HeaderName| {
        present
            .then(|| headers.get(name))
            .flatten()
            .map(HeaderValue::as_bytes)
    };
    let prev_xff = prev(present.x_forwarded_for, X_FORWARDED_FOR);
    let prev_forwarded = prev(present.forwarded, header::FORWARDED);
    let (xff, forwarded) = if prev_xff.is_none() && prev_forwarded.is_none() {
        LAST_BUILT.with_borrow_mut(|last| match last {
            Some(built)
                if built.ip == ip && built.tls == info.tls && built.host.as_deref() == host =>
            {
                built.values.clone()
            }
            _ => {
                let values = forwarding_values(None, None, ip, info.tls, host);
                *last = Some(Built {
                    ip,
                    tls: info.tls,
                    host: host.map(<[u8]>::to_vec),
                    values: values.clone(),
                });
                values
            }
        })
    } else {
        forwarding_values(prev_xff, prev_forwarded, ip, info.tls, host)
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Some(v) = forwarded {
        headers.insert(header::FORWARDED, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if info.tls { "https" } else { "http" }),
    );
}

/// The `x-forwarded-for` and `forwarded` values: the earlier hops', if any, then this one's.
fn forwarding_values(
    prev_xff: Option<&[u8]>,
    prev_forwarded: Option<&[u8]>,
    ip: IpAddr,
    tls: bool,
    host: Option<&[u8]>,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    // One scratch buffer for both values (they are copied into their headers).
    let mut buf = Vec::with_capacity(256);
    if let Some(prev) = prev_xff {
        buf.extend_from_slice(prev);
        buf.extend_from_slice(b", ");
    }
    push_ip(&mut buf, ip);
    let xff = value(&buf);
    buf.clear();
    if let Some(prev) = prev_forwarded {
        buf.extend_from_slice(prev);
        buf.extend_from_slice(b", ");
    }
    buf.extend_from_slice(b"for=");
    if ip.is_ipv6() {
        buf.extend_from_slice(b"\"[");
        push_ip(&mut buf, ip);
        buf.extend_from_slice(b"]\"");
    } else {
        push_ip(&mut buf, ip);
    }
    buf.extend_from_slice(b";proto=");
    buf.extend_from_slice(if tls { b"https" } else { b"http" });
    if let Some(host) = host {
        buf.extend_from_slice(b";host=\"");
        buf.extend_from_slice(host);
        buf.push(b'"');
    }
    (xff, value(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let present = Present::of(&h);
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
            let present = Present::of(&h);
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

    /// Every request allocates its forward future and copies it into place: it stays small
    /// (it was 3.9 KiB before the request was prepared outside it and hyper's send paths were
    /// boxed; 1.8 KiB after).
    /// An engine over the fake backend with app `a` deployed.
    async fn engine_with_app() -> (
        crate::Engine,
        Arc<dyn serverless_core::ContainerBackend>,
        Arc<crate::engine::App>,
    ) {
        let backend: Arc<dyn serverless_core::ContainerBackend> =
            Arc::new(serverless_core::fake::FakeBackend::new());
        let config = serverless_core::Config::from_toml(
            "[[apps]]\nname = \"a\"\nimage = \"x:1\"\nhosts = [\"a.localhost\"]\n",
        )
        .unwrap();
        let engine = crate::Engine::new(backend.clone(), config.limits, config.server.clone());
        engine.deploy(config.apps[0].clone()).await.unwrap();
        let app = engine.route("a.localhost").unwrap();
        (engine, backend, app)
    }

    /// `prepare` on a GET for `uri` with `headers` from client 192.0.2.7 over plain HTTP,
    /// holding a slot of `app`.
    async fn prepare_get(
        app: &crate::engine::App,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Prepared {
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
        prepare(&app.spec, req).unwrap()
    }

    #[tokio::test]
    async fn prepare_rewrites_headers_for_the_instance() {
        let (engine, _backend, app) = engine_with_app().await;
        let names = |headers: &HeaderMap| {
            let mut names: Vec<String> = headers.keys().map(|n| n.to_string()).collect();
            names.sort();
            names
        };

        // Hop-by-hop headers go, earlier hops are appended to, the rest stays.
        let prepared = prepare_get(
            &app,
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
        assert!(crate::h1::fits(&prepared.req));
        drop(prepared);

        // Without `Host` (an HTTP/2 client), the authority becomes it; the target is origin-form.
        let prepared = prepare_get(&app, "http://a.localhost:8080/x", &[]).await;
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
        assert!(!crate::h1::fits(&prepared.req));
        drop(prepared);
        engine.shutdown().await;
    }

    #[tokio::test]
    async fn the_forward_future_stays_small() {
        let (engine, backend, app) = engine_with_app().await;
        let mut req = Request::new(empty());
        req.extensions_mut()
            .insert(app.pool.acquire().await.unwrap());
        let upstreams = Upstreams::new(backend);
        let prepared = prepare(&app.spec, req).unwrap();
        let future = forward(app.spec.clone(), upstreams, prepared);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 2304, "forward future: {size} bytes");
        drop(future);
        engine.shutdown().await;
    }
}
