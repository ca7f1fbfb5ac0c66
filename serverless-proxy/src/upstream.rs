//! Connections to instances, kept for reuse: HTTP/1.1 connections per instance (one request at
//! a time each, back to the idle list when the response body ends) and one multiplexed HTTP/2
//! connection per instance for h2c apps.
//!
//! Body-less, non-upgrade HTTP/1.1 requests — most requests — go through the lean client in
//! [`crate::h1`]: the request's task writes and reads the connection itself. The rest goes
//! through hyper's connection-level client (`hyper::client::conn`). Neither is hyper-util's
//! pooled `Client`: the request already knows its instance (the lease picked it), so there is
//! no URI to format and parse, no pool key to hash, and no task spawned per request to watch a
//! connection become idle — the response body gives the connection back when it ends. A
//! request that a connection refused before writing it (closed meanwhile) comes back and goes
//! out on another connection. The engine closes an instance's idle connections when its pool
//! removes the instance ([`Upstreams::forget`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use foldhash::HashMap;
use futures_util::future::Either;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serverless_core::{BackendError, Connection, ContainerBackend, InstanceId};
use tokio::time::Instant;

use crate::h1;
use crate::response::{BoxError, ReqBody};

/// Idle HTTP/1.1 connections older than this are closed instead of reused (apps may close
/// idle keep-alive connections themselves; a fresh dial into the instance is cheap).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many idle HTTP/1.1 connections are kept per instance.
const MAX_IDLE_PER_INSTANCE: usize = 256;

/// Why a request got no response from an instance.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(BackendError),
    /// The connection failed; the request comes back if it was not written.
    Failed(hyper::Error),
    /// The connection of the lean HTTP/1.1 client failed; the request comes back if it was
    /// not written.
    Io(std::io::Error),
}

/// A failed send, with the request when it was not sent, or when it was but is still at hand
/// (the lean client's requests: no body, so the request is whole after it was written).
pub(crate) struct Failed {
    pub(crate) error: SendError,
    pub(crate) request: Option<Request<ReqBody>>,
    /// Whether the request was written: the instance may have processed it, so it may only go
    /// out again if it is idempotent.
    pub(crate) sent: bool,
}

/// After a failed send: the request back to go out again when a *kept* connection refused it
/// unwritten (it closed meanwhile); otherwise the failure, with the request if it was not sent.
/// (The request travels by value, as in hyper's own `TrySendError`.)
#[allow(clippy::result_large_err)]
fn again_or_fail(
    mut err: TrySendError<Request<ReqBody>>,
    kept: bool,
) -> Result<Request<ReqBody>, Failed> {
    match err.take_message() {
        Some(back) if kept => Ok(back),
        request => Err(Failed {
            error: SendError::Failed(err.into_error()),
            request,
            sent: false,
        }),
    }
}

struct Idle {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
}

struct Inner {
    backend: Arc<dyn ContainerBackend>,
    lean: Mutex<HashMap<InstanceId, Vec<(h1::Conn, Instant)>>>,
    /// Whether the task that closes stale idle lean connections runs.
    sweeping: AtomicBool,
    http1: Mutex<HashMap<InstanceId, VecDeque<Idle>>>,
    http2: Mutex<HashMap<InstanceId, http2::SendRequest<ReqBody>>>,
}

impl Inner {
    fn http1(&self) -> MutexGuard<'_, HashMap<InstanceId, VecDeque<Idle>>> {
        self.http1.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn http2(&self) -> MutexGuard<'_, HashMap<InstanceId, http2::SendRequest<ReqBody>>> {
        self.http2.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lean(&self) -> MutexGuard<'_, HashMap<InstanceId, Vec<(h1::Conn, Instant)>>> {
        self.lean.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle lean connection that still looks open and is young enough.
    fn checkout_lean(&self, instance: &InstanceId) -> Option<h1::Conn> {
        let mut idle = self.lean();
        let list = idle.get_mut(instance)?;
        let now = Instant::now();
        let found = loop {
            let Some((mut conn, since)) = list.pop() else {
                break None;
            };
            if now.duration_since(since) >= IDLE_TIMEOUT {
                list.clear();
                break None;
            }
            if conn.is_usable() {
                break Some(conn);
            }
        };
        // An emptied list stays (its room is reused when the connection comes back); the
        // sweep and `forget` remove it.
        found
    }

