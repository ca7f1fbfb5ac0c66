//! Gateway restarts (issue 23): the real `serverless` binary SIGKILLed and started again on the
//! same `data_dir` adopts the embedded containerd it left (or replaces it when it is wedged) and
//! the warm instances of unchanged apps; instances of a changed app are replaced; a graceful
//! stop afterwards leaves no containerd, shim or object behind.
//!
//! Needs root, `containerd`, `runc` and `ctr`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use serverless_testkit::*;
use tokio::time::Instant;

const HELLO: &str = env!("CARGO_BIN_EXE_serverless-hello");
const SERVERLESS: &str = env!("CARGO_BIN_EXE_serverless");

/// `GET /` for `host`: 200 and the answering process's identity (`x-hello-instance`: its
/// container's hostname and a random suffix drawn when it started).
async fn instance_of(addr: std::net::SocketAddr, host: &str) -> String {
    let answer = send(&client(), addr, host, Method::GET, "/", b"")
        .await
        .unwrap_or_else(|e| panic!("GET / for {host}: {e}"));
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.headers["x-hello-instance"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The containerd processes started with `config` (the embedded one of a data dir).
fn containerds(config: &Path) -> Vec<u32> {
    let config = config.display().to_string();
    processes()
        .into_iter()
        .filter(|(_, args)| {
            args.windows(2)
                .any(|w| w[0] == "--config" && w[1] == config)
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// With the embedded containerd (the default): after a SIGKILL the next gateway starts within
/// seconds (it adopts the containerd left running instead of starting a second one on the
/// same root) and the warm instance answers with no cold start. A containerd that no longer
/// answers (SIGSTOPped) is stopped and replaced. SIGTERM then leaves no containerd and no shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_gateway_adopts_its_containerd_and_warm_instance() {
    if !can_run("sigkilled_gateway_adopts_its_containerd_and_warm_instance") {
        return;
    }
    let _shared = shared().await;
    let dir = tempfile::Builder::new().prefix("sl-rs-").tempdir().unwrap();
    let data = dir.path().join("gw");
    let config = dir.path().join("serverless.toml");
    GatewayToml::new()
        .data_dir(&data)
        .app(AppToml::archive("web", hello_archive(HELLO, dir.path())))
        .write(&config);
    let containerd_config = data.join("containerd").join("config.toml");
    let socket = data.join("containerd").join("containerd.sock");
    struct Cleanup(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for pid in containerds(&self.1) {
                signal(pid, "CONT");
            }
            remove_all(&self.0, "serverless", &self.1.with_file_name("cleanup"));
            for pid in containerds(&self.1) {
                signal(pid, "KILL");
            }
        }
    }
    let _cleanup = Cleanup(socket.clone(), containerd_config.clone());

    let first = GatewayProcess::start(SERVERLESS.as_ref(), &config).await;
    let warm = instance_of(first.addr, "web.localhost").await;
    let daemon = containerds(&containerd_config);
    assert_eq!(daemon.len(), 1, "one embedded containerd: {daemon:?}");
    first.kill().await;
    assert_eq!(
        containerds(&containerd_config),
        daemon,
        "the embedded containerd outlives a SIGKILLed gateway"
    );

    let t = Instant::now();
    let second = GatewayProcess::start(SERVERLESS.as_ref(), &config).await;
    let restart = t.elapsed();
    let again = instance_of(second.addr, "web.localhost").await;
    eprintln!(
        "restart after SIGKILL: serving in {restart:?}; instance before {warm}, after {again}"
    );
    assert!(restart < Duration::from_secs(10), "{}", second.log());
    assert_eq!(
        containerds(&containerd_config),
        daemon,
        "adopted, not a second one"
    );
    assert_eq!(again, warm, "the warm instance answers: {}", second.log());
    assert!(
        second.log().contains("adopted a running instance")
            && !second.log().contains("instance ready"),
        "no cold start: {}",
        second.log()
    );

    // Wedged: the containerd stops answering (SIGSTOP) and the gateway dies. The next one
    // stops it (SIGKILL reaches a stopped process) and starts its own.
    second.kill().await;
    signal(daemon[0], "STOP");
    let t = Instant::now();
    let third = GatewayProcess::start(SERVERLESS.as_ref(), &config).await;
    let restart = t.elapsed();
    let now = containerds(&containerd_config);
    let after = instance_of(third.addr, "web.localhost").await;
    eprintln!(
        "restart over a wedged containerd: serving in {restart:?}; containerd {daemon:?} -> {now:?}; instance {after}"
    );
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, daemon, "the wedged containerd was replaced");
    assert!(restart < Duration::from_secs(30), "{}", third.log());

    third.terminate().await;
    let left = containerds(&containerd_config);
    let shims: Vec<_> = shims().into_iter().filter(|s| s.serves(&socket)).collect();
    eprintln!("after SIGTERM: containerd {left:?}, shims {shims:?}");
    assert!(left.is_empty(), "containerd left running: {left:?}");
    assert!(shims.is_empty(), "shims left running: {shims:?}");
}

/// Two apps, the gateway SIGKILLed, one app's env changed in the config: the next gateway
/// adopts the unchanged app's instance (same process answers, same container) and replaces the
/// changed app's (a new process, the old container removed). SIGTERM then leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_unchanged_apps_and_replaces_changed_ones() {
    if !can_run("restart_adopts_unchanged_apps_and_replaces_changed_ones") {
        return;
    }
    let _shared = shared().await;
    let dir = tempfile::Builder::new().prefix("sl-rs-").tempdir().unwrap();
    let containerd = Containerd::start(dir.path());
    let namespace = unique("restart");
    struct Cleanup<'a>(&'a Containerd, &'a str, &'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            remove_all(&self.0.socket, self.1, &self.2.join("cleanup"));
        }
    }
    let _cleanup = Cleanup(&containerd, &namespace, dir.path());
    let image = hello_archive(HELLO, dir.path());
    let config = dir.path().join("serverless.toml");
    let write = |greeting: &str| {
        GatewayToml::new()
            .data_dir(dir.path().join("gw"))
            .containerd(&containerd.socket, &namespace)
            .app(AppToml::archive("kept", &image).with("[apps.scale]\nmin = 1"))
            .app(AppToml::archive("changed", &image).with(&format!(
                "env = {{ GREETING = \"{greeting}\" }}\n[apps.scale]\nmin = 1"
            )))
            .write(&config);
    };
    write("one");
    let first = GatewayProcess::start(SERVERLESS.as_ref(), &config).await;
    let kept = instance_of(first.addr, "kept.localhost").await;
    let changed = instance_of(first.addr, "changed.localhost").await;
    let before = containerd.container_ids(&namespace);
    first.kill().await;

    write("two");
    let second = GatewayProcess::start(SERVERLESS.as_ref(), &config).await;
    let kept_after = instance_of(second.addr, "kept.localhost").await;
    let changed_after = instance_of(second.addr, "changed.localhost").await;
    let after = containerd.container_ids(&namespace);
    eprintln!(
        "containers before {before:?}, after {after:?}; kept {kept} -> {kept_after}; changed {changed} -> {changed_after}"
    );
    assert_eq!(kept_after, kept, "the unchanged app's instance is adopted");
    assert_ne!(
        changed_after, changed,
        "the changed app's instance is replaced"
    );
    let survivors: Vec<_> = before.iter().filter(|id| after.contains(id)).collect();
    assert_eq!(
        survivors.len(),
        1,
        "only the kept app's container: {survivors:?}"
    );
    assert!(survivors[0].starts_with("kept-"), "{survivors:?}");

    second.terminate().await;
    assert_eq!(containerd.objects(&namespace), Objects::default());
}

