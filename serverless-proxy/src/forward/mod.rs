//! Forwarding to an instance: the innermost service of an app's stack. It rewrites the request
//! for the instance ([`headers`]: hop-by-hop headers, `x-forwarded-*`/`forwarded`, upgrades),
//! sends it over the connections kept per instance ([`crate::upstream`]), sends again requests
//! that were not written (or, idempotent and bodiless, broke before an answer), and tunnels
//! upgraded connections (WebSocket).
//!
//! Public, for embedders: the gateway's stack and an embedder's (axum, hyper) use this one
//! implementation, generic over the request body so that neither boxes it again.

mod client;
mod headers;
mod relay;
mod warn;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serverless_core::AppSpec;
use serverless_limits::Lease;

use crate::body::{BoxError, ForwardBody, Outgoing, ReqBody, ResBody};
use crate::error::ForwardError;
use crate::upstream::{SendError, Timeouts, Upstreams};
pub use client::ClientInfo;
use headers::{add_forwarded, strip_hop_by_hop, upgrade_protocol, PresentHeaders};
use relay::Relayed;

/// The header that says how long a request waited for a cold start, in milliseconds.
pub const COLD_START_HEADER: &str = "x-serverless-cold-start";

/// Attempts per request: the first, and sending it again (see [`forward`]).
const MAX_ATTEMPTS: usize = 4;

/// Told of each upstream failure [`Forward`] answers or ends a response body with, every one
/// (the `warn` line is rate-limited, this is not): the gateway's `Metrics` count them by app
/// and [`cause`](ForwardError::cause). Set with [`Forward::observer`].
pub trait ForwardObserver: Send + Sync + 'static {
    /// The instance failed the request: before the head (the client gets
    /// [`status`](ForwardError::status)) or in the body ([`is_body`](ForwardError::is_body)).
    fn upstream_failed(&self, error: &ForwardError);
}

/// The request reached [`Forward`] without a [`Lease`]: the service was used without
/// `ConcurrencyLimit` in front of it.
#[derive(Debug, thiserror::Error)]
#[error("request reached Forward without a lease")]
struct NoLease;

/// A request with a body that was written could not be sent again.
#[derive(Debug, thiserror::Error)]
#[error("request body already sent")]
struct BodyAlreadySent;

/// The innermost service of an app's stack: sends each request to the instance of its
/// [`Lease`] (put there by [`ConcurrencyLimit`](serverless_limits::ConcurrencyLimit), so it
/// must be behind one), over the connections kept in its [`Upstreams`].
///
/// On the way it removes hop-by-hop headers (both ways), adds `Host` for HTTP/2 clients and
/// `x-forwarded-for`, `x-forwarded-proto` and `forwarded` when the request carries a
/// [`ClientInfo`] extension, and tunnels upgrades (WebSocket) — the lease, and so the
/// instance's place, is held until the tunnel closes. A request that was not written is sent
/// again (an idempotent one without a body also when its connection broke before an answer),
/// and an unreachable instance is traded for another ([`Lease::reroute`]), at most 4 attempts
/// in all; then the error is a [`ForwardError`] (answer it `502`).
///
/// `B` is the request body type: anything [`ForwardBody`] (`Send`, not `Sync`), not boxed
/// again. Responses carry a [`ResBody`]; a failure in the middle of the body ends it with a
/// [`ForwardError`], held back one poll so that the server writes out what was read before it
/// (then closes the HTTP/1.1 connection or resets the HTTP/2 stream); a body broken in the
/// same read as its head is an error before the head (answer it `502`). Requests waited for a
/// cold start get [`COLD_START_HEADER`].
///
/// ```
/// # async fn doc(spec: serverless_core::AppSpec, backend: std::sync::Arc<dyn serverless_core::ContainerBackend>) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use serverless_limits::{ConcurrencyLimitLayer, Pool};
/// use serverless_proxy::{Forward, Upstreams};
///
/// let upstreams: Upstreams<hyper::body::Incoming> = Upstreams::new(backend.clone());
/// // The pool tells the connection pool when an instance goes.
/// let pool = Pool::builder(spec.clone(), backend).observer(Arc::new(upstreams.clone())).build()?;
/// let service = tower::ServiceBuilder::new()
///     .layer(ConcurrencyLimitLayer::new(pool))
///     .service(Forward::new(Arc::new(spec), upstreams));
/// # let _ = service; Ok(()) }
/// ```
pub struct Forward<B = ReqBody> {
    app: Arc<AppSpec>,
    upstreams: Upstreams<B>,
    observer: Option<Arc<dyn ForwardObserver>>,
}

