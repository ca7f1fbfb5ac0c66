//! The app that calls out, as the docs' walkthrough runs it: `serverless-hello`'s `GET /fetch`
//! fetches `$FETCH_URL` and returns what it got. With `network = "bridge"` (the default) it
//! reaches a server by name; with `network = "none"` it answers 502 naming the failure.
//!
//! The "outside" is a [`NetLab`](serverless_testkit::NetLab): an HTTP and a DNS server
//! (`outside.test`) in a namespace the test made, and the engine's bridge in another; nothing
//! reaches the machine's own network.

use std::time::Duration;

use serverless_core::{AppSpec, ContainerBackend, ImageRef, InstanceId, NetworkMode};
use serverless_testkit::{can_run_with, hello_archive, unique, NetLab, NETLAB_PROGRAMS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HELLO: &str = env!("CARGO_BIN_EXE_serverless-hello");

async fn fetch(backend: &serverless_containerd::ContainerdBackend, id: &InstanceId) -> String {
    let mut conn = backend.connect(id).await.expect("connect");
    conn.write_all(b"GET /fetch HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("write the request");
    let mut out = String::new();
    conn.read_to_string(&mut out)
        .await
        .expect("read the answer");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_out_app_fetches_by_name_with_bridge_and_fails_with_none() {
    if !can_run_with(
        "the_call_out_app_fetches_by_name_with_bridge_and_fails_with_none",
        NETLAB_PROGRAMS,
    ) {
        return;
    }
    let lab = NetLab::new(21);
    let h = lab.backend(1).await;
    let image = hello_archive(HELLO, h.dir.path());
    let mut app = AppSpec::new("fetch", ImageRef::OciArchive(image));
    app.env
        .insert("FETCH_URL".into(), "http://outside.test/".into());
    assert_eq!(app.network, NetworkMode::Bridge, "bridge is the default");
    h.backend.prepare(&app).await.expect("prepare");

    let id = InstanceId::new(unique("fetch"));
    h.backend.start(&app, &id).await.expect("start bridge");
    let answer = fetch(&h.backend, &id).await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(
        answer.contains("GET http://outside.test/: 200 OK\nhello from outside"),
        "{answer}"
    );
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");

    app.network = NetworkMode::None;
    let id = InstanceId::new(unique("fetch"));
    h.backend.start(&app, &id).await.expect("start none");
    let answer = fetch(&h.backend, &id).await;
    assert!(answer.starts_with("HTTP/1.0 502"), "{answer}");
    assert!(answer.contains("outside.test"), "{answer}");
    eprintln!("none: {}", answer.lines().last().unwrap_or_default());
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    h.shutdown().await;
}
