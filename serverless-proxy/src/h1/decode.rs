//! The response body decoder: data frames, chunks and trailers out of the bytes read so far,
//! as the response head's [`Framing`] says.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use super::head::{invalid, Chunk, Framing, MAX_HEAD, MAX_HEADERS};

/// What decoding the buffered bytes produced.
pub(crate) enum Decoded {
    /// Body data or trailers.
    Frame(Frame<Bytes>),
    /// The body is complete; `reusable`: the connection may carry another request (a
    /// keep-alive response that left no stray bytes behind).
    End { reusable: bool },
}

/// Decodes one response's body.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    framing: Framing,
    keep_alive: bool,
}

impl BodyDecoder {
    pub(crate) fn new(framing: Framing, keep_alive: bool) -> Self {
        Self {
            framing,
            keep_alive,
        }
    }

    /// True when the body has nothing (more) to read.
    pub(crate) fn is_end(&self) -> bool {
        self.framing == Framing::Done
    }

    /// The exact number of bytes left, when known.
    pub(crate) fn exact_len(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            Framing::Done => Some(0),
            _ => None,
        }
    }

    /// The connection closed (nothing more will be read): the end of a read-to-close body, an
    /// error for any other that is not complete.
    pub(crate) fn closed(&mut self) -> io::Result<()> {
        match self.framing {
            Framing::Close | Framing::Done => {
                self.framing = Framing::Done;
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "instance closed the connection in the middle of the body",
            )),
        }
    }

    /// Decodes what is buffered in `buf`: a frame, the end, or `None` to read more.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Decoded>> {
        loop {
            match self.framing {
                Framing::Done => {
                    return Ok(Some(Decoded::End {
                        reusable: self.keep_alive && buf.is_empty(),
                    }));
                }
                Framing::Close => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let data = buf.split().freeze();
                    return Ok(Some(Decoded::Frame(Frame::data(data))));
                }
                Framing::Length(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                    return Ok(Some(Decoded::Frame(Frame::data(data))));
                }
                // A chunk-size line starts with a digit: an empty one is no last chunk.
                Framing::Chunked(Chunk::Size)
                    if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) =>
                {
                    return Err(invalid("invalid chunk size line"));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, _))) if used > MAX_HEAD => {
                        return Err(invalid("chunk size line over 64 KiB"));
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
                    _ => return Err(invalid("invalid chunk size line")),
                },
                Framing::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.framing = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Some(Decoded::Frame(Frame::data(data))));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(invalid("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut fields).map_err(invalid)? {
                        httparse::Status::Complete((used, _)) if used > MAX_HEAD => {
                            return Err(invalid("trailer section over 64 KiB"));
                        }
                        httparse::Status::Complete((used, fields)) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields.iter() {
                                let name =
                                    HeaderName::from_bytes(f.name.as_bytes()).map_err(invalid)?;
                                let value = HeaderValue::from_bytes(f.value).map_err(invalid)?;
                                trailers.append(name, value);
                            }
                            buf.advance(used);
                            self.framing = Framing::Done;
                            if !trailers.is_empty() {
                                return Ok(Some(Decoded::Frame(Frame::trailers(trailers))));
                            }
                        }
                        httparse::Status::Partial if buf.len() <= MAX_HEAD => return Ok(None),
                        httparse::Status::Partial => {
                            return Err(invalid("trailer section over 64 KiB"))
                        }
                    }
                }
            }
        }
    }
}
