//! A hostile or broken upstream through the real gateway, on both client paths (the lean
//! HTTP/1.1 client: a body-less GET; hyper's: a POST with a body): an instance that plays
//! byte-exact responses per path, and what the client gets for each — status, body bytes,
//! whether the instance's connection was reused. Timeouts are configured short (hundreds of
//! milliseconds) rather than slept through; no speed is asserted.

#![cfg(feature = "gateway")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serverless_core::fake::FakeBackend;
use serverless_core::{
    AppSpec, BackendError, Config, Connection, ContainerBackend, ErrorKind, Exit, InstanceId,
    OwnedInstance, Started,
};
use serverless_proxy::{Gateway, ERROR_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the instance sends for a path, and whether it then hangs (keeps the connection open
/// and sends nothing more) instead of reading the next request.
fn script(path: &str) -> (Vec<u8>, bool) {
    let bytes: &[u8] = match path {
        "/ok" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "/te-and-long-length" => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "/te-and-short-length" => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
        "/two-lengths" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
        "/reason" => b"HTTP/1.1 599 Custom Reason\r\ncontent-length: 0\r\n\r\n",
        "/101" => b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n",
        "/hang" => return (Vec::new(), true),
        "/stall" => return (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec(), true),
        "/big-head" => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
                "a".repeat(70_000)
            );
            return (head.into_bytes(), false);
        }
        "/interim-flood" => return (b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1000), true),
        _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    };
    (bytes.to_vec(), false)
}

/// The instance: counts connections and requests per path, answers each as [`script`] says.
#[derive(Default)]
struct Upstream {
    connections: AtomicUsize,
    requests: std::sync::Mutex<Vec<String>>,
}

impl Upstream {
    async fn start() -> (SocketAddr, Arc<Self>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = Arc::new(Self::default());
        let up = me.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                up.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(up.clone().serve(stream));
            }
        });
        (addr, me)
    }

    async fn serve(self: Arc<Self>, mut stream: TcpStream) {
        let mut buf = Vec::new();
        loop {
            // One request head (and its body, by content-length).
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < end + length {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..end + length);
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            self.requests.lock().unwrap().push(path.clone());
            let (answer, hang) = script(&path);
            if stream.write_all(&answer).await.is_err() {
                return;
            }
            if hang {
                // Hold the connection open until the gateway drops it.
                let _ = stream.read(&mut [0u8; 1]).await;
                return;
            }
        }
    }

    fn requests(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

/// The fake backend's instances, dialed at the scripted upstream.
#[derive(Clone)]
struct Hostile {
    fake: FakeBackend,
    addr: SocketAddr,
}

#[async_trait]
impl ContainerBackend for Hostile {
    async fn start(&self, app: &AppSpec, id: &InstanceId) -> Result<Started, BackendError> {
        self.fake.start(app, id).await
    }
    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), BackendError> {
        self.fake.stop(id, grace).await
    }
    async fn wait(&self, id: &InstanceId) -> Result<Exit, BackendError> {
        self.fake.wait(id).await
    }
    async fn connect(&self, _: &InstanceId) -> Result<Connection, BackendError> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| BackendError::new(ErrorKind::Unavailable, e.to_string()))?;
        Ok(Box::new(stream))
    }
    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
        self.fake.list().await
    }
    async fn logs(&self, id: &InstanceId) -> Result<String, BackendError> {
        self.fake.logs(id).await
    }
}

struct Harness {
    gateway: Gateway,
    upstream: Arc<Upstream>,
}

impl Harness {
    async fn start() -> Self {
        let (addr, upstream) = Upstream::start().await;
        let config = Config::from_toml(
            r#"
            listen = "127.0.0.1:0"
            admin = "127.0.0.1:0"
            [[apps]]
            name = "web"
            image = "example/web:1"
            [apps.limits]
            response_timeout = "400ms"
            body_idle_timeout = "400ms"
            "#,
        )
        .unwrap();
        let backend = Hostile {
            fake: FakeBackend::new(),
            addr,
        };
        let gateway = Gateway::start(config, Arc::new(backend)).await.unwrap();
        Self { gateway, upstream }
    }

    /// The value of one sample in the gateway's `/metrics` (0 when it is not there yet).
    fn metric(&self, sample: &str) -> u64 {
        let text = self.gateway.engine().encode_metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// Sends `method path` (a POST carries a 4-byte body: hyper's path) on a new client
    /// connection and reads everything until the gateway closes it or goes quiet.
    async fn raw(&self, method: &str, path: &str) -> Answer {
        let body = if method == "POST" { "data" } else { "" };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: web.localhost\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut s = TcpStream::connect(self.gateway.listen_addr())
            .await
            .unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "{method} {path}: the gateway neither answered nor closed"
        );
        Answer::parse(&out)
    }
}

/// A response as the client saw it on the wire.
#[derive(Debug)]
struct Answer {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn parse(bytes: &[u8]) -> Self {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            panic!("no response head: {:?}", String::from_utf8_lossy(bytes));
        };
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap().to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Self {
            status_line,
            headers,
            body: bytes[end + 4..].to_vec(),
        }
    }

    fn status(&self) -> u16 {
        self.status_line.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn error(&self) -> String {
        self.header(ERROR_HEADER).join(",")
    }

    /// The body, de-chunked when the gateway sent it chunked (`None`: the chunked body was
    /// cut short, as a client sees an error after the head).
    fn body(&self) -> Option<Vec<u8>> {
        if !self.header("transfer-encoding").contains(&"chunked") {
            return Some(self.body.clone());
        }
        let mut rest = &self.body[..];
        let mut out = Vec::new();
        loop {
            let i = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..i]).ok()?, 16).ok()?;
            rest = &rest[i + 2..];
            if size == 0 {
                return Some(out);
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
    }
}

