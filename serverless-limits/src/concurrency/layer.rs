use tower::Layer;

use super::ConcurrencyLimit;
use crate::Pool;

/// Applies [`ConcurrencyLimit`] over a service.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    pool: Pool,
}

impl ConcurrencyLimitLayer {
    /// Limits requests per instance of the app of `pool`.
    pub const fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit::new(inner, self.pool.clone())
    }
}
