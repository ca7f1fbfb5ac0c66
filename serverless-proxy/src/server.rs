//! The listeners: accept loop, HTTP/1.1 + HTTP/2 (h2c and TLS/ALPN) on one port, limits on the
//! request head, graceful shutdown.
//!
//! # Memory of idle connections
//!
//! hyper keeps an HTTP/1 connection's buffers (an 8 KiB read buffer that grows to 16 KiB, an
//! 8 KiB write buffer, its parser state) for as long as the connection lives, idle or
//! not: about 30 KiB each. A plain-TCP HTTP/1 connection that has been idle for [`PARK_AFTER`]
//! is therefore *parked*: the hyper connection is ended at that idle point without closing the
//! socket ([`hyper::server::conn::http1::Connection::into_parts`] hands back the socket and any
//! bytes read but not parsed), and the task waits for the socket to become readable with no
//! buffers at all. The next request starts a fresh hyper connection over the same socket. A
//! parked connection costs its task (a few hundred bytes), the socket and the kernel's buffers.
//! HTTP/2 and TLS connections are not parked.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::engine::Engine;
use crate::forward::ClientInfo;
use crate::response::{failure, BoxError, ReqBody, ResBody};

/// How long an HTTP/1 connection stays idle (its last response written, nothing read since)
/// before it gives its buffers back; see the module docs.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// The HTTP/2 connection preface a prior-knowledge (h2c) client starts with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Per-connection protocol settings.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// Time to receive a complete request head (HTTP/1.1); slow clients are cut off. An idle
    /// keep-alive connection is closed after the same time.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes; larger → `431`.
    pub max_header_bytes: usize,
}

/// The protocol builders, shared by all connections of a listener.
struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// TLS connections: the version comes from the first bytes after the handshake.
    auto: auto::Builder<TokioExecutor>,
    header_read_timeout: Duration,
}

impl Protocols {
    fn new(settings: &ConnSettings) -> Self {
        let max_buf = settings.max_header_bytes.max(8192);
        let header_list = u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX);
        let mut h1 = http1::Builder::new();
        // Plain HTTP/1 connections get their header timeout from `drive_h1`.
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_buf)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(header_list)
            .max_concurrent_streams(1024);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(max_buf)
            .keep_alive(true);
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(header_list)
            .max_concurrent_streams(1024);
        Protocols {
            h1,
            h2,
            auto,
            header_read_timeout: settings.header_read_timeout,
        }
    }
}

/// Serves `listener` with `handler` until `shutdown` resolves; then stops accepting and waits
/// (at most `drain`) for open connections to finish their requests.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    settings: ConnSettings,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    H: Fn(Request<Incoming>, ClientInfo) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let protocols = Arc::new(Protocols::new(&settings));
    // Each connection holds a receiver: `send` asks them to finish, `closed` is all of them gone.
    let (stop, _) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let protocols = protocols.clone();
        let tls = tls.clone();
        let stop = stop.subscribe();
        tokio::spawn(async move {
            let info = ClientInfo {
                addr,
                tls: tls.is_some(),
            };
            let result = match tls {
                None => serve_plain(stream, info, handler, &protocols, stop).await,
                // Boxed: the TLS state would otherwise size every connection's task.
                Some(acceptor) => {
                    Box::pin(serve_tls(stream, acceptor, info, handler, &protocols, stop)).await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%addr, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(());
    if tokio::time::timeout(drain, stop.closed()).await.is_err() {
        tracing::warn!("connections still open after {drain:?}; closing them");
    }
}

/// The service hyper calls for each request of one connection.
fn connection_service<H, F>(
    handler: H,
    info: ClientInfo,
    state: Arc<ConnState>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Tracked>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Tracked>, Infallible>> + Send,
> + Clone
       + Send
where
    H: Fn(Request<Incoming>, ClientInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    service_fn(move |req: Request<Incoming>| {
        if !req.body().is_end_stream() {
            // hyper may still be reading this body after the response: never park after it.
            state.had_body.store(true, Relaxed);
        }
        let exchange = Exchange::start(state.clone());
        let response = handler(req, info);
        async move {
            let res = response.await;
            Ok(res.map(|body| Tracked {
                body,
                _exchange: exchange,
            }))
        }
    })
}

/// A TLS connection: handshake, then HTTP/1.1 or HTTP/2 as the client speaks.
async fn serve_tls<H, F>(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    info: ClientInfo,
    handler: H,
    protocols: &Protocols,
    mut stop: watch::Receiver<()>,
) -> Result<(), BoxError>
where
    H: Fn(Request<Incoming>, ClientInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
    let tls_stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls_stream)) => tls_stream,
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => return Err("TLS handshake timed out".into()),
        },
        _ = stop.changed() => return Ok(()),
    };
    let svc = connection_service(handler, info, Arc::new(ConnState::default()));
    let conn = protocols
        .auto
        .serve_connection_with_upgrades(TokioIo::new(tls_stream), svc);
    let mut conn = pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        _ = stop.changed() => conn.as_mut().graceful_shutdown(),
    }
    conn.await
}

