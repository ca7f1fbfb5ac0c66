//! The host-wide instance count several pools share.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

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

    pub(super) fn try_take(&self) -> bool {
        self.inner
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.inner.1).then_some(n + 1)
            })
            .is_ok()
    }

    pub(super) fn give_back(&self) {
        self.inner.0.fetch_sub(1, Ordering::AcqRel);
    }
}
