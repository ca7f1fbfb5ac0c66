//! The workspace's one test harness, for the integration tests of `serverless-containerd` and
//! `serverless-cli` and for `serverless-bench`: what each of them would otherwise copy.
//!
//! Real-containerd tests start their own containerd in a temp dir (never a system one) and leave
//! nothing behind, also when they fail:
//!
//! - **May this test run?** [`can_run`] checks for root, containerd, runc, ctr and busybox. When
//!   something is missing it skips the test loudly, except when the `CI` environment variable is
//!   set: then it panics naming what is missing, so a CI run cannot pass with the real tests
//!   skipped. (`scripts/test` installs what they need first, or stops.)
//! - **Harnesses:** [`BackendHarness`], a `ContainerdBackend` on its own embedded containerd;
//!   `GatewayHarness` (feature `gateway`), the in-process gateway over a [`Containerd`] process
//!   the test may kill and restart; [`GatewayProcess`], the real `serverless` binary as a child.
//! - **Configs:** [`GatewayToml`] (loopback `listen`/`admin`, `data_dir`, `[containerd]`) and
//!   [`AppToml`] (`[[apps]]` with `network = "none"`), for those harnesses ([`apps_toml`]).
//! - **containerd:** [`Containerd`] (start, stop, SIGKILL, restart), [`ctr`] rows and
//!   [`container_ids`].
//! - **Registry:** [`DockerRegistry`], Debian's `docker-registry` on loopback.
//! - **Images:** [`busybox_image`] (busybox httpd with CGI scripts), [`hello_image`] (the demo
//!   app), each also written as an archive ([`busybox_archive`], [`hello_archive`]);
//!   [`python_archive`], a Python standard-library server on Debian (debootstrap, cached under
//!   `target/bench-images/`).
//! - **Leak checks:** [`objects`] and [`leftovers`] of a namespace, [`shims`], [`remove_all`].
//! - **Networks:** [`NetLab`], namespaces of the test's own for `network = "bridge"` (an
//!   outside world with HTTP and DNS, the engine's bridge); every other test runs
//!   `network = "none"`, which the harnesses enforce ([`NO_BRIDGE_NETNS`],
//!   [`assert_no_bridge`]). Their leak checks: [`network_on_disk`], [`network_settled`],
//!   [`network_wired`], [`NetLab::veths`], [`NetLab::state`].
//! - **Processes:** [`processes`], [`parent_of`], [`children_of`], [`instance_pids`],
//!   [`memory_kib`], [`rss_kib`], [`fds`], [`signal`].
//! - **Clients:** [`client`] and [`send`] (an [`Answer`]), [`connect`] and [`get`] (one
//!   connection, timed), [`http_get`] over a backend's connection, [`wait_http`], [`Load`].
//! - **Test plumbing:** [`unique`] names, [`eventually`], [`env_num`], and the
//!   [`shared`]/[`exclusive`] locks for tests that count process-wide things.
//!
//! # Feature flags
//!
//! - `gateway`: `GatewayHarness`, and `metric` and `instance_ids` of a running gateway (pulls
//!   in `serverless-proxy`; the containerd crate's tests do without it).

mod backend;
mod client;
mod containerd;
mod ctr;
mod debian;
#[cfg(feature = "gateway")]
mod gateway;
mod gateway_process;
mod gateway_toml;
mod images;
mod leaks;
mod load;
mod netlab;
mod procs;
mod registry;
mod require;
mod util;

pub use backend::{loopback_app, BackendHarness};
pub use client::{
    client, connect, free_port, get, http_get, send, wait_http, Answer, HttpClient, Sender,
    ERROR_HEADER,
};
pub use containerd::Containerd;
pub use ctr::{container_ids, ctr};
pub use debian::{
    image_cache_dir, python_archive, python_image, DebianImage, PYTHON_APP, PYTHON_GREETING,
    PYTHON_IMAGE_NAME,
};
#[cfg(feature = "gateway")]
pub use gateway::{instance_ids, metric, GatewayHarness};
pub use gateway_process::GatewayProcess;
pub use gateway_toml::{apps_toml, AppToml, GatewayToml};
pub use images::{busybox_archive, busybox_image, busybox_sh, hello_archive, hello_image, BUSYBOX};
pub use leaks::{
    leftovers, objects, remove_all, shims, wait_for_no_shims, Objects, Shim, SPARE_SHIM,
};
pub use load::Load;
pub use netlab::{
    assert_no_bridge, network_on_disk, network_settled, network_wired, NetLab, Wired,
    NETLAB_PROGRAMS, NO_BRIDGE_NETNS,
};
pub use procs::{
    children_of, fds, instance_pids, memory_kib, parent_of, peak_rss_kib, processes, rss_kib,
    signal,
};
pub use registry::DockerRegistry;
pub use require::{can_run, can_run_with};
pub use util::{env_num, eventually, exclusive, shared, unique, BoxError};
