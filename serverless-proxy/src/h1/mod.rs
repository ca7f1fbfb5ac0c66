//! A lean HTTP/1.1 client for the common request: no body, no upgrade. The request head is
//! written and the response head read by the request's own task, on a connection it owns
//! while the response lasts — no connection task, no channels between tasks; header values are
//! shared with the read buffer, not copied. Everything else (requests with bodies, upgrades,
//! h2c) goes through hyper's client.
//!
//! Framing follows RFC 9112 §6.3: no body for `HEAD`, 1xx, 204 and 304; chunked when the last
//! transfer coding is `chunked`; read-to-close for any other transfer coding or when no length
//! is given; `Content-Length` otherwise (differing values are an error). Interim 1xx heads are
//! skipped. A connection is only reused after a complete HTTP/1.1 response without
//! `Connection: close` that left no stray bytes behind.
//!
//! - [`head`]: the request head written, the response head parsed, the body's framing.
//! - [`decode`]: the body decoder (lengths, chunks, trailers).
//!
//! Both are pure (bytes in, values out) and fuzzed (`fuzz/fuzz_targets/h1_response.rs`).

pub(crate) mod decode;
pub(crate) mod head;

#[cfg(test)]
mod tests;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::Frame;
use serverless_core::Connection;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use decode::{BodyDecoder, Decoded};
use head::{encode_request, parse_response, HeadScratch};

pub(crate) use head::MAX_HEAD;

/// An error for a response that breaks the protocol (kind `InvalidData`).
pub(crate) fn invalid_response(what: &'static str) -> io::Error {
    head::invalid(what)
}

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// Whether the lean client can send this request: HTTP/1 semantics, no body, no upgrade.
pub(crate) fn can_send<B: http_body::Body>(req: &Request<B>) -> bool {
    // A scan, not a hashed lookup: a forwarded request has a handful of headers.
    req.body().is_end_stream()
        && req.method() != Method::CONNECT
        && !req.headers().keys().any(|n| n == http::header::UPGRADE)
}

/// One kept connection to an instance and the bytes read from it but not yet used.
pub(crate) struct Conn {
    io: Connection,
    buf: BytesMut,
    /// The response head parser's scratch space (kept: it remembers header names).
    scratch: HeadScratch,
    /// Scratch: the request head being written.
    head: Vec<u8>,
}

impl Conn {
    pub(crate) fn new(io: Connection) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            scratch: HeadScratch::default(),
            head: Vec::new(),
        }
    }

    /// Whether a kept, idle connection still looks usable: the instance neither closed it nor
    /// sent anything unasked (checked without waiting).
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Encodes the request head for [`write_request`](Self::write_request).
    pub(crate) fn encode_request<B>(&mut self, req: &Request<B>) {
        self.head.clear();
        encode_request(req, &mut self.head);
    }

    /// Writes the request head [`encode_request`](Self::encode_request) encoded. An error means
    /// the request may be incomplete on the wire, never that it was processed.
    pub(crate) async fn write_request(&mut self) -> io::Result<()> {
        self.io.write_all(&self.head).await?;
        self.io.flush().await
    }

    /// Reads the response head (skipping interim 1xx ones). `Ok(None)`: the connection closed
    /// before any byte of a response arrived.
    pub(crate) async fn read_response(
        mut self,
        method: &Method,
    ) -> io::Result<Option<(Response<()>, Reader)>> {
        // Whether any byte of a response (an interim 1xx one included) has arrived.
        let mut any = false;
        // How much of the buffer is known to hold no complete head (parsed as incomplete, or
        // scanned for the blank line that ends one): it is parsed again only when the bytes
        // after it may end the head, so a head trickled in byte by byte costs linear time,
        // not a parse of everything so far per read.
        let mut incomplete: Option<usize> = None;
        loop {
            any |= !self.buf.is_empty();
            let skip = incomplete.is_some_and(|seen| !may_end_head(&self.buf, seen));
            let parsed = if self.buf.is_empty() || skip {
                None
            } else {
                parse_response(&mut self.buf, &mut self.scratch, method)?
            };
            incomplete = Some(self.buf.len());
            if let Some(head) = parsed {
                let reader = Reader {
                    conn: Some(self),
                    body: BodyDecoder::new(head.framing, head.keep_alive),
                };
                return Ok(Some((head.response, reader)));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(head::invalid("response head too large"));
            }
            if read_more(&mut self).await? == 0 {
                if any {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of the response head",
                    ));
                }
                return Ok(None);
            }
        }
    }
}

/// Whether the bytes of `buf` from `seen` on (with the two before, which may start it) hold a
/// blank line, which ends a head (httparse also takes a bare `\n` for a line end).
fn may_end_head(buf: &[u8], seen: usize) -> bool {
    let new = &buf[seen.saturating_sub(2).min(buf.len())..];
    new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n")
}

async fn read_more(conn: &mut Conn) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_more(conn, cx)).await
}

fn poll_read_more(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    conn.buf.reserve(READ_CHUNK);
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
}

/// What reading a response body produced.
pub(crate) enum Read {
    /// Body data or trailers.
    Frame(Frame<Bytes>),
    /// The body is complete; the connection comes back when it can be reused.
    End(Option<Conn>),
}

/// Reads one response's body off its connection.
pub(crate) struct Reader {
    conn: Option<Conn>,
    body: BodyDecoder,
}

impl Reader {
    /// True when the body has nothing (more) to read.
    pub(crate) fn is_end(&self) -> bool {
        self.body.is_end()
    }

    /// The exact number of bytes left, when known.
    pub(crate) fn exact_len(&self) -> Option<u64> {
        self.body.exact_len()
    }

    /// The next frame, or the end (with the connection when it can be reused).
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Read>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Ok(Read::End(None)));
            };
            match self.body.decode(&mut conn.buf)? {
                Some(Decoded::Frame(frame)) => return Poll::Ready(Ok(Read::Frame(frame))),
                Some(Decoded::End { reusable }) => {
                    let conn = self.conn.take().filter(|_| reusable);
                    return Poll::Ready(Ok(Read::End(conn)));
                }
                None => {}
            }
            let n = std::task::ready!(poll_read_more(conn, cx))?;
            if n == 0 {
                self.conn = None;
                self.body.closed()?;
                return Poll::Ready(Ok(Read::End(None)));
            }
        }
    }
}
