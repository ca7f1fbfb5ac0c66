//! The gateway over the in-process fake backend: real sockets, real hyper clients, fast.
//! (The same paths against real containerd instances are in `serverless-cli/tests/e2e.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serverless_core::fake::{Behavior, FakeBackend};
use serverless_core::Config;
use serverless_proxy::{Gateway, GatewayError, COLD_START_HEADER, ERROR_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(extra: &str, apps: &str) -> Config {
    Config::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{extra}\n{apps}"
    ))
    .unwrap()
}

const HELLO: &str = r#"
[[apps]]
name = "hello"
image = "example/hello:1"
hosts = ["hello.localhost"]
"#;

struct Harness {
    gateway: Gateway,
    backend: FakeBackend,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Harness {
    async fn start(extra: &str, apps: &str, setup: impl FnOnce(&FakeBackend)) -> Self {
        let backend = FakeBackend::new();
        setup(&backend);
        let gateway = Gateway::start(config(extra, apps), Arc::new(backend.clone()))
            .await
            .unwrap();
        Self {
            gateway,
            backend,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn get(&self, host: &str, path: &str) -> (http::response::Parts, String) {
        self.send(host, Method::GET, path, Bytes::new()).await
    }

    async fn send(
        &self,
        host: &str,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> (http::response::Parts, String) {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway.listen_addr()))
            .header("host", host)
            .body(Full::new(body))
            .unwrap();
        let res = self.client.request(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts, String::from_utf8_lossy(&body).into_owned())
    }

    async fn admin(
        &self,
        method: Method,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway.admin_addr()));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let res = self
            .client
            .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

#[tokio::test]
async fn cold_start_then_warm_with_cold_start_header() {
    let h = Harness::start("", HELLO, |b| {
        b.set_behavior(
            "hello",
            Behavior {
                start_delay: Duration::from_millis(50),
                ..Default::default()
            },
        )
    })
    .await;
    let (parts, body) = h.get("hello.localhost:8080", "/").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(body.starts_with("hello-1-"), "{body}");
    let cold: u64 = parts.headers[COLD_START_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(cold >= 50, "{cold}");
    let (parts, _) = h.get("HELLO.localhost", "/").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(parts.headers.get(COLD_START_HEADER).is_none());
    assert_eq!(h.backend.started(), 1);
    // The app sees the forwarding headers.
    h.gateway.shutdown().await;
    assert_eq!(h.backend.running("hello").len(), 0);
}

#[tokio::test]
async fn unknown_host_is_404_naming_the_host() {
    let h = Harness::start("", HELLO, |_| {}).await;
    let (parts, body) = h.get("nope.example", "/").await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(
        parts.headers[ERROR_HEADER],
        "no app is routed for host nope.example"
    );
    assert!(body.contains("nope.example"));
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn boot_failure_is_503_with_exit_code_and_logs() {
    let h = Harness::start("", HELLO, |b| {
        b.set_behavior(
            "hello",
            Behavior {
                boot_failure: Some((3, "panic: DATABASE_URL is not set".into())),
                ..Default::default()
            },
        )
    })
    .await;
    let (parts, body) = h.get("hello.localhost", "/").await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    let reason = parts.headers[ERROR_HEADER].to_str().unwrap();
    assert!(reason.contains("exited with code 3"), "{reason}");
    assert!(body.contains("DATABASE_URL is not set"), "{body}");
    assert!(parts.headers.contains_key("retry-after"));
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn queue_overflow_is_503_and_wait_expiry_is_504() {
    let apps = r#"
[[apps]]
name = "slow"
image = "example/slow:1"
limits = { max_concurrent_requests = 1, max_queued_requests = 1, queue_timeout = "300ms" }
scale = { max = 1 }
"#;
    let h = Arc::new(Harness::start("", apps, |_| {}).await);
    // One in flight for 2 s, one queued (it will expire), the third overflows.
    let busy = tokio::spawn({
        let h = h.clone();
        async move { h.get("slow.localhost", "/sleep/2000").await.0.status }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = tokio::spawn({
        let h = h.clone();
        async move { h.get("slow.localhost", "/").await.0 }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (parts, _) = h.get("slow.localhost", "/").await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(parts.headers["retry-after"], "1");
    assert!(parts.headers[ERROR_HEADER]
        .to_str()
        .unwrap()
        .contains("queue is full"));
    let queued = queued.await.unwrap();
    assert_eq!(queued.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(queued.headers[ERROR_HEADER]
        .to_str()
        .unwrap()
        .contains("no free instance within 300ms"));
    assert_eq!(busy.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn global_limit_is_503() {
    let h = Arc::new(Harness::start("[limits]\nmax_concurrent_requests = 1", HELLO, |_| {}).await);
    let busy = tokio::spawn({
        let h = h.clone();
        async move { h.get("hello.localhost", "/sleep/500").await.0.status }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (parts, _) = h.get("hello.localhost", "/").await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(parts.headers[ERROR_HEADER]
        .to_str()
        .unwrap()
        .contains("across all apps"));
    assert_eq!(busy.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn body_over_limit_is_413_by_length_and_by_stream() {
    let h = Harness::start("[server]\nmax_body_bytes = 1000", HELLO, |_| {}).await;
    let (parts, _) = h
        .send(
            "hello.localhost",
            Method::POST,
            "/",
            Bytes::from(vec![b'x'; 5000]),
        )
        .await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    let (parts, body) = h
        .send(
            "hello.localhost",
            Method::POST,
            "/",
            Bytes::from(vec![b'x'; 999]),
        )
        .await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");
    assert_eq!(parts.headers["x-body-len"], "999");

    // Chunked (no content-length): cut off by the streaming limit.
    let chunks = (0..10)
        .map(|_| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'y'; 500]))));
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/", h.gateway.listen_addr()))
        .header("host", "hello.localhost")
        .body(body)
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    h.gateway.shutdown().await;
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn oversized_header_section_is_431() {
    let h = Harness::start("[server]\nmax_header_bytes = 16384", HELLO, |_| {}).await;
    let big = "a".repeat(40_000);
    let text = raw(
        h.gateway.listen_addr(),
        format!("GET / HTTP/1.1\r\nhost: hello.localhost\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn slowloris_is_cut_off_without_blocking_others() {
    let h = Harness::start("[server]\nheader_read_timeout = \"500ms\"", HELLO, |_| {}).await;
    let addr = h.gateway.listen_addr();
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\nhost: hello.localhost\r\n")
            .await
            .unwrap();
        // One header byte every 100 ms: never completes the head.
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"x").await.is_err() {
                break;
            }
        }
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        started.elapsed()
    });
    // Others are served meanwhile.
    for _ in 0..5 {
        assert_eq!(h.get("hello.localhost", "/").await.0.status, StatusCode::OK);
    }
    let cut_after = slow.await.unwrap();
    assert!(
        cut_after < Duration::from_secs(4),
        "slow client held on for {cut_after:?}"
    );
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn instance_dying_mid_request_retries_idempotent_and_502s_the_rest() {
    let h = Arc::new(Harness::start("", HELLO, |_| {}).await);
    assert_eq!(h.get("hello.localhost", "/").await.0.status, StatusCode::OK);
    let victim = h.backend.running("hello")[0].clone();
    // A GET and a POST are in flight on the instance when it is killed.
    let get = tokio::spawn({
        let h = h.clone();
        async move { h.get("hello.localhost", "/sleep/3000").await }
    });
    let post = tokio::spawn({
        let h = h.clone();
        async move {
            h.send(
                "hello.localhost",
                Method::POST,
                "/sleep/3000",
                Bytes::from_static(b"order=1"),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.backend.crash(&victim));
    // The idempotent GET had no answer yet: it is sent again to a new instance.
    let (parts, body) = get.await.unwrap();
    assert_eq!(parts.status, StatusCode::OK, "{body}");
    assert!(!body.contains(victim.as_str()), "{body}");
    // The POST may have had effects: it is not repeated, it gets a 502 with the reason.
    let (parts, _) = post.await.unwrap();
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert!(parts.headers[ERROR_HEADER]
        .to_str()
        .unwrap()
        .contains(victim.as_str()));
    // The next request is served by a fresh instance.
    let (parts, body) = h.get("hello.localhost", "/").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(!body.contains(victim.as_str()));
}

#[tokio::test]
async fn streaming_response_passes_through() {
    let h = Harness::start("", HELLO, |_| {}).await;
    let (parts, body) = h.get("hello.localhost", "/stream/5/20").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body.lines().count(), 5, "{body}");
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn admin_api_lists_deploys_removes_and_exports_metrics() {
    let h = Harness::start("", HELLO, |_| {}).await;
    assert_eq!(h.get("hello.localhost", "/").await.0.status, StatusCode::OK);

    let (status, body) = h.admin(Method::GET, "/v1/apps/hello", "", None).await;
    assert_eq!(status, StatusCode::OK);
    let app: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(app["name"], "hello");
    assert_eq!(app["instances"][0]["state"], "ready");
    assert_eq!(app["instances"][0]["in_flight"], 0);
    assert!(app["instances"][0]["age_ms"].is_u64());

    let (status, body) = h
        .admin(
            Method::PUT,
            "/v1/apps/api",
            r#"{"name":"api","image":"example/api:2","hosts":["api.localhost"],"limits":{"idle_timeout":"5s"}}"#,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.get("api.localhost", "/").await.0.status, StatusCode::OK);
    let (status, body) = h
        .admin(
            Method::PUT,
            "/v1/apps/bad",
            r#"{"name":"bad","image":"x","scale":{"max":0}}"#,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("scale.max"), "{body}");
    let (status, body) = h
        .admin(
            Method::PUT,
            "/v1/apps/steal",
            r#"{"name":"steal","image":"x","hosts":["api.localhost"]}"#,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, list) = h.admin(Method::GET, "/v1/apps", "", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(list.contains("\"api\"") && list.contains("\"hello\""));

    let (status, logs) = h.admin(Method::GET, "/v1/apps/hello/logs", "", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(logs.contains("fake instance"), "{logs}");

    let (status, metrics) = h.admin(Method::GET, "/metrics", "", None).await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "serverless_requests_total{app=\"hello\",code=\"200\"} 1",
        "serverless_request_duration_seconds_count{app=\"hello\"} 1",
        "serverless_cold_start_seconds_count{app=\"hello\",phase=\"total\"} 1",
        "serverless_instances{app=\"hello\",state=\"ready\"} 1",
        "serverless_queue_depth{app=\"hello\"} 0",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }

    let (status, _) = h.admin(Method::DELETE, "/v1/apps/api", "", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.get("api.localhost", "/").await.0.status,
        StatusCode::NOT_FOUND
    );
    assert!(h.backend.running("api").is_empty());
    let (status, _) = h.admin(Method::DELETE, "/v1/apps/api", "", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn admin_token_is_required_when_configured() {
    let h = Harness::start("admin_token = \"0123456789abcdef-secret\"", HELLO, |_| {}).await;
    let (status, _) = h.admin(Method::GET, "/v1/apps", "", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = h
        .admin(Method::GET, "/v1/apps", "", Some("wrong-token-wrong-token"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = h
        .admin(Method::GET, "/v1/apps", "", Some("0123456789abcdef-secret"))
        .await;
    assert_eq!(status, StatusCode::OK);
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn non_loopback_admin_without_token_is_refused() {
    let config = Config::from_toml("listen = \"127.0.0.1:0\"\nadmin = \"0.0.0.0:0\"").unwrap();
    let err = match Gateway::start(config, Arc::new(FakeBackend::new())).await {
        Err(err) => err,
        Ok(_) => panic!("started without a token"),
    };
    assert!(
        matches!(err, GatewayError::AdminTokenRequired { admin } if admin.port() == 0),
        "{err:?}"
    );
    assert!(err.to_string().contains("admin_token"), "{err}");
}

/// A listener that cannot be bound fails the start naming the config key and the address, and
/// the apps already deployed (one instance each, `scale.min = 1`) are stopped again.
#[tokio::test]
async fn taken_admin_port_fails_the_start_and_stops_the_deployed_apps() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let config = Config::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"{addr}\"\n\
         [[apps]]\nname = \"api\"\nimage = \"example/api:1\"\n[apps.scale]\nmin = 1\n"
    ))
    .unwrap();
    let backend = FakeBackend::new();
    let err = match Gateway::start(config, Arc::new(backend.clone())).await {
        Err(err) => err,
        Ok(_) => panic!("started on a taken port"),
    };
    match &err {
        GatewayError::Bind {
            field, addr: at, ..
        } => {
            assert_eq!((*field, *at), ("admin", addr), "{err}");
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on {addr} (admin): ")),
        "{err}"
    );
    // The instance did start (so the test is not vacuous), and is stopped again.
    assert_eq!(backend.started(), 1);
    assert!(
        backend.running("api").is_empty(),
        "{:?}",
        backend.running("api")
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let h = Harness::start("", HELLO, |_| {}).await;
    assert_eq!(h.get("hello.localhost", "/").await.0.status, StatusCode::OK);
    let addr = h.gateway.listen_addr();
    let in_flight = tokio::spawn(async move {
        raw(
            addr,
            b"GET /sleep/700 HTTP/1.1\r\nhost: hello.localhost\r\nconnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let backend = h.backend.clone();
    h.gateway.shutdown().await;
    let text = in_flight.await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(backend.running("hello").is_empty());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn tls_negotiates_h2_and_http11_by_alpn() {
    use rustls::pki_types::ServerName;

    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["hello.localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let h = Harness::start(
        &format!(
            "[server]\ntls = {{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        ),
        HELLO,
        |_| {},
    )
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    for (alpn, version) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("hello.localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let io = hyper_util::rt::TokioIo::new(tls);
        let res = if version == http::Version::HTTP_2 {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = Request::builder()
                .uri("https://hello.localhost/")
                .body(Full::new(Bytes::new()))
                .unwrap();
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let req = Request::builder()
                .uri("/")
                .header("host", "hello.localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            send.send_request(req).await.unwrap()
        };
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.version(), version);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"hello-1-"), "{body:?}");
    }
    h.gateway.shutdown().await;
}

/// What the engine asks the backend to keep ready per app (`prepare`) and to let go (`release`).
#[derive(Clone, Default)]
struct Prepares {
    inner: FakeBackend,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Prepares {
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    async fn wait_for(&self, entries: usize) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.log().len() < entries {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("expected {entries} calls, got {:?}", self.log()));
        self.log()
    }
}

#[async_trait::async_trait]
impl serverless_core::ContainerBackend for Prepares {
    async fn prepare(
        &self,
        app: &serverless_core::AppSpec,
    ) -> Result<(), serverless_core::BackendError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("prepare max={}", app.scale.max));
        self.inner.prepare(app).await
    }
    async fn release(&self, app: &serverless_core::AppSpec) {
        self.log
            .lock()
            .unwrap()
            .push(format!("release max={}", app.scale.max));
    }
    async fn start(
        &self,
        app: &serverless_core::AppSpec,
        id: &serverless_core::InstanceId,
    ) -> Result<serverless_core::Started, serverless_core::BackendError> {
        self.inner.start(app, id).await
    }
    async fn stop(
        &self,
        id: &serverless_core::InstanceId,
        grace: Duration,
    ) -> Result<(), serverless_core::BackendError> {
        self.inner.stop(id, grace).await
    }
    async fn wait(
        &self,
        id: &serverless_core::InstanceId,
    ) -> Result<serverless_core::Exit, serverless_core::BackendError> {
        self.inner.wait(id).await
    }
    async fn connect(
        &self,
        id: &serverless_core::InstanceId,
    ) -> Result<serverless_core::Connection, serverless_core::BackendError> {
        self.inner.connect(id).await
    }
    async fn list(
        &self,
    ) -> Result<Vec<serverless_core::OwnedInstance>, serverless_core::BackendError> {
        self.inner.list().await
    }
    async fn logs(
        &self,
        id: &serverless_core::InstanceId,
    ) -> Result<String, serverless_core::BackendError> {
        self.inner.logs(id).await
    }
}

/// Redeploying an identical spec: the old pool's shutdown releases that spec (e.g. the
/// containerd backend's standby), so the engine prepares it again; a changed spec is not.
#[tokio::test]
async fn redeploying_the_same_spec_prepares_it_again() {
    let backend = Prepares::default();
    let gateway = Gateway::start(config("", HELLO), Arc::new(backend.clone()))
        .await
        .unwrap();
    let engine = gateway.engine().clone();
    let spec = engine.app("hello").unwrap().spec.as_ref().clone();
    let max = spec.scale.max;
    engine.deploy(spec.clone()).await.unwrap();
    assert_eq!(
        backend.wait_for(4).await,
        [
            format!("prepare max={max}"),
            format!("prepare max={max}"),
            format!("release max={max}"),
            format!("prepare max={max}"),
        ]
    );

    let mut changed = spec;
    changed.scale.max = max + 1;
    engine.deploy(changed).await.unwrap();
    let log = backend.wait_for(6).await;
    assert_eq!(
        log[4..],
        [
            format!("prepare max={}", max + 1),
            format!("release max={max}")
        ]
    );
    // The task that released the old spec has finished deciding by now.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(backend.log().len(), 6, "{:?}", backend.log());
    gateway.shutdown().await;
    assert_eq!(
        backend.log().last().unwrap(),
        &format!("release max={}", max + 1)
    );
}