    fn give_back_lean(self: &Arc<Self>, instance: &InstanceId, conn: h1::Conn) {
        {
            let mut idle = self.lean();
            let list = idle.entry(instance.clone()).or_default();
            if list.len() < MAX_IDLE_PER_INSTANCE {
                list.push((conn, Instant::now()));
            }
        }
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            // Nothing watches an idle lean connection: every so often, close the ones that
            // expired or that their instance closed. Ends with the last `Upstreams`.
            let inner = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match inner.upgrade() {
                        Some(inner) => inner.sweep_lean(),
                        None => break,
                    }
                }
            });
        }
    }

    /// Closes idle lean connections that are too old or that their instance closed (nothing
    /// watches them while they sit idle).
    fn sweep_lean(&self) {
        let now = Instant::now();
        let mut idle = self.lean();
        idle.retain(|_, list| {
            list.retain_mut(|(conn, since)| {
                now.duration_since(*since) < IDLE_TIMEOUT && conn.is_usable()
            });
            !list.is_empty()
        });
    }

    /// The most recently used idle connection that is ready, still open and young enough.
    fn checkout(&self, instance: &InstanceId) -> Option<http1::SendRequest<ReqBody>> {
        let mut idle = self.http1();
        let list = idle.get_mut(instance)?;
        let now = Instant::now();
        // Given back at its body's end, a connection is ready once its task has seen that end
        // too (on a multi-thread runtime that may be a moment later): such ones stay listed.
        let mut not_yet = Vec::new();
        let found = loop {
            let Some(conn) = list.pop_back() else {
                break None;
            };
            if now.duration_since(conn.since) >= IDLE_TIMEOUT {
                // Everything before it is older still.
                list.clear();
                break None;
            }
            if conn.sender.is_ready() {
                break Some(conn.sender);
            }
            if !conn.sender.is_closed() {
                not_yet.push(conn);
            }
        };
        list.extend(not_yet.into_iter().rev());
        if list.is_empty() {
            idle.remove(instance);
        }
        found
    }

    fn give_back(&self, instance: InstanceId, sender: http1::SendRequest<ReqBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.http1();
        let list = idle.entry(instance).or_default();
        if list.len() < MAX_IDLE_PER_INSTANCE {
            list.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Forgets closed connections of an instance (called when one of its connections ends).
    fn prune(&self, instance: &InstanceId) {
        {
            let mut idle = self.http1();
            if let Some(list) = idle.get_mut(instance) {
                list.retain(|c| !c.sender.is_closed());
                if list.is_empty() {
                    idle.remove(instance);
                }
            }
        }
        let mut h2 = self.http2();
        if h2.get(instance).is_some_and(|s| s.is_closed()) {
            h2.remove(instance);
        }
    }
}

/// The connections to every instance, shared by all requests. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Upstreams {
    inner: Arc<Inner>,
}