/// A streamed response (`/stream?chunks=N&ms=M`) read whole: its status and whether every chunk
/// arrived (the last line is `chunk N-1`).
async fn stream(addr: std::net::SocketAddr, chunks: u32, ms: u32) -> Result<bool, String> {
    let answer = send(
        &client(),
        addr,
        "web.localhost",
        Method::GET,
        &format!("/stream?chunks={chunks}&ms={ms}"),
        b"",
    )
    .await?;
    if answer.status != StatusCode::OK {
        return Err(format!("{} {}", answer.status, answer.reason));
    }
    Ok(answer.body.lines().count() == chunks as usize
        && answer.body.ends_with(&format!("chunk {}\n", chunks - 1)))
}

/// A WebSocket to the hello app's echo through the gateway at `addr`.
async fn websocket(
    addr: std::net::SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, res) = tokio_tungstenite::client_async("ws://web.localhost/ws", stream)
        .await
        .expect("websocket handshake through the gateway");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Sends `text` on `ws` and expects it echoed.
async fn echo(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, text: String) {
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
        .await
        .unwrap_or_else(|e| panic!("send {text:?}: {e}"));
    let answer = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap_or_else(|_| panic!("no echo of {text:?} within 5 s"))
        .expect("the WebSocket is open")
        .unwrap();
    assert_eq!(answer.into_text().unwrap().as_str(), text);
}

