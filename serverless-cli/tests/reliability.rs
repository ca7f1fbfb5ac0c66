//! Reliability, isolation and bad input (issue 6): faults under continuous client load against
//! the real gateway over a real containerd this test starts (and kills), isolation and slot
//! limits of real instances, and hostile HTTP. Every test prints its figure: requests sent,
//! failed, leaked objects.
//!
//! Needs root, `containerd`, `runc`, `ctr` and Debian's `busybox-static`. Counts are overridable
//! by environment (`RELIABILITY_COLD_CYCLES`, `RELIABILITY_IDLE_RACES`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Method, StatusCode};
use serverless_testkit::*;
use tokio::time::Instant;

const HELLO: &str = env!("CARGO_BIN_EXE_serverless-hello");
const SERVERLESS: &str = env!("CARGO_BIN_EXE_serverless");

type PostTask = tokio::task::JoinHandle<(Result<Answer, String>, Duration)>;

/// A POST whose body is still being sent (it never ends on its own): certainly in flight.
fn stalled_post(
    addr: std::net::SocketAddr,
    host: &str,
) -> (tokio::sync::oneshot::Sender<()>, PostTask) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    let (hold, held) = tokio::sync::oneshot::channel::<()>();
    let chunks = futures_util::stream::unfold(Some(held), |held| async move {
        let held = held?;
        Some((
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(b"first chunk"))),
            {
                let _ = held.await;
                None
            },
        ))
    });
    let req = http::Request::post(format!("http://{addr}/upload"))
        .header("host", host)
        .body(StreamBody::new(Box::pin(chunks)))
        .unwrap();
    let task = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let started = Instant::now();
        let res = match client.request(req).await {
            Ok(res) => res,
            Err(e) => return (Err(format!("{e:?}")), started.elapsed()),
        };
        let (parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (Ok(Answer::new(parts, &body)), started.elapsed())
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
    let _shared = shared().await;
    let env = GatewayHarness::start(|dir| {
        AppToml::archive("web", hello_archive(HELLO, dir))
            .with("[apps.limits]\nmax_concurrent_requests = 16\n[apps.scale]\nmax = 3")
            .to_string()
    })
    .await;
    let addr = env.addr();
    assert_eq!(
        env.get("web.localhost", "/").await.unwrap().status,
        StatusCode::OK
    );

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
    let _shared = shared().await;
    let mut env = GatewayHarness::start(|dir| {
        let image = hello_archive(HELLO, dir);
        apps_toml([
            AppToml::archive("warm", &image).with("[apps.scale]\nmin = 1"),
            AppToml::archive("cold", &image).with("[apps.limits]\nidle_timeout = \"100ms\""),
        ])
    })
    .await;
    let addr = env.addr();
    assert_eq!(
        env.get("warm.localhost", "/").await.unwrap().status,
        StatusCode::OK
    );
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
    assert!(
        shims_while_down >= shims_before,
        "shims died with containerd"
    );
    let first_ok = first_ok.expect("cold starts work again");
    assert!(
        first_ok < Duration::from_secs(2),
        "cold start only after {first_ok:?}"
    );

    // Events after the restart: a crash of the warm instance is seen and it is replaced.
    let before = env.instances("warm");
    let _ = env.get("warm.localhost", "/exit?code=7").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = env.instances("warm");
        if !now.is_empty() && now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "crash after the restart not noticed: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        env.get("warm.localhost", "/").await.unwrap().status,
        StatusCode::OK
    );
    env.stop().await;
}

