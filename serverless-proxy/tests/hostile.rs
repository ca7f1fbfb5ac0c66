//! A hostile or broken upstream through the real gateway, on every client path: the lean
//! HTTP/1.1 client (a body-less GET), hyper's client for the same GET (`server.lean_client =
//! false`) and hyper's client for a request with a body (a POST). An instance plays byte-exact
//! responses per request path; each case asserts what the client gets — status, reason, body
//! bytes, whether the instance's connection was reused or the client's closed — that the
//! answer came within a bound (timeouts are configured short, hundreds of milliseconds), and
//! that the gateway spent bounded CPU on it: the gateway runs on its own thread, whose CPU
//! time is read from `/proc` around each case, so an endless interim stream or a trickled head
//! that made it spin fails the case.
//!
//! HTTP/2 clients are covered at the end: a body that fails after its head reaches them as a
//! `RST_STREAM` on a connection that stays usable.

#![cfg(feature = "gateway")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serverless_core::fake::FakeBackend;
use serverless_core::{
    AppSpec, BackendError, Config, Connection, ContainerBackend, ErrorKind, Exit, InstanceId,
    OwnedInstance, Started,
};
use serverless_proxy::{Gateway, ERROR_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The app's `limits.response_timeout` and `limits.body_idle_timeout` in these tests.
const TIMEOUT: Duration = Duration::from_millis(400);
/// How much later than expected a case may end (a loaded 2-core machine, a debug build).
const SLACK: Duration = Duration::from_secs(2);
/// The gateway CPU one case may take: generous for a debug build on a loaded machine (a case
/// costs a few milliseconds), well under what a gateway spinning through a case's timeout
/// takes (the cases that could spin get a longer timeout, see [`Harness::spin_timeout`]).
const CPU_PER_CASE: Duration = Duration::from_millis(150);

/// What the instance does after reading a request.
enum Script {
    /// Sends these bytes, then `After`.
    Send(Vec<u8>, After),
    /// Sends these bytes again and again until the gateway goes away.
    Endless(Vec<u8>),
    /// Sends these bytes, then one more byte of a header value every few milliseconds until
    /// the gateway goes away.
    Trickle(Vec<u8>),
}

/// What the instance does after sending its bytes.
enum After {
    /// Reads the next request.
    Next,
    /// Keeps the connection open and sends nothing more.
    Hang,
    /// Closes the connection (FIN).
    Close,
    /// Resets the connection (RST: linger 0).
    Reset,
}

fn send(bytes: &[u8], after: After) -> Script {
    Script::Send(bytes.to_vec(), after)
}

/// What the instance answers to a request for `path`.
fn script(path: &str) -> Script {
    use After::*;
    match path {
        "/ok" => send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", Next),
        "/te-and-long-length" => send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Next),
        "/te-and-short-length" => send(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n", Next),
        "/two-lengths" => send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok", Next),
        "/reason" => send(b"HTTP/1.1 599 Custom Reason\r\ncontent-length: 0\r\n\r\n", Next),
        "/101" => send(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n", Next),
        "/hang" => send(b"", Hang),
        "/close" => send(b"", Close),
        "/reset" => send(b"", Reset),
        "/stall" => send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", Hang),
        "/short-close" => send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", Close),
        "/reset-in-body" => send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", Reset),
        // An empty line where a chunk size belongs: not the last chunk (hyper and nginx
        // refuse it too).
        "/empty-chunk-size" => send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n\r\n\r\n", Next),
        // A chunked body whose body is broken from its first byte: the head and the error
        // arrive together.
        "/bad-first-chunk" => send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", Next),
        "/big-head" => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
                "a".repeat(70_000)
            );
            Script::Send(head.into_bytes(), Next)
        }
        "/big-trailers" => {
            let res = format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-big: {}\r\n\r\n",
                "a".repeat(70_000)
            );
            Script::Send(res.into_bytes(), Next)
        }
        "/interim-flood" => Script::Endless(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        // 60 000 bytes of head at once, then a byte every 2 ms: a client that parses the
        // whole head again for each byte burns a core.
        "/trickled-head" => {
            let head = format!("HTTP/1.1 200 OK\r\nx-slow: {}", "a".repeat(60_000));
            Script::Trickle(head.into_bytes())
        }
        _ => send(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", Next),
    }
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
            match script(&path) {
                Script::Send(bytes, after) => {
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                    match after {
                        After::Next => {}
                        After::Hang => {
                            // Until the gateway drops the connection.
                            let _ = stream.read(&mut [0u8; 1]).await;
                            return;
                        }
                        After::Close => return,
                        After::Reset => {
                            // Linger 0 never blocks: the close is a reset.
                            #[allow(deprecated)]
                            stream.set_linger(Some(Duration::ZERO)).unwrap();
                            return;
                        }
                    }
                }
                Script::Endless(bytes) => {
                    while stream.write_all(&bytes).await.is_ok() {}
                    return;
                }
                Script::Trickle(bytes) => {
                    let mut ok = stream.write_all(&bytes).await.is_ok();
                    while ok {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        ok = stream.write_all(b"a").await.is_ok();
                    }
                    return;
                }
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

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An h2c instance that answers each request (a HEADERS frame) with `100` HEADERS frames
/// until the gateway goes away: frames written by hand (`:status: 100` as an HPACK literal
/// with name index 8).
async fn h2c_interim_flood() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if stream.read_exact(&mut preface).await.is_err() {
                    return;
                }
                // SETTINGS, then SETTINGS ACK (for the client's).
                let mut hello = frame(0x4, 0, 0, b"");
                hello.extend(frame(0x4, 0x1, 0, b""));
                if stream.write_all(&hello).await.is_err() {
                    return;
                }
                loop {
                    let mut head = [0u8; 9];
                    if stream.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = usize::from(head[0]) << 16
                        | usize::from(head[1]) << 8
                        | usize::from(head[2]);
                    let mut payload = vec![0u8; len];
                    if stream.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    if head[3] == 0x1 {
                        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
                        let interim = frame(0x1, 0x4, id, b"\x08\x03100");
                        while stream.write_all(&interim).await.is_ok() {}
                        return;
                    }
                }
            });
        }
    });
    addr
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

