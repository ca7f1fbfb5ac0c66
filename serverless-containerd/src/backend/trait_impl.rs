//! [`ContainerBackend`] for [`ContainerdBackend`]: the engine's entry points, each checking the
//! instance id and mapping it to its container (its own, or the standby it took), then handing
//! over to the part that does the work. `start` also picks the path (standby or a fresh task)
//! and cleans up after a failed attempt.

use std::time::Duration;

use async_trait::async_trait;
use containerd_client::types::v1::Status as ProcessStatus;
use serverless_core::{
    AppSpec, BackendError, Connection, ContainerBackend, ErrorKind, Exit, InstanceId,
    OwnedInstance, Started,
};
use tokio::time::Instant;

use super::handle::ContainerdBackend;
use super::ids::validate_id;
use crate::{labels, logs};

/// How much of an instance's log [`ContainerBackend::logs`] returns.
const LOG_TAIL_BYTES: u64 = 64 * 1024;
/// How much of the log a boot failure carries.
const BOOT_LOG_BYTES: u64 = 4 * 1024;

#[async_trait]
impl ContainerBackend for ContainerdBackend {
    /// Checks that the host can wire `network = "bridge"` (the CNI plugins, iptables) and
    /// starts filling the pool of wired namespaces, then imports or pulls the image; with
    /// [`Scale::standby`](serverless_core::Scale::standby) also creates the app's standby (a
    /// failing standby is logged, never an error).
    async fn prepare(&self, app: &AppSpec) -> Result<(), BackendError> {
        if app.network == serverless_core::NetworkMode::Bridge {
            self.inner.network.check_tools().map_err(|e| {
                e.into_backend(format_args!(
                    "checking network = \"bridge\" of app {}",
                    app.name
                ))
            })?;
            self.inner.network.refill();
        }
        self.prepared(app).await?;
        self.refill_shim(Duration::ZERO);
        if app.scale.standby {
            self.prepare_standby(app).await;
        }
        Ok(())
    }

