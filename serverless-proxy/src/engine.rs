//! The engine: apps, their pools, request stacks and routes, over one container backend.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Once, RwLock, Weak};
use std::time::Duration;

use foldhash::HashMap;
use http::{Request, Response};
use serverless_core::{
    AppSpec, BackendError, ContainerBackend, Exit, GlobalLimits, InstanceId, ServerConfig,
};
use serverless_limits::{
    ColdStartBuffer, ColdStartBufferLayer, ConcurrencyLimit, ConcurrencyLimitLayer, GlobalLimit,
    GlobalLimitLayer, InstanceBudget, Pool, PoolObserver, PoolSnapshot,
};
use tower::{ServiceBuilder, ServiceExt};

use crate::body::{BoxError, ReqBody, ResBody};
use crate::error::error_response;
use crate::forward::Forward;
use crate::metrics::Metrics;
use crate::status::Status;
use crate::upstream::Upstreams;

/// An app's request path, built once when it is deployed:
/// `GlobalLimit → ColdStartBuffer → ConcurrencyLimit → Forward`.
///
/// Kept as its concrete type, not boxed: each request clones it (reference counts of the
/// handles its layers hold, as tower's `oneshot` needs a service of its own), and cloning a
/// boxed service would allocate per request.
pub(crate) type AppStack = GlobalLimit<ColdStartBuffer<ConcurrencyLimit<Forward>>>;