/// Which of the gateway's clients to the instance a case goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// The lean HTTP/1.1 client: a GET.
    Lean,
    /// hyper's client for the same GET (`server.lean_client = false`).
    Hyper,
    /// hyper's client for a POST with a body (the lean client sends no bodies).
    HyperBody,
}

impl Client {
    const ALL: [Self; 3] = [Self::Lean, Self::Hyper, Self::HyperBody];

    fn method(self) -> &'static str {
        match self {
            Self::Lean | Self::Hyper => "GET",
            Self::HyperBody => "POST",
        }
    }
}

/// The gateway, on a thread of its own (its tasks, its connections to the instance), so that
/// its CPU time can be told apart from the test's (the client and the instance).
struct Harness {
    gateway: Option<Gateway>,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    upstream: Arc<Upstream>,
    client: Client,
    /// The gateway's thread's name.
    name: String,
}

/// Numbers the gateways' threads, so that tests running at once measure their own.
static GATEWAYS: AtomicUsize = AtomicUsize::new(0);

impl Harness {
    async fn start(client: Client) -> Self {
        Self::with_timeout(client, TIMEOUT).await
    }

    /// The response timeout for the cases that could make a gateway spin: long enough that a
    /// spinning gateway takes far more CPU than [`CPU_PER_CASE`].
    fn spin_timeout() -> Duration {
        Duration::from_secs(2)
    }

    async fn with_timeout(client: Client, response_timeout: Duration) -> Self {
        let (addr, upstream) = Upstream::start().await;
        Self::over(client, response_timeout, addr, upstream, false).await
    }

    /// A gateway whose app speaks h2c, to an instance that answers every request with
    /// endless `100` HEADERS frames.
    async fn h2c_interim_flood(client: Client) -> Self {
        let addr = h2c_interim_flood().await;
        let timeout = Self::spin_timeout();
        Self::over(client, timeout, addr, Arc::default(), true).await
    }

