//! Shared test harness: a private containerd per test (embedded mode, in a temp dir), a busybox
//! image built by our own image builder, and leak checks through `ctr`.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serverless_containerd::{Builder, ContainerdBackend, ImageBuilder};
use serverless_core::{AppSpec, Connection, ImageRef, InstanceId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BUSYBOX: &str = "/bin/busybox";
/// Container ids of spare shims' keepers start with this.
pub const SPARE_SHIM: &str = "spare-shim.";

/// Whether this machine can run the real-containerd tests; prints a loud message if not.
pub fn can_run(test: &str) -> bool {
    let missing: Vec<&str> = ["containerd", "runc", "ctr"]
        .into_iter()
        .filter(|bin| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false);
    let busybox = Path::new(BUSYBOX).exists();
    if missing.is_empty() && root && busybox {
        return true;
    }
    eprintln!(
        "\n!!!!!!!! SKIPPING {test}: needs root, containerd, runc, ctr and {BUSYBOX} \
         (missing: {missing:?}, root: {root}, busybox: {busybox}) !!!!!!!!\n"
    );
    false
}

pub struct Harness {
    pub backend: ContainerdBackend,
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    next: AtomicU32,
    clean: bool,
}

static HARNESSES: AtomicU32 = AtomicU32::new(0);

impl Harness {
    /// A private containerd in a temp dir, in a namespace of its own (tests run in parallel and
    /// the namespace names the cgroup parent).
    pub async fn start() -> Self {
        Self::start_with(|b| b).await
    }

    /// Like [`Harness::start`], with more settings on the backend builder.
    pub async fn start_with(configure: impl FnOnce(Builder) -> Builder) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sl-cd-")
            .tempdir()
            .expect("temp dir");
        let n = HARNESSES.fetch_add(1, Ordering::Relaxed);
        let namespace = format!("serverless-t{}-{n}", std::process::id());
        let backend =
            configure(ContainerdBackend::builder(dir.path().join("data")).namespace(namespace))
                .build()
                .await
                .expect("embedded containerd starts");
        let image = dir.path().join("busybox.tar");
        busybox_image().write_oci_archive(&image).expect("image");
        Self {
            backend,
            dir,
            image,
            next: AtomicU32::new(0),
            clean: false,
        }
    }

    pub fn app(&self, name: &str) -> AppSpec {
        AppSpec::new(
            name,
            ImageRef::parse(&format!("oci-archive:{}", self.image.display())).expect("ref"),
        )
    }

    pub fn id(&self, app: &str) -> InstanceId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        InstanceId::new(format!("{app}-{n}-{}", std::process::id()))
    }

    pub fn ctr(&self, args: &[&str]) -> Vec<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.backend.socket())
            .arg("--namespace")
            .arg(self.backend.namespace())
            .args(args)
            .output()
            .expect("ctr runs");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Containers, tasks, active (instance) snapshots and views containerd still holds in our
    /// namespace, seen through `ctr`, plus leftover cgroups and shims. The spare shim's keeper
    /// (`spare-shim.*`: container, task, cgroup, and shims it spawned) is the backend's while
    /// it runs; `shutdown` checks that nothing at all is left.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(
            self.ctr(&["containers", "ls"])
                .into_iter()
                .filter(|l| !l.starts_with(SPARE_SHIM))
                .map(|l| format!("container {l}")),
        );
        out.extend(
            self.ctr(&["tasks", "ls"])
                .into_iter()
                .filter(|l| !l.starts_with(SPARE_SHIM))
                .map(|l| format!("task {l}")),
        );
        out.extend(
            self.ctr(&["snapshots", "ls"])
                .into_iter()
                .filter(|l| l.contains("Active") || l.contains("View"))
                .map(|l| format!("snapshot {l}")),
        );
        out.extend(
            self.shims()
                .into_iter()
                .map(|pid| format!("shim pid {pid}")),
        );
        let cg = Path::new("/sys/fs/cgroup/memory").join(self.backend.namespace());
        if let Ok(entries) = std::fs::read_dir(&cg) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false)
                    && !e.file_name().to_string_lossy().starts_with(SPARE_SHIM)
                {
                    out.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
        out
    }

    /// Pids of `containerd-shim-runc-v2` processes serving our namespace, except those a
    /// spare shim's keeper spawned.
    pub fn shims(&self) -> Vec<u32> {
        self.all_shims()
            .into_iter()
            .filter(|(_, id)| !id.starts_with(SPARE_SHIM))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Every shim of our namespace: pid and the container id it was spawned for.
    pub fn all_shims(&self) -> Vec<(u32, String)> {
        processes()
            .into_iter()
            .filter(|(_, args)| {
                args.first().is_some_and(|a| a.contains("containerd-shim"))
                    && args
                        .windows(2)
                        .any(|w| w[0] == "-namespace" && w[1] == self.backend.namespace())
            })
            .map(|(pid, args)| {
                let id = args
                    .windows(2)
                    .find(|w| w[0] == "-id")
                    .map(|w| w[1].clone())
                    .unwrap_or_default();
                (pid, id)
            })
            .collect()
    }

    /// Container ids in our namespace (keepers included).
    pub fn container_ids(&self) -> Vec<String> {
        self.ctr(&["containers", "ls"])
            .iter()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    pub async fn shutdown(mut self) {
        self.clean = true;
        self.backend.shutdown().await.expect("shutdown");
        let cg = Path::new("/sys/fs/cgroup/memory").join(self.backend.namespace());
        assert!(!cg.exists(), "cgroup parent {} left behind", cg.display());
        // A shim exits right after it is told to, not always before containerd answers.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.all_shims().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "shims left after shutdown: {:?}",
                self.all_shims()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Waits until `f` holds (up to 10 s).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// busybox httpd serving /www on 8080 (overridable by the app's command).
pub fn busybox_image() -> ImageBuilder {
    let busybox = std::fs::read(BUSYBOX).expect("read busybox");
    ImageBuilder::new()
        .file("/bin/busybox", busybox, 0o755)
        .symlink("/bin/sh", "/bin/busybox")
        .file("/www/index.html", b"hello from busybox\n".to_vec(), 0o644)
        .dir("/tmp", 0o1777)
        .cmd(["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"])
}

/// Sends `GET /` and returns the whole response (HTTP/1.0: the server closes).
pub async fn http_get(mut conn: Connection) -> String {
    conn.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("write request");
    let mut response = Vec::new();
    conn.read_to_end(&mut response)
        .await
        .expect("read response");
    String::from_utf8_lossy(&response).into_owned()
}

impl Drop for Harness {
    /// A test that failed before `shutdown` still removes its instances (no shims, mounts or
    /// cgroups left on the machine): a second engine on a fresh runtime reconciles them away,
    /// then the embedded containerd is stopped when the backend drops.
    fn drop(&mut self) {
        if self.clean {
            return;
        }
        let socket = self.backend.socket().to_owned();
        let namespace = self.backend.namespace().to_owned();
        let dir = self.dir.path().join("cleanup");
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                match ContainerdBackend::connect(&socket, &namespace, &dir).await {
                    Ok(b) => {
                        if let Err(e) = b.reconcile().await {
                            eprintln!("cleanup after failed test: {e}");
                        }
                    }
                    Err(e) => eprintln!("cleanup after failed test: {e}"),
                }
            })
        })
        .join();
    }
}

/// Every process's pid and command line.
pub fn processes() -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let args = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            out.push((pid, args));
        }
    }
    out
}

/// `(rss, pss)` in KiB of a process (`/proc/<pid>/smaps_rollup`).
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("Rss:")?, field("Pss:")?))
}
