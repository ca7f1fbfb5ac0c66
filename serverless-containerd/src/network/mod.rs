//! Networking of `bridge` instances (see `network = "bridge"` in the config): each instance's
//! network namespace is made here (a bind-mounted namespace file under the data dir) and wired
//! with the CNI reference plugins before its task is created; runc then joins it. The instance
//! gets `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname` bind-mounted from its namespace's
//! directory. `none` instances do not come here: runc makes them a loopback-only namespace.
//!
//! Wiring (CNI ADD) is kept off the cold start's path: a small pool of namespaces is wired
//! ahead and refilled in the background after one is taken (see [`Network::attach`]), like
//! the spare shim.
//!
//! Layout under `<data_dir>/network/`:
//!
//! | path | what |
//! |---|---|
//! | `serverless.conflist` | the CNI config the engine writes at each start |
//! | `cni.conflist` | an operator's replacement: used instead when present |
//! | `ipam/` | host-local's address leases |
//! | `wired/<cni id>/` | per namespace: `netns` (the namespace file), `result.json` (ADD's result, for DEL), `instance` (the instance that took it), `resolv.conf`, `hosts`, `hostname` |
//!
//! A namespace's directory exists from before it is made until after it is released, so
//! `reconcile` finds every leftover of a previous run there.

mod cni;
mod firewall;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, Spec};
use serde_json::Value;
use serverless_core::{BackendError, ErrorKind, NetworkConfig};
use tokio::sync::{Mutex as AsyncMutex, OnceCell};

/// What went wrong wiring or releasing a namespace.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetworkError {
    #[error("{0} failed: {1}")]
    Io(String, #[source] io::Error),
    #[error("CNI: {0}")]
    Cni(String),
    #[error("{0} failed: {1}")]
    Command(String, String),
    #[error("the network is shut down")]
    Closed,
    /// A program `bridge` instances need is not on this host.
    #[error(
        "{0} not found: install Debian's {1} (or set network = \"none\" on apps that need no egress)"
    )]
    Missing(String, &'static str),
}

impl NetworkError {
    pub(crate) fn into_backend(self, what: impl std::fmt::Display) -> BackendError {
        BackendError::new(ErrorKind::Unavailable, format!("{what} failed")).with_source(self)
    }
}

/// How many namespaces are kept wired ahead.
pub(crate) const DEFAULT_POOL: usize = 2;

/// How long after a namespace is taken its replacement starts being wired: keeps the
/// plugins off the CPU while the instance that took it boots.
const REFILL_DELAY: Duration = Duration::from_millis(100);

/// The engine's bridge network.
pub(crate) struct Network {
    config: NetworkConfig,
    nameservers: Vec<IpAddr>,
    dir: PathBuf,
    conflist: Value,
    host_netns: Option<PathBuf>,
    /// The isolation rules, installed before the first namespace is wired.
    rules: OnceCell<()>,
    /// Namespaces wired ahead (CNI ids), and how many to keep.
    pool: Mutex<Vec<String>>,
    pool_size: usize,
    /// Instance id → CNI id of the namespace it took.
    taken: Mutex<HashMap<String, String>>,
    /// Namespaces being wired, not yet in the pool or taken: reconcile leaves them alone.
    wiring: Mutex<HashSet<String>>,
    /// Held by a refill while it wires; shutdown takes it after setting `closed`.
    refilling: AsyncMutex<()>,
    closed: AtomicBool,
    next: AtomicU64,
    /// Refills (scheduled or running) and releases in flight: the background work
    /// [`is_quiet`](Self::is_quiet) waits for.
    busy: AtomicUsize,
}

/// Counts one piece of background work in [`Network::busy`] while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A wired namespace.
pub(crate) struct Attached {
    /// The namespace file runc joins.
    pub(crate) netns: PathBuf,
    /// Holds `resolv.conf`, `hosts`, `hostname`.
    pub(crate) etc: PathBuf,
    /// Whether it came from the pool (CNI ADD was not on this start's path).
    pub(crate) pooled: bool,
}

