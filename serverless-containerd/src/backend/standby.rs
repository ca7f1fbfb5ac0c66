//! Standbys: per app with [`Scale::standby`](serverless_core::Scale::standby), one container
//! whose task is *created but not started* — `runc create` is done (namespaces, cgroup, rootfs
//! mounted; `runc init` waits on its exec fifo, the app's process has not run). A cold start
//! that finds one only has to start it and find its port.
//!
//! A standby is made under its own container id (`<app>-sb<n>-<random>`, labelled
//! `serverless.standby`); the instance that takes it keeps that container, and the backend maps
//! the instance id to it for `stop`/`wait`/`connect`/`logs`/`list`. Nothing is leaked:
//! [`release`](serverless_core::ContainerBackend::release) (pool shutdown: app removed or
//! redeployed), a different spec (discarded on the next `prepare` or `start`), backend shutdown
//! and, after a crash, reconcile (labels) remove it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serverless_core::AppSpec;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{ContainerdBackend, Created};

/// How long after a standby is taken its replacement starts being made: keeps the refill's
/// `runc create` off the CPU while the instance that took it boots and answers.
pub(super) const REFILL_DELAY: Duration = Duration::from_millis(100);
/// How long `prepare` waits for the first standby.
const PREPARE_WAIT: Duration = Duration::from_secs(30);

/// A created task kept for an app.
pub(super) struct Standby {
    /// Its container id.
    pub(super) container: String,
    pub(super) created: Created,
}

/// What the backend keeps for one app.
struct Slot {
    /// The spec the standby is made for (only a start with an equal spec takes it).
    spec: AppSpec,
    /// Which fill is current: an older fill that finishes discards what it made.
    generation: u64,
    ready: Option<Standby>,
    fill: Option<JoinHandle<()>>,
}

impl Slot {
    fn filling(&self) -> bool {
        self.fill.as_ref().is_some_and(|f| !f.is_finished())
    }
}

/// A slot's parts that are no longer wanted.
#[derive(Default)]
struct Leftover {
    ready: Option<Standby>,
    fill: Option<JoinHandle<()>>,
}

impl From<Slot> for Leftover {
    fn from(slot: Slot) -> Self {
        Self {
            ready: slot.ready,
            fill: slot.fill,
        }
    }
}

/// The standbys of a backend and the instances that took one.
#[derive(Default)]
pub(super) struct Standbys {
    /// App name → its slot.
    slots: Mutex<HashMap<String, Slot>>,
    /// Instance id → container id, for instances that took a standby.
    aliases: Mutex<HashMap<String, String>>,
    /// Disposals running in the background (awaited by shutdown).
    background: Mutex<Vec<JoinHandle<()>>>,
    next: AtomicU64,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `<app>-sb<n>-<random>`: a valid containerd id (at most 76 characters), unique across runs.
fn container_id(app: &str, generation: u64) -> String {
    let app: String = app.chars().take(40).collect();
    let app = app.trim_end_matches(['-', '.', '_']);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let random = nanos ^ std::process::id().rotate_left(16);
    format!("{app}-sb{generation}-{random:08x}")
}

impl ContainerdBackend {
    fn standbys(&self) -> &Standbys {
        &self.inner.standbys
    }

    /// The container an instance runs in: its own id, or the standby it took.
    pub(super) fn container_of(&self, id: &str) -> String {
        lock(&self.standbys().aliases)
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_owned())
    }

    /// The instance id a (standby's) container is known by.
    pub(super) fn instance_of(&self, container: &str) -> Option<String> {
        lock(&self.standbys().aliases)
            .iter()
            .find(|(_, c)| *c == container)
            .map(|(id, _)| id.clone())
    }

    /// An instance with this id took a standby.
    pub(super) fn aliased(&self, id: &str) -> bool {
        lock(&self.standbys().aliases).contains_key(id)
    }

