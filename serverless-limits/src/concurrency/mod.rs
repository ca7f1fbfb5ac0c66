//! Per-instance concurrency limit and instance choice.
//!
//! [`ConcurrencyLimit`] sends each request to the least-loaded `Ready` instance that has fewer
//! than `max_concurrent_requests` in flight. It uses the [`Lease`](crate::Lease) that
//! [`ColdStartBuffer`](crate::ColdStartBuffer) put in the request's extensions, or — used alone —
//! takes one without waiting and fails with [`PoolError::Overloaded`](crate::PoolError) when every
//! instance is full (that failure also starts the next instance, up to `scale.max`).
//!
//! The lease rides in the response body ([`GuardedBody`](crate::GuardedBody)): the place is held
//! until the body ends, so a long stream keeps its instance busy (and alive), and is given back
//! when the body ends or is dropped — never at the headers.
//!
//! Unlike tower's `ConcurrencyLimit`, it decides in `call` and never waits in `poll_ready`:
//! which instance a request gets depends on the moment it arrives, not on when the caller asked
//! for readiness, and a full app answers at once instead of parking the caller.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use serverless_core::{fake::FakeBackend, AppSpec, ImageRef};
//! use serverless_limits::{ConcurrencyLimitLayer, Lease, Pool, PoolError};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let mut app = AppSpec::new("hello", ImageRef::Registry("example/hello:1".into()));
//! app.scale.min = 1; // keep one warm: used alone, this layer does not wait for a cold start
//! let pool = Pool::new(app, Arc::new(FakeBackend::new())).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(ConcurrencyLimitLayer::new(pool.clone()))
//!     .service(service_fn(|req: http::Request<String>| async move {
//!         let id = req.extensions().get::<Lease>().unwrap().instance();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(id.to_string()))
//!     }));
//! while pool.snapshot().instances.iter().all(|i| i.state.as_str() != "ready") {
//!     tokio::task::yield_now().await;
//! }
//! let res = svc.oneshot(http::Request::new(String::new())).await.unwrap();
//! assert!(res.into_body().get_ref().starts_with("hello-1-"));
//! # }
//! ```

mod future;
mod layer;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::ConcurrencyLimitLayer;
pub use self::service::ConcurrencyLimit;
