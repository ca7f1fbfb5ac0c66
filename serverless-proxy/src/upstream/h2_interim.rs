//! Interim (1xx) responses bounded on the h2c path: hyper's HTTP/2 client skips any number of
//! them (it has no `on_informational` for HTTP/2), so an instance sending endless `100`
//! HEADERS frames would keep the request, and a core, busy until the response timeout. The
//! instance's side of an h2c connection is read through [`H2Interim`], which counts HEADERS
//! frames per stream from their 9-byte frame headers (no HPACK decoding): a response is at most
//! 16 interim heads, the final head and a trailer section. Past that the connection fails with
//! the lean client's words, so its requests are answered `502` naming it.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::interim::TOO_MANY;
use crate::h1;

/// HEADERS frames one stream may carry: the interim heads, the final head, the trailers.
const MAX_HEADERS_FRAMES: usize = h1::head::MAX_INTERIM + 2;
/// Streams tracked at once; past it the counts start over (an instance gets a fresh
/// budget at most once per this many streams).
const MAX_TRACKED: usize = 4096;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;

/// Where the reader is in the instance's frames, and the HEADERS frames per open stream.
#[derive(Debug, Default)]
pub(super) struct FrameCounter {
    head: [u8; 9],
    /// Bytes of the current frame header read so far.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    headers: HashMap<u32, usize>,
}

impl FrameCounter {
    /// Takes the next bytes the instance sent; an error past the bound.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                self.have = 0;
                self.frame()?;
            }
        }
        Ok(())
    }

    fn frame(&mut self) -> io::Result<()> {
        let h = self.head;
        self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        match kind {
            HEADERS => {
                if self.headers.len() >= MAX_TRACKED {
                    self.headers.clear();
                }
                let count = self.headers.entry(stream).or_default();
                *count += 1;
                if *count > MAX_HEADERS_FRAMES {
                    return Err(h1::invalid_response(TOO_MANY));
                }
                if flags & END_STREAM != 0 {
                    self.headers.remove(&stream);
                }
            }
            // Data follows the final head only; a stream that ended or was reset is done.
            DATA | RST_STREAM => {
                self.headers.remove(&stream);
            }
            _ => {}
        }
        Ok(())
    }
}

/// An h2c connection to an instance whose reads are counted by a [`FrameCounter`].
pub(super) struct H2Interim<T> {
    io: T,
    counter: FrameCounter,
}

impl<T> H2Interim<T> {
    pub(super) fn new(io: T) -> Self {
        Self {
            io,
            counter: FrameCounter::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for H2Interim<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        Poll::Ready(this.counter.feed(&buf.filled()[before..]))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for H2Interim<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HEADERS with `:status: 100` (HPACK: literal, name index 8).
    fn continue_100(stream: u32) -> Vec<u8> {
        frame(HEADERS, 0x4, stream, b"\x08\x03100")
    }

    #[test]
    fn sixteen_interim_heads_a_final_one_and_trailers_pass_the_seventeenth_interim_does_not() {
        let mut ok = Vec::new();
        ok.extend(frame(0x4, 0, 0, b"")); // SETTINGS
        for _ in 0..16 {
            ok.extend(continue_100(1));
        }
        ok.extend(frame(HEADERS, 0x4, 1, b"\x88")); // :status 200
        ok.extend(frame(DATA, 0, 1, b"hello"));
        ok.extend(frame(HEADERS, 0x5, 1, b"\x40\x01x\x01y")); // trailers, END_STREAM
        let mut counter = FrameCounter::default();
        // Byte by byte: frame headers split anywhere.
        for b in &ok {
            counter.feed(std::slice::from_ref(b)).unwrap();
        }
        assert!(counter.headers.is_empty());

        let mut counter = FrameCounter::default();
        let mut flood = Vec::new();
        for _ in 0..18 {
            flood.extend(continue_100(3));
        }
        counter.feed(&flood).unwrap();
        let err = counter.feed(&continue_100(3)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), TOO_MANY);
    }

    #[test]
    fn streams_are_counted_apart() {
        let mut counter = FrameCounter::default();
        for stream in (1..200).step_by(2) {
            for _ in 0..16 {
                counter.feed(&continue_100(stream)).unwrap();
            }
        }
        assert_eq!(counter.headers.len(), 100);
    }
}
