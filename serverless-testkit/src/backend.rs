//! [`BackendHarness`]: a `ContainerdBackend` on a containerd of its own, for the backend's tests.

use std::path::{Path, PathBuf};

use serverless_containerd::{Builder, ContainerdBackend};
use serverless_core::{AppSpec, ImageRef, InstanceId, NetworkMode};

use crate::ctr::{container_ids, ctr};
use crate::images::busybox_archive;
use crate::leaks::{leftovers, remove_all, shims, wait_for_no_shims};
use crate::util::unique;

/// A `ContainerdBackend` in embedded mode (it starts its own private containerd in a temp
/// dir), in a namespace of its own (tests run in parallel, and the namespace names the cgroup
/// parent), with the [`busybox_image`](crate::busybox_image) written as an archive. Its bridge
/// is at [`NO_BRIDGE_NETNS`](crate::NO_BRIDGE_NETNS) unless the test configures one.
///
/// End a test with [`shutdown`](Self::shutdown), which checks that nothing is left. A test that
/// fails before that still removes its instances when the harness drops.
#[derive(Debug)]
pub struct BackendHarness {
    /// The backend.
    pub backend: ContainerdBackend,
    /// The temp dir: the backend's data (`data/`), containerd's, the image.
    pub dir: tempfile::TempDir,
    /// The busybox image's archive.
    pub image: PathBuf,
    clean: bool,
}

impl BackendHarness {
    /// Starts the backend with its defaults.
    pub async fn start() -> Self {
        Self::start_with(|b| b).await
    }

    /// Starts the backend with more settings on its builder.
    pub async fn start_with(configure: impl FnOnce(Builder) -> Builder) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sl-cd-")
            .tempdir()
            .expect("temp dir");
        let namespace = unique("serverless-t");
        // A bridge only inside a NetLab, which sets its own host namespace.
        let builder = ContainerdBackend::builder(dir.path().join("data"))
            .namespace(namespace)
            .network_host_netns(crate::NO_BRIDGE_NETNS);
        let backend = configure(builder)
            .build()
            .await
            .expect("embedded containerd starts");
        let image = busybox_archive(dir.path());
        Self {
            backend,
            dir,
            image,
            clean: false,
        }
    }

    /// An app named `name` running the busybox image, with `network = "none"` (a test of
    /// bridges sets `bridge` and runs the backend in a [`NetLab`](crate::NetLab)).
    pub fn app(&self, name: &str) -> AppSpec {
        loopback_app(
            name,
            ImageRef::parse(&format!("oci-archive:{}", self.image.display()))
                .expect("an archive reference"),
        )
    }

    /// A new instance id for `app`.
    pub fn id(&self, app: &str) -> InstanceId {
        InstanceId::new(unique(app))
    }

    /// Another engine on the harness's containerd and namespace, logs under `dir/<name>`,
    /// without a spare shim: the previous run (or the crashed gateway) of a reconcile test.
    pub async fn other_backend(&self, name: &str) -> ContainerdBackend {
        ContainerdBackend::builder(self.dir.path().join(name))
            .socket(self.backend.socket())
            .namespace(self.backend.namespace())
            .spare_shim(false)
            .build()
            .await
            .expect("a second backend on the harness's containerd")
    }

    /// [`ctr`] in the backend's namespace.
    pub fn ctr(&self, args: &[&str]) -> Vec<String> {
        ctr(self.backend.socket(), self.backend.namespace(), args)
    }

    /// What the namespace still holds besides the backend's spare shim: see [`leftovers`].
    pub fn leftovers(&self) -> Vec<String> {
        leftovers(self.backend.socket(), self.backend.namespace())
    }

    /// Pids of the namespace's shims, except those spawned for a spare shim's keeper.
    pub fn shims(&self) -> Vec<u32> {
        self.all_shims()
            .into_iter()
            .filter(|(_, id)| !id.starts_with(crate::leaks::SPARE_SHIM))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Every shim of the namespace: its pid and the container it was spawned for.
    pub fn all_shims(&self) -> Vec<(u32, String)> {
        shims()
            .into_iter()
            .filter(|s| s.serves(self.backend.socket()) && s.namespace == self.backend.namespace())
            .map(|s| (s.pid, s.id))
            .collect()
    }

    /// Container ids in the namespace (spare shims' keepers included).
    pub fn container_ids(&self) -> Vec<String> {
        container_ids(self.backend.socket(), self.backend.namespace())
    }

    /// Shuts the backend down; then no cgroup parent and no shim may be left.
    pub async fn shutdown(mut self) {
        self.clean = true;
        self.backend.shutdown().await.expect("shutdown");
        let cgroups = Path::new("/sys/fs/cgroup/memory").join(self.backend.namespace());
        assert!(
            !cgroups.exists(),
            "cgroup parent {} left behind",
            cgroups.display()
        );
        wait_for_no_shims(self.backend.socket()).await;
    }
}

impl Drop for BackendHarness {
    /// A test that failed before `shutdown` still removes its instances (no shims, mounts or
    /// cgroups left on the machine); then the embedded containerd stops with the backend.
    fn drop(&mut self) {
        if !self.clean {
            remove_all(
                self.backend.socket(),
                self.backend.namespace(),
                &self.dir.path().join("cleanup"),
            );
        }
    }
}

/// An app named `name` running `image` with `network = "none"` (loopback only): what tests that
/// do not test networking use, so nothing wires the machine's own network (the default `bridge`
/// would; `tests/network.rs` runs bridge apps inside a [`crate::NetLab`]).
pub fn loopback_app(name: &str, image: ImageRef) -> AppSpec {
    let mut app = AppSpec::new(name, image);
    app.network = NetworkMode::None;
    app
}
