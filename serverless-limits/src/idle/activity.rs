//! What the idle layer counts: requests (or hand-marked work) in flight, and since when nothing
//! has been.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

/// Work in flight now, and when the count last dropped to zero.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Activity {
    pub(crate) in_flight: usize,
    pub(crate) since: Instant,
}

/// Marks one unit of activity; the service is idle again when every guard is dropped.
#[derive(Debug)]
pub struct ActivityGuard {
    activity: Arc<watch::Sender<Activity>>,
}

impl ActivityGuard {
    pub(crate) fn new(activity: Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| a.in_flight += 1);
        Self { activity }
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.activity.send_modify(|a| {
            a.in_flight -= 1;
            if a.in_flight == 0 {
                a.since = Instant::now();
            }
        });
    }
}
