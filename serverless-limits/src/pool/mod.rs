//! The per-app instance pool the layers share.
//!
//! A [`Pool`] holds an app's instances, their states and in-flight counts, and the requests
//! waiting for a place. It starts instances on demand (the request that finds every instance full
//! starts the next one at once, up to `scale.max`), keeps `scale.min` running, stops instances
//! that had nothing in flight for `idle_timeout`, and recycles instances older than
//! `max_duration` (no new requests, in-flight ones finish within `stop_grace`, then stop).
//!
//! All state sits behind one short-held mutex that is never held across an `.await`; decisions
//! that must not race (picking an instance vs. stopping it for idleness) happen under it, so a
//! request is never given a `Draining` instance.

mod budget;
mod lease;
mod lifecycle;
mod observer;
mod state;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serverless_core::{AppSpec, ConfigError, ContainerBackend, InstanceId};
use tokio::time::Instant;

pub use self::budget::InstanceBudget;
pub(crate) use self::lease::Held;
pub use self::lease::Lease;
use self::observer::NoObserver;
pub use self::observer::{PoolObserver, StopReason};
use self::state::{Backoff, Inner, Shared};
use crate::error::{Overload, PoolError};

/// Where an instance is in its life. Only `Ready` instances take new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Being started; not listening yet.
    Starting,
    /// Listening and taking requests.
    Ready,
    /// Taking no new requests; in-flight ones finish, then it stops.
    Draining,
}

impl InstanceState {
    /// `starting`, `ready` or `draining`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Draining => "draining",
        }
    }
}

use InstanceState as State;

/// One instance as shown by [`Pool::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSnapshot {
    /// Its id.
    pub id: InstanceId,
    /// Its state.
    pub state: State,
    /// Requests in flight (including open streams and upgraded connections).
    pub in_flight: u32,
    /// Time since it was asked to start.
    pub age: Duration,
}

/// A pool's state at one moment (admin API, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// The app's name.
    pub app: String,
    /// Its instances.
    pub instances: Vec<InstanceSnapshot>,
    /// Requests waiting for a place.
    pub queued: usize,
}

