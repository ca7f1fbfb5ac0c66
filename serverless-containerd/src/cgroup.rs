//! The instance cgroups runc creates from our `cgroupsPath`: OOM counters and cleanup of what
//! runc leaves behind (on cgroup v1 it removes only the leaf, under each controller).

use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup path of an instance: `/<namespace>/<id>`.
pub(crate) fn path(namespace: &str, id: &str) -> String {
    format!("/{namespace}/{id}")
}

fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// Every directory a cgroup path maps to (one per v1 controller, or one on v2).
fn dirs(cgroup: &str) -> Vec<PathBuf> {
    let rel = cgroup.trim_start_matches('/');
    if is_v2() {
        return vec![Path::new(ROOT).join(rel)];
    }
    let Ok(entries) = fs::read_dir(ROOT) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path().join(rel))
        .collect()
}

/// Whether the kernel's OOM killer killed something in this cgroup.
pub(crate) fn oom_killed(cgroup: &str) -> bool {
    let rel = cgroup.trim_start_matches('/');
    let (file, root) = if is_v2() {
        ("memory.events", Path::new(ROOT).to_path_buf())
    } else {
        ("memory.oom_control", Path::new(ROOT).join("memory"))
    };
    fs::read_to_string(root.join(rel).join(file))
        .map(|text| oom_kill_count(&text) > 0)
        .unwrap_or(false)
}

/// The `oom_kill N` counter in `memory.oom_control` (v1) or `memory.events` (v2).
pub(crate) fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

/// Removes the instance's cgroup directories if runc left any. Best effort.
pub(crate) fn remove(cgroup: &str) {
    for dir in dirs(cgroup) {
        let _ = fs::remove_dir(dir);
    }
}

/// Removes the empty per-namespace parent directories (`/<namespace>` under every controller).
/// Only call this when no instance of the namespace can be starting.
pub(crate) fn remove_parent(namespace: &str) {
    for dir in dirs(&format!("/{namespace}")) {
        let _ = fs::remove_dir(dir);
    }
}

/// Instance cgroups left under the namespace's parent (leftovers of a previous run).
pub(crate) fn children(namespace: &str) -> Vec<String> {
    let mut out = Vec::new();
    for dir in dirs(&format!("/{namespace}")) {
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let p = path(namespace, &name);
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_kill_counter() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(oom_kill_count(v1), 2);
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(v2), 1);
        assert_eq!(oom_kill_count(""), 0);
        assert_eq!(oom_kill_count("oom_kill x"), 0);
    }
}
