//! Process listings from `/proc` (through `procfs`): who runs, whose child it is, which
//! instance's cgroup it is in, how much memory it uses; and signals.

use std::process::{Command, Stdio};

use procfs::process::{all_processes, Process};

fn process(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

/// Every process's pid and command line, one string per argument (empty for kernel threads).
/// Processes that exit while being listed are left out.
pub fn processes() -> Vec<(u32, Vec<String>)> {
    let Ok(all) = all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter_map(|p| Some((u32::try_from(p.pid()).ok()?, p.cmdline().ok()?)))
        .collect()
}

/// The parent pid of a process; `None` once it is gone.
pub fn parent_of(pid: u32) -> Option<u32> {
    u32::try_from(process(pid)?.stat().ok()?.ppid).ok()
}

/// The pids of a process's children.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(all) = all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter(|p| p.stat().is_ok_and(|s| u32::try_from(s.ppid) == Ok(pid)))
        .filter_map(|p| u32::try_from(p.pid()).ok())
        .collect()
}

/// Host pids of the processes in an instance's cgroup (`/<namespace>/<id>`), its init (pid 1
/// in its pid namespace) first.
pub fn instance_pids(namespace: &str, id: &str) -> Vec<u32> {
    let cgroup = format!("/{namespace}/{id}");
    let Ok(all) = all_processes() else {
        return Vec::new();
    };
    let mut pids: Vec<(bool, u32)> = all
        .flatten()
        .filter(|p| {
            p.cgroups()
                .is_ok_and(|c| c.0.iter().any(|c| c.pathname == cgroup))
        })
        .filter_map(|p| {
            let init = p
                .status()
                .ok()
                .and_then(|s| s.nspid)
                .is_some_and(|ns| ns.last() == Some(&1));
            Some((!init, u32::try_from(p.pid()).ok()?))
        })
        .collect();
    pids.sort();
    pids.into_iter().map(|(_, pid)| pid).collect()
}

/// `(rss, pss)` of a process in KiB (`/proc/<pid>/smaps_rollup`).
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let rollup = process(pid)?.smaps_rollup().ok()?;
    let totals = &rollup.memory_map_rollup.0.first()?.extension.map;
    Some((totals.get("Rss")? / 1024, totals.get("Pss")? / 1024))
}

/// The resident set size of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    process(pid)?.status().ok()?.vmrss
}

/// The largest resident set size a process has had, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    process(pid)?.status().ok()?.vmhwm
}

/// How many file descriptors this process has open.
pub fn fds() -> usize {
    Process::myself()
        .and_then(|p| p.fd_count())
        .expect("count this process's file descriptors")
}

/// Sends the signal `sig` (`"KILL"`, `"TERM"`, …) to `pid`; a process already gone is not an
/// error.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}
