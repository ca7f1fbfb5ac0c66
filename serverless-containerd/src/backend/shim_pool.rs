//! The spare shim's state: the keeper whose shim is spare, and every keeper that exists. The
//! operations on it, and what a spare shim is, are in `spare_shim.rs`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use tokio::task::JoinHandle;

/// The runtime whose shim can serve several containers (the only one spare shims are made for).
pub(super) const RUNC_V2: &str = "io.containerd.runc.v2";

/// The backend's spare shim.
pub(super) struct ShimPool {
    /// The keepers' root directory; `None`: no spare shims.
    pub(super) root: Option<PathBuf>,
    state: Mutex<PoolState>,
}

#[derive(Default)]
pub(super) struct PoolState {
    /// The keeper whose shim is spare.
    pub(super) ready: Option<String>,
    pub(super) filling: bool,
    pub(super) closed: bool,
    /// The number in the last keeper's id.
    pub(super) next: u64,
    /// Keepers that exist or are being made or removed: reconcile leaves them alone.
    pub(super) live: HashSet<String>,
    /// Fills and removals running in the background (awaited by shutdown).
    pub(super) background: Vec<JoinHandle<()>>,
}

impl ShimPool {
    /// A pool whose keepers use `root` (created here, with `proc/` and `dev/`); `None` when
    /// spare shims are off or the directory cannot be made.
    pub(super) fn new(root: Option<PathBuf>) -> Self {
        let root = root.filter(|root| {
            let made = ["proc", "dev"]
                .iter()
                .try_for_each(|d| std::fs::create_dir_all(root.join(d)));
            if let Err(e) = &made {
                tracing::warn!(dir = %root.display(), error = %e, "no spare shims: making their root directory failed");
            }
            made.is_ok()
        });
        Self {
            root,
            state: Mutex::new(PoolState::default()),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `id` is a keeper this backend holds (reconcile must not remove it).
    pub(super) fn is_live(&self, id: &str) -> bool {
        self.lock().live.contains(id)
    }

    /// Whether any keeper of this backend exists (its cgroup sits under the namespace's).
    pub(super) fn any_live(&self) -> bool {
        !self.lock().live.is_empty()
    }

    /// Whether no spare shim is being made (or waiting to be) and no keeper is being removed.
    pub(super) fn is_quiet(&self) -> bool {
        let state = self.lock();
        !state.filling && state.background.iter().all(JoinHandle::is_finished)
    }

    /// Keeps `task` for shutdown to await.
    pub(super) fn track(&self, task: JoinHandle<()>) {
        let mut state = self.lock();
        state.background.retain(|t| !t.is_finished());
        state.background.push(task);
    }
}
