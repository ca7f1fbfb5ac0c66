//! `network = "bridge"` on a real containerd: egress by IP and by name, the `none` mode's
//! failure for the same fetch, isolation paths tried from inside an instance, and nothing left
//! after cycles, a crashed run or a containerd restart.
//!
//! Test traffic never reaches the machine's own network: each test builds its world out of
//! network namespaces of its own, a [`NetLab`](serverless_testkit::NetLab) (an `outside` with
//! HTTP and DNS servers, and the `engine` namespace where the backend's bridge, NAT and rules
//! live). The gateway side (`connect`) dials the instance's own loopback inside its namespace,
//! as always.

use std::process::{Command, Stdio};
use std::time::Duration;

use serverless_core::{ContainerBackend, NetworkMode};
use serverless_testkit::{
    busybox_sh, can_run_with, network_on_disk as on_disk, network_settled as settled,
    BackendHarness, NetLab as Lab, BUSYBOX,
};

const PROGRAMS: &[(&str, &str)] = serverless_testkit::NETLAB_PROGRAMS;

/// Fetches the outside server by IP and by name at startup into `/www/ip` and `/www/name`,
/// then serves `/www`. busybox's own clients do the work: `nslookup` (its DNS client, reading
/// `/etc/resolv.conf`) and `nc` (Debian's static busybox `wget` crashes in glibc's static
/// NSS inside a container).
fn fetching_app(
    h: &BackendHarness,
    lab: &Lab,
    name: &str,
    mode: NetworkMode,
) -> serverless_core::AppSpec {
    let mut app = h.app(name);
    app.network = mode;
    app.command = busybox_sh(&format!(
        "cd /www; bb=/bin/busybox; \
         fetch() {{ printf 'GET / HTTP/1.0\\r\\nHost: outside.test\\r\\n\\r\\n' | $bb nc -w 3 \"$1\" 80 > \"$2\" 2>err || echo \"FAILED: $($bb cat err)\" > \"$2\"; }}; \
         $bb cat /etc/resolv.conf /etc/hosts /etc/hostname > etc; \
         fetch {} ip; \
         addr=$($bb nslookup outside.test 2>err | $bb awk '/^Name:/ {{n=1; next}} n && /^Address/ {{print $NF; exit}}'); \
         if [ -n \"$addr\" ]; then fetch \"$addr\" name; else echo \"FAILED: no address: $($bb cat err)\" > name; fi; \
         exec $bb httpd -f -p $PORT -h /www",
        lab.outside_ip()
    ));
    app.limits.startup_timeout = Duration::from_secs(20);
    app
}

