//! Networking in tests: [`NetLab`], a world of network namespaces the test makes (an
//! "outside" with HTTP and DNS servers, and a namespace for the engine's bridge), and the
//! guards that keep every other test off the machine's own network.
//!
//! `network = "bridge"` is the engine's default, and wiring a bridge sets up a bridge, NAT
//! and firewall rules in the engine's network namespace. A test may do that only inside a
//! [`NetLab`]; everything else runs `network = "none"`:
//!
//! - [`BackendHarness::app`](crate::BackendHarness::app) gives `none` apps, and a
//!   [`BackendHarness`] points the bridge at [`NO_BRIDGE_NETNS`], a namespace that does not
//!   exist, so a bridge start outside a lab fails instead of wiring the machine;
//! - the gateway harnesses refuse a config with a `bridge` app ([`assert_no_bridge`]): write
//!   `network = "none"` in each `[[apps]]` table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use nix::sched::{setns, CloneFlags};

use serverless_core::config::Ipv4Subnet;
use serverless_core::{Config, NetworkConfig, NetworkMode};

use crate::backend::BackendHarness;
use crate::client::Answer;
use crate::images::BUSYBOX;
use crate::util::BoxError;

/// Where a [`BackendHarness`] that is not a lab's puts its bridge: nowhere (the path does not
/// exist), so starting a `bridge` instance fails naming it.
pub const NO_BRIDGE_NETNS: &str = "/run/serverless-testkit/no-bridge-outside-a-netlab";

/// Panics when `config` has an app with `network = "bridge"`: a gateway harness runs its
/// engine in the machine's own network namespace, where a test must not wire a bridge.
pub fn assert_no_bridge(config: &Config) {
    for app in &config.apps {
        assert!(
            app.network == NetworkMode::None,
            "app {} has network = \"bridge\" (the default): a test's gateway runs in the \
             machine's own network namespace; write network = \"none\" in its [[apps]] table, \
             or test bridges with a serverless_testkit::NetLab",
            app.name
        );
    }
}

/// What a [`NetLab`] needs: program and Debian package.
pub const NETLAB_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("dnsmasq", "dnsmasq-base"),
    ("nsenter", "util-linux"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
];