const BOTH: [&str; 2] = ["GET", "POST"];

#[tokio::test]
async fn a_transfer_coding_wins_and_the_length_is_not_passed_on() {
    let h = Harness::start().await;
    for method in BOTH {
        for (path, body) in [
            ("/te-and-long-length", &b"hello"[..]),
            ("/te-and-short-length", &b"hello world"[..]),
        ] {
            let a = h.raw(method, path).await;
            assert_eq!(a.status(), 200, "{method} {path}: {a:?}");
            assert!(
                a.header("content-length").is_empty(),
                "{method} {path}: {a:?}"
            );
            assert_eq!(a.body().as_deref(), Some(body), "{method} {path}: {a:?}");
        }
    }
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn identical_lengths_are_passed_on_once() {
    let h = Harness::start().await;
    for method in ["GET", "POST", "HEAD"] {
        let a = h.raw(method, "/two-lengths").await;
        assert_eq!(a.status(), 200, "{method}: {a:?}");
        assert_eq!(a.header("content-length"), ["2"], "{method}: {a:?}");
        let body: &[u8] = if method == "HEAD" { b"" } else { b"ok" };
        assert_eq!(a.body, body, "{method}");
    }
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn the_reason_phrase_is_kept() {
    let h = Harness::start().await;
    for method in BOTH {
        let a = h.raw(method, "/reason").await;
        assert_eq!(a.status_line, "HTTP/1.1 599 Custom Reason", "{method}");
    }
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn an_unasked_101_is_a_502_naming_it() {
    let h = Harness::start().await;
    for method in BOTH {
        let a = h.raw(method, "/101").await;
        assert_eq!(a.status(), 502, "{method}: {a:?}");
        assert!(
            a.error().contains("101 Switching Protocols"),
            "{method}: {a:?}"
        );
    }
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn a_head_over_64_kib_is_a_502_even_in_one_piece() {
    let h = Harness::start().await;
    for method in BOTH {
        let a = h.raw(method, "/big-head").await;
        assert_eq!(a.status(), 502, "{method}: {a:?}");
        assert!(
            a.error().contains("of app web failed before answering: "),
            "{a:?}"
        );
    }
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn no_head_within_the_response_timeout_is_a_504_and_is_not_sent_again() {
    let h = Harness::start().await;
    for method in BOTH {
        let before = h.upstream.requests("/hang");
        let a = h.raw(method, "/hang").await;
        assert_eq!(a.status(), 504, "{method}: {a:?}");
        assert!(
            a.error()
                .ends_with("of app web sent no response head within 400ms"),
            "{method}: {a:?}"
        );
        assert_eq!(
            h.upstream.requests("/hang") - before,
            1,
            "{method}: sent once"
        );
    }
    let timeouts = r#"serverless_upstream_errors_total{app="web",cause="response_timeout"}"#;
    assert_eq!(h.metric(timeouts), 2, "one per request");
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn an_endless_interim_stream_is_cut_off() {
    let h = Harness::start().await;
    for method in BOTH {
        let a = h.raw(method, "/interim-flood").await;
        // Both clients refuse the 17th interim head: a 502 naming it, not the response
        // timeout's 504.
        assert_eq!(a.status(), 502, "{method}: {a:?}");
        assert!(
            a.error().contains("more than 16 interim (1xx) responses"),
            "{method}: {a:?}"
        );
    }
    let framing = r#"serverless_upstream_errors_total{app="web",cause="framing"}"#;
    assert_eq!(h.metric(framing), 2, "one per request");
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn a_stalled_body_ends_the_response_cut_short() {
    let h = Harness::start().await;
    for method in BOTH {
        let a = h.raw(method, "/stall").await;
        assert_eq!(a.status(), 200, "{method}: {a:?}");
        // The head promised 10 bytes; the client gets the 3 sent and then the connection
        // closes: visibly short, never a complete-looking response.
        assert_eq!(a.header("content-length"), ["10"], "{method}: {a:?}");
        assert_eq!(a.body, b"abc", "{method}");
    }
    let stalls = r#"serverless_upstream_errors_total{app="web",cause="body_idle_timeout"}"#;
    assert_eq!(h.metric(stalls), 2, "one per request");
    let failed = r#"serverless_response_body_failures_total{app="web"}"#;
    assert_eq!(h.metric(failed), 2, "a stalled body is a failed request");
    h.gateway.shutdown().await;
}

#[tokio::test]
async fn a_good_answer_keeps_its_connection() {
    let h = Harness::start().await;
    for method in BOTH {
        let before = h.upstream.connections.load(Ordering::SeqCst);
        for _ in 0..3 {
            let a = h.raw(method, "/ok").await;
            assert_eq!(
                (a.status(), a.body.as_slice()),
                (200, &b"ok"[..]),
                "{method}"
            );
        }
        let opened = h.upstream.connections.load(Ordering::SeqCst) - before;
        assert!(opened <= 1, "{method}: {opened} connections for 3 requests");
    }
    h.gateway.shutdown().await;
}
