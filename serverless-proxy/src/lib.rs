//! The serverless container gateway: a hyper reverse proxy that routes by `Host` to apps whose
//! instances start on the first request, with the admin API, Prometheus metrics and the
//! `serverless` binary.
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

mod admin;
mod body;
mod engine;
mod error;
mod forward;
mod h1;
mod metrics;
mod route;
mod server;
mod upstream;

#[doc(hidden)]
pub mod fuzzing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serverless_core::{Config, ContainerBackend};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use body::{BoxError, ReqBody, ResBody};
pub use engine::{App, DeployError, Engine};
pub use error::{ForwardError, ERROR_HEADER};
pub use forward::COLD_START_HEADER;
pub use metrics::Metrics;
pub use server::{ClientInfo, TlsError};

/// The admin token's environment variable (used when the config has none).
pub const ADMIN_TOKEN_ENV: &str = "SERVERLESS_ADMIN_TOKEN";

/// A running gateway: the proxy listener and the admin listener over one [`Engine`].
pub struct Gateway {
    engine: Engine,
    listen: SocketAddr,
    admin: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Deploys the config's apps (importing their images), binds both listeners and serves.
    pub async fn start(
        config: Config,
        backend: Arc<dyn ContainerBackend>,
    ) -> Result<Self, BoxError> {
        let token = config.admin_token.clone().or_else(|| {
            std::env::var(ADMIN_TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty())
        });
        if !config.admin.ip().is_loopback() && token.is_none() {
            return Err(format!(
                "invalid admin = \"{}\": a non-loopback admin address needs admin_token (or {ADMIN_TOKEN_ENV})",
                config.admin
            )
            .into());
        }
        let tls = match &config.server.tls {
            Some(tls) => Some(server::tls_acceptor(&tls.cert, &tls.key)?),
            None => None,
        };
        let engine = Engine::new(backend, config.limits, config.server.clone());
        for app in config.apps {
            engine.deploy(app).await?;
        }
        let listener = bind(config.listen, "listen").await?;
        let admin_listener = bind(config.admin, "admin").await?;
        let listen = listener.local_addr()?;
        let admin = admin_listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let settings = server::ConnSettings {
            header_read_timeout: config.server.header_read_timeout,
            max_header_bytes: config.server.max_header_bytes,
        };
        let wait = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let gateway_task = tokio::spawn({
            let engine = engine.clone();
            let settings = settings.clone();
            let stopped = stopped.clone();
            async move {
                server::serve(
                    listener,
                    tls,
                    settings,
                    engine.metrics().connections_parked(),
                    move |req, info| route::handle(engine.clone(), req, info),
                    wait(stopped),
                    Duration::from_secs(30),
                )
                .await;
            }
        });
        let admin_task = tokio::spawn({
            let engine = engine.clone();
            async move {
                server::serve(
                    admin_listener,
                    None,
                    settings,
                    Default::default(),
                    move |req, _info| admin::handle(engine.clone(), token.clone(), req),
                    wait(stopped),
                    Duration::from_secs(5),
                )
                .await;
            }
        });
        tracing::info!(%listen, %admin, "gateway serving");
        Ok(Self {
            engine,
            listen,
            admin,
            stop,
            tasks: vec![gateway_task, admin_task],
        })
    }

    /// The proxy's address (useful with port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Graceful shutdown: stop accepting, let in-flight requests finish (up to 30 s), then
    /// drain and stop every instance.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.engine.shutdown().await;
    }
}

/// Binds a listener, naming the address in the error.
async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    })
}
