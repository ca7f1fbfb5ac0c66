//! Runs serverless-container instances on [containerd]: any OCI image becomes instances of an
//! app, each in its own network namespace, found by the port it listens on.
//!
//! [`ContainerdBackend`] implements [`serverless_core::ContainerBackend`]:
//!
//! - **containerd**: a given socket, or (the embedded default) a private `containerd` process
//!   with root, state and socket under the data dir, stopped by [`ContainerdBackend::shutdown`].
//!   Everything lives in our own containerd namespace (default `serverless`) and carries the
//!   labels `serverless.managed`, `serverless.app`, `serverless.instance`.
//! - **images**: `oci-archive:PATH` (an OCI image layout tar or a `docker save` tar) is written
//!   into the content store and its layers unpacked into snapshots. [`ImageBuilder`] writes such
//!   archives from Rust. Registry references (`host/repo:tag`, `host/repo@sha256:…`, Docker Hub
//!   short names such as `busybox`) are pulled client-side (containerd 1.6 has no Transfer
//!   service): the linux manifest for this machine's architecture is chosen from an index (OCI or
//!   Docker v2 media types), blobs are streamed into the content store with their digests
//!   checked, blobs already present are skipped, and the layers are unpacked the same way.
//!   Pulls are anonymous unless [`Builder::registry_auth`] or an auth file
//!   ([`Builder::registry_auth_file`], as `docker login` writes it) gives credentials for the
//!   registry (HTTP Basic, or the token a Bearer challenge hands out for them); loopback
//!   registries are spoken to over plain HTTP, all others over HTTPS. [`Builder::pull_progress`] reports progress ([`PullProgress`]). Failures (unknown
//!   repository or tag, unreachable registry, authentication required, no matching platform)
//!   are [`ErrorKind::Image`](serverless_core::ErrorKind::Image) errors naming the reference.
//!   A reference is pulled once per backend; later starts reuse it. Before containerd unpacks
//!   a layer its media type is checked and its unpacked size measured (gzip layers are
//!   decompressed as a stream): an image over [`Builder::max_unpacked_bytes`] (default 10 GiB)
//!   is refused, and a failed import or pull leaves no content or snapshots behind.
//! - **instances**: an OCI runtime spec from the image config and the app (ENTRYPOINT/CMD or
//!   `command`, ENV + `PORT`, USER — a name or number, `user[:group]`, resolved against the
//!   image's own `/etc/passwd` and `/etc/group` when the image is prepared, with the user's
//!   supplementary groups, as Docker does), the slot's CPU quota, memory limit without swap and pids limit,
//!   containerd's default capabilities, masked and read-only paths, no-new-privileges, an own
//!   cgroup and a new network namespace with only loopback.
//! - **standbys** (per app with [`Scale::standby`](serverless_core::Scale::standby), off by
//!   default): one container whose task is created (`runc create` done) but not started, made at
//!   `prepare` and again 100 ms after a cold start takes it; that cold start is then only `task
//!   start` + port discovery. It costs a shim and a waiting `runc init` per app (the operations
//!   guide has the memory figure). [`release`](serverless_core::ContainerBackend::release), a start
//!   or `prepare` with another spec, [`ContainerdBackend::shutdown`] and reconcile remove it.
//! - **spare shim** ([`Builder::spare_shim`], on by default): one runc shim spawned ahead, by a
//!   *keeper* container (`spare-shim.<pid>.<n>`, label `serverless.spare-shim`) whose task is
//!   created and killed at once; a start that takes no standby puts the keeper's group in its spec
//!   (`io.containerd.runc.v2.group`), so containerd finds that shim serving instead of spawning one
//!   (the cold start skips the shim spawn). The keeper is deleted 100 ms later (the shim then
//!   serves only the instance and exits with it) and the next spare is made. Cost: one idle shim
//!   process per backend. Shutdown and reconcile remove keepers.
//! - **cgroup attach**: while a task is created, a helper thread keeps the kernel's cgroup attach
//!   lock in writer mode, so `runc create`'s cgroup attach does not wait for an RCU grace period;
//!   nothing on the host changes.
//! - **port discovery**: the LISTEN sockets of the instance's namespace (a `NETLINK_SOCK_DIAG`
//!   dump made inside it; `/proc/<pid>/net/tcp` and `tcp6` when the kernel lacks `inet_diag`),
//!   polled every millisecond at first; `PORT` is preferred when several listen.
//! - **dialing**: [`connect`](serverless_core::ContainerBackend::connect) creates the socket in
//!   the instance's namespace (a per-instance helper thread that joined it with `setns`) and
//!   connects to the loopback port.
//! - **exits** come from containerd's events service (OOM kills are flagged from the OOM event
//!   and the cgroup's `oom_kill` counter); **logs**: the task's stdout and stderr are FIFOs that
//!   this process copies into one file per instance (one writer, so nothing is lost — containerd
//!   1.6's own `file://` stdio drops stderr written after stdout closed — and a boot failure's
//!   last lines are complete once both FIFOs ended); [`ContainerdBackend::adopt`] takes over
//!   a previous run's running instances of unchanged apps (and the embedded containerd it left
//!   running), [`ContainerdBackend::reconcile`] removes the rest of what it left.
//!
//! ```no_run
//! use std::time::Duration;
//! use serverless_containerd::{ContainerdBackend, ImageBuilder};
//! use serverless_core::{AppSpec, ContainerBackend, ImageRef, InstanceId};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // An image holding a static busybox, serving the current directory.
//! ImageBuilder::new()
//!     .file("/bin/busybox", std::fs::read("/bin/busybox")?, 0o755)
//!     .file("/www/index.html", b"hello\n".to_vec(), 0o644)
//!     .cmd(["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"])
//!     .write_oci_archive("/tmp/hello.tar")?;
//!
//! let backend = ContainerdBackend::embedded("/tmp/serverless-data").await?;
//! let app = AppSpec::new("hello", ImageRef::parse("oci-archive:/tmp/hello.tar")?);
//! let id = InstanceId::new("hello-1");
//! let started = backend.start(&app, &id).await?;
//! println!("listening on {} after {:?}", started.port, started.phases);
//!
//! let mut conn = backend.connect(&id).await?;
//! conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
//! let mut response = String::new();
//! conn.read_to_string(&mut response).await?;
//!
//! backend.stop(&id, Duration::from_secs(1)).await?;
//! backend.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The process needs root (namespaces, cgroups, mounts), `containerd` and `runc`.
//!
//! # What is public, and why
//!
//! - [`ContainerdBackend`]: the backend an embedder hands to the engine (it implements
//!   [`ContainerBackend`](serverless_core::ContainerBackend)), plus what only this backend
//!   offers: [`adopt`](ContainerdBackend::adopt) ([`Adopted`]) and
//!   [`reconcile`](ContainerdBackend::reconcile) after a crash,
//!   [`shutdown`](ContainerdBackend::shutdown), the socket and namespace in use.
//! - [`Builder`] and [`DEFAULT_MAX_UNPACKED_BYTES`]: its settings (which containerd, namespace,
//!   snapshotter, registry credentials, unpack limit, spare shim).
//! - [`PullProgress`] and [`PullProgressFn`]: what [`Builder::pull_progress`] reports, for a
//!   progress bar.
//! - [`ImageBuilder`] and [`BuildError`]: writing small OCI archives from files (the CLI's hello
//!   image, tests, examples), no registry or Docker needed.
//!
//! Failures are [`serverless_core::BackendError`]s (a kind and `is_*()` predicates), so an
//! embedder classifies them the same way for every backend. Everything else — the containerd
//! client, events, image import and pull, the OCI runtime spec, network namespaces, port
//! discovery, cgroups, logs — is private: implementation, free to change. No `unsafe`: the
//! syscalls go through `nix`.
//!
//! [containerd]: https://containerd.io

#![forbid(unsafe_code)]

mod backend;
mod cgroup;
mod client;
mod daemon;
mod events;
mod gc_lease;
mod host_support;
mod image;
mod labels;
mod logs;
mod netns;
mod network;
mod ports;
mod seccomp;
mod sock_diag;
mod spec;

pub use backend::{Adopted, Builder, ContainerdBackend, DEFAULT_MAX_UNPACKED_BYTES};
pub use image::{BuildError, ImageBuilder, PullProgress, PullProgressFn};
