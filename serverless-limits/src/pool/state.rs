//! The pool's shared state and the decisions taken under its lock: which instance a request
//! gets, who waits, and when to start another instance.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use serverless_core::{AppSpec, ContainerBackend, InstanceId};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::{Held, InstanceBudget, Overload, PoolObserver, State};
use crate::error::PoolError;

pub(super) struct Instance {
    pub(super) id: InstanceId,
    pub(super) state: State,
    pub(super) in_flight: u32,
    pub(super) created: Instant,
    pub(super) idle_since: Instant,
    /// Removed as unreachable by [`Pool::evict`].
    pub(super) evicted: bool,
    /// Wakes the instance's supervisor when `in_flight` drops to zero or it is asked to drain.
    pub(super) wake: Arc<Notify>,
}

pub(super) struct Waiter {
    pub(super) ticket: u64,
    pub(super) tx: oneshot::Sender<Result<Held, PoolError>>,
}

pub(super) struct Backoff {
    pub(super) failures: u32,
    pub(super) until: Option<Instant>,
    pub(super) last: Option<PoolError>,
}

pub(super) struct Inner {
    pub(super) instances: Vec<Instance>,
    pub(super) waiters: VecDeque<Waiter>,
    pub(super) next_ticket: u64,
    pub(super) next_seq: u64,
    pub(super) backoff: Backoff,
    pub(super) closed: bool,
    /// Another process took the instances over ([`Pool::detach`](super::Pool::detach)).
    pub(super) detached: bool,
}

pub(crate) struct Shared {
    pub(super) app: Arc<AppSpec>,
    pub(super) backend: Arc<dyn ContainerBackend>,
    pub(super) budget: Option<InstanceBudget>,
    pub(super) observer: Arc<dyn PoolObserver>,
    pub(super) epoch: String,
    /// The backend's `wait` failed with something other than `NotFound` (warned once).
    pub(super) wait_unwatchable: AtomicBool,
    pub(super) inner: Mutex<Inner>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding this lock; if one did, the data is still consistent
        // enough to drain and stop instances, so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn closed_error(&self) -> PoolError {
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
            if let Some(held) = self.take_place(&mut inner, false) {
                return Ok(held);
            }
            if let Some(err) = self.refuse_waiting(&inner) {
                return Err(err);
            }
            if inner.waiters.len() >= self.app.limits.max_queued_requests as usize {
                self.scale(&mut inner);
                return Err(PoolError::Overloaded {
                    app: self.app.name.clone(),
                    reason: Overload::QueueFull,
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
                // Leave the queue. A place granted just now is released when `rx` drops.
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
    pub(super) fn refuse_waiting(&self, inner: &Inner) -> Option<PoolError> {
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
                    reason: Overload::HostMaxInstances,
                });
            }
        }
        None
    }

    /// Picks the least-loaded `Ready` instance with room and counts a request on it.
    pub(super) fn take_place(self: &Arc<Self>, inner: &mut Inner, cold: bool) -> Option<Held> {
        let max = self.app.limits.max_concurrent_requests;
        let inst = inner
            .instances
            .iter_mut()
            .filter(|i| i.state == State::Ready && i.in_flight < max)
            .min_by_key(|i| i.in_flight)?;
        inst.in_flight += 1;
        Some(Held::new(self.clone(), inst.id.clone(), cold))
    }

    /// Hands free places to waiters, in order. Returns the grants to send once the lock is gone
    /// (a grant whose waiter left is dropped, which releases its place and takes the lock).
    pub(super) fn dispatch(self: &Arc<Self>, inner: &mut Inner, cold: bool) -> Vec<Grant> {
        let mut grants = Vec::new();
        while let Some(waiter) = inner.waiters.pop_front() {
            if waiter.tx.is_closed() {
                continue;
            }
            match self.take_place(inner, cold) {
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
    pub(super) fn scale(self: &Arc<Self>, inner: &mut Inner) {
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
            let for_min = !inner.detached && active < self.app.scale.min as usize;
            let want = for_min || demand > starting * max_conc;
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

    pub(super) fn start_instance(self: &Arc<Self>, inner: &mut Inner) {
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

    /// Gives back one place on `id` (a [`Held`] was dropped) and hands it to a waiter.
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

pub(super) type Grant = (
    oneshot::Sender<Result<Held, PoolError>>,
    Result<Held, PoolError>,
);

pub(super) fn send_grants(grants: Vec<Grant>) {
    for (tx, grant) in grants {
        // A waiter that left in the meantime gets nothing; its place is released on drop.
        let _ = tx.send(grant);
    }
}
