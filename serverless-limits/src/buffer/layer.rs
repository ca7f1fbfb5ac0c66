use tower::Layer;

use super::ColdStartBuffer;
use crate::Pool;

/// Applies [`ColdStartBuffer`] over a service.
#[derive(Debug, Clone)]
pub struct ColdStartBufferLayer {
    pool: Pool,
}

impl ColdStartBufferLayer {
    /// Buffers requests for the app of `pool`.
    pub const fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

impl<S> Layer<S> for ColdStartBufferLayer {
    type Service = ColdStartBuffer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ColdStartBuffer::new(inner, self.pool.clone())
    }
}
