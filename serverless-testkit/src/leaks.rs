//! Leak checks: what containerd, the process table and the cgroup tree still hold of a
//! namespace, and the cleanup of a test that failed before cleaning up itself.
//!
//! The backend's spare shim (a keeper container `spare-shim.…` whose shim waits for the next
//! cold start) is the backend's own while it runs, so the checks leave it out; after the
//! backend's shutdown nothing at all may be left.

use std::path::Path;
use std::time::Duration;

use serverless_containerd::ContainerdBackend;

use crate::ctr::ctr;
use crate::procs::{children_of, processes};

/// Container ids of spare shims' keepers start with this.
pub const SPARE_SHIM: &str = "spare-shim.";

/// A `containerd-shim` process, as its command line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shim {
    /// Its pid.
    pub pid: u32,
    /// The containerd namespace it was spawned in (`-namespace`).
    pub namespace: String,
    /// The container it was spawned for (`-id`); a spare shim's is its keeper's.
    pub id: String,
    /// The containerd socket it reports to (`-address`).
    pub address: String,
}

impl Shim {
    /// Whether it reports to the containerd at `socket`.
    pub fn serves(&self, socket: &Path) -> bool {
        Path::new(&self.address) == socket
    }

    /// Whether it was spawned for a spare shim's keeper (whether or not an instance joined it
    /// since).
    pub fn is_spare(&self) -> bool {
        self.id.starts_with(SPARE_SHIM)
    }

    /// Whether it runs an instance: spawned for one, or a spare shim an instance joined (its
    /// process is the shim's child); an idle spare runs nothing.
    pub fn runs_an_instance(&self) -> bool {
        !self.is_spare() || !children_of(self.pid).is_empty()
    }
}

/// Every containerd shim daemon on the machine. containerd also runs the shim binary as a
/// short-lived command (`… start`, which spawns the daemon or finds one serving the group, and
/// `… delete`, a cleanup) with the same flags; those are not shims and are left out (a test that
/// took a `start` command's pid for the spare shim's daemon failed now and then).
pub fn shims() -> Vec<Shim> {
    processes()
        .into_iter()
        .filter(|(_, args)| {
            args.first().is_some_and(|a| a.contains("containerd-shim"))
                && !args
                    .last()
                    .is_some_and(|a| matches!(a.as_str(), "start" | "delete"))
        })
        .map(|(pid, args)| {
            let flag = |name: &str| {
                args.windows(2)
                    .find(|w| w[0] == name)
                    .map(|w| w[1].clone())
                    .unwrap_or_default()
            };
            Shim {
                pid,
                namespace: flag("-namespace"),
                id: flag("-id"),
                address: flag("-address"),
            }
        })
        .collect()
}

/// Counts of what containerd holds in a namespace, spare shims' keepers left out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Objects {
    /// Containers.
    pub containers: usize,
    /// Tasks.
    pub tasks: usize,
    /// Active snapshots (an instance's root file system).
    pub snapshots: usize,
    /// Shims that run an instance ([`Shim::runs_an_instance`]).
    pub shims: usize,
}

/// The containers, tasks, active snapshots and instance-running shims of `namespace` on the
/// containerd at `socket`.
pub fn objects(socket: &Path, namespace: &str) -> Objects {
    let rows = |what: &str| -> Vec<String> {
        ctr(socket, namespace, &[what, "ls"])
            .into_iter()
            .filter(|l| !l.starts_with(SPARE_SHIM))
            .collect()
    };
    Objects {
        containers: rows("containers").len(),
        tasks: rows("tasks").len(),
        snapshots: rows("snapshots")
            .iter()
            .filter(|l| l.contains("Active"))
            .count(),
        shims: shims()
            .iter()
            .filter(|s| s.serves(socket) && s.namespace == namespace && s.runs_an_instance())
            .count(),
    }
}

/// Everything of `namespace` still there, one line each: containers, tasks, active and view
/// snapshots (`ctr`), shims not spawned for a spare's keeper, and cgroups under
/// `/sys/fs/cgroup/memory/<namespace>`. Empty when an engine cleaned up after itself.
pub fn leftovers(socket: &Path, namespace: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (what, rows) in [
        ("container", ctr(socket, namespace, &["containers", "ls"])),
        ("task", ctr(socket, namespace, &["tasks", "ls"])),
    ] {
        out.extend(
            rows.into_iter()
                .filter(|l| !l.starts_with(SPARE_SHIM))
                .map(|l| format!("{what} {l}")),
        );
    }
    out.extend(
        ctr(socket, namespace, &["snapshots", "ls"])
            .into_iter()
            .filter(|l| l.contains("Active") || l.contains("View"))
            .map(|l| format!("snapshot {l}")),
    );
    out.extend(
        shims()
            .into_iter()
            .filter(|s| s.serves(socket) && s.namespace == namespace && !s.is_spare())
            .map(|s| format!("shim pid {} for {}", s.pid, s.id)),
    );
    let cgroups = Path::new("/sys/fs/cgroup/memory").join(namespace);
    if let Ok(entries) = std::fs::read_dir(&cgroups) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir())
                && !e.file_name().to_string_lossy().starts_with(SPARE_SHIM)
            {
                out.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    out
}

/// Waits until no shim reports to the containerd at `socket` (spare shims included): a shim
/// exits right after it is told to, not always before containerd answers. Panics listing them
/// after 5 s.
pub async fn wait_for_no_shims(socket: &Path) {
    let left = || -> Vec<Shim> { shims().into_iter().filter(|s| s.serves(socket)).collect() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !left().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "shims left after shutdown: {:?}",
            left()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes every instance of ours in `namespace` on the containerd at `socket`, for a test that
/// failed before cleaning up: a fresh backend (logs under `data`) on a runtime of its own shuts
/// them down. Blocks; reports trouble on stderr instead of panicking (it runs in `Drop`).
pub fn remove_all(socket: &Path, namespace: &str, data: &Path) {
    let (socket, namespace, data) = (socket.to_owned(), namespace.to_owned(), data.to_owned());
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            eprintln!("cleanup after a failed test: no runtime");
            return;
        };
        rt.block_on(async move {
            let connect = ContainerdBackend::connect(&socket, &namespace, &data);
            match tokio::time::timeout(Duration::from_secs(20), connect).await {
                Ok(Ok(b)) => {
                    if let Err(e) = b.shutdown().await {
                        eprintln!("cleanup after a failed test: {e}");
                    }
                }
                Ok(Err(e)) => eprintln!("cleanup after a failed test: {e}"),
                Err(_) => eprintln!("cleanup after a failed test: containerd did not answer"),
            }
        })
    })
    .join();
}
