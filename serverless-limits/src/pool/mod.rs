//! The per-app instance pool the layers share.
//!
//! A [`Pool`] holds an app's instances, their states and in-flight counts, and the requests
//! waiting for a slot. It starts instances on demand (the request that finds every instance full
//! starts the next one at once, up to `scale.max`), keeps `scale.min` running, stops instances
//! that had nothing in flight for `idle_timeout`, and recycles instances older than
//! `max_duration` (no new requests, in-flight ones finish within `stop_grace`, then stop).
//!
//! All state sits behind one short-held mutex that is never held across an `.await`; decisions
//! that must not race (picking an instance vs. stopping it for idleness) happen under it, so a
//! request is never given a `Draining` instance.

mod lease;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serverless_core::{AppSpec, BackendError, ContainerBackend, Exit, InstanceId};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

pub(crate) use self::lease::Held;
pub use self::lease::Lease;
use crate::error::PoolError;

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

/// Hooks for metrics and logs; every method has a no-op default.
pub trait PoolObserver: Send + Sync + 'static {
    /// An instance became ready after `total`, with the backend's phase breakdown.
    fn cold_start(&self, app: &str, total: Duration, phases: &[(&'static str, Duration)]) {
        let _ = (app, total, phases);
    }
    /// An instance failed to start.
    fn boot_failed(&self, app: &str, error: &BackendError) {
        let _ = (app, error);
    }
    /// An instance exited without being asked to (crash, OOM kill).
    fn crashed(&self, app: &str, id: &InstanceId, exit: Exit) {
        let _ = (app, id, exit);
    }
    /// An instance was stopped by the pool (`reason`: `idle`, `recycled`, `evicted`,
    /// `shutdown`).
    fn stopped(&self, app: &str, id: &InstanceId, reason: &'static str) {
        let _ = (app, id, reason);
    }
    /// An instance is gone for good, whatever the reason (stopped, exited, crashed): nothing
    /// will be sent to it again, so whatever was kept for it (e.g. idle connections) can go.
    fn removed(&self, app: &str, id: &InstanceId) {
        let _ = (app, id);
    }
}

struct NoObserver;
impl PoolObserver for NoObserver {}

/// A count of instances shared by several pools: the host-wide `max_instances`.
#[derive(Clone, Debug)]
pub struct InstanceBudget {
    inner: Arc<(AtomicU32, u32)>,
}

impl InstanceBudget {
    /// A budget of `max` instances.
    pub fn new(max: u32) -> Self {
        Self {
            inner: Arc::new((AtomicU32::new(0), max)),
        }
    }

    /// Instances counted now.
    pub fn used(&self) -> u32 {
        self.inner.0.load(Ordering::Acquire)
    }

    /// The maximum.
    pub fn max(&self) -> u32 {
        self.inner.1
    }

    fn try_take(&self) -> bool {
        self.inner
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.inner.1).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.inner.0.fetch_sub(1, Ordering::AcqRel);
    }
}

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
    /// Requests waiting for a slot.
    pub queued: usize,
}

struct Instance {
    id: InstanceId,
    state: State,
    in_flight: u32,
    created: Instant,
    idle_since: Instant,
    /// Removed as unreachable by [`Pool::evict`].
    evicted: bool,
    /// Wakes the instance's supervisor when `in_flight` drops to zero or it is asked to drain.
    wake: Arc<Notify>,
}

struct Waiter {
    ticket: u64,
    tx: oneshot::Sender<Result<Held, PoolError>>,
}

struct Backoff {
    failures: u32,
    until: Option<Instant>,
    last: Option<PoolError>,
}

struct Inner {
    instances: Vec<Instance>,
    waiters: VecDeque<Waiter>,
    next_ticket: u64,
    next_seq: u64,
    backoff: Backoff,
    closed: bool,
}

pub(crate) struct Shared {
    app: Arc<AppSpec>,
    backend: Arc<dyn ContainerBackend>,
    budget: Option<InstanceBudget>,
    observer: Arc<dyn PoolObserver>,
    epoch: String,
    inner: Mutex<Inner>,
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

