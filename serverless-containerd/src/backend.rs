//! [`ContainerdBackend`]: the [`ContainerBackend`] over containerd.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest, GetRequest, KillRequest,
    ListContainersRequest, ListRequest as ListLeasesRequest, StartRequest,
};
use containerd_client::types::v1::Status as ProcessStatus;
use containerd_client::types::Mount;
use serverless_core::{
    AppSpec, BackendError, Connection, ContainerBackend, ErrorKind, Exit, ImageRef, InstanceId,
    OwnedInstance, Started,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{failed, is_not_found, Client, Lease};
use crate::daemon::Daemon;
use crate::events::{self, Exits};
use crate::image::{
    import_archive, pull_image, PreparedImage, ProgressHook, PullProgressFn, RegistryLogins,
};
use crate::logs::{self, LogFifos};
use crate::netns::Dialer;
use crate::{cgroup, labels, ports, spec};

mod shims;
mod standby;
use shims::ShimPool;
use standby::Standbys;

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// How much of an instance's log [`ContainerBackend::logs`] returns.
const LOG_TAIL_BYTES: u64 = 64 * 1024;
/// How much of the log a boot failure carries.
const BOOT_LOG_BYTES: u64 = 4 * 1024;

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
    registry_auth_file: Option<PathBuf>,
    max_unpacked_bytes: u64,
    spare_shim: bool,
}

/// [`Builder::max_unpacked_bytes`]'s default: 10 GiB.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 10 << 30;

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
    /// on): ≈ 9 ms less per cold start, for one idle shim process. Only with containerd's
    /// `io.containerd.runc.v2` runtime, whose shim can serve several containers.
    pub fn spare_shim(mut self, on: bool) -> Self {
        self.spare_shim = on;
        self
    }

    /// Connects (or starts the embedded containerd and connects) and subscribes to events.
    pub async fn build(mut self) -> Result<ContainerdBackend, BackendError> {
        let io = |what: String, e: std::io::Error| {
            BackendError::new(ErrorKind::Unavailable, format!("{what} failed")).with_source(e)
        };
        if let Some(path) = &self.registry_auth_file {
            self.registry_logins
                .add_auth_file(path)
                .map_err(|e| BackendError::new(ErrorKind::Image, e))?;
        }
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
        let spare_shim_root = (self.spare_shim && self.runtime == shims::RUNC_V2)
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
                instances: Mutex::new(HashMap::new()),
                log_copies: Mutex::new(HashMap::new()),
                images: tokio::sync::Mutex::new(HashMap::new()),
                daemon: tokio::sync::Mutex::new(daemon),
                events,
            }),
        })
    }
}

/// Runs instances as containerd containers: see the [crate docs](crate).
///
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct ContainerdBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ContainerdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdBackend")
            .field("socket", &self.inner.socket)
            .field("namespace", &self.inner.client.namespace_name)
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: Client,
    socket: PathBuf,
    logs: PathBuf,
    snapshotter: String,
    runtime: String,
    pull_progress: ProgressHook,
    registry_logins: RegistryLogins,
    max_unpacked_bytes: u64,
    /// Standbys per app and the instances that took one.
    standbys: Standbys,
    /// The spare shim (see [`shims`]).
    shims: ShimPool,
    exits: Arc<Exits>,
    /// Takes the cgroup attach's grace period off task creation (see [`cgroup::AttachPrimer`]).
    primer: cgroup::AttachPrimer,
    instances: Mutex<HashMap<String, Arc<Instance>>>,
    /// Per container: resolves once its output is all in its log file (see [`logs`]).
    log_copies: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Prepared images, by reference; the lock also serializes imports.
    images: tokio::sync::Mutex<HashMap<ImageRef, (Fingerprint, Arc<PreparedImage>)>>,
    daemon: tokio::sync::Mutex<Option<Daemon>>,
    events: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.events.abort();
    }
}

/// What identifies an archive's contents without reading it.
type Fingerprint = Option<(u64, Option<SystemTime>)>;

struct Instance {
    app: String,
    addr: SocketAddr,
    dialer: Dialer,
}