/// A plain-TCP connection: HTTP/2 with prior knowledge (h2c) or HTTP/1.1, whose idle periods
/// are parked (see the module docs).
async fn serve_plain<H, F>(
    stream: TcpStream,
    info: ClientInfo,
    handler: H,
    protocols: &Protocols,
    mut stop: watch::Receiver<()>,
) -> Result<(), BoxError>
where
    H: Fn(Request<Incoming>, ClientInfo) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let state = Arc::new(ConnState::default());
    let mut io = ConnIo {
        io: TokioIo::new(stream),
        prefix: Bytes::new(),
        state: state.clone(),
    };
    // The first bytes tell HTTP/2's preface from an HTTP/1 request; until they come the
    // connection holds no buffers, and it may wait at most `header_read_timeout`.
    let first = tokio::select! {
        first = tokio::time::timeout(protocols.header_read_timeout, read_preface(io.io.inner_mut())) => first,
        _ = stop.changed() => return Ok(()),
    };
    let (prefix, is_h2) = match first {
        Ok(Ok(Some(first))) => first,
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Err(err)) => return Err(err.into()),
    };
    io.prefix = prefix;
    if is_h2 {
        let svc = connection_service(handler, info, state);
        // Boxed, like HTTP/1's below: the task keeps no room for it.
        let mut conn = Box::pin(protocols.h2.serve_connection(io, svc));
        tokio::select! {
            done = conn.as_mut() => return done.map_err(Into::into),
            _ = stop.changed() => conn.as_mut().graceful_shutdown(),
        }
        return conn.await.map_err(Into::into);
    }
    loop {
        let svc = connection_service(handler.clone(), info, state.clone());
        // Boxed so that a parked connection's task does not keep room for it.
        let mut conn = Box::new(protocols.h1.serve_connection(io, svc).with_upgrades());
        if !drive_h1(&mut *conn, &state, &mut stop, protocols.header_read_timeout).await? {
            return Ok(());
        }
        // Parked: hyper stopped at an idle point and did not shut the socket down.
        let Some(parts) = (*conn).into_parts() else {
            return Ok(());
        };
        io = parts.io;
        // Unparsed bytes are copied out: an empty or short `read_buf` still holds hyper's
        // whole read buffer.
        io.prefix = concat(&parts.read_buf, &std::mem::take(&mut io.prefix));
        drop(parts.read_buf);
        state.reset();
        if io.prefix.is_empty() {
            // Idle connections are closed after `header_read_timeout`, as hyper would.
            let wait = protocols.header_read_timeout.saturating_sub(PARK_AFTER);
            tokio::select! {
                ready = tokio::time::timeout(wait, io.io.inner().readable()) => match ready {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => return Err(err.into()),
                    Err(_) => return Ok(()),
                },
                _ = stop.changed() => return Ok(()),
            }
        }
    }
}

/// Reads until the bytes are known to be (or not to be) the HTTP/2 preface; `None` on EOF.
async fn read_preface(stream: &mut TcpStream) -> std::io::Result<Option<(Bytes, bool)>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(None);
        }
        len += n;
        if buf[..len] != H2_PREFACE[..len] {
            return Ok(Some((Bytes::copy_from_slice(&buf[..len]), false)));
        }
        if len == H2_PREFACE.len() {
            return Ok(Some((Bytes::copy_from_slice(&buf), true)));
        }
    }
}

