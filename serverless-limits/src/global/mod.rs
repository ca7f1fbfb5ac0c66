//! A limit on requests in flight across every app of the engine.
//!
//! [`GlobalLimit`] admits a request only while fewer than `max` are in flight across every
//! service built from the same [`GlobalLimitLayer`] (clones share the count); otherwise it fails
//! at once with [`GlobalOverloaded`](crate::GlobalOverloaded) (→ 503 + `Retry-After`). It never
//! queues: queueing is per app, in [`ColdStartBuffer`](crate::ColdStartBuffer). A request counts
//! until its response body ends.
//!
//! Unlike tower's `ConcurrencyLimit`, it decides in `call` and never waits in `poll_ready`:
//! over the limit is an immediate error (load shedding), never back-pressure.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use serverless_limits::{GlobalLimitLayer, GlobalOverloaded};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! let layer = GlobalLimitLayer::new(1);
//! let mut svc = layer.layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! }));
//! let first = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! // `first`'s body has not ended: the next request is refused.
//! let err = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap_err();
//! assert!(err.is::<GlobalOverloaded>());
//! drop(first);
//! assert!(svc.ready().await.unwrap().call(http::Request::new(())).await.is_ok());
//! # }
//! ```

mod layer;
mod service;

pub use self::layer::GlobalLimitLayer;
pub use self::service::{GlobalLimit, ResponseFuture};
