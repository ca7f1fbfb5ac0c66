//! One client connection: where it comes from ([`ClientInfo`]), what its parts know about its
//! state — exchanges in flight, reads and writes — so that the parking logic can tell when
//! hyper is idle, and the per-connection service that keeps that state up to date.

use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{BoxError, ResBody};

pub(crate) use crate::forward::ClientInfo;

/// The service hyper calls for each request of one connection: `handler`, with each exchange
/// noted in `state`.
pub(super) fn connection_service<H, F>(
    handler: H,
    info: ClientInfo,
    state: Arc<ConnState>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Tracked>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Tracked>, Infallible>> + Send,
> + Clone
       + Send
where
    H: Fn(Request<Incoming>, ClientInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    service_fn(move |req: Request<Incoming>| {
        if !req.body().is_end_stream() {
            // hyper may still be reading this body after the response: never park after it.
            state.had_body.store(true, Relaxed);
        }
        let exchange = Exchange::start(state.clone());
        let response = handler(req, info);
        async move {
            let res = response.await;
            Ok(res.map(|body| Tracked {
                body,
                _exchange: exchange,
            }))
        }
    })
}

/// What a connection's parts know about its state, to tell when hyper is idle.
#[derive(Debug, Default)]
pub(super) struct ConnState {
    /// Exchanges whose response (head and body) is not finished.
    pub(super) active: AtomicUsize,
    /// Exchanges started on this connection.
    pub(super) exchanges: AtomicUsize,
    /// An exchange finished on this hyper connection.
    served: AtomicBool,
    /// A request had a body: hyper may still be reading it.
    had_body: AtomicBool,
    /// The last read found no data (hyper waits for the client).
    read_waiting: AtomicBool,
    /// Bytes were written since the last completed flush.
    unflushed: AtomicBool,
    /// The connection is being parked: shutting the socket down is skipped.
    pub(super) parking: AtomicBool,
}

impl ConnState {
    /// hyper has answered every request, flushed, and waits for the next one, with nothing
    /// half-read: the connection can end here without a client noticing.
    pub(super) fn is_idle(&self) -> bool {
        self.active.load(Relaxed) == 0
            && self.served.load(Relaxed)
            && !self.had_body.load(Relaxed)
            && self.read_waiting.load(Relaxed)
            && !self.unflushed.load(Relaxed)
    }

    /// Forgets what the last hyper connection over this socket did (a new one takes over).
    pub(super) fn reset(&self) {
        self.served.store(false, Relaxed);
        self.had_body.store(false, Relaxed);
        self.read_waiting.store(false, Relaxed);
        self.unflushed.store(false, Relaxed);
        self.parking.store(false, Relaxed);
    }
}

/// One request/response exchange in flight; ends when the response body is dropped.
#[derive(Debug)]
struct Exchange(Arc<ConnState>);

impl Exchange {
    fn start(state: Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Relaxed);
        state.exchanges.fetch_add(1, Relaxed);
        Exchange(state)
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
        self.0.served.store(true, Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its exchange when hyper drops it.
    pub(super) struct Tracked {
        #[pin]
        body: ResBody,
        _exchange: Exchange,
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it: bytes read before hyper took over come first, reads and
/// writes are noted in [`ConnState`], and shutting down is skipped while parking.
pub(super) struct ConnIo {
    pub(super) io: TokioIo<TcpStream>,
    pub(super) prefix: Bytes,
    pub(super) state: Arc<ConnState>,
}

impl hyper::rt::Read for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            self.state.read_waiting.store(false, Relaxed);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        self.state.read_waiting.store(polled.is_pending(), Relaxed);
        polled
    }
}

impl hyper::rt::Write for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.state.unflushed.store(true, Relaxed);
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.state.unflushed.store(true, Relaxed);
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.state.unflushed.store(false, Relaxed);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.state.parking.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
