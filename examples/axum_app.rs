//! The router of the axum example (`axum.rs`): the `serverless-limits` layers in front of
//! `/app/*`, forwarding to the app's instances with `serverless-proxy`'s [`Forward`].
//!
//! ```text
//! /app/*      HandleErrorLayer ─► IdleTracking ─► GlobalLimit ─► ColdStartBuffer
//!             ─► ConcurrencyLimit ─► Forward ─► instance        (nest_service)
//! /instance   the same layers ─► a handler with Extension<Lease>   (route_layer)
//! /healthz    no layers
//! ```
//!
//! - `HandleErrorLayer` + [`Refusal`] answer the layers' errors (503 + `Retry-After`, 504,
//!   boot failure with its logs) and [`ForwardError`] (502, or 504 for a response timeout):
//!   axum routes must not fail, and a refused request gets an answer, never a reset.
//! - `nest_service("/app", …)` hands every `/app/*` request to the stack; axum strips the
//!   prefix, so the instance sees `/…`.
//! - `route_layer` puts the same layers in front of an ordinary handler, which finds the
//!   instance it was given in `Extension<Lease>`.
//! - The app's image is prepared when the router is built ([`ContainerBackend::prepare`]), not
//!   on the first request's path.
//! - [`Forward`] keeps connections per instance; the [`Upstreams`] are the pool's observer, so
//!   the connections kept for an instance go with it. An unreachable instance is traded for
//!   another ([`Lease::reroute`](serverless_limits::Lease::reroute)) before a 502.
//! - Two idle notions: the pool stops an *instance* after `limits.idle_timeout` with nothing
//!   in flight; [`IdleTrackingLayer`] tells when the *whole router* has been idle (the example
//!   uses it to exit), and [`IdleHandle::active`] waits for the next request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use http::StatusCode;
use serverless_core::{AppSpec, ContainerBackend};
use serverless_limits::{
    ColdStartBufferLayer, ConcurrencyLimitLayer, GlobalLimitLayer, IdleHandle, IdleTrackingLayer,
    Lease, Pool, Refusal,
};
use serverless_proxy::{BoxError, ClientInfo, Forward, ForwardError, Upstreams};
use tower::ServiceBuilder;

/// Requests in flight across the router, like the gateway's `limits.max_concurrent_requests`.
pub const MAX_IN_FLIGHT: u32 = 100;

/// The router, the app's pool, and the router's idle handle.
#[derive(Debug)]
pub struct Embedded {
    /// Serve it with `axum::serve`.
    pub router: Router,
    /// The app's instances: shut it down when the server stops.
    pub pool: Pool,
    /// Resolves when the router has been idle for the time given to [`build`].
    pub idle: IdleHandle,
}

/// Prepares `spec`'s image on `backend`, then builds the router in front of its instances;
/// `router_idle` is the time [`Embedded::idle`] waits for.
pub async fn build(
    backend: Arc<dyn ContainerBackend>,
    spec: AppSpec,
    router_idle: Duration,
) -> Result<Embedded, BoxError> {
    backend.prepare(&spec).await?;
    // One set of kept connections per backend (and body type), shared by all its apps.
    let upstreams: Upstreams<Body> = Upstreams::new(backend.clone());
    let pool = Pool::builder(spec.clone(), backend)
        .observer(Arc::new(upstreams.clone()))
        .build()?;
    let (idle_layer, idle) = IdleTrackingLayer::pair(router_idle);
    let layers = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(refusal))
        .layer(idle_layer)
        .layer(GlobalLimitLayer::new(MAX_IN_FLIGHT))
        .layer(ColdStartBufferLayer::new(pool.clone()))
        .layer(ConcurrencyLimitLayer::new(pool.clone()));
    let forward = layers
        .clone()
        .service(Forward::new(Arc::new(spec), upstreams));
    let router = Router::new()
        .nest_service("/app", forward)
        .route("/instance", get(instance).route_layer(layers))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(middleware::from_fn(client_info));
    Ok(Embedded { router, pool, idle })
}

/// A handler behind the layers: the lease names the instance this request holds a place on.
async fn instance(Extension(lease): Extension<Lease>) -> String {
    format!("instance {}\n", lease.instance())
}

/// Every error of the stack, answered: the layers' through [`Refusal`], the forwarder's 502
/// (504 for a response timeout), anything else 500.
async fn refusal(err: BoxError) -> Response {
    if let Some(refusal) = Refusal::of(err.as_ref()) {
        return refusal.into_response();
    }
    let forward = std::iter::successors(
        Some(err.as_ref() as &(dyn std::error::Error + 'static)),
        |e| e.source(),
    )
    .find_map(|e| e.downcast_ref::<ForwardError>());
    let status = forward.map_or(StatusCode::INTERNAL_SERVER_ERROR, ForwardError::status);
    Refusal::new(status, &err.to_string()).into_response()
}

/// Gives the forwarder the client's address (`x-forwarded-for`, `forwarded`) when the server
/// was started with `into_make_service_with_connect_info::<SocketAddr>()`.
async fn client_info(mut req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        req.extensions_mut().insert(ClientInfo { addr, tls: false });
    }
    next.run(req).await
}
