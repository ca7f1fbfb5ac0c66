//! The peers the scenarios measure against, run the way a user would: `ctr` and `podman`
//! commands, and the poll for their first answer. One copy for every scenario.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use serverless_testkit::{connect, get};

use crate::util::Res;

/// `ctr --address SOCK --namespace NS`.
pub(crate) fn ctr(sock: &Path, namespace: &str) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address")
        .arg(sock)
        .args(["--namespace", namespace]);
    c
}

/// Kills and deletes the `ctr run` container `name` (its task first), quietly.
pub(crate) async fn remove_ctr(sock: &Path, namespace: &str, name: &str) {
    let quiet = |c: &mut Command| {
        let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
    };
    quiet(ctr(sock, namespace).args(["task", "kill", "-s", "SIGKILL", name]));
    for _ in 0..200 {
        let Ok(out) = ctr(sock, namespace).args(["task", "ls", "-q"]).output() else {
            break;
        };
        if !String::from_utf8_lossy(&out.stdout).contains(name) {
            break;
        }
        quiet(ctr(sock, namespace).args(["task", "delete", name]));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    quiet(ctr(sock, namespace).args(["containers", "delete", name]));
}

/// `podman` with its own storage under `root` (never the machine's), cgroupfs, no events.
pub(crate) fn podman(root: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(root.join("root"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"]);
    c
}

/// `podman run` arguments this machine needs: it lacks CAP_SYS_RESOURCE, so podman's default
/// (and `--ulimit host`) rlimits cannot be set; explicit low ones can.
pub(crate) const PODMAN_ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

/// Removes the podman container `name`, quietly.
pub(crate) fn remove_podman(root: &Path, name: &str) {
    let _ = podman(root)
        .args(["rm", "-f", "-t", "0", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Polls `127.0.0.1:port` until a GET answers 200.
pub(crate) async fn first_response(port: u16, timeout: Duration) -> Res<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut tx) = connect(addr).await {
            if let Ok((http::StatusCode::OK, _)) = get(&mut tx, "peer", "/").await {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no answer on port {port} within {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
