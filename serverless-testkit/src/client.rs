//! HTTP clients: a pooled one with whole answers ([`send`]), one connection with timed requests
//! ([`connect`], [`get`]), and a raw HTTP/1.0 exchange over a backend's [`Connection`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serverless_core::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::util::BoxError;

/// The header in which the gateway gives the one-line reason of an error it answers with.
pub const ERROR_HEADER: &str = "x-serverless-error";

/// A pooled HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new [`HttpClient`] (idle pooled connections closed after 5 s).
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

/// One whole response.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// The gateway's reason ([`ERROR_HEADER`]), empty when there is none.
    pub reason: String,
    /// Its headers.
    pub headers: http::HeaderMap,
    /// Its body, as text.
    pub body: String,
}

impl Answer {
    /// The answer of a response's head and whole body.
    pub fn new(parts: http::response::Parts, body: &[u8]) -> Self {
        Self {
            status: parts.status,
            reason: parts
                .headers
                .get(ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            headers: parts.headers,
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }
}

/// Sends `method path` with `Host: host` to `addr` and reads the whole answer; `Err` with the
/// client's error when there is none (a reset, a refused connection).
pub async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    method: Method,
    path: &str,
    body: &'static [u8],
) -> Result<Answer, String> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::from_static(body)))
        .map_err(|e| format!("request: {e}"))?;
    let res = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?
        .to_bytes();
    Ok(Answer::new(parts, &body))
}

/// Sends `GET /index.html` over an instance's connection (HTTP/1.0: the server closes) and
/// returns the whole response, head included.
pub async fn http_get(mut conn: Connection) -> String {
    conn.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("write request");
    let mut response = Vec::new();
    conn.read_to_end(&mut response)
        .await
        .expect("read response");
    String::from_utf8_lossy(&response).into_owned()
}

/// The sending half of one HTTP/1.1 connection.
pub type Sender = SendRequest<Empty<Bytes>>;

/// A new HTTP/1.1 connection to `addr` (no pool, `TCP_NODELAY`).
pub async fn connect(addr: SocketAddr) -> Result<Sender, BoxError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.set_nodelay(true)?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}

/// Sends one `GET path` with `Host: host` on `tx`, reads the body to the end; returns the status
/// and the time to the response head (first byte).
pub async fn get(
    tx: &mut Sender,
    host: &str,
    path: &str,
) -> Result<(StatusCode, Duration), BoxError> {
    tx.ready().await?;
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::new())?;
    let t = Instant::now();
    let res = tx.send_request(req).await?;
    let head = t.elapsed();
    let status = res.status();
    res.into_body().collect().await?;
    Ok((status, head))
}

/// Polls `addr` with `GET /` until it answers 200, for at most `timeout`.
pub async fn wait_http(addr: SocketAddr, host: &str, timeout: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match connect(addr).await {
            Ok(mut tx) => match get(&mut tx, host, "/").await {
                Ok((s, _)) if s == StatusCode::OK => return Ok(()),
                Ok((s, _)) => last = format!("status {s}"),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{addr} did not answer 200 within {timeout:?}: {last}").into())
}

/// A loopback port that was free a moment ago (bound, then released).
pub fn free_port() -> Result<u16, BoxError> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind a free port: {e}"))?;
    Ok(l.local_addr()?.port())
}
