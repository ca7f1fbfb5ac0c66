//! `network = "bridge"` on a real containerd: egress by IP and by name, the `none` mode's
//! failure for the same fetch, isolation paths tried from inside an instance, and nothing left
//! after cycles.
//!
//! Test traffic never reaches the machine's own network. Each test builds its world out of
//! network namespaces of its own ([`Lab`]):
//!
//! - `outside`: the "internet", holding an HTTP server (busybox httpd) and a DNS server
//!   (dnsmasq, `outside.test` → the server) on `10.251.N.2/24`;
//! - `engine`: where the backend's CNI plugins run (`Builder::network_host_netns`), so the
//!   bridge, its NAT and the isolation rules live there; its only interface besides loopback
//!   and the bridge is a veth into `outside` (`10.251.N.1/24`), and its default route points
//!   there.
//!
//! Instances' veths end on that bridge, so whatever an instance sends is either dropped by the
//! engine namespace's rules or routed to `outside`, which has no other link: nothing can reach
//! the host's namespace. The gateway side (`connect`) dials the instance's own loopback inside
//! its namespace, as always. The subnets (`10.251.N.0/24` and the instances' `10.252.N.0/24`)
//! are checked not to overlap the machine's routes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serverless_core::{ContainerBackend, NetworkConfig, NetworkMode};
use serverless_testkit::{busybox_sh, can_run_with, BackendHarness, BUSYBOX};

const PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("dnsmasq", "dnsmasq-base"),
    ("nsenter", "util-linux"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
];

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespaces, servers and addresses of one test's world; removed on drop.
struct Lab {
    outside: String,
    engine: String,
    /// The third octet of this lab's subnets.
    n: u8,
    servers: Vec<Child>,
    _www: tempfile::TempDir,
}

impl Lab {
    fn new(n: u8) -> Self {
        let routes = run(&["ip", "-4", "route", "show", "table", "all"]);
        for net in [format!("10.251.{n}."), format!("10.252.{n}.")] {
            assert!(
                !routes.contains(&net),
                "{net}0/24 overlaps a route of this machine"
            );
        }
        let tag = format!("{}-{n}", std::process::id());
        let outside = format!("slo-{tag}");
        let engine = format!("sle-{tag}");
        run(&["ip", "netns", "add", &outside]);
        run(&["ip", "netns", "add", &engine]);
        let www = tempfile::tempdir().expect("temp dir");
        let mut lab = Self {
            outside,
            engine,
            n,
            servers: Vec::new(),
            _www: www,
        };
        let (o, e) = (lab.outside.clone(), lab.engine.clone());
        // The veth is made inside `engine` with its peer moved straight into `outside`.
        run(&[
            "ip", "-n", &e, "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns",
            &o,
        ]);
        for (ns, dev, addr) in [(&o, "out0", lab.outside_ip()), (&e, "up0", lab.uplink_ip())] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        run(&[
            "ip",
            "-n",
            &e,
            "route",
            "add",
            "default",
            "via",
            &lab.outside_ip(),
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            &e,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        std::fs::write(lab._www.path().join("index.html"), "hello from outside\n")
            .expect("a network test step");
        let www = lab._www.path().display().to_string();
        let httpd = format!("{}:80", lab.outside_ip());
        lab.spawn(&o, &[BUSYBOX, "httpd", "-f", "-p", &httpd, "-h", &www]);
        let dns = format!("--address=/outside.test/{}", lab.outside_ip());
        let listen = format!("--listen-address={}", lab.outside_ip());
        lab.spawn(
            &o,
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &listen,
                &dns,
                "--user=root",
                "--pid-file=",
            ],
        );
        // A service on the engine's host side, standing for the gateway, admin and anything
        // bound on the host: instances must not reach it.
        lab.spawn(&e, &[BUSYBOX, "httpd", "-f", "-p", "7777", "-h", &www]);
        // The lab is built before any async work: give the servers a moment to bind.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(300));
        lab
    }

    fn spawn(&mut self, ns: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a lab server");
        self.servers.push(child);
    }

    fn outside_ip(&self) -> String {
        format!("10.251.{}.2", self.n)
    }
    fn uplink_ip(&self) -> String {
        format!("10.251.{}.1", self.n)
    }
    fn bridge_ip(&self) -> String {
        format!("10.252.{}.1", self.n)
    }

    fn engine_netns(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.engine)
    }

    fn network(&self) -> NetworkConfig {
        NetworkConfig {
            subnet: serverless_core::config::Ipv4Subnet {
                addr: [10, 252, self.n, 0].into(),
                prefix: 24,
            },
            nameservers: Some(vec![self
                .outside_ip()
                .parse()
                .expect("the outside server's address")]),
            ..NetworkConfig::default()
        }
    }

    /// A backend whose bridge lives in this lab's engine namespace, keeping `pool`
    /// namespaces wired ahead.
    async fn backend(&self, pool: usize) -> BackendHarness {
        let (network, netns) = (self.network(), self.engine_netns());
        BackendHarness::start_with(move |b| {
            b.network(network)
                .network_host_netns(netns)
                .network_pool(pool)
        })
        .await
    }

    /// What the engine namespace holds that an instance could leak: links and rules.
    fn state(&self) -> (Vec<String>, Vec<String>) {
        let links = run(&["ip", "-n", &self.engine, "-o", "link", "show"])
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|s| s.split('@').next().unwrap_or(s).to_owned())
            })
            .collect();
        let mut rules: Vec<String> = ["filter", "nat"]
            .iter()
            .flat_map(|t| {
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &self.engine,
                    "iptables",
                    "-w",
                    "5",
                    "-t",
                    t,
                    "-S",
                ])
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
            })
            .collect();
        rules.sort();
        (links, rules)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in [&self.engine, &self.outside] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_leave_leases_links_and_rules_at_baseline() {
    if !can_run_with("cycles_leave_leases_links_and_rules_at_baseline", PROGRAMS) {
        return;
    }
    let lab = Lab::new(13);
    let h = lab.backend(0).await;
    let mut app = h.app("cycle");
    app.network = NetworkMode::Bridge;
    // One cycle first: the bridge and the engine's chains exist from then on.
    let warm = h.id("cycle");
    h.backend.start(&app, &warm).await.expect("start");
    h.backend.stop(&warm, Duration::ZERO).await.expect("stop");
    let baseline = lab.state();
    let data = h.dir.path().join("data/network");
    let leases = || {
        std::fs::read_dir(data.join("ipam/serverless"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with("10."))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    for _ in 0..5 {
        let id = h.id("cycle");
        let started = h.backend.start(&app, &id).await.expect("start");
        assert_eq!(leases().len(), 1);
        assert!(get(&h, &id, "/").await.contains("hello from busybox"));
        let t = tokio::time::Instant::now();
        h.backend.stop(&id, Duration::ZERO).await.expect("stop");
        eprintln!(
            "cycle: {:?}, stop {:?}",
            started.phases.first(),
            t.elapsed()
        );
    }
    assert_eq!(lab.state(), baseline);
    assert!(leases().is_empty(), "{:?}", leases());
    assert_eq!(
        std::fs::read_dir(data.join("wired"))
            .expect("a network test step")
            .count(),
        0
    );

    h.shutdown().await;
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
    h.shutdown().await;
}
