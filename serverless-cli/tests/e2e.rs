//! End to end: the real gateway over a real (private) containerd running real runc containers,
//! with real HTTP clients. Needs root, `containerd`, `runc` and Debian's `busybox-static`.
//! The harness (a private containerd per test, images, clients) is `serverless-testkit`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serverless_core::ContainerBackend;
use serverless_proxy::COLD_START_HEADER;
use serverless_testkit::{
    apps_toml, busybox_archive, can_run, hello_archive, rss_kib, AppToml, GatewayHarness, Load,
};

const HELLO: &str = env!("CARGO_BIN_EXE_serverless-hello");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_warm_scale_out_and_idle_stop() {
    if !can_run("cold_start_warm_scale_out_and_idle_stop") {
        return;
    }
    let env = GatewayHarness::start(|dir| {
        AppToml::archive("web", busybox_archive(dir))
            .with("[apps.limits]\nmax_concurrent_requests = 2\nidle_timeout = \"1500ms\"\n[apps.scale]\nmax = 3")
            .to_string()
    })
    .await;

    // Cold start: the first request is held until busybox listens, then answered.
    let first = env.get("web.localhost", "/").await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "hello from busybox\n");
    let cold: u64 = first.headers[COLD_START_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("cold start through the gateway: {cold} ms");

    // Warm.
    let warm = env.get("web.localhost", "/").await.unwrap();
    assert_eq!(warm.status, StatusCode::OK);
    assert!(warm.headers.get(COLD_START_HEADER).is_none());
    assert_eq!(env.instances("web").len(), 1);

    // Scale out: 6 slow requests at 2 per instance need 3 instances, all succeed.
    let env = Arc::new(env);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let env = env.clone();
            tokio::spawn(async move { env.get("web.localhost", "/cgi-bin/slow").await })
        })
        .collect();
    for t in tasks {
        let answer = t.await.unwrap().unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body, "slow\n");
    }
    assert_eq!(env.instances("web").len(), 3);

    // Idle stop: with nothing in flight every instance stops after idle_timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !env.instances("web").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "instances not stopped when idle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.backend.list().await.unwrap().is_empty());

    // And from zero again.
    let again = env.get("web.localhost", "/").await.unwrap();
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.headers.contains_key(COLD_START_HEADER));
    Arc::into_inner(env).expect("sole owner").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycle_under_load_fails_nothing() {
    if !can_run("recycle_under_load_fails_nothing") {
        return;
    }
    let env = GatewayHarness::start(|dir| {
        AppToml::archive("web", busybox_archive(dir))
            .with("[apps.limits]\nmax_concurrent_requests = 4\nmax_duration = \"1s\"\nstop_grace = \"1s\"")
            .to_string()
    })
    .await;
    let load = Load::start(env.addr(), "web.localhost", "/", 3);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (sent, failed) = load.finish().await;
    // Recycled instances stop once drained (busybox ignores SIGTERM, so each takes stop_grace).
    let recycled =
        || env.metric("serverless_instance_stops_total{app=\"web\",reason=\"recycled\"}") as u64;
    let wait_until = tokio::time::Instant::now() + Duration::from_secs(10);
    while recycled() < 2 && tokio::time::Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recycled = recycled();
    eprintln!(
        "recycle under load: {sent} sent, {} failed, {recycled} recycles",
        failed.len()
    );
    assert!(sent > 0);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(recycled >= 2, "only {recycled} recycles");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_that_fails_to_boot_gets_503_with_exit_code_and_logs() {
    if !can_run("app_that_fails_to_boot_gets_503_with_exit_code_and_logs") {
        return;
    }
    let env = GatewayHarness::start(|dir| {
        AppToml::archive("broken", busybox_archive(dir))
            .with(r#"command = ["/bin/busybox", "sh", "-c", "echo config missing >&2; exit 3"]"#)
            .to_string()
    })
    .await;
    let answer = env.get("broken.localhost", "/").await.unwrap();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        answer.reason.contains("exited with code 3"),
        "{}",
        answer.reason
    );
    assert!(answer.body.contains("config missing"), "{}", answer.body);
    // No container pile-up while backing off.
    for _ in 0..5 {
        let answer = env.get("broken.localhost", "/").await.unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(env.backend.list().await.unwrap().len() <= 1);
    env.stop().await;
}

/// This process's (the gateway's) resident set size in KiB.
fn own_rss_kib() -> u64 {
    rss_kib(std::process::id()).expect("VmRSS of this process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_h2c_and_100mb_streams_through_the_gateway() {
    if !can_run("websocket_h2c_and_100mb_streams_through_the_gateway") {
        return;
    }
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let env = GatewayHarness::start(|dir| {
        let image = hello_archive(HELLO, dir);
        apps_toml([
            AppToml::archive("hello", &image).with("port = 9000\nslot = \"c1-m256\""),
            AppToml::archive("grpcish", &image).with("h2c = true"),
        ])
    })
    .await;
    let addr = env.addr();

    // Port discovery + PORT: the app listens on $PORT = 9000, found without configuration.
    let port = env.get("hello.localhost", "/env/PORT").await.unwrap();
    assert_eq!(port.status, StatusCode::OK, "{}", port.body);
    assert_eq!(port.body, "9000");

    // WebSocket echo across the proxy; the connection holds its slot until it closes.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, res) = tokio_tungstenite::client_async("ws://hello.localhost/ws", stream)
        .await
        .expect("websocket handshake through the gateway");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), format!("ping {i}"));
    }
    let in_flight = || {
        env.gateway()
            .engine()
            .app("hello")
            .unwrap()
            .pool
            .snapshot()
            .instances
            .iter()
            .map(|i| i.in_flight)
            .sum::<u32>()
    };
    assert_eq!(in_flight(), 1, "an open WebSocket counts as in flight");
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while in_flight() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot not released after close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // h2c: client → gateway over HTTP/2 prior knowledge, gateway → app over h2c.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://grpcish.localhost/version")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let seen = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&seen[..], b"HTTP/2.0", "the app saw {seen:?}");

    // 100 MB up and down, streamed: the gateway (this process) does not buffer them.
    const SIZE: u64 = 100 * 1024 * 1024;
    let before = own_rss_kib();
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let chunks = (0..SIZE / chunk.len() as u64)
        .map(move |_| Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone())));
    let upload = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let client: Client<HttpConnector, _> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/upload"))
        .header("host", "hello.localhost")
        .body(upload)
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&text),
        format!("received {SIZE} bytes\n")
    );

    let req = Request::builder()
        .uri(format!("http://{addr}/bytes?n={SIZE}"))
        .header("host", "hello.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = env.client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut got = 0u64;
    let mut peak = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            got += data.len() as u64;
        }
        if got % (8 << 20) < 65536 {
            peak = peak.max(own_rss_kib());
        }
    }
    assert_eq!(got, SIZE);
    let after = own_rss_kib().max(peak);
    eprintln!("gateway RSS before {before} KiB, peak during 2×100 MB {after} KiB");
    assert!(
        after < before + 40 * 1024,
        "RSS grew by {} KiB while streaming 100 MB",
        after - before
    );
    env.stop().await;
}
