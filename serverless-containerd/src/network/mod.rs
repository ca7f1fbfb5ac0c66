//! Networking of `bridge` instances (see `network = "bridge"` in the config): each instance's
//! network namespace is made here (a bind-mounted namespace file under the data dir) and wired
//! with the CNI reference plugins before its task is created; runc then joins it. The instance
//! gets `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname` bind-mounted from its state
//! directory. `none` instances do not come here: runc makes them a loopback-only namespace.
//!
//! Layout under `<data_dir>/network/`:
//!
//! | path | what |
//! |---|---|
//! | `serverless.conflist` | the CNI config the engine writes at each start |
//! | `cni.conflist` | an operator's replacement: used instead when present |
//! | `ipam/` | host-local's address leases |
//! | `instances/<id>/` | per instance: `netns` (the namespace file), `result.json` (ADD's result, for DEL), `resolv.conf`, `hosts`, `hostname` |
//!
//! An instance's directory exists from before its namespace is made until after it is released,
//! so `reconcile` finds every leftover of a previous run there.

mod cni;
mod firewall;

use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, Spec};
use serde_json::Value;
use serverless_core::{BackendError, ErrorKind, NetworkConfig};
use tokio::sync::OnceCell;

/// What went wrong wiring or releasing a namespace.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetworkError {
    #[error("{0} failed: {1}")]
    Io(String, #[source] io::Error),
    #[error("CNI: {0}")]
    Cni(String),
    #[error("{0} failed: {1}")]
    Command(String, String),
}

impl NetworkError {
    pub(crate) fn into_backend(self, what: impl std::fmt::Display) -> BackendError {
        BackendError::new(ErrorKind::Unavailable, format!("{what} failed")).with_source(self)
    }
}

/// The engine's bridge network.
pub(crate) struct Network {
    config: NetworkConfig,
    nameservers: Vec<IpAddr>,
    dir: PathBuf,
    conflist: Value,
    host_netns: Option<PathBuf>,
    /// The isolation rules, installed before the first instance is wired.
    rules: OnceCell<()>,
}

/// A wired namespace.
pub(crate) struct Attached {
    /// The namespace file runc joins.
    pub(crate) netns: PathBuf,
    /// Holds `resolv.conf`, `hosts`, `hostname`.
    pub(crate) etc: PathBuf,
}

impl Network {
    /// Writes the engine's conflist under `data_dir/network` and reads the nameservers
    /// (configured, else the host's non-loopback ones). `host_netns`: the namespace the
    /// bridge, NAT and rules live in (default: the engine's own).
    pub(crate) fn new(
        data_dir: &Path,
        config: NetworkConfig,
        host_netns: Option<PathBuf>,
    ) -> Result<Self, NetworkError> {
        let dir = data_dir.join("network");
        let io = |what: &str, p: &Path| {
            let what = format!("{what} {}", p.display());
            move |e| NetworkError::Io(what, e)
        };
        std::fs::create_dir_all(dir.join("instances")).map_err(io("creating", &dir))?;
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
        Ok(Self {
            config,
            nameservers,
            dir,
            conflist,
            host_netns,
            rules: OnceCell::new(),
        })
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.dir.join("instances").join(id)
    }

    fn invocation<'a>(&'a self, id: &'a str, netns: &'a Path) -> cni::Invocation<'a> {
        cni::Invocation {
            container_id: id,
            netns,
            host_netns: self.host_netns.as_deref(),
        }
    }

    /// Makes instance `id`'s namespace, wires it (CNI ADD) and writes its `/etc` files.
    /// On failure, what was made is released.
    pub(crate) async fn attach(&self, id: &str, hostname: &str) -> Result<Attached, NetworkError> {
        self.rules
            .get_or_try_init(|| firewall::install(&self.config.bridge, self.host_netns.as_deref()))
            .await?;
        let result = self.attach_inner(id, hostname).await;
        if result.is_err() {
            let _ = self.detach(id).await;
        }
        result
    }

    async fn attach_inner(&self, id: &str, hostname: &str) -> Result<Attached, NetworkError> {
        let dir = self.instance_dir(id);
        let io = |what: &'static str| move |e| NetworkError::Io(format!("{what} for {id}"), e);
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
            &cni::Invocation { host_netns: None, ..self.invocation(id, &netns) },
        )
        .await?;
        let result = cni::add(&self.conflist, &self.invocation(id, &netns)).await?;
        tokio::fs::write(dir.join("result.json"), result.to_string())
            .await
            .map_err(io("saving the CNI result"))?;
        let (ip, host_veth) = cni::parse_result(&result);
        if let Some(veth) = host_veth {
            firewall::isolate_port(&veth, self.host_netns.as_deref()).await?;
        }
        let etc = dir.clone();
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
            ("resolv.conf", resolv),
            ("hosts", hosts),
            ("hostname", format!("{hostname}\n")),
        ] {
            tokio::fs::write(etc.join(name), text)
                .await
                .map_err(io("writing /etc files"))?;
        }
        Ok(Attached { netns, etc })
    }

    /// Releases instance `id`'s network: CNI DEL (address lease, veth, NAT and firewall
    /// entries), the namespace and the state directory. Idempotent: nothing to do when the
    /// directory is gone.
    pub(crate) async fn detach(&self, id: &str) -> Result<(), NetworkError> {
        let dir = self.instance_dir(id);
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok(());
        }
        let netns = dir.join("netns");
        let prev: Option<Value> = tokio::fs::read(dir.join("result.json"))
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // DEL without a namespace still releases the lease and the host-side entries.
        let mounted = is_mounted(&netns);
        let empty = PathBuf::new();
        let ns_arg = if mounted { &netns } else { &empty };
        let del = cni::del(&self.conflist, prev.as_ref(), &self.invocation(id, ns_arg)).await;
        if mounted {
            let _ = umount2(&netns, MntFlags::MNT_DETACH);
        }
        del?;
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| NetworkError::Io(format!("removing {}", dir.display()), e))
    }

    /// Releases every instance directory whose id `keep` rejects (a previous run's
    /// leftovers); returns how many.
    pub(crate) async fn release_others(&self, keep: impl Fn(&str) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(self.dir.join("instances")) else {
            return 0;
        };
        let ids: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|id| !keep(id))
            .collect();
        let mut n = 0;
        for id in ids {
            match self.detach(&id).await {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "releasing a leftover network failed")
                }
            }
        }
        n
    }

    /// Removes the isolation rules if this engine installed them (after the last instance is
    /// gone).
    pub(crate) async fn uninstall_rules(&self) {
        if self.rules.get().is_none() {
            return;
        }
        firewall::uninstall(&self.config.bridge, self.host_netns.as_deref()).await;
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
    let mut mounts = spec.mounts().clone().unwrap_or_default();
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