impl Upstreams {
    pub(crate) fn new(backend: Arc<dyn ContainerBackend>) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                lean: Mutex::new(HashMap::default()),
                sweeping: AtomicBool::new(false),
                http1: Mutex::new(HashMap::default()),
                http2: Mutex::new(HashMap::default()),
            }),
        }
    }

    /// Sends `req` to `instance` over a kept connection or a new one.
    ///
    /// Not an `async fn`: that would keep a slot for `req` next to the chosen path's future,
    /// which has its own. hyper's paths are boxed: their futures are several times the lean
    /// one's, and every request's future would otherwise be as large as the largest (memory to
    /// allocate and copy per request, for the few that take them).
    pub(crate) fn send<'a>(
        &'a self,
        instance: &'a InstanceId,
        h2c: bool,
        req: Request<ReqBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Failed>> + Send + 'a {
        type Boxed<'a> =
            Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, Failed>> + Send + 'a>>;
        if !h2c && h1::fits(&req) {
            Either::Left(self.send_lean(instance, req))
        } else if h2c {
            Either::Right(Box::pin(self.send_http2(instance, req)) as Boxed<'a>)
        } else {
            Either::Right(Box::pin(self.send_http1(instance, req)) as Boxed<'a>)
        }
    }

    /// The common request (no body, no upgrade) through the lean HTTP/1.1 client.
    async fn send_lean(
        &self,
        instance: &InstanceId,
        req: Request<ReqBody>,
    ) -> Result<Response<UpstreamBody>, Failed> {
        loop {
            let (mut conn, kept) = match self.inner.checkout_lean(instance) {
                Some(conn) => (conn, true),
                None => match self.inner.backend.connect(instance).await {
                    Ok(io) => (h1::Conn::new(io), false),
                    Err(error) => {
                        return Err(Failed {
                            error: SendError::Connect(error),
                            request: Some(req),
                            sent: false,
                        })
                    }
                },
            };
            if let Err(error) = conn.write_request(&req).await {
                // Not (completely) written, so not processed: a kept connection that closed
                // meanwhile is simply replaced; a new one that failed gives the request back.
                if kept {
                    continue;
                }
                return Err(Failed {
                    error: SendError::Io(error),
                    request: Some(req),
                    sent: false,
                });
            }
            let error = match conn.read_response(req.method()).await {
                Ok(Some((res, reader))) => {
                    let back = (instance.clone(), self.inner.clone());
                    return Ok(res.map(|()| UpstreamBody::lean(reader, back)));
                }
                Ok(None) => std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the instance closed the connection without answering",
                ),
                Err(error) => error,
            };
            return Err(Failed {
                error: SendError::Io(error),
                request: Some(req),
                sent: true,
            });
        }
    }

    async fn send_http1(
        &self,
        instance: &InstanceId,
        mut req: Request<ReqBody>,
    ) -> Result<Response<UpstreamBody>, Failed> {
        loop {
            let (mut sender, kept) = match self.inner.checkout(instance) {
                Some(sender) => (sender, true),
                None => match self.dial_http1(instance).await {
                    Ok(sender) => (sender, false),
                    Err(error) => {
                        return Err(Failed {
                            error,
                            request: Some(req),
                            sent: false,
                        })
                    }
                },
            };
            match sender.try_send_request(req).await {
                Ok(res) => {
                    let giver =
                        (res.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| GiveBack {
                            sender,
                            instance: instance.clone(),
                            upstreams: self.inner.clone(),
                        });
                    return Ok(res.map(|body| UpstreamBody::new(body, giver)));
                }
                Err(err) => req = again_or_fail(err, kept)?,
            }
        }
    }

    async fn send_http2(
        &self,
        instance: &InstanceId,
        mut req: Request<ReqBody>,
    ) -> Result<Response<UpstreamBody>, Failed> {
        let mut kept = self.inner.http2().get(instance).cloned();
        loop {
            let (mut sender, was_kept) = match kept.take() {
                Some(sender) if !sender.is_closed() => (sender, true),
                _ => match self.dial_http2(instance).await {
                    Ok(sender) => (sender, false),
                    Err(error) => {
                        return Err(Failed {
                            error,
                            request: Some(req),
                            sent: false,
                        })
                    }
                },
            };
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(res.map(|body| UpstreamBody::new(body, None))),
                Err(err) => req = again_or_fail(err, was_kept)?,
            }
        }
    }

    async fn dial_http1(
        &self,
        instance: &InstanceId,
    ) -> Result<http1::SendRequest<ReqBody>, SendError> {
        let (sender, conn) = http1::Builder::new()
            .handshake(self.dial(instance).await?)
            .await
            .map_err(SendError::Failed)?;
        self.watch(instance, conn.with_upgrades());
        Ok(sender)
    }

    async fn dial_http2(
        &self,
        instance: &InstanceId,
    ) -> Result<http2::SendRequest<ReqBody>, SendError> {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(self.dial(instance).await?)
            .await
            .map_err(SendError::Failed)?;
        self.watch(instance, conn);
        self.inner.http2().insert(instance.clone(), sender.clone());
        Ok(sender)
    }

    async fn dial(&self, instance: &InstanceId) -> Result<TokioIo<Connection>, SendError> {
        let io = self
            .inner
            .backend
            .connect(instance)
            .await
            .map_err(SendError::Connect)?;
        Ok(TokioIo::new(io))
    }

    /// Runs a connection's task; when it ends, the instance's closed connections are forgotten.
    fn watch<C>(&self, instance: &InstanceId, conn: C)
    where
        C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
    {
        let upstreams = self.inner.clone();
        let id = instance.clone();
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(instance = %id, %error, "connection to instance ended");
            }
            upstreams.prune(&id);
        });
    }

    /// Closes every connection kept idle for `instance`: it is gone.
    pub(crate) fn forget(&self, instance: &InstanceId) {
        self.inner.lean().remove(instance);
        self.inner.http1().remove(instance);
        self.inner.http2().remove(instance);
    }

    /// Idle HTTP/1.1 connections kept for `instance` (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn idle(&self, instance: &InstanceId) -> usize {
        self.inner.http1().get(instance).map_or(0, VecDeque::len)
            + self.inner.lean().get(instance).map_or(0, Vec::len)
    }
}

