use std::task::{Context, Poll};

use http::Request;
use tower::Service;

use super::future::ResponseFuture;
use crate::{BoxError, Lease, Pool};

/// Gives each request a place on an instance, waiting for one (bounded) when none is free.
/// See the [module docs](crate::buffer).
#[derive(Debug, Clone)]
pub struct ColdStartBuffer<S> {
    inner: S,
    pool: Pool,
}

impl<S> ColdStartBuffer<S> {
    /// Wraps `inner`, taking places from `pool`.
    pub const fn new(inner: S, pool: Pool) -> Self {
        Self { inner, pool }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for ColdStartBuffer<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if req.extensions().get::<Lease>().is_some() {
            return ResponseFuture::called(self.inner.call(req));
        }
        // Fast path: a Ready instance has room; no waiting, no allocation beyond the lease.
        if let Some(lease) = self.pool.try_lease() {
            req.extensions_mut().insert(lease);
            return ResponseFuture::called(self.inner.call(req));
        }
        // Slow path: wait in the pool's queue. Take the service that was made ready and leave a
        // clone in its place (the clone is polled ready before its own call).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let pool = self.pool.clone();
        ResponseFuture::waiting(Box::pin(async move {
            let lease = pool.acquire().await?;
            req.extensions_mut().insert(lease);
            inner.call(req).await.map_err(Into::into)
        }))
    }
}
