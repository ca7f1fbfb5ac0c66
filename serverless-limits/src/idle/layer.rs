use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tower::Layer;

use super::activity::{Activity, ActivityGuard};
use super::service::IdleTracking;

/// Applies [`IdleTracking`]; built with [`IdleTrackingLayer::pair`].
#[derive(Debug, Clone)]
pub struct IdleTrackingLayer {
    activity: Arc<watch::Sender<Activity>>,
}

/// Observes the activity of the services an [`IdleTrackingLayer`] wraps.
#[derive(Debug, Clone)]
pub struct IdleHandle {
    activity: Arc<watch::Sender<Activity>>,
    timeout: Duration,
}

impl IdleTrackingLayer {
    /// The layer and the handle that reports when it has been idle for `timeout`.
    pub fn pair(timeout: Duration) -> (Self, IdleHandle) {
        let activity = Arc::new(watch::Sender::new(Activity {
            in_flight: 0,
            since: Instant::now(),
        }));
        (
            Self {
                activity: activity.clone(),
            },
            IdleHandle { activity, timeout },
        )
    }
}

impl<S> Layer<S> for IdleTrackingLayer {
    type Service = IdleTracking<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdleTracking::new(inner, self.activity.clone())
    }
}

impl IdleHandle {
    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.activity.borrow().in_flight
    }

    /// Marks activity by hand (e.g. for work that is not a request); idle again when dropped.
    pub fn enter(&self) -> ActivityGuard {
        ActivityGuard::new(self.activity.clone())
    }

    /// Resolves when something is in flight (at once if something is now).
    ///
    /// [`idle`](Self::idle) keeps resolving at once while the service stays idle, so a loop that
    /// acts on idleness waits for this before it waits for the next idle period:
    ///
    /// ```
    /// # async fn stop_the_sidecar() {}
    /// # async fn watch(handle: serverless_limits::IdleHandle) {
    /// loop {
    ///     handle.idle().await;
    ///     stop_the_sidecar().await;
    ///     handle.active().await; // not `idle()` again: that would return at once, forever
    /// }
    /// # }
    /// ```
    pub async fn active(&self) {
        let mut rx = self.activity.subscribe();
        // The sender lives as long as `self`, so this only ends when activity is seen.
        let _ = rx.wait_for(|a| a.in_flight > 0).await;
    }

    /// Resolves when nothing has been in flight for the timeout — at once, every time it is
    /// called, while that stays true (see [`active`](Self::active) for the loop).
    pub async fn idle(&self) {
        let mut rx = self.activity.subscribe();
        loop {
            let now = rx.borrow_and_update().to_owned();
            if now.in_flight == 0 {
                let at = now.since + self.timeout;
                if Instant::now() >= at {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = rx.changed() => {}
                }
            } else if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
