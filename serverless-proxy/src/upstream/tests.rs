use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use serverless_core::{AppSpec, BackendError, Connection, ErrorKind, Exit, OwnedInstance, Started};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Every instance is one loopback HTTP/1.1 server that counts its connections and closes
/// each after `per_conn` requests.
struct Local {
    addr: Option<SocketAddr>,
}

#[async_trait]
impl ContainerBackend for Local {
    async fn prepare(&self, _: &AppSpec) -> Result<(), BackendError> {
        Ok(())
    }
    async fn start(&self, _: &AppSpec, _: &InstanceId) -> Result<Started, BackendError> {
        unimplemented!()
    }
    async fn stop(&self, _: &InstanceId, _: Duration) -> Result<(), BackendError> {
        Ok(())
    }
    async fn wait(&self, _: &InstanceId) -> Result<Exit, BackendError> {
        std::future::pending().await
    }
    async fn connect(&self, _: &InstanceId) -> Result<Connection, BackendError> {
        let addr = self
            .addr
            .ok_or_else(|| BackendError::new(ErrorKind::Unavailable, "no such instance"))?;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| BackendError::new(ErrorKind::Unavailable, e.to_string()))?;
        Ok(Box::new(stream))
    }
    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
        Ok(Vec::new())
    }
    async fn logs(&self, _: &InstanceId) -> Result<String, BackendError> {
        Ok(String::new())
    }
}

async fn server(keep_alive: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(|req: Request<Incoming>| async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(format!(
                                "got {} bytes",
                                body.len()
                            )))))
                        }),
                    ),
            );
        }
    });
    (addr, conns)
}

/// A POST with `body` (through hyper's client), or a body-less GET when it is empty
/// (through the lean client): the tests below run both.
fn request(body: &'static str) -> Request<Outgoing<ReqBody>> {
    let mut req = Request::new(Outgoing::new(if body.is_empty() {
        http_body_util::Empty::new()
            .map_err(|e| match e {})
            .boxed_unsync()
    } else {
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync()
    }));
    if !body.is_empty() {
        *req.method_mut() = http::Method::POST;
    }
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("app"));
    req
}

async fn text(res: Response<UpstreamBody<ReqBody>>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn connections_are_reused_after_the_body_ends() {
    for body in ["hello", ""] {
        let (addr, conns) = server(true).await;
        let up = Upstreams::with_lean_client(Arc::new(Local { addr: Some(addr) }), true);
        let id = InstanceId::new("i-1");
        for _ in 0..5 {
            let res = up
                .send(&id, false, Timeouts::default(), request(body))
                .await
                .ok()
                .unwrap();
            assert_eq!(up.shared.idle(&id), 0, "busy until the body ends");
            assert_eq!(text(res).await, format!("got {} bytes", body.len()));
            assert_eq!(up.shared.idle(&id), 1);
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1, "body {body:?}");
    }
}

#[tokio::test]
async fn a_connection_the_instance_closed_is_not_reused() {
    for body in ["hi", ""] {
        let (addr, conns) = server(false).await;
        let up = Upstreams::with_lean_client(Arc::new(Local { addr: Some(addr) }), true);
        let id = InstanceId::new("i-1");
        for i in 1..=3 {
            let res = up
                .send(&id, false, Timeouts::default(), request(body))
                .await
                .ok()
                .unwrap();
            // The server closes after answering; the next request must not fail on it.
            assert_eq!(text(res).await, format!("got {} bytes", body.len()));
            assert_eq!(conns.load(Ordering::SeqCst), i);
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            while up.shared.idle(&id) > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("closed connections are forgotten");
    }
}

#[tokio::test]
async fn a_dropped_body_closes_its_connection() {
    for body in ["x", ""] {
        let (addr, conns) = server(true).await;
        let up = Upstreams::with_lean_client(Arc::new(Local { addr: Some(addr) }), true);
        let id = InstanceId::new("i-1");
        let res = up
            .send(&id, false, Timeouts::default(), request(body))
            .await
            .ok()
            .unwrap();
        drop(res);
        assert_eq!(up.shared.idle(&id), 0);
        let res = up
            .send(&id, false, Timeouts::default(), request(body))
            .await
            .ok()
            .unwrap();
        assert_eq!(text(res).await, format!("got {} bytes", body.len()));
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test]
async fn idle_connections_go_with_their_instance_or_when_it_closes_them() {
    let (addr, conns) = server(true).await;
    let up = Upstreams::with_lean_client(Arc::new(Local { addr: Some(addr) }), true);
    let id = InstanceId::new("i-1");
    let (a, b) = (
        up.send(&id, false, Timeouts::default(), request(""))
            .await
            .ok()
            .unwrap(),
        up.send(&id, false, Timeouts::default(), request(""))
            .await
            .ok()
            .unwrap(),
    );
    assert_eq!(text(a).await, "got 0 bytes");
    assert_eq!(text(b).await, "got 0 bytes");
    assert_eq!(up.shared.idle(&id), 2);
    up.forget(&id);
    assert_eq!(up.shared.idle(&id), 0, "the instance is gone");

    // An idle connection the instance closes later is swept; a live one stays.
    let res = up
        .send(&id, false, Timeouts::default(), request(""))
        .await
        .ok()
        .unwrap();
    assert_eq!(text(res).await, "got 0 bytes");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    let addr2 = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        drop(stream);
        let _ = closed_tx.send(());
    });
    let other = InstanceId::new("i-2");
    let closing = Upstreams::with_lean_client(Arc::new(Local { addr: Some(addr2) }), true);
    let res = closing
        .send(&other, false, Timeouts::default(), request(""))
        .await
        .ok()
        .unwrap();
    assert_eq!(text(res).await, "ok");
    closed.await.unwrap();
    assert_eq!(closing.shared.idle(&other), 1, "kept: it looked reusable");
    // The FIN arrives asynchronously: sweep until it has been seen.
    tokio::time::timeout(Duration::from_secs(10), async {
        while closing.shared.idle(&other) > 0 {
            closing.shared.sweep_lean();
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a connection its instance closed is swept");
    up.shared.sweep_lean();
    assert_eq!(up.shared.idle(&id), 1, "a live idle connection stays");
    assert_eq!(conns.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_unreachable_instance_gives_the_request_back() {
    let up = Upstreams::with_lean_client(Arc::new(Local { addr: None }), true);
    let failed = up
        .send(
            &InstanceId::new("gone"),
            false,
            Timeouts::default(),
            request("body"),
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(failed.error, SendError::Connect(_)));
    let req = failed.request.expect("not sent, so it comes back");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "body", "with its body");
}

#[tokio::test]
async fn with_the_lean_client_off_body_less_requests_go_through_hyper() {
    let (addr, conns) = server(true).await;
    let up = Upstreams::with_lean_client(Arc::new(Local { addr: Some(addr) }), false);
    let id = InstanceId::new("i-1");
    assert!(!up.sends_lean(false, &request("")));
    assert!(
        Upstreams::<ReqBody>::with_lean_client(Arc::new(Local { addr: None }), true)
            .sends_lean(false, &request(""))
    );
    for _ in 0..3 {
        let res = up
            .send(&id, false, Timeouts::default(), request(""))
            .await
            .ok()
            .unwrap();
        assert_eq!(text(res).await, "got 0 bytes");
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "hyper's connection is reused too"
    );
    assert_eq!(
        up.shared.lean_idle_count(),
        0,
        "the lean client kept nothing"
    );
}
