//! Tower layers that make any HTTP service behave like a serverless app, and the per-app
//! instance [`Pool`] they share.
//!
//! The engine's request path (each layer is also usable alone over any `Service`):
//!
//! ```text
//! GlobalLimit ─► ColdStartBuffer ─► ConcurrencyLimit ─► your forwarding service
//!     │                │                   │
//!     │                └── waits for a place (Pool: start on demand, bounded queue + wait)
//!     │                                    └── least-loaded Ready instance; Lease in the body
//!     └── engine-wide in-flight cap
//! ```
//!
//! - [`GlobalLimit`]: requests in flight across all apps; beyond it → [`GlobalOverloaded`].
//! - [`ColdStartBuffer`]: a place at once, or a bounded wait while instances start;
//!   overflow → [`PoolError::Overloaded`], expiry → [`PoolError::Elapsed`].
//! - [`ConcurrencyLimit`]: `max_concurrent_requests` per instance, least-loaded `Ready` choice.
//! - [`IdleTracking`]: when has a service been idle (nothing in flight) for a while.
//! - [`Refusal`]: the one mapping of these errors to HTTP answers (status, reason header,
//!   `Retry-After`), used by the gateway and offered to embedders.
//! - [`Pool`]: scale-out on demand up to `scale.max`, `scale.min` kept warm, idle stop,
//!   max-duration recycle, boot-failure backoff, crash removal.
//!
//! Guards (places, permits, activity) travel in the response future and then in the response
//! body ([`GuardedBody`]): they are released when the body ends or is dropped, never when the
//! headers arrive. A [`Lease`] also sits in the request's extensions so the forwarding service
//! knows the instance and can keep the place for an upgraded connection.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use serverless_core::{fake::FakeBackend, AppSpec, ImageRef};
//! use serverless_limits::{ColdStartBufferLayer, ConcurrencyLimitLayer, GlobalLimitLayer, Lease, Pool};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let app = AppSpec::new("hello", ImageRef::Registry("example/hello:1".into()));
//! let pool = Pool::new(app, Arc::new(FakeBackend::new())).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(GlobalLimitLayer::new(500))
//!     .layer(ColdStartBufferLayer::new(pool.clone()))
//!     .layer(ConcurrencyLimitLayer::new(pool.clone()))
//!     .service(service_fn(|req: http::Request<()>| async move {
//!         let instance = req.extensions().get::<Lease>().unwrap().instance();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(instance))
//!     }));
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(pool.snapshot().instances.len(), 1);
//! # drop(res); pool.shutdown().await;
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod body;
pub mod buffer;
pub mod concurrency;
mod error;
pub mod global;
mod guard_future;
pub mod idle;
pub mod pool;
mod refusal;

pub use body::GuardedBody;
pub use buffer::{ColdStartBuffer, ColdStartBufferLayer};
pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub use error::{BoxError, GlobalOverloaded, Overload, PoolError};
pub use global::{GlobalLimit, GlobalLimitLayer};
pub use guard_future::GuardFuture;
pub use idle::{IdleHandle, IdleTracking, IdleTrackingLayer};
pub use pool::{
    InstanceBudget, InstanceSnapshot, InstanceState, Lease, Pool, PoolBuilder, PoolObserver,
    PoolSnapshot, StopReason,
};
pub use refusal::{Refusal, ERROR_HEADER};
