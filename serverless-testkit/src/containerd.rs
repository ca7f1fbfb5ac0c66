//! A `containerd` process the test starts itself (so it can kill and restart it), and `ctr`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ctr::{container_ids, ctr};
use crate::leaks::{objects, shims, Objects};
use crate::procs::signal;

/// A private `containerd` process: its own root, state and socket under a directory of the
/// test's. Dropping it stops it, kills the shims that still name its socket (and what they
/// run) and unmounts what is left mounted under its directory.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    /// Its root, state, config and log (`containerd.log`).
    pub dir: PathBuf,
    /// Its gRPC socket.
    pub socket: PathBuf,
    config: PathBuf,
}

// Synchronous on purpose (also used from `Drop`); its waits are short polls of a socket or a
// child process.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
impl Containerd {
    /// Writes a config (no CRI, no debug or metrics listeners) under `dir/cd` and starts
    /// containerd on it, returning once its socket accepts connections.
    pub fn start(dir: &Path) -> Self {
        let dir = dir.join("cd");
        std::fs::create_dir_all(&dir).expect("create containerd's directory");
        let socket = dir.join("c.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
            ),
        )
        .expect("write containerd's config");
        let mut containerd = Self {
            child: None,
            dir,
            socket,
            config,
        };
        containerd.spawn();
        containerd
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .expect("open containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("containerd.log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "containerd did not come up on {}",
                self.socket.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Its pid (0 while it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, like a crash: shims (and their containers) live on.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same root, state and socket (after a SIGKILL if it runs).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.wait();
        }
    }

    /// [`ctr`] on this containerd.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Vec<String> {
        ctr(&self.socket, namespace, args)
    }

    /// [`objects`] of `namespace` on this containerd.
    pub fn objects(&self, namespace: &str) -> Objects {
        objects(&self.socket, namespace)
    }

    /// [`container_ids`] of `namespace` on this containerd.
    pub fn container_ids(&self, namespace: &str) -> Vec<String> {
        container_ids(&self.socket, namespace)
    }

    /// Pids of every shim serving this containerd (spare shims' included).
    pub fn shims(&self) -> Vec<u32> {
        shims()
            .into_iter()
            .filter(|s| s.serves(&self.socket))
            .map(|s| s.pid)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        // Shims of a failed test: kill them and what they run.
        for pid in self.shims() {
            signal(pid, "KILL");
        }
        // Mounts left under its directory (rootfs of killed tasks).
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let dir = self.dir.to_string_lossy().into_owned();
            for line in mounts.lines() {
                if let Some(target) = line.split(' ').nth(1) {
                    if target.starts_with(&dir) {
                        let _ = Command::new("umount").args(["-l", target]).status();
                    }
                }
            }
        }
    }
}