/// Returns an HTTP/1.1 connection to the idle list once its response is complete.
struct GiveBack {
    sender: http1::SendRequest<ReqBody>,
    instance: InstanceId,
    upstreams: Arc<Inner>,
}

impl GiveBack {
    fn give(self) {
        self.upstreams.give_back(self.instance, self.sender);
    }
}

/// An instance's response body; its connection is reused once the body has ended (a body
/// dropped before its end closes the connection, which cannot be reused then).
pub(crate) struct UpstreamBody {
    kind: Kind,
}

enum Kind {
    Hyper {
        inner: Incoming,
        giver: Option<GiveBack>,
    },
    Lean {
        reader: h1::Reader,
        back: Option<(InstanceId, Arc<Inner>)>,
    },
}

impl UpstreamBody {
    fn new(inner: Incoming, giver: Option<GiveBack>) -> Self {
        let mut giver = giver;
        if inner.is_end_stream() {
            if let Some(giver) = giver.take() {
                giver.give();
            }
        }
        Self {
            kind: Kind::Hyper { inner, giver },
        }
    }

    fn lean(reader: h1::Reader, back: (InstanceId, Arc<Inner>)) -> Self {
        let mut body = Self {
            kind: Kind::Lean {
                reader,
                back: Some(back),
            },
        };
        if body.is_end_stream() {
            // Nothing to read: settle the connection now (servers do not poll such a body).
            let _ = body.poll_lean(&mut Context::from_waker(std::task::Waker::noop()));
        }
        body
    }