impl Network {
    /// Writes the engine's conflist under `data_dir/network` and reads the nameservers
    /// (configured, else the host's non-loopback ones). `host_netns`: the namespace the
    /// bridge, NAT and rules live in (default: the engine's own). `pool_size`: namespaces
    /// wired ahead once the first `bridge` instance starts.
    pub(crate) fn new(
        data_dir: &Path,
        config: NetworkConfig,
        host_netns: Option<PathBuf>,
        pool_size: usize,
    ) -> Result<Self, NetworkError> {
        let dir = data_dir.join("network");
        let io = |what: &str, p: &Path| {
            let what = format!("{what} {}", p.display());
            move |e| NetworkError::Io(what, e)
        };
        std::fs::create_dir_all(dir.join("wired")).map_err(io("creating", &dir))?;
        let ours = dir.join("serverless.conflist");
        let generated = cni::default_conflist(
            &config.bridge,
            &config.subnet.to_string(),
            &dir.join("ipam"),
        );
        let text = serde_json::to_string_pretty(&generated).unwrap_or_default();
        std::fs::write(&ours, text).map_err(io("writing", &ours))?;
        let operator = dir.join("cni.conflist");
        let conflist = match std::fs::read(&operator) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                NetworkError::Cni(format!("{} is not JSON: {e}", operator.display()))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => generated,
            Err(e) => {
                return Err(NetworkError::Io(
                    format!("reading {}", operator.display()),
                    e,
                ))
            }
        };
        let nameservers = match &config.nameservers {
            Some(list) => list.clone(),
            None => host_resolvers(),
        };
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok(Self {
            config,
            nameservers,
            dir,
            conflist,
            host_netns,
            rules: OnceCell::new(),
            pool: Mutex::new(Vec::new()),
            pool_size,
            taken: Mutex::new(HashMap::new()),
            wiring: Mutex::new(HashSet::new()),
            refilling: AsyncMutex::new(()),
            closed: AtomicBool::new(false),
            next: AtomicU64::new(started << 16),
            busy: AtomicUsize::new(0),
        })
    }

    /// Checks that this host has what wiring needs: every plugin of the conflist (and
    /// `loopback`), `iptables` and `ip`, and `nsenter` and the namespace itself when the
    /// bridge lives in another namespace. The error names the Debian package to install.
    pub(crate) fn check_tools(&self) -> Result<(), NetworkError> {
        let mut types = vec!["loopback"];
        if let Some(plugins) = self.conflist["plugins"].as_array() {
            types.extend(plugins.iter().filter_map(|p| p["type"].as_str()));
        }
        for typ in types {
            if cni::find(typ).is_none() {
                return Err(NetworkError::Missing(
                    format!("the CNI plugin {typ:?} (looked in {})", cni::CNI_PATH),
                    "containernetworking-plugins",
                ));
            }
        }
        let mut programs = vec![("iptables", "iptables"), ("ip", "iproute2")];
        if let Some(ns) = &self.host_netns {
            programs.push(("nsenter", "util-linux"));
            if !ns.exists() {
                return Err(NetworkError::Io(
                    format!("opening the bridge's namespace {}", ns.display()),
                    io::ErrorKind::NotFound.into(),
                ));
            }
        }
        for (program, package) in programs {
            if !on_path(program) {
                return Err(NetworkError::Missing(format!("{program:?}"), package));
            }
        }
        Ok(())
    }

    fn wired_dir(&self, cni_id: &str) -> PathBuf {
        self.dir.join("wired").join(cni_id)
    }

    fn invocation<'a>(
        &'a self,
        cni_id: &'a str,
        netns: &'a Path,
        background: bool,
    ) -> cni::Invocation<'a> {
        cni::Invocation {
            container_id: cni_id,
            netns,
            host_netns: self.host_netns.as_deref(),
            background,
        }
    }

    /// A wired namespace for instance `id`, with its `/etc` files naming `hostname`: one from
    /// the pool when there is one (then a refill is started), else wired now. On failure,
    /// what was made is released.
    pub(crate) async fn attach(
        self: &Arc<Self>,
        id: &str,
        hostname: &str,
    ) -> Result<Attached, NetworkError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(NetworkError::Closed);
        }
        // Taken under the pool's lock, so that a namespace is always in the pool, being
        // wired, or taken (a reconcile running meanwhile keeps it).
        let pooled = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let cni_id = pool.pop();
            if let Some(c) = &cni_id {
                self.taken
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_owned(), c.clone());
            }
            cni_id
        };
        let (cni_id, from_pool) = match pooled {
            Some(cni_id) => (cni_id, true),
            None => {
                let cni_id = self.wire(false).await?;
                self.taken
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_owned(), cni_id.clone());
                self.done_wiring(&cni_id);
                (cni_id, false)
            }
        };
        let result = self.name(&cni_id, id, hostname).await;
        if result.is_err() {
            let _ = self.detach(id).await;
        }
        self.refill();
        result.map(|(netns, etc)| Attached {
            netns,
            etc,
            pooled: from_pool,
        })
    }

    /// Starts wiring namespaces in the background until the pool is full: at the prepare of a
    /// bridge app (so its first cold start already takes a wired namespace) and after each take.
    pub(crate) fn refill(self: &Arc<Self>) {
        let this = Arc::clone(self);
        self.busy.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let _busy = Busy(&this.busy);
            tokio::time::sleep(REFILL_DELAY).await;
            let Ok(_refilling) = this.refilling.try_lock() else {
                return;
            };
            loop {
                if this.closed.load(Ordering::Acquire)
                    || this.pool.lock().unwrap_or_else(|e| e.into_inner()).len() >= this.pool_size
                {
                    return;
                }
                match this.wire(true).await {
                    Ok(cni_id) => {
                        this.pool
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(cni_id.clone());
                        this.done_wiring(&cni_id);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "wiring a namespace ahead failed");
                        return;
                    }
                }
            }
        });
    }

    /// Makes a namespace and wires it (CNI ADD); returns its CNI id. `background`: for the
    /// pool (at the lowest CPU priority, see [`plumbing`]), not for a start waiting on it.
    async fn wire(&self, background: bool) -> Result<String, NetworkError> {
        self.rules
            .get_or_try_init(|| firewall::install(&self.config.bridge, self.host_netns.as_deref()))
            .await?;
        let cni_id = format!("sls-{:x}", self.next.fetch_add(1, Ordering::Relaxed));
        self.wiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cni_id.clone());
        let t = tokio::time::Instant::now();
        let result = self.wire_inner(&cni_id, background).await;
        match &result {
            Ok(()) => tracing::debug!(cni_id, elapsed = ?t.elapsed(), "namespace wired (CNI ADD)"),
            Err(_) => {
                let _ = self.release(&cni_id).await;
                self.done_wiring(&cni_id);
            }
        }
        result.map(|()| cni_id)
    }

    fn done_wiring(&self, cni_id: &str) {
        self.wiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(cni_id);
    }

    async fn wire_inner(&self, cni_id: &str, background: bool) -> Result<(), NetworkError> {
        let dir = self.wired_dir(cni_id);
        let io = |what: &'static str| move |e| NetworkError::Io(format!("{what} for {cni_id}"), e);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io("creating the state directory"))?;
        let netns = dir.join("netns");
        let path = netns.clone();
        tokio::task::spawn_blocking(move || new_netns(&path))
            .await
            .map_err(|e| NetworkError::Io("making a namespace".into(), io::Error::other(e)))?
            .map_err(io("making the network namespace"))?;
        // The loopback plugin brings `lo` up (runc does so only for namespaces it makes).
        cni::add(
            &serde_json::json!({"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]}),
            &cni::Invocation {
                host_netns: None,
                ..self.invocation(cni_id, &netns, background)
            },
        )
        .await?;
        let result = cni::add(&self.conflist, &self.invocation(cni_id, &netns, background)).await?;
        tokio::fs::write(dir.join("result.json"), result.to_string())
            .await
            .map_err(io("saving the CNI result"))?;
        if let (_, Some(veth)) = cni::parse_result(&result) {
            firewall::isolate_port(&veth, self.host_netns.as_deref(), background).await?;
        }
        Ok(())
    }

    /// Marks the namespace `cni_id` as instance `id`'s and writes its `/etc` files.
    async fn name(
        &self,
        cni_id: &str,
        id: &str,
        hostname: &str,
    ) -> Result<(PathBuf, PathBuf), NetworkError> {
        let dir = self.wired_dir(cni_id);
        let io = |e| NetworkError::Io(format!("writing the /etc files of {id}"), e);
        let result: Option<Value> = tokio::fs::read(dir.join("result.json"))
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let ip = result.as_ref().and_then(|r| cni::parse_result(r).0);
        let mut resolv = String::new();
        for ns in &self.nameservers {
            let _ = writeln!(resolv, "nameserver {ns}");
        }
        let mut hosts =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        let _ = writeln!(
            hosts,
            "{}\t{hostname}",
            ip.as_deref().unwrap_or("127.0.1.1")
        );
        for (name, text) in [
            ("instance", id.to_owned()),
            ("resolv.conf", resolv),
            ("hosts", hosts),
            ("hostname", format!("{hostname}\n")),
        ] {
            tokio::fs::write(dir.join(name), text).await.map_err(io)?;
        }
        Ok((dir.join("netns"), dir))
    }

    /// Releases instance `id`'s namespace. Idempotent: nothing to do when it has none.
    pub(crate) async fn detach(&self, id: &str) -> Result<(), NetworkError> {
        let known = self
            .taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let cni_id = match known {
            Some(c) => Some(c),
            // Taken by a previous run: find it by its `instance` file.
            None => self
                .on_disk()
                .into_iter()
                .find(|(_, owner)| owner.as_deref() == Some(id))
                .map(|(c, _)| c),
        };
        match cni_id {
            Some(c) => self.release(&c).await,
            None => Ok(()),
        }
    }

    /// The namespaces on disk: CNI id and the instance that took it, if any.
    fn on_disk(&self) -> Vec<(String, Option<String>)> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("wired")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .map(|c| {
                let owner = std::fs::read_to_string(self.wired_dir(&c).join("instance")).ok();
                (c, owner)
            })
            .collect()
    }

    /// CNI DEL (address lease, veth, NAT and firewall entries), the namespace and its
    /// directory. Idempotent.
    async fn release(&self, cni_id: &str) -> Result<(), NetworkError> {
        let _busy = Busy::new(&self.busy);
        let dir = self.wired_dir(cni_id);
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok(());
        }
        let t = tokio::time::Instant::now();
        let netns = dir.join("netns");
        let prev: Option<Value> = tokio::fs::read(dir.join("result.json"))
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // DEL without a namespace still releases the lease and the host-side entries.
        let mounted = is_mounted(&netns);
        let empty = PathBuf::new();
        let ns_arg = if mounted { &netns } else { &empty };
        let del = cni::del(
            &self.conflist,
            prev.as_ref(),
            &self.invocation(cni_id, ns_arg, true),
        )
        .await;
        if mounted {
            let _ = umount2(&netns, MntFlags::MNT_DETACH);
        }
        del?;
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| NetworkError::Io(format!("removing {}", dir.display()), e))?;
        tracing::debug!(cni_id, elapsed = ?t.elapsed(), "namespace released (CNI DEL)");
        Ok(())
    }

    /// Releases every namespace on disk that is neither this run's
    /// ([`is_this_runs`](Self::is_this_runs)) nor taken by an instance `held` accepts (a
    /// previous run's leftovers); returns how many.
    pub(crate) async fn release_others(&self, held: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        for (cni_id, owner) in self.on_disk() {
            if self.is_this_runs(&cni_id) || owner.as_deref().is_some_and(&held) {
                continue;
            }
            if let Some(id) = &owner {
                self.taken
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
            }
            match self.release(&cni_id).await {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(cni_id, error = %e, "releasing a leftover namespace failed")
                }
            }
        }
        n
    }

    /// Whether namespace `cni_id` is this run's, asked at the moment it is considered: in the
    /// pool, being wired, or taken by an instance — also one still starting, which the
    /// backend does not know as an instance yet (a reconcile can run while the gateway serves,
    /// after an upgrade's hand-over).
    fn is_this_runs(&self, cni_id: &str) -> bool {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|c| c == cni_id)
            || self
                .wiring
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(cni_id)
            || self
                .taken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|c| c == cni_id)
    }

    /// The `[network]` settings in use.
    pub(crate) fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Whether no refill is scheduled or running and no namespace is being released.
    pub(crate) fn is_quiet(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// Stops refills, releases the pool and removes the isolation rules if this engine
    /// installed them (call after the last instance is gone).
    pub(crate) async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let _refills = self.refilling.lock().await;
        let pool: Vec<String> =
            std::mem::take(&mut *self.pool.lock().unwrap_or_else(|e| e.into_inner()));
        for cni_id in pool {
            if let Err(e) = self.release(&cni_id).await {
                tracing::warn!(cni_id, error = %e, "releasing a pooled namespace failed");
            }
        }
        // Also the rules a previous run (killed before its shutdown) left behind.
        let bridge = &self.config.bridge;
        let host_netns = self.host_netns.as_deref();
        if self.rules.get().is_some() || firewall::installed(bridge, host_netns).await {
            firewall::uninstall(bridge, host_netns).await;
        }
    }
}

