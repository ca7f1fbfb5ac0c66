//! `ctr`, containerd's own client, for what a test checks behind the backend's back.

use std::path::Path;
use std::process::Command;

/// The rows `ctr --address socket --namespace namespace args…` prints, its header line
/// skipped; panics with ctr's error when it fails.
pub fn ctr(socket: &Path, namespace: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .arg("--namespace")
        .arg(namespace)
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

/// The ids of the containers in `namespace` (spare shims' keepers included). (`ctr containers
/// ls -q` has no header line, so this takes the first column of the full listing.)
pub fn container_ids(socket: &Path, namespace: &str) -> Vec<String> {
    ctr(socket, namespace, &["containers", "ls"])
        .iter()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}
