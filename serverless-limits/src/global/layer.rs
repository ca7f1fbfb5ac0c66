use std::sync::Arc;

use tokio::sync::Semaphore;
use tower::Layer;

use super::GlobalLimit;

/// Applies [`GlobalLimit`]; clones of the layer share one count.
#[derive(Debug, Clone)]
pub struct GlobalLimitLayer {
    semaphore: Arc<Semaphore>,
    max: u32,
}

impl GlobalLimitLayer {
    /// At most `max` requests in flight across every service this layer (or a clone) wraps.
    pub fn new(max: u32) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.max - self.semaphore.available_permits() as u32
    }
}

impl<S> Layer<S> for GlobalLimitLayer {
    type Service = GlobalLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GlobalLimit::new(inner, self.semaphore.clone(), self.max)
    }
}