async fn get(h: &BackendHarness, id: &serverless_core::InstanceId, path: &str) -> String {
    let mut conn = h.backend.connect(id).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("a network test step");
    let mut out = String::new();
    conn.read_to_string(&mut out)
        .await
        .expect("a network test step");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_reaches_the_outside_by_ip_and_name_and_none_does_not() {
    if !can_run_with(
        "bridge_reaches_the_outside_by_ip_and_name_and_none_does_not",
        PROGRAMS,
    ) {
        return;
    }
    let lab = Lab::new(11);
    let h = lab.backend(0).await;

    let app = fetching_app(&h, &lab, "egress", NetworkMode::Bridge);
    let id = h.id("egress");
    h.backend.start(&app, &id).await.expect("start bridge");
    let by_ip = get(&h, &id, "/ip").await;
    let by_name = get(&h, &id, "/name").await;
    assert!(by_ip.contains("hello from outside"), "{by_ip}");
    assert!(by_name.contains("hello from outside"), "{by_name}");
    let etc = get(&h, &id, "/etc").await;
    assert!(
        etc.contains(&format!("nameserver {}\n", lab.outside_ip())),
        "{etc}"
    );
    let ip = instance_ip(&h, &id);
    assert!(
        etc.contains(&format!("{ip}\t{id}\n")),
        "/etc/hosts names the instance: {etc}"
    );
    assert!(etc.ends_with(&format!("\n{id}\n")), "/etc/hostname: {etc}");
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");

    let app = fetching_app(&h, &lab, "sealed", NetworkMode::None);
    let id = h.id("sealed");
    h.backend.start(&app, &id).await.expect("start none");
    let by_ip = get(&h, &id, "/ip").await;
    let by_name = get(&h, &id, "/name").await;
    assert!(
        by_ip.contains("FAILED") && !by_ip.contains("hello from outside"),
        "{by_ip}"
    );
    assert!(
        by_name.contains("FAILED") && !by_name.contains("hello from outside"),
        "{by_name}"
    );
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    h.shutdown().await;
}

/// The instance's address, from the CNI result the backend keeps with the namespace it took.
fn instance_ip(h: &BackendHarness, id: &serverless_core::InstanceId) -> String {
    let wired = h.dir.path().join("data/network/wired");
    let dir = std::fs::read_dir(&wired)
        .expect("a network test step")
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|d| std::fs::read_to_string(d.join("instance")).is_ok_and(|o| o == id.as_str()))
        .unwrap_or_else(|| panic!("no namespace of {id} under {}", wired.display()));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).expect("result.json"))
            .expect("a network test step");
    v["ips"][0]["address"]
        .as_str()
        .expect("a network test step")
        .split('/')
        .next()
        .expect("a network test step")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_reaches_neither_another_instance_nor_the_host() {
    if !can_run_with(
        "an_instance_reaches_neither_another_instance_nor_the_host",
        PROGRAMS,
    ) {
        return;
    }
    let lab = Lab::new(12);
    let h = lab.backend(0).await;
    let mut app = h.app("iso");
    app.network = NetworkMode::Bridge;
    let (a, b) = (h.id("iso"), h.id("other"));
    h.backend.start(&app, &a).await.expect("start a");
    let mut other = h.app("other");
    other.network = NetworkMode::Bridge;
    h.backend.start(&other, &b).await.expect("start b");
    let b_ip = instance_ip(&h, &b);

    // The same probe is open towards the outside and towards the host service from outside:
    // the refusals below are the rules', not a broken probe or a missing server.
    let control = get(&h, &a, &format!("/cgi-bin/probe?{}+80", lab.outside_ip())).await;
    assert!(control.contains("open"), "{control}");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.outside,
            BUSYBOX,
            "nc",
            "-w",
            "2",
            &lab.uplink_ip(),
            "7777",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("a network test step");
    assert!(
        out.status.success(),
        "the host service answers from outside"
    );

    for (what, host, port) in [
        ("another app's instance", b_ip.as_str(), "8080"),
        ("the host on the bridge", &lab.bridge_ip(), "7777"),
        ("the host's uplink address", &lab.uplink_ip(), "7777"),
    ] {
        let answer = get(&h, &a, &format!("/cgi-bin/probe?{host}+{port}")).await;
        assert!(answer.contains("closed"), "{what} {host}:{port}: {answer}");
    }
    // And the other way round.
    let a_ip = instance_ip(&h, &a);
    let answer = get(&h, &b, &format!("/cgi-bin/probe?{a_ip}+8080")).await;
    assert!(answer.contains("closed"), "instance to instance: {answer}");
    // A second instance of the same app.
    let c = h.id("iso");
    h.backend.start(&app, &c).await.expect("start c");
    let answer = get(&h, &c, &format!("/cgi-bin/probe?{a_ip}+8080")).await;
    assert!(answer.contains("closed"), "same app: {answer}");

    for id in [&a, &b, &c] {
        h.backend.stop(id, Duration::ZERO).await.expect("stop");
    }
    h.shutdown().await;
}

/// Cold-start cycles with the default pool (2 namespaces wired ahead): at the same steady state
/// (pool full, no instance) the data dir, the engine namespace's links and its rules are what
/// they were after the first cycle, and shutdown leaves no veth, lease, mount or rule of ours.
/// `SERVERLESS_NETWORK_CYCLES` sets the count: the default, 75, fits ~60 s on a loaded 2-core
/// machine (~0.8 s a cycle in a debug build, the stop's CNI DEL and the background ADD
/// included); the 1000 passed in 295 s on a quieter machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_leave_leases_links_and_rules_at_baseline() {
    if !can_run_with("cycles_leave_leases_links_and_rules_at_baseline", PROGRAMS) {
        return;
    }
    let cycles: usize =
        serverless_testkit::env_num("SERVERLESS_NETWORK_CYCLES", 75).expect("a cycle count");
    let lab = Lab::new(13);
    let h = lab.backend(2).await;
    let data = h.dir.path().join("data");
    let mut app = h.app("cycle");
    app.network = NetworkMode::Bridge;
    // One cycle first: the bridge and the chains exist from then on, and the pool fills.
    let warm = h.id("cycle");
    h.backend.start(&app, &warm).await.expect("start");
    h.backend.stop(&warm, Duration::ZERO).await.expect("stop");
    let steady = || settled(&data, 2, "");
    serverless_testkit::eventually("the pool is full", steady).await;
    let (_, baseline_leases, baseline_mounts) = on_disk(&data);
    let (baseline_links, baseline_rules) = lab.state();
    assert_eq!(
        (baseline_leases.len(), baseline_mounts, lab.veths()),
        (2, 2, 2)
    );

    let t = tokio::time::Instant::now();
    let mut pooled = 0;
    for i in 0..cycles {
        let id = h.id("cycle");
        let started = h.backend.start(&app, &id).await.expect("start");
        pooled += usize::from(started.phases.iter().any(|(p, _)| *p == "network_pooled"));
        if i % 10 == 0 {
            assert!(get(&h, &id, "/").await.contains("hello from busybox"));
        }
        h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    }
    let elapsed = t.elapsed();
    serverless_testkit::eventually("the pool is full again", steady).await;
    let (_, leases, mounts) = on_disk(&data);
    let (links, rules) = lab.state();
    eprintln!(
        "{cycles} bridge cycles in {elapsed:?} ({:?} each), {pooled} from the pool",
        elapsed / cycles.max(1) as u32
    );
    assert!(
        pooled * 2 >= cycles,
        "only {pooled} of {cycles} starts were pooled"
    );
    assert_eq!((leases.len(), mounts), (2, 2), "{leases:?}");
    assert_eq!(links.len(), baseline_links.len(), "{links:?}");
    assert_eq!(lab.veths(), 2);
    // Rule names carry each namespace's id: the count is what must not grow.
    assert_eq!(rules.len(), baseline_rules.len(), "{rules:#?}");

    let data_dir = data.display().to_string();
    h.shutdown().await;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(&data_dir),
        "a namespace file is still mounted"
    );
    let (_, rules) = lab.state();
    assert_eq!(lab.veths(), 0);
    assert!(
        !rules
            .iter()
            .any(|r| r.contains("SLS-IN") || r.contains("CNI-DN")),
        "{rules:#?}"
    );
    assert!(
        rules.len() < baseline_rules.len(),
        "the pool's NAT rules are gone"
    );
}

