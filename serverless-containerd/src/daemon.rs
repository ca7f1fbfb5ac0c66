//! The embedded containerd: a private `containerd` process with its root, state and socket
//! under our data directory, stopped with us.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use containerd_client::tonic::transport::Channel;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serverless_core::{BackendError, ErrorKind};
use tokio::process::{Child, Command};

/// A running private containerd.
pub(crate) struct Daemon {
    child: Child,
    pid: Option<u32>,
    pub(crate) socket: PathBuf,
    log: PathBuf,
}

fn unavailable(msg: String) -> BackendError {
    BackendError::new(ErrorKind::Unavailable, msg)
}

fn config(dir: &Path, socket: &Path) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    format!(
        r#"version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""

[metrics]
  address = ""
"#,
        root = q(&dir.join("root")),
        state = q(&dir.join("state")),
        socket = q(socket),
        ttrpc = q(&socket.with_extension("sock.ttrpc")),
    )
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Daemon {
    /// Starts `binary` with everything under `dir` and waits until its socket answers.
    pub(crate) async fn start(binary: &Path, dir: &Path) -> Result<(Self, Channel), BackendError> {
        let io = |what: &str, e: std::io::Error| {
            unavailable(format!("embedded containerd: {what} failed")).with_source(e)
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io(&format!("creating {}", dir.display()), e))?;
        let socket = dir.join("containerd.sock");
        if socket.as_os_str().len() > 100 {
            return Err(unavailable(format!(
                "embedded containerd: socket path {} is too long for a unix socket; use a shorter data dir",
                socket.display()
            )));
        }
        let _ = tokio::fs::remove_file(&socket).await;
        let config_path = dir.join("config.toml");
        tokio::fs::write(&config_path, config(dir, &socket))
            .await
            .map_err(|e| io("writing config.toml", e))?;
        let log = dir.join("containerd.log");
        let out = std::fs::File::create(&log).map_err(|e| io("creating containerd.log", e))?;
        let err = out
            .try_clone()
            .map_err(|e| io("opening containerd.log", e))?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C at the terminal reaches only the engine, which
            // stops the instances first and then this containerd.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                io(
                    &format!("starting {} (is containerd installed?)", binary.display()),
                    e,
                )
            })?;
        let pid = child.id();
        let mut daemon = Self {
            child,
            pid,
            socket,
            log,
        };
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                daemon.pid = None;
                return Err(unavailable(format!(
                    "embedded containerd exited with {status} at startup: {}",
                    daemon.log_tail().await
                )));
            }
            if tokio::fs::metadata(&daemon.socket).await.is_ok() {
                if let Ok(channel) = containerd_client::connect(&daemon.socket).await {
                    return Ok((daemon, channel));
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                daemon.stop().await;
                return Err(unavailable(format!(
                    "embedded containerd did not answer on {} within 20s: {}",
                    daemon.socket.display(),
                    daemon.log_tail().await
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn log_tail(&self) -> String {
        let text = tokio::fs::read_to_string(&self.log)
            .await
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM, up to 10 s, SIGKILL.
    pub(crate) async fn stop(&mut self) {
        let Some(pid) = self.pid.take() else {
            return;
        };
        let Ok(raw) = i32::try_from(pid) else {
            return;
        };
        let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = tokio::fs::remove_file(&self.socket).await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Not stopped through `stop`: ask it to exit; tokio reaps the child.
        if let Some(pid) = self.pid.take().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}
