//! The real `serverless` binary serving a config, as a child process.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::procs::signal;

/// `serverless serve --config …` as a child process (`RUST_LOG=info`), killed on drop. Its
/// stderr is collected ([`log`](Self::log)).
#[derive(Debug)]
pub struct GatewayProcess {
    /// The child.
    pub child: tokio::process::Child,
    /// The address its gateway listens on, as it logged it.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl GatewayProcess {
    /// Starts the binary at `bin` (a test passes `env!("CARGO_BIN_EXE_serverless")`, which only
    /// the binary's own package has) on `config` (its apps `network = "none"`:
    /// [`assert_no_bridge`](crate::assert_no_bridge)); returns once it logged `gateway on http://…`,
    /// panicking with its output when that takes over 30 s or it exits first.
    pub async fn start(bin: &Path, config: &Path) -> Self {
        let parsed = serverless_core::Config::from_path(config)
            .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        crate::assert_no_bridge(&parsed);
        Self::spawn(tokio::process::Command::new(bin), bin, config).await
    }

    /// Like [`start`](Self::start), with the process in `lab`'s engine namespace (`nsenter
    /// --net`, which then runs the binary itself: [`child`](Self::child) is the gateway), so
    /// its apps may have `network = "bridge"`: the bridge, NAT and rules are made there. It
    /// keeps this process's mount namespace, as a gateway on a host does. Its listening
    /// address is on the lab's loopback: reach it with [`NetLab::send`](crate::NetLab::send).
    pub async fn start_in(lab: &crate::NetLab, bin: &Path, config: &Path) -> Self {
        let mut command = tokio::process::Command::new("nsenter");
        command
            .arg(format!("--net={}", lab.engine_netns().display()))
            .arg("--")
            .arg(bin);
        Self::spawn(command, bin, config).await
    }

    async fn spawn(mut command: tokio::process::Command, bin: &Path, config: &Path) -> Self {
        let mut child = command
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let append = |log: &Mutex<String>, line: &str| {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(line);
            log.push('\n');
        };
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                append(&log, &line);
                if let Some(rest) = line.split("gateway on http://").nth(1) {
                    return rest.split_whitespace().next().and_then(|a| a.parse().ok());
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(addr) = addr else {
            let log = log.lock().unwrap_or_else(|e| e.into_inner());
            panic!("serverless did not start:\n{log}");
        };
        let rest = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                append(&rest, &line);
            }
        });
        Self {
            child,
            addr,
            stderr: log,
        }
    }

    /// Sends it the signal `sig` (`"TERM"`, `"KILL"`, …).
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            signal(pid, sig);
        }
    }

    /// Sends SIGKILL and waits (at most 10 s) for the process to be gone.
    pub async fn kill(mut self) {
        self.signal("KILL");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exits on SIGKILL")
            .expect("wait for the gateway");
    }

    /// Sends SIGTERM and waits (at most 60 s) for it to exit; the exit status must be success.
    pub async fn terminate(mut self) {
        self.signal("TERM");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .expect("wait for the gateway");
        assert!(status.success(), "{}", self.log());
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
