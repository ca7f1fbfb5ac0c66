use std::future::poll_fn;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::head::encode_request;
use super::*;
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;

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
    conn.encode_request(&req);
    conn.write_request().await?;
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
    conn.encode_request(&req);
    conn.write_request().await.expect("write");
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
        conn.encode_request(&get("/"));
        conn.write_request().await.expect("write");
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

/// Parses `bytes` as one whole response (head and body arrived at once).
fn parse_whole(bytes: &[u8]) -> io::Result<(Response<()>, Vec<u8>)> {
    let mut buf = bytes::BytesMut::from(bytes);
    let head = head::parse_response(&mut buf, &mut head::HeadScratch::default(), &Method::GET)?
        .ok_or_else(|| io::Error::other("partial head"))?;
    let mut decoder = decode::BodyDecoder::new(head.framing, head.keep_alive);
    let mut data = Vec::new();
    loop {
        match decoder.decode(&mut buf)? {
            Some(decode::Decoded::Frame(frame)) => {
                if let Ok(d) = frame.into_data() {
                    data.extend_from_slice(&d);
                }
            }
            Some(decode::Decoded::End { .. }) => return Ok((head.response, data)),
            None => {
                decoder.closed()?;
            }
        }
    }
}

#[tokio::test]
async fn a_transfer_coding_removes_the_content_length() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
    ] {
        let (res, data) = parse_whole(answer).expect("parsed");
        assert!(
            res.headers().get("content-length").is_none(),
            "{}",
            String::from_utf8_lossy(answer)
        );
        assert_eq!(data, b"hello");
    }
    let (res, data) = parse_whole(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: gzip\r\n\r\nabcdef",
    )
    .expect("parsed");
    assert!(res.headers().get("content-length").is_none());
    assert_eq!(data, b"abcdef", "read to close");
}

#[tokio::test]
async fn identical_content_lengths_are_passed_on_once() {
    let (res, data) =
        parse_whole(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok")
            .expect("parsed");
    assert_eq!(res.headers().get_all("content-length").iter().count(), 1);
    assert_eq!(data, b"ok");
}

#[tokio::test]
async fn interim_responses_are_bounded_in_count_and_bytes() {
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    let fin = b"HTTP/1.1 204 No Content\r\n\r\n";
    let mut ok = interim.repeat(head::MAX_INTERIM);
    ok.extend_from_slice(fin);
    assert_eq!(parse_whole(&ok).expect("parsed").0.status(), 204);
    let mut many = interim.repeat(head::MAX_INTERIM + 1);
    many.extend_from_slice(fin);
    let err = parse_whole(&many).expect_err("too many interim heads");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    // A few big interim heads: their bytes count together.
    let big = format!(
        "HTTP/1.1 103 Early Hints\r\nlink: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let mut bytes = big.repeat(4).into_bytes();
    bytes.extend_from_slice(fin);
    let err = parse_whole(&bytes).expect_err("interim heads over the head limit");
    assert_eq!(err.to_string(), "response head over 64 KiB");
}

#[tokio::test]
async fn limits_hold_for_sections_that_arrived_whole() {
    let head = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(70_000)
    );
    let err = parse_whole(head.as_bytes()).expect_err("a 70 KB head");
    assert_eq!(err.to_string(), "response head over 64 KiB");
    let chunk_line = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;ext={}\r\nok\r\n0\r\n\r\n",
        "a".repeat(70_000)
    );
    let err = parse_whole(chunk_line.as_bytes()).expect_err("a 70 KB chunk line");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let trailers = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let err = parse_whole(trailers.as_bytes()).expect_err("a 70 KB trailer section");
    assert_eq!(err.to_string(), "trailer section over 64 KiB");
}

#[tokio::test]
async fn an_empty_chunk_size_line_is_an_error() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n;x\r\n\r\n"[..],
    ] {
        let err = parse_whole(answer).expect_err("empty chunk size");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}

#[tokio::test]
async fn an_unusual_reason_phrase_is_kept() {
    let (res, _) =
        parse_whole(b"HTTP/1.1 999 Custom Thing\r\ncontent-length: 0\r\n\r\n").expect("parsed");
    let reason = res
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .expect("a reason phrase");
    assert_eq!(reason.as_bytes(), b"Custom Thing");
    let (res, _) = parse_whole(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").expect("parsed");
    assert!(res.extensions().get::<hyper::ext::ReasonPhrase>().is_none());
}
