//! The spare shim: task creation without the shim spawn.
//!
//! Creating a task makes containerd run `containerd-shim-runc-v2 start`, which spawns the shim
//! daemon that will serve the task: two Go processes starting up, on the request's path
//! (docs/src/architecture.md, "Cold start", has the figures). containerd's runc shim serves
//! every container whose spec carries the same `io.containerd.runc.v2.group` annotation (what
//! Kubernetes pods use), so the backend keeps one shim spawned ahead: a *keeper* container in a
//! group of its own, whose task is created (so its shim runs) and killed at once (nothing runs;
//! the stopped task keeps the shim alive). A start that takes no standby joins the keeper's
//! group and containerd finds the shim serving. Once that instance's task exists, the keeper is
//! deleted — the shim then serves only the instance and exits with it, as every instance's shim
//! does — and the next spare is made; both after [`REFILL_DELAY`], off the CPU of the instance
//! that is booting.
//!
//! A keeper is container `spare-shim.<pid>.<n>` (instance ids never contain a dot), labelled
//! `serverless.spare-shim`, with an empty read-only root (a directory of the data dir holding
//! only `proc/` and `dev/`), `/proc/self/exe` as its process (which `runc create` must find
//! and which never runs), no network namespace. Its cost is one idle shim process. Backend
//! shutdown removes it after the fills and removals in flight; reconcile removes a crashed
//! run's like any other container of ours. The pool's state is in `shim_pool.rs`.

use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, KillRequest,
};
use serverless_core::BackendError;

use super::handle::{ContainerdBackend, REFILL_DELAY, SPEC_TYPE_URL};
use crate::client::failed;
use crate::labels;

/// The spec annotation that makes containerd's runc shim serve several containers.
pub(super) const GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";
/// Container ids of keepers start with this.
const KEEPER_PREFIX: &str = "spare-shim.";

/// A start's claim on the spare shim: its group goes into the instance's spec; dropping the
/// claim (once the instance's task exists, or its creation failed) removes the keeper.
pub(super) struct Claim {
    backend: ContainerdBackend,
    keeper: String,
}

impl Claim {
    /// The group annotation's value.
    pub(super) fn group(&self) -> &str {
        &self.keeper
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let backend = self.backend.clone();
        let keeper = std::mem::take(&mut self.keeper);
        let task = tokio::spawn(async move {
            tokio::time::sleep(REFILL_DELAY).await;
            backend.remove_keeper(&keeper).await;
        });
        self.backend.inner.shims.track(task);
    }
}

impl ContainerdBackend {
    /// Takes the spare shim if one is ready, and has the next one made after `REFILL_DELAY`.
    pub(super) fn claim_shim(&self) -> Option<Claim> {
        let keeper = self.inner.shims.lock().ready.take();
        self.refill_shim(REFILL_DELAY);
        keeper.map(|keeper| Claim {
            backend: self.clone(),
            keeper,
        })
    }

