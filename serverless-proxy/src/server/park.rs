//! Parking idle HTTP/1 connections.
//!
//! hyper keeps an HTTP/1 connection's buffers (an 8 KiB read buffer that grows to 16 KiB, an
//! 8 KiB write buffer, its parser state) for as long as the connection lives, idle or
//! not. A plain-TCP HTTP/1 connection that has been idle for [`PARK_AFTER`] is therefore
//! *parked*: the hyper connection is ended at that idle point without closing the socket
//! ([`hyper::server::conn::http1::Connection::into_parts`] hands back the socket and any bytes
//! read but not parsed), and the task waits for the socket to become readable with no buffers
//! at all. The next request starts a fresh hyper connection over the same socket. A parked
//! connection costs its task, the socket and the kernel's buffers. HTTP/2 and TLS connections
//! are not parked.
//!
//! The timer that parks a connection also enforces `header_read_timeout` for these
//! connections (hyper's own header timer is off for them: it allocates and registers a timer
//! per request).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use tokio::sync::watch;
use tokio::time::Instant;

use super::conn::{connection_service, ClientInfo, ConnIo, ConnState, Tracked};
use super::protocols::Shared;
use crate::body::{BoxError, ResBody};

/// How long an HTTP/1 connection stays idle (its last response written, nothing read since)
/// before it gives its buffers back; see the module docs.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(250);

/// How long an idle HTTP/1 connection stays open once the server stops (a shutdown or a
/// hand-over to a successor): a request that arrives meanwhile is answered with
/// `Connection: close`. Closing an idle keep-alive connection at once would race a client
/// that is sending its next request on it (it sees the connection closed with no answer).
pub(super) const STOP_LINGER: Duration = Duration::from_millis(1000);

/// How [`drive_until_parked`] left a hyper connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H1End {
    /// Ended at an idle point with the socket left open: a new hyper connection may take over.
    Parked,
    /// Finished: closed, upgraded, shut down, or cut off by `header_read_timeout`.
    Closed,
}

/// Serves HTTP/1.1 on a plain-TCP connection, parking it whenever it is idle, until it closes
/// or `stop` asks the server to finish (`stopped`: it already did).
pub(super) async fn serve_h1<H, F>(
    mut io: ConnIo,
    info: ClientInfo,
    handler: H,
    shared: &Shared,
    stop: &mut watch::Receiver<()>,
    stopped: bool,
) -> Result<(), BoxError>
where
    H: Fn(Request<Incoming>, ClientInfo) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let state: Arc<ConnState> = io.state.clone();
    // Set once the stop signal was seen outside a hyper connection: the next one starts stopping.
    let mut stopped = stopped;
    loop {
        let svc = connection_service(handler.clone(), info, state.clone());
        // Boxed so that a parked connection's task does not keep room for it.
        let mut conn = Box::new(shared.h1.serve_connection(io, svc).with_upgrades());
        let end = drive_until_parked(
            &mut *conn,
            &state,
            stop,
            stopped,
            shared.header_read_timeout,
        )
        .await?;
        if end == H1End::Closed {
            return Ok(());
        }
        // hyper stopped at an idle point and did not shut the socket down.
        let Some(parts) = (*conn).into_parts() else {
            return Ok(());
        };
        shared.parked.inc();
        io = parts.io;
        // Unparsed bytes are copied out: an empty or short `read_buf` still holds hyper's
        // whole read buffer.
        io.prefix = concat(&parts.read_buf, &std::mem::take(&mut io.prefix));
        drop(parts.read_buf);
        state.reset();
        if io.prefix.is_empty() {
            // Idle connections are closed after `header_read_timeout`, as hyper would.
            let wait = shared.header_read_timeout.saturating_sub(PARK_AFTER);
            if !stopped {
                tokio::select! {
                    ready = tokio::time::timeout(wait, io.io.inner().readable()) => match ready {
                        Ok(Ok(())) => continue,
                        Ok(Err(err)) => return Err(err.into()),
                        Err(_) => return Ok(()),
                    },
                    _ = stop.changed() => stopped = true,
                }
            }
            // Stopping: one more request within STOP_LINGER is answered, then it closes.
            match tokio::time::timeout(STOP_LINGER, io.io.inner().readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(err.into()),
                Err(_) => return Ok(()),
            }
        }
    }
}

