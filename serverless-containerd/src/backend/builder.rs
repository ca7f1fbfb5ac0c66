//! [`Builder`]: which containerd (given, or embedded), which namespace, where files go, registry
//! credentials; [`Builder::build`] connects and subscribes to events. Also the
//! [`ContainerdBackend`] constructors, which are builder shorthands.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serverless_core::{BackendError, ErrorKind};
use tokio::sync::{watch, Mutex as AsyncMutex};

use super::boost::BoostBudget;
use super::handle::{ContainerdBackend, Inner};
use super::shim_pool::{ShimPool, RUNC_V2};
use super::standby_state::Standbys;
use crate::cgroup;
use crate::client::Client;
use crate::daemon::Daemon;
use crate::events::{self, Exits};
use crate::image::{ProgressHook, PullProgressFn, RegistryLogins};

/// Builds a [`ContainerdBackend`]: which containerd, which namespace, where files go.
#[derive(Debug, Clone)]
pub struct Builder {
    data_dir: PathBuf,
    namespace: String,
    socket: Option<PathBuf>,
    containerd: PathBuf,
    snapshotter: String,
    runtime: String,
    pull_progress: ProgressHook,
    registry_logins: RegistryLogins,
    /// `max_boosted_instances` and the boost's cap in thousandths of a vCPU.
    boost: (u32, u32),
    registry_auth_file: Option<PathBuf>,
    max_unpacked_bytes: u64,
    spare_shim: bool,
    network: serverless_core::NetworkConfig,
    network_host_netns: Option<PathBuf>,
    network_pool: usize,
    security: serverless_core::SecurityConfig,
}

/// [`Builder::max_unpacked_bytes`]'s default: 10 GiB.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 10 << 30;

impl ContainerdBackend {
    /// A builder whose logs (and, in embedded mode, containerd's root, state and socket) live
    /// under `data_dir`. Without [`Builder::socket`] it starts a private containerd.
    pub fn builder(data_dir: impl Into<PathBuf>) -> Builder {
        Builder {
            data_dir: data_dir.into(),
            namespace: "serverless".to_owned(),
            socket: None,
            containerd: PathBuf::from("containerd"),
            snapshotter: "overlayfs".to_owned(),
            runtime: RUNC_V2.to_owned(),
            pull_progress: ProgressHook::default(),
            registry_logins: RegistryLogins::default(),
            boost: {
                let d = serverless_core::GlobalLimits::default();
                (d.max_boosted_instances, d.startup_cpu_boost_millicpu)
            },
            registry_auth_file: None,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            spare_shim: true,
            network: serverless_core::NetworkConfig::default(),
            network_host_netns: None,
            network_pool: crate::network::DEFAULT_POOL,
            security: serverless_core::SecurityConfig::default(),
        }
    }

    /// Connects to the containerd at `socket`, using `namespace`, logs under `data_dir`.
    pub async fn connect(
        socket: impl Into<PathBuf>,
        namespace: &str,
        data_dir: impl Into<PathBuf>,
    ) -> Result<Self, BackendError> {
        Self::builder(data_dir)
            .socket(socket)
            .namespace(namespace)
            .build()
            .await
    }

    /// Starts a private containerd under `data_dir` and connects to it.
    pub async fn embedded(data_dir: impl Into<PathBuf>) -> Result<Self, BackendError> {
        Self::builder(data_dir).build().await
    }
}

impl Builder {
    /// The largest unpacked size of an image's layers (default
    /// [`DEFAULT_MAX_UNPACKED_BYTES`]). Compressed layers are measured by decompressing them
    /// as a stream before containerd unpacks them, so a decompression bomb is refused with an
    /// [`ErrorKind::Image`] error (and nothing of the import is kept) instead of filling the
    /// disk.
    pub fn max_unpacked_bytes(mut self, bytes: u64) -> Self {
        self.max_unpacked_bytes = bytes;
        self
    }

    /// The startup CPU boost's bounds: at most `max_instances` instances boot boosted at once
    /// (more start at their slot; 0 turns the boost off), each with at most `cap_millicpu`
    /// thousandths of a vCPU (default: [`GlobalLimits`](serverless_core::GlobalLimits)'s, the
    /// host's CPU count and CPUs). Each app's
    /// [`startup_cpu_boost`](serverless_core::AppSpec::startup_cpu_boost) says how much of it
    /// the app takes.
    pub fn startup_cpu_boost(mut self, max_instances: u32, cap_millicpu: u32) -> Self {
        self.boost = (max_instances, cap_millicpu);
        self
    }