impl<B> Clone for Forward<B> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            upstreams: self.upstreams.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Forward<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("app", &self.app.name)
            .field("upstreams", &self.upstreams)
            .finish()
    }
}

impl<B: ForwardBody> Forward<B> {
    /// Forwards requests for `app` over `upstreams` (share one [`Upstreams`] between all the
    /// apps of a backend: it keeps connections per instance).
    pub fn new(app: Arc<AppSpec>, upstreams: Upstreams<B>) -> Self {
        Self {
            app,
            upstreams,
            observer: None,
        }
    }

    /// Tells `observer` of each upstream failure (e.g. to count them).
    pub fn observer(mut self, observer: Arc<dyn ForwardObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The app.
    pub fn app(&self) -> &Arc<AppSpec> {
        &self.app
    }

    /// The connections it sends over.
    pub fn upstreams(&self) -> &Upstreams<B> {
        &self.upstreams
    }
}

impl<B: ForwardBody> tower::Service<Request<B>> for Forward<B> {
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The request is rewritten here, synchronously; the future keeps only what sending it
        // (and sending it again) takes, so each request allocates and moves less.
        match prepare(&self.app, &self.upstreams, req) {
            Ok(prepared) => Box::pin(forward(
                self.app.clone(),
                self.upstreams.clone(),
                self.observer.clone(),
                prepared,
            )),
            Err(err) => Box::pin(std::future::ready(Err(err))),
        }
    }
}

/// A request rewritten for the instance, with what it takes to send it again.
struct Prepared<B> {
    lease: Lease,
    req: Request<Outgoing<B>>,
    /// Idempotent and without a body: may be sent again after it was written.
    may_resend: bool,
    /// Method, target and headers to rebuild it when the client that sends it does not give it
    /// back (hyper's paths), for a request that may be sent again.
    resend: Option<Box<(Method, Uri, HeaderMap)>>,
    /// The client's side of an upgrade it asked for.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Rewrites `req` for the instance its lease names.
fn prepare<B: ForwardBody>(
    app: &AppSpec,
    upstreams: &Upstreams<B>,
    mut req: Request<B>,
) -> Result<Prepared<B>, BoxError> {
    let lease = req.extensions_mut().remove::<Lease>().ok_or(NoLease)?;
    let client_info = req.extensions().get::<ClientInfo>().copied();
    let present = PresentHeaders::scan(req.headers());
    let upgrade = present
        .hop_by_hop
        .then(|| upgrade_protocol(req.headers()))
        .flatten();
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    if !present.host {
        // HTTP/2 clients send the authority instead of `Host`; HTTP/1.1 apps need `Host`.
        if let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, host);
        }
    }
    if present.hop_by_hop {
        strip_hop_by_hop(&mut headers);
    }
    if let Some(proto) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    if let Some(info) = client_info {
        add_forwarded(&mut headers, info, &present);
    }
    let uri = upstream_uri(parts.uri, app.h2c, &headers)?;
    let version = if app.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    // A request that was not written to an instance comes back and is sent elsewhere. One
    // without a body that is idempotent may also be sent again when its connection broke
    // before any response byte (the instance died with it in flight). The lean client gives
    // such a request back whole; for the others, keep what it takes to rebuild it. One with a
    // body could only be if it had not been read, which the instance does not tell us, so it
    // gets a 502.
    let may_resend = body.is_end_stream() && parts.method.is_idempotent();
    let mut next_req = Request::new(Outgoing::new(body));
    *next_req.method_mut() = parts.method;
    *next_req.uri_mut() = uri;
    *next_req.version_mut() = version;
    *next_req.headers_mut() = headers;
    let lean = upstreams.sends_lean(app.h2c, &next_req);
    let resend = (may_resend && !lean).then(|| {
        (
            next_req.method().clone(),
            next_req.uri().clone(),
            next_req.headers().clone(),
        )
    });
    Ok(Prepared {
        lease,
        req: next_req,
        may_resend,
        resend: resend.map(Box::new),
        client_upgrade,
    })
}