/// The per-app instance pool. Cheap to clone; clones share everything.
///
/// Dropping every clone does not stop the instances; call [`Pool::shutdown`].
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("app", &self.shared.app.name)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Pool`].
pub struct PoolBuilder {
    app: AppSpec,
    backend: Arc<dyn ContainerBackend>,
    budget: Option<InstanceBudget>,
    observer: Arc<dyn PoolObserver>,
    adopted: Vec<(InstanceId, Duration)>,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("app", &self.app.name)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl PoolBuilder {
    /// Shares a host-wide instance budget with other pools.
    pub fn budget(mut self, budget: InstanceBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Reports cold starts, crashes and stops to `observer`.
    pub fn observer(mut self, observer: Arc<dyn PoolObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Takes `id`, an instance of this app that already runs and listens (a previous
    /// gateway's, found again by the backend), as `Ready`, without starting it: `age` is how
    /// long it has been running, so `max_duration` counts from its real start. It counts
    /// towards `scale.min` and the budget (an instance the budget has no room for is stopped).
    /// The backend must know it: `connect`, `wait` and `stop` work on `id`.
    pub fn adopt(mut self, id: InstanceId, age: Duration) -> Self {
        self.adopted.push((id, age));
        self
    }

    /// Builds the pool and starts `scale.min` instances. Must be called within a tokio runtime.
    ///
    /// Fails when the app spec is out of range ([`AppSpec::validate`]): a spec built in code is
    /// held to the config file's rules.
    pub fn build(self) -> Result<Pool, ConfigError> {
        self.app.validate()?;
        let epoch = {
            // A short run-unique tag so instance ids never repeat across engine restarts.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
                .unwrap_or(0);
            format!(
                "{:06x}",
                (nanos ^ std::process::id().rotate_left(13)) & 0xff_ffff
            )
        };
        let pool = Pool {
            shared: Arc::new(Shared {
                app: Arc::new(self.app),
                backend: self.backend,
                budget: self.budget,
                observer: self.observer,
                epoch,
                wait_unwatchable: AtomicBool::new(false),
                inner: Mutex::new(Inner {
                    instances: Vec::new(),
                    waiters: VecDeque::new(),
                    next_ticket: 0,
                    next_seq: 0,
                    backoff: Backoff {
                        failures: 0,
                        until: None,
                        last: None,
                    },
                    closed: false,
                    detached: false,
                }),
            }),
        };
        let mut inner = pool.shared.lock();
        for (id, age) in self.adopted {
            pool.shared.adopt(&mut inner, id, age);
        }
        pool.shared.scale(&mut inner);
        drop(inner);
        Ok(pool)
    }
}

/// Backoff after a failed boot: 250 ms doubling to 30 s.
fn backoff_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(7);
    Duration::from_millis(250 << exp).min(Duration::from_secs(30))
}

impl Pool {
    /// A pool for `app` over `backend`.
    pub fn builder(app: AppSpec, backend: Arc<dyn ContainerBackend>) -> PoolBuilder {
        PoolBuilder {
            app,
            backend,
            budget: None,
            observer: Arc::new(NoObserver),
            adopted: Vec::new(),
        }
    }

    /// A pool with no shared budget and no observer; fails when the spec is out of range
    /// ([`AppSpec::validate`]).
    pub fn new(app: AppSpec, backend: Arc<dyn ContainerBackend>) -> Result<Self, ConfigError> {
        Self::builder(app, backend).build()
    }

    /// The app this pool runs.
    pub fn app(&self) -> &AppSpec {
        &self.shared.app
    }

    /// The backend the pool runs instances on.
    pub fn backend(&self) -> &Arc<dyn ContainerBackend> {
        &self.shared.backend
    }

    /// Takes a place on a `Ready` instance with room, without waiting. When none has room, the
    /// pool starts another instance if it may (for the requests that do wait) and this returns
    /// [`PoolError::Overloaded`].
    pub fn try_acquire(&self) -> Result<Lease, PoolError> {
        let mut inner = self.shared.lock();
        if inner.closed {
            return Err(self.shared.closed_error());
        }
        if let Some(held) = self.shared.take_place(&mut inner, false) {
            return Ok(Lease::new(held));
        }
        self.shared.scale(&mut inner);
        Err(PoolError::Overloaded {
            app: self.shared.app.name.clone(),
            reason: Overload::InstancesFull,
        })
    }

    /// A place on a `Ready` instance with room, if there is one; nothing else happens otherwise.
    pub(crate) fn try_lease(&self) -> Option<Lease> {
        let mut inner = self.shared.lock();
        if inner.closed {
            return None;
        }
        self.shared.take_place(&mut inner, false).map(Lease::new)
    }

    /// Takes a place, waiting (in a queue of at most `max_queued_requests`, for at most
    /// `queue_timeout`) while instances start or are full.
    pub async fn acquire(&self) -> Result<Lease, PoolError> {
        self.shared.acquire_held().await.map(Lease::new)
    }

    /// The pool's state now.
    pub fn snapshot(&self) -> PoolSnapshot {
        let now = Instant::now();
        let inner = self.shared.lock();
        PoolSnapshot {
            app: self.shared.app.name.clone(),
            instances: inner
                .instances
                .iter()
                .map(|i| InstanceSnapshot {
                    id: i.id.clone(),
                    state: i.state,
                    in_flight: i.in_flight,
                    age: now.saturating_duration_since(i.created),
                })
                .collect(),
            queued: inner.waiters.len(),
        }
    }

    /// Removes an instance that could not be reached (crashed, connection refused): it takes no
    /// more requests and is stopped. Requests still in flight on it are not interrupted.
    pub fn evict(&self, id: &InstanceId) {
        self.shared.evict(id);
    }

    /// Hands the instances over to another process that adopted them (a gateway upgrade):
    /// from now on this pool stops none of them — no idle stop, no recycle, no stop on
    /// shutdown — and starts no more for `scale.min`. Requests in flight and waiting still
    /// finish here (an instance started for a waiter after this is left running too).
    pub fn detach(&self) {
        let wakes: Vec<_> = {
            let mut inner = self.shared.lock();
            inner.detached = true;
            inner.instances.iter().map(|i| i.wake.clone()).collect()
        };
        for wake in wakes {
            wake.notify_one();
        }
    }

    /// Stops taking requests, answers waiting ones with [`PoolError::Closed`], lets in-flight
    /// requests finish (each instance bounded by `stop_grace`), and stops every instance.
    /// Returns when all are stopped and the backend has released what it kept for the app
    /// ([`ContainerBackend::release`], e.g. a standby).
    pub async fn shutdown(&self) {
        let (waiters, wakes) = {
            let mut inner = self.shared.lock();
            inner.closed = true;
            let waiters: Vec<_> = inner.waiters.drain(..).collect();
            let mut wakes = Vec::new();
            for inst in &mut inner.instances {
                if inst.state == State::Ready {
                    inst.state = State::Draining;
                }
                wakes.push(inst.wake.clone());
            }
            (waiters, wakes)
        };
        for w in waiters {
            let _ = w.tx.send(Err(self.shared.closed_error()));
        }
        for wake in wakes {
            wake.notify_one();
        }
        // Supervisors stop their instances; wait until every one is gone (starting ones are
        // stopped by their start task as soon as the backend returns).
        // (A detached pool's instances are another process's: nothing to wait for.)
        while !self.shared.lock().instances.is_empty() && !self.shared.lock().detached {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Then whatever the backend keeps ready for this app (e.g. a standby) goes too.
        self.shared.backend.release(&self.shared.app).await;
    }
}

#[cfg(test)]
mod tests;
