//! Idle tracking over any service: know when nothing has been in flight for a while.
//!
//! [`IdleTrackingLayer::pair`] returns the layer and an [`IdleHandle`]. The layer counts requests
//! in flight until their response bodies end (a stream or an upgraded connection that holds the
//! body's guard counts as in flight); [`IdleHandle::idle`] resolves once nothing has been in
//! flight for the timeout. The engine's pool applies the same rule per instance (see
//! [`Pool`](crate::Pool)); this layer offers it to any service, e.g. to stop a whole gateway or
//! a sidecar when it has been idle.
//!
//! It never waits in `poll_ready` (it forwards the inner service's readiness) and counts in
//! `call`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use serverless_limits::IdleTrackingLayer;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! let (layer, handle) = IdleTrackingLayer::pair(Duration::from_secs(60));
//! let svc = layer.layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! }));
//! let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(handle.in_flight(), 1); // the body has not ended
//! drop(res);
//! assert_eq!(handle.in_flight(), 0);
//! let start = tokio::time::Instant::now();
//! handle.idle().await;
//! assert_eq!(start.elapsed(), Duration::from_secs(60));
//! // Still idle: `idle()` resolves at once until something is in flight again.
//! handle.idle().await;
//! assert_eq!(start.elapsed(), Duration::from_secs(60));
//! let woken = tokio::spawn({ let h = handle.clone(); async move { h.active().await } });
//! let _res = svc.oneshot(http::Request::new(())).await.unwrap();
//! woken.await.unwrap();
//! # }
//! ```

mod activity;
mod layer;
mod service;

pub use self::activity::ActivityGuard;
pub use self::layer::{IdleHandle, IdleTrackingLayer};
pub use self::service::{IdleTracking, ResponseFuture};
