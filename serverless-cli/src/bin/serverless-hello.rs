//! `serverless-hello`: the demo app the quickstart serves and the end-to-end tests run inside
//! containers. HTTP/1.1 and h2c (prior knowledge) on one port, `$PORT` (default 8080) or
//! `--port N`.
//!
//! Routes: `GET /` (greeting, `x-hello-pid`, `x-hello-instance`), `GET /version` (the request's
//! HTTP version), `GET /ws` (WebSocket echo), `GET /stream?chunks=N&ms=M`, `GET /bytes?n=N`,
//! `POST /upload`, `GET /sleep?ms=M`, `GET /env/NAME`, `GET /exit?code=N`, `GET /fetch` (the
//! app that calls out: fetches `$FETCH_URL` and returns what it got); anything else 404.
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

/// `GET /fetch`: the app that calls out. Fetches `$FETCH_URL` (`http://host[:port]/path`; the
/// host is resolved with the instance's `/etc/resolv.conf`) and answers with what it got: its
/// status line and body, or 502 naming what failed (no egress: `network = "none"`).
async fn fetch() -> Result<Response<Body>, Failure> {
    let bad = |msg: String| (StatusCode::BAD_GATEWAY, format!("{msg}\n"));
    let url = std::env::var("FETCH_URL").map_err(|_| bad("FETCH_URL is not set".into()))?;
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| bad(format!("FETCH_URL {url:?}: {e}")))?;
    let (Some("http"), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(bad(format!(
            "FETCH_URL {url:?}: expected http://host[:port]/path"
        )));
    };
    let port = uri.port_u16().unwrap_or(80);
    let work = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {host}:{port}: {e}"))?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = Request::get(path)
            .header(hyper::header::HOST, host)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body of {url}: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| bad(format!("GET {url}: no answer within 5 s")))?
        .map_err(bad)?;
    Ok(text(
        StatusCode::OK,
        format!("GET {url}: {status}\n{}", String::from_utf8_lossy(&body)),
    ))
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
        (&Method::GET, "/fetch") => fetch().await,
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
