use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::park::PARK_AFTER;
use super::*;
use crate::body::full_response_body;

/// A server whose handler answers `ok <path>`: its address and its count of parked
/// connections.
async fn ok_server() -> (SocketAddr, Counter) {
    ok_server_with(Duration::from_secs(5)).await
}

async fn ok_server_with(header_read_timeout: Duration) -> (SocketAddr, Counter) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = ConnSettings {
        header_read_timeout,
        max_header_bytes: 16 * 1024,
    };
    let handler = |req: Request<Incoming>, _info: ClientInfo| async move {
        Response::new(full_response_body(format!("ok {}", req.uri().path())))
    };
    let parked = Counter::default();
    tokio::spawn(serve(
        listener,
        None,
        settings,
        parked.clone(),
        handler,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    (addr, parked)
}

async fn read_response(conn: &mut TcpStream, path: &str) {
    let want = format!("ok {path}");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).ends_with(&want) {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
}

/// Waits (a few seconds at most) until `parked` has counted `n` connections.
async fn parked_count(parked: &Counter, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while parked.get() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(parked.get(), n, "connections parked");
}

#[tokio::test]
async fn a_parked_keep_alive_connection_serves_the_next_request() {
    let (addr, parked) = ok_server().await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    for (i, path) in (1..).zip(["/a", "/b", "/c"]) {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_response(&mut conn, path).await;
        // Long enough for the connection to park.
        tokio::time::sleep(PARK_AFTER * 2).await;
        parked_count(&parked, i).await;
    }
}

#[tokio::test]
async fn a_half_sent_pipelined_request_survives_parking() {
    let (addr, parked) = ok_server().await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\nGET /sec")
        .await
        .unwrap();
    read_response(&mut conn, "/first").await;
    tokio::time::sleep(PARK_AFTER * 2).await;
    parked_count(&parked, 1).await;
    conn.write_all(b"ond HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut conn, "/second").await;
}

#[tokio::test]
async fn a_busy_keep_alive_connection_outlives_the_header_timeout() {
    // The header timeout counts from the last exchange's end, not from the connection's
    // start: requests that each complete within one poll keep it open.
    let timeout = Duration::from_millis(300);
    let (addr, _) = ok_server_with(timeout).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < timeout * 4 {
        let path = format!("/{n}");
        conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_response(&mut conn, &path).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        n += 1;
    }
}

#[tokio::test]
async fn a_head_not_completed_in_time_is_cut_off() {
    let timeout = Duration::from_millis(600);
    for pause in [Duration::ZERO, PARK_AFTER * 2] {
        // After a response (and after parking, which the rest of the head finds), a head
        // that never completes: closed without an answer once the timeout has passed, not
        // before.
        let (addr, parked) = ok_server_with(timeout).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut conn, "/a").await;
        tokio::time::sleep(pause).await;
        if !pause.is_zero() {
            parked_count(&parked, 1).await;
        }
        let started = Instant::now();
        conn.write_all(b"GET /b HTTP/1.1\r\nho").await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
            .await
            .expect("closed in time");
        assert!(
            read.is_ok() || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
        );
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        assert!(
            started.elapsed() + pause >= timeout,
            "closed after {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_next_to_http1() {
    let (addr, parked) = ok_server().await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://x/h2")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok /h2");
    tokio::time::sleep(PARK_AFTER * 2).await;
    assert_eq!(parked.get(), 0, "HTTP/2 connections are not parked");
}

#[test]
fn tls_setup_errors_name_the_field_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = tls_acceptor(&missing, &empty)
        .err()
        .expect("no certificate file");
    assert!(
        err.to_string()
            .starts_with(&format!("server.tls.cert {}: ", missing.display())),
        "{err}"
    );
    let err = tls_acceptor(&empty, &empty).err().expect("no private key");
    assert_eq!(
        err.to_string(),
        format!("server.tls.key {}: no private key found", empty.display())
    );
}
