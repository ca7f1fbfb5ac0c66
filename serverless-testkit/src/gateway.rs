//! [`GatewayHarness`]: the in-process gateway over a containerd the test owns; what tests and
//! the bench read off a gateway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::Method;
use serverless_containerd::ContainerdBackend;
use serverless_core::{Config, ContainerBackend};
use serverless_proxy::Gateway;

use crate::client::{client, send, Answer, HttpClient};
use crate::containerd::Containerd;
use crate::gateway_toml::GatewayToml;
use crate::leaks::{objects, remove_all, wait_for_no_shims, Objects};
use crate::util::unique;

/// A [`Containerd`] process of the test's own (which it may kill and restart), a backend in a
/// namespace of its own on it, and the gateway over that backend.
///
/// End a test with [`stop`](Self::stop), which checks that nothing is left. A test that fails
/// before that still removes its instances when the harness drops.
pub struct GatewayHarness {
    /// The gateway; `None` only once it was taken to shut it down by hand.
    pub gateway: Option<Gateway>,
    /// The backend the gateway runs instances on.
    pub backend: Arc<ContainerdBackend>,
    /// The containerd process.
    pub containerd: Containerd,
    /// The backend's namespace.
    pub namespace: String,
    /// A client for [`get`](Self::get).
    pub client: HttpClient,
    clean: bool,
    /// The temp dir (images, data, containerd's): a field after `containerd`, so it is removed
    /// after containerd stopped.
    pub dir: tempfile::TempDir,
}

impl std::fmt::Debug for GatewayHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHarness")
            .field("containerd", &self.containerd)
            .field("namespace", &self.namespace)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl GatewayHarness {
    /// Starts it; `apps` gets the temp dir (to write images into) and returns the `[[apps]]`
    /// TOML, each with `network = "none"` ([`assert_no_bridge`](crate::assert_no_bridge)):
    /// [`apps_toml`](crate::apps_toml) of [`AppToml`](crate::AppToml)s, or one's `to_string()`.
    /// The gateway listens on loopback ports of its choosing.
    pub async fn start(apps: impl FnOnce(&Path) -> String) -> Self {
        Self::start_with("", apps).await
    }

    /// Like [`start`](Self::start), with `top` (top-level config TOML) before the apps.
    pub async fn start_with(top: &str, apps: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sl-rel-")
            .tempdir()
            .expect("temp dir");
        let apps = apps(dir.path());
        let containerd = Containerd::start(dir.path());
        let namespace = unique("rel");
        let backend = Arc::new(
            ContainerdBackend::builder(dir.path().join("data"))
                .socket(&containerd.socket)
                .namespace(&namespace)
                .network_host_netns(crate::NO_BRIDGE_NETNS)
                .build()
                .await
                .expect("connect to the test's containerd"),
        );
        let config = Config::from_toml(&format!("{}{apps}", GatewayToml::new().top(top)))
            .expect("a valid config");
        crate::assert_no_bridge(&config);
        let gateway = Gateway::start(config, backend.clone())
            .await
            .expect("the gateway starts");
        Self {
            gateway: Some(gateway),
            backend,
            containerd,
            namespace,
            client: client(),
            clean: false,
            dir,
        }
    }

    /// The gateway.
    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("the gateway runs")
    }

    /// The gateway's address.
    pub fn addr(&self) -> SocketAddr {
        self.gateway().listen_addr()
    }

    /// `GET path` with `Host: host` through the gateway.
    pub async fn get(&self, host: &str, path: &str) -> Result<Answer, String> {
        send(&self.client, self.addr(), host, Method::GET, path, b"").await
    }

    /// The instance ids of `app` in the gateway's pool.
    pub fn instances(&self, app: &str) -> Vec<String> {
        instance_ids(self.gateway(), app)
    }

    /// The cgroup v1 directory of an instance under `controller` (`memory`, `pids`,
    /// `cpu,cpuacct`).
    pub fn cgroup(&self, controller: &str, id: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.namespace)
            .join(id)
    }

    /// A value of the gateway's metrics: see [`metric`].
    pub fn metric(&self, prefix: &str) -> f64 {
        metric(self.gateway(), prefix)
    }

    /// What containerd holds of our namespace: see [`objects`].
    pub fn objects(&self) -> Objects {
        objects(&self.containerd.socket, &self.namespace)
    }

    /// Graceful end: gateway shutdown, backend shutdown; then nothing may be left (no instance,
    /// no containerd object, no shim) before containerd is stopped.
    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
        let left = self.backend.list().await.expect("list instances");
        assert!(left.is_empty(), "left behind: {left:?}");
        self.backend.shutdown().await.expect("backend shutdown");
        assert_eq!(
            self.objects(),
            Objects::default(),
            "containerd still holds objects"
        );
        let containers = self.containerd.ctr(&self.namespace, &["containers", "ls"]);
        assert!(containers.is_empty(), "containers left: {containers:?}");
        wait_for_no_shims(&self.containerd.socket).await;
        self.clean = true;
        self.containerd.stop();
    }
}

impl Drop for GatewayHarness {
    fn drop(&mut self) {
        if self.clean {
            return;
        }
        self.gateway.take();
        remove_all(
            &self.containerd.socket,
            &self.namespace,
            &self.dir.path().join("cleanup"),
        );
    }
}

/// The instance ids of `app` in `gateway`'s pool (none when there is no such app).
pub fn instance_ids(gateway: &Gateway, app: &str) -> Vec<String> {
    gateway
        .engine()
        .app(app)
        .map(|a| {
            a.pool
                .snapshot()
                .instances
                .iter()
                .map(|i| i.id.as_str().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A value of `gateway`'s Prometheus metrics: the sum of the samples on the lines that start
/// with `prefix` (a metric name with some of its labels, or a whole series).
pub fn metric(gateway: &Gateway, prefix: &str) -> f64 {
    gateway
        .engine()
        .encode_metrics()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
