use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::watch;
use tower::Service;

use super::activity::{Activity, ActivityGuard};
use crate::guard_future::GuardFuture;
use crate::{BoxError, GuardedBody};

/// Response future of [`IdleTracking`].
pub type ResponseFuture<F> = GuardFuture<F, ActivityGuard>;

/// Counts requests in flight until their bodies end; see the [module docs](crate::idle).
#[derive(Debug, Clone)]
pub struct IdleTracking<S> {
    inner: S,
    activity: Arc<watch::Sender<Activity>>,
}

impl<S> IdleTracking<S> {
    pub(crate) fn new(inner: S, activity: Arc<watch::Sender<Activity>>) -> Self {
        Self { inner, activity }
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IdleTracking<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<GuardedBody<ResBody, ActivityGuard>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let guard = ActivityGuard::new(self.activity.clone());
        GuardFuture::new(self.inner.call(req), guard)
    }
}
