//! [`Gateway`]: the proxy listener and the admin listener over one [`Engine`], started from a
//! [`Config`], and [`GatewayError`], why a start failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serverless_core::{Config, ContainerBackend, InstanceId};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::{DeployError, Engine};
use crate::server::{self, TlsError};
use crate::{admin, route};

/// Why [`Gateway::start`] failed. Nothing is left running: apps deployed before the failure are
/// stopped again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// `admin` is not a loopback address and the config has no `admin_token`.
    #[error("invalid admin = \"{admin}\": a non-loopback admin address needs admin_token")]
    AdminTokenRequired {
        /// The configured admin address.
        admin: SocketAddr,
    },
    /// `server.tls`: the certificate or the key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An app of the config could not be deployed.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({field}): {source}")]
    Bind {
        /// The config key: `listen` or `admin`.
        field: &'static str,
        /// Its value.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
}

/// A running gateway: the proxy listener and the admin listener over one [`Engine`].
///
/// The admin API needs `config.admin_token` off loopback; the gateway reads no environment
/// (the `serverless` binary fills the token in from `SERVERLESS_ADMIN_TOKEN`).
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
    ) -> Result<Self, GatewayError> {
        Self::start_with(config, backend, Takeover::default()).await
    }

    /// [`start`](Self::start), taking over what a previous gateway left running: its
    /// instances are adopted by their apps' pools.
    pub async fn start_with(
        config: Config,
        backend: Arc<dyn ContainerBackend>,
        mut takeover: Takeover,
    ) -> Result<Self, GatewayError> {
        let token = config.admin_token.clone();
        if !config.admin.ip().is_loopback() && token.is_none() {
            return Err(GatewayError::AdminTokenRequired {
                admin: config.admin,
            });
        }
        let tls = match &config.server.tls {
            Some(tls) => Some(server::tls_acceptor(&tls.cert, &tls.key)?),
            None => None,
        };
        let engine = Engine::new(backend, config.limits, config.server.clone());
        let listeners = async {
            for app in config.apps {
                let (mine, others) = std::mem::take(&mut takeover.instances)
                    .into_iter()
                    .partition(|(name, _, _)| *name == app.name);
                takeover.instances = others;
                let mine = mine.into_iter().map(|(_, id, age)| (id, age)).collect();
                engine.deploy_adopting(app, mine).await?;
            }
            let listener = bind("listen", config.listen).await?;
            let admin_listener = bind("admin", config.admin).await?;
            Ok::<_, GatewayError>((listener, admin_listener))
        };
        let ((listener, listen), (admin_listener, admin)) = match listeners.await {
            Ok(bound) => bound,
            Err(err) => {
                engine.shutdown().await;
                return Err(err);
            }
        };
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
        // Open status event streams end now, not at the admin listener's drain deadline.
        self.engine.status().close();
        for task in self.tasks {
            let _ = task.await;
        }
        self.engine.shutdown().await;
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.listen)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// What a new gateway takes over from a previous one ([`Gateway::start_with`]).
#[derive(Debug, Default)]
pub struct Takeover {
    /// Running instances to adopt: app name, instance id, age (`max_duration` counts from
    /// their real start). Instances of apps not in the config are ignored (the caller stops
    /// them).
    pub instances: Vec<(String, InstanceId, Duration)>,
}

/// Binds the listener of config key `field` and reads back its address (the port when 0).
async fn bind(
    field: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), GatewayError> {
    let bound = match TcpListener::bind(addr).await {
        Ok(listener) => listener.local_addr().map(|local| (listener, local)),
        Err(err) => Err(err),
    };
    bound.map_err(|source| GatewayError::Bind {
        field,
        addr,
        source,
    })
}
