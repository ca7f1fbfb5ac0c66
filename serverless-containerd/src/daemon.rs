//! The embedded containerd: a private `containerd` process with its root, state and socket
//! under our data directory, stopped with us.
//!
//! It runs in its own process group, so it outlives a gateway that is SIGKILLed (and the
//! instances it runs keep running). The next gateway on the same data directory finds it (the
//! pid file `containerd.pid`, or any process whose command line names our `config.toml`),
//! checks that it answers on its socket (a `Version` call within [`HEALTH_TIMEOUT`]) and adopts
//! it. One that does not answer is stopped (SIGTERM, then SIGKILL) before a new one starts:
//! two containerds on one root would wedge on the root's boltdb lock.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use containerd_client::tonic::transport::Channel;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serverless_core::{BackendError, ErrorKind};
use tokio::process::{Child, Command};

/// How long a containerd found running gets to answer before it counts as wedged.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// A running private containerd: started by us, or adopted from a previous gateway.
pub(crate) struct Daemon {
    /// `None` when adopted (not our child: it is reaped by whoever inherited it).
    child: Option<Child>,
    pid: Option<u32>,
    pub(crate) socket: PathBuf,
    log: PathBuf,
    pid_file: PathBuf,
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
        let config_path = dir.join("config.toml");
        let pid_file = dir.join("containerd.pid");
        let log = dir.join("containerd.log");
        let found = running_for(&config_path, &pid_file);
        if let Some(&pid) = found.first() {
            if let Some(channel) = healthy(&socket).await {
                // More than one on this root: the others wait for the root's lock forever.
                for &other in &found[1..] {
                    tracing::warn!(pid = other, "stopping a second containerd on this root");
                    stop_pid(other, None).await;
                }
                tracing::info!(pid, socket = %socket.display(), "adopted the embedded containerd a previous run left running");
                let _ = tokio::fs::write(&pid_file, pid.to_string()).await;
                let daemon = Self {
                    child: None,
                    pid: Some(pid),
                    socket,
                    log,
                    pid_file,
                };
                return Ok((daemon, channel));
            }
            for &pid in &found {
                tracing::warn!(
                    pid,
                    "the embedded containerd a previous run left does not answer; stopping it"
                );
                stop_pid(pid, None).await;
            }
        }
        let _ = tokio::fs::remove_file(&socket).await;
        tokio::fs::write(&config_path, config(dir, &socket))
            .await
            .map_err(|e| io("writing config.toml", e))?;
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
        if let Some(pid) = pid {
            let _ = tokio::fs::write(&pid_file, pid.to_string()).await;
        }
        let mut daemon = Self {
            child: Some(child),
            pid,
            socket,
            log,
            pid_file,
        };
        let started = tokio::time::Instant::now();
        loop {
            let exited = match &mut daemon.child {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
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
        stop_pid(pid, self.child.as_mut()).await;
        let _ = tokio::fs::remove_file(&self.socket).await;
        let _ = tokio::fs::remove_file(&self.pid_file).await;
    }
}

impl Daemon {
    /// Leaves it running for the gateway that takes over from this one (an upgrade): dropping
    /// this value no longer stops it.
    pub(crate) fn keep_running(&mut self) {
        self.pid = None;
    }
}

/// SIGTERM to `pid`, up to 10 s for it to exit, then SIGKILL and up to 10 s more. `child`:
/// when it is ours, waited for (reaped); otherwise `/proc` tells when it is gone.
async fn stop_pid(pid: u32, child: Option<&mut Child>) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    let pid = Pid::from_raw(raw);
    let _ = kill(pid, Signal::SIGTERM);
    match child {
        Some(child) => {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        None => {
            let gone = || !Path::new(&format!("/proc/{raw}")).exists() || is_zombie(raw);
            for step in 0..2000 {
                if gone() {
                    return;
                }
                if step == 1000 {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The containerd processes running with `config` (the pid file's first, then any other whose
/// command line names it): a previous gateway's, on this data directory.
fn running_for(config: &Path, pid_file: &Path) -> Vec<u32> {
    let runs_config = |pid: u32| {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let config = config.as_os_str().as_encoded_bytes();
        args.windows(2)
            .any(|w| w[0] == b"--config" && w[1] == config)
            && !is_zombie(pid as i32)
    };
    let mut found = Vec::new();
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        if runs_config(pid) {
            found.push(pid);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            if !found.contains(&pid) && runs_config(pid) {
                found.push(pid);
            }
        }
    }
    found
}

/// A channel to the containerd at `socket` if it answers a `Version` call in time.
async fn healthy(socket: &Path) -> Option<Channel> {
    let check = async {
        let channel = containerd_client::connect(socket).await.ok()?;
        let mut version =
            containerd_client::services::v1::version_client::VersionClient::new(channel.clone());
        version.version(()).await.ok()?;
        Some(channel)
    };
    tokio::time::timeout(HEALTH_TIMEOUT, check)
        .await
        .ok()
        .flatten()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Not stopped through `stop`: ask it to exit; tokio reaps the child.
        if let Some(pid) = self.pid.take().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}