    /// Builds the pool and starts `scale.min` instances. Must be called within a tokio runtime.
    pub fn build(self) -> Pool {
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
                }),
            }),
        };
        let mut inner = pool.shared.lock();
        pool.shared.scale(&mut inner);
        drop(inner);
        pool
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
        }
    }

    /// A pool with no shared budget and no observer.
    pub fn new(app: AppSpec, backend: Arc<dyn ContainerBackend>) -> Self {
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

    /// Takes a slot on a `Ready` instance with room, without waiting. When none has room, the
    /// pool starts another instance if it may (for the requests that do wait) and this returns
    /// [`PoolError::Overloaded`].
    pub fn try_acquire(&self) -> Result<Lease, PoolError> {
        let mut inner = self.shared.lock();
        if inner.closed {
            return Err(self.shared.closed_error());
        }
        if let Some(held) = self.shared.take_slot(&mut inner, false) {
            return Ok(Lease::new(held));
        }
        self.shared.scale(&mut inner);
        Err(PoolError::Overloaded {
            app: self.shared.app.name.clone(),
            reason: "every instance is at max_concurrent_requests",
        })
    }

    /// A slot on a `Ready` instance with room, if there is one; nothing else happens otherwise.
    pub(crate) fn try_lease(&self) -> Option<Lease> {
        let mut inner = self.shared.lock();
        if inner.closed {
            return None;
        }
        self.shared.take_slot(&mut inner, false).map(Lease::new)
    }

    /// Takes a slot, waiting (in a queue of at most `max_queued_requests`, for at most
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
        while !self.shared.lock().instances.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Then whatever the backend keeps ready for this app (e.g. a standby) goes too.
        self.shared.backend.release(&self.shared.app).await;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding this lock; if one did, the data is still consistent
        // enough to drain and stop instances, so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed_error(&self) -> PoolError {
        PoolError::Closed {
            app: self.app.name.clone(),
        }
    }

    pub(crate) fn app_name(&self) -> &str {
        &self.app.name
    }

    pub(crate) async fn acquire_held(self: &Arc<Self>) -> Result<Held, PoolError> {
        let started = Instant::now();
        let (ticket, rx) = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(self.closed_error());
            }
            if let Some(held) = self.take_slot(&mut inner, false) {
                return Ok(held);
            }
            if let Some(err) = self.refuse_waiting(&inner) {
                return Err(err);
            }
            if inner.waiters.len() >= self.app.limits.max_queued_requests as usize {
                self.scale(&mut inner);
                return Err(PoolError::Overloaded {
                    app: self.app.name.clone(),
                    reason: "the request queue is full",
                });
            }
            let (tx, rx) = oneshot::channel();
            let ticket = inner.next_ticket;
            inner.next_ticket += 1;
            inner.waiters.push_back(Waiter { ticket, tx });
            self.scale(&mut inner);
            (ticket, rx)
        };
        let mut held = match tokio::time::timeout(self.app.limits.queue_timeout, rx).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(self.closed_error()),
            Err(_) => {
                // Leave the queue. A slot granted just now is released when `rx` drops.
                self.lock().waiters.retain(|w| w.ticket != ticket);
                return Err(PoolError::Elapsed {
                    app: self.app.name.clone(),
                    waited: self.app.limits.queue_timeout,
                });
            }
        };
        if held.cold {
            held.waited = Some(started.elapsed());
        }
        Ok(held)
    }

    /// When a request cannot usefully wait: the app is backing off after failed boots with
    /// nothing else running, or no instance can be started at all.
    fn refuse_waiting(&self, inner: &Inner) -> Option<PoolError> {
        let active = inner
            .instances
            .iter()
            .any(|i| matches!(i.state, State::Starting | State::Ready));
        if active {
            return None;
        }
        if let (Some(until), Some(err)) = (inner.backoff.until, &inner.backoff.last) {
            if Instant::now() < until {
                return Some(err.clone());
            }
        }
        if let Some(budget) = &self.budget {
            if budget.used() >= budget.max() {
                return Some(PoolError::Overloaded {
                    app: self.app.name.clone(),
                    reason: "the host's max_instances is reached",
                });
            }
        }
        None
    }

    /// Picks the least-loaded `Ready` instance with room and counts a request on it.
    fn take_slot(self: &Arc<Self>, inner: &mut Inner, cold: bool) -> Option<Held> {
        let max = self.app.limits.max_concurrent_requests;
        let inst = inner
            .instances
            .iter_mut()
            .filter(|i| i.state == State::Ready && i.in_flight < max)
            .min_by_key(|i| i.in_flight)?;
        inst.in_flight += 1;
        Some(Held::new(self.clone(), inst.id.clone(), cold))
    }

    /// Hands free slots to waiters, in order. Returns the grants to send once the lock is gone
    /// (a grant whose waiter left is dropped, which releases its slot and takes the lock).
    fn dispatch(self: &Arc<Self>, inner: &mut Inner, cold: bool) -> Vec<Grant> {
        let mut grants = Vec::new();
        while let Some(waiter) = inner.waiters.pop_front() {
            if waiter.tx.is_closed() {
                continue;
            }
            match self.take_slot(inner, cold) {
                Some(held) => grants.push((waiter.tx, Ok(held))),
                None => {
                    inner.waiters.push_front(waiter);
                    break;
                }
            }
        }
        grants
    }

    /// Starts instances for `scale.min` and for waiting requests that the instances being
    /// started will not have room for.
    fn scale(self: &Arc<Self>, inner: &mut Inner) {
        if inner.closed {
            return;
        }
        if let Some(until) = inner.backoff.until {
            if Instant::now() < until {
                return;
            }
        }
        let max_conc = self.app.limits.max_concurrent_requests as usize;
        loop {
            let active = inner
                .instances
                .iter()
                .filter(|i| matches!(i.state, State::Starting | State::Ready))
                .count();
            let starting = inner
                .instances
                .iter()
                .filter(|i| i.state == State::Starting)
                .count();
            let demand = inner.waiters.iter().filter(|w| !w.tx.is_closed()).count();
            let want = active < self.app.scale.min as usize || demand > starting * max_conc;
            if !want || active >= self.app.scale.max as usize {
                return;
            }
            if let Some(budget) = &self.budget {
                if !budget.try_take() {
                    return;
                }
            }
            self.start_instance(inner);
        }
    }

    fn start_instance(self: &Arc<Self>, inner: &mut Inner) {
        inner.next_seq += 1;
        let id = InstanceId::new(format!(
            "{}-{}-{}",
            self.app.name, inner.next_seq, self.epoch
        ));
        let now = Instant::now();
        inner.instances.push(Instance {
            id: id.clone(),
            state: State::Starting,
            in_flight: 0,
            created: now,
            idle_since: now,
            evicted: false,
            wake: Arc::new(Notify::new()),
        });
        let shared = self.clone();
        tokio::spawn(async move { shared.run_instance(id).await });
    }

    /// The life of one instance: start, supervise (idle, recycle, crash), stop.
    async fn run_instance(self: Arc<Self>, id: InstanceId) {
        let t0 = Instant::now();
        // The backend bounds startup itself; this outer bound makes sure nothing hangs.
        let bound = self.app.limits.startup_timeout + Duration::from_secs(30);
        let result = match tokio::time::timeout(bound, self.backend.start(&self.app, &id)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::new(
                serverless_core::ErrorKind::StartTimeout,
                format!(
                    "backend did not finish starting within {}",
                    humantime::format_duration(bound)
                ),
            )),
        };
        match result {
            Ok(started) => {
                let total = t0.elapsed();
                let (grants, closed) = {
                    let mut inner = self.lock();
                    inner.backoff = Backoff {
                        failures: 0,
                        until: None,
                        last: None,
                    };
                    let closed = inner.closed;
                    if let Some(inst) = inner.instances.iter_mut().find(|i| i.id == id) {
                        inst.state = if closed {
                            State::Draining
                        } else {
                            State::Ready
                        };
                        inst.idle_since = Instant::now();
                    }
                    (self.dispatch(&mut inner, true), closed)
                };
                send_grants(grants);
                self.observer
                    .cold_start(&self.app.name, total, &started.phases);
                tracing::info!(app = %self.app.name, instance = %id, port = started.port,
                    ms = total.as_millis() as u64, "instance ready");
                let reason = if closed {
                    "shutdown"
                } else {
                    self.supervise(&id).await
                };
                self.stop_instance(&id, reason).await;
            }
            Err(err) => {
                tracing::warn!(app = %self.app.name, instance = %id, error = %err, "instance failed to start");
                self.observer.boot_failed(&self.app.name, &err);
                let failures = {
                    let mut inner = self.lock();
                    inner.instances.retain(|i| i.id != id);
                    if let Some(budget) = &self.budget {
                        budget.give_back();
                    }
                    inner.backoff.failures += 1;
                    let failures = inner.backoff.failures;
                    inner.backoff.until = Some(Instant::now() + backoff_delay(failures));
                    let error = PoolError::BootFailed {
                        app: self.app.name.clone(),
                        message: err.to_string(),
                        exit_code: err.exit().map(|e| e.code),
                        logs: err.logs().map(last_lines),
                    };
                    inner.backoff.last = Some(error.clone());
                    let others = inner
                        .instances
                        .iter()
                        .any(|i| matches!(i.state, State::Starting | State::Ready));
                    let failed: Vec<_> = if others {
                        Vec::new()
                    } else {
                        inner.waiters.drain(..).collect()
                    };
                    for w in failed {
                        let _ = w.tx.send(Err(error.clone()));
                    }
                    failures
                };
                // Try again after the backoff if something still needs an instance.
                let delay = backoff_delay(failures);
                let shared = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut inner = shared.lock();
                    shared.scale(&mut inner);
                });
            }
        }
    }

    /// Watches a ready instance until it should stop; returns why.
    async fn supervise(&self, id: &InstanceId) -> &'static str {
        let limits = &self.app.limits;
        let exited = self.backend.wait(id);
        tokio::pin!(exited);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let (wake, deadline) = {
                let mut inner = self.lock();
                let keep = self.app.scale.min as usize;
                let active = inner
                    .instances
                    .iter()
                    .filter(|i| matches!(i.state, State::Starting | State::Ready))
                    .count();
                let closed = inner.closed;
                let Some(inst) = inner.instances.iter_mut().find(|i| &i.id == id) else {
                    return "gone";
                };
                if inst.state == State::Ready && now >= inst.created + limits.max_duration {
                    inst.state = State::Draining;
                    tracing::debug!(instance = %id, "max_duration reached, draining");
                }
                if inst.state == State::Draining {
                    let deadline = *drain_deadline.get_or_insert(now + limits.stop_grace);
                    if inst.in_flight == 0 || now >= deadline {
                        return match (closed, inst.evicted) {
                            (true, _) => "shutdown",
                            (false, true) => "evicted",
                            (false, false) => "recycled",
                        };
                    }
                    (inst.wake.clone(), deadline)
                } else {
                    let recycle_at = inst.created + limits.max_duration;
                    if inst.in_flight == 0 {
                        let idle_at = inst.idle_since + limits.idle_timeout;
                        if now >= idle_at {
                            if active > keep {
                                inst.state = State::Draining;
                                return "idle";
                            }
                            // Kept for scale.min: nothing to time until the recycle.
                            (inst.wake.clone(), recycle_at)
                        } else {
                            (inst.wake.clone(), idle_at.min(recycle_at))
                        }
                    } else {
                        (inst.wake.clone(), recycle_at)
                    }
                }
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                exit = &mut exited => {
                    let exit = exit.unwrap_or(Exit::code(-1));
                    let was_stopping = self
                        .lock()
                        .instances
                        .iter()
                        .any(|i| &i.id == id && i.state == State::Draining);
                    if !was_stopping {
                        tracing::warn!(app = %self.app.name, instance = %id, %exit, "instance exited");
                        self.observer.crashed(&self.app.name, id, exit);
                    }
                    return "exited";
                }
            }
        }
    }

    fn evict(self: &Arc<Self>, id: &InstanceId) {
        let wake = {
            let mut inner = self.lock();
            let Some(inst) = inner.instances.iter_mut().find(|i| &i.id == id) else {
                return;
            };
            inst.state = State::Draining;
            inst.evicted = true;
            let wake = inst.wake.clone();
            self.scale(&mut inner);
            wake
        };
        // The supervisor sees Draining; with in-flight requests it waits for them (bounded by
        // stop_grace), then stops.
        wake.notify_one();
    }

    async fn stop_instance(self: &Arc<Self>, id: &InstanceId, reason: &'static str) {
        {
            let mut inner = self.lock();
            if let Some(inst) = inner.instances.iter_mut().find(|i| &i.id == id) {
                inst.state = State::Draining;
            }
            // Replace it if load or scale.min needs it.
            self.scale(&mut inner);
        }
        let grace = if reason == "exited" {
            Duration::ZERO
        } else {
            self.app.limits.stop_grace
        };
        if let Err(err) = self.backend.stop(id, grace).await {
            tracing::warn!(app = %self.app.name, instance = %id, error = %err, "stopping instance failed");
        }
        if reason != "exited" {
            self.observer.stopped(&self.app.name, id, reason);
        }
        {
            let mut inner = self.lock();
            inner.instances.retain(|i| &i.id != id);
            if let Some(budget) = &self.budget {
                budget.give_back();
            }
            self.scale(&mut inner);
        }
        self.observer.removed(&self.app.name, id);
        tracing::debug!(app = %self.app.name, instance = %id, reason, "instance stopped");
    }

    /// Gives back one slot on `id`.
    pub(crate) fn release(self: &Arc<Self>, id: &InstanceId) {
        let grants = {
            let mut inner = self.lock();
            let Some(inst) = inner.instances.iter_mut().find(|i| &i.id == id) else {
                return;
            };
            inst.in_flight = inst.in_flight.saturating_sub(1);
            if inst.in_flight == 0 {
                inst.idle_since = Instant::now();
                inst.wake.notify_one();
            }
            if inst.state == State::Ready && !inner.waiters.is_empty() {
                self.dispatch(&mut inner, false)
            } else {
                Vec::new()
            }
        };
        send_grants(grants);
    }
}

type Grant = (
    oneshot::Sender<Result<Held, PoolError>>,
    Result<Held, PoolError>,
);

fn send_grants(grants: Vec<Grant>) {
    for (tx, grant) in grants {
        // A waiter that left in the meantime gets nothing; its slot is released on drop.
        let _ = tx.send(grant);
    }
}

/// The last 20 lines of a log, for error messages.
fn last_lines(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests;