/// Upgrades under load (the test): while a gateway serves (embedded containerd, one
/// warm instance, four clients sending GETs back to back, a 10 s request and three long streams
/// in flight), a new `serverless serve` — a second copy of the binary, then the first again,
/// five times — starts on the same config: it takes the listening sockets over, the old one
/// finishes its requests and exits. Each round also starts a 2 s stream and opens a WebSocket
/// on the old process just before the upgrade: the stream completes, and the WebSocket keeps
/// echoing after the new process serves — the old process owns that connection and stays
/// until the client closes it, then exits. No request fails (none refused), every stream is
/// whole, the same instance answers throughout (no cold start), and SIGTERM at the end leaves
/// no containerd and no shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_fails_no_request() {
    if !can_run("upgrade_under_load_fails_no_request") {
        return;
    }
    let _shared = shared().await;
    let dir = tempfile::Builder::new().prefix("sl-rs-").tempdir().unwrap();
    let data = dir.path().join("gw");
    let config = dir.path().join("serverless.toml");
    GatewayToml::new()
        .data_dir(&data)
        .app(
            AppToml::archive("web", hello_archive(HELLO, dir.path())).with(
                "[apps.limits]\nmax_concurrent_requests = 16\n[apps.scale]\nmin = 1\nmax = 1",
            ),
        )
        .write(&config);
    let containerd_config = data.join("containerd").join("config.toml");
    let socket = data.join("containerd").join("containerd.sock");
    struct Cleanup(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            remove_all(&self.0, "serverless", &self.1.with_file_name("cleanup"));
            for pid in containerds(&self.1) {
                signal(pid, "KILL");
            }
        }
    }
    let _cleanup = Cleanup(socket.clone(), containerd_config.clone());
    // The upgrade's new binary: a copy of the first.
    let copy = dir.path().join("serverless-next");
    std::fs::copy(SERVERLESS, &copy).unwrap();
    let binaries = [Path::new(SERVERLESS), copy.as_path()];

    let mut current = GatewayProcess::start(binaries[0], &config).await;
    let addr = current.addr;
    let warm = instance_of(addr, "web.localhost").await;
    let load = Load::start(addr, "web.localhost", "/sleep?ms=20", 4);
    let client = client();
    let long = tokio::spawn(async move {
        let t = Instant::now();
        let answer = send(
            &client,
            addr,
            "web.localhost",
            Method::GET,
            "/sleep?ms=10000",
            b"",
        )
        .await;
        (answer, t.elapsed())
    });
    // Long streams: 5, 10 and 15 s, a chunk every 100 ms.
    let mut streams: Vec<_> = [50, 100, 150]
        .into_iter()
        .map(|chunks| tokio::spawn(stream(addr, chunks, 100)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rounds = 5;
    for round in 1..=rounds {
        // A 2 s stream and a WebSocket on the old process, just before the upgrade.
        let short = tokio::spawn(stream(addr, 20, 100));
        let mut ws = websocket(addr).await;
        echo(&mut ws, format!("round {round} before")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;

        let t = Instant::now();
        let next = GatewayProcess::start(binaries[round % 2], &config).await;
        assert_eq!(next.addr, addr, "the same listening socket");
        let serving = t.elapsed();
        // The new process answers while the old one still holds the WebSocket and the stream.
        let _ = instance_of(addr, "web.localhost").await;
        let short = short.await.unwrap();
        assert_eq!(short, Ok(true), "the 2 s stream of round {round} is whole");
        for i in 0..3 {
            echo(&mut ws, format!("round {round} after {i}")).await;
        }
        if round > 1 {
            // Nothing else is in flight on the old process: the WebSocket alone keeps it.
            assert!(
                current.child.try_wait().unwrap().is_none(),
                "the old gateway exited with a WebSocket open: {}",
                current.log()
            );
        }
        {
            use futures_util::StreamExt;
            ws.close(None).await.unwrap();
            while ws.next().await.is_some() {}
            drop(ws);
        }
        let closed = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(40), current.child.wait())
            .await
            .expect("the old gateway exits after the hand-over")
            .unwrap();
        assert!(status.success(), "{}", current.log());
        let exited = closed.elapsed();
        eprintln!(
            "upgrade {round}: new one serving after {serving:?}, old one gone after {:?} ({exited:?} after the WebSocket closed); {} requests so far",
            t.elapsed(),
            load.sent()
        );
        if round > 1 {
            assert!(
                exited < Duration::from_secs(5),
                "the old gateway lingered {exited:?} after its last connection closed"
            );
        }
        assert!(
            !next.log().contains("instance ready"),
            "a cold start after the upgrade: {}",
            next.log()
        );
        current = next;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (sent, failed) = load.finish().await;
    let (long, took) = long.await.unwrap();
    let mut whole = Vec::new();
    for s in streams.drain(..) {
        whole.push(s.await.unwrap());
    }
    let after = instance_of(addr, "web.localhost").await;
    let refused = failed.iter().filter(|f| f.contains("refused")).count();
    eprintln!(
        "{rounds} upgrades under load: sent {sent}, failed {} ({refused} refused); the 10 s request: {:?} after {took:?}; long streams whole: {whole:?}; instance {warm} -> {after}",
        failed.len(),
        long.as_ref().map(|a| a.status)
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        long.expect("the 10 s request is answered").status,
        StatusCode::OK
    );
    assert!(
        whole.iter().all(|w| w == &Ok(true)),
        "every long stream is whole: {whole:?}"
    );
    assert_eq!(after, warm, "the same instance answers: {}", current.log());
    assert_eq!(containerds(&containerd_config).len(), 1);

    current.terminate().await;
    let left = containerds(&containerd_config);
    let shims: Vec<_> = shims().into_iter().filter(|s| s.serves(&socket)).collect();
    assert!(left.is_empty(), "containerd left running: {left:?}");
    assert!(shims.is_empty(), "shims left running: {shims:?}");
}
