//! Gateway restarts with `network = "bridge"` (issue 14's "SIGKILL of the gateway" leak check):
//! the real `serverless serve`, run inside a [`NetLab`]'s engine namespace (its bridge, NAT and
//! rules live there), SIGKILLed while bridge instances run and started again on the same
//! `data_dir`. The next gateway adopts the instance of an unchanged app with its network (the
//! namespace, address lease, veth and rules survive its reconcile; the instance still fetches
//! from the outside server by name and the gateway still dials it), replaces a changed app's
//! instance and releases what that one held, releases the killed run's pool and fills its own;
//! the isolation rules stay in place (not rebuilt under the adopted instance). An upgrade (a
//! second `serve` taking over) keeps all of it. Removing the adopted app then releases its
//! network at once, and SIGTERM leaves no veth, lease, mounted namespace or rule of ours. And
//! when the instances and the kernel's state died with the gateway (as after a reboot), the
//! next one releases every namespace directory and lease the data dir kept. A bridge app with a
//! standby keeps the same footprint across a SIGKILL and a containerd restart too.
//!
//! Needs root, `containerd`, `runc`, `ctr` and what a [`NetLab`] needs ([`NETLAB_PROGRAMS`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};
use serverless_testkit::*;
use tokio::time::Instant;

const HELLO: &str = env!("CARGO_BIN_EXE_serverless-hello");
const SERVERLESS: &str = env!("CARGO_BIN_EXE_serverless");

/// `GET path` for app `host` through the gateway at `addr` in the lab.
async fn get(lab: &NetLab, addr: SocketAddr, host: &str, path: &str) -> Answer {
    lab.send(addr, host, Method::GET, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} for {host}: {e}"))
}

/// `GET /` for `host`: 200 and the answering process's identity (`x-hello-instance`: its
/// container's hostname and a random suffix drawn when it started).
async fn instance_of(lab: &NetLab, addr: SocketAddr, host: &str) -> String {
    let answer = get(lab, addr, host, "/").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.headers["x-hello-instance"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// `GET /fetch` for `host`: the app fetched `http://outside.test/` (DNS and egress through
/// the bridge's NAT) and returned what it got.
async fn fetches(lab: &NetLab, addr: SocketAddr, host: &str) {
    let answer = get(lab, addr, host, "/fetch").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(
        answer
            .body
            .contains("GET http://outside.test/: 200 OK\nhello from outside"),
        "{answer:?}"
    );
}

/// The admin address a gateway logged.
fn admin_addr(gateway: &GatewayProcess) -> SocketAddr {
    gateway
        .log()
        .split("admin on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no admin address: {}", gateway.log()))
}

/// The namespace taken by an instance of `app` (instance ids start with the app's name).
fn taken_by(data: &Path, app: &str) -> Wired {
    let wired = network_wired(data);
    let mut of_app = wired.iter().filter(|w| {
        w.instance
            .as_deref()
            .is_some_and(|i| i.starts_with(&format!("{app}-")))
    });
    let found = of_app
        .next()
        .unwrap_or_else(|| panic!("no namespace of app {app}: {wired:#?}"))
        .clone();
    assert!(
        of_app.next().is_none(),
        "two instances of {app}: {wired:#?}"
    );
    found
}

/// The lab's links and rules, the data dir's leases and mounts: what must be the same at the
/// same steady state (the same number of instances and a full pool).
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    wired: usize,
    leases: usize,
    mounts: usize,
    veths: usize,
    links: usize,
    rules: usize,
}

fn footprint(lab: &NetLab, data: &Path) -> Footprint {
    let (wired, leases, mounts) = network_on_disk(data);
    let (links, rules) = lab.state();
    Footprint {
        wired,
        leases: leases.len(),
        mounts,
        veths: lab.veths(),
        links: links.len(),
        rules: rules.len(),
    }
}

