//! A plain-TCP connection: HTTP/2 with prior knowledge (h2c) or HTTP/1.1, told apart by the
//! first bytes.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::conn::{connection_service, ClientInfo, ConnIo, ConnState};
use super::park::{serve_h1, STOP_LINGER};
use super::protocols::Shared;
use crate::body::{BoxError, ResBody};

/// The HTTP/2 connection preface a prior-knowledge (h2c) client starts with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves a plain-TCP connection: h2c when it starts with the HTTP/2 preface, else HTTP/1.1
/// (parked when idle, see [`super::park`]).
pub(super) async fn serve_plain<H, F>(
    stream: TcpStream,
    info: ClientInfo,
    handler: H,
    shared: &Shared,
    mut stop: watch::Receiver<()>,
) -> Result<(), BoxError>
where
    H: Fn(Request<Incoming>, ClientInfo) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let state = Arc::new(ConnState::default());
    let mut io = ConnIo {
        io: TokioIo::new(stream),
        prefix: Bytes::new(),
        state: state.clone(),
    };
    // The first bytes tell HTTP/2's preface from an HTTP/1 request; until they come the
    // connection holds no buffers, and it may wait at most `header_read_timeout`.
    // A client that connected just before the server stopped is still answered (then the
    // connection closes): its first bytes may come within STOP_LINGER.
    let (first, stopped) = {
        let read =
            tokio::time::timeout(shared.header_read_timeout, read_preface(io.io.inner_mut()));
        let mut read = std::pin::pin!(read);
        tokio::select! {
            first = &mut read => (first, false),
            _ = stop.changed() => match tokio::time::timeout(STOP_LINGER, &mut read).await {
                Ok(first) => (first, true),
                Err(_) => return Ok(()),
            },
        }
    };
    let (prefix, is_h2) = match first {
        Ok(Ok(Some(first))) => first,
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Err(err)) => return Err(err.into()),
    };
    io.prefix = prefix;
    if !is_h2 {
        return serve_h1(io, info, handler, shared, &mut stop, stopped).await;
    }
    let svc = connection_service(handler, info, state);
    // Boxed, like HTTP/1's: the task keeps no room for it.
    let mut conn = Box::pin(shared.h2.serve_connection(io, svc));
    if stopped {
        conn.as_mut().graceful_shutdown();
    } else {
        tokio::select! {
            done = conn.as_mut() => return done.map_err(Into::into),
            _ = stop.changed() => conn.as_mut().graceful_shutdown(),
        }
    }
    conn.await.map_err(Into::into)
}

/// Reads until the bytes are known to be (or not to be) the HTTP/2 preface: the bytes read and
/// whether they are the preface; `None` on EOF.
async fn read_preface(stream: &mut TcpStream) -> std::io::Result<Option<(Bytes, bool)>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(None);
        }
        len += n;
        if buf[..len] != H2_PREFACE[..len] {
            return Ok(Some((Bytes::copy_from_slice(&buf[..len]), false)));
        }
        if len == H2_PREFACE.len() {
            return Ok(Some((Bytes::copy_from_slice(&buf), true)));
        }
    }
}