/// The real `serverless` binary SIGKILLed under load and started again: the new process adopts
/// the running instances of the unchanged app and its reconcile removes the rest of what the
/// old one left (containers, tasks, snapshots, shims); then it serves. A graceful restart (SIGTERM) finishes the request in flight first, and
/// leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigkilled_and_restarted() {
    if !can_run("gateway_sigkilled_and_restarted") {
        return;
    }
    let _shared = shared().await;
    let dir = tempfile::Builder::new()
        .prefix("sl-rel-")
        .tempdir()
        .unwrap();
    let containerd = Containerd::start(dir.path());
    let namespace = unique("relgw");
    struct Cleanup<'a>(&'a Containerd, &'a str, &'a std::path::Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            remove_all(&self.0.socket, self.1, &self.2.join("cleanup"));
        }
    }
    let _cleanup = Cleanup(&containerd, &namespace, dir.path());
    let config = dir.path().join("serverless.toml");
    GatewayToml::new()
        .data_dir(dir.path().join("gw"))
        .containerd(&containerd.socket, &namespace)
        .app(
            AppToml::archive("web", hello_archive(HELLO, dir.path()))
                .with("[apps.limits]\nmax_concurrent_requests = 2\n[apps.scale]\nmin = 1"),
        )
        .write(&config);
    let objects = |c: &Containerd| c.objects(&namespace);
    let ids = |c: &Containerd| c.container_ids(&namespace);

    let first = GatewayProcess::start(SERVERLESS.as_ref(), &config).await;
    // Load that needs more than the one warm instance (2 per instance, 4 clients).
    let load = Load::start(first.addr, "web.localhost", "/sleep?ms=50", 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.signal("KILL");
    let (sent, failed) = load.finish().await;
    let left = objects(&containerd);
    let left_ids = ids(&containerd);
    drop(first);
    eprintln!(
        "gateway SIGKILL: sent {sent}, failed {} (cut off by the kill); left behind {left:?}",
        failed.len()
    );
    assert!(left.containers >= 1 && left.shims >= 1, "{left:?}");

    let second = GatewayProcess::start(SERVERLESS.as_ref(), &config).await;
    let now_ids = ids(&containerd);
    let adopted: Vec<_> = left_ids.iter().filter(|id| now_ids.contains(id)).collect();
    let load = Load::start(second.addr, "web.localhost", "/", 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, failed) = load.finish().await;
    let after = objects(&containerd);
    eprintln!(
        "gateway restart: old containers adopted {adopted:?}; now {after:?}; sent {sent}, failed {}",
        failed.len()
    );
    // The app is unchanged: its running instances are adopted (tests/restart.rs has the rest).
    assert!(!adopted.is_empty(), "no instance adopted: {}", second.log());
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(after.containers, after.tasks);
    assert_eq!(after.containers, after.snapshots);
    assert_eq!(after.containers, after.shims);

    // Graceful: SIGTERM with a request in flight; it is answered, then everything is removed.
    let client = client();
    let addr = second.addr;
    let slow = tokio::spawn(async move {
        send(
            &client,
            addr,
            "web.localhost",
            Method::GET,
            "/sleep?ms=2000",
            b"",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.signal("TERM");
    let mut second = second;
    let status = tokio::time::timeout(Duration::from_secs(40), second.child.wait())
        .await
        .expect("serverless exits after SIGTERM")
        .unwrap();
    let slow = slow.await.unwrap();
    let left = objects(&containerd);
    eprintln!("gateway SIGTERM: in-flight request → {slow:?}; exit {status}; left behind {left:?}");
    assert!(status.success(), "{}", second.log());
    let slow = slow.expect("answered");
    assert_eq!(slow.status, StatusCode::OK, "{slow:?}");
    assert_eq!(left, Objects::default());
}

/// Recycling (`max_duration` 1 s) ten times under continuous load: 0 failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_ten_times_under_load() {
    if !can_run("recycled_ten_times_under_load") {
        return;
    }
    let _shared = shared().await;
    let env = GatewayHarness::start(|dir| {
        AppToml::archive("web", hello_archive(HELLO, dir))
            .with("[apps.limits]\nmax_concurrent_requests = 4\nmax_duration = \"1s\"\nstop_grace = \"2s\"")
            .to_string()
    })
    .await;
    let recycled =
        || env.metric("serverless_instance_stops_total{app=\"web\",reason=\"recycled\"}");
    let load = Load::start(env.addr(), "web.localhost", "/sleep?ms=20", 3);
    let deadline = Instant::now() + Duration::from_secs(60);
    while recycled() < 10.0 {
        assert!(Instant::now() < deadline, "only {} recycles", recycled());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sent, failed) = load.finish().await;
    eprintln!(
        "recycle: {} recycles, sent {sent}, failed {}",
        recycled(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    env.stop().await;
}

/// Idle stop racing new requests: requests land around the moment the instance goes idle
/// (`idle_timeout` 100 ms, the smallest allowed), `RELIABILITY_IDLE_RACES` times (default 1000)
/// over four apps in parallel: 0 failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stop_races_new_requests() {
    if !can_run("idle_stop_races_new_requests") {
        return;
    }
    let _shared = shared().await;
    const APPS: usize = 4;
    let races = env_num("RELIABILITY_IDLE_RACES", 1000).unwrap();
    let env = GatewayHarness::start(|dir| {
        let image = hello_archive(HELLO, dir);
        apps_toml((0..APPS).map(|i| {
            AppToml::archive(&format!("a{i}"), &image)
                .with("[apps.limits]\nidle_timeout = \"100ms\"")
        }))
    })
    .await;
    let env = std::sync::Arc::new(env);
    let started = Instant::now();
    let tasks: Vec<_> = (0..APPS)
        .map(|app| {
            let env = env.clone();
            tokio::spawn(async move {
                let client = client();
                let host = format!("a{app}.localhost");
                let mut failed = Vec::new();
                for i in 0..races / APPS {
                    // 90..=110 ms after the previous answer: around the idle deadline.
                    tokio::time::sleep(Duration::from_millis(90 + (i * 7 % 21) as u64)).await;
                    match send(&client, env.addr(), &host, Method::GET, "/", b"").await {
                        Ok(a) if a.status == StatusCode::OK => {}
                        Ok(a) => failed.push(format!("{} {}", a.status, a.reason)),
                        Err(e) => failed.push(e),
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for t in tasks {
        failed.extend(t.await.unwrap());
    }
    let stops = env.metric("serverless_instance_stops_total{app=\"a");
    eprintln!(
        "idle race: {} requests in {:?}, failed {}, {stops} idle stops",
        races / APPS * APPS,
        started.elapsed(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    std::sync::Arc::into_inner(env).unwrap().stop().await;
}

/// An app that exits at boot: every request gets a 503 naming the exit code, boots back off
/// exponentially, and there is never more than one container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_without_pile_up() {
    if !can_run("crash_loop_backs_off_without_pile_up") {
        return;
    }
    let _shared = shared().await;
    let env = GatewayHarness::start(|dir| {
        AppToml::archive("broken", busybox_archive(dir))
            .with(r#"command = ["/bin/busybox", "sh", "-c", "echo config missing >&2; exit 3"]"#)
            .to_string()
    })
    .await;
    let load = Load::start(env.addr(), "broken.localhost", "/", 2);
    let started = Instant::now();
    let mut most = 0;
    while started.elapsed() < Duration::from_secs(4) {
        most = most.max(env.objects().containers);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (sent, answers) = load.finish().await;
    let boots = env.metric("serverless_boot_failures_total{app=\"broken\"}");
    eprintln!(
        "crash loop: sent {sent}, {} answered 503, {boots} boots in 4 s, at most {most} containers",
        answers.len()
    );
    // Every answer is a clear 503 (the load counts non-200 answers as failures).
    assert_eq!(answers.len() as u64, sent);
    for a in &answers {
        assert!(
            a.starts_with("503") && a.contains("exited with code 3"),
            "{a}"
        );
    }
    // 250 ms doubling: boots at about 0, 0.25, 0.75, 1.75, 3.75 s.
    assert!((2.0..=6.0).contains(&boots), "{boots} boots in 4 s");
    assert!(most <= 1, "{most} containers at once");
    env.stop().await;
}

/// Cold start after cold start (`RELIABILITY_COLD_CYCLES`, default 1000): containers, tasks,
/// snapshots, shims and the gateway's file descriptors come back to the baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_cycles_leak_nothing() {
    if !can_run("cold_start_cycles_leak_nothing") {
        return;
    }
    let _alone = exclusive().await;
    let cycles = env_num("RELIABILITY_COLD_CYCLES", 1000).unwrap();
    let env = GatewayHarness::start(|dir| {
        AppToml::archive("web", hello_archive(HELLO, dir))
            .with("[apps.limits]\nidle_timeout = \"100ms\"")
            .to_string()
    })
    .await;
    let pool = env.gateway().engine().app("web").unwrap().pool.clone();
    let until_stopped = || async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pool.snapshot().instances.is_empty() {
            assert!(Instant::now() < deadline, "instances not stopped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // Each cycle cold-starts an instance, then evicts it (it stops in the background while
    // the next request cold-starts the next one).
    let evict_all = || {
        for i in pool.snapshot().instances {
            pool.evict(&i.id);
        }
    };
    // One cycle first, so lazily created things (clients, threads, pools) exist at baseline.
    env.get("web.localhost", "/").await.unwrap();
    evict_all();
    until_stopped().await;
    // The spare shim that cycle took is replaced 100 ms after the take.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = (env.objects(), fds());
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut cold = 0;
    for _ in 0..cycles {
        match env.get("web.localhost", "/").await {
            Ok(a) if a.status == StatusCode::OK => cold += 1,
            Ok(a) => failed.push(format!("{} {}", a.status, a.reason)),
            Err(e) => failed.push(e),
        }
        evict_all();
    }
    until_stopped().await;
    let took = started.elapsed();
    // Pooled client connections to the gateway may close a moment later; the spare shim is
    // replaced 100 ms after the last take.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = (env.objects(), fds());
    eprintln!(
        "{cycles} cold-start cycles ({cold} answered) in {took:?} ({:?} each): failed {}; before {:?}, after {:?}",
        took / cycles.max(1) as u32,
        failed.len(),
        base,
        after
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(after.0, base.0, "containerd objects leaked");
    assert!(after.1 <= base.1 + 2, "fds {} → {}", base.1, after.1);
    env.stop().await;
}

/// Host IPv4 addresses (loopback and the machine's own).
fn host_ips() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut ips: Vec<String> = out
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .split('/')
                .next()
                .map(str::to_owned)
        })
        .collect();
    if !ips.iter().any(|i| i == "127.0.0.1") {
        ips.push("127.0.0.1".to_owned());
    }
    ips
}

/// An instance can reach its own listener but not another instance, the gateway, its admin
/// API, nor anything listening on the host (a probe run inside the instance with busybox `nc`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_cannot_reach_each_other_or_the_host() {
    if !can_run("instances_cannot_reach_each_other_or_the_host") {
        return;
    }
    let _shared = shared().await;
    let env = GatewayHarness::start(|dir| {
        apps_toml([
            AppToml::archive("probe", busybox_archive(dir)),
            AppToml::archive("other", hello_archive(HELLO, dir)).with("port = 9000"),
        ])
    })
    .await;
    // Another instance (listening on 9000 in its own namespace), and a host listener on all
    // addresses.
    assert_eq!(
        env.get("other.localhost", "/").await.unwrap().status,
        StatusCode::OK
    );
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port();
    let gateway = env.addr().port();
    let admin = env.gateway().admin_addr().port();
    let probe = |target: String| {
        let env = &env;
        async move {
            let a = env
                .get("probe.localhost", &format!("/cgi-bin/probe?{target}"))
                .await
                .unwrap();
            assert_eq!(a.status, StatusCode::OK, "{a:?}");
            (target, a.body.trim().to_owned())
        }
    };
    // The probe works: its own listener is open.
    assert_eq!(probe("127.0.0.1+8080".into()).await.1, "open");
    let mut targets = vec![format!("127.0.0.1+9000")];
    for ip in host_ips() {
        for port in [gateway, admin, host_port] {
            targets.push(format!("{ip}+{port}"));
        }
    }
    let mut open = Vec::new();
    for t in &targets {
        let (t, result) = probe(t.clone()).await;
        if result != "closed" {
            open.push(format!("{t}: {result}"));
        }
    }
    eprintln!(
        "isolation: {} targets probed from inside an instance ({targets:?}), {} reachable",
        targets.len(),
        open.len()
    );
    assert!(open.is_empty(), "reachable from an instance: {open:?}");
    drop(host_listener);
    env.stop().await;
}

/// A memory bomb in an `m128` slot is OOM-killed and replaced; another app under load is not
/// affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_oom_killed_and_replaced() {
    if !can_run("memory_bomb_is_oom_killed_and_replaced") {
        return;
    }
    let _shared = shared().await;
    let env = GatewayHarness::start(|dir| {
        apps_toml([
            AppToml::archive("bomb", busybox_archive(dir)).with(
                r#"slot = "c.125-m128"
command = ["/bin/sh", "-c", "/bin/busybox httpd -f -p 8080 -h /www & while [ ! -e /tmp/bomb ]; do /bin/busybox sleep 0.05; done; exec /bin/busybox dd if=/dev/zero of=/dev/null bs=1G count=1"]"#,
            ),
            AppToml::archive("other", hello_archive(HELLO, dir)),
        ])
    })
    .await;
    assert_eq!(
        env.get("bomb.localhost", "/").await.unwrap().status,
        StatusCode::OK
    );
    let load = Load::start(env.addr(), "other.localhost", "/", 2);
    let id = env.instances("bomb")[0].clone();
    let exit = tokio::spawn({
        let backend = env.backend.clone();
        let id = serverless_core::InstanceId::new(id.clone());
        async move {
            use serverless_core::ContainerBackend;
            backend.wait(&id).await
        }
    });
    let armed = env.get("bomb.localhost", "/cgi-bin/bomb").await.unwrap();
    assert_eq!(armed.body.trim(), "armed");
    let exit = tokio::time::timeout(Duration::from_secs(20), exit)
        .await
        .expect("the bomb ends")
        .unwrap()
        .unwrap();
    // Replaced: the next request cold-starts a new instance.
    let again = env.get("bomb.localhost", "/").await.unwrap();
    let (sent, failed) = load.finish().await;
    eprintln!(
        "memory bomb: exit {exit:?}; next request {} on {:?}; other app: sent {sent}, failed {}",
        again.status,
        env.instances("bomb"),
        failed.len()
    );
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(again.status, StatusCode::OK);
    assert_ne!(env.instances("bomb"), vec![id]);
    assert!(failed.is_empty(), "{failed:?}");
    env.stop().await;
}

/// A fork bomb stops at the slot's pids limit; the host and another app are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_stops_at_the_pids_limit() {
    if !can_run("fork_bomb_stops_at_the_pids_limit") {
        return;
    }
    let _shared = shared().await;
    let env = GatewayHarness::start(|dir| {
        apps_toml([
            AppToml::archive("forky", busybox_archive(dir)),
            AppToml::archive("other", hello_archive(HELLO, dir)),
        ])
    })
    .await;
    assert_eq!(
        env.get("forky.localhost", "/").await.unwrap().status,
        StatusCode::OK
    );
    let id = env.instances("forky")[0].clone();
    let load = Load::start(env.addr(), "other.localhost", "/", 2);
    // 2000 processes asked for; the answer comes (or the connection is cut) once forks fail.
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        env.get("forky.localhost", "/cgi-bin/fork"),
    )
    .await
    .expect("the fork bomb request ends");
    let cg = env.cgroup("pids", &id);
    let read = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap_or_default();
    let (max, current, events) = (read("pids.max"), read("pids.current"), read("pids.events"));
    let host_ok = std::process::Command::new("true")
        .status()
        .unwrap()
        .success();
    let (sent, failed) = load.finish().await;
    eprintln!(
        "fork bomb: pids.max {}, pids.current {}, {}; host can fork: {host_ok}; other app: sent {sent}, failed {}",
        max.trim(),
        current.trim(),
        events.trim(),
        failed.len()
    );
    let max: u64 = max.trim().parse().expect("pids.max");
    let current: u64 = current.trim().parse().expect("pids.current");
    assert!(max <= 4096, "pids.max {max}");
    assert!(
        current <= max && current + 50 >= max,
        "pids.current {current} of {max}"
    );
    assert_ne!(events.trim(), "max 0", "the limit was never hit");
    assert!(host_ok);
    assert!(failed.is_empty(), "{failed:?}");
    env.stop().await;
}

/// A CPU hog in a `c.125` slot gets about 12.5 % of one CPU (cpuacct over 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_hog_gets_its_slot_share() {
    if !can_run("cpu_hog_gets_its_slot_share") {
        return;
    }
    let _shared = shared().await;
    let env = GatewayHarness::start(|dir| {
        AppToml::archive("hog", busybox_archive(dir))
            .with(r#"slot = "c.125-m512""#)
            .to_string()
    })
    .await;
    assert_eq!(
        env.get("hog.localhost", "/").await.unwrap().status,
        StatusCode::OK
    );
    let id = env.instances("hog")[0].clone();
    let usage_file = env.cgroup("cpuacct", &id).join("cpuacct.usage");
    let usage = || -> u64 {
        std::fs::read_to_string(&usage_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let spin = tokio::spawn({
        let (client, addr) = (client(), env.addr());
        async move {
            send(
                &client,
                addr,
                "hog.localhost",
                Method::GET,
                "/cgi-bin/spin?4",
                b"",
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (u0, t0) = (usage(), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (u1, t1) = (usage(), Instant::now());
    let share = (u1 - u0) as f64 / (t1 - t0).as_nanos() as f64;
    let spun = spin.await.unwrap().unwrap();
    eprintln!("cpu hog in c.125: {:.1} % of one CPU", share * 100.0);
    assert_eq!(spun.body.trim(), "spun");
    assert!((0.08..=0.15).contains(&share), "share {share}");
    env.stop().await;
}

/// The admin API bound to a non-loopback address refuses requests without the token (401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_off_loopback_needs_the_token() {
    use serverless_core::fake::FakeBackend;
    let backend = std::sync::Arc::new(FakeBackend::new());
    let no_token =
        serverless_core::Config::from_toml("listen = \"127.0.0.1:0\"\nadmin = \"0.0.0.0:0\"\n")
            .unwrap();
    assert!(
        matches!(
            serverless_proxy::Gateway::start(no_token, backend.clone()).await,
            Err(serverless_proxy::GatewayError::AdminTokenRequired { .. })
        ),
        "a non-loopback admin address without a token must be refused"
    );
    let config = serverless_core::Config::from_toml(
        "listen = \"127.0.0.1:0\"\nadmin = \"0.0.0.0:0\"\nadmin_token = \"s3cret-s3cret-s3cret\"\n",
    )
    .unwrap();
    let gateway = serverless_proxy::Gateway::start(config, backend)
        .await
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], gateway.admin_addr().port()));
    let client = client();
    let ask = |auth: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut req = http::Request::get(format!("http://{addr}/v1/apps"));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let req = req
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            client.request(req).await.unwrap().status()
        }
    };
    let (none, wrong, right) = (
        ask(None).await,
        ask(Some("Bearer nope")).await,
        ask(Some("Bearer s3cret-s3cret-s3cret")).await,
    );
    eprintln!("admin on 0.0.0.0: no token → {none}, wrong token → {wrong}, token → {right}");
    assert_eq!(none, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong, StatusCode::UNAUTHORIZED);
    assert_eq!(right, StatusCode::OK);
    gateway.shutdown().await;
}

/// Writes an OCI image layout archive by hand (shell tools), so it can be wrong on purpose.
/// Each layer: (media type, path of the blob, its uncompressed tar or None to use the blob).
/// `missing`: a layer index whose blob is left out of the archive.
fn hand_made_archive(
    dir: &std::path::Path,
    name: &str,
    layers: &[(&str, std::path::PathBuf)],
    missing: Option<usize>,
) -> std::path::PathBuf {
    let sh = |script: &str| -> String {
        let out = std::process::Command::new("sh")
            .args(["-ec", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let layout = dir.join(format!("{name}-layout"));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let tmp = layout.join("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        let hex = sh(&format!("sha256sum {} | cut -d' ' -f1", tmp.display()));
        std::fs::rename(&tmp, blobs.join(&hex)).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, (media_type, blob)) in layers.iter().enumerate() {
        let p = blob.display();
        let hex = sh(&format!("sha256sum {p} | cut -d' ' -f1"));
        let size = std::fs::metadata(blob).unwrap().len();
        let diff = sh(&format!(
            "if gzip -t {p} 2>/dev/null; then gzip -dc {p} | sha256sum; else sha256sum < {p}; fi | cut -d' ' -f1"
        ));
        if missing != Some(i) {
            std::fs::copy(blob, blobs.join(&hex)).unwrap();
        }
        descs.push(serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": size}));
        diff_ids.push(format!("sha256:{diff}"));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "httpd", "-f", "-p", "8080"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descs,
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let out = dir.join(format!("{name}.tar"));
    sh(&format!(
        "tar -cf {} -C {} oci-layout index.json blobs",
        out.display(),
        layout.display()
    ));
    out
}

/// Broken and hostile image archives are refused with a clear error, and nothing of them is
/// left in containerd (content, snapshots, images); a decompression bomb is stopped by
/// `max_unpacked_bytes` without being expanded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_are_refused_and_leave_nothing() {
    if !can_run("bad_images_are_refused_and_leave_nothing") {
        return;
    }
    let _shared = shared().await;
    use serverless_core::{ContainerBackend, ErrorKind, ImageRef};
    const LIMIT: u64 = 16 << 20;
    let dir = tempfile::Builder::new()
        .prefix("sl-rel-")
        .tempdir()
        .unwrap();
    let containerd = Containerd::start(dir.path());
    let namespace = unique("relimg");
    let backend = serverless_containerd::ContainerdBackend::builder(dir.path().join("data"))
        .socket(&containerd.socket)
        .namespace(namespace.clone())
        .max_unpacked_bytes(LIMIT)
        .build()
        .await
        .unwrap();
    let sh = |script: String| {
        let ok = std::process::Command::new("sh")
            .args(["-ec", &script])
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    };
    let d = dir.path().display().to_string();
    // A small good layer (gzip) and a bomb: 256 MiB of zeros in a tar, gzipped to ~256 KiB.
    sh(format!(
        "mkdir -p {d}/good/bin && cp /bin/busybox {d}/good/bin/ && tar -cf - -C {d}/good bin | gzip -1 > {d}/good.tar.gz"
    ));
    sh(format!(
        "mkdir -p {d}/bomb && head -c 268435456 /dev/zero > {d}/bomb/zeros && tar -cf - -C {d}/bomb zeros | gzip -1 > {d}/bomb.tar.gz && rm {d}/bomb/zeros"
    ));
    let good = dir.path().join("good.tar.gz");
    let bomb = dir.path().join("bomb.tar.gz");
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let truncated = {
        let whole = busybox_archive(dir.path());
        let bytes = std::fs::read(&whole).unwrap();
        let p = dir.path().join("truncated.tar");
        std::fs::write(&p, &bytes[..bytes.len() * 6 / 10]).unwrap();
        p
    };
    let cases = [
        ("truncated archive", truncated),
        (
            "wrong media type",
            hand_made_archive(
                dir.path(),
                "mt",
                &[("application/vnd.example.not-a-layer", good.clone())],
                None,
            ),
        ),
        (
            "missing layer",
            hand_made_archive(dir.path(), "missing", &[(gz, good.clone())], Some(0)),
        ),
        (
            "zip bomb",
            hand_made_archive(
                dir.path(),
                "bomb",
                &[(gz, good.clone()), (gz, bomb.clone())],
                None,
            ),
        ),
    ];
    let leftovers = || {
        let ctr = |what: &str| containerd.ctr(&namespace, &[what, "ls"]);
        (ctr("content"), ctr("snapshots"), ctr("images"))
    };
    let mut figures = Vec::new();
    for (what, archive) in &cases {
        let app = serverless_testkit::loopback_app("img", ImageRef::OciArchive(archive.clone()));
        let err = backend
            .prepare(&app)
            .await
            .expect_err(&format!("{what} must be refused"));
        let left = leftovers();
        figures.push(format!(
            "{what}: {err} (left: {} content, {} snapshots, {} images)",
            left.0.len(),
            left.1.len(),
            left.2.len()
        ));
        assert_eq!(err.kind(), ErrorKind::Image, "{what}: {err}");
        assert!(
            left.0.is_empty() && left.1.is_empty() && left.2.is_empty(),
            "{what} left {left:?}"
        );
    }
    // The limit is not in the way of a good image with the same first layer.
    let fine = hand_made_archive(dir.path(), "fine", &[(gz, good.clone())], None);
    let ok = backend
        .prepare(&serverless_testkit::loopback_app(
            "img",
            ImageRef::OciArchive(fine),
        ))
        .await;
    eprintln!(
        "bad images:\n  {}\n  control image: {ok:?}",
        figures.join("\n  ")
    );
    assert!(figures
        .iter()
        .any(|f| f.starts_with("zip bomb") && f.contains("max_unpacked_bytes")));
    ok.unwrap();
    backend.shutdown().await.unwrap();
}

/// Writes `bytes` on a fresh connection, then reads until the gateway closes it (or `wait`
/// passes): what came back, and whether the connection was closed.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = conn.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: every header as a literal without indexing, new name, no Huffman.
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Hostile HTTP from raw TCP clients: each case is answered or cut off as the specs say, while
/// a well-behaved client keeps getting answers (0 failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_is_answered_or_cut_off() {
    use serverless_core::fake::FakeBackend;
    let _shared = shared().await;
    let backend = FakeBackend::new();
    let config = serverless_core::Config::from_toml(
        &GatewayToml::new()
            .top("[server]\nheader_read_timeout = \"1s\"\nmax_header_bytes = 16384")
            .app(
                AppToml::new("hello", "example/hello:1")
                    .with("[apps.limits]\nmax_concurrent_requests = 256"),
            )
            .to_string(),
    )
    .unwrap();
    let gateway = serverless_proxy::Gateway::start(config, std::sync::Arc::new(backend.clone()))
        .await
        .unwrap();
    let addr = gateway.listen_addr();
    let load = Load::start(addr, "hello.localhost", "/", 2);
    let h = "Host: hello.localhost\r\n";
    let mut figures = Vec::new();
    let mut check = |what: &str, (res, closed): (String, bool), ok: &dyn Fn(&str, bool) -> bool| {
        let line = format!("{what}: {:?}, closed: {closed}", status_line(&res));
        assert!(ok(&res, closed), "{line}\n{res}");
        figures.push(line);
    };
    let quick = Duration::from_secs(3);

    check(
        "malformed request line",
        raw_exchange(addr, b"GARBAGE\r\n\r\n", quick).await,
        &|r, closed| r.starts_with("HTTP/1.1 400") && closed,
    );
    check(
        "unknown HTTP version",
        raw_exchange(addr, format!("GET / HTTP/9.9\r\n{h}\r\n").as_bytes(), quick).await,
        &|r, closed| {
            (r.starts_with("HTTP/1.1 505") || r.starts_with("HTTP/1.1 400") || r.is_empty())
                && closed
        },
    );
    check(
        "control bytes in the target",
        raw_exchange(
            addr,
            format!("GET /\x01x HTTP/1.1\r\n{h}\r\n").as_bytes(),
            quick,
        )
        .await,
        &|r, closed| r.starts_with("HTTP/1.1 400") && closed,
    );
    // Smuggling: both framings. Either refused, or read as chunked (TE wins, RFC 9112 §6.3)
    // with the connection closed afterwards; never as Content-Length.
    check(
        "Content-Length + Transfer-Encoding",
        raw_exchange(
            addr,
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n{h}\r\n").as_bytes(),
            quick,
        )
        .await,
        &|r, closed| {
            r.starts_with("HTTP/1.1 400") && closed
                || (r.starts_with("HTTP/1.1 200")
                    && r.to_ascii_lowercase().contains("x-body-len: 0")
                    && r.matches("HTTP/1.1 ").count() == 1
                    && closed)
        },
    );
    check(
        "two different Content-Lengths",
        raw_exchange(
            addr,
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
                .as_bytes(),
            quick,
        )
        .await,
        &|r, closed| r.starts_with("HTTP/1.1 400") && closed,
    );
    check(
        "Transfer-Encoding other than chunked",
        raw_exchange(
            addr,
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: gzip\r\n\r\nxxxx").as_bytes(),
            quick,
        )
        .await,
        &|r, closed| r.starts_with("HTTP/1.1 400") || r.starts_with("HTTP/1.1 501") || closed,
    );
    let big = "x".repeat(32 * 1024);
    check(
        "32 KiB header over a 16 KiB limit",
        raw_exchange(
            addr,
            format!("GET / HTTP/1.1\r\n{h}X-Big: {big}\r\n\r\n").as_bytes(),
            quick,
        )
        .await,
        &|r, closed| r.starts_with("HTTP/1.1 431") && closed,
    );

    // Slowloris: a header byte every 100 ms; cut off after header_read_timeout (1 s).
    let slow = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let started = Instant::now();
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET / HTTP/1.1\r\nHost: hello.localhost\r\nX-Slow: {}",
            "a".repeat(200)
        );
        for b in head.bytes() {
            if conn.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut rest)).await;
        (
            started.elapsed(),
            String::from_utf8_lossy(&rest).into_owned(),
        )
    });
    let (took, answer) = slow.await.unwrap();
    figures.push(format!(
        "slowloris: cut off after {took:?} ({:?})",
        status_line(&answer)
    ));
    assert!(
        took < Duration::from_secs(5),
        "slowloris held the connection {took:?}"
    );

    // HTTP/2 rapid reset (CVE-2023-44487): 5000 streams opened and reset at once.
    let started_before = backend.started();
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frames.extend(h2_frame(0x4, 0, 0, &[]));
    let block = hpack(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/sleep/1000"),
        (":authority", "hello.localhost"),
    ]);
    for i in 0..5000u32 {
        let stream = 2 * i + 1;
        frames.extend(h2_frame(0x1, 0x4 | 0x1, stream, &block)); // HEADERS, END_HEADERS|END_STREAM
        frames.extend(h2_frame(0x3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let reset_started = Instant::now();
    let attack =
        tokio::spawn(async move { raw_exchange(addr, &frames, Duration::from_secs(10)).await });
    // Another client during the attack.
    let during = send(&client(), addr, "hello.localhost", Method::GET, "/", b"").await;
    let (reply, closed) = attack.await.unwrap();
    // GOAWAY is frame type 7; its error code ENHANCE_YOUR_CALM is 0xb.
    let goaway = reply.as_bytes().windows(2).any(|w| w == [0x07, 0x00]);
    figures.push(format!(
        "h2 rapid reset (5000 streams): connection closed {closed} after {:?}, GOAWAY seen {goaway}; other client during it → {:?}; instances started {}",
        reset_started.elapsed(),
        during.as_ref().map(|a| a.status),
        backend.started() - started_before
    ));
    assert!(closed, "the attacking connection stayed open");
    assert_eq!(during.unwrap().status, StatusCode::OK);

    let (sent, failed) = load.finish().await;
    eprintln!(
        "hostile HTTP:\n  {}\n  well-behaved client: sent {sent}, failed {}",
        figures.join("\n  "),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    gateway.shutdown().await;
}
