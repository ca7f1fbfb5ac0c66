//! Entry points for the fuzz targets in `fuzz/` (not a public API: hidden, unstable).

use bytes::BytesMut;
use http::Method;

use crate::h1::decode::{BodyDecoder, Decoded};
use crate::h1::head::{parse_response, HeadScratch, MAX_HEAD, MAX_INTERIM};

/// What the lean HTTP/1.1 client made of a response: the status, the headers and the body
/// (data and trailers), or the kind of error.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
}

/// Feeds `data` to the lean HTTP/1.1 client's response-head parser and body decoder, as if an
/// instance sent it: the first byte chooses the request's method (`HEAD` or `GET`) and the
/// size of the pieces the rest arrives in. Panics when the client misbehaves: a panic in the
/// parser or decoder, more body bytes than were sent, a `Content-Length` body of another
/// length, a `Content-Length` passed on next to a transfer coding or twice, more than 16
/// interim (1xx) heads skipped, or an outcome that depends on how the bytes were split.
pub fn h1_response(data: &[u8]) {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let method = if control & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let step = usize::from(control >> 1) + 1;
    let in_pieces = read(bytes, step, &method);
    let at_once = read(bytes, bytes.len().max(1), &method);
    assert_eq!(
        in_pieces, at_once,
        "the outcome depends on how the response was split ({step}-byte pieces)"
    );
    if interim_heads(bytes) > MAX_INTERIM {
        assert_eq!(
            at_once,
            Err(std::io::ErrorKind::InvalidData),
            "more than {MAX_INTERIM} interim heads skipped"
        );
    }
}

/// How many interim (1xx, not 101) heads `bytes` start with, as httparse reads them (up to one
/// more than the client allows).
fn interim_heads(mut bytes: &[u8]) -> usize {
    let mut count = 0;
    while count <= MAX_INTERIM {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut res = httparse::Response::new(&mut headers);
        match res.parse(bytes) {
            Ok(httparse::Status::Complete(len))
                if matches!(res.code, Some(100..=199)) && res.code != Some(101) =>
            {
                count += 1;
                bytes = &bytes[len..];
            }
            _ => break,
        }
    }
    count
}

/// The outcome of reading `bytes` arriving in `step`-byte pieces, then the connection closed;
/// `Err` with the error's kind.
fn read(bytes: &[u8], step: usize, method: &Method) -> Result<Outcome, std::io::ErrorKind> {
    let mut pieces = bytes.chunks(step);
    let mut buf = BytesMut::new();
    let mut scratch = HeadScratch::default();
    // The head, as `h1::Conn::read_response` reads it.
    let head = loop {
        if !buf.is_empty() {
            if let Some(head) = parse_response(&mut buf, &mut scratch, method).map_err(kind)? {
                break head;
            }
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::ErrorKind::InvalidData);
        }
        match pieces.next() {
            Some(piece) => buf.extend_from_slice(piece),
            None => return Err(std::io::ErrorKind::UnexpectedEof),
        }
    };
    let headers = head.response.headers();
    let lengths = headers.get_all(http::header::CONTENT_LENGTH).iter().count();
    assert!(lengths <= 1, "Content-Length passed on {lengths} times");
    assert!(
        lengths == 0 || !headers.contains_key(http::header::TRANSFER_ENCODING),
        "Content-Length passed on next to a transfer coding"
    );
    let length = headers.get(http::header::CONTENT_LENGTH).cloned();
    let mut decoder = BodyDecoder::new(head.framing, head.keep_alive);
    let mut outcome = Outcome {
        status: head.response.status().as_u16(),
        headers: pairs(head.response.headers()),
        body: Vec::new(),
        trailers: Vec::new(),
    };
    // The body, as `h1::Reader::poll_read` reads it.
    loop {
        match decoder.decode(&mut buf).map_err(kind)? {
            Some(Decoded::Frame(frame)) => match frame.into_data() {
                Ok(data) => outcome.body.extend_from_slice(&data),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        outcome.trailers.extend(pairs(&trailers));
                    }
                }
            },
            Some(Decoded::End { .. }) => break,
            None => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => {
                    decoder.closed().map_err(kind)?;
                    break;
                }
            },
        }
        assert!(
            outcome.body.len() <= bytes.len(),
            "more body than bytes sent"
        );
    }
    let is_chunked = head
        .response
        .headers()
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .next()
        .is_some();
    if let (Some(length), false, false) = (length, is_chunked, *method == Method::HEAD) {
        let status = outcome.status;
        if status != 204 && status != 304 {
            let length: u64 = length
                .to_str()
                .ok()
                .and_then(|l| l.trim().parse().ok())
                .expect("a Content-Length the parser accepted is a number");
            assert_eq!(outcome.body.len() as u64, length, "body of another length");
        }
    }
    Ok(outcome)
}

fn kind(error: std::io::Error) -> std::io::ErrorKind {
    error.kind()
}

fn pairs(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_read_the_same_in_pieces_and_at_once() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil close",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\ncut",
            b"garbage",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
        ] {
            for control in [0u8, 1, 2, 7, 255] {
                let mut data = vec![control];
                data.extend_from_slice(answer);
                h1_response(&data);
            }
        }
        let mut data = vec![0u8];
        data.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        assert_eq!(
            read(&data[1..], 3, &Method::GET).map(|o| o.body),
            Ok(b"hello".to_vec())
        );
        let flood = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM + 1);
        assert_eq!(interim_heads(&flood), MAX_INTERIM + 1);
        let mut data = vec![0u8];
        data.extend_from_slice(&flood);
        data.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        h1_response(&data);
    }
}