    async fn over(
        client: Client,
        response_timeout: Duration,
        addr: SocketAddr,
        upstream: Arc<Upstream>,
        h2c: bool,
    ) -> Self {
        let config = Config::from_toml(&format!(
            r#"
            listen = "127.0.0.1:0"
            admin = "127.0.0.1:0"
            [server]
            lean_client = {}
            [[apps]]
            name = "web"
            image = "example/web:1"
            h2c = {h2c}
            [apps.limits]
            response_timeout = "{}ms"
            body_idle_timeout = "{}ms"
            "#,
            client != Client::Hyper,
            response_timeout.as_millis(),
            TIMEOUT.as_millis(),
        ))
        .unwrap();
        let backend = Hostile {
            fake: FakeBackend::new(),
            addr,
        };
        // A thread name is at most 15 bytes in /proc.
        let name = format!("gateway-{}", GATEWAYS.fetch_add(1, Ordering::Relaxed));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(name.clone())
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .unwrap();
        let gateway = handle
            .spawn(Gateway::start(config, Arc::new(backend)))
            .await
            .unwrap()
            .unwrap();
        Self {
            gateway: Some(gateway),
            runtime: handle,
            stop: Some(stop),
            thread: Some(thread),
            upstream,
            client,
            name,
        }
    }

    fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    async fn shutdown(mut self) {
        let gateway = self.gateway.take().unwrap();
        self.runtime.spawn(gateway.shutdown()).await.unwrap();
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }

    /// The CPU time the gateway's threads have used so far.
    fn cpu(&self) -> Duration {
        let ticks: Vec<u64> = procfs::process::Process::myself()
            .unwrap()
            .tasks()
            .unwrap()
            .filter_map(|task| task.ok()?.stat().ok())
            .filter(|stat| stat.comm == self.name)
            .map(|stat| stat.utime + stat.stime)
            .collect();
        // Not vacuous: the gateway's thread is there to be measured.
        assert!(!ticks.is_empty(), "no thread named {}", self.name);
        let ticks: u64 = ticks.iter().sum();
        Duration::from_millis(ticks * 1000 / procfs::ticks_per_second())
    }

    /// The value of one sample in the gateway's `/metrics` (0 when it is not there yet).
    fn metric(&self, sample: &str) -> u64 {
        let text = self.gateway().engine().encode_metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// Sends a request for `path` with this harness's client's method.
    async fn get(&self, path: &str) -> Answer {
        self.raw(self.client.method(), path, false).await
    }

    /// Sends `method path` (a POST carries a 4-byte body) on a new client connection and reads
    /// everything until the gateway closes it (`connection: close` unless `keep_alive`), within
    /// 10 s; notes how long that took and the gateway's CPU time meanwhile.
    async fn raw(&self, method: &str, path: &str, keep_alive: bool) -> Answer {
        let body = if method == "POST" { "data" } else { "" };
        let close = if keep_alive {
            ""
        } else {
            "connection: close\r\n"
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: web.localhost\r\ncontent-length: {}\r\n{close}\r\n{body}",
            body.len()
        );
        let cpu = self.cpu();
        let start = Instant::now();
        let mut s = TcpStream::connect(self.gateway().listen_addr())
            .await
            .unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "{method} {path} ({:?}): the gateway neither answered nor closed: {:?}",
            self.client,
            String::from_utf8_lossy(&out)
        );
        let mut answer = Answer::parse(&out);
        answer.took = start.elapsed();
        answer.cpu = self.cpu().saturating_sub(cpu);
        answer.what = format!("{method} {path} ({:?})", self.client);
        answer
    }
}

/// A response as the client saw it on the wire, with what it cost.
#[derive(Debug)]
struct Answer {
    what: String,
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// From connecting to the gateway closing the connection.
    took: Duration,
    /// The gateway's CPU time meanwhile.
    cpu: Duration,
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
            what: String::new(),
            status_line,
            headers,
            body: bytes[end + 4..].to_vec(),
            took: Duration::ZERO,
            cpu: Duration::ZERO,
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

