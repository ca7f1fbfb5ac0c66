//! Message heads: the request head written to the instance, and the response head parsed from
//! it, which decides how the body is framed (RFC 9112 §6.3).

use std::io;

use bytes::{Buf, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};

/// Response heads larger than this are refused (and trailer sections, and chunk-size lines).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Headers per response head (and per trailer section).
pub(super) const MAX_HEADERS: usize = 128;
/// Interim (1xx) heads per response; their bytes count towards [`MAX_HEAD`] together.
pub(crate) const MAX_INTERIM: usize = 16;

const HEAD_TOO_LARGE: &str = "response head over 64 KiB";

/// An error for a response that breaks the protocol.
pub(super) fn invalid(what: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// How the rest of a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// In chunks: the state of the decoder.
    Chunked(Chunk),
    /// Until the instance closes the connection.
    Close,
    /// Nothing left.
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// A parsed final response head: the response without its body, how the body is framed, and
/// whether the connection may carry another request after it.
pub(crate) struct Head {
    pub(crate) response: Response<()>,
    pub(crate) framing: Framing,
    pub(crate) keep_alive: bool,
}

/// Writes the request head of `req` (whose body is empty) to `out`.
pub(super) fn encode_request<B>(req: &Request<B>, out: &mut Vec<u8>) {
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

/// The parser's scratch space, kept per connection: where each header of the head being
/// parsed sits, and the header names of the last response as spelled, by position.
#[derive(Default)]
pub(crate) struct HeadScratch {
    spans: Vec<[usize; 4]>,
    /// An instance sends the same names in the same order, so most are matched here (byte
    /// for byte) instead of parsed (and, when not a standard name, allocated).
    names: Vec<(Vec<u8>, HeaderName)>,
    /// Interim heads skipped so far for the response being read: how many, how many bytes.
    interim: (usize, usize),
}

/// Parses one final response head from `buf` (consuming it and any interim 1xx heads before
/// it), for a request with `method`. `None` when the head is not complete yet.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    scratch: &mut HeadScratch,
    method: &Method,
) -> io::Result<Option<Head>> {
    let HeadScratch {
        spans,
        names,
        interim,
    } = scratch;
    loop {
        // Where each header's name and value sit in the head, so that the head can be split
        // off the buffer and the values shared with it rather than copied. (The parser's
        // header array is left uninitialised: zeroing it costs more than parsing.)
        spans.clear();
        let (len, code, minor, reason) = {
            let mut uninit = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut parsed, buf, &mut uninit)
                .map_err(invalid)?
            {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial if interim.1 + buf.len() <= MAX_HEAD => return Ok(None),
                httparse::Status::Partial => return Err(invalid(HEAD_TOO_LARGE)),
            };
            // A head that arrived whole is held to the same bound as one still arriving.
            if interim.1 + len > MAX_HEAD {
                return Err(invalid(HEAD_TOO_LARGE));
            }
            let base = buf.as_ptr() as usize;
            spans.extend(parsed.headers.iter().map(|h| {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                [name, name + h.name.len(), value, value + h.value.len()]
            }));
            // The reason phrase is passed on when it is not the status's usual one.
            let reason = parsed.reason.filter(|r| !r.is_empty()).map(|r| {
                let at = r.as_ptr() as usize - base;
                at..at + r.len()
            });
            (len, parsed.code, parsed.version, reason)
        };
        let count = spans.len();
        let status = StatusCode::from_u16(code.unwrap_or(0)).map_err(invalid)?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(invalid(
                    "101 Switching Protocols to a request without Upgrade",
                ));
            }
            *interim = (interim.0 + 1, interim.1 + len);
            if interim.0 > MAX_INTERIM {
                return Err(invalid("more than 16 interim (1xx) responses"));
            }
            buf.advance(len);
            continue;
        }
        *interim = (0, 0);
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
                match length {
                    Some(l) if l != n => return Err(invalid("differing content-length values")),
                    // The same length twice is passed on once (RFC 9112 §6.3).
                    Some(_) => continue,
                    None => length = Some(n),
                }
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
        if chunked.is_some() {
            // A transfer coding overrides the length, which an intermediary removes (RFC 9112
            // §6.3): passed on, it would frame the body the client gets wrong.
            headers.remove(http::header::CONTENT_LENGTH);
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
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some(reason) = reason {
            let reason = &head[reason];
            if status.canonical_reason().map(str::as_bytes) != Some(reason) {
                if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason) {
                    response.extensions_mut().insert(reason);
                }
            }
        }
        return Ok(Some(Head {
            response,
            framing,
            keep_alive,
        }));
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
