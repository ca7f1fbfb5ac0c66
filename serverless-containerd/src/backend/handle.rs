//! [`ContainerdBackend`], a cheap handle on the backend's shared state ([`Inner`]), and the
//! accessors every part of the backend uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serverless_core::ImageRef;
use tokio::sync::{watch, Mutex as AsyncMutex};
use tokio::task::JoinHandle;

use super::boost::BoostBudget;
use super::shim_pool::ShimPool;
use super::standby_state::Standbys;
use super::task::Instance;
use crate::cgroup;
use crate::client::Client;
use crate::daemon::Daemon;
use crate::events::Exits;
use crate::image::{PreparedImage, ProgressHook, RegistryLogins};

/// The type URL of an OCI runtime spec in a container record.
pub(super) const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// How long after a standby or the spare shim is taken its replacement starts being made: keeps
/// the refill's `runc create` off the CPU while the instance that took it boots and answers.
pub(super) const REFILL_DELAY: Duration = Duration::from_millis(100);

/// Runs instances as containerd containers: see the [crate docs](crate).
///
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct ContainerdBackend {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for ContainerdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdBackend")
            .field("socket", &self.inner.socket)
            .field("namespace", &self.inner.client.namespace_name)
            .finish_non_exhaustive()
    }
}

/// Everything a backend's clones share.
pub(super) struct Inner {
    pub(super) client: Client,
    pub(super) socket: PathBuf,
    pub(super) logs: PathBuf,
    pub(super) snapshotter: String,
    pub(super) runtime: String,
    pub(super) pull_progress: ProgressHook,
    pub(super) registry_logins: RegistryLogins,
    pub(super) max_unpacked_bytes: u64,
    /// Standbys per app and the instances that took one.
    pub(super) standbys: Standbys,
    /// The spare shim (see `spare_shim.rs`).
    pub(super) shims: ShimPool,
    pub(super) exits: Arc<Exits>,
    /// Takes the cgroup attach's grace period off task creation (see [`cgroup::AttachPrimer`]).
    pub(super) primer: cgroup::AttachPrimer,
    /// The startup CPU boost's budget (see `boost.rs`).
    pub(super) boost: Arc<BoostBudget>,
    /// Started instances by container id.
    pub(super) instances: Mutex<HashMap<String, Arc<Instance>>>,
    /// Per container: resolves once its output is all in its log file (see [`crate::logs`]).
    pub(super) log_copies: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Prepared images, by reference; the lock also serializes imports.
    pub(super) images: AsyncMutex<HashMap<ImageRef, (Fingerprint, Arc<PreparedImage>)>>,
    /// The embedded containerd, if this backend started one.
    pub(super) daemon: AsyncMutex<Option<Daemon>>,
    /// The events loop (see [`crate::events`]).
    pub(super) events: JoinHandle<()>,
    /// The bridge network of `network = "bridge"` apps (see [`crate::network`]).
    pub(super) network: Arc<crate::network::Network>,
    /// The host id range of instances' user namespaces (`[security]`).
    pub(super) userns: crate::image::IdMap,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.events.abort();
    }
}

/// What identifies an archive's contents without reading it: its size and modification time.
pub(super) type Fingerprint = Option<(u64, Option<SystemTime>)>;

impl ContainerdBackend {
    /// The containerd socket in use.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// The containerd namespace in use.
    pub fn namespace(&self) -> &str {
        &self.inner.client.namespace_name
    }

    /// Waits until the work this backend does in the background after a start or a stop is
    /// done: the next spare shim made and an old keeper removed, the network pool refilled,
    /// released namespaces' CNI DEL run, a boosted instance's slot applied (so it also waits
    /// for a boosted start in progress). Nothing needs to call it; tests and benchmarks do, so
    /// that each measured cold start begins from the same state rather than sharing the CPU
    /// with the previous one's aftermath.
    pub async fn settled(&self) {
        while !(self.inner.shims.is_quiet()
            && self.inner.network.is_quiet()
            && self.inner.boost.in_use() == 0)
        {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// The engine-wide settings an instance of `app` is made with — the bridge network's
    /// (`[network]`) for a `bridge` app, the user namespace's range for a `userns` one — as
    /// text for its spec hash: a restart with other settings replaces the instance instead of
    /// adopting it.
    pub(super) fn engine_inputs(&self, app: &serverless_core::AppSpec) -> String {
        let mut out = String::new();
        if app.network == serverless_core::NetworkMode::Bridge {
            out.push_str(&serde_json::to_string(self.inner.network.config()).unwrap_or_default());
        }
        if app.security.userns {
            let map = self.inner.userns;
            out.push_str(&format!("\nuserns {} {}", map.base, map.size));
        }
        out
    }

    /// The started instances, by container id.
    pub(super) fn instances(&self) -> MutexGuard<'_, HashMap<String, Arc<Instance>>> {
        self.inner
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// What [`crate::logs`] copies a container's output to.
    pub(super) fn log_path(&self, id: &str) -> PathBuf {
        self.inner.logs.join(format!("{id}.log"))
    }

    /// The cgroup path of container `id`.
    pub(super) fn cgroup(&self, id: &str) -> String {
        cgroup::path(self.namespace(), id)
    }

    /// The container an instance runs in: its own id, or the standby it took.
    pub(super) fn container_of(&self, id: &str) -> String {
        self.inner.standbys.container_of(id)
    }
}