    /// Asserts the status and that the reason names `cause` (in `x-serverless-error`).
    fn assert_error(&self, status: u16, cause: &str) {
        assert_eq!(self.status(), status, "{}: {self:?}", self.what);
        let error = self.error();
        assert!(
            error.starts_with("instance ")
                && error.contains(" of app web ")
                && error.contains(cause),
            "{}: the reason names {cause:?}: {self:?}",
            self.what
        );
    }

    /// Asserts the case ended within `[at_least, at_least + SLACK]` and cost the gateway at
    /// most [`CPU_PER_CASE`].
    fn assert_bounded(&self, at_least: Duration) {
        eprintln!("{}: {:?}, gateway CPU {:?}", self.what, self.took, self.cpu);
        assert!(
            self.took >= at_least && self.took <= at_least + SLACK,
            "{}: took {:?}, expected {at_least:?} (+ up to {SLACK:?})",
            self.what,
            self.took
        );
        assert!(
            self.cpu <= CPU_PER_CASE,
            "{}: the gateway spent {:?} of CPU on it",
            self.what,
            self.cpu
        );
    }
}

#[tokio::test]
async fn a_transfer_coding_wins_and_the_length_is_not_passed_on() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        for (path, body) in [
            ("/te-and-long-length", &b"hello"[..]),
            ("/te-and-short-length", &b"hello world"[..]),
        ] {
            let a = h.get(path).await;
            assert_eq!(a.status(), 200, "{}: {a:?}", a.what);
            assert!(a.header("content-length").is_empty(), "{}: {a:?}", a.what);
            assert_eq!(a.body().as_deref(), Some(body), "{}: {a:?}", a.what);
            a.assert_bounded(Duration::ZERO);
        }
        // Both framings given is a smuggling hint: neither connection is kept.
        assert_eq!(h.upstream.connections(), 2, "{client:?}");
        h.shutdown().await;
    }
}

#[tokio::test]
async fn identical_lengths_are_passed_on_once() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        let methods = if client == Client::HyperBody {
            vec!["POST"]
        } else {
            vec!["GET", "HEAD"]
        };
        for method in methods {
            let a = h.raw(method, "/two-lengths", false).await;
            assert_eq!(a.status(), 200, "{}: {a:?}", a.what);
            assert_eq!(a.header("content-length"), ["2"], "{}: {a:?}", a.what);
            let body: &[u8] = if method == "HEAD" { b"" } else { b"ok" };
            assert_eq!(a.body, body, "{}", a.what);
            a.assert_bounded(Duration::ZERO);
        }
        h.shutdown().await;
    }
}

#[tokio::test]
async fn the_reason_phrase_is_kept() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        let a = h.get("/reason").await;
        assert_eq!(a.status_line, "HTTP/1.1 599 Custom Reason", "{}", a.what);
        a.assert_bounded(Duration::ZERO);
        h.shutdown().await;
    }
}

#[tokio::test]
async fn an_unasked_101_is_a_502_naming_it() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        let a = h.get("/101").await;
        a.assert_error(502, "101 Switching Protocols to a request without Upgrade");
        a.assert_bounded(Duration::ZERO);
        let framing = r#"serverless_upstream_errors_total{app="web",cause="framing"}"#;
        assert_eq!(h.metric(framing), 1, "{client:?}");
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_head_over_64_kib_is_a_502_even_in_one_piece() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        let a = h.get("/big-head").await;
        a.assert_error(502, "failed before answering: ");
        a.assert_bounded(Duration::ZERO);
        let framing = r#"serverless_upstream_errors_total{app="web",cause="framing"}"#;
        assert_eq!(h.metric(framing), 1, "{client:?}");
        h.shutdown().await;
    }
}