/// One deployed app.
pub struct App {
    /// Its spec.
    pub spec: Arc<AppSpec>,
    /// Its instances.
    pub pool: Pool,
    /// Its request path.
    stack: AppStack,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("spec", &self.spec)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// What the pools tell the engine: metrics, the status page's transitions, and instances gone
/// (their kept connections go).
struct Observer {
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    upstreams: Upstreams,
}

impl PoolObserver for Observer {
    fn starting(&self, app: &str, id: &InstanceId) {
        self.status.starting(app, id);
    }
    fn ready(
        &self,
        app: &str,
        id: &InstanceId,
        total: Duration,
        phases: &[(&'static str, Duration)],
    ) {
        self.metrics.cold_start(app, total, phases);
        self.status.ready(app, id, total, phases);
    }
    fn boot_failed(&self, app: &str, error: &BackendError) {
        self.metrics.boot_failed(app, error);
        self.status.boot_failed(app, error);
    }
    fn crashed(&self, app: &str, id: &InstanceId, exit: Exit) {
        self.metrics.crashed(app, id, exit);
        self.status.crashed(app, id, exit);
    }
    fn stopped(&self, app: &str, id: &InstanceId, reason: serverless_limits::StopReason) {
        self.metrics.stopped(app, id, reason);
        self.status.stopped(app, id, reason);
    }
    fn removed(&self, _app: &str, id: &InstanceId) {
        self.upstreams.forget(id);
        self.status.removed(id);
    }
}

#[derive(Default)]
struct Routes {
    by_name: HashMap<String, Arc<App>>,
    by_host: HashMap<String, Arc<App>>,
}

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A host is routed to another app.
    #[error("host {host:?} is already routed to app {app:?}")]
    HostTaken {
        /// The host.
        host: String,
        /// The app that has it.
        app: String,
    },
    /// The app spec is out of range ([`AppSpec::validate`](serverless_core::AppSpec::validate)).
    #[error("app {app}: {source}")]
    Invalid {
        /// The app.
        app: String,
        /// Which field, value and range.
        source: serverless_core::ConfigError,
    },
    /// The image could not be prepared.
    #[error("app {app}: {source}")]
    Image {
        /// The app.
        app: String,
        /// What failed.
        source: BackendError,
    },
}

/// The engine's state, shared by its clones.
pub(crate) struct Inner {
    backend: Arc<dyn ContainerBackend>,
    global: GlobalLimitLayer,
    budget: InstanceBudget,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    sampler: Once,
    upstreams: Upstreams,
    server: ServerConfig,
    routes: RwLock<Routes>,
}

/// Apps, their pools and routes over one backend. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let apps: Vec<String> = self.apps().iter().map(|a| a.spec.name.clone()).collect();
        f.debug_struct("Engine")
            .field("apps", &apps)
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with no apps.
    pub fn new(
        backend: Arc<dyn ContainerBackend>,
        limits: GlobalLimits,
        server: ServerConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                upstreams: Upstreams::with_lean_client(backend.clone(), server.lean_client),
                backend,
                global: GlobalLimitLayer::new(limits.max_concurrent_requests),
                budget: InstanceBudget::new(limits.max_instances),
                metrics: Arc::new(Metrics::new()),
                status: Arc::new(Status::new()),
                sampler: Once::new(),
                server,
                routes: RwLock::default(),
            }),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn ContainerBackend> {
        &self.inner.backend
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The status page's hub.
    pub(crate) fn status(&self) -> &Arc<Status> {
        &self.inner.status
    }

    /// A handle that does not keep the engine alive (the status sampler's).
    pub(crate) fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// The engine of a [`downgrade`](Self::downgrade)d handle, while it lives.
    pub(crate) fn upgrade(weak: &Weak<Inner>) -> Option<Self> {
        weak.upgrade().map(|inner| Self { inner })
    }

    /// Gateway server settings.
    pub fn server_config(&self) -> &ServerConfig {
        &self.inner.server
    }

    /// Deploys (or replaces) an app: prepares its image, then routes its hosts to a new pool.
    /// A replaced app's instances drain and stop in the background.
    pub async fn deploy(&self, spec: AppSpec) -> Result<(), DeployError> {
        self.deploy_adopting(spec, Vec::new()).await
    }

    /// [`deploy`](Self::deploy), with running instances of this app (a previous gateway's,
    /// `(id, age)`) taken as ready by its pool instead of started
    /// ([`PoolBuilder::adopt`](serverless_limits::PoolBuilder::adopt)).
    pub async fn deploy_adopting(
        &self,
        spec: AppSpec,
        adopted: Vec<(InstanceId, Duration)>,
    ) -> Result<(), DeployError> {
        {
            let routes = self.inner.routes.read().unwrap_or_else(|e| e.into_inner());
            for host in &spec.hosts {
                if let Some(other) = routes.by_host.get(host) {
                    if other.spec.name != spec.name {
                        return Err(DeployError::HostTaken {
                            host: host.clone(),
                            app: other.spec.name.clone(),
                        });
                    }
                }
            }
        }
        self.inner
            .backend
            .prepare(&spec)
            .await
            .map_err(|source| DeployError::Image {
                app: spec.name.clone(),
                source,
            })?;
        let mut pool = Pool::builder(spec.clone(), self.inner.backend.clone());
        for (id, age) in adopted {
            pool = pool.adopt(id, age);
        }
        let pool = pool
            .budget(self.inner.budget.clone())
            .observer(Arc::new(Observer {
                metrics: self.inner.metrics.clone(),
                status: self.inner.status.clone(),
                upstreams: self.inner.upstreams.clone(),
            }))
            .build()
            .map_err(|source| DeployError::Invalid {
                app: spec.name.clone(),
                source,
            })?;
        let spec = Arc::new(spec);
        let stack = ServiceBuilder::new()
            .layer(self.inner.global.clone())
            .layer(ColdStartBufferLayer::new(pool.clone()))
            .layer(ConcurrencyLimitLayer::new(pool.clone()))
            .service(
                Forward::new(spec.clone(), self.inner.upstreams.clone())
                    .observer(self.inner.metrics.clone()),
            );
        let app = Arc::new(App { spec, pool, stack });
        let old = {
            let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
            let old = routes.by_name.insert(app.spec.name.clone(), app.clone());
            if let Some(old) = &old {
                for host in &old.spec.hosts {
                    routes.by_host.remove(host);
                }
            }
            for host in &app.spec.hosts {
                routes.by_host.insert(host.clone(), app.clone());
            }
            old
        };
        if let Some(old) = old {
            let engine = self.clone();
            let new = app.clone();
            tokio::spawn(async move {
                old.pool.shutdown().await;
                // The old pool's shutdown released what the backend kept for its spec (a
                // standby); when the new spec is the same, that was the new app's too: prepare
                // it again unless the app was replaced or removed meanwhile.
                let still_routed = engine
                    .app(&new.spec.name)
                    .is_some_and(|current| Arc::ptr_eq(&current, &new));
                if old.spec == new.spec && still_routed {
                    if let Err(error) = engine.inner.backend.prepare(&new.spec).await {
                        tracing::warn!(app = %new.spec.name, %error, "preparing the redeployed app again failed");
                    }
                }
            });
        }
        self.inner
            .sampler
            .call_once(|| crate::status::spawn_sampler(self));
        tracing::info!(app = %app.spec.name, hosts = ?app.spec.hosts, "deployed");
        Ok(())
    }

    /// Removes an app: stops routing to it, drains and stops its instances. False if unknown.
    pub async fn remove(&self, name: &str) -> bool {
        let app = {
            let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
            let Some(app) = routes.by_name.remove(name) else {
                return false;
            };
            for host in &app.spec.hosts {
                routes.by_host.remove(host);
            }
            app
        };
        app.pool.shutdown().await;
        true
    }

    /// The app named `name`.
    pub fn app(&self, name: &str) -> Option<Arc<App>> {
        let routes = self.inner.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.by_name.get(name).cloned()
    }

    /// All apps, by name.
    pub fn apps(&self) -> Vec<Arc<App>> {
        let routes = self.inner.routes.read().unwrap_or_else(|e| e.into_inner());
        let mut apps: Vec<_> = routes.by_name.values().cloned().collect();
        apps.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        apps
    }

    /// The app routed for a `Host` (lowercase, port stripped).
    pub fn route(&self, host: &str) -> Option<Arc<App>> {
        let routes = self.inner.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.by_host.get(host).cloned()
    }

    /// Serves one request for `app` through its request path:
    /// `GlobalLimit → ColdStartBuffer → ConcurrencyLimit → Forward`. Never fails: errors
    /// become responses with a status and `x-serverless-error`.
    ///
    /// A request that carries a [`ClientInfo`](crate::ClientInfo) extension gets forwarding
    /// headers naming that client.
    pub async fn serve(&self, app: &App, req: Request<ReqBody>) -> Response<ResBody> {
        // Boxed: erases the stack's future type (and sidesteps a higher-ranked inference limit
        // when this future is spawned); one allocation for all the layers' futures.
        let fut: Pin<Box<dyn Future<Output = Result<_, BoxError>> + Send>> =
            Box::pin(app.stack.clone().oneshot(req));
        match fut.await {
            Ok(res) => res.map(ResBody::new),
            Err(err) => error_response(Some(&app.spec.name), &err),
        }
    }

    /// Every app's pool as it is now, by app name (for [`Metrics::encode`]).
    pub fn snapshots(&self) -> Vec<PoolSnapshot> {
        self.apps().iter().map(|app| app.pool.snapshot()).collect()
    }

    /// The Prometheus text exposition of the metrics, with the instance and queue gauges as
    /// the pools are now.
    pub fn encode_metrics(&self) -> String {
        self.inner.metrics.encode(&self.snapshots())
    }

    /// Drains and stops every app's instances.
    pub async fn shutdown(&self) {
        self.inner.status.close();
        let apps: Vec<_> = {
            let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
            routes.by_host.clear();
            routes.by_name.drain().map(|(_, a)| a).collect()
        };
        let stops = apps.iter().map(|a| a.pool.shutdown());
        futures_util::future::join_all(stops).await;
    }
}
