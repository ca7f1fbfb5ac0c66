//! The body types of the request path and the error type they carry.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// Errors carried through bodies and services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// The gateway's request body, as [`Engine::serve`](crate::Engine::serve) takes it: boxed once
/// when the request arrives; `Send`, not `Sync` (bodies such as axum's are not `Sync`).
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;
/// Response body as sent to clients.
pub type ResBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request body [`Forward`](crate::Forward) can send: bytes, an error that boxes, `Send`,
/// `Unpin` (hyper's HTTP/2 client asks for it) and `'static` — no `Sync`. hyper's `Incoming`,
/// axum's `Body`, [`ReqBody`] and `http_body_util::Limited` of them all are.
pub trait ForwardBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> ForwardBody for B
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
}

pin_project_lite::pin_project! {
    /// A request body on its way to an instance: the client's, or none (a request sent again
    /// without its body). Not boxed: the client's body type stays what it was.
    pub(crate) struct Outgoing<B> {
        #[pin]
        inner: Option<B>,
    }
}

impl<B> Outgoing<B> {
    pub(crate) fn new(body: B) -> Self {
        Self { inner: Some(body) }
    }

    pub(crate) fn empty() -> Self {
        Self { inner: None }
    }
}

impl<B: ForwardBody> Body for Outgoing<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.as_pin_mut() {
            Some(body) => body
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// A response body of `bytes`, complete at once.
#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
pub(crate) fn full_response_body(bytes: impl Into<Bytes>) -> ResBody {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}
