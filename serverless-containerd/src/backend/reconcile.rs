//! Removing what this backend does not run: [`ContainerdBackend::reconcile`] (a previous run's
//! leftovers) and [`ContainerdBackend::shutdown`] (everything, then the embedded containerd).

use std::time::{Duration, SystemTime};

use containerd_client::services::v1::snapshots::ListSnapshotsRequest;
use containerd_client::services::v1::{
    Container, DeleteRequest as DeleteLeaseRequest, ListContainersRequest,
    ListRequest as ListLeasesRequest,
};
use serverless_core::BackendError;

use super::handle::ContainerdBackend;
use crate::client::failed;
use crate::{cgroup, labels};

impl ContainerdBackend {
    /// Removes every container, task, snapshot and lease with our labels that this backend is
    /// not running (leftovers of a previous run), their cgroups and logs. Returns how many
    /// containers it removed (instances, and spare-shim keepers that are not this backend's).
    ///
    /// Meant for the leftovers of a run that has ended: while another engine still runs on the
    /// same namespace, both delete a removed instance's task (it on the exit event, this
    /// reconcile after its kill), and two concurrent deletes of one task can leave its shim
    /// running for good (containerd 1.6).
    pub async fn reconcile(&self) -> Result<usize, BackendError> {
        self.reconcile_inner(Duration::from_secs(60)).await
    }

    /// `lease_age`: leases younger than this may belong to a start or import in flight.
    async fn reconcile_inner(&self, lease_age: Duration) -> Result<usize, BackendError> {
        let known: Vec<String> = self.instances().keys().cloned().collect();
        let starting = self.inner.exits.len();
        let mut removed = 0;
        for container in self.containers().await? {
            let id = container.id.as_str();
            if self.held(&known, id) {
                continue;
            }
            self.teardown(id, Duration::ZERO).await?;
            removed += 1;
        }
        let client = &self.inner.client;
        // Snapshots of instances whose container is already gone.
        let snapshots = client
            .snapshots()
            .list(client.req(ListSnapshotsRequest {
                snapshotter: self.inner.snapshotter.clone(),
                filters: vec![format!("labels.\"{}\"", labels::INSTANCE)],
            }))
            .await
            .map_err(|s| failed("snapshot list", s))?;
        let mut stream = snapshots.into_inner();
        let mut keys = Vec::new();
        while let Some(page) = stream
            .message()
            .await
            .map_err(|s| failed("snapshot list", s))?
        {
            keys.extend(page.info.into_iter().map(|i| i.name));
        }
        for key in keys {
            if self.held(&known, &key) {
                continue;
            }
            self.remove_snapshot(&key).await?;
        }
        let leases = client
            .leases()
            .list(client.req(ListLeasesRequest {
                filters: vec![format!("labels.\"{}\"", labels::MANAGED)],
            }))
            .await
            .map_err(|s| failed("lease list", s))?
            .into_inner()
            .leases;
        // An import holds the image lock while its lease lives.
        let _imports = self.inner.images.lock().await;
        let now = SystemTime::now();
        for lease in leases {
            let created = lease
                .created_at
                .and_then(|t| u64::try_from(t.seconds).ok())
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
            let young = created
                .and_then(|c| now.duration_since(c).ok())
                .is_some_and(|age| age < lease_age);
            if young {
                continue;
            }
            let _ = client
                .leases()
                .delete(client.req(DeleteLeaseRequest {
                    id: lease.id,
                    sync: false,
                }))
                .await;
        }
        self.inner
            .network
            .release_others(|id| self.held(&known, id))
            .await;
        for cg in cgroup::children(self.namespace()) {
            let id = cg.rsplit('/').next().unwrap_or_default().to_owned();
            if !self.held(&known, &id) {
                cgroup::remove(&cg);
            }
        }
        if known.is_empty() && starting == 0 && !self.inner.shims.any_live() {
            cgroup::remove_parent(self.namespace());
        }
        Ok(removed)
    }

    /// Whether container `id` is this backend's now (reconcile leaves it alone): a running
    /// instance (`known`), one being started (its exit watch), or a spare shim's keeper.
    fn held(&self, known: &[String], id: &str) -> bool {
        known.iter().any(|k| k == id)
            || self.inner.exits.watch(id).is_some()
            || self.inner.shims.is_live(id)
    }

    /// Stops every instance of ours (SIGKILL), removes leftovers, and stops the embedded
    /// containerd if there is one. The backend is unusable afterwards.
    pub async fn shutdown(&self) -> Result<(), BackendError> {
        self.shutdown_standbys().await;
        self.shutdown_shims().await;
        let ids: Vec<String> = self.instances().keys().cloned().collect();
        for id in ids {
            self.teardown(&id, Duration::ZERO).await?;
        }
        let result = self.reconcile_all().await;
        self.inner.network.shutdown().await;
        self.inner.events.abort();
        if let Some(mut daemon) = self.inner.daemon.lock().await.take() {
            daemon.stop().await;
        }
        result
    }

    /// Hands everything over to another process that adopted this one's instances (a gateway
    /// upgrade, see [`adopt`](Self::adopt)): no more spare shims are made, and the embedded
    /// containerd is left running when this backend is dropped. Nothing is stopped or removed;
    /// the successor's [`reconcile`](Self::reconcile), once this process has exited, removes
    /// what it did not adopt (this one's standbys, spare shim, instances still starting).
    pub async fn leave_running(&self) {
        self.inner.shims.lock().closed = true;
        if let Some(daemon) = self.inner.daemon.lock().await.as_mut() {
            daemon.keep_running();
        }
    }

    /// Like reconcile, but also instances still starting (shutdown only).
    async fn reconcile_all(&self) -> Result<(), BackendError> {
        for container in self.containers().await? {
            self.teardown(&container.id, Duration::ZERO).await?;
        }
        self.reconcile_inner(Duration::ZERO).await.map(|_| ())
    }

    /// Our containers (by label), leftovers of a previous run included.
    pub(super) async fn containers(&self) -> Result<Vec<Container>, BackendError> {
        let client = &self.inner.client;
        Ok(client
            .containers()
            .list(client.req(ListContainersRequest {
                filters: vec![format!("labels.\"{}\"", labels::INSTANCE)],
            }))
            .await
            .map_err(|s| failed("container list", s))?
            .into_inner()
            .containers)
    }
}