/// Tries a TCP connection from the network namespace of `wired` (an instance's) to the host
/// service of the lab (port 7777 on the bridge's address): whether it was refused.
fn host_refused(lab: &NetLab, wired: &Wired) -> bool {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", wired.dir.join("netns").display()))
        .args(["--", BUSYBOX, "nc", "-w", "2", &lab.bridge_ip(), "7777"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    !out.status.success()
}

/// How many TCP connections the isolation rules refused (the packet counter of the
/// `tcp-reset` rule of the bridge's input chain); `None` when the chain does not exist.
fn refused_count(lab: &NetLab) -> Option<u64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.engine])
        .args(["iptables", "-w", "5", "-S", "SLS-IN-sls0", "-v"])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let rules = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = rules
        .lines()
        .find(|l| l.contains("tcp-reset"))
        .unwrap_or_else(|| panic!("no tcp-reset rule: {rules}"));
    let mut words = line.split_whitespace();
    words.find(|w| *w == "-c");
    words.next().and_then(|n| n.parse().ok())
}

/// Whether no line of the gateway's log says `app` cold-started an instance.
fn no_cold_start(log: &str, app: &str) -> bool {
    !log.lines()
        .map(plain)
        .any(|l| l.contains("instance ready") && l.contains(&format!(" app={app} ")))
}

/// A log line without its terminal colours (`ESC [ … m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// A test's gateway setup: its own containerd (in this process's network namespace) and
/// containerd namespace, a `data_dir`, the hello app's archive and the config file.
struct World {
    dir: tempfile::TempDir,
    containerd: Containerd,
    namespace: String,
    data: PathBuf,
    image: PathBuf,
    config: PathBuf,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("sl-nr-").tempdir().unwrap();
        let containerd = Containerd::start(dir.path());
        let image = hello_archive(HELLO, dir.path());
        Self {
            containerd,
            namespace: unique("net-restart"),
            data: dir.path().join("gw"),
            image,
            config: dir.path().join("serverless.toml"),
            dir,
        }
    }

    /// Two bridge apps that fetch `outside.test`: `kept`, and `changed` with `GREETING`.
    fn write(&self, lab: &NetLab, greeting: &str) {
        std::fs::write(
            &self.config,
            format!(
                r#"
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
data_dir = "{data}"
[containerd]
socket = "{socket}"
namespace = "{namespace}"
[network]
subnet = "10.252.{n}.0/24"
nameservers = ["{dns}"]
[[apps]]
name = "kept"
image = "oci-archive:{image}"
network = "bridge"
env = {{ FETCH_URL = "http://outside.test/" }}
limits = {{ idle_timeout = "10m" }}
[[apps]]
name = "changed"
image = "oci-archive:{image}"
network = "bridge"
env = {{ FETCH_URL = "http://outside.test/", GREETING = "{greeting}" }}
limits = {{ idle_timeout = "10m" }}
"#,
                data = self.data.display(),
                socket = self.containerd.socket.display(),
                namespace = self.namespace,
                n = lab.n,
                dns = lab.outside_ip(),
                image = self.image.display(),
            ),
        )
        .unwrap();
    }
}

/// A failed test's instances are removed and its namespaces, which stay mounted in this
/// mount namespace, unmounted.
impl Drop for World {
    fn drop(&mut self) {
        remove_all(
            &self.containerd.socket,
            &self.namespace,
            &self.dir.path().join("cleanup"),
        );
        umount_all(&self.data);
    }
}

/// Unmounts (lazily) whatever is mounted under `dir`.
fn umount_all(dir: &Path) {
    let dir = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if point.starts_with(&dir) {
            let _ = std::process::Command::new("umount")
                .args(["--lazy", point])
                .status();
        }
    }
}

