//! Reliability, isolation and bad input (issue 6): faults under continuous client load against
//! the real gateway over a real containerd this test starts (and kills), isolation and slot
//! limits of real instances, and hostile HTTP. Every test prints its figure: requests sent,
//! failed, leaked objects.
//!
//! Needs root, `containerd`, `runc`, `ctr` and Debian's `busybox-static`. Counts are overridable
//! by environment (`RELIABILITY_COLD_CYCLES`, `RELIABILITY_IDLE_RACES`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::*;
use tokio::time::Instant;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A POST whose body is still being sent (it never ends on its own): certainly in flight.
fn stalled_post(
    addr: std::net::SocketAddr,
    host: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<(Result<Answer, String>, Duration)>,
) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    let (hold, held) = tokio::sync::oneshot::channel::<()>();
    let chunks = futures_util::stream::unfold(Some(held), |held| async move {
        let held = held?;
        Some((Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(b"first chunk"))), {
            let _ = held.await;
            None
        }))
    });
    let req = http::Request::post(format!("http://{addr}/upload"))
        .header("host", host)
        .body(StreamBody::new(Box::pin(chunks)))
        .unwrap();
    let task = tokio::spawn(async move {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
        let started = Instant::now();
        let res = match client.request(req).await {
            Ok(res) => res,
            Err(e) => return (Err(format!("{e:?}")), started.elapsed()),
        };
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let answer = Answer {
            status: parts.status,
            reason: parts
                .headers
                .get(serverless_proxy::ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        (Ok(answer), started.elapsed())
    });
    (hold, task)
}

/// An instance SIGKILLed from the host under load: requests without a body that were not yet
/// answered are retried on another instance (0 failed); a request with a body in flight gets
/// a 502 naming the instance, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_sigkilled_under_load() {
    if !can_run("instance_sigkilled_under_load") {
        return;
    }
    let env = Env::start(|dir| {
        format!(
            r#"
[[apps]]
name = "web"
image = "oci-archive:{}"
[apps.limits]
max_concurrent_requests = 16
[apps.scale]
max = 3
"#,
            hello_image(dir).display()
        )
    })
    .await;
    let addr = env.addr();
    assert_eq!(env.get("web.localhost", "/").await.unwrap().status, StatusCode::OK);

    let (mut total_sent, mut total_failed) = (0, 0);
    for round in 0..3 {
        // Fast GETs, plus slow GETs that are certainly in flight (unanswered) at the kill.
        let fast = Load::start(addr, "web.localhost", "/", 2);
        let slow = Load::start(addr, "web.localhost", "/sleep?ms=1000", 4);
        let (hold, post) = stalled_post(addr, "web.localhost");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ids = env.instances("web");
        assert_eq!(ids.len(), 1, "{ids:?}");
        let pids = instance_pids(&env.namespace, &ids[0]);
        assert!(!pids.is_empty(), "no process found for {}", ids[0]);
        signal(pids[0], "KILL");
        let (post, took) = tokio::time::timeout(Duration::from_secs(20), post)
            .await
            .expect("the in-flight POST was answered")
            .unwrap();
        drop(hold);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (fast_sent, mut failed) = fast.finish().await;
        let (slow_sent, slow_failed) = slow.finish().await;
        failed.extend(slow_failed);
        let post = post.expect("an answer, not a reset");
        total_sent += fast_sent + slow_sent + 1;
        total_failed += failed.len();
        eprintln!(
            "instance SIGKILL round {round}: GETs sent {}, failed {}; in-flight POST → {} after {took:?} ({})",
            fast_sent + slow_sent,
            failed.len(),
            post.status,
            post.reason
        );
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(post.status, StatusCode::BAD_GATEWAY, "{post:?}");
        assert!(post.reason.contains("instance"), "{post:?}");
    }
    eprintln!("instance SIGKILL: sent {total_sent}, failed {total_failed} (+3 expected 502s)");
    env.stop().await;
}

/// containerd SIGKILLed and restarted: the warm instance keeps serving throughout (its shim
/// lives on), cold starts work again within 2 s of containerd being back, and the gateway
/// reconnects by itself (events included: a crash after the restart is still noticed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_killed_and_restarted() {
    if !can_run("containerd_killed_and_restarted") {
        return;
    }
    let mut env = Env::start(|dir| {
        let image = hello_image(dir);
        format!(
            r#"
[[apps]]
name = "warm"
image = "oci-archive:{image}"
[apps.scale]
min = 1
[[apps]]
name = "cold"
image = "oci-archive:{image}"
[apps.limits]
idle_timeout = "100ms"
"#,
            image = image.display()
        )
    })
    .await;
    let addr = env.addr();
    assert_eq!(env.get("warm.localhost", "/").await.unwrap().status, StatusCode::OK);
    let shims_before = env.containerd.shims().len();

    let load = Load::start(addr, "warm.localhost", "/", 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.containerd.kill9();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let served_while_down = load.sent();
    let shims_while_down = env.containerd.shims().len();
    env.containerd.restart();
    let back = Instant::now();
    eprintln!("containerd was down for {:?}", back - down);

    // A cold start right after containerd is back.
    let mut first_ok = None;
    let mut errors = Vec::new();
    while back.elapsed() < Duration::from_secs(10) {
        match env.get("cold.localhost", "/").await {
            Ok(a) if a.status == StatusCode::OK => {
                first_ok = Some(back.elapsed());
                break;
            }
            Ok(a) => errors.push(format!("{} {}", a.status, a.reason)),
            Err(e) => errors.push(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sent, failed) = load.finish().await;
    eprintln!(
        "containerd restart: warm GETs sent {sent} ({served_while_down} up to the restart), failed {}; \
         shims {shims_before} before, {shims_while_down} while down; first cold start OK {first_ok:?} \
         after containerd was back (errors before: {errors:?})",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(shims_while_down >= shims_before, "shims died with containerd");
    let first_ok = first_ok.expect("cold starts work again");
    assert!(first_ok < Duration::from_secs(2), "cold start only after {first_ok:?}");

    // Events after the restart: a crash of the warm instance is seen and it is replaced.
    let before = env.instances("warm");
    let _ = env.get("warm.localhost", "/exit?code=7").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = env.instances("warm");
        if !now.is_empty() && now != before {
            break;
        }
        assert!(Instant::now() < deadline, "crash after the restart not noticed: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.get("warm.localhost", "/").await.unwrap().status, StatusCode::OK);
    env.stop().await;
}
