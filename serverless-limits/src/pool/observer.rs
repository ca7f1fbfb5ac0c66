//! What the pool reports: cold starts, boot failures, crashes and stops.

use std::fmt;
use std::time::Duration;

use serverless_core::{BackendError, Exit, InstanceId};

/// Why the pool stopped an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// Nothing was in flight on it for `idle_timeout` (and `scale.min` allowed it).
    Idle,
    /// It reached `max_duration`: it took no new requests, its in-flight ones finished.
    Recycled,
    /// It could not be reached ([`Pool::evict`](super::Pool::evict)).
    Evicted,
    /// Its pool was shut down (app removed, engine stopping).
    Shutdown,
    /// Its process exited (asked or not); it is only cleaned up.
    Exited,
    /// It was no longer in the pool when its supervisor looked.
    Gone,
}

impl StopReason {
    /// `idle`, `recycled`, `evicted`, `shutdown`, `exited` or `gone` (metric labels, logs).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Recycled => "recycled",
            Self::Evicted => "evicted",
            Self::Shutdown => "shutdown",
            Self::Exited => "exited",
            Self::Gone => "gone",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hooks for metrics and logs; every method has a no-op default.
pub trait PoolObserver: Send + Sync + 'static {
    /// The pool asked the backend to start instance `id`.
    fn starting(&self, app: &str, id: &InstanceId) {
        let _ = (app, id);
    }
    /// Instance `id` became ready after `total`, with the backend's phase breakdown. By
    /// default it reports [`cold_start`](Self::cold_start), which has no id.
    fn ready(
        &self,
        app: &str,
        id: &InstanceId,
        total: Duration,
        phases: &[(&'static str, Duration)],
    ) {
        let _ = id;
        self.cold_start(app, total, phases);
    }
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
    /// An instance was stopped by the pool (never called with [`StopReason::Exited`]: an exit is
    /// reported by [`crashed`](Self::crashed) when it was not asked for).
    fn stopped(&self, app: &str, id: &InstanceId, reason: StopReason) {
        let _ = (app, id, reason);
    }
    /// An instance is gone for good, whatever the reason (stopped, exited, crashed): nothing
    /// will be sent to it again, so whatever was kept for it (e.g. idle connections) can go.
    fn removed(&self, app: &str, id: &InstanceId) {
        let _ = (app, id);
    }
}

#[derive(Debug)]
pub(super) struct NoObserver;
impl PoolObserver for NoObserver {}
