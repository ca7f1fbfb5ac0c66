use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;

use crate::guard_future::GuardFuture;
use crate::{BoxError, GlobalOverloaded, GuardedBody};

/// Response future of [`GlobalLimit`].
pub type ResponseFuture<F> = GuardFuture<F, OwnedSemaphorePermit>;

/// Refuses requests beyond the engine-wide limit; see the [module docs](crate::global).
#[derive(Debug, Clone)]
pub struct GlobalLimit<S> {
    inner: S,
    semaphore: Arc<Semaphore>,
    max: u32,
}

impl<S> GlobalLimit<S> {
    pub(crate) const fn new(inner: S, semaphore: Arc<Semaphore>, max: u32) -> Self {
        Self {
            inner,
            semaphore,
            max,
        }
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GlobalLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<GuardedBody<ResBody, OwnedSemaphorePermit>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => GuardFuture::new(self.inner.call(req), permit),
            Err(_) => GuardFuture::failed(GlobalOverloaded { max: self.max }),
        }
    }
}
