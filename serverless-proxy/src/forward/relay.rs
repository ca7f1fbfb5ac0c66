//! An instance's response body as it is relayed to the client, so that a failure in it is
//! answered as well as HTTP allows.
//!
//! A server (hyper's) that gets an error from a response body drops what it has buffered and
//! closes the connection (HTTP/1.1) or resets the stream (HTTP/2). The head and the first
//! bytes are usually still in its buffer then, so a body that breaks right after its head
//! would reach the client as an empty reply. Hence:
//! - the first frame is read before the head is passed on when it is already there
//!   ([`first_frame`]): a body broken from its first byte is answered `502` with its reason;
//! - an error later is held back for one poll ([`Relayed`]): the server flushes what it has
//!   (the head, the bytes read before the error), then gets the error and closes the
//!   connection (HTTP/1.1: the client sees the body cut short) or resets the stream (HTTP/2:
//!   `RST_STREAM`).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::BoxError;

/// The body's first frame when it has already been read (`Ok(None)`: not yet, or no frame),
/// or its error.
pub(super) fn first_frame<T>(body: &mut T) -> Result<Option<Frame<Bytes>>, BoxError>
where
    T: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    if body.is_end_stream() {
        return Ok(None);
    }
    match body.frame().now_or_never() {
        Some(Some(frame)) => frame.map(Some),
        Some(None) | None => Ok(None),
    }
}

/// A response body with its first frame read ahead, whose error is held back one poll.
pub(super) struct Relayed<T> {
    inner: T,
    first: Option<Frame<Bytes>>,
    failed: Option<BoxError>,
}

impl<T> Relayed<T> {
    pub(super) fn new(inner: T, first: Option<Frame<Bytes>>) -> Self {
        Self {
            inner,
            first,
            failed: None,
        }
    }
}

impl<T> Body for Relayed<T>
where
    T: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Err(error)) => {
                // Pending once: the server writes out what it holds before it sees the error.
                this.failed = Some(error);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            frame => Poll::Ready(frame),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let first = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |data| data.remaining() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + first);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + first);
        }
        hint
    }
}
