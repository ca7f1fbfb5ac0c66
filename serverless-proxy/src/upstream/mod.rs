//! Connections to instances, kept for reuse (see [`idle`]): HTTP/1.1 connections per instance
//! (one request at a time each, back to the idle list when the response body ends) and one
//! multiplexed HTTP/2 connection per instance for h2c apps.
//!
//! Body-less, non-upgrade HTTP/1.1 requests — most requests — go through the lean client in
//! [`crate::h1`]: the request's task writes and reads the connection itself. The rest goes
//! through hyper's connection-level client (`hyper::client::conn`). Neither is hyper-util's
//! pooled `Client`: the request already knows its instance (the lease picked it), so there is
//! no URI to format and parse, no pool key to hash, and no task spawned per request to watch a
//! connection become idle — the response body ([`UpstreamBody`]) checks the connection back in
//! when it ends. A request that a connection refused before writing it (closed meanwhile)
//! comes back and goes out on another connection. The engine closes an instance's idle
//! connections when its pool removes the instance ([`Upstreams::forget`]).

mod body;
mod h2_interim;
mod idle;
mod interim;
mod timeout;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::Either;
use http::{Request, Response};
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serverless_core::{BackendError, Connection, ContainerBackend, InstanceId};
use serverless_limits::PoolObserver;

use crate::body::{ForwardBody, Outgoing, ReqBody};
use crate::h1;
use body::Checkin;
pub(crate) use body::UpstreamBody;
use h2_interim::H2Interim;
use idle::Shared;
use interim::Interim;
pub(crate) use timeout::Timeouts;
pub use timeout::{BodyIdleTimeout, ResponseTimeout};

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
    /// The request was sent and no response head came within the app's response timeout.
    /// Never sent again: the instance may still be working on it.
    ResponseTimeout(ResponseTimeout),
}

/// A failed send, with the request when it was not sent, or when it was but is still at hand
/// (the lean client's requests: no body, so the request is whole after it was written).
pub(crate) struct Failed<B> {
    pub(crate) error: SendError,
    pub(crate) request: Option<Request<Outgoing<B>>>,
    /// Whether the request was written: the instance may have processed it, so it may only go
    /// out again if it is idempotent.
    pub(crate) sent: bool,
}

/// After hyper's client failed to send: the request, to send it again on another connection,
/// when a *kept* connection refused it unwritten (it closed meanwhile); otherwise the failure,
/// with the request if it was not sent. (The request travels by value, as in hyper's own
/// `TrySendError`.)
#[allow(clippy::result_large_err)]
fn request_to_retry<B>(
    mut err: TrySendError<Request<Outgoing<B>>>,
    kept: bool,
) -> Result<Request<Outgoing<B>>, Failed<B>> {
    match err.take_message() {
        Some(back) if kept => Ok(back),
        request => Err(Failed {
            error: SendError::Failed(err.into_error()),
            request,
            sent: false,
        }),
    }
}

/// RFC 9112 §6.3 for a response hyper's client parsed: a transfer coding overrides the length,
/// which an intermediary removes; the same length given twice is passed on once (hyper has
/// refused differing ones). True when both framings were given: a smuggling hint, so the
/// connection is not reused (as on the lean client).
fn normalize_framing(headers: &mut http::HeaderMap) -> bool {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    if headers.contains_key(TRANSFER_ENCODING) {
        return headers.remove(CONTENT_LENGTH).is_some();
    }
    if let http::header::Entry::Occupied(mut lengths) = headers.entry(CONTENT_LENGTH) {
        if lengths.iter().nth(1).is_some() {
            let first = lengths.get().clone();
            lengths.insert(first);
        }
    }
    false
}

/// No response head within the response timeout: the request is not given back (it is
/// never sent again) and its connection is dropped (closed).
fn timed_out<B>(timeouts: Timeouts) -> Failed<B> {
    Failed {
        error: SendError::ResponseTimeout(ResponseTimeout(timeouts.response)),
        request: None,
        sent: true,
    }
}

