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
//! and, after a crash, reconcile (labels) remove it. The state this works on is in
//! `standby_state.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serverless_core::AppSpec;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::handle::{ContainerdBackend, REFILL_DELAY};
use super::ids::standby_container_id;
use super::standby_state::{lock, AppStandby, Leftover, Standby, Standbys};

/// How long `prepare` waits for the first standby.
const PREPARE_WAIT: Duration = Duration::from_secs(30);

impl ContainerdBackend {
    fn standbys(&self) -> &Standbys {
        &self.inner.standbys
    }

    /// `prepare`: makes the app's standby (replacing one of another spec) and waits until it
    /// is ready or failed (a failure is logged; cold starts then take the normal path).
    pub(super) async fn prepare_standby(&self, app: &AppSpec) {
        let leftover = self.ensure(app, Duration::ZERO);
        self.dispose(leftover).await;
        let deadline = Instant::now() + PREPARE_WAIT;
        while Instant::now() < deadline {
            {
                let apps = lock(&self.standbys().apps);
                match apps.get(&app.name) {
                    Some(entry)
                        if entry.spec == *app && entry.ready.is_none() && entry.filling() => {}
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
            let mut apps = lock(&self.standbys().apps);
            match apps.get_mut(&app.name) {
                Some(entry) if entry.spec == *app => match entry.ready.take() {
                    Some(standby) => {
                        entry.generation = self.standbys().next.fetch_add(1, Ordering::Relaxed);
                        entry.fill = Some(self.spawn_fill(app, entry.generation, REFILL_DELAY));
                        let usable = Arc::ptr_eq(&standby.created.image, &image)
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
                    let old = apps.remove(&app.name).map(Leftover::from);
                    (None, old.unwrap_or_default())
                }
                None => (None, Leftover::default()),
            }
        };
        if let Some(standby) = &taken {
            self.standbys().alias(id, &standby.container);
        }
        self.dispose_later(leftover);
        taken
    }

    /// `release`: discards the app's standby if it was made for exactly `app`.
    pub(super) async fn release_standby(&self, app: &AppSpec) {
        let leftover = {
            let mut apps = lock(&self.standbys().apps);
            match apps.get(&app.name) {
                Some(entry) if entry.spec == *app => apps.remove(&app.name).map(Leftover::from),
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
        let apps: Vec<AppStandby> = lock(&standbys.apps).drain().map(|(_, s)| s).collect();
        for entry in apps {
            self.dispose(entry.into()).await;
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
        let mut apps = lock(&standbys.apps);
        if let Some(entry) = apps.get(&app.name) {
            if entry.spec == *app && (entry.ready.is_some() || entry.filling()) {
                return Leftover::default();
            }
        }
        let generation = standbys.next.fetch_add(1, Ordering::Relaxed);
        let entry = AppStandby {
            spec: app.clone(),
            generation,
            ready: None,
            fill: Some(self.spawn_fill(app, generation, delay)),
        };
        apps.insert(app.name.clone(), entry)
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
            && lock(&self.standbys().apps)
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
        let container = standby_container_id(&app.name, generation);
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
            let mut apps = lock(&self.standbys().apps);
            let closed = self.standbys().closed.load(Ordering::SeqCst);
            match apps.get_mut(&app.name) {
                Some(entry) if entry.generation == generation && !closed => {
                    entry.ready = Some(Standby {
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
        if leftover.is_empty() {
            return;
        }
        let this = self.clone();
        let task = tokio::spawn(async move { this.dispose(leftover).await });
        let mut background = lock(&self.standbys().background);
        background.retain(|t| !t.is_finished());
        background.push(task);
    }
}
