//! The response future shared by the layers that hold a guard for the life of a response.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::{BoxError, GuardedBody};

pin_project! {
    /// Holds `guard` while the inner future runs, then moves it into the response body
    /// ([`GuardedBody`]), so it is released when the body ends — not at the headers. An error
    /// response drops the guard at once.
    pub struct GuardFuture<F, G> {
        #[pin]
        inner: Option<F>,
        guard: Option<G>,
        error: Option<BoxError>,
    }
}

impl<F, G> GuardFuture<F, G> {
    pub(crate) fn new(inner: F, guard: G) -> Self {
        Self {
            inner: Some(inner),
            guard: Some(guard),
            error: None,
        }
    }

    pub(crate) fn failed(error: impl Into<BoxError>) -> Self {
        Self {
            inner: None,
            guard: None,
            error: Some(error.into()),
        }
    }
}

impl<F, G, B, E> Future for GuardFuture<F, G>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<GuardedBody<B, G>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let err = this.error.take();
            return Poll::Ready(Err(err.unwrap_or_else(|| "polled after completion".into())));
        };
        let res = ready!(inner.poll(cx)).map_err(Into::into)?;
        match this.guard.take() {
            Some(guard) => Poll::Ready(Ok(res.map(|b| GuardedBody::new(b, guard)))),
            None => Poll::Ready(Err("polled after completion".into())),
        }
    }
}