/// `first` then `then`, in a buffer of their own.
fn concat(first: &[u8], then: &[u8]) -> Bytes {
    if first.is_empty() && then.is_empty() {
        return Bytes::new();
    }
    let mut all = BytesMut::with_capacity(first.len() + then.len());
    all.extend_from_slice(first);
    all.extend_from_slice(then);
    all.freeze()
}

/// Drives an HTTP/1 connection until it is parked or finished.
///
/// One timer serves both deadlines that count from the end of the last exchange (or from the
/// start): parking after [`PARK_AFTER`], and closing the connection when no complete request
/// head has come within `header_read_timeout` — what hyper's own header timer does, which
/// costs an allocation and a timer registration per request (so it is off for these
/// connections). While an exchange is active no deadline applies, as with hyper's.
///
/// Once `stop` changes (or from the start when `stopped`), the connection ends after its
/// current or next exchange (answered with `Connection: close`), or when it stayed idle for
/// [`STOP_LINGER`].
async fn drive_until_parked<C>(
    conn: &mut C,
    state: &ConnState,
    stop: &mut watch::Receiver<()>,
    stopped: bool,
    header_read_timeout: Duration,
) -> Result<H1End, BoxError>
where
    C: GracefulH1 + Unpin,
{
    // The stop signal's future is polled once to register, then only when the cheap version
    // check says it changed (polling it on every wake is costly).
    let mut watcher = stop.clone();
    let mut watched = pin!(watcher.changed());
    let mut registered = false;
    let mut since = Instant::now();
    let mut timer = pin!(tokio::time::sleep_until(
        since + PARK_AFTER.min(header_read_timeout)
    ));
    // Exchanges seen so far, and whether one was seen active (the deadlines restart after it).
    let mut seen = state.exchanges.load(Relaxed);
    let mut busy = false;
    // PARK_AFTER has passed since `since`: park as soon as hyper is idle.
    let mut park_due = false;
    let mut parking = false;
    let mut stopping = stopped;
    // The connection was told to end (hyper's graceful shutdown).
    let mut ending = false;
    if stopped {
        timer.as_mut().reset(Instant::now() + STOP_LINGER);
    }
    std::future::poll_fn(|cx| {
        if !stopping
            && (!registered || stop.has_changed().unwrap_or(true))
            && watched.as_mut().poll(cx).is_ready()
        {
            stopping = true;
            seen = state.exchanges.load(Relaxed);
            timer.as_mut().reset(Instant::now() + STOP_LINGER);
        }
        registered = true;
        loop {
            if let Poll::Ready(done) = Pin::new(&mut *conn).poll(cx) {
                let end = if parking {
                    H1End::Parked
                } else {
                    H1End::Closed
                };
                return Poll::Ready(done.map(|()| end).map_err(Into::into));
            }
            if parking || ending {
                return Poll::Pending;
            }
            if stopping {
                // An exchange in flight (or one since the stop) ends with `Connection: close`;
                // an idle connection lingers for STOP_LINGER first.
                if state.active.load(Relaxed) > 0
                    || state.exchanges.load(Relaxed) != seen
                    || timer.as_mut().poll(cx).is_ready()
                {
                    ending = true;
                    conn.graceful();
                    continue;
                }
                return Poll::Pending;
            }
            if state.active.load(Relaxed) > 0 {
                busy = true;
                return Poll::Pending;
            }
            let exchanges = state.exchanges.load(Relaxed);
            if busy || exchanges != seen {
                // An exchange ended since the last look: the deadlines start again.
                busy = false;
                seen = exchanges;
                park_due = false;
                since = Instant::now();
                timer
                    .as_mut()
                    .reset(since + PARK_AFTER.min(header_read_timeout));
            }
            if park_due && state.is_idle() {
                // hyper is idle: ending it now closes it at once, without a response.
                parking = true;
                state.parking.store(true, Relaxed);
                conn.graceful();
                continue;
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if !park_due && PARK_AFTER < header_read_timeout {
                park_due = true;
                timer.as_mut().reset(since + header_read_timeout);
                continue;
            }
            // No complete request head within `header_read_timeout`: closed, as hyper would.
            return Poll::Ready(Ok(H1End::Closed));
        }
    })
    .await
}

/// The HTTP/1 connection type driven by [`drive_until_parked`].
trait GracefulH1: Future<Output = Result<(), hyper::Error>> {
    fn graceful(&mut self);
}

impl<I, S> GracefulH1 for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = Tracked>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    Self: Unpin,
{
    fn graceful(&mut self) {
        Pin::new(self).graceful_shutdown();
    }
}
