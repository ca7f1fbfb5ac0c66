//! Stopping and removing one container: signals, waiting for the exit, and deleting the task,
//! container, snapshot, cgroup and log, each step idempotent so a teardown can be repeated or
//! race another.

use std::time::Duration;

use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
use containerd_client::services::v1::{
    DeleteContainerRequest, DeleteTaskRequest, GetRequest, KillRequest,
};
use containerd_client::types::v1::Status as ProcessStatus;
use serverless_core::{BackendError, ErrorKind};
use tokio::time::Instant;

use super::handle::ContainerdBackend;
use crate::client::{failed, is_not_found};
use crate::{cgroup, events, logs};

impl ContainerdBackend {
    /// SIGTERM (unless `grace` is zero), wait, SIGKILL, wait; then delete task, container,
    /// snapshot, cgroup dirs and log. Idempotent.
    pub(super) async fn teardown(&self, id: &str, grace: Duration) -> Result<(), BackendError> {
        self.terminate(id, grace).await?;
        self.delete_objects(id).await?;
        self.forget(id).await;
        Ok(())
    }

    /// Makes sure the task of `id` is not running: SIGTERM (unless `grace` is zero), up to
    /// `grace`, SIGKILL, up to 10 s.
    pub(super) async fn terminate(&self, id: &str, grace: Duration) -> Result<(), BackendError> {
        self.instances().remove(id);
        let exited = self
            .inner
            .exits
            .watch(id)
            .map(|rx| rx.borrow().is_some())
            .unwrap_or(false);
        if exited {
            return Ok(());
        }
        let mut running = true;
        if !grace.is_zero() {
            running = self.kill(id, 15).await?;
            if running {
                running = !self.await_exit(id, grace).await;
            }
        }
        if running && self.kill(id, 9).await? && !self.await_exit(id, Duration::from_secs(10)).await
        {
            return Err(BackendError::new(
                ErrorKind::Unavailable,
                format!("instance {id} did not exit within 10s of SIGKILL"),
            ));
        }
        Ok(())
    }

    /// Sends `signal` to the task of `id` (SIGKILL to all its processes). `false`: no task, or
    /// its process already finished.
    async fn kill(&self, id: &str, signal: u32) -> Result<bool, BackendError> {
        let client = &self.inner.client;
        match client
            .tasks()
            .kill(client.req(KillRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
                signal,
                all: signal == 9,
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if is_not_found(&s) => Ok(false),
            // A task whose `start` was dropped mid-create may have lost its shim ("ttrpc:
            // closed"): nothing of it runs, so there is nothing to signal; deleting follows.
            Err(s) => match self.task_status(id).await {
                Some((
                    ProcessStatus::Running | ProcessStatus::Paused | ProcessStatus::Pausing,
                    _,
                )) => Err(failed(format_args!("kill of {id}"), s)),
                _ => Ok(false),
            },
        }
    }

    /// The status and exit status of the task of `id`; `None` when it has no task.
    pub(super) async fn task_status(&self, id: &str) -> Option<(ProcessStatus, u32)> {
        let client = &self.inner.client;
        let got = client
            .tasks()
            .get(client.req(GetRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await
            .ok()?;
        let p = got.into_inner().process?;
        Some((
            ProcessStatus::try_from(p.status).unwrap_or(ProcessStatus::Unknown),
            p.exit_status,
        ))
    }

    /// Waits up to `limit` for the task of `id` to exit: via its exit watch when there is one,
    /// and by asking containerd (a missed event, or no watch for leftovers).
    async fn await_exit(&self, id: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut rx = self.inner.exits.watch(id);
        let mut first = true;
        loop {
            if rx.as_ref().is_some_and(|rx| rx.borrow().is_some()) {
                return true;
            }
            // With a watch, the events loop publishes the exit (after deleting the task); asking
            // containerd covers a missed event (after 500 ms quiet) and instances with no watch.
            if rx.is_none() || !first {
                match self.task_status(id).await {
                    None => return true,
                    Some((ProcessStatus::Stopped, _)) if rx.is_none() => return true,
                    // Not `true` yet: the caller would delete the task while the events loop
                    // may be deleting it too, and two concurrent deletes of one task can leave
                    // its shim running for good (containerd 1.6). `exited` deletes it once,
                    // whether or not the loop saw the event, and then publishes the exit.
                    Some((ProcessStatus::Stopped, status)) => {
                        events::exited(&self.inner.client, &self.inner.exits, id, status);
                    }
                    Some(_) => {}
                }
            }
            first = false;
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            match &mut rx {
                Some(rx) => {
                    let step = (deadline - now).min(Duration::from_millis(500));
                    let _ = tokio::time::timeout(step, rx.wait_for(|e| e.is_some())).await;
                }
                None => {
                    let step = (deadline - now).min(Duration::from_millis(20));
                    tokio::time::sleep(step).await;
                }
            }
        }
    }

    /// Deletes the task, container, snapshot and cgroup of `id`; what is already gone is fine.
    pub(super) async fn delete_objects(&self, id: &str) -> Result<(), BackendError> {
        let client = &self.inner.client;
        match client
            .tasks()
            .delete(client.req(DeleteTaskRequest {
                container_id: id.to_owned(),
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            // The events loop deletes exited tasks too; losing that race is fine.
            Err(_) if self.task_status(id).await.is_none() => {}
            Err(s) => return Err(failed(format_args!("task delete of {id}"), s)),
        }
        match client
            .containers()
            .delete(client.req(DeleteContainerRequest { id: id.to_owned() }))
            .await
        {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            Err(s) => return Err(failed(format_args!("container delete of {id}"), s)),
        }
        self.remove_snapshot(id).await?;
        cgroup::remove(&self.cgroup(id));
        self.inner
            .network
            .detach(id)
            .await
            .map_err(|e| e.into_backend(format_args!("releasing the network of {id}")))
    }

    /// Removes the snapshot `key` (an instance's rootfs) if it exists.
    pub(super) async fn remove_snapshot(&self, key: &str) -> Result<(), BackendError> {
        let client = &self.inner.client;
        match client
            .snapshots()
            .remove(client.req(RemoveSnapshotRequest {
                snapshotter: self.inner.snapshotter.clone(),
                key: key.to_owned(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(s) => Err(failed(format_args!("snapshot remove of {key}"), s)),
        }
    }

    /// Drops what only this process holds about container `id`: its log file, exit watch and
    /// the instance id it was known by (when it was a standby).
    pub(super) async fn forget(&self, id: &str) {
        let log = self.log_path(id);
        let _ = tokio::fs::remove_file(&log).await;
        logs::remove_fifos(&log);
        self.inner
            .log_copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.inner.exits.remove(id);
        self.instances().remove(id);
        self.inner.standbys.unalias(id);
    }
}