#[tokio::test]
async fn no_head_within_the_response_timeout_is_a_504_and_is_not_sent_again() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        let a = h.get("/hang").await;
        a.assert_error(504, "sent no response head within 400ms");
        a.assert_bounded(TIMEOUT);
        assert_eq!(h.upstream.requests("/hang"), 1, "{client:?}: sent once");
        let timeouts = r#"serverless_upstream_errors_total{app="web",cause="response_timeout"}"#;
        assert_eq!(h.metric(timeouts), 1, "{client:?}");
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_trickled_head_is_a_504_at_the_timeout_for_little_cpu() {
    for client in Client::ALL {
        let timeout = Harness::spin_timeout();
        let h = Harness::with_timeout(client, timeout).await;
        let a = h.get("/trickled-head").await;
        a.assert_error(504, "sent no response head within 2s");
        a.assert_bounded(timeout);
        h.shutdown().await;
    }
}

#[tokio::test]
async fn an_endless_interim_stream_is_cut_off() {
    for client in Client::ALL {
        let h = Harness::with_timeout(client, Harness::spin_timeout()).await;
        let a = h.get("/interim-flood").await;
        // The 17th interim head is refused: a 502 naming it at once, not the response
        // timeout's 504 after a busy wait.
        a.assert_error(502, "more than 16 interim (1xx) responses");
        a.assert_bounded(Duration::ZERO);
        let framing = r#"serverless_upstream_errors_total{app="web",cause="framing"}"#;
        assert_eq!(h.metric(framing), 1, "{client:?}");
        h.shutdown().await;
    }
}

#[tokio::test]
async fn an_endless_interim_stream_from_an_h2c_instance_is_cut_off() {
    for client in Client::ALL {
        let h = Harness::h2c_interim_flood(client).await;
        let a = h.get("/").await;
        a.assert_error(502, "more than 16 interim (1xx) responses");
        a.assert_bounded(Duration::ZERO);
        let framing = r#"serverless_upstream_errors_total{app="web",cause="framing"}"#;
        assert_eq!(h.metric(framing), 1, "{client:?}");
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_stalled_body_ends_the_response_cut_short_and_closes_the_connection() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        // A keep-alive request: the gateway closes the client's connection after the
        // truncated body, or the client could not tell it was cut short.
        let a = h.raw(client.method(), "/stall", true).await;
        assert_eq!(a.status(), 200, "{}: {a:?}", a.what);
        // The head promised 10 bytes; the client gets the 3 sent and then the connection
        // closes: visibly short, never a complete-looking response.
        assert_eq!(a.header("content-length"), ["10"], "{}: {a:?}", a.what);
        assert_eq!(a.body, b"abc", "{}", a.what);
        a.assert_bounded(TIMEOUT);
        let stalls = r#"serverless_upstream_errors_total{app="web",cause="body_idle_timeout"}"#;
        assert_eq!(h.metric(stalls), 1, "{client:?}");
        let failed = r#"serverless_response_body_failures_total{app="web"}"#;
        assert_eq!(
            h.metric(failed),
            1,
            "{client:?}: a stalled body is a failed request"
        );
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_body_cut_short_closes_the_clients_connection() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        for path in ["/short-close", "/reset-in-body"] {
            let a = h.raw(client.method(), path, true).await;
            assert_eq!(a.status(), 200, "{}: {a:?}", a.what);
            assert_eq!(a.header("content-length"), ["10"], "{}: {a:?}", a.what);
            assert_eq!(a.body, b"abc", "{}", a.what);
            a.assert_bounded(Duration::ZERO);
        }
        let reset = r#"serverless_upstream_errors_total{app="web",cause="reset"}"#;
        assert_eq!(h.metric(reset), 2, "{client:?}");
        h.shutdown().await;
    }
}