    /// Makes a spare shim after `delay`, unless one is ready or being made.
    pub(super) fn refill_shim(&self, delay: Duration) {
        let pool = &self.inner.shims;
        let Some(root) = pool.root.clone() else {
            return;
        };
        {
            let mut state = pool.lock();
            if state.closed || state.filling || state.ready.is_some() {
                return;
            }
            state.filling = true;
        }
        let backend = self.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            backend.make_keeper(&root).await;
            backend.inner.shims.lock().filling = false;
        });
        pool.track(task);
    }

    /// Stops making spare shims, waits for the fills and removals in flight, and removes the
    /// spare one.
    pub(super) async fn shutdown_shims(&self) {
        let pool = &self.inner.shims;
        let ready = {
            let mut state = pool.lock();
            state.closed = true;
            state.ready.take()
        };
        loop {
            let background: Vec<_> = pool.lock().background.drain(..).collect();
            if background.is_empty() {
                break;
            }
            for task in background {
                let _ = task.await;
            }
        }
        if let Some(keeper) = ready {
            self.remove_keeper(&keeper).await;
        }
    }

    async fn make_keeper(&self, root: &Path) {
        let pool = &self.inner.shims;
        let id = {
            let mut state = pool.lock();
            if state.closed {
                return;
            }
            state.next += 1;
            let id = format!("{KEEPER_PREFIX}{}.{}", std::process::id(), state.next);
            state.live.insert(id.clone());
            id
        };
        match self.create_keeper(&id, root).await {
            Ok(()) => {
                let mut state = pool.lock();
                if !state.closed && state.ready.is_none() {
                    state.ready = Some(id);
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(keeper = %id, error = %e, "making a spare shim failed; cold starts spawn their own until the next one is made");
            }
        }
        self.remove_keeper(&id).await;
    }

    async fn create_keeper(&self, id: &str, root: &Path) -> Result<(), BackendError> {
        let _primed = self.inner.primer.hold();
        let client = &self.inner.client;
        let spec = keeper_spec(id, root, &self.cgroup(id));
        client
            .containers()
            .create(
                client.req(CreateContainerRequest {
                    container: Some(Container {
                        id: id.to_owned(),
                        labels: [
                            (labels::MANAGED.to_owned(), "true".to_owned()),
                            (labels::INSTANCE.to_owned(), id.to_owned()),
                            (labels::SPARE_SHIM.to_owned(), "true".to_owned()),
                        ]
                        .into(),
                        image: String::new(),
                        runtime: Some(Runtime {
                            name: self.inner.runtime.clone(),
                            options: None,
                        }),
                        spec: Some(prost_types::Any {
                            type_url: SPEC_TYPE_URL.to_owned(),
                            value: spec.to_string().into_bytes(),
                        }),
                        snapshotter: String::new(),
                        snapshot_key: String::new(),
                        created_at: None,
                        updated_at: None,
                        extensions: Default::default(),
                        sandbox: String::new(),
                    }),
                }),
            )
            .await
            .map_err(|s| failed(format_args!("container create of {id}"), s))?;
        client
            .tasks()
            .create(client.req(CreateTaskRequest {
                container_id: id.to_owned(),
                rootfs: Vec::new(),
                stdin: String::new(),
                stdout: String::new(),
                stderr: String::new(),
                terminal: false,
                checkpoint: None,
                options: None,
                runtime_path: String::new(),
            }))
            .await
            .map_err(|s| failed(format_args!("task create of {id}"), s))?;
        // `runc init` waits for a start that never comes: end it; the stopped task keeps the
        // shim.
        client
            .tasks()
            .kill(client.req(KillRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
                signal: 9,
                all: false,
            }))
            .await
            .map_err(|s| failed(format_args!("kill of {id}"), s))?;
        Ok(())
    }

    /// Deletes a keeper's task and container (and cgroup). Its shim exits once it serves
    /// nothing else.
    async fn remove_keeper(&self, id: &str) {
        if let Err(e) = self.teardown(id, Duration::ZERO).await {
            tracing::warn!(keeper = %id, error = %e, "removing a spare shim's keeper failed; reconcile will");
        }
        self.inner.shims.lock().live.remove(id);
    }
}

/// The keeper's runtime spec: nothing but what `runc create` needs.
fn keeper_spec(id: &str, root: &Path, cgroup: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": { "uid": 0, "gid": 0 },
            "args": ["/proc/self/exe"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": { "path": root, "readonly": true },
        "hostname": "spare-shim",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "noexec", "mode=755", "size=64k"]
            }
        ],
        "annotations": { (GROUP_ANNOTATION): id },
        "linux": {
            "cgroupsPath": cgroup,
            "namespaces": [
                { "type": "pid" },
                { "type": "mount" },
                { "type": "ipc" },
                { "type": "uts" }
            ]
        }
    })
}