/// The connections to every instance, shared by all requests: the connection pool of
/// [`Forward`](crate::Forward), over a backend's dialer. Cheap to clone; one per body type `B`
/// (the request body type its [`Forward`](crate::Forward)s send).
///
/// Connections kept for an instance must go when the instance goes: register it as the pool's
/// observer ([`PoolBuilder::observer`](serverless_limits::PoolBuilder::observer)) — it is a
/// [`PoolObserver`] whose [`removed`](PoolObserver::removed) calls [`forget`](Self::forget) —
/// or call [`forget`](Self::forget) from an observer of one's own.
pub struct Upstreams<B = ReqBody> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for Upstreams<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Upstreams<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("lean", &self.shared.lean)
            .finish_non_exhaustive()
    }
}

impl<B: ForwardBody> Upstreams<B> {
    /// Connections over `backend`'s dialer ([`ContainerBackend::connect`]).
    pub fn new(backend: Arc<dyn ContainerBackend>) -> Self {
        Self::with_lean_client(backend, true)
    }

    /// Connections over `backend`'s dialer; `lean = false` sends every request through hyper's
    /// client, none through the lean HTTP/1.1 one (the gateway's `server.lean_client`, to
    /// measure what the lean one saves).
    pub fn with_lean_client(backend: Arc<dyn ContainerBackend>, lean: bool) -> Self {
        Self {
            shared: Arc::new(Shared::new(backend, lean)),
        }
    }

    /// Closes every connection kept idle for `instance`: it is gone.
    pub fn forget(&self, instance: &InstanceId) {
        self.shared.forget(instance);
    }

    /// Whether [`send`](Self::send) sends `req` through the lean client.
    pub(crate) fn sends_lean<T: http_body::Body>(&self, h2c: bool, req: &Request<T>) -> bool {
        self.shared.lean && !h2c && h1::can_send(req)
    }