#[tokio::test]
async fn an_empty_chunk_size_is_no_last_chunk() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        let a = h.raw(client.method(), "/empty-chunk-size", true).await;
        assert_eq!(a.status(), 200, "{}: {a:?}", a.what);
        // Cut short (no last chunk) and closed: never a complete-looking `hello`.
        assert_eq!(a.body(), None, "{}: {a:?}", a.what);
        assert!(a.body.starts_with(b"5\r\nhello\r\n"), "{}: {a:?}", a.what);
        a.assert_bounded(Duration::ZERO);
        let framing = r#"serverless_upstream_errors_total{app="web",cause="framing"}"#;
        assert_eq!(h.metric(framing), 1, "{client:?}");
        // The instance's connection is not reused.
        let a = h.get("/ok").await;
        assert_eq!((a.status(), a.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(h.upstream.connections(), 2, "{client:?}");
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_trailer_section_over_64_kib_is_refused() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        let a = h.raw(client.method(), "/big-trailers", true).await;
        assert_eq!(a.status(), 200, "{}: {a:?}", a.what);
        assert_eq!(a.body(), None, "{}: cut short: {a:?}", a.what);
        assert!(a.body.starts_with(b"5\r\nhello\r\n"), "{}: {a:?}", a.what);
        a.assert_bounded(Duration::ZERO);
        let framing = r#"serverless_upstream_errors_total{app="web",cause="framing"}"#;
        assert_eq!(h.metric(framing), 1, "{client:?}");
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_body_broken_before_any_byte_is_a_502_not_an_empty_reply() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        let a = h.get("/bad-first-chunk").await;
        a.assert_error(502, "chunk size");
        a.assert_bounded(Duration::ZERO);
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_connection_closed_or_reset_before_the_head_is_a_502_naming_it() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        for path in ["/close", "/reset"] {
            let a = h.get(path).await;
            assert_eq!(a.status(), 502, "{}: {a:?}", a.what);
            a.assert_error(502, "failed before answering: ");
            a.assert_bounded(Duration::ZERO);
        }
        let reset = r#"serverless_upstream_errors_total{app="web",cause="reset"}"#;
        assert_eq!(h.metric(reset), 2, "{client:?}");
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_good_answer_keeps_its_connection() {
    for client in Client::ALL {
        let h = Harness::start(client).await;
        for _ in 0..3 {
            let a = h.get("/ok").await;
            assert_eq!(
                (a.status(), a.body.as_slice()),
                (200, &b"ok"[..]),
                "{}",
                a.what
            );
            a.assert_bounded(Duration::ZERO);
        }
        assert_eq!(
            h.upstream.connections(),
            1,
            "{client:?}: one for 3 requests"
        );
        h.shutdown().await;
    }
}

/// An h2c client of the gateway (prior knowledge), on one connection.
async fn h2_client(h: &Harness) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(h.gateway().listen_addr()).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

fn h2_get(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://web.localhost{path}"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn an_h2_client_gets_a_reset_stream_after_the_head_and_an_answer_before_it() {
    for client in [Client::Lean, Client::Hyper] {
        let h = Harness::start(client).await;
        let mut send = h2_client(&h).await;
        for path in ["/stall", "/short-close", "/empty-chunk-size"] {
            let start = Instant::now();
            let res = send.send_request(h2_get(path)).await.unwrap();
            assert_eq!(res.status(), 200, "{path} ({client:?})");
            let error = res.into_body().collect().await.unwrap_err();
            // The gateway reset the stream (RST_STREAM): the client knows the body is cut
            // short, and the connection goes on.
            let error = std::error::Error::source(&error).map(ToString::to_string);
            assert!(
                error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("stream error received")),
                "{path} ({client:?}): {error:?}"
            );
            assert!(start.elapsed() < TIMEOUT + SLACK, "{path} ({client:?})");
        }
        // Before the head: an answer with the reason, on the same connection.
        for (path, status) in [("/hang", 504), ("/close", 502), ("/bad-first-chunk", 502)] {
            let res = send.send_request(h2_get(path)).await.unwrap();
            assert_eq!(res.status(), status, "{path} ({client:?})");
            let error = res.headers()[ERROR_HEADER].to_str().unwrap().to_owned();
            assert!(
                error.contains(" of app web "),
                "{path} ({client:?}): {error}"
            );
        }
        let res = send.send_request(h2_get("/ok")).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
        h.shutdown().await;
    }
}
