//! The life of one instance: start, supervise (idle, recycle, crash), stop.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use serverless_core::{BackendError, InstanceId};
use tokio::time::Instant;

use tokio::sync::Notify;

use super::state::{send_grants, Backoff, Inner, Instance, Shared};
use super::{backoff_delay, State, StopReason};
use crate::error::PoolError;

impl Shared {
    pub(super) async fn run_instance(self: Arc<Self>, id: InstanceId) {
        let t0 = Instant::now();
        self.observer.starting(&self.app.name, &id);
        // The backend bounds startup itself; this outer bound makes sure nothing hangs.
        let bound = self.app.limits.startup_timeout + Duration::from_secs(30);
        let result = match tokio::time::timeout(bound, self.backend.start(&self.app, &id)).await {
            Ok(r) => r,
            Err(_) => {
                // The start future is dropped: the contract makes `stop` remove what it left.
                if let Err(err) = self.backend.stop(&id, Duration::ZERO).await {
                    tracing::warn!(app = %self.app.name, instance = %id, error = %err,
                        "removing an instance whose start was abandoned failed");
                }
                Err(BackendError::new(
                    serverless_core::ErrorKind::StartTimeout,
                    format!(
                        "backend did not finish starting within {}",
                        humantime::format_duration(bound)
                    ),
                ))
            }
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
                    .ready(&self.app.name, &id, total, &started.phases);
                tracing::info!(app = %self.app.name, instance = %id, port = started.port,
                    ms = total.as_millis() as u64, phases = %Phases(&started.phases),
                    "instance ready");
                let reason = if closed {
                    StopReason::Shutdown
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

    /// Takes a running instance the pool did not start as `Ready` (see
    /// [`PoolBuilder::adopt`](super::PoolBuilder::adopt)) and supervises it; stops it when the
    /// budget has no room.
    pub(super) fn adopt(self: &Arc<Self>, inner: &mut Inner, id: InstanceId, age: Duration) {
        let now = Instant::now();
        let fits = self.budget.as_ref().is_none_or(|b| b.try_take());
        if inner.closed || !fits {
            tracing::warn!(app = %self.app.name, instance = %id, "no room for an adopted instance; stopping it");
            let shared = self.clone();
            tokio::spawn(async move {
                let _ = shared.backend.stop(&id, shared.app.limits.stop_grace).await;
            });
            return;
        }
        inner.instances.push(Instance {
            id: id.clone(),
            state: State::Ready,
            in_flight: 0,
            created: now.checked_sub(age).unwrap_or(now),
            idle_since: now,
            evicted: false,
            wake: Arc::new(Notify::new()),
        });
        let shared = self.clone();
        tokio::spawn(async move {
            let reason = shared.supervise(&id).await;
            shared.stop_instance(&id, reason).await;
        });
    }

    /// Watches a ready instance until it should stop; returns why.
    pub(super) async fn supervise(&self, id: &InstanceId) -> StopReason {
        let limits = &self.app.limits;
        // `None`: the backend no longer knows the instance. Any other error means exits cannot be
        // watched: the instance is kept, and a dead one is noticed when connecting to it fails.
        let exited = async {
            match self.backend.wait(id).await {
                Ok(exit) => Some(exit),
                Err(err) if err.is_not_found() => None,
                Err(err) => {
                    if !self.wait_unwatchable.swap(true, Ordering::Relaxed) {
                        tracing::warn!(app = %self.app.name, instance = %id, error = %err,
                            "cannot watch instance exits; a dead instance is noticed when connecting to it fails");
                    }
                    std::future::pending().await
                }
            }
        };
        tokio::pin!(exited);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let (wake, deadline) = 'decide: {
                let mut inner = self.lock();
                let keep = self.app.scale.min as usize;
                let active = inner
                    .instances
                    .iter()
                    .filter(|i| matches!(i.state, State::Starting | State::Ready))
                    .count();
                let closed = inner.closed;
                let detached = inner.detached;
                let Some(inst) = inner.instances.iter_mut().find(|i| &i.id == id) else {
                    return StopReason::Gone;
                };
                if detached {
                    // Another process runs it now: only its exit ends the watch here.
                    break 'decide (inst.wake.clone(), now + Duration::from_secs(3600));
                }
                if inst.state == State::Ready && now >= inst.created + limits.max_duration {
                    inst.state = State::Draining;
                    tracing::debug!(instance = %id, "max_duration reached, draining");
                }
                if inst.state == State::Draining {
                    let deadline = *drain_deadline.get_or_insert(now + limits.stop_grace);
                    if inst.in_flight == 0 || now >= deadline {
                        return match (closed, inst.evicted) {
                            (true, _) => StopReason::Shutdown,
                            (false, true) => StopReason::Evicted,
                            (false, false) => StopReason::Recycled,
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
                                return StopReason::Idle;
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
                    let was_stopping = self
                        .lock()
                        .instances
                        .iter()
                        .any(|i| &i.id == id && i.state == State::Draining);
                    match exit {
                        Some(exit) if !was_stopping => {
                            tracing::warn!(app = %self.app.name, instance = %id, %exit, "instance exited");
                            self.observer.crashed(&self.app.name, id, exit);
                        }
                        None if !was_stopping => {
                            tracing::warn!(app = %self.app.name, instance = %id,
                                "the backend no longer knows this instance; removing it");
                        }
                        _ => {}
                    }
                    return StopReason::Exited;
                }
            }
        }
    }

    pub(super) fn evict(self: &Arc<Self>, id: &InstanceId) {
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

    pub(super) async fn stop_instance(self: &Arc<Self>, id: &InstanceId, reason: StopReason) {
        {
            let mut inner = self.lock();
            if let Some(inst) = inner.instances.iter_mut().find(|i| &i.id == id) {
                inst.state = State::Draining;
            }
            // Replace it if load or scale.min needs it.
            self.scale(&mut inner);
        }
        let grace = if reason == StopReason::Exited {
            Duration::ZERO
        } else {
            self.app.limits.stop_grace
        };
        // Detached: the process that took the instances over stops them, not this one.
        let detached = self.lock().detached;
        if !detached {
            if let Err(err) = self.backend.stop(id, grace).await {
                tracing::warn!(app = %self.app.name, instance = %id, error = %err, "stopping instance failed");
            }
        }
        if reason != StopReason::Exited {
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
        tracing::debug!(app = %self.app.name, instance = %id, reason = reason.as_str(), "instance stopped");
    }
}

/// The last 20 lines of a log, for error messages.
fn last_lines(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A start's phases for the log line: `task_start=12ms port_ready=40ms boosted=40ms …`.
struct Phases<'a>(&'a [(&'static str, std::time::Duration)]);

impl std::fmt::Display for Phases<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, d)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={:.1}ms", d.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}