/// Two bridge apps, both cold-started and fetching by name; SIGKILL; the config changes one
/// app's env; a second gateway adopts the unchanged app's instance and its network (same
/// process answers and still fetches; its namespace directory, lease and veth are the ones it
/// had) and replaces the changed app's (its namespace, lease and veth are gone); the killed
/// run's pool is released and the new one fills, so links, rules, leases and mounts are what
/// they were before the kill; the host service stays refused to the adopted instance, by the
/// same rules (their counter kept). An upgrade changes none of it. Removing the adopted app
/// (admin API) releases its namespace, lease and veth at once; SIGTERM leaves none and no rule
/// of ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_gateway_adopts_bridge_instances_with_their_network() {
    if !can_run_with(
        "sigkilled_gateway_adopts_bridge_instances_with_their_network",
        NETLAB_PROGRAMS,
    ) {
        return;
    }
    let t0 = Instant::now();
    let lab = NetLab::new(51);
    let world = World::new();
    let (data, config, containerd, namespace) = (
        &world.data,
        &world.config,
        &world.containerd,
        &world.namespace,
    );
    let write = |greeting: &str| world.write(&lab, greeting);
    write("one");

    // 1. Cold starts; both apps fetch by name.
    let first = GatewayProcess::start_in(&lab, SERVERLESS.as_ref(), config).await;
    let addr = first.addr;
    let kept = instance_of(&lab, addr, "kept.localhost").await;
    let changed = instance_of(&lab, addr, "changed.localhost").await;
    fetches(&lab, addr, "kept.localhost").await;
    fetches(&lab, addr, "changed.localhost").await;
    assert!(
        !no_cold_start(&first.log(), "kept"),
        "the first run cold-starts: {}",
        first.log()
    );
    // Two instances and the pool's two namespaces.
    eventually("the first run's pool is full", || {
        network_settled(data, 4, "")
    })
    .await;
    let before = footprint(&lab, data);
    let kept_net = taken_by(data, "kept");
    let changed_net = taken_by(data, "changed");
    let pool_before: Vec<_> = network_wired(data)
        .into_iter()
        .filter(|w| w.instance.is_none())
        .collect();
    eprintln!(
        "first run: {before:?}; kept {kept} on {:?}, changed {changed} on {:?}",
        kept_net.ip, changed_net.ip
    );
    assert_eq!((before.wired, before.leases, before.mounts), (4, 4, 4));
    assert_eq!(before.veths, 4, "{before:?}");
    // The instance cannot reach the host's services: the rules refuse it.
    // (Control: the service answers from outside, so a refusal is the rules'.)
    lab.exec(
        &lab.outside,
        &[BUSYBOX, "nc", "-w", "2", &lab.uplink_ip(), "7777"],
    );
    assert!(host_refused(&lab, &kept_net), "the host service is refused");
    let refused = refused_count(&lab).expect("the isolation chain");
    assert!(refused >= 1, "the refusal was the rules': {refused}");

    // 2. SIGKILL; one app changes; the next gateway adopts the other.
    first.kill().await;
    write("two");
    let t = Instant::now();
    let second = GatewayProcess::start_in(&lab, SERVERLESS.as_ref(), config).await;
    let restart = t.elapsed();
    let addr = second.addr;
    let kept_after = instance_of(&lab, addr, "kept.localhost").await;
    fetches(&lab, addr, "kept.localhost").await;
    let changed_after = instance_of(&lab, addr, "changed.localhost").await;
    fetches(&lab, addr, "changed.localhost").await;
    eprintln!(
        "restart after SIGKILL: serving in {restart:?}; kept {kept} -> {kept_after}; changed {changed} -> {changed_after}"
    );
    assert_eq!(kept_after, kept, "the kept app's instance is adopted");
    assert!(
        second.log().contains("adopted a running instance") && no_cold_start(&second.log(), "kept"),
        "no cold start of the kept app: {}",
        second.log()
    );
    assert_ne!(
        changed_after, changed,
        "the changed app's instance is replaced"
    );

    // The adopted instance keeps its namespace, lease and veth: reconcile left them alone.
    assert_eq!(
        taken_by(data, "kept"),
        kept_net,
        "the adopted instance's namespace"
    );
    let (_, leases, _) = network_on_disk(data);
    let (links, _) = lab.state();
    let kept_ip = kept_net.ip.clone().unwrap();
    let kept_veth = kept_net.veth.clone().unwrap();
    assert!(leases.contains(&kept_ip), "{kept_ip} in {leases:?}");
    assert!(links.contains(&kept_veth), "{kept_veth} in {links:?}");
    // The changed app's old instance released its namespace, lease and veth; the killed
    // run's pool is released too.
    let changed_now = taken_by(data, "changed");
    assert_ne!(changed_now.dir, changed_net.dir);
    assert!(!changed_net.dir.exists(), "{changed_net:?}");
    let changed_ip = changed_net.ip.clone().unwrap();
    let changed_veth = changed_net.veth.clone().unwrap();
    assert!(!leases.contains(&changed_ip), "{changed_ip} in {leases:?}");
    assert!(
        !links.contains(&changed_veth),
        "{changed_veth} in {links:?}"
    );
    for pooled in &pool_before {
        assert!(
            !pooled.dir.exists(),
            "the killed run's pool: {pooled:?} (its namespace may have been taken, then it is an instance's)"
        );
    }
    // The new pool fills: the same footprint as before the kill.
    eventually("the second run's pool is full", || {
        network_settled(data, 4, "")
    })
    .await;
    let after = footprint(&lab, data);
    eprintln!("after the restart: {after:?}");
    // The isolation rules stayed in place across the restart (their counter was not reset by
    // a rebuild, which would leave the adopted instance unisolated meanwhile) and still refuse.
    let kept_refused = refused_count(&lab);
    assert!(
        kept_refused >= Some(refused),
        "the isolation chain was rebuilt at the restart: refused {refused} before, {kept_refused:?} after"
    );
    assert!(
        host_refused(&lab, &kept_net),
        "the host service is refused after the restart"
    );
    assert_eq!(
        after, before,
        "links, rules, leases and mounts at the same steady state"
    );

    // 3. An upgrade (a second `serve` on the same config takes over, the old process exits,
    // then the new one reconciles while its own pool fills): the same instances, same network.
    let t = Instant::now();
    let third = GatewayProcess::start_in(&lab, SERVERLESS.as_ref(), config).await;
    let serving = t.elapsed();
    assert_eq!(third.addr, addr, "the same listening socket");
    let mut second = second;
    let status = tokio::time::timeout(Duration::from_secs(30), second.child.wait())
        .await
        .expect("the old gateway exits after the hand-over")
        .unwrap();
    assert!(status.success(), "{}", second.log());
    eventually("the successor removed what its predecessor left", || {
        third.log().contains("the previous gateway exited")
    })
    .await;
    eprintln!(
        "upgrade: serving after {serving:?}, the old one gone after {:?}",
        t.elapsed()
    );
    assert_eq!(instance_of(&lab, addr, "kept.localhost").await, kept);
    assert_eq!(
        instance_of(&lab, addr, "changed.localhost").await,
        changed_after
    );
    fetches(&lab, addr, "kept.localhost").await;
    fetches(&lab, addr, "changed.localhost").await;
    assert_eq!(taken_by(data, "kept"), kept_net);
    assert_eq!(taken_by(data, "changed"), changed_now);
    eventually("the pool is full after the upgrade", || {
        network_settled(data, 4, "")
    })
    .await;
    let upgraded = footprint(&lab, data);
    assert_eq!(upgraded, before, "after the upgrade");
    let second = third;

    // 4. Removing the adopted app stops its instance: its network is released at once (the
    // stop finds the namespace a previous run attached), not only at shutdown.
    let admin = admin_addr(&second);
    let removed = lab
        .send(admin, "localhost", Method::DELETE, "/v1/apps/kept")
        .await
        .unwrap();
    assert_eq!(removed.status, StatusCode::OK, "{removed:?}");
    eventually("the adopted instance's namespace is released", || {
        !kept_net.dir.exists()
    })
    .await;
    let (_, leases, _) = network_on_disk(data);
    let (links, _) = lab.state();
    assert!(!leases.contains(&kept_ip), "{kept_ip} in {leases:?}");
    assert!(!links.contains(&kept_veth), "{kept_veth} in {links:?}");

    // 5. SIGTERM: nothing of the network is left.
    second.terminate().await;
    let end = footprint(&lab, data);
    let (_, rules) = lab.state();
    eprintln!("after SIGTERM: {end:?}; whole test {:?}", t0.elapsed());
    assert_eq!(
        (end.wired, end.leases, end.mounts, end.veths),
        (0, 0, 0, 0),
        "{end:?}"
    );
    assert!(
        !rules
            .iter()
            .any(|r| r.contains("SLS-IN") || r.contains("CNI-DN") || r.contains("10.252.")),
        "{rules:#?}"
    );
    assert_eq!(containerd.objects(namespace), Objects::default());
}