    /// Sends `req` to `instance` over a kept connection or a new one.
    ///
    /// Not an `async fn`: that would keep room for `req` next to the chosen path's future,
    /// which has its own. hyper's paths are boxed: their futures are several times the lean
    /// one's, and every request's future would otherwise be as large as the largest (memory to
    /// allocate and copy per request, for the few that take them).
    pub(crate) fn send<'a>(
        &'a self,
        instance: &'a InstanceId,
        h2c: bool,
        timeouts: Timeouts,
        req: Request<Outgoing<B>>,
    ) -> impl Future<Output = Result<Response<UpstreamBody<B>>, Failed<B>>> + Send + 'a {
        type Boxed<'a, B> =
            Pin<Box<dyn Future<Output = Result<Response<UpstreamBody<B>>, Failed<B>>> + Send + 'a>>;
        if self.sends_lean(h2c, &req) {
            Either::Left(self.send_lean(instance, timeouts, req))
        } else if h2c {
            Either::Right(Box::pin(self.send_http2(instance, timeouts, req)) as Boxed<'a, B>)
        } else {
            Either::Right(Box::pin(self.send_http1(instance, timeouts, req)) as Boxed<'a, B>)
        }
    }

    /// The common request (no body, no upgrade) through the lean HTTP/1.1 client.
    async fn send_lean(
        &self,
        instance: &InstanceId,
        timeouts: Timeouts,
        req: Request<Outgoing<B>>,
    ) -> Result<Response<UpstreamBody<B>>, Failed<B>> {
        loop {
            let (mut conn, kept) = match self.shared.checkout_lean(instance) {
                Some(conn) => (conn, true),
                None => match self.shared.backend.connect(instance).await {
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
            // The head is encoded before the await: the future holds no reference to the
            // request, so the body type need not be `Sync`.
            conn.encode_request(&req);
            if let Err(error) = conn.write_request().await {
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
            let read = tokio::time::timeout(timeouts.response, conn.read_response(req.method()));
            let Ok(read) = read.await else {
                return Err(timed_out(timeouts));
            };
            let error = match read {
                Ok(Some((res, reader))) => {
                    let checkin = (instance.clone(), self.shared.clone());
                    let idle = timeouts.body_idle;
                    return Ok(res.map(|()| UpstreamBody::lean(reader, checkin, idle)));
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
        timeouts: Timeouts,
        mut req: Request<Outgoing<B>>,
    ) -> Result<Response<UpstreamBody<B>>, Failed<B>> {
        loop {
            let (mut sender, kept) = match self.shared.checkout_http1(instance) {
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
            let asked_upgrade = req.headers().contains_key(http::header::UPGRADE);
            let interim = Interim::watch(&mut req);
            let sent = interim.bound(sender.try_send_request(req));
            let Ok(sent) = tokio::time::timeout(timeouts.response, sent).await else {
                return Err(timed_out(timeouts));
            };
            // Past the interim bound: the request is dropped, and its connection with it.
            let Some(sent) = sent else {
                return Err(Failed {
                    error: SendError::Io(h1::invalid_response(interim::TOO_MANY)),
                    request: None,
                    sent: true,
                });
            };
            match sent {
                Ok(mut res) => {
                    if res.status() == http::StatusCode::SWITCHING_PROTOCOLS && !asked_upgrade {
                        return Err(Failed {
                            error: SendError::Io(h1::invalid_response(
                                "101 Switching Protocols to a request without Upgrade",
                            )),
                            request: None,
                            sent: true,
                        });
                    }
                    let both_framings = normalize_framing(res.headers_mut());
                    // An upgraded connection is the tunnel's now: it is not checked in.
                    let upgraded = res.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                    let checkin = (!upgraded && !both_framings).then(|| Checkin {
                        sender,
                        instance: instance.clone(),
                        shared: self.shared.clone(),
                    });
                    let idle = timeouts.body_idle;
                    return Ok(res.map(|body| UpstreamBody::hyper(body, checkin, idle)));
                }
                Err(err) => req = request_to_retry(err, kept)?,
            }
        }
    }

    async fn send_http2(
        &self,
        instance: &InstanceId,
        timeouts: Timeouts,
        mut req: Request<Outgoing<B>>,
    ) -> Result<Response<UpstreamBody<B>>, Failed<B>> {
        let mut kept = self.shared.http2().get(instance).cloned();
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
            let sent = tokio::time::timeout(timeouts.response, sender.try_send_request(req));
            let Ok(sent) = sent.await else {
                return Err(timed_out(timeouts));
            };
            match sent {
                Ok(mut res) => {
                    // HTTP/2 frames its own messages: a length next to a transfer coding is
                    // dropped all the same, and the connection goes on.
                    normalize_framing(res.headers_mut());
                    let idle = timeouts.body_idle;
                    return Ok(res.map(|body| UpstreamBody::hyper(body, None, idle)));
                }
                Err(err) => req = request_to_retry(err, was_kept)?,
            }
        }
    }

    async fn dial_http1(
        &self,
        instance: &InstanceId,
    ) -> Result<http1::SendRequest<Outgoing<B>>, SendError> {
        let (sender, conn) = http1::Builder::new()
            .max_header_size(h1::MAX_HEAD)
            .handshake(self.dial(instance).await?)
            .await
            .map_err(SendError::Failed)?;
        self.watch(instance, conn.with_upgrades());
        Ok(sender)
    }

    async fn dial_http2(
        &self,
        instance: &InstanceId,
    ) -> Result<http2::SendRequest<Outgoing<B>>, SendError> {
        let io = self
            .shared
            .backend
            .connect(instance)
            .await
            .map_err(SendError::Connect)?;
        // hyper's HTTP/2 client skips interim responses unbounded: counted on the way in.
        let io = TokioIo::new(H2Interim::new(io));
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(SendError::Failed)?;
        self.watch(instance, conn);
        self.shared.http2().insert(instance.clone(), sender.clone());
        Ok(sender)
    }

    async fn dial(&self, instance: &InstanceId) -> Result<TokioIo<Connection>, SendError> {
        let io = self
            .shared
            .backend
            .connect(instance)
            .await
            .map_err(SendError::Connect)?;
        Ok(TokioIo::new(io))
    }

    /// Runs a connection's task; when it ends, the instance's closed connections are forgotten.
    fn watch<C>(&self, instance: &InstanceId, conn: C)
    where
        C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
    {
        let shared = self.shared.clone();
        let id = instance.clone();
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(instance = %id, %error, "connection to instance ended");
            }
            shared.prune(&id);
        });
    }
}

impl<B: ForwardBody> PoolObserver for Upstreams<B> {
    fn removed(&self, _app: &str, id: &InstanceId) {
        self.forget(id);
    }
}