/// The host's resolvers an instance can reach: `/etc/resolv.conf`'s non-loopback nameservers,
/// else systemd-resolved's upstream list when the first file only names its local stub.
fn host_resolvers() -> Vec<IpAddr> {
    for path in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            let found = serverless_core::config::host_nameservers(&text);
            if !found.is_empty() {
                return found;
            }
        }
    }
    Vec::new()
}

/// Whether `program` is an executable file in `$PATH` (or the sbin directories, which root's
/// path has but a service's may not).
fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A new network namespace kept alive by a bind mount on `path`: made on a thread of its own
/// (`unshare` changes only the calling thread), which then ends.
fn new_netns(path: &Path) -> io::Result<()> {
    std::fs::File::create(path)?;
    let target = path.to_owned();
    std::thread::Builder::new()
        .name("netns-new".into())
        .spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

fn is_mounted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Some(p) = path.to_str() else { return false };
    text.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

/// Points the spec's network namespace at the wired one and bind-mounts the `/etc` files.
/// A command of the network's plumbing (a CNI plugin, `iptables`, `ip`): inside `host_netns`
/// when set (`nsenter --net`), and for work off the request's path — a refill of the pool, a
/// release — at the lowest CPU priority (`nice -n 19`, inherited by what it spawns, such as the
/// plugins' `iptables`), so that a cold start does not share the CPU equally with it.
fn plumbing(
    host_netns: Option<&Path>,
    program: &Path,
    background: bool,
) -> tokio::process::Command {
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if background {
        argv.extend(["nice", "-n", "19"].map(Into::into));
    }
    if let Some(ns) = host_netns {
        argv.push("nsenter".into());
        argv.push(format!("--net={}", ns.display()).into());
        argv.push("--".into());
    }
    argv.push(program.into());
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

pub(crate) fn apply(spec: &mut Spec, attached: &Attached) -> Result<(), BackendError> {
    let err = |e: oci_spec::OciSpecError| {
        BackendError::new(ErrorKind::Image, "building the OCI runtime spec failed").with_source(e)
    };
    if let Some(linux) = spec.linux_mut() {
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(attached.netns.clone())
                .build()
                .map_err(err)?,
        );
        linux.set_namespaces(Some(namespaces));
    }
    let in_userns = spec.linux().as_ref().is_some_and(|l| {
        l.namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::User)
    });
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    if in_userns {
        // A new sysfs may only be mounted by the owner of the network namespace, and the wired
        // one belongs to the host's user namespace, not the instance's: bind the host's /sys,
        // read-only, instead (as podman does for a namespace it did not make).
        for m in mounts
            .iter_mut()
            .filter(|m| m.typ().as_deref() == Some("sysfs"))
        {
            *m = MountBuilder::default()
                .destination(m.destination().clone())
                .typ("bind")
                .source("/sys")
                .options(
                    ["rbind", "nosuid", "noexec", "nodev", "ro"]
                        .map(str::to_owned)
                        .to_vec(),
                )
                .build()
                .map_err(err)?;
        }
    }
    for name in ["resolv.conf", "hosts", "hostname"] {
        mounts.push(
            MountBuilder::default()
                .destination(format!("/etc/{name}"))
                .typ("bind")
                .source(attached.etc.join(name))
                .options(vec!["rbind".to_owned(), "ro".to_owned()])
                .build()
                .map_err(err)?,
        );
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}