    /// Uses the containerd at `socket` instead of starting a private one.
    pub fn socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.socket = Some(socket.into());
        self
    }

    /// The containerd namespace for everything we create (default `serverless`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The `containerd` binary of the embedded mode (default: `containerd` on `PATH`).
    pub fn containerd_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.containerd = path.into();
        self
    }

    /// The snapshotter (default `overlayfs`).
    pub fn snapshotter(mut self, name: impl Into<String>) -> Self {
        self.snapshotter = name.into();
        self
    }

    /// Called with the progress of registry pulls (bytes done and total, the current blob), e.g.
    /// to draw a progress bar.
    pub fn pull_progress(mut self, progress: PullProgressFn) -> Self {
        self.pull_progress = ProgressHook(Some(progress));
        self
    }

    /// Credentials for pulls from `registry` (`host[:port]` as written in image references;
    /// `docker.io` for Docker Hub): HTTP Basic, or exchanged for a token when the registry
    /// answers with a Bearer challenge. Registries without credentials are pulled from
    /// anonymously. The password is never logged or shown in `Debug`.
    pub fn registry_auth(
        mut self,
        registry: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.registry_logins
            .insert(registry.into(), username.into(), password.into());
        self
    }

    /// Also takes credentials from an auth file as `docker login` and `podman login` write it
    /// (`{"auths": {"ghcr.io": {"auth": "<base64 user:password>"}}}`; keys may carry a scheme
    /// and path, `https://index.docker.io/v1/` is Docker Hub). Read by [`build`](Self::build),
    /// which fails naming the file (and the entry) when it cannot be read or parsed; entries
    /// with only an identity token, and credential helpers, are skipped. Credentials given with
    /// [`registry_auth`](Self::registry_auth) win over the file's for the same registry.
    pub fn registry_auth_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.registry_auth_file = Some(path.into());
        self
    }

    /// Keeps one runc shim spawned ahead for the next start that takes no standby (default
    /// on): a cold start then skips the shim spawn, for one idle shim process. Only with
    /// containerd's `io.containerd.runc.v2` runtime, whose shim can serve several containers.
    pub fn spare_shim(mut self, on: bool) -> Self {
        self.spare_shim = on;
        self
    }

    /// The bridge network of `network = "bridge"` apps: subnet, bridge name, nameservers
    /// (default [`NetworkConfig::default`](serverless_core::NetworkConfig::default)).
    pub fn network(mut self, config: serverless_core::NetworkConfig) -> Self {
        self.network = config;
        self
    }

    /// Runs the CNI plugins and installs the bridge's rules inside the network namespace
    /// bind-mounted at `path` instead of the engine's own, so that the bridge, its NAT and its
    /// routes live there. For tests that build the outside world in namespaces of their own,
    /// and for hosts that keep instance traffic in a namespace of its own.
    pub fn network_host_netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.network_host_netns = Some(path.into());
        self
    }

    /// How many namespaces are kept wired ahead for `bridge` instances, so that CNI ADD is not
    /// on a cold start's path (default 2; 0 wires each on its start). The pool is filled once
    /// the first `bridge` instance starts and refilled in the background.
    pub fn network_pool(mut self, size: usize) -> Self {
        self.network_pool = size;
        self
    }

    /// The host id range instances' user namespaces map onto (default
    /// [`SecurityConfig::default`](serverless_core::SecurityConfig::default)); apps with
    /// `security.userns = false` do not use it.
    pub fn security(mut self, config: serverless_core::SecurityConfig) -> Self {
        self.security = config;
        self
    }

    /// Connects (or starts the embedded containerd and connects) and subscribes to events.
    pub async fn build(mut self) -> Result<ContainerdBackend, BackendError> {
        let io = |what: String, e: std::io::Error| {
            BackendError::new(ErrorKind::Unavailable, format!("{what} failed")).with_source(e)
        };
        if let Some(path) = &self.registry_auth_file {
            self.registry_logins.add_auth_file(path).map_err(|e| {
                BackendError::new(ErrorKind::Image, "the registry auth file cannot be used")
                    .with_source(e)
            })?;
        }
        let network = crate::network::Network::new(
            &self.data_dir,
            self.network.clone(),
            self.network_host_netns.clone(),
            self.network_pool,
        )
        .map_err(|e| e.into_backend("setting up the bridge network"))?;
        let logs = self.data_dir.join("logs");
        tokio::fs::create_dir_all(&logs)
            .await
            .map_err(|e| io(format!("creating {}", logs.display()), e))?;
        let (daemon, channel, socket) = match &self.socket {
            Some(socket) => {
                let channel = containerd_client::connect(socket).await.map_err(|e| {
                    BackendError::new(
                        ErrorKind::Unavailable,
                        format!("connecting to containerd at {} failed", socket.display()),
                    )
                    .with_source(e)
                })?;
                (None, channel, socket.clone())
            }
            None => {
                let (daemon, channel) =
                    Daemon::start(&self.containerd, &self.data_dir.join("containerd")).await?;
                let socket = daemon.socket.clone();
                (Some(daemon), channel, socket)
            }
        };
        let client = Client::new(channel, &self.namespace)?;
        let exits = Arc::new(Exits::default());
        let (ready_tx, mut ready) = watch::channel(false);
        let events = tokio::spawn(events::run(client.clone(), exits.clone(), ready_tx));
        let subscribed =
            tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r)).await;
        if !matches!(subscribed, Ok(Ok(_))) {
            events.abort();
            if let Some(mut d) = daemon {
                d.stop().await;
            }
            return Err(BackendError::new(
                ErrorKind::Unavailable,
                format!(
                    "subscribing to containerd events at {} failed within 10s",
                    socket.display()
                ),
            ));
        }
        let spare_shim_root = (self.spare_shim && self.runtime == RUNC_V2)
            .then(|| self.data_dir.join("spare-shim-root"));
        Ok(ContainerdBackend {
            inner: Arc::new(Inner {
                client,
                socket,
                logs,
                snapshotter: self.snapshotter,
                runtime: self.runtime,
                pull_progress: self.pull_progress,
                registry_logins: self.registry_logins,
                max_unpacked_bytes: self.max_unpacked_bytes,
                standbys: Standbys::default(),
                shims: ShimPool::new(spare_shim_root),
                exits,
                primer: cgroup::AttachPrimer::new(),
                boost: BoostBudget::new(self.boost.0, self.boost.1),
                instances: Mutex::new(HashMap::new()),
                log_copies: Mutex::new(HashMap::new()),
                images: AsyncMutex::new(HashMap::new()),
                daemon: AsyncMutex::new(daemon),
                events,
                network: Arc::new(network),
                userns: crate::image::IdMap {
                    base: self.security.userns_base,
                    size: self.security.userns_size,
                },
            }),
        })
    }
}