/// Sends a prepared request, again where that is safe (at most [`MAX_ATTEMPTS`] in all): when
/// it was not written, or, idempotent and without a body, its connection broke before an
/// answer; an unreachable instance is traded for another (`Lease::reroute`).
async fn forward<B: ForwardBody>(
    app: Arc<AppSpec>,
    upstreams: Upstreams<B>,
    observer: Option<Arc<dyn ForwardObserver>>,
    prepared: Prepared<B>,
) -> Result<Response<ResBody>, BoxError> {
    let Prepared {
        lease,
        req,
        may_resend,
        resend,
        client_upgrade,
    } = prepared;
    let version = req.version();
    let mut next = Some(req);
    let mut attempt = 0;
    let mut res = loop {
        attempt += 1;
        let instance = lease.instance();
        let req = match next.take() {
            Some(req) => req,
            None => match resend.as_deref() {
                Some((method, uri, headers)) => {
                    let mut req = Request::new(Outgoing::empty());
                    *req.method_mut() = method.clone();
                    *req.uri_mut() = uri.clone();
                    *req.version_mut() = version;
                    *req.headers_mut() = headers.clone();
                    req
                }
                None => return Err(BodyAlreadySent.into()),
            },
        };
        let timeouts = Timeouts::of(&app.limits);
        let failed = match upstreams.send(&instance, app.h2c, timeouts, req).await {
            Ok(res) => break res,
            Err(failed) => failed,
        };
        next = failed.request.filter(|_| !failed.sent || may_resend);
        let unreachable = matches!(failed.error, SendError::Connect(_));
        // A request that timed out is never sent again: the instance may still be on it.
        let timed_out = matches!(failed.error, SendError::ResponseTimeout(_));
        if attempt < MAX_ATTEMPTS && !timed_out && (next.is_some() || resend.is_some()) {
            if unreachable {
                tracing::debug!(app = %app.name, %instance, error = ?failed.error, "instance unreachable, rerouting");
                lease.reroute().await?;
            } else {
                // Not written, or idempotent without a body: again. A new connection to the
                // same instance tells whether it is gone (then the connect error reroutes).
                tracing::debug!(app = %app.name, %instance, error = ?failed.error, "connection to the instance broke before an answer, retrying");
            }
            continue;
        }
        if unreachable {
            lease.pool().evict(&instance);
        }
        let error = match failed.error {
            SendError::Connect(e) => ForwardError::unreachable(app.clone(), instance, Box::new(e)),
            SendError::Failed(e) => ForwardError::no_response(app.clone(), instance, Box::new(e)),
            SendError::Io(e) => ForwardError::no_response(app.clone(), instance, Box::new(e)),
            SendError::ResponseTimeout(e) => {
                ForwardError::response_timeout(app.clone(), instance, Box::new(e))
            }
        };
        report(observer.as_deref(), &error);
        return Err(Box::new(error));
    };
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let server_upgrade = hyper::upgrade::on(&mut res);
            let tunnel_lease = lease.clone();
            tokio::spawn(async move {
                let (client, server) = tokio::join!(client_upgrade, server_upgrade);
                if let (Ok(client), Ok(server)) = (client, server) {
                    let mut client = TokioIo::new(client);
                    let mut server = TokioIo::new(server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                // The request's place on the instance is held until either side closes.
                drop(tunnel_lease);
            });
        }
    } else {
        strip_hop_by_hop(res.headers_mut());
    }
    if let Some(waited) = lease.cold_start() {
        res.headers_mut().insert(
            COLD_START_HEADER,
            HeaderValue::from(waited.as_millis() as u64),
        );
    }
    let instance = lease.instance();
    let (parts, mut body) = res.into_parts();
    // A body broken from its first byte is answered, not passed on as a head with nothing
    // after it (see `relay`).
    let first = match relay::first_frame(&mut body) {
        Ok(first) => first,
        Err(e) => {
            let error = ForwardError::no_response(app, instance, e);
            report(observer.as_deref(), &error);
            return Err(Box::new(error));
        }
    };
    let body = body.map_err(move |e| -> BoxError {
        let error = ForwardError::body(app.clone(), instance.clone(), e);
        report(observer.as_deref(), &error);
        Box::new(error)
    });
    Ok(Response::from_parts(
        parts,
        Relayed::new(body, first).boxed_unsync(),
    ))
}

/// Logs an upstream failure (rate-limited) and tells the observer (every one).
fn report(observer: Option<&dyn ForwardObserver>, error: &ForwardError) {
    warn::upstream_failed(error);
    if let Some(observer) = observer {
        observer.upstream_failed(error);
    }
}

/// The request target for the instance: origin-form (`/path?query`) for HTTP/1.1, absolute
/// (`http://host/path`) for h2c, whose `:authority` and `:scheme` come from it.
fn upstream_uri(uri: Uri, h2c: bool, headers: &HeaderMap) -> Result<Uri, BoxError> {
    if !h2c && uri.scheme().is_none() && uri.authority().is_none() {
        return Ok(uri);
    }
    let path = uri
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    if !h2c {
        return Ok(Uri::from(path));
    }
    let authority = headers
        .get(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
    Ok(Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()?)
}
