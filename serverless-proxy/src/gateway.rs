//! [`Gateway`]: the proxy listener and the admin listener over one [`Engine`], started from a
//! [`Config`], and [`GatewayError`], why a start failed.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
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
    /// Copies of both listening sockets (gateway, admin), to hand over to a successor.
    sockets: [OwnedFd; 2],
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
            if let Some(handed) = takeover.listeners.take() {
                return taken_over(handed.await);
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
        let copy = |l: &TcpListener| l.as_fd().try_clone_to_owned();
        let sockets = match (copy(&listener), copy(&admin_listener)) {
            (Ok(gateway), Ok(admin)) => [gateway, admin],
            (Err(source), _) | (_, Err(source)) => {
                engine.shutdown().await;
                return Err(GatewayError::Bind {
                    field: "listen",
                    addr: listen,
                    source,
                });
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
            sockets,
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

    /// The listening sockets (gateway, admin), for a successor process to serve on
    /// ([`Takeover::listeners`]): they stay open in both processes, so no connection is
    /// refused while the successor takes over.
    pub fn listening_sockets(&self) -> [BorrowedFd<'_>; 2] {
        [self.sockets[0].as_fd(), self.sockets[1].as_fd()]
    }

    /// Hands over to a successor that took the listening sockets and adopted the instances:
    /// every pool is detached ([`Pool::detach`](serverless_limits::Pool::detach): no instance
    /// is stopped from here on), accepting stops, in-flight requests finish (up to 30 s;
    /// streams and WebSockets included). The instances keep running.
    ///
    /// An upgraded connection (a WebSocket) leaves its HTTP connection when it upgrades, so
    /// the servers' drain does not wait for it: its tunnel holds its request's place on the
    /// instance instead, and this waits until no place is held (within the same 30 s).
    pub async fn hand_over(self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for app in self.engine.apps() {
            app.pool.detach();
        }
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let held = |engine: &Engine| -> u32 {
            engine
                .apps()
                .iter()
                .flat_map(|app| app.pool.snapshot().instances)
                .map(|i| i.in_flight)
                .sum()
        };
        while held(&self.engine) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
#[derive(Default)]
pub struct Takeover {
    /// Running instances to adopt: app name, instance id, age (`max_duration` counts from
    /// their real start). Instances of apps not in the config are ignored (the caller stops
    /// them).
    pub instances: Vec<(String, InstanceId, Duration)>,
    /// The listening sockets (gateway, admin) to serve on instead of binding the config's
    /// addresses: awaited once the apps are deployed, so the previous gateway keeps accepting
    /// until this one is ready (see [`Gateway::listening_sockets`]).
    pub listeners: Option<HandedListeners>,
}

/// The listening sockets a previous gateway hands over (gateway, admin), once asked for.
pub type HandedListeners = Pin<
    Box<
        dyn Future<Output = std::io::Result<(std::net::TcpListener, std::net::TcpListener)>> + Send,
    >,
>;

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Takeover")
            .field("instances", &self.instances)
            .field("listeners", &self.listeners.is_some())
            .finish()
    }
}

/// A listener and its address.
type Bound = (TcpListener, SocketAddr);

/// The handed-over sockets as tokio listeners with their addresses.
fn taken_over(
    handed: std::io::Result<(std::net::TcpListener, std::net::TcpListener)>,
) -> Result<(Bound, Bound), GatewayError> {
    let convert = |field: &'static str, l: std::net::TcpListener| {
        let result = l
            .set_nonblocking(true)
            .and_then(|()| l.local_addr())
            .and_then(|addr| Ok((TcpListener::from_std(l)?, addr)));
        result.map_err(|source| GatewayError::Bind {
            field,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
    };
    let (gateway, admin) = handed.map_err(|source| GatewayError::Bind {
        field: "listen",
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    Ok((convert("listen", gateway)?, convert("admin", admin)?))
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
