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
//! - **containerd:** [`Containerd`] (start, stop, SIGKILL, restart), [`ctr`] rows and
//!   [`container_ids`].
//! - **Images:** [`busybox_image`] (busybox httpd with CGI scripts), [`hello_image`] (the demo
//!   app), each also written as an archive ([`busybox_archive`], [`hello_archive`]).
//! - **Leak checks:** [`objects`] and [`leftovers`] of a namespace, [`shims`], [`remove_all`].
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
#[cfg(feature = "gateway")]
mod gateway;
mod gateway_process;
mod images;
mod leaks;
mod load;
mod procs;
mod require;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use backend::BackendHarness;
pub use client::{
    client, connect, free_port, get, http_get, send, wait_http, Answer, HttpClient, Sender,
    ERROR_HEADER,
};
pub use containerd::{container_ids, ctr, Containerd};
#[cfg(feature = "gateway")]
pub use gateway::{instance_ids, metric, GatewayHarness};
pub use gateway_process::GatewayProcess;
pub use images::{busybox_archive, busybox_image, hello_archive, hello_image, BUSYBOX};
pub use leaks::{
    leftovers, objects, remove_all, shims, wait_for_no_shims, Objects, Shim, SPARE_SHIM,
};
pub use load::Load;
pub use procs::{
    children_of, fds, instance_pids, memory_kib, parent_of, peak_rss_kib, processes, rss_kib,
    signal,
};
pub use require::{can_run, can_run_with};

/// The error of the fallible helpers (the bench's too): anything, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test of any running test process has: `{prefix}-{pid}-{n}`. Namespaces,
/// instance ids and files of parallel tests must not meet.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits until `f` holds, checking every 20 ms; panics naming `what` after 10 s.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A number from the environment variable `name` (a test's or a benchmark's count), `default`
/// when it is unset or empty; an error naming the variable when it is not a number.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BoxError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a valid number").into()),
        _ => Ok(default),
    }
}

/// Tests of one binary share the process; one that counts process-wide things (file
/// descriptors) takes [`exclusive`] and runs alone, the others take [`shared`].
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by a test while it runs; others holding it may run alongside.
pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().await
}

/// Held by a test that must run alone in its test binary (see [`shared`]).
pub async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().await
}
