//! The serverless container gateway: a hyper reverse proxy that routes by `Host` to apps whose
//! instances start on the first request, with the admin API and Prometheus metrics. A library:
//! the `serverless` binary (CLI, the containerd backend, allocator, logging) is the
//! `serverless-cli` crate, so embedders compile neither clap nor tonic.
//!
//! ```text
//! client ─► hyper server (h1/h2c/TLS) ─► route (Host → app)
//!        ─► GlobalLimit ─► ColdStartBuffer ─► ConcurrencyLimit ─► Forward ─► instance
//! ```
//!
//! Embed it over any [`serverless_core::ContainerBackend`]:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::sync::Arc;
//! use serverless_core::{fake::FakeBackend, Config};
//! use serverless_proxy::Gateway;
//!
//! let config = Config::from_toml(r#"
//!     listen = "127.0.0.1:0"
//!     admin = "127.0.0.1:0"
//!     [[apps]]
//!     name = "hello"
//!     image = "example/hello:1"
//! "#)?;
//! let gateway = Gateway::start(config, Arc::new(FakeBackend::new())).await?;
//! println!("serving on http://{}", gateway.listen_addr());
//! gateway.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Errors are answered, never reset: queue full → 503 + `Retry-After`, cold-start wait expired
//! → 504, instance unreachable or died mid-request → 502, app failed to boot → 503 with the exit
//! code and last log lines, global limit → 503; each with `x-serverless-error: <reason>`.
//! Responses that waited for a cold start carry `x-serverless-cold-start: <ms>`.
//!
//! # What is public, and why
//!
//! Every module is private; the crate root re-exports what an embedder uses:
//!
//! - [`Gateway`] (and [`GatewayError`]): listeners, admin API and engine from a
//!   [`Config`](serverless_core::Config) — the usual way in.
//! - [`Engine`], [`App`], [`DeployError`]: deploy and remove apps at run time, look at their
//!   pools, or serve requests from a server of one's own ([`Engine::serve`], with a
//!   [`ClientInfo`] extension for the forwarding headers).
//! - [`Metrics`]: the Prometheus registry behind `/metrics` ([`Engine::encode_metrics`]).
//! - [`Forward`], [`Upstreams`], [`ForwardBody`]: the forwarder, for embedders who put the
//!   `serverless-limits` layers in a server of their own (axum, hyper): the gateway's request
//!   path uses this one implementation — connections kept per instance, hop-by-hop headers,
//!   `x-forwarded-*` from a [`ClientInfo`] extension, upgrades, sending again what is safe to
//!   send again, `Lease::reroute` away from an unreachable instance. Generic over the request
//!   body (`Send`, not `Sync`), so a server's own body type is not boxed again.
//! - [`ReqBody`], [`ResBody`], [`BoxError`]: the types [`Engine::serve`] takes and returns.
//! - [`ForwardError`] (a response body's error when the instance fails mid-body; classify it
//!   with its `is_*` predicates) and [`TlsError`] (inside [`GatewayError`]).
//! - [`ERROR_HEADER`], [`COLD_START_HEADER`]: the headers clients and tests read.
//!
//! # Feature flags
//!
//! - `gateway` (default): [`Gateway`], [`Engine`], the listeners (HTTP/1.1, h2c, TLS), the
//!   admin API and [`Metrics`]. It brings rustls, prometheus-client and serde_json. An embedder
//!   who only wants the forwarder sets `default-features = false` and compiles none of them: a
//!   feature rather than a crate of its own because the forwarder is the gateway's own request
//!   path (one implementation, measured by the bench), and the types it shares with the gateway
//!   ([`ForwardError`], the body types, the header names) stay in one place.
//!
//! The request path inside, in order: `server` (accept, TLS, h2c detection, parking idle
//! HTTP/1 connections) → `route` (host → app, body limit, metrics) → the app's stack built in
//! `engine` (the `serverless-limits` layers) → `forward` (header rewrite, retries, upgrades) →
//! `upstream` (connections kept per instance) → `h1` (the lean HTTP/1.1 client) or hyper's
//! client; `error` turns failures into responses. `fuzzing` is a hidden entry point for
//! `fuzz/`, not part of the API.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "gateway")]
mod admin;
mod body;
#[cfg(feature = "gateway")]
mod engine;
mod error;
mod forward;
#[cfg(feature = "gateway")]
mod gateway;
mod h1;
#[cfg(feature = "gateway")]
mod metrics;
#[cfg(feature = "gateway")]
mod route;
#[cfg(feature = "gateway")]
mod server;
#[cfg(feature = "gateway")]
mod status;
mod upstream;

#[doc(hidden)]
pub mod fuzzing;

pub use body::{BoxError, ForwardBody, ReqBody, ResBody};
#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub use engine::{App, DeployError, Engine};
pub use error::{FailureCause, ForwardError, ERROR_HEADER};
pub use forward::{ClientInfo, Forward, ForwardObserver, COLD_START_HEADER};
#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub use gateway::{Gateway, GatewayError, HandedListeners, Takeover};
#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub use metrics::Metrics;
#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub use server::TlsError;
pub use upstream::{BodyIdleTimeout, ResponseTimeout, Upstreams};