/// containerd killed (SIGKILL) while bridge instances run and restarted: a start while it is
/// down fails and releases its namespace; the instances stop and the backend shuts down after
/// the restart with nothing of the network left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containerd_restart_leaves_no_namespace_behind() {
    if !can_run_with("a_containerd_restart_leaves_no_namespace_behind", PROGRAMS) {
        return;
    }
    let lab = Lab::new(16);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut containerd = serverless_testkit::Containerd::start(dir.path());
    let data = dir.path().join("data");
    let backend = serverless_containerd::ContainerdBackend::builder(&data)
        .socket(&containerd.socket)
        .namespace(serverless_testkit::unique("net-restart"))
        .spare_shim(false)
        .network(lab.network())
        .network_host_netns(lab.engine_netns())
        .network_pool(1)
        .build()
        .await
        .expect("a backend on the test's containerd");
    let image = serverless_testkit::busybox_archive(dir.path());
    let mut app =
        serverless_core::AppSpec::new("restart", serverless_core::ImageRef::OciArchive(image));
    app.network = NetworkMode::Bridge;
    backend.prepare(&app).await.expect("prepare");
    let ids: Vec<_> = (0..2)
        .map(|_| serverless_core::InstanceId::new(serverless_testkit::unique("restart")))
        .collect();
    for id in &ids {
        backend.start(&app, id).await.expect("start");
    }
    serverless_testkit::eventually("the pool is full", || on_disk(&data).0 == 3).await;

    containerd.kill9();
    let down = serverless_core::InstanceId::new(serverless_testkit::unique("restart"));
    let err = backend
        .start(&app, &down)
        .await
        .expect_err("a start while containerd is down");
    eprintln!("start while containerd is down: {err}");
    containerd.restart();
    // The failed start's namespace was released; the pool refills to one.
    serverless_testkit::eventually("two instances and a full pool", || {
        settled(&data, 3, down.as_str())
    })
    .await;
    for id in &ids {
        let mut stopped = false;
        for _ in 0..50 {
            if backend.stop(id, Duration::ZERO).await.is_ok() {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(stopped, "stop {id} after the restart");
    }
    backend.shutdown().await.expect("shutdown");
    let (wired, leases, mounts) = on_disk(&data);
    assert_eq!((wired, leases.len(), mounts), (0, 0, 0), "{leases:?}");
    let (_, rules) = lab.state();
    assert_eq!(lab.veths(), 0);
    assert!(!rules.iter().any(|r| r.contains("SLS-IN")), "{rules:#?}");
    drop(containerd);
}

/// Figures for the architecture doc: a cold start's phases with `none`, with a namespace wired
/// on the start (pool 0) and with one from the pool.
async fn start_phases(
    h: &BackendHarness,
    app: &serverless_core::AppSpec,
) -> (Duration, Vec<(&'static str, Duration)>) {
    let id = h.id(&app.name);
    let t = tokio::time::Instant::now();
    let started = h.backend.start(app, &id).await.expect("start");
    let total = t.elapsed();
    let stop = tokio::time::Instant::now();
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    eprintln!(
        "{}: start {total:?} stop {:?} {:?}",
        app.name,
        stop.elapsed(),
        started.phases
    );
    (total, started.phases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_of_a_bridge_app_fills_the_pool_so_the_first_start_is_pooled() {
    if !can_run_with(
        "prepare_of_a_bridge_app_fills_the_pool_so_the_first_start_is_pooled",
        PROGRAMS,
    ) {
        return;
    }
    let lab = Lab::new(17);
    let h = lab.backend(2).await;
    let mut bridge = h.app("first");
    bridge.network = NetworkMode::Bridge;
    let wired = || {
        std::fs::read_dir(h.dir.path().join("data/network/wired"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(
        wired(),
        0,
        "nothing is wired before a bridge app is prepared"
    );
    h.backend.prepare(&bridge).await.expect("prepare");
    // `settled` returns once the fill is done: two namespaces, each with its ADD result.
    tokio::time::timeout(Duration::from_secs(30), h.backend.settled())
        .await
        .expect("the backend settles within 30 s");
    let complete = std::fs::read_dir(h.dir.path().join("data/network/wired"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().join("result.json").exists())
                .count()
        })
        .unwrap_or(0);
    assert_eq!((wired(), complete), (2, 2), "the pool after settled");
    // The first cold start of the app takes a wired namespace: no CNI on its path.
    let (_, phases) = start_phases(&h, &bridge).await;
    assert!(
        phases.iter().any(|(p, _)| *p == "network_pooled"),
        "{phases:?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_namespace_keeps_cni_off_the_start_and_shutdown_releases_the_pool() {
    if !can_run_with(
        "a_pooled_namespace_keeps_cni_off_the_start_and_shutdown_releases_the_pool",
        PROGRAMS,
    ) {
        return;
    }
    let lab = Lab::new(14);
    let h = lab.backend(2).await;
    let mut bridge = h.app("pooled");
    bridge.network = NetworkMode::Bridge;
    let none = h.app("sealed");
    let data = h.dir.path().join("data/network");
    let wired = || {
        std::fs::read_dir(data.join("wired"))
            .expect("a network test step")
            .count()
    };
    // The first bridge start wires its own namespace and starts the pool's fill.
    let (_, phases) = start_phases(&h, &bridge).await;
    assert!(
        phases.iter().any(|(p, _)| *p == "network_wired"),
        "{phases:?}"
    );
    serverless_testkit::eventually("the pool is full", || wired() == 2).await;
    for _ in 0..5 {
        let (_, phases) = start_phases(&h, &bridge).await;
        assert!(
            phases.iter().any(|(p, _)| *p == "network_pooled"),
            "{phases:?}"
        );
        start_phases(&h, &none).await;
        serverless_testkit::eventually("the pool is refilled", || wired() == 2).await;
    }
    let data = data.display().to_string();
    h.shutdown().await;
    // The data dir is gone with the harness: what shutdown must have released is the kernel's.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("a network test step");
    assert!(!mounts.contains(&data), "a namespace file is still mounted");
    let (links, rules) = lab.state();
    assert!(!links.iter().any(|l| l.starts_with("veth")), "{links:?}");
    assert!(!rules.iter().any(|r| r.contains("SLS-IN")), "{rules:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_releases_a_previous_runs_namespaces() {
    if !can_run_with("reconcile_releases_a_previous_runs_namespaces", PROGRAMS) {
        return;
    }
    let lab = Lab::new(15);
    let h = lab.backend(1).await;
    let data = h.dir.path().join("data");
    let wired = || {
        std::fs::read_dir(data.join("network/wired"))
            .expect("a network test step")
            .count()
    };
    // A previous run on the same data dir and namespace, gone (as after a SIGKILL of the
    // gateway) once it started an instance and filled its pool.
    let previous = serverless_containerd::ContainerdBackend::builder(&data)
        .socket(h.backend.socket())
        .namespace(h.backend.namespace())
        .spare_shim(false)
        .network(lab.network())
        .network_host_netns(lab.engine_netns())
        .network_pool(1)
        .build()
        .await
        .expect("the previous run's backend");
    let mut app = h.app("crashed");
    app.network = NetworkMode::Bridge;
    let id = h.id("crashed");
    previous.start(&app, &id).await.expect("start");
    serverless_testkit::eventually("the pool is full", || wired() == 2).await;
    drop(previous);

    assert_eq!(h.backend.reconcile().await.expect("reconcile"), 1);
    assert_eq!(
        wired(),
        0,
        "the instance's and the pool's namespaces are released"
    );
    let leases: Vec<_> = std::fs::read_dir(data.join("network/ipam/serverless"))
        .expect("a network test step")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
    let (links, _) = lab.state();
    assert!(!links.iter().any(|l| l.starts_with("veth")), "{links:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&*data.to_string_lossy()),
        "a namespace file is still mounted"
    );
    // The crashed run's isolation rules go with the next run's shutdown.
    h.shutdown().await;
    let (_, rules) = lab.state();
    assert!(!rules.iter().any(|r| r.contains("SLS-IN")), "{rules:#?}");
}
