use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use super::future::ResponseFuture;
use crate::{BoxError, GuardedBody, Lease, Pool};

/// Sends each request to an instance with a free place; see the [module docs](crate::concurrency).
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    pool: Pool,
}

impl<S> ConcurrencyLimit<S> {
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ConcurrencyLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<GuardedBody<ResBody, Lease>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let lease = match req.extensions().get::<Lease>() {
            Some(lease) => lease.clone(),
            None => match self.pool.try_acquire() {
                Ok(lease) => {
                    req.extensions_mut().insert(lease.clone());
                    lease
                }
                Err(err) => return ResponseFuture::failed(err),
            },
        };
        ResponseFuture::new(self.inner.call(req), lease)
    }
}