/// `first` then `then`, in a buffer of their own.
fn concat(first: &[u8], then: &[u8]) -> Bytes {
    if first.is_empty() && then.is_empty() {
        return Bytes::new();
    }
    let mut all = BytesMut::with_capacity(first.len() + then.len());
    all.extend_from_slice(first);
    all.extend_from_slice(then);
    all.freeze()
}

/// Drives an HTTP/1 connection; `true` when it was parked (ended at an idle point with the
/// socket left open), `false` when it is finished (closed, upgraded, shut down, or cut off by
/// `header_read_timeout`).
///
/// One timer serves both deadlines that count from the end of the last exchange (or from the
/// start): parking after [`PARK_AFTER`], and closing the connection when no complete request
/// head has come within `header_read_timeout` — what hyper's own header timer does, which
/// costs an allocation and a timer registration per request (so it is off for these
/// connections). While an exchange is active no deadline applies, as with hyper's.
async fn drive_h1<C>(
    conn: &mut C,
    state: &ConnState,
    stop: &mut watch::Receiver<()>,
    header_read_timeout: Duration,
) -> Result<bool, BoxError>
where
    C: GracefulH1 + Unpin,
{
    // The stop signal's future is polled once to register, then only when the cheap version
    // check says it changed (polling it costs more than a third of this function's own time).
    let mut watcher = stop.clone();
    let mut stopped = pin!(watcher.changed());
    let mut registered = false;
    let mut since = Instant::now();
    let mut timer = pin!(tokio::time::sleep_until(
        since + PARK_AFTER.min(header_read_timeout)
    ));
    // Exchanges seen so far, and whether one was seen active (the deadlines restart after it).
    let mut seen = state.exchanges.load(Relaxed);
    let mut busy = false;
    // PARK_AFTER has passed since `since`: park as soon as hyper is idle.
    let mut park_due = false;
    let mut parking = false;
    let mut stopping = false;
    std::future::poll_fn(|cx| {
        if !stopping
            && (!registered || stop.has_changed().unwrap_or(true))
            && stopped.as_mut().poll(cx).is_ready()
        {
            stopping = true;
            conn.graceful();
        }
        registered = true;
        loop {
            if let Poll::Ready(done) = Pin::new(&mut *conn).poll(cx) {
                return Poll::Ready(done.map(|()| parking).map_err(Into::into));
            }
            if parking || stopping {
                return Poll::Pending;
            }
            if state.active.load(Relaxed) > 0 {
                busy = true;
                return Poll::Pending;
            }
            let exchanges = state.exchanges.load(Relaxed);
            if busy || exchanges != seen {
                // An exchange ended since the last look: the deadlines start again.
                busy = false;
                seen = exchanges;
                park_due = false;
                since = Instant::now();
                timer
                    .as_mut()
                    .reset(since + PARK_AFTER.min(header_read_timeout));
            }
            if park_due && state.is_idle() {
                // hyper is idle: ending it now closes it at once, without a response.
                parking = true;
                state.parking.store(true, Relaxed);
                conn.graceful();
                continue;
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if !park_due && PARK_AFTER < header_read_timeout {
                park_due = true;
                timer.as_mut().reset(since + header_read_timeout);
                continue;
            }
            // No complete request head within `header_read_timeout`: closed, as hyper would.
            return Poll::Ready(Ok(false));
        }
    })
    .await
}

/// The HTTP/1 connection type driven by [`drive_h1`].
trait GracefulH1: Future<Output = Result<(), hyper::Error>> {
    fn graceful(&mut self);
}

impl<I, S> GracefulH1 for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = Tracked>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    Self: Unpin,
{
    fn graceful(&mut self) {
        Pin::new(self).graceful_shutdown();
    }
}

/// What a connection's parts know about its state, to tell when hyper is idle.
#[derive(Debug, Default)]
struct ConnState {
    /// Exchanges whose response (head and body) is not finished.
    active: AtomicUsize,
    /// Exchanges started on this connection.
    exchanges: AtomicUsize,
    /// An exchange finished on this hyper connection.
    served: AtomicBool,
    /// A request had a body: hyper may still be reading it.
    had_body: AtomicBool,
    /// The last read found no data (hyper waits for the client).
    read_waiting: AtomicBool,
    /// Bytes were written since the last completed flush.
    unflushed: AtomicBool,
    /// The connection is being parked: shutting the socket down is skipped.
    parking: AtomicBool,
}

impl ConnState {
    /// hyper has answered every request, flushed, and waits for the next one, with nothing
    /// half-read: the connection can end here without a client noticing.
    fn is_idle(&self) -> bool {
        self.active.load(Relaxed) == 0
            && self.served.load(Relaxed)
            && !self.had_body.load(Relaxed)
            && self.read_waiting.load(Relaxed)
            && !self.unflushed.load(Relaxed)
    }

    fn reset(&self) {
        self.served.store(false, Relaxed);
        self.had_body.store(false, Relaxed);
        self.read_waiting.store(false, Relaxed);
        self.unflushed.store(false, Relaxed);
        self.parking.store(false, Relaxed);
    }
}

/// One request/response exchange in flight; ends when the response body is dropped.
#[derive(Debug)]
struct Exchange(Arc<ConnState>);

impl Exchange {
    fn start(state: Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Relaxed);
        state.exchanges.fetch_add(1, Relaxed);
        Exchange(state)
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
        self.0.served.store(true, Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its [`Exchange`] when hyper drops it.
    struct Tracked {
        #[pin]
        body: ResBody,
        _exchange: Exchange,
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it: bytes read before hyper took over come first, reads and
/// writes are noted in [`ConnState`], and shutting down is skipped while parking.
struct ConnIo {
    io: TokioIo<TcpStream>,
    prefix: Bytes,
    state: Arc<ConnState>,
}

impl hyper::rt::Read for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            self.state.read_waiting.store(false, Relaxed);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        self.state.read_waiting.store(polled.is_pending(), Relaxed);
        polled
    }
}

impl hyper::rt::Write for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.state.unflushed.store(true, Relaxed);
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.state.unflushed.store(true, Relaxed);
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.state.unflushed.store(false, Relaxed);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.state.parking.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The host a request is for: `Host` (HTTP/1.1) or the URI authority (HTTP/2), lowercase,
/// without port.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    host_of(req).map(Cow::into_owned)
}

/// [`request_host`] without allocating when the host is already in canonical form (the common
/// case: lowercase, no port, no trailing dot).
fn host_of<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    // `[::1]:8080` or `name:8080`; a bare IPv6 literal is bracketed. (A byte search: `str`'s
    // pattern searcher costs more than the rest of this function.)
    let host = match raw.bytes().rposition(|b| b == b':') {
        Some(at) if raw.as_bytes()[at + 1..].iter().all(u8::is_ascii_digit) => &raw[..at],
        _ => raw,
    };
    let host = host.trim_end_matches('.');
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// The gateway's request handler: route by host, enforce the body limit, serve through the
/// engine, count it.
pub async fn handle(engine: Engine, req: Request<Incoming>, info: ClientInfo) -> Response<ResBody> {
    let started = Instant::now();
    let Some(host) = host_of(&req) else {
        return failure(StatusCode::BAD_REQUEST, "request has no Host header", None);
    };
    let Some(app) = engine.route(&host) else {
        return failure(
            StatusCode::NOT_FOUND,
            &format!("no app is routed for host {host}"),
            None,
        );
    };
    let max_body = engine.server_config().max_body_bytes;
    if let (Some(max), Some(len)) = (max_body, content_length(&req)) {
        if len > max {
            let res = failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body of {len} bytes is over the limit of {max} bytes"),
                None,
            );
            engine
                .metrics()
                .request(&app.spec.name, 413, started.elapsed());
            return res;
        }
    }
    let mut req = req.map(|body| -> ReqBody {
        match max_body {
            Some(max) => http_body_util::Limited::new(body, max as usize).boxed(),
            None => body.map_err(|e| -> BoxError { Box::new(e) }).boxed(),
        }
    });
    req.extensions_mut().insert(info);
    let res = engine.serve(&app, req).await;
    engine
        .metrics()
        .request(&app.spec.name, res.status().as_u16(), started.elapsed());
    res
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    })
}