/// A task created but not started (see [`ContainerdBackend::create`]).
struct Created {
    /// The image it was made from (a standby made from an image since replaced is stale).
    image: Arc<PreparedImage>,
    pid: u32,
    dialer: Dialer,
    exit: watch::Receiver<Option<Exit>>,
}

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
            runtime: "io.containerd.runc.v2".to_owned(),
            pull_progress: ProgressHook::default(),
            registry_logins: RegistryLogins::default(),
            registry_auth_file: None,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            spare_shim: true,
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

    /// The containerd socket in use.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// The containerd namespace in use.
    pub fn namespace(&self) -> &str {
        &self.inner.client.namespace_name
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Instance>>> {
        self.inner
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.inner.logs.join(format!("{id}.log"))
    }

    fn cgroup(&self, id: &str) -> String {
        cgroup::path(self.namespace(), id)
    }

    /// Removes every container, task, snapshot and lease with our labels that this backend is
    /// not running (leftovers of a previous run), their cgroups and logs. Returns how many
    /// containers it removed (instances, and spare-shim keepers that are not this backend's).
    ///
    /// Meant for the leftovers of a run that has ended: while another engine still runs on the
    /// same namespace, both delete a removed instance's task (it on the exit event, this
    /// reconcile after its kill), and two concurrent deletes of one task can leave its shim
    /// running for good (containerd 1.6).
    pub async fn reconcile(&self) -> Result<usize, BackendError> {
        self.reconcile_inner(Duration::from_secs(60)).await
    }

    /// `lease_age`: leases younger than this may belong to a start or import in flight.
    async fn reconcile_inner(&self, lease_age: Duration) -> Result<usize, BackendError> {
        let known: Vec<String> = self.lock().keys().cloned().collect();
        let starting = self.inner.exits.len();
        let mut removed = 0;
        for container in self.containers().await? {
            let id = container.id.as_str();
            if self.held(&known, id) {
                continue;
            }
            self.teardown(id, Duration::ZERO).await?;
            removed += 1;
        }
        let client = &self.inner.client;
        // Snapshots of instances whose container is already gone.
        let snapshots = client
            .snapshots()
            .list(client.req(ListSnapshotsRequest {
                snapshotter: self.inner.snapshotter.clone(),
                filters: vec![format!("labels.\"{}\"", labels::INSTANCE)],
            }))
            .await
            .map_err(|s| failed("snapshot list", s))?;
        let mut stream = snapshots.into_inner();
        let mut keys = Vec::new();
        while let Some(page) = stream
            .message()
            .await
            .map_err(|s| failed("snapshot list", s))?
        {
            keys.extend(page.info.into_iter().map(|i| i.name));
        }
        for key in keys {
            if self.held(&known, &key) {
                continue;
            }
            self.remove_snapshot(&key).await?;
        }
        let leases = client
            .leases()
            .list(client.req(ListLeasesRequest {
                filters: vec![format!("labels.\"{}\"", labels::MANAGED)],
            }))
            .await
            .map_err(|s| failed("lease list", s))?
            .into_inner()
            .leases;
        // An import holds the image lock while its lease lives.
        let _imports = self.inner.images.lock().await;
        let now = SystemTime::now();
        for lease in leases {
            let created = lease
                .created_at
                .and_then(|t| u64::try_from(t.seconds).ok())
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
            let young = created
                .and_then(|c| now.duration_since(c).ok())
                .is_some_and(|age| age < lease_age);
            if young {
                continue;
            }
            let _ = client
                .leases()
                .delete(client.req(DeleteLeaseRequest {
                    id: lease.id,
                    sync: false,
                }))
                .await;
        }
        for cg in cgroup::children(self.namespace()) {
            let id = cg.rsplit('/').next().unwrap_or_default().to_owned();
            if !self.held(&known, &id) {
                cgroup::remove(&cg);
            }
        }
        if known.is_empty() && starting == 0 && !self.inner.shims.any_live() {
            cgroup::remove_parent(self.namespace());
        }
        Ok(removed)
    }

    /// Whether container `id` is this backend's now (reconcile leaves it alone): a running
    /// instance (`known`), one being started (its exit watch), or a spare shim's keeper.
    fn held(&self, known: &[String], id: &str) -> bool {
        known.iter().any(|k| k == id)
            || self.inner.exits.watch(id).is_some()
            || self.inner.shims.is_live(id)
    }

    /// Stops every instance of ours (SIGKILL), removes leftovers, and stops the embedded
    /// containerd if there is one. The backend is unusable afterwards.
    pub async fn shutdown(&self) -> Result<(), BackendError> {
        self.shutdown_standbys().await;
        self.shutdown_shims().await;
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            self.teardown(&id, Duration::ZERO).await?;
        }
        let result = self.reconcile_all().await;
        self.inner.events.abort();
        if let Some(mut daemon) = self.inner.daemon.lock().await.take() {
            daemon.stop().await;
        }
        result
    }

    /// Like reconcile, but also instances still starting (shutdown only).
    async fn reconcile_all(&self) -> Result<(), BackendError> {
        for container in self.containers().await? {
            self.teardown(&container.id, Duration::ZERO).await?;
        }
        self.reconcile_inner(Duration::ZERO).await.map(|_| ())
    }

    async fn prepared(&self, app: &AppSpec) -> Result<Arc<PreparedImage>, BackendError> {
        let fingerprint = match &app.image {
            ImageRef::OciArchive(path) => tokio::fs::metadata(path)
                .await
                .ok()
                .map(|m| (m.len(), m.modified().ok())),
            ImageRef::Registry(_) => None,
        };
        let mut images = self.inner.images.lock().await;
        if let Some((fp, image)) = images.get(&app.image) {
            if *fp == fingerprint {
                return Ok(image.clone());
            }
        }
        let image = match &app.image {
            ImageRef::OciArchive(path) => {
                let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                import_archive(
                    &self.inner.client,
                    &self.inner.snapshotter,
                    &format!("oci-archive:{}", path.display()),
                    &path,
                    self.inner.max_unpacked_bytes,
                )
                .await?
            }
            ImageRef::Registry(reference) => {
                pull_image(
                    &self.inner.client,
                    &self.inner.snapshotter,
                    reference,
                    &self.inner.pull_progress,
                    &self.inner.registry_logins,
                    self.inner.max_unpacked_bytes,
                )
                .await?
            }
        };
        let image = Arc::new(image);
        images.insert(app.image.clone(), (fingerprint, image.clone()));
        Ok(image)
    }

    async fn kill(&self, id: &str, signal: u32) -> Result<bool, BackendError> {
        let client = &self.inner.client;
        match client
            .tasks()
            .kill(client.req(KillRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
                signal,
                all: signal == 9,
            }))
            .await
        {
            Ok(_) => Ok(true),
            // No task, or its process already finished.
            Err(s) if is_not_found(&s) => Ok(false),
            Err(s) => Err(failed(format_args!("kill of {id}"), s)),
        }
    }

    async fn task_status(&self, id: &str) -> Option<(ProcessStatus, u32)> {
        let client = &self.inner.client;
        let got = client
            .tasks()
            .get(client.req(GetRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await
            .ok()?;
        let p = got.into_inner().process?;
        Some((
            ProcessStatus::try_from(p.status).unwrap_or(ProcessStatus::Unknown),
            p.exit_status,
        ))
    }

    /// Waits up to `limit` for the task of `id` to exit: via its exit watch when there is one,
    /// and by asking containerd (a missed event, or no watch for leftovers).
    async fn await_exit(&self, id: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut rx = self.inner.exits.watch(id);
        let mut first = true;
        loop {
            if rx.as_ref().is_some_and(|rx| rx.borrow().is_some()) {
                return true;
            }
            // With a watch, the events loop publishes the exit (after deleting the task); asking
            // containerd covers a missed event (after 500 ms quiet) and instances with no watch.
            if rx.is_none() || !first {
                match self.task_status(id).await {
                    None => return true,
                    Some((ProcessStatus::Stopped, _)) if rx.is_none() => return true,
                    // Not `true` yet: the caller would delete the task while the events loop
                    // may be deleting it too, and two concurrent deletes of one task can leave
                    // its shim running for good (containerd 1.6). `exited` deletes it once,
                    // whether or not the loop saw the event, and then publishes the exit.
                    Some((ProcessStatus::Stopped, status)) => {
                        events::exited(&self.inner.client, &self.inner.exits, id, status);
                    }
                    Some(_) => {}
                }
            }
            first = false;
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            match &mut rx {
                Some(rx) => {
                    let step = (deadline - now).min(Duration::from_millis(500));
                    let _ = tokio::time::timeout(step, rx.wait_for(|e| e.is_some())).await;
                }
                None => {
                    let step = (deadline - now).min(Duration::from_millis(20));
                    tokio::time::sleep(step).await;
                }
            }
        }
    }

    /// SIGTERM (unless `grace` is zero), wait, SIGKILL, wait; then delete task, container,
    /// snapshot, cgroup dirs and log. Idempotent.
    async fn teardown(&self, id: &str, grace: Duration) -> Result<(), BackendError> {
        self.terminate(id, grace).await?;
        self.delete_objects(id).await?;
        self.forget(id).await;
        Ok(())
    }

    /// Makes sure the task of `id` is not running: SIGTERM (unless `grace` is zero), up to
    /// `grace`, SIGKILL, up to 10 s.
    async fn terminate(&self, id: &str, grace: Duration) -> Result<(), BackendError> {
        self.lock().remove(id);
        let exited = self
            .inner
            .exits
            .watch(id)
            .map(|rx| rx.borrow().is_some())
            .unwrap_or(false);
        if exited {
            return Ok(());
        }
        let mut running = true;
        if !grace.is_zero() {
            running = self.kill(id, 15).await?;
            if running {
                running = !self.await_exit(id, grace).await;
            }
        }
        if running && self.kill(id, 9).await? && !self.await_exit(id, Duration::from_secs(10)).await
        {
            return Err(BackendError::new(
                ErrorKind::Unavailable,
                format!("instance {id} did not exit within 10s of SIGKILL"),
            ));
        }
        Ok(())
    }

    /// Drops what only this process holds about container `id`: its log file, exit watch and
    /// the instance id it was known by (when it was a standby).
    async fn forget(&self, id: &str) {
        let log = self.log_path(id);
        let _ = tokio::fs::remove_file(&log).await;
        logs::remove_fifos(&log);
        self.inner
            .log_copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.inner.exits.remove(id);
        self.lock().remove(id);
        self.unalias(id);
    }

    /// Our containers (by label), leftovers of a previous run included.
    async fn containers(&self) -> Result<Vec<Container>, BackendError> {
        let client = &self.inner.client;
        Ok(client
            .containers()
            .list(client.req(ListContainersRequest {
                filters: vec![format!("labels.\"{}\"", labels::INSTANCE)],
            }))
            .await
            .map_err(|s| failed("container list", s))?
            .into_inner()
            .containers)
    }

    async fn delete_objects(&self, id: &str) -> Result<(), BackendError> {
        let client = &self.inner.client;
        match client
            .tasks()
            .delete(client.req(DeleteTaskRequest {
                container_id: id.to_owned(),
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            // The events loop deletes exited tasks too; losing that race is fine.
            Err(_) if self.task_status(id).await.is_none() => {}
            Err(s) => return Err(failed(format_args!("task delete of {id}"), s)),
        }
        match client
            .containers()
            .delete(client.req(DeleteContainerRequest { id: id.to_owned() }))
            .await
        {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            Err(s) => return Err(failed(format_args!("container delete of {id}"), s)),
        }
        self.remove_snapshot(id).await?;
        cgroup::remove(&self.cgroup(id));
        Ok(())
    }

    async fn remove_snapshot(&self, key: &str) -> Result<(), BackendError> {
        let client = &self.inner.client;
        match client
            .snapshots()
            .remove(client.req(RemoveSnapshotRequest {
                snapshotter: self.inner.snapshotter.clone(),
                key: key.to_owned(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(s) => Err(failed(format_args!("snapshot remove of {key}"), s)),
        }
    }

    async fn read_log_tail(&self, id: &str, max: u64) -> String {
        tail(&self.log_path(id), max).await.unwrap_or_default()
    }

    /// The log tail of a process that just exited: complete once our copy of its output has
    /// reached the end of both streams (the shim closes them after delivering everything, at
    /// the latest 2 s after the exit).
    async fn read_settled_log_tail(&self, id: &str, max: u64) -> String {
        let copy = self
            .inner
            .log_copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        if let Some(done) = copy {
            logs::copied(done, Duration::from_secs(3)).await;
        }
        self.read_log_tail(id, max).await
    }

    async fn start_inner(
        &self,
        app: &AppSpec,
        id: &str,
        phases: &mut Vec<(&'static str, Duration)>,
    ) -> Result<Started, BackendError> {
        let created = self.create(app, id, false, phases).await?;
        self.run(app, id, id, created, phases).await
    }

    /// Everything up to a created (not started) task: snapshot, container, task (shim spawn and
    /// `runc create`: namespaces, cgroup, rootfs; the app's process has not run yet) and the
    /// dialer into its network namespace. The exit watch of `id` is registered first.
    async fn create(
        &self,
        app: &AppSpec,
        id: &str,
        standby: bool,
        phases: &mut Vec<(&'static str, Duration)>,
    ) -> Result<Created, BackendError> {
        let client = &self.inner.client;
        let image = self.prepared(app).await?;
        let cgroup_path = self.cgroup(id);
        let mut spec = spec::build(
            app,
            &spec::SpecInput {
                id,
                cgroup_path: &cgroup_path,
                image: image.config.as_ref(),
                user: &image.user,
            },
        )?;
        // A standby is made off the request's path: it spawns its own shim.
        let spare_shim = if standby { None } else { self.claim_shim() };
        if let Some(claim) = &spare_shim {
            let mut annotations = spec.annotations().clone().unwrap_or_default();
            annotations.insert(shims::GROUP_ANNOTATION.to_owned(), claim.group().to_owned());
            spec.set_annotations(Some(annotations));
        }
        let spec_json = serde_json::to_vec(&spec).map_err(|e| {
            BackendError::new(ErrorKind::Image, "serializing the runtime spec failed")
                .with_source(e)
        })?;
        let mut our_labels: HashMap<String, String> = [
            (labels::MANAGED.to_owned(), "true".to_owned()),
            (labels::APP.to_owned(), app.name.clone()),
            (labels::INSTANCE.to_owned(), id.to_owned()),
        ]
        .into();
        if standby {
            our_labels.insert(labels::STANDBY.to_owned(), "true".to_owned());
        }
        let exit = self.inner.exits.register(id, cgroup_path);

        let mut t = Instant::now();
        let mut phase = |name: &'static str, t: &mut Instant| {
            let now = Instant::now();
            phases.push((name, now - *t));
            *t = now;
        };

        // From here to the created task, runc's cgroup attach passes without a grace period.
        let _primed = self.inner.primer.hold();
        // The snapshot is unreferenced until the container exists: a lease keeps a garbage
        // collection (after another instance's removal) from taking it meanwhile.
        let lease = Lease::create(client, &format!("start-{id}")).await?;
        let mounts = client
            .snapshots()
            .prepare(client.leased(
                PrepareSnapshotRequest {
                    snapshotter: self.inner.snapshotter.clone(),
                    key: id.to_owned(),
                    parent: image.chain_id.clone(),
                    labels: our_labels.clone(),
                },
                &lease.value,
            ))
            .await
            .map_err(|s| failed(format_args!("snapshot prepare for {id}"), s));
        let mounts: Vec<Mount> = match mounts {
            Ok(m) => m.into_inner().mounts,
            Err(e) => {
                lease.delete(client).await;
                return Err(e);
            }
        };
        phase("snapshot", &mut t);

        let created = client
            .containers()
            .create(client.req(CreateContainerRequest {
                container: Some(Container {
                    id: id.to_owned(),
                    labels: our_labels,
                    image: image.name.clone(),
                    runtime: Some(Runtime {
                        name: self.inner.runtime.clone(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: SPEC_TYPE_URL.to_owned(),
                        value: spec_json,
                    }),
                    snapshotter: self.inner.snapshotter.clone(),
                    snapshot_key: id.to_owned(),
                    created_at: None,
                    updated_at: None,
                    extensions: HashMap::new(),
                    sandbox: String::new(),
                }),
            }))
            .await
            .map_err(|s| failed(format_args!("container create of {id}"), s));
        // The container references the snapshot now (or failed and start cleans up).
        let lease_client = client.clone();
        tokio::spawn(async move { lease.delete(&lease_client).await });
        created?;
        phase("container", &mut t);

        let fifos = LogFifos::open(&self.log_path(id)).map_err(|e| {
            BackendError::new(
                ErrorKind::Unavailable,
                format!("making the output FIFOs of {id} failed"),
            )
            .with_source(e)
        })?;
        let pid = client
            .tasks()
            .create(client.req(CreateTaskRequest {
                container_id: id.to_owned(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: fifos.stdout.clone(),
                stderr: fifos.stderr.clone(),
                terminal: false,
                checkpoint: None,
                options: None,
                runtime_path: String::new(),
            }))
            .await
            .map_err(|s| failed(format_args!("task create of {id}"), s))?
            .into_inner()
            .pid;
        let copied = fifos.copy();
        self.inner
            .log_copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), copied);
        let dialer = Dialer::spawn(pid, id).await.map_err(|e| {
            BackendError::new(
                ErrorKind::Unavailable,
                format!("joining the network namespace of {id} (pid {pid}) failed"),
            )
            .with_source(e)
        })?;
        phase("task_create", &mut t);
        // The instance's task is in the spare shim now: its keeper can go.
        drop(spare_shim);
        Ok(Created {
            image,
            pid,
            dialer,
            exit,
        })
    }

    /// Starts a created task (container `id`, known to callers as instance `name`) and waits
    /// until it listens.
    async fn run(
        &self,
        app: &AppSpec,
        id: &str,
        name: &str,
        created: Created,
        phases: &mut Vec<(&'static str, Duration)>,
    ) -> Result<Started, BackendError> {
        let client = &self.inner.client;
        let Created {
            pid,
            dialer,
            mut exit,
            ..
        } = created;
        let mut t = Instant::now();
        client
            .tasks()
            .start(client.req(StartRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| failed(format_args!("task start of {name}"), s))?;
        let now = Instant::now();
        phases.push(("task_start", now - t));
        t = now;

        let listener = self
            .await_listener(app, name, pid, &dialer, &mut exit)
            .await?;
        phases.push(("port_ready", t.elapsed()));

        let addr = SocketAddr::new(listener.dial_addr(), listener.port);
        self.lock().insert(
            id.to_owned(),
            Arc::new(Instance {
                app: app.name.clone(),
                addr,
                dialer,
            }),
        );
        Ok(Started {
            port: listener.port,
            phases: std::mem::take(phases),
        })
    }

    /// Polls the instance's TCP tables until something listens, the process exits, or the
    /// startup timeout passes.
    async fn await_listener(
        &self,
        app: &AppSpec,
        id: &str,
        pid: u32,
        dialer: &Dialer,
        exit: &mut watch::Receiver<Option<Exit>>,
    ) -> Result<ports::Listener, BackendError> {
        let started = Instant::now();
        let timeout = app.limits.startup_timeout;
        let mut polls = 0u32;
        let mut sock_diag = true;
        loop {
            if let Some(code) = *exit.borrow() {
                return Err(BackendError::boot_failed(code, String::new()));
            }
            let mut listeners = Vec::new();
            if sock_diag {
                match dialer.listeners().await {
                    Ok(found) => listeners = found,
                    Err(e) => {
                        tracing::debug!(instance = %id, error = %e, "sock_diag port discovery failed, reading /proc/{pid}/net instead");
                        sock_diag = false;
                    }
                }
            }
            if !sock_diag {
                for table in ["tcp", "tcp6"] {
                    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
                        listeners.extend(ports::parse_listeners(&text));
                    }
                }
            }
            if let Some(l) = ports::choose(&listeners, app.port) {
                return Ok(l);
            }
            let elapsed = started.elapsed();
            if elapsed >= timeout {
                return Err(BackendError::new(
                    ErrorKind::StartTimeout,
                    format!(
                        "instance {id} of app {} listened on no port within {}",
                        app.name,
                        humanize(timeout)
                    ),
                ));
            }
            polls += 1;
            // 1 ms steps for the first ~100 ms (most apps listen by then), then 10 ms.
            let step = if polls < 100 {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(10)
            };
            let step = step.min(timeout - elapsed);
            let _ = tokio::time::timeout(step, exit.wait_for(|e| e.is_some())).await;
        }
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The last `max` bytes of a file, starting at a line boundary.
async fn tail(path: &Path, max: u64) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    let start = len.saturating_sub(max);
    f.seek(std::io::SeekFrom::Start(start)).await?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).await?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        if let Some(nl) = text.find('\n') {
            text.drain(..=nl);
        }
    }
    Ok(text)
}

/// containerd ids: `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76 characters. Also keeps ids
/// safe in file and cgroup paths.
fn validate_id(id: &InstanceId) -> Result<&str, BackendError> {
    let s = id.as_str();
    let mut prev_sep = true;
    let mut ok = !s.is_empty() && s.len() <= 76;
    for b in s.bytes() {
        let sep = matches!(b, b'.' | b'_' | b'-');
        if !(b.is_ascii_alphanumeric() || sep) || (sep && prev_sep) {
            ok = false;
            break;
        }
        prev_sep = sep;
    }
    if ok && !prev_sep {
        Ok(s)
    } else {
        Err(BackendError::new(
            ErrorKind::NotFound,
            format!("invalid instance id {s:?}: expected letters and digits separated by single '.', '_' or '-', at most 76 characters"),
        ))
    }
}

#[async_trait]
impl ContainerBackend for ContainerdBackend {
    /// Imports or pulls the image; with [`Scale::standby`](serverless_core::Scale::standby)
    /// also creates the app's standby (a failing standby is logged, never an error).
    async fn prepare(&self, app: &AppSpec) -> Result<(), BackendError> {
        self.prepared(app).await?;
        self.refill_shim(Duration::ZERO);
        if app.scale.standby {
            self.prepare_standby(app).await;
        }
        Ok(())
    }

    /// With [`Scale::standby`](serverless_core::Scale::standby) and a standby made for this
    /// exact spec (and image), only starts it and refills it in the background; otherwise (or
    /// if that standby is unusable) creates and starts a new container.
    async fn start(&self, app: &AppSpec, id: &InstanceId) -> Result<Started, BackendError> {
        let id = validate_id(id)?;
        if self.inner.exits.watch(id).is_some() || self.aliased(id) {
            return Err(BackendError::new(
                ErrorKind::Unavailable,
                format!("instance {id} already exists"),
            ));
        }
        let mut phases = Vec::with_capacity(5);
        let t = Instant::now();
        let standby = match app.scale.standby {
            true => self.take_standby(app, id).await,
            false => None,
        };
        let (container, result) = match standby {
            Some(standby) => {
                phases.push(("standby", t.elapsed()));
                let result = self
                    .run(app, &standby.container, id, standby.created, &mut phases)
                    .await;
                (standby.container, result)
            }
            None => {
                let result = self.start_inner(app, id, &mut phases).await;
                if result.is_ok() && app.scale.standby {
                    self.refill_standby(app);
                }
                (id.to_owned(), result)
            }
        };
        let err = match result {
            Ok(started) => return Ok(started),
            Err(err) => err,
        };
        // Free everything the attempt created. Deleting the task flushes its output, so the
        // log is read after that.
        let id = container.as_str();
        let mut cleanup = self.terminate(id, Duration::ZERO).await;
        if cleanup.is_ok() {
            cleanup = self.delete_objects(id).await;
        }
        let logs = self.read_settled_log_tail(id, BOOT_LOG_BYTES).await;
        self.forget(id).await;
        if let Err(c) = cleanup {
            tracing::warn!(instance = id, error = %c, "cleanup after a failed start failed");
        }
        Err(match err.exit() {
            Some(exit) if err.kind() == ErrorKind::BootFailed => {
                BackendError::boot_failed(exit, logs)
            }
            _ if err.kind() == ErrorKind::StartTimeout => err.with_logs(logs),
            _ => err,
        })
    }

    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), BackendError> {
        let id = validate_id(id)?;
        self.teardown(&self.container_of(id), grace).await
    }

    async fn wait(&self, id: &InstanceId) -> Result<Exit, BackendError> {
        let container = self.container_of(id.as_str());
        let mut rx = self.inner.exits.watch(&container).ok_or_else(|| {
            BackendError::new(ErrorKind::NotFound, format!("instance {id} not found"))
        })?;
        let exit = rx.wait_for(|e| e.is_some()).await.map_err(|_| {
            BackendError::new(
                ErrorKind::NotFound,
                format!("instance {id} was removed before it exited"),
            )
        })?;
        (*exit).ok_or_else(|| BackendError::new(ErrorKind::NotFound, format!("instance {id}")))
    }

    async fn connect(&self, id: &InstanceId) -> Result<Connection, BackendError> {
        let container = self.container_of(id.as_str());
        let instance = self.lock().get(&container).cloned().ok_or_else(|| {
            BackendError::new(ErrorKind::NotFound, format!("instance {id} not found"))
        })?;
        let stream = instance.dialer.connect(instance.addr).await.map_err(|e| {
            BackendError::new(
                ErrorKind::Connect,
                format!(
                    "connecting to instance {id} of app {} at {} failed",
                    instance.app, instance.addr
                ),
            )
            .with_source(e)
        })?;
        Ok(Box::new(stream))
    }

    /// Instances by the ids they were started with; this run's standbys that no instance took
    /// yet are not instances and not listed (a previous run's are).
    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
        let containers = self.containers().await?;
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let instance = self.instance_of(&c.id);
            if instance.is_none()
                && c.labels.contains_key(labels::STANDBY)
                && self.inner.exits.watch(&c.id).is_some()
            {
                continue;
            }
            // Spare shims' keepers are not instances: this run's are its own business, a
            // previous run's are removed by reconcile.
            if c.labels.contains_key(labels::SPARE_SHIM) {
                continue;
            }
            let running = matches!(
                self.task_status(&c.id).await,
                Some((
                    ProcessStatus::Running | ProcessStatus::Created | ProcessStatus::Paused,
                    _
                ))
            );
            out.push(OwnedInstance {
                app: c.labels.get(labels::APP).cloned().unwrap_or_default(),
                id: InstanceId::new(instance.unwrap_or(c.id)),
                running,
            });
        }
        Ok(out)
    }

    async fn logs(&self, id: &InstanceId) -> Result<String, BackendError> {
        let id = validate_id(id)?;
        let path = self.log_path(&self.container_of(id));
        match tail(&path, LOG_TAIL_BYTES).await {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BackendError::new(
                ErrorKind::NotFound,
                format!("no logs for instance {id}"),
            )),
            Err(e) => Err(BackendError::new(
                ErrorKind::Unavailable,
                format!("reading the logs of {id} failed"),
            )
            .with_source(e)),
        }
    }

    /// Discards the app's standby if it was made for exactly this spec.
    async fn release(&self, app: &AppSpec) {
        self.release_standby(app).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for ok in ["hello-1-abc", "a", "a.b_c-d", "A1"] {
            assert!(validate_id(&InstanceId::new(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "a/b",
            "../x",
            "a b",
            &"x".repeat(77),
        ] {
            assert!(validate_id(&InstanceId::new(bad)).is_err(), "{bad}");
        }
    }
}