/// As after a host reboot (or a crash that took the instances down with it): the gateway is
/// SIGKILLed, then its instances die and everything the kernel held for their network goes —
/// namespaces unmounted, veths and the bridge gone, the rules flushed — while the data dir
/// keeps the namespace directories and host-local's address leases. The next gateway adopts
/// nothing, and its reconcile releases every one of those directories and leases (CNI DEL
/// with nothing left to delete still succeeds); its apps then cold-start with working egress,
/// and SIGTERM leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_the_kernel_state_is_gone_releases_every_lease() {
    if !can_run_with(
        "a_restart_after_the_kernel_state_is_gone_releases_every_lease",
        NETLAB_PROGRAMS,
    ) {
        return;
    }
    let lab = NetLab::new(52);
    let world = World::new();
    let data = &world.data;
    world.write(&lab, "one");
    let first = GatewayProcess::start_in(&lab, SERVERLESS.as_ref(), &world.config).await;
    let addr = first.addr;
    let kept = instance_of(&lab, addr, "kept.localhost").await;
    instance_of(&lab, addr, "changed.localhost").await;
    eventually("the pool is full", || network_settled(data, 4, "")).await;
    let old = network_wired(data);
    first.kill().await;

    // The instances die; the kernel forgets their network.
    for id in world.containerd.container_ids(&world.namespace) {
        let _ = std::process::Command::new("ctr")
            .arg("--address")
            .arg(&world.containerd.socket)
            .args(["--namespace", &world.namespace])
            .args(["task", "kill", "--signal", "SIGKILL", &id])
            .output();
    }
    eventually("the instances are dead", || {
        world
            .containerd
            .ctr(&world.namespace, &["task", "ls", "-q"])
            .iter()
            .all(|l| !l.contains("RUNNING"))
    })
    .await;
    umount_all(data);
    let _ = std::process::Command::new("ip")
        .args(["-n", &lab.engine, "link", "del", "sls0"])
        .status();
    for table in ["filter", "nat"] {
        for flag in ["-F", "-X"] {
            lab.exec(&lab.engine, &["iptables", "-w", "5", "-t", table, flag]);
        }
    }
    eventually("the veths are gone", || lab.veths() == 0).await;
    let (wired, leases, mounts) = network_on_disk(data);
    eprintln!("left on disk: {wired} namespace directories, leases {leases:?}, {mounts} mounts");
    assert_eq!((wired, leases.len(), mounts), (4, 4, 0));

    let second = GatewayProcess::start_in(&lab, SERVERLESS.as_ref(), &world.config).await;
    let addr = second.addr;
    let again = instance_of(&lab, addr, "kept.localhost").await;
    fetches(&lab, addr, "kept.localhost").await;
    fetches(&lab, addr, "changed.localhost").await;
    assert_ne!(again, kept, "a dead instance is not adopted");
    eventually("the second run's pool is full", || {
        network_settled(data, 4, "")
    })
    .await;
    for w in &old {
        assert!(!w.dir.exists(), "released: {w:?}");
    }
    let (_, leases, _) = network_on_disk(data);
    let mut held: Vec<String> = network_wired(data)
        .into_iter()
        .filter_map(|w| w.ip)
        .collect();
    let mut leases = leases;
    held.sort();
    leases.sort();
    assert_eq!(leases, held, "no lease without a namespace");
    assert!(
        !second
            .log()
            .lines()
            .any(|l| l.contains("releasing") && l.contains("failed")),
        "no release failed: {}",
        second.log()
    );

    second.terminate().await;
    let end = footprint(&lab, data);
    eprintln!("after SIGTERM: {end:?}");
    assert_eq!(
        (end.wired, end.leases, end.mounts, end.veths),
        (0, 0, 0, 0),
        "{end:?}"
    );
    assert_eq!(
        world.containerd.objects(&world.namespace),
        Objects::default()
    );
}

