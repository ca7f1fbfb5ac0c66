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

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use serverless_core::Connection;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

/// Response heads larger than this are refused.
const MAX_HEAD: usize = 64 * 1024;
/// Headers per response head (and per trailer block).
const MAX_HEADERS: usize = 128;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

fn invalid(what: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Whether the lean client can send this request: HTTP/1 semantics, no body, no upgrade.
pub(crate) fn fits<B: http_body::Body>(req: &Request<B>) -> bool {
    // A scan, not a hashed lookup: a forwarded request has a handful of headers.
    req.body().is_end_stream()
        && req.method() != Method::CONNECT
        && !req.headers().keys().any(|n| n == http::header::UPGRADE)
}

/// One kept connection to an instance and the bytes read from it but not yet used.
pub(crate) struct Conn {
    io: Connection,
    buf: BytesMut,
    /// Scratch: where each header of the head being parsed sits in `buf`.
    spans: Vec<[usize; 4]>,
    /// Scratch: the request head being written.
    head: Vec<u8>,
    /// The header names of the last response as spelled, by position: an instance sends the
    /// same ones in the same order, so most are matched here (byte for byte) instead of parsed
    /// (and, when not a standard name, allocated).
    names: Vec<(Vec<u8>, HeaderName)>,
}

/// How the rest of a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// In chunks: the state of the decoder.
    Chunked(Chunk),
    /// Until the instance closes the connection.
    Close,
    /// Nothing left.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

impl Conn {
    pub(crate) fn new(io: Connection) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            spans: Vec::new(),
            head: Vec::new(),
            names: Vec::new(),
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

    /// Writes the request head. An error means the request may be incomplete on the wire,
    /// never that it was processed.
    pub(crate) async fn write_request<B>(&mut self, req: &Request<B>) -> io::Result<()> {
        self.head.clear();
        encode_request(req, &mut self.head);
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
        loop {
            any |= !self.buf.is_empty();
            let parsed = if self.buf.is_empty() {
                None
            } else {
                parse_response(&mut self.buf, &mut self.spans, &mut self.names, method)?
            };
            if let Some((res, framing, keep_alive)) = parsed {
                let reader = Reader {
                    conn: Some(self),
                    framing,
                    keep_alive,
                };
                return Ok(Some((res, reader)));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("response head too large"));
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

async fn read_more(conn: &mut Conn) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_more(conn, cx)).await
}

fn poll_read_more(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    conn.buf.reserve(READ_CHUNK);
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
}

fn encode_request<B>(req: &Request<B>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A body-less request whose method usually has one says so.
    if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
        && !req.headers().contains_key(http::header::CONTENT_LENGTH)
    {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses one final response head from `buf` (consuming it and any interim 1xx heads before
/// it). `None` when the head is not complete yet.
fn parse_response(
    buf: &mut BytesMut,
    spans: &mut Vec<[usize; 4]>,
    names: &mut Vec<(Vec<u8>, HeaderName)>,
    method: &Method,
) -> io::Result<Option<(Response<()>, Framing, bool)>> {
    loop {
        // Where each header's name and value sit in the head, so that the head can be split
        // off the buffer and the values shared with it rather than copied. (Slots left
        // uninitialised: zeroing 128 of them cost more than the parse itself.)
        spans.clear();
        let (len, code, minor) = {
            let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut parsed, buf, &mut slots)
                .map_err(invalid)?
            {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => return Ok(None),
            };
            let base = buf.as_ptr() as usize;
            spans.extend(parsed.headers.iter().map(|h| {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                [name, name + h.name.len(), value, value + h.value.len()]
            }));
            (len, parsed.code, parsed.version)
        };
        let count = spans.len();
        let status = StatusCode::from_u16(code.unwrap_or(0)).map_err(invalid)?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(invalid(
                    "101 Switching Protocols to a request without Upgrade",
                ));
            }
            buf.advance(len);
            continue;
        }
        let version = if minor == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut close = version == Version::HTTP_10;
        for (i, &[n0, n1, v0, v1]) in spans.iter().enumerate() {
            let raw = &head[v0..v1];
            let name = known_name(names, i, &head[n0..n1])?;
            let value = HeaderValue::from_maybe_shared(head.slice(v0..v1)).map_err(invalid)?;
            if name == http::header::CONTENT_LENGTH {
                // 1*DIGIT: no sign, no spaces inside, no list (what `parse` alone would allow
                // is how requests get smuggled).
                let digits = raw.trim_ascii();
                let n = Some(digits)
                    .filter(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
                    .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u64>().ok())
                    .ok_or_else(|| invalid("invalid content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid("differing content-length values"));
                }
                length = Some(n);
            } else if name == http::header::TRANSFER_ENCODING {
                // The last coding decides.
                if let Some(last) = raw.rsplit(|&b| b == b',').next() {
                    chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                }
            } else if name == http::header::CONNECTION {
                for token in raw.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive")
                        && version == Version::HTTP_10
                    {
                        close = false;
                    }
                }
            }
            headers.append(name, value);
        }
        let framing = if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Done
        } else {
            match (chunked, length) {
                (Some(true), _) => Framing::Chunked(Chunk::Size),
                (Some(false), _) | (None, None) => Framing::Close,
                (None, Some(0)) => Framing::Done,
                (None, Some(n)) => Framing::Length(n),
            }
        };
        // Both framings given is a smuggling hint: use the message, not the connection.
        let keep_alive =
            !close && framing != Framing::Close && !(chunked.is_some() && length.is_some());
        let mut res = Response::new(());
        *res.status_mut() = status;
        *res.version_mut() = version;
        *res.headers_mut() = headers;
        return Ok(Some((res, framing, keep_alive)));
    }
}

/// The header name spelled `raw`, taken from `names[i]` when the last response had that
/// spelling there, else parsed and kept there for the next response.
fn known_name(
    names: &mut Vec<(Vec<u8>, HeaderName)>,
    i: usize,
    raw: &[u8],
) -> io::Result<HeaderName> {
    if let Some((spelled, name)) = names.get(i) {
        if spelled.as_slice() == raw {
            return Ok(name.clone());
        }
    }
    let name = HeaderName::from_bytes(raw).map_err(invalid)?;
    if let Some((spelled, known)) = names.get_mut(i) {
        spelled.clear();
        spelled.extend_from_slice(raw);
        *known = name.clone();
    } else if i == names.len() {
        names.push((raw.to_vec(), name.clone()));
    }
    Ok(name)
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
    framing: Framing,
    keep_alive: bool,
}

impl Reader {
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

    /// The next frame, or the end (with the connection when it can be reused).
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Read>> {
        loop {
            if let Some(read) = self.decode()? {
                return Poll::Ready(Ok(read));
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Ok(Read::End(None)));
            };
            let n = std::task::ready!(poll_read_more(conn, cx))?;
            if n == 0 {
                if self.framing == Framing::Close {
                    self.framing = Framing::Done;
                    self.conn = None;
                    return Poll::Ready(Ok(Read::End(None)));
                }
                self.conn = None;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "instance closed the connection in the middle of the body",
                )));
            }
        }
    }

    /// Decodes what is buffered: a frame, the end, or `None` to read more.
    fn decode(&mut self) -> io::Result<Option<Read>> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Some(Read::End(None)));
        };
        let buf = &mut conn.buf;
        loop {
            match self.framing {
                Framing::Done => {
                    let reuse = self.keep_alive && buf.is_empty();
                    let conn = self.conn.take();
                    return Ok(Some(Read::End(conn.filter(|_| reuse))));
                }
                Framing::Close => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let data = buf.split().freeze();
                    return Ok(Some(Read::Frame(Frame::data(data))));
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
                    return Ok(Some(Read::Frame(Frame::data(data))));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
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
                    return Ok(Some(Read::Frame(Frame::data(data))));
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
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut slots).map_err(invalid)? {
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
                                return Ok(Some(Read::Frame(Frame::trailers(trailers))));
                            }
                        }
                        httparse::Status::Partial if buf.len() <= MAX_HEAD => return Ok(None),
                        httparse::Status::Partial => {
                            return Err(invalid("trailer section too large"))
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A connection whose instance side the test drives.
    fn pair() -> (Conn, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        (Conn::new(Box::new(ours)), theirs)
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path)
            .header("host", "app.localhost")
            .body(())
            .expect("request")
    }

    /// Sends `req`, has the instance answer `answer` (in `step`-byte pieces, then close its
    /// side: a complete message needs nothing after it), and reads the head.
    async fn exchange(
        req: Request<()>,
        answer: &'static [u8],
        step: usize,
    ) -> io::Result<Option<(Response<()>, Reader)>> {
        let (mut conn, mut theirs) = pair();
        conn.write_request(&req).await?;
        tokio::spawn(async move {
            let mut head = vec![0u8; 1024];
            let _ = theirs.read(&mut head).await;
            for piece in answer.chunks(step.max(1)) {
                if theirs.write_all(piece).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
        conn.read_response(req.method()).await
    }

    /// Reads a whole body: data, trailers, and the connection if it can be reused.
    async fn body(reader: &mut Reader) -> io::Result<(Vec<u8>, Option<HeaderMap>, bool)> {
        let mut data = Vec::new();
        let mut trailers = None;
        loop {
            match poll_fn(|cx| reader.poll_read(cx)).await? {
                Read::Frame(frame) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Read::End(conn) => return Ok((data, trailers, conn.is_some())),
            }
        }
    }

    #[tokio::test]
    async fn writes_the_head_and_reads_a_sized_body_then_keeps_the_connection() {
        let (mut conn, mut theirs) = pair();
        let mut req = get("/x?y=1");
        req.headers_mut()
            .append("x-multi", HeaderValue::from_static("a"));
        req.headers_mut()
            .append("x-multi", HeaderValue::from_static("b"));
        conn.write_request(&req).await.expect("write");
        let mut head = vec![0u8; 256];
        let n = theirs.read(&mut head).await.expect("read");
        assert_eq!(
            &head[..n],
            b"GET /x?y=1 HTTP/1.1\r\nhost: app.localhost\r\nx-multi: a\r\nx-multi: b\r\n\r\n"
        );
        theirs
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello")
            .await
            .expect("write");
        let (res, mut reader) = conn
            .read_response(&Method::GET)
            .await
            .expect("head")
            .expect("an answer");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-a"], "1");
        assert_eq!(reader.exact_len(), Some(5));
        let (data, trailers, reusable) = body(&mut reader).await.expect("body");
        assert_eq!(data, b"hello");
        assert!(trailers.is_none());
        assert!(
            reusable,
            "a complete HTTP/1.1 response keeps its connection"
        );
    }

    #[tokio::test]
    async fn header_names_remembered_from_the_last_response_are_checked_not_trusted() {
        // The same connection answers three times; the names differ by position, case, length
        // and count, so a name taken from the previous response would show up wrong here.
        let (mut conn, mut theirs) = pair();
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\nContent-Length: 1\r\nx-long-name: 2\r\n\r\na",
            b"HTTP/1.1 200 OK\r\nX-A: 3\r\ncontent-length: 1\r\nx-b: 4\r\nx-c: 5\r\n\r\nb",
            b"HTTP/1.1 200 OK\r\nx-b: 6\r\ncontent-length: 1\r\n\r\nc",
        ];
        let expected: [&[(&str, &str)]; 3] = [
            &[("x-a", "1"), ("content-length", "1"), ("x-long-name", "2")],
            &[
                ("x-a", "3"),
                ("content-length", "1"),
                ("x-b", "4"),
                ("x-c", "5"),
            ],
            &[("x-b", "6"), ("content-length", "1")],
        ];
        for (answer, expected) in answers.into_iter().zip(expected) {
            conn.write_request(&get("/")).await.expect("write");
            let mut head = vec![0u8; 256];
            let _ = theirs.read(&mut head).await.expect("read");
            theirs.write_all(answer).await.expect("answer");
            let (res, mut reader) = conn
                .read_response(&Method::GET)
                .await
                .expect("head")
                .expect("an answer");
            let got: Vec<(&str, &str)> = res
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str(), v.to_str().expect("ascii")))
                .collect();
            assert_eq!(got, expected);
            conn = loop {
                match poll_fn(|cx| reader.poll_read(cx)).await.expect("body") {
                    Read::Frame(_) => {}
                    Read::End(kept) => break kept.expect("the connection is kept"),
                }
            };
        }
    }

    #[tokio::test]
    async fn decodes_chunks_and_trailers_arriving_a_few_bytes_at_a_time() {
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 42\r\n\r\n";
        for step in [1, 3, 7, answer.len()] {
            let (res, mut reader) = exchange(get("/"), answer, step)
                .await
                .expect("head")
                .expect("answer");
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(reader.exact_len(), None);
            let (data, trailers, reusable) = body(&mut reader).await.expect("body");
            assert_eq!(data, b"hello world", "step {step}");
            assert_eq!(trailers.expect("trailers")["x-sum"], "42");
            assert!(reusable);
        }
    }

    #[tokio::test]
    async fn a_body_without_length_lasts_until_close_and_the_connection_is_not_kept() {
        let (_, mut reader) = exchange(get("/"), b"HTTP/1.1 200 OK\r\n\r\nabc", 2)
            .await
            .expect("head")
            .expect("answer");
        let (data, _, reusable) = body(&mut reader).await.expect("body");
        assert_eq!(data, b"abc");
        assert!(!reusable);
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body() {
        let head = Request::head("/").body(()).expect("request");
        let (_, mut reader) = exchange(head, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", 100)
            .await
            .expect("head")
            .expect("answer");
        assert!(reader.is_end());
        assert_eq!(
            body(&mut reader).await.expect("body"),
            (Vec::new(), None, true)
        );
        for answer in [
            &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
            &b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n"[..],
        ] {
            let (_, mut reader) = exchange(get("/"), answer, 100)
                .await
                .expect("head")
                .expect("answer");
            assert!(reader.is_end());
            assert_eq!(body(&mut reader).await.expect("body").0, b"");
        }
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_101_is_refused() {
        let (res, mut reader) = exchange(
            get("/"),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            5)
        .await
        .expect("head")
        .expect("answer");
        assert_eq!(res.status(), StatusCode::CREATED);
        assert!(res.headers().get("link").is_none());
        assert_eq!(body(&mut reader).await.expect("body").0, b"ok");

        let err = exchange(
            get("/"),
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            100,
        )
        .await
        .err()
        .expect("101 without an upgrade is an error");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn content_length_is_digits_only() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"[..],
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok"[..],
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0x2\r\n\r\nok"[..],
            &b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\nok"[..],
        ] {
            let err = exchange(get("/"), answer, 100)
                .await
                .err()
                .expect("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
    }

    #[tokio::test]
    async fn framing_conflicts_and_close_requests_are_not_reused() {
        let err = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
            100,
        )
        .await
        .err()
        .expect("differing lengths");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        for answer in [
            // Both framings: chunked wins, the connection is not trusted again.
            &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
            &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..],
            &b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
        ] {
            let (_, mut reader) = exchange(get("/"), answer, 100)
                .await
                .expect("head")
                .expect("answer");
            let (data, _, reusable) = body(&mut reader).await.expect("body");
            assert_eq!(data, b"ok");
            assert!(!reusable, "{}", String::from_utf8_lossy(answer));
        }
        let (_, mut reader) = exchange(
            get("/"),
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
            100,
        )
        .await
        .expect("head")
        .expect("answer");
        assert!(body(&mut reader).await.expect("body").2);
    }

    #[tokio::test]
    async fn early_close_is_none_before_any_byte_and_an_error_after() {
        assert!(exchange(get("/"), b"", 1)
            .await
            .expect("no error")
            .is_none());
        let err = exchange(get("/"), b"HTTP/1.1 100 Continue\r\n\r\n", 100)
            .await
            .err()
            .expect("an interim answer, then nothing");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = exchange(get("/"), b"HTTP/1.1 200 OK\r\ncontent-le", 4)
            .await
            .err()
            .expect("cut head");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let (_, mut reader) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
            4,
        )
        .await
        .expect("head")
        .expect("answer");
        let err = body(&mut reader).await.expect_err("cut body");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn garbage_is_an_error() {
        for answer in [
            &b"NOT HTTP AT ALL\r\n\r\n"[..],
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX"[..],
        ] {
            let got = match exchange(get("/"), answer, 100).await {
                Err(e) => Err(e),
                Ok(None) => panic!("an answer was sent"),
                Ok(Some((_, mut reader))) => body(&mut reader).await.map(|_| ()),
            };
            assert_eq!(
                got.err().map(|e| e.kind()),
                Some(io::ErrorKind::InvalidData),
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[tokio::test]
    async fn an_idle_connection_is_usable_until_closed_or_sent_something() {
        let (mut conn, theirs) = pair();
        assert!(conn.is_usable());
        drop(theirs);
        assert!(!conn.is_usable(), "closed by the instance");
        let (mut conn, mut theirs) = pair();
        theirs.write_all(b"x").await.expect("write");
        assert!(!conn.is_usable(), "unasked bytes");
    }

    #[test]
    fn a_body_less_post_says_its_length() {
        let mut out = Vec::new();
        let req = Request::post("/submit").body(()).expect("request");
        encode_request(&req, &mut out);
        assert_eq!(out, b"POST /submit HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let mut out = Vec::new();
        encode_request(&Request::get("*").body(()).expect("request"), &mut out);
        assert!(out.starts_with(b"GET * HTTP/1.1\r\n"), "{out:?}");
    }
}