    /// With [`Scale::standby`](serverless_core::Scale::standby) and a standby made for this
    /// exact spec (and image), only starts it and refills it in the background; otherwise (or
    /// if that standby is unusable) creates and starts a new container.
    async fn start(&self, app: &AppSpec, id: &InstanceId) -> Result<Started, BackendError> {
        let id = validate_id(id)?;
        if self.inner.exits.watch(id).is_some() || self.inner.standbys.aliased(id) {
            return Err(BackendError::new(
                ErrorKind::Unavailable,
                format!("instance {id} already exists"),
            ));
        }
        let mut phases = Vec::with_capacity(5);
        let t = Instant::now();
        let standby = match app.scale.standby {
            true => self.take_standby(app, id).await,
            false => None,
        };
        let (container, result) = match standby {
            Some(standby) => {
                phases.push(("standby", t.elapsed()));
                let result = self
                    .run(app, &standby.container, id, standby.created, &mut phases)
                    .await;
                (standby.container, result)
            }
            None => {
                let result = self.start_fresh(app, id, &mut phases).await;
                if result.is_ok() && app.scale.standby {
                    self.refill_standby(app);
                }
                (id.to_owned(), result)
            }
        };
        match result {
            Ok(started) => Ok(started),
            Err(err) => Err(self.after_failed_start(&container, err).await),
        }
    }

    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), BackendError> {
        let id = validate_id(id)?;
        self.teardown(&self.container_of(id), grace).await
    }

    async fn wait(&self, id: &InstanceId) -> Result<Exit, BackendError> {
        let container = self.container_of(id.as_str());
        let mut rx = self.inner.exits.watch(&container).ok_or_else(|| {
            BackendError::new(ErrorKind::NotFound, format!("instance {id} not found"))
        })?;
        let exit = rx.wait_for(|e| e.is_some()).await.map_err(|_| {
            BackendError::new(
                ErrorKind::NotFound,
                format!("instance {id} was removed before it exited"),
            )
        })?;
        (*exit).ok_or_else(|| BackendError::new(ErrorKind::NotFound, format!("instance {id}")))
    }

    async fn connect(&self, id: &InstanceId) -> Result<Connection, BackendError> {
        let container = self.container_of(id.as_str());
        let instance = self.instances().get(&container).cloned().ok_or_else(|| {
            BackendError::new(ErrorKind::NotFound, format!("instance {id} not found"))
        })?;
        let stream = instance.dialer.connect(instance.addr).await.map_err(|e| {
            BackendError::new(
                ErrorKind::Connect,
                format!(
                    "connecting to instance {id} of app {} at {} failed",
                    instance.app, instance.addr
                ),
            )
            .with_source(e)
        })?;
        Ok(Box::new(stream))
    }

    /// Instances by the ids they were started with; this run's standbys that no instance took
    /// yet are not instances and not listed (a previous run's are).
    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
        let containers = self.containers().await?;
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let instance = self.inner.standbys.instance_of(&c.id);
            if instance.is_none()
                && c.labels.contains_key(labels::STANDBY)
                && self.inner.exits.watch(&c.id).is_some()
            {
                continue;
            }
            // Spare shims' keepers are not instances: this run's are its own business, a
            // previous run's are removed by reconcile.
            if c.labels.contains_key(labels::SPARE_SHIM) {
                continue;
            }
            let running = matches!(
                self.task_status(&c.id).await,
                Some((
                    ProcessStatus::Running | ProcessStatus::Created | ProcessStatus::Paused,
                    _
                ))
            );
            out.push(OwnedInstance {
                app: c.labels.get(labels::APP).cloned().unwrap_or_default(),
                id: InstanceId::new(instance.unwrap_or(c.id)),
                running,
            });
        }
        Ok(out)
    }

    async fn logs(&self, id: &InstanceId) -> Result<String, BackendError> {
        let id = validate_id(id)?;
        let path = self.log_path(&self.container_of(id));
        match logs::tail(&path, LOG_TAIL_BYTES).await {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BackendError::new(
                ErrorKind::NotFound,
                format!("no logs for instance {id}"),
            )),
            Err(e) => Err(BackendError::new(
                ErrorKind::Unavailable,
                format!("reading the logs of {id} failed"),
            )
            .with_source(e)),
        }
    }

    /// Discards the app's standby if it was made for exactly this spec.
    async fn release(&self, app: &AppSpec) {
        self.release_standby(app).await;
    }
}

impl ContainerdBackend {
    /// Frees everything a failed start of `container` created, and returns its error with the
    /// log's last lines for a boot failure or a start timeout. Deleting the task flushes its
    /// output, so the log is read after that.
    async fn after_failed_start(&self, container: &str, err: BackendError) -> BackendError {
        let mut cleanup = self.terminate(container, Duration::ZERO).await;
        if cleanup.is_ok() {
            cleanup = self.delete_objects(container).await;
        }
        let logs = self.read_settled_log_tail(container, BOOT_LOG_BYTES).await;
        self.forget(container).await;
        if let Err(c) = cleanup {
            tracing::warn!(instance = container, error = %c, "cleanup after a failed start failed");
            // containerd may be gone (a restart): the instance never served, so its network
            // namespace is released now rather than at the next reconcile.
            if let Err(e) = self.inner.network.detach(container).await {
                tracing::warn!(instance = container, error = %e, "releasing its network failed");
            }
        }
        match err.exit() {
            Some(exit) if err.kind() == ErrorKind::BootFailed => {
                BackendError::boot_failed(exit, logs)
            }
            _ if err.kind() == ErrorKind::StartTimeout => err.with_logs(logs),
            _ => err,
        }
    }

    /// The log tail of a process that just exited: complete once our copy of its output has
    /// reached the end of both streams (the shim closes them after delivering everything, at
    /// the latest 2 s after the exit).
    async fn read_settled_log_tail(&self, id: &str, max: u64) -> String {
        let copy = self
            .inner
            .log_copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        if let Some(done) = copy {
            logs::copied(done, Duration::from_secs(3)).await;
        }
        logs::tail(&self.log_path(id), max)
            .await
            .unwrap_or_default()
    }
}