    fn poll_lean(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Kind::Lean { reader, back } = &mut self.kind else {
            return Poll::Ready(None);
        };
        match ready!(reader.poll_read(cx)) {
            Ok(h1::Read::Frame(frame)) => Poll::Ready(Some(Ok(frame))),
            Ok(h1::Read::End(conn)) => {
                if let (Some(conn), Some((instance, upstreams))) = (conn, back.take()) {
                    upstreams.give_back_lean(&instance, conn);
                }
                Poll::Ready(None)
            }
            Err(e) => {
                back.take();
                Poll::Ready(Some(Err(Box::new(e))))
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let (inner, giver) = match &mut this.kind {
            Kind::Hyper { inner, giver } => (inner, giver),
            Kind::Lean { .. } => {
                let frame = ready!(this.poll_lean(cx));
                if let (Some(Ok(_)), Kind::Lean { reader, .. }) = (&frame, &this.kind) {
                    if reader.is_end() {
                        // Servers stop polling at `is_end_stream`: settle the connection.
                        let _ = this.poll_lean(cx);
                    }
                }
                return Poll::Ready(frame);
            }
        };
        let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
        match &frame {
            // Servers stop polling once `is_end_stream` says so: give the connection back on
            // the last frame, not only on the end.
            Some(Ok(_)) if !inner.is_end_stream() => {}
            None | Some(Ok(_)) => {
                if let Some(giver) = giver.take() {
                    giver.give();
                }
            }
            Some(Err(_)) => {
                giver.take();
            }
        }
        Poll::Ready(frame.map(|f| f.map_err(|e| -> BoxError { Box::new(e) })))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Hyper { inner, .. } => inner.is_end_stream(),
            Kind::Lean { reader, .. } => reader.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Hyper { inner, .. } => inner.size_hint(),
            Kind::Lean { reader, .. } => reader
                .exact_len()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use serverless_core::{
        AppSpec, BackendError, Connection, ErrorKind, Exit, OwnedInstance, Started,
    };
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Every instance is one loopback HTTP/1.1 server that counts its connections and closes
    /// each after `per_conn` requests.
    struct Local {
        addr: Option<SocketAddr>,
    }

    #[async_trait]
    impl ContainerBackend for Local {
        async fn prepare(&self, _: &AppSpec) -> Result<(), BackendError> {
            Ok(())
        }
        async fn start(&self, _: &AppSpec, _: &InstanceId) -> Result<Started, BackendError> {
            unimplemented!()
        }
        async fn stop(&self, _: &InstanceId, _: Duration) -> Result<(), BackendError> {
            Ok(())
        }
        async fn wait(&self, _: &InstanceId) -> Result<Exit, BackendError> {
            std::future::pending().await
        }
        async fn connect(&self, _: &InstanceId) -> Result<Connection, BackendError> {
            let addr = self
                .addr
                .ok_or_else(|| BackendError::new(ErrorKind::Unavailable, "no such instance"))?;
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| BackendError::new(ErrorKind::Unavailable, e.to_string()))?;
            Ok(Box::new(stream))
        }
        async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
            Ok(Vec::new())
        }
        async fn logs(&self, _: &InstanceId) -> Result<String, BackendError> {
            Ok(String::new())
        }
    }

    async fn server(keep_alive: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(
                            TokioIo::new(stream),
                            service_fn(|req: Request<Incoming>| async move {
                                let body = req.into_body().collect().await?.to_bytes();
                                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(
                                    format!("got {} bytes", body.len()),
                                ))))
                            }),
                        ),
                );
            }
        });
        (addr, conns)
    }

    /// A POST with `body` (through hyper's client), or a body-less GET when it is empty
    /// (through the lean client): the tests below run both.
    fn request(body: &'static str) -> Request<ReqBody> {
        let mut req = Request::new(if body.is_empty() {
            http_body_util::Empty::new().map_err(|e| match e {}).boxed()
        } else {
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|e| match e {})
                .boxed()
        });
        if !body.is_empty() {
            *req.method_mut() = http::Method::POST;
        }
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("app"));
        req
    }

    async fn text(res: Response<UpstreamBody>) -> String {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn connections_are_reused_after_the_body_ends() {
        for body in ["hello", ""] {
            let (addr, conns) = server(true).await;
            let up = Upstreams::new(Arc::new(Local { addr: Some(addr) }));
            let id = InstanceId::new("i-1");
            for _ in 0..5 {
                let res = up.send(&id, false, request(body)).await.ok().unwrap();
                assert_eq!(up.idle(&id), 0, "busy until the body ends");
                assert_eq!(text(res).await, format!("got {} bytes", body.len()));
                assert_eq!(up.idle(&id), 1);
            }
            assert_eq!(conns.load(Ordering::SeqCst), 1, "body {body:?}");
        }
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_not_reused() {
        for body in ["hi", ""] {
            let (addr, conns) = server(false).await;
            let up = Upstreams::new(Arc::new(Local { addr: Some(addr) }));
            let id = InstanceId::new("i-1");
            for i in 1..=3 {
                let res = up.send(&id, false, request(body)).await.ok().unwrap();
                // The server closes after answering; the next request must not fail on it.
                assert_eq!(text(res).await, format!("got {} bytes", body.len()));
                assert_eq!(conns.load(Ordering::SeqCst), i);
            }
            tokio::time::timeout(Duration::from_secs(10), async {
                while up.idle(&id) > 0 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("closed connections are forgotten");
        }
    }

    #[tokio::test]
    async fn a_dropped_body_closes_its_connection() {
        for body in ["x", ""] {
            let (addr, conns) = server(true).await;
            let up = Upstreams::new(Arc::new(Local { addr: Some(addr) }));
            let id = InstanceId::new("i-1");
            let res = up.send(&id, false, request(body)).await.ok().unwrap();
            drop(res);
            assert_eq!(up.idle(&id), 0);
            let res = up.send(&id, false, request(body)).await.ok().unwrap();
            assert_eq!(text(res).await, format!("got {} bytes", body.len()));
            assert_eq!(conns.load(Ordering::SeqCst), 2);
        }
    }

    #[tokio::test]
    async fn idle_connections_go_with_their_instance_or_when_it_closes_them() {
        let (addr, conns) = server(true).await;
        let up = Upstreams::new(Arc::new(Local { addr: Some(addr) }));
        let id = InstanceId::new("i-1");
        let (a, b) = (
            up.send(&id, false, request("")).await.ok().unwrap(),
            up.send(&id, false, request("")).await.ok().unwrap(),
        );
        assert_eq!(text(a).await, "got 0 bytes");
        assert_eq!(text(b).await, "got 0 bytes");
        assert_eq!(up.idle(&id), 2);
        up.forget(&id);
        assert_eq!(up.idle(&id), 0, "the instance is gone");

        // An idle connection the instance closes later is swept; a live one stays.
        let res = up.send(&id, false, request("")).await.ok().unwrap();
        assert_eq!(text(res).await, "got 0 bytes");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let addr2 = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            drop(stream);
            let _ = closed_tx.send(());
        });
        let other = InstanceId::new("i-2");
        let closing = Upstreams::new(Arc::new(Local { addr: Some(addr2) }));
        let res = closing.send(&other, false, request("")).await.ok().unwrap();
        assert_eq!(text(res).await, "ok");
        closed.await.unwrap();
        assert_eq!(closing.idle(&other), 1, "kept: it looked reusable");
        // The FIN arrives asynchronously: sweep until it has been seen.
        tokio::time::timeout(Duration::from_secs(10), async {
            while closing.idle(&other) > 0 {
                closing.inner.sweep_lean();
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a connection its instance closed is swept");
        up.inner.sweep_lean();
        assert_eq!(up.idle(&id), 1, "a live idle connection stays");
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_unreachable_instance_gives_the_request_back() {
        let up = Upstreams::new(Arc::new(Local { addr: None }));
        let failed = up
            .send(&InstanceId::new("gone"), false, request("body"))
            .await
            .err()
            .unwrap();
        assert!(matches!(failed.error, SendError::Connect(_)));
        let req = failed.request.expect("not sent, so it comes back");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "body", "with its body");
    }
}