/// A bridge app with a standby (a task created ahead, in a namespace taken from the pool): the
/// instance that took the standby is adopted after a SIGKILL of the gateway and a restart of
/// containerd, with its network; the killed
/// run's unstarted standby is removed with its namespace and lease, and the new gateway's
/// standby and pool bring the footprint back to what it was; SIGTERM leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_standby_across_a_sigkill_and_a_containerd_restart() {
    if !can_run_with(
        "a_bridge_standby_across_a_sigkill_and_a_containerd_restart",
        NETLAB_PROGRAMS,
    ) {
        return;
    }
    let lab = NetLab::new(53);
    let mut world = World::new();
    let data = world.data.clone();
    let data = &data;
    world.write(&lab, "one");
    // Only `kept`, with a standby.
    let config = std::fs::read_to_string(&world.config).unwrap();
    let kept_only = config.split("[[apps]]\nname = \"changed\"").next().unwrap();
    std::fs::write(
        &world.config,
        format!("{kept_only}scale = {{ standby = true }}\n"),
    )
    .unwrap();
    let first = GatewayProcess::start_in(&lab, SERVERLESS.as_ref(), &world.config).await;
    let addr = first.addr;
    let kept = instance_of(&lab, addr, "kept.localhost").await;
    fetches(&lab, addr, "kept.localhost").await;
    // The instance, the next standby and a full pool.
    eventually("a standby and a full pool", || network_settled(data, 4, "")).await;
    let before = footprint(&lab, data);
    // The first standby (`kept-sb0-…`) runs the instance; the next one waits.
    let (kept_net, standby_net): (Vec<_>, Vec<_>) = network_wired(data)
        .into_iter()
        .filter(|w| w.instance.is_some())
        .partition(|w| {
            w.instance
                .as_deref()
                .is_some_and(|i| i.starts_with("kept-sb0-"))
        });
    assert_eq!(kept_net.len(), 1, "{:#?}", network_wired(data));
    let kept_net = kept_net[0].clone();
    eprintln!("with a standby: {before:?}; instance {kept_net:?}; standby {standby_net:?}");
    assert_eq!(standby_net.len(), 1, "{:#?}", network_wired(data));
    first.kill().await;
    // containerd restarts too (the shims and the instances live on).
    world.containerd.restart();

    let second = GatewayProcess::start_in(&lab, SERVERLESS.as_ref(), &world.config).await;
    let addr = second.addr;
    assert_eq!(instance_of(&lab, addr, "kept.localhost").await, kept);
    fetches(&lab, addr, "kept.localhost").await;
    assert!(
        no_cold_start(&second.log(), "kept"),
        "adopted: {}",
        second.log()
    );
    assert!(kept_net.dir.exists(), "the adopted instance's namespace");
    assert!(!standby_net[0].dir.exists(), "the old standby's namespace");
    let (_, leases, _) = network_on_disk(data);
    assert!(
        !leases.contains(standby_net[0].ip.as_ref().unwrap()),
        "{leases:?}"
    );
    eventually("a new standby and a full pool", || {
        network_settled(data, 4, "")
    })
    .await;
    assert_eq!(footprint(&lab, data), before);

    second.terminate().await;
    let end = footprint(&lab, data);
    assert_eq!(
        (end.wired, end.leases, end.mounts, end.veths),
        (0, 0, 0, 0),
        "{end:?}"
    );
    assert_eq!(
        world.containerd.objects(&world.namespace),
        Objects::default()
    );
}