/// Runs a command, panicking with its stderr when it fails; returns its stdout.
pub(crate) fn run(args: &[&str]) -> String {
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

/// A test's own world, removed on drop:
///
/// - `outside`: the "internet", holding an HTTP server (busybox httpd, `hello from outside`)
///   and a DNS server (dnsmasq, `outside.test` → the server) on `10.251.N.2/24`;
/// - `engine`: where the backend's CNI plugins run (`Builder::network_host_netns`), so the
///   bridge, its NAT and the isolation rules live there; its only interface besides loopback
///   and the bridge is a veth into `outside` (`10.251.N.1/24`), its default route points
///   there, and a busybox httpd on port 7777 stands for the host's own services.
///
/// Instances' veths end on that bridge, so whatever an instance sends is either dropped by the
/// engine namespace's rules or routed to `outside`, which has no other link: nothing reaches
/// the machine's namespace. The subnets (`10.251.N.0/24` and the instances' `10.252.N.0/24`)
/// are checked not to overlap the machine's routes. `N` tells concurrent labs apart.
pub struct NetLab {
    /// The outside namespace's name (`ip netns`).
    pub outside: String,
    /// The engine namespace's name.
    pub engine: String,
    /// The third octet of this lab's subnets.
    pub n: u8,
    servers: Vec<Child>,
    www: tempfile::TempDir,
}

impl std::fmt::Debug for NetLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetLab")
            .field("outside", &self.outside)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl NetLab {
    /// Builds the lab (namespaces, veth, servers). Synchronous: call it before async work.
    pub fn new(n: u8) -> Self {
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
            www,
        };
        let (o, e) = (lab.outside.clone(), lab.engine.clone());
        // The veth is made inside `engine` with its peer moved straight into `outside`.
        run(&[
            "ip", "-n", &e, "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns",
            &o,
        ]);
        for (ns, dev, addr) in [(&o, "out0", lab.outside_ip()), (&e, "up0", lab.uplink_ip())] {
            let cidr = format!("{addr}/24");
            run(&["ip", "-n", ns, "addr", "add", &cidr, "dev", dev]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let via = lab.outside_ip();
        run(&["ip", "-n", &e, "route", "add", "default", "via", &via]);
        run(&[
            "ip",
            "netns",
            "exec",
            &e,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        std::fs::write(lab.www.path().join("index.html"), "hello from outside\n")
            .expect("write the outside page");
        let www = lab.www.path().display().to_string();
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
        // Give the servers a moment to bind (the lab is built before any async work).
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

    /// The outside server's address (HTTP on 80, DNS on 53).
    pub fn outside_ip(&self) -> String {
        format!("10.251.{}.2", self.n)
    }

    /// The engine namespace's address on the link to `outside`.
    pub fn uplink_ip(&self) -> String {
        format!("10.251.{}.1", self.n)
    }

    /// The bridge's address (the instances' gateway).
    pub fn bridge_ip(&self) -> String {
        format!("10.252.{}.1", self.n)
    }

    /// The engine namespace's file, for `Builder::network_host_netns`.
    pub fn engine_netns(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.engine)
    }

    /// The `[network]` of this lab: instances on `10.252.N.0/24`, resolving with the outside
    /// DNS server.
    pub fn network(&self) -> NetworkConfig {
        NetworkConfig {
            subnet: Ipv4Subnet {
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
    pub async fn backend(&self, pool: usize) -> BackendHarness {
        let (network, netns) = (self.network(), self.engine_netns());
        BackendHarness::start_with(move |b| {
            b.network(network)
                .network_host_netns(netns)
                .network_pool(pool)
        })
        .await
    }

    /// Runs `args` inside namespace `ns` (a name of `ip netns`); returns its stdout.
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// A TCP connection to `addr` made from inside the engine namespace: to a gateway that
    /// runs there ([`GatewayProcess::start_in`](crate::GatewayProcess::start_in)) and listens
    /// on its loopback. The socket is made on a thread that joins the namespace (`setns`
    /// changes only the calling thread) and then ends; the socket keeps its namespace.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let netns = self.engine_netns();
        let stream = tokio::task::spawn_blocking(move || {
            let ns = std::fs::File::open(&netns)?;
            std::thread::scope(|s| {
                s.spawn(|| -> std::io::Result<std::net::TcpStream> {
                    setns(&ns, CloneFlags::CLONE_NEWNET)?;
                    let stream =
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                    stream.set_nonblocking(true)?;
                    Ok(stream)
                })
                .join()
                .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
            })
        })
        .await
        .map_err(std::io::Error::other)??;
        tokio::net::TcpStream::from_std(stream)
    }

    /// `method path` with `Host: host` to `addr` inside the engine namespace (one HTTP/1.1
    /// connection, see [`connect`](Self::connect)); the whole answer.
    pub async fn send(
        &self,
        addr: SocketAddr,
        host: &str,
        method: http::Method,
        path: &str,
    ) -> Result<Answer, BoxError> {
        let stream = self
            .connect(addr)
            .await
            .map_err(|e| format!("connect to {addr} in {}: {e}", self.engine))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())?;
        let (parts, body) = tx.send_request(req).await?.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer::new(parts, &body))
    }

    /// The host-side veths in the engine namespace (one per wired namespace).
    pub fn veths(&self) -> usize {
        self.state()
            .0
            .iter()
            .filter(|l| l.starts_with("veth"))
            .count()
    }

    /// What the engine namespace holds that an instance could leak: link names and the
    /// `filter` and `nat` rules, sorted.
    pub fn state(&self) -> (Vec<String>, Vec<String>) {
        let links = run(&["ip", "-n", &self.engine, "-o", "link", "show"])
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|s| s.split('@').next().unwrap_or(s).to_owned())
            })
            .collect();
        let engine = self.engine.clone();
        let mut rules: Vec<String> = ["filter", "nat"]
            .iter()
            .flat_map(|t| {
                self.exec(&engine, &["iptables", "-w", "5", "-t", t, "-S"])
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        rules.sort();
        (links, rules)
    }
}

/// What a backend's data dir (`data`: the gateway's `data_dir`, or a backend's) holds for its
/// `bridge` namespaces: how many namespace directories (`network/wired/*`), the host-local
/// address leases, and how many namespace files are still mounted (in this process's mount
/// namespace, which a gateway started by [`GatewayProcess::start_in`](crate::GatewayProcess::start_in)
/// shares).
pub fn network_on_disk(data: &Path) -> (usize, Vec<String>, usize) {
    let network = data.join("network");
    let wired = std::fs::read_dir(network.join("wired")).map_or(0, |d| d.count());
    let leases = std::fs::read_dir(network.join("ipam/serverless"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(&*network.to_string_lossy()))
        .count();
    (wired, leases, mounts)
}

/// Whether `data` holds exactly `n` namespaces, each wired (ADD done) and none taken by
/// instance `not`: a steady state to compare.
pub fn network_settled(data: &Path, n: usize, not: &str) -> bool {
    let Ok(dirs) = std::fs::read_dir(data.join("network/wired")) else {
        return false;
    };
    let dirs: Vec<_> = dirs.filter_map(|e| Some(e.ok()?.path())).collect();
    dirs.len() == n
        && dirs.iter().all(|d| {
            d.join("result.json").exists()
                && std::fs::read_to_string(d.join("instance")).map_or(true, |o| o != not)
        })
}

/// One namespace directory of a data dir (`network/wired/<cni id>`), as the engine left it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wired {
    /// Its directory.
    pub dir: PathBuf,
    /// The instance that took it (its `instance` file); `None` for a pooled one.
    pub instance: Option<String>,
    /// The instance's address, from the saved CNI result.
    pub ip: Option<String>,
    /// The host side of its veth, from the saved CNI result.
    pub veth: Option<String>,
}

/// The namespaces of `data` (see [`Wired`]), sorted by directory.
pub fn network_wired(data: &Path) -> Vec<Wired> {
    let Ok(dirs) = std::fs::read_dir(data.join("network/wired")) else {
        return Vec::new();
    };
    let mut wired: Vec<_> = dirs
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let instance = std::fs::read_to_string(dir.join("instance")).ok();
            let result: Option<serde_json::Value> = std::fs::read(dir.join("result.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let ip = result.as_ref().and_then(|r| {
                let a = r["ips"][0]["address"].as_str()?;
                Some(a.split('/').next()?.to_owned())
            });
            let veth = result.as_ref().and_then(|r| {
                r["interfaces"]
                    .as_array()?
                    .iter()
                    .filter(|i| i["sandbox"].as_str().is_none_or(str::is_empty))
                    .filter_map(|i| i["name"].as_str())
                    .find(|n| n.starts_with("veth"))
                    .map(str::to_owned)
            });
            Some(Wired {
                dir,
                instance,
                ip,
                veth,
            })
        })
        .collect();
    wired.sort();
    wired
}

impl Drop for NetLab {
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
