//! Connections to instances, kept for reuse: HTTP/1.1 connections per instance (one request at
//! a time each, back to the idle list when the response body ends) and one multiplexed HTTP/2
//! connection per instance for h2c apps.
//!
//! Built on hyper's connection-level client (`hyper::client::conn`) rather than hyper-util's
//! pooled `Client`: the request already knows its instance (the lease picked it), so there is
//! no URI to format and parse, no pool key to hash, and no task spawned per request to watch a
//! connection become idle — the response body gives the connection back when it ends. A
//! request that a connection refused before writing it (closed meanwhile) comes back and goes
//! out on another connection.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serverless_core::{BackendError, Connection, ContainerBackend, InstanceId};
use tokio::time::Instant;

use crate::response::ReqBody;

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
}

/// A failed send, with the request when it was not sent.
pub(crate) struct Failed {
    pub(crate) error: SendError,
    pub(crate) request: Option<Request<ReqBody>>,
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
        }),
    }
}

struct Idle {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
}

struct Inner {
    backend: Arc<dyn ContainerBackend>,
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
                http1: Mutex::new(HashMap::new()),
                http2: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sends `req` to `instance` over a kept connection or a new one.
    pub(crate) async fn send(
        &self,
        instance: &InstanceId,
        h2c: bool,
        req: Request<ReqBody>,
    ) -> Result<Response<UpstreamBody>, Failed> {
        if h2c {
            self.send_http2(instance, req).await
        } else {
            self.send_http1(instance, req).await
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

    /// Idle HTTP/1.1 connections kept for `instance` (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn idle(&self, instance: &InstanceId) -> usize {
        self.inner.http1().get(instance).map_or(0, VecDeque::len)
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

pin_project_lite::pin_project! {
    /// An instance's response body; its connection is reused once the body has ended (a body
    /// dropped before its end closes the connection, which cannot be reused then).
    pub(crate) struct UpstreamBody {
        #[pin]
        inner: Incoming,
        giver: Option<GiveBack>,
    }
}

impl UpstreamBody {
    fn new(inner: Incoming, giver: Option<GiveBack>) -> Self {
        let mut body = Self { inner, giver };
        if body.inner.is_end_stream() {
            if let Some(giver) = body.giver.take() {
                giver.give();
            }
        }
        body
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            // Servers stop polling once `is_end_stream` says so: give the connection back on
            // the last frame, not only on the end.
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            None | Some(Ok(_)) => {
                if let Some(giver) = this.giver.take() {
                    giver.give();
                }
            }
            Some(Err(_)) => {
                this.giver.take();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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

    fn request(body: &'static str) -> Request<ReqBody> {
        let mut req = Request::new(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|e| match e {})
                .boxed(),
        );
        *req.method_mut() = http::Method::POST;
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
        let (addr, conns) = server(true).await;
        let up = Upstreams::new(Arc::new(Local { addr: Some(addr) }));
        let id = InstanceId::new("i-1");
        for _ in 0..5 {
            let res = up.send(&id, false, request("hello")).await.ok().unwrap();
            assert_eq!(up.idle(&id), 0, "busy until the body ends");
            assert_eq!(text(res).await, "got 5 bytes");
            assert_eq!(up.idle(&id), 1);
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_not_reused() {
        let (addr, conns) = server(false).await;
        let up = Upstreams::new(Arc::new(Local { addr: Some(addr) }));
        let id = InstanceId::new("i-1");
        for i in 1..=3 {
            let res = up.send(&id, false, request("hi")).await.ok().unwrap();
            // The server closes after answering; the next request must not fail on it.
            assert_eq!(text(res).await, "got 2 bytes");
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

    #[tokio::test]
    async fn a_dropped_body_closes_its_connection() {
        let (addr, conns) = server(true).await;
        let up = Upstreams::new(Arc::new(Local { addr: Some(addr) }));
        let id = InstanceId::new("i-1");
        let res = up.send(&id, false, request("x")).await.ok().unwrap();
        drop(res);
        assert_eq!(up.idle(&id), 0);
        let res = up.send(&id, false, request("x")).await.ok().unwrap();
        assert_eq!(text(res).await, "got 1 bytes");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
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