/// A TLS acceptor with ALPN `h2` and `http/1.1` from PEM files.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<TlsAcceptor, BoxError> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .map_err(|e| format!("server.tls.cert {}: {e}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("server.tls.cert {}: {e}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(|e| format!("server.tls.key {}: {e}", key.display()))?,
    ))
    .map_err(|e| format!("server.tls.key {}: {e}", key.display()))?
    .ok_or_else(|| format!("server.tls.key {}: no private key found", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A server whose handler answers `ok <path>`; returns its address.
    async fn ok_server() -> SocketAddr {
        ok_server_with(Duration::from_secs(5)).await
    }

    async fn ok_server_with(header_read_timeout: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = ConnSettings {
            header_read_timeout,
            max_header_bytes: 16 * 1024,
        };
        let handler = |req: Request<Incoming>, _info: ClientInfo| async move {
            let body = http_body_util::Full::new(Bytes::from(format!("ok {}", req.uri().path())))
                .map_err(|never| match never {})
                .boxed_unsync();
            Response::new(body)
        };
        tokio::spawn(serve(
            listener,
            None,
            settings,
            handler,
            std::future::pending(),
            Duration::from_secs(1),
        ));
        addr
    }

    async fn read_response(conn: &mut TcpStream, path: &str) {
        let want = format!("ok {path}");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).ends_with(&want) {
            let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
                .await
                .expect("response in time")
                .unwrap();
            assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(!text.contains("connection: close"), "{text}");
    }

    #[tokio::test]
    async fn a_parked_keep_alive_connection_serves_the_next_request() {
        let addr = ok_server().await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        for path in ["/a", "/b", "/c"] {
            conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            read_response(&mut conn, path).await;
            // Long enough for the connection to park.
            tokio::time::sleep(PARK_AFTER * 2).await;
        }
    }

    #[tokio::test]
    async fn a_half_sent_pipelined_request_survives_parking() {
        let addr = ok_server().await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\nGET /sec")
            .await
            .unwrap();
        read_response(&mut conn, "/first").await;
        tokio::time::sleep(PARK_AFTER * 2).await;
        conn.write_all(b"ond HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut conn, "/second").await;
    }

    #[tokio::test]
    async fn a_busy_keep_alive_connection_outlives_the_header_timeout() {
        // The header timeout counts from the last exchange's end, not from the connection's
        // start: requests that each complete within one poll keep it open.
        let timeout = Duration::from_millis(300);
        let addr = ok_server_with(timeout).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < timeout * 4 {
            let path = format!("/{n}");
            conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            read_response(&mut conn, &path).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            n += 1;
        }
    }

    #[tokio::test]
    async fn a_head_not_completed_in_time_is_cut_off() {
        let timeout = Duration::from_millis(600);
        for pause in [Duration::ZERO, PARK_AFTER * 2] {
            // After a response (and after parking, which the rest of the head finds), a head
            // that never completes: closed without an answer once the timeout has passed, not
            // before.
            let addr = ok_server_with(timeout).await;
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            read_response(&mut conn, "/a").await;
            tokio::time::sleep(pause).await;
            let started = Instant::now();
            conn.write_all(b"GET /b HTTP/1.1\r\nho").await.unwrap();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
                .await
                .expect("closed in time");
            assert!(
                read.is_ok()
                    || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
            );
            assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
            assert!(
                started.elapsed() + pause >= timeout,
                "closed after {:?}",
                started.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn h2c_prior_knowledge_is_served_next_to_http1() {
        let addr = ok_server().await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get("http://x/h2")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        assert_eq!(res.version(), http::Version::HTTP_2);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok /h2");
    }

    #[test]
    fn host_is_lowercased_without_port() {
        let req = |host: &str| Request::builder().header("host", host).body(()).unwrap();
        assert_eq!(
            request_host(&req("Hello.LOCALHOST:8080")).unwrap(),
            "hello.localhost"
        );
        assert_eq!(
            request_host(&req("hello.localhost.")).unwrap(),
            "hello.localhost"
        );
        assert_eq!(request_host(&req("[::1]:8080")).unwrap(), "[::1]");
        let h2 = Request::builder()
            .uri("http://api.example.com:443/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h2).unwrap(), "api.example.com");
    }
}
