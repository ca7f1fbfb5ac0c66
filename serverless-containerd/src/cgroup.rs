//! The instance cgroups runc creates from our `cgroupsPath`: OOM counters and cleanup of what
//! runc leaves behind (on cgroup v1 it removes only the leaf, under each controller); and the
//! [`AttachPrimer`], which takes a kernel wait off the cold start.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

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

/// Pays, ahead of runc, the RCU grace period that the first cgroup attach of a container waits
/// for.
///
/// Moving a process into a cgroup (runc does it for `runc init`, in its parent, right before it
/// sends the container's configuration) takes the kernel's global `cgroup_threadgroup_rwsem` for
/// writing. Unless the host mounts cgroups with `favordynmods`, that lock idles in a mode that is
/// cheap for readers (every fork and exit) and makes a writer wait for a full RCU grace period
/// (figures in docs/src/architecture.md, "Cold start"). Writers that come while the lock is still
/// in writer mode, or within a grace period after the last one left, pass at once.
///
/// So while a task is being created, a helper thread writes its own thread id into its own cgroup's
/// `tasks` (v1) or `cgroup.threads` (v2) file every few milliseconds: a migration to where the
/// thread already is, which changes nothing but takes the lock. The first write waits out the grace
/// period in parallel with the shim spawn and runc's own start-up, which come before runc's attach;
/// the next ones keep the lock in writer mode until the task exists. When no task is being created
/// the thread sleeps and the lock goes back to its idle mode. Best effort: a host where the file
/// cannot be written (a read-only cgroupfs) simply goes without.
pub(crate) struct AttachPrimer {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    state: Mutex<PrimerState>,
    wake: Condvar,
    /// Writes done, for tests.
    writes: AtomicU64,
}

#[derive(Default)]
struct PrimerState {
    holders: usize,
    closed: bool,
}

/// While held, the lock is kept in writer mode (see [`AttachPrimer`]).
pub(crate) struct Primed {
    shared: Option<Arc<Shared>>,
}

/// How often the primed lock is taken again while held.
const PRIME_EVERY: Duration = Duration::from_millis(3);

impl AttachPrimer {
    /// Finds this thread's cgroup file and starts the (sleeping) helper thread; a primer that
    /// does nothing when no file is writable.
    pub(crate) fn new() -> Self {
        let file = fs::read_to_string("/proc/self/cgroup")
            .ok()
            .map(|text| own_thread_files(&text, is_v2()))
            .unwrap_or_default()
            .into_iter()
            .find_map(|path| fs::OpenOptions::new().write(true).open(&path).ok());
        let Some(file) = file else {
            tracing::debug!(
                "no writable cgroup thread file: cold starts wait for the cgroup attach lock"
            );
            return Self { shared: None };
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(PrimerState::default()),
            wake: Condvar::new(),
            writes: AtomicU64::new(0),
        });
        let worker = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("cgroup-primer".into())
            .stack_size(64 * 1024)
            .spawn(move || worker.run(file));
        Self {
            shared: spawned.is_ok().then_some(shared),
        }
    }

    /// Keeps the lock primed until the returned guard is dropped.
    pub(crate) fn hold(&self) -> Primed {
        if let Some(shared) = &self.shared {
            shared.lock().holders += 1;
            shared.wake.notify_one();
        }
        Primed {
            shared: self.shared.clone(),
        }
    }

    #[cfg(test)]
    fn writes(&self) -> Option<u64> {
        self.shared
            .as_ref()
            .map(|s| s.writes.load(Ordering::Relaxed))
    }
}

impl Drop for AttachPrimer {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.lock().closed = true;
            shared.wake.notify_one();
        }
    }
}

impl Drop for Primed {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.lock().holders -= 1;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, PrimerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, file: fs::File) {
        let tid = nix::unistd::gettid().to_string();
        let mut state = self.lock();
        loop {
            while state.holders == 0 && !state.closed {
                state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.closed {
                return;
            }
            drop(state);
            // Errors change nothing: the kernel takes the lock before it checks the write.
            let _ = file.write_at(tid.as_bytes(), 0);
            self.writes.fetch_add(1, Ordering::Relaxed);
            state = self.lock();
            if state.holders > 0 && !state.closed {
                state = self
                    .wake
                    .wait_timeout(state, PRIME_EVERY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

/// The files a thread can write its own id to, to "move" itself into the cgroup it is in, from
/// `/proc/self/cgroup`: `cgroup.threads` of its v2 cgroup on a pure v2 host, else `tasks` of its
/// cgroup under each v1 hierarchy (`cpu,cpuacct`, `name=systemd` → `systemd`, …).
fn own_thread_files(proc_self_cgroup: &str, v2: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if v2 {
            if controllers.is_empty() {
                out.push(Path::new(ROOT).join(rel).join("cgroup.threads"));
            }
        } else if !controllers.is_empty() {
            let dir = controllers.strip_prefix("name=").unwrap_or(controllers);
            out.push(Path::new(ROOT).join(dir).join(rel).join("tasks"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_own_thread_files() {
        let v1 = "9:name=systemd:/\n8:pids:/user.slice\n2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            own_thread_files(v1, false),
            [
                "/sys/fs/cgroup/systemd/tasks",
                "/sys/fs/cgroup/pids/user.slice/tasks",
                "/sys/fs/cgroup/cpu,cpuacct/tasks",
            ]
            .map(PathBuf::from)
        );
        let v2 = "0::/system.slice/serverless.service\n";
        assert_eq!(
            own_thread_files(v2, true),
            [PathBuf::from(
                "/sys/fs/cgroup/system.slice/serverless.service/cgroup.threads"
            )]
        );
        assert!(own_thread_files("garbage\n", false).is_empty());
        assert!(own_thread_files("", true).is_empty());
    }

    /// The helper writes while held and stops when released (a real cgroup file: needs root,
    /// as every test of this crate does).
    #[tokio::test]
    async fn primes_only_while_held() {
        use tokio::time::{sleep, Instant};
        let primer = AttachPrimer::new();
        let Some(0) = primer.writes() else {
            panic!("no writable cgroup thread file for this process");
        };
        let guard = primer.hold();
        let deadline = Instant::now() + Duration::from_secs(10);
        while primer.writes() < Some(3) {
            assert!(Instant::now() < deadline, "the primer never wrote");
            sleep(Duration::from_millis(1)).await;
        }
        drop(guard);
        // At most the write in flight completes after release.
        let released = primer.writes().unwrap();
        sleep(Duration::from_millis(100)).await;
        assert!(primer.writes().unwrap() <= released + 1);
        // Still the thread's own cgroup: nothing moved.
        let before = fs::read_to_string("/proc/self/cgroup").unwrap();
        drop(primer);
        assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before);
    }

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
