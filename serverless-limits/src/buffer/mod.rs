//! Hold requests while instances start or are full: a bounded queue with a bounded wait.
//!
//! [`ColdStartBuffer`] takes a place from the app's [`Pool`](crate::Pool) for each request — at
//! once when a `Ready` instance has room, otherwise by waiting in the pool's queue (at most
//! `max_queued_requests`, each at most `queue_timeout`) while an instance starts. The place goes
//! into the request's extensions as a [`Lease`](crate::Lease), where
//! [`ConcurrencyLimit`](crate::ConcurrencyLimit) picks it up. Overflow fails at once with
//! [`PoolError::Overloaded`](crate::PoolError::Overloaded) (→ 503), expiry with
//! [`PoolError::Elapsed`](crate::PoolError::Elapsed) (→ 504).
//!
//! Unlike tower's `Buffer`, it decides in `call` and never waits in `poll_ready` (which only
//! forwards the inner service's readiness): the wait is the response future's, so a held request
//! never blocks the connection's other requests from being routed.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use serverless_core::{fake::FakeBackend, AppSpec, ImageRef};
//! use serverless_limits::{ColdStartBufferLayer, ConcurrencyLimitLayer, Lease, Pool};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let app = AppSpec::new("hello", ImageRef::Registry("example/hello:1".into()));
//! let pool = Pool::new(app, Arc::new(FakeBackend::new())).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(ColdStartBufferLayer::new(pool.clone()))
//!     .layer(ConcurrencyLimitLayer::new(pool.clone()))
//!     .service(service_fn(|req: http::Request<String>| async move {
//!         let lease = req.extensions().get::<Lease>().unwrap();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(lease.instance().to_string()))
//!     }));
//! // No instance yet: the request waits for a cold start, then runs on the new instance.
//! let res = svc.oneshot(http::Request::new(String::new())).await.unwrap();
//! assert!(res.into_body().get_ref().starts_with("hello-1-"));
//! # }
//! ```

mod future;
mod layer;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::ColdStartBufferLayer;
pub use self::service::ColdStartBuffer;
