//! Adoption: a new gateway takes over the running instances a previous one left (a restart, a
//! crash, an upgrade) instead of removing them, so warm instances stay warm.
//!
//! [`ContainerdBackend::adopt`] runs before [`reconcile`](ContainerdBackend::reconcile): an
//! instance whose app is in the new config with the same [`spec_hash`](labels::spec_hash)
//! (label `serverless.spec-hash`), whose task runs and which listens is made this backend's
//! (exit watch, dialer into its namespace, its port found again, its log FIFOs read again);
//! reconcile then removes everything else — instances of removed or changed apps, tasks that
//! do not run or listen, a previous run's standbys (a new one is made off the request path)
//! and spare shims' keepers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::GetRequest;
use containerd_client::types::v1::Status as ProcessStatus;
use serverless_core::{AppSpec, BackendError, InstanceId};

use super::handle::ContainerdBackend;
use super::task::Instance;
use crate::logs::LogFifos;
use crate::netns::Dialer;
use crate::{labels, ports};

/// A running instance of a previous run that this backend now holds (see
/// [`ContainerdBackend::adopt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The app it belongs to.
    pub app: String,
    /// Its id (its container's).
    pub id: InstanceId,
    /// The port it listens on, found again.
    pub port: u16,
    /// How long ago its container was created: the pool counts `max_duration` from then.
    pub age: Duration,
}

impl ContainerdBackend {
    /// Takes over the running instances of `apps` that a previous run left, when their spec
    /// and image are unchanged; returns them, for each app's pool to take as ready
    /// (`serverless_limits::PoolBuilder::adopt`). Prepares (imports or pulls) each app's image
    /// to compare it. Call [`reconcile`](Self::reconcile) afterwards: it removes what was not
    /// adopted.
    pub async fn adopt(&self, apps: &[AppSpec]) -> Result<Vec<Adopted>, BackendError> {
        let mut hashes = Vec::with_capacity(apps.len());
        for app in apps {
            match self.prepared(app).await {
                Ok(image) => hashes.push((
                    app,
                    labels::spec_hash(app, &image, &self.engine_inputs(app)),
                )),
                // Its deploy reports this; its instances are not adopted.
                Err(error) => {
                    tracing::warn!(app = %app.name, %error, "preparing the image to adopt instances failed")
                }
            }
        }
        let mut adopted = Vec::new();
        for container in self.containers().await? {
            let id = container.id.as_str();
            let label = |key: &str| container.labels.get(key).map(String::as_str);
            if label(labels::SPARE_SHIM).is_some() || self.inner.exits.watch(id).is_some() {
                continue;
            }
            let Some((app, _)) = hashes.iter().find(|(app, hash)| {
                label(labels::APP) == Some(app.name.as_str())
                    && label(labels::SPEC_HASH) == Some(hash.as_str())
            }) else {
                continue;
            };
            let age = container
                .created_at
                .and_then(|t| u64::try_from(t.seconds).ok())
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
                .and_then(|created| SystemTime::now().duration_since(created).ok())
                .unwrap_or_default();
            match self.adopt_one(app, id).await {
                Ok(Some(port)) => {
                    tracing::info!(app = %app.name, instance = id, port, age_s = age.as_secs(), "adopted a running instance");
                    adopted.push(Adopted {
                        app: app.name.clone(),
                        id: InstanceId::new(id),
                        port,
                        age,
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(app = %app.name, instance = id, %error, "adopting a running instance failed; it is removed");
                }
            }
        }
        Ok(adopted)
    }

    /// Makes container `id` this backend's if its task runs and listens: the port, or `None`
    /// (left for reconcile to remove).
    async fn adopt_one(&self, app: &AppSpec, id: &str) -> Result<Option<u16>, BackendError> {
        let Some(pid) = self.running_pid(id).await else {
            return Ok(None);
        };
        // Watched before anything else, so an exit from here on is not missed.
        let exit = self.inner.exits.register(id, self.cgroup(id));
        let found = async {
            let dialer = Dialer::spawn(pid, id).await.ok()?;
            let listeners = dialer.listeners().await.ok()?;
            let listener = ports::choose(&listeners, app.port)?;
            Some((dialer, listener))
        }
        .await;
        let running = self.running_pid(id).await == Some(pid) && exit.borrow().is_none();
        let Some((dialer, listener)) = found.filter(|_| running) else {
            self.inner.exits.remove(id);
            return Ok(None);
        };
        match LogFifos::reopen(&self.log_path(id)) {
            Ok(fifos) => {
                let copied = fifos.copy();
                self.inner
                    .log_copies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_owned(), copied);
            }
            Err(error) => {
                tracing::warn!(instance = id, %error, "reading an adopted instance's output failed; its log stops here");
            }
        }
        let addr = SocketAddr::new(listener.dial_addr(), listener.port);
        self.instances().insert(
            id.to_owned(),
            Arc::new(Instance {
                app: app.name.clone(),
                addr,
                dialer,
            }),
        );
        Ok(Some(listener.port))
    }

    /// The pid of the task of `id` when it runs.
    async fn running_pid(&self, id: &str) -> Option<u32> {
        let client = &self.inner.client;
        let process = client
            .tasks()
            .get(client.req(GetRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await
            .ok()?
            .into_inner()
            .process?;
        (ProcessStatus::try_from(process.status) == Ok(ProcessStatus::Running))
            .then_some(process.pid)
    }
}