    /// Forgets the instance id of `container`.
    pub(super) fn unalias(&self, container: &str) {
        lock(&self.standbys().aliases).retain(|_, c| c != container);
    }

    /// `prepare`: makes the app's standby (replacing one of another spec) and waits until it
    /// is ready or failed (a failure is logged; cold starts then take the normal path).
    pub(super) async fn prepare_standby(&self, app: &AppSpec) {
        let leftover = self.ensure(app, Duration::ZERO);
        self.dispose(leftover).await;
        let deadline = Instant::now() + PREPARE_WAIT;
        while Instant::now() < deadline {
            {
                let slots = lock(&self.standbys().slots);
                match slots.get(&app.name) {
                    Some(slot) if slot.spec == *app && slot.ready.is_none() && slot.filling() => {}
                    _ => return,
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// After a start that found no standby: makes one (after [`REFILL_DELAY`]).
    pub(super) fn refill_standby(&self, app: &AppSpec) {
        let leftover = self.ensure(app, REFILL_DELAY);
        self.dispose_later(leftover);
    }

    /// The app's standby if one is ready for exactly this spec and the current image (a fill
    /// for the next start is scheduled when one is taken). A standby for another spec, or a
    /// stale one, is discarded in the background. `id` is the instance that takes it.
    pub(super) async fn take_standby(&self, app: &AppSpec, id: &str) -> Option<Standby> {
        if self.standbys().closed.load(Ordering::SeqCst) {
            return None;
        }
        // An archive rewritten since the standby was made is imported again: compare images.
        let image = self.prepared(app).await.ok()?;
        let (taken, leftover) = {
            let mut slots = lock(&self.standbys().slots);
            match slots.get_mut(&app.name) {
                Some(slot) if slot.spec == *app => match slot.ready.take() {
                    Some(standby) => {
                        slot.generation = self.standbys().next.fetch_add(1, Ordering::Relaxed);
                        slot.fill = Some(self.spawn_fill(app, slot.generation, REFILL_DELAY));
                        let usable = std::sync::Arc::ptr_eq(&standby.created.image, &image)
                            && standby.created.exit.borrow().is_none();
                        if usable {
                            (Some(standby), Leftover::default())
                        } else {
                            let leftover = Leftover {
                                ready: Some(standby),
                                fill: None,
                            };
                            (None, leftover)
                        }
                    }
                    // Being made (or making it failed): the normal path.
                    None => (None, Leftover::default()),
                },
                Some(_) => {
                    let old = slots.remove(&app.name).map(Leftover::from);
                    (None, old.unwrap_or_default())
                }
                None => (None, Leftover::default()),
            }
        };
        if let Some(standby) = &taken {
            lock(&self.standbys().aliases).insert(id.to_owned(), standby.container.clone());
        }
        self.dispose_later(leftover);
        taken
    }

    /// `release`: discards the app's standby if it was made for exactly `app`.
    pub(super) async fn release_standby(&self, app: &AppSpec) {
        let leftover = {
            let mut slots = lock(&self.standbys().slots);
            match slots.get(&app.name) {
                Some(slot) if slot.spec == *app => slots.remove(&app.name).map(Leftover::from),
                _ => None,
            }
        };
        if let Some(leftover) = leftover {
            self.dispose(leftover).await;
        }
    }

    /// Backend shutdown: no more standbys; every one (and every fill) is gone on return.
    pub(super) async fn shutdown_standbys(&self) {
        let standbys = self.standbys();
        standbys.closed.store(true, Ordering::SeqCst);
        let slots: Vec<Slot> = lock(&standbys.slots).drain().map(|(_, s)| s).collect();
        for slot in slots {
            self.dispose(slot.into()).await;
        }
        let background: Vec<_> = lock(&standbys.background).drain(..).collect();
        for task in background {
            let _ = task.await;
        }
    }

    /// Makes sure a standby for exactly `app` exists or is being made (after `delay`).
    /// Returns what it replaced.
    fn ensure(&self, app: &AppSpec, delay: Duration) -> Leftover {
        let standbys = self.standbys();
        if standbys.closed.load(Ordering::SeqCst) {
            return Leftover::default();
        }
        let mut slots = lock(&standbys.slots);
        if let Some(slot) = slots.get(&app.name) {
            if slot.spec == *app && (slot.ready.is_some() || slot.filling()) {
                return Leftover::default();
            }
        }
        let generation = standbys.next.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            spec: app.clone(),
            generation,
            ready: None,
            fill: Some(self.spawn_fill(app, generation, delay)),
        };
        slots
            .insert(app.name.clone(), slot)
            .map(Leftover::from)
            .unwrap_or_default()
    }

    fn spawn_fill(&self, app: &AppSpec, generation: u64, delay: Duration) -> JoinHandle<()> {
        let this = self.clone();
        let app = app.clone();
        tokio::spawn(async move { this.fill(app, generation, delay).await })
    }

    /// Whether fill `generation` of `app` is still the one wanted.
    fn wanted(&self, app: &str, generation: u64) -> bool {
        !self.standbys().closed.load(Ordering::SeqCst)
            && lock(&self.standbys().slots)
                .get(app)
                .is_some_and(|s| s.generation == generation)
    }

    async fn fill(&self, app: AppSpec, generation: u64, delay: Duration) {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if !self.wanted(&app.name, generation) {
            return;
        }
        let container = container_id(&app.name, generation);
        let t = Instant::now();
        let mut phases = Vec::with_capacity(3);
        let created = match self.create(&app, &container, true, &mut phases).await {
            Ok(created) => created,
            Err(error) => {
                tracing::warn!(
                    app = %app.name, container, %error,
                    "making a standby failed; cold starts take the normal path"
                );
                self.discard(&container).await;
                return;
            }
        };
        let unwanted = {
            let mut slots = lock(&self.standbys().slots);
            let closed = self.standbys().closed.load(Ordering::SeqCst);
            match slots.get_mut(&app.name) {
                Some(slot) if slot.generation == generation && !closed => {
                    slot.ready = Some(Standby {
                        container: container.clone(),
                        created,
                    });
                    None
                }
                _ => Some(created),
            }
        };
        match unwanted {
            None => tracing::debug!(
                app = %app.name, container, took = ?t.elapsed(), ?phases, "standby ready"
            ),
            // Released or replaced meanwhile.
            Some(created) => {
                drop(created);
                self.discard(&container).await;
            }
        }
    }

    /// Tears a standby's container down (errors are logged: reconcile gets it later).
    async fn discard(&self, container: &str) {
        if let Err(error) = self.teardown(container, Duration::ZERO).await {
            tracing::warn!(container, %error, "removing a standby failed");
        }
    }

    async fn dispose(&self, leftover: Leftover) {
        if let Some(fill) = leftover.fill {
            // A replaced fill discards what it made itself.
            let _ = fill.await;
        }
        if let Some(standby) = leftover.ready {
            let container = standby.container;
            drop(standby.created);
            self.discard(&container).await;
        }
    }

    fn dispose_later(&self, leftover: Leftover) {
        if leftover.ready.is_none() && leftover.fill.is_none() {
            return;
        }
        let this = self.clone();
        let task = tokio::spawn(async move { this.dispose(leftover).await });
        let mut background = lock(&self.standbys().background);
        background.retain(|t| !t.is_finished());
        background.push(task);
    }
}

#[cfg(test)]
mod tests {
    use super::container_id;

    #[test]
    fn standby_ids_are_valid_containerd_ids() {
        for app in [
            "a",
            "hello",
            &"x".repeat(63),
            &format!("{}-y", "x".repeat(39)),
        ] {
            let id = container_id(app, u64::MAX);
            let id = serverless_core::InstanceId::new(id);
            assert!(super::super::validate_id(&id).is_ok(), "{id}");
        }
    }
}
