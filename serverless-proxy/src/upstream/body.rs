//! An instance's response body, which checks its connection back in for reuse once it has
//! ended.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use serverless_core::InstanceId;
use tokio::time::{Instant, Sleep};

use super::idle::Shared;
use super::timeout::BodyIdleTimeout;
use crate::body::{BoxError, ForwardBody, Outgoing};
use crate::h1;

/// Checks a hyper HTTP/1.1 connection back in once its response is complete.
pub(super) struct Checkin<B> {
    pub(super) sender: http1::SendRequest<Outgoing<B>>,
    pub(super) instance: InstanceId,
    pub(super) shared: Arc<Shared<B>>,
}

impl<B: ForwardBody> Checkin<B> {
    fn checkin(self) {
        self.shared.checkin_http1(self.instance, self.sender);
    }
}

/// An instance's response body; its connection is reused once the body has ended (a body
/// dropped before its end closes the connection, which cannot be reused then).
pub(crate) struct UpstreamBody<B> {
    kind: Kind<B>,
    idle: Idle,
}

/// The body's idle limit (`limits.body_idle_timeout`): the longest gap between two frames.
struct Idle {
    limit: Duration,
    /// Armed at the first read that had to wait (a body that is read without waiting never
    /// allocates a timer).
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame came since the timer was armed: it restarts at the next wait.
    moved: bool,
    /// The limit was hit: the body has ended (in error).
    expired: bool,
}

impl Idle {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            sleep: None,
            moved: false,
            expired: false,
        }
    }

    /// After a read that has to wait: whether the limit has passed since the last frame.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if std::mem::take(&mut self.moved) {
                    sleep.as_mut().reset(Instant::now() + self.limit);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep(self.limit))),
        };
        self.expired = sleep.as_mut().poll(cx).is_ready();
        self.expired
    }
}

enum Kind<B> {
    Hyper {
        inner: Incoming,
        checkin: Option<Checkin<B>>,
    },
    Lean {
        reader: h1::Reader,
        checkin: Option<(InstanceId, Arc<Shared<B>>)>,
    },
}

impl<B: ForwardBody> UpstreamBody<B> {
    pub(super) fn hyper(inner: Incoming, checkin: Option<Checkin<B>>, idle: Duration) -> Self {
        let mut checkin = checkin;
        if inner.is_end_stream() {
            if let Some(checkin) = checkin.take() {
                checkin.checkin();
            }
        }
        Self {
            kind: Kind::Hyper { inner, checkin },
            idle: Idle::new(idle),
        }
    }

    pub(super) fn lean(
        reader: h1::Reader,
        checkin: (InstanceId, Arc<Shared<B>>),
        idle: Duration,
    ) -> Self {
        let mut body = Self {
            kind: Kind::Lean {
                reader,
                checkin: Some(checkin),
            },
            idle: Idle::new(idle),
        };
        if body.is_end_stream() {
            // Nothing to read: settle the connection now (servers do not poll such a body).
            let _ = body.poll_lean(&mut Context::from_waker(std::task::Waker::noop()));
        }
        body
    }

    fn poll_lean(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Kind::Lean { reader, checkin } = &mut self.kind else {
            return Poll::Ready(None);
        };
        match ready!(reader.poll_read(cx)) {
            Ok(h1::Read::Frame(frame)) => Poll::Ready(Some(Ok(frame))),
            Ok(h1::Read::End(conn)) => {
                if let (Some(conn), Some((instance, shared))) = (conn, checkin.take()) {
                    shared.checkin_lean(&instance, conn);
                }
                Poll::Ready(None)
            }
            Err(e) => {
                checkin.take();
                Poll::Ready(Some(Err(Box::new(e))))
            }
        }
    }
}

impl<B: ForwardBody> Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.idle.expired {
            return Poll::Ready(None);
        }
        match this.poll_body(cx) {
            Poll::Pending if this.idle.poll_expired(cx) => {
                // The connection is in an unknown state: never reused.
                match &mut this.kind {
                    Kind::Hyper { checkin, .. } => drop(checkin.take()),
                    Kind::Lean { checkin, .. } => drop(checkin.take()),
                }
                Poll::Ready(Some(Err(Box::new(BodyIdleTimeout(this.idle.limit)))))
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => {
                this.idle.moved = true;
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.idle.expired || self.is_body_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.body_size_hint()
    }
}

impl<B: ForwardBody> UpstreamBody<B> {
    /// The next frame of the instance's body, without the idle limit.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        let (inner, checkin) = match &mut this.kind {
            Kind::Hyper { inner, checkin } => (inner, checkin),
            Kind::Lean { .. } => {
                let frame = ready!(this.poll_lean(cx));
                if let (Some(Ok(_)), Kind::Lean { reader, .. }) = (&frame, &this.kind) {
                    if reader.is_end() {
                        // Servers stop polling at `is_end_stream`: settle the connection.
                        let _ = this.poll_lean(cx);
                    }
                }
                return Poll::Ready(frame);
            }
        };
        let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
        match &frame {
            // Servers stop polling once `is_end_stream` says so: check the connection in on
            // the last frame, not only on the end.
            Some(Ok(_)) if !inner.is_end_stream() => {}
            None | Some(Ok(_)) => {
                if let Some(checkin) = checkin.take() {
                    checkin.checkin();
                }
            }
            Some(Err(_)) => {
                checkin.take();
            }
        }
        Poll::Ready(frame.map(|f| f.map_err(|e| -> BoxError { Box::new(e) })))
    }

    fn is_body_end(&self) -> bool {
        match &self.kind {
            Kind::Hyper { inner, .. } => inner.is_end_stream(),
            Kind::Lean { reader, .. } => reader.is_end(),
        }
    }

    fn body_size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Hyper { inner, .. } => inner.size_hint(),
            Kind::Lean { reader, .. } => reader
                .exact_len()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}
