use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serverless_core::InstanceId;

use super::{Pool, Shared};
use crate::error::PoolError;

/// One counted request on one instance; released on drop.
pub(crate) struct Held {
    shared: Arc<Shared>,
    id: InstanceId,
    /// Granted by an instance that just became ready (the request waited for a cold start).
    pub(crate) cold: bool,
    /// How long the request waited, when it waited for a cold start.
    pub(crate) waited: Option<Duration>,
}

impl Held {
    pub(crate) fn new(shared: Arc<Shared>, id: InstanceId, cold: bool) -> Self {
        Self {
            shared,
            id,
            cold,
            waited: None,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shared.release(&self.id);
    }
}

/// A request's place on an instance.
///
/// Clones share the place; it is given back when the last clone is dropped. The layers keep one
/// clone in the response body (so a streaming response holds its place until it ends) and put one
/// in the request's extensions, where the service that forwards the request finds the instance
/// to send it to — and keeps the clone alive for an upgraded connection.
#[derive(Clone)]
pub struct Lease {
    inner: Arc<Mutex<Held>>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.lock();
        f.debug_struct("Lease")
            .field("app", &held.shared.app_name())
            .field("instance", &held.id)
            .finish()
    }
}

impl Lease {
    pub(crate) fn new(held: Held) -> Self {
        Self {
            inner: Arc::new(Mutex::new(held)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The instance to send the request to.
    pub fn instance(&self) -> InstanceId {
        self.lock().id.clone()
    }

    /// The pool the place belongs to.
    pub fn pool(&self) -> Pool {
        Pool {
            shared: self.lock().shared.clone(),
        }
    }

    /// How long the request waited for a cold start, if it did.
    pub fn cold_start(&self) -> Option<Duration> {
        self.lock().waited
    }

    /// For a request that was **not sent** because its instance could not be reached: evicts
    /// that instance and moves the place to another one (waiting like [`Pool::acquire`]).
    /// Returns the new instance.
    pub async fn reroute(&self) -> Result<InstanceId, PoolError> {
        let shared = {
            let held = self.lock();
            held.shared.evict(&held.id);
            held.shared.clone()
        };
        let mut fresh = shared.acquire_held().await?;
        let id = fresh.id.clone();
        let old = {
            let mut held = self.lock();
            fresh.waited = held.waited.or(fresh.waited);
            std::mem::replace(&mut *held, fresh)
        };
        drop(old);
        Ok(id)
    }
}
