//! `serverless-hello`: the demo app the quickstart serves and the end-to-end tests run inside
//! containers. HTTP/1.1 and h2c (prior knowledge) on one port, `$PORT` (default 8080) or
//! `--port N`.
//!
//! Routes: `GET /` (greeting, `x-hello-pid`, `x-hello-instance`), `GET /version` (the request's
//! HTTP version), `GET /ws` (WebSocket echo), `GET /stream?chunks=N&ms=M`, `GET /bytes?n=N`,
//! `POST /upload`, `GET /sleep?ms=M`, `GET /env/NAME`, `GET /exit?code=N`; anything else 404.
//! SIGTERM (or SIGINT) stops accepting, lets open connections finish (up to 10 s) and exits 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Body = UnsyncBoxBody<Bytes, Infallible>;

const CHUNK: usize = 64 * 1024;
static ZEROS: [u8; CHUNK] = [b'x'; CHUNK];

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("serverless-hello: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let port = port()?;
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    println!("serverless-hello listening on {port}");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("serverless-hello: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(handle))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

/// `--port N` wins over `$PORT`; default 8080.
fn port() -> Result<u16, String> {
    let mut args = std::env::args().skip(1);
    let mut port = None;
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--port") {
            Some("") => args.next(),
            Some(rest) if rest.starts_with('=') => Some(rest[1..].to_owned()),
            _ => {
                return Err(format!(
                    "unknown argument {arg:?} (usage: serverless-hello [--port N])"
                ))
            }
        };
        port = Some(value.ok_or("--port needs a value")?);
    }
    let port = port.or_else(|| std::env::var("PORT").ok().filter(|p| !p.is_empty()));
    match port {
        None => Ok(8080),
        Some(p) => p.parse().map_err(|_| format!("invalid port {p:?}")),
    }
}

/// This process's identity: hostname (the container id under containerd) and a random suffix.
fn instance() -> &'static str {
    static INSTANCE: OnceLock<String> = OnceLock::new();
    INSTANCE.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_default();
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        match host.trim() {
            "" => format!("{:08x}", h.finish() as u32),
            host => format!("{host}-{:08x}", h.finish() as u32),
        }
    })
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut res = route(req)
        .await
        .unwrap_or_else(|(status, msg)| text(status, msg));
    let h = res.headers_mut();
    h.insert("x-hello-pid", HeaderValue::from(std::process::id()));
    if let Ok(v) = HeaderValue::from_str(instance()) {
        h.insert("x-hello-instance", v);
    }
    Ok(res)
}

type Failure = (StatusCode, String);

async fn route(req: Request<Incoming>) -> Result<Response<Body>, Failure> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") => Ok(text(StatusCode::OK, "hello from serverless\n")),
        (&Method::GET, "/version") => Ok(text(StatusCode::OK, format!("{:?}", req.version()))),
        (&Method::GET, "/ws") => websocket(req),
        (&Method::GET, "/stream") => {
            let chunks: u64 = query(&req, "chunks", 3)?;
            let ms: u64 = query(&req, "ms", 100)?;
            let stream = futures_util::stream::unfold(0, move |i| async move {
                if i >= chunks {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let frame = Frame::data(Bytes::from(format!("chunk {i}\n")));
                Some((Ok(frame), i + 1))
            });
            Ok(stream_response(StreamBody::new(stream).boxed_unsync()))
        }
        (&Method::GET, "/bytes") => {
            let n: u64 = query(&req, "n", 0)?;
            let stream = futures_util::stream::unfold(n, |left| async move {
                if left == 0 {
                    return None;
                }
                let len = left.min(CHUNK as u64) as usize;
                Some((
                    Ok(Frame::data(Bytes::from_static(&ZEROS[..len]))),
                    left - len as u64,
                ))
            });
            let mut res = stream_response(StreamBody::new(stream).boxed_unsync());
            res.headers_mut()
                .insert("content-length", HeaderValue::from(n));
            Ok(res)
        }
        (&Method::POST, "/upload") => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| (StatusCode::BAD_REQUEST, format!("reading body: {e}\n")))?;
                if let Some(data) = frame.data_ref() {
                    n += data.len() as u64;
                }
            }
            Ok(text(StatusCode::OK, format!("received {n} bytes\n")))
        }
        (&Method::GET, "/sleep") => {
            let ms: u64 = query(&req, "ms", 1000)?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(text(StatusCode::OK, format!("slept {ms} ms\n")))
        }
        (&Method::GET, "/exit") => {
            let code: i32 = query(&req, "code", 0)?;
            tokio::spawn(async move {
                // Give the response a moment to leave.
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::exit(code);
            });
            let mut res = text(StatusCode::OK, format!("exiting with code {code}\n"));
            res.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            Ok(res)
        }
        (&Method::GET, p) if p.starts_with("/env/") => {
            let name = &p["/env/".len()..];
            match std::env::var_os(name).filter(|_| !name.is_empty()) {
                Some(v) => Ok(text(StatusCode::OK, v.to_string_lossy().into_owned())),
                None => Err((StatusCode::NOT_FOUND, format!("{name} is not set\n"))),
            }
        }
        _ => Err((StatusCode::NOT_FOUND, "not found\n".to_owned())),
    }
}

/// Upgrades to a WebSocket that echoes text and binary frames until the peer closes.
fn websocket(mut req: Request<Incoming>) -> Result<Response<Body>, Failure> {
    let wants_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .filter(|_| wants_upgrade);
    let Some(key) = key else {
        return Err((
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade\n".to_owned(),
        ));
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return eprintln!("serverless-hello: upgrade failed: {e}"),
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let echo = match msg {
                Message::Text(_) | Message::Binary(_) => msg,
                // Pings and the close handshake are answered by tungstenite itself; after a
                // close the stream ends.
                _ => continue,
            };
            if ws.send(echo).await.is_err() {
                break;
            }
        }
        let _ = ws.close(None).await;
    });
    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(res)
}

/// A query parameter parsed as `T`, or `default` when absent; 400 when malformed.
fn query<T: std::str::FromStr>(
    req: &Request<Incoming>,
    name: &str,
    default: T,
) -> Result<T, Failure> {
    let q = req.uri().query().unwrap_or("");
    match q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
    {
        None => Ok(default),
        Some((_, v)) => v
            .parse()
            .map_err(|_| (StatusCode::BAD_REQUEST, format!("invalid {name}={v:?}\n"))),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(body.into())).boxed_unsync());
    *res.status_mut() = status;
    res.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn stream_response(body: Body) -> Response<Body> {
    let mut res = Response::new(body);
    res.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    res
}

fn empty() -> Body {
    http_body_util::Empty::new().boxed_unsync()
}
