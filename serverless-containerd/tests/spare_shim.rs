//! The spare shim: a start that takes no standby joins a shim spawned ahead (by a keeper
//! container), the keeper goes and a new spare comes; the instance's shim exits with it;
//! shutdown and reconcile leave nothing.

use std::time::Duration;

use serverless_core::ContainerBackend;
use serverless_testkit::{
    can_run, eventually, http_get, memory_kib, parent_of, BackendHarness, SPARE_SHIM,
};

/// The keeper containers and the shims they spawned: `(keeper ids, (shim pid, spawned for))`.
fn spares(h: &BackendHarness) -> (Vec<String>, Vec<(u32, String)>) {
    let keepers = h
        .container_ids()
        .into_iter()
        .filter(|id| id.starts_with(SPARE_SHIM))
        .collect();
    let shims = h
        .all_shims()
        .into_iter()
        .filter(|(_, id)| id.starts_with(SPARE_SHIM))
        .collect();
    (keepers, shims)
}

/// Waits for the backend's background work, at most 30 s.
async fn settled(h: &BackendHarness) {
    tokio::time::timeout(Duration::from_secs(30), h.backend.settled())
        .await
        .expect("the backend settles within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_joins_the_spare_shim() {
    if !can_run("a_cold_start_joins_the_spare_shim") {
        return;
    }
    let h = BackendHarness::start().await;
    let app = h.app("spare");
    // Deploying makes the first spare.
    h.backend.prepare(&app).await.expect("prepare");
    // `settled` returns once it is made.
    settled(&h).await;
    let (keepers, shims) = spares(&h);
    assert!(
        keepers.len() == 1 && shims.len() == 1,
        "{keepers:?} {shims:?}"
    );
    let (keeper, spare_pid) = (keepers[0].clone(), shims[0].0);
    assert_eq!(shims[0].1, keeper);
    if let Some((rss, pss)) = memory_kib(spare_pid) {
        eprintln!("spare shim memory: rss {rss} KiB, pss {pss} KiB");
    }
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());

    let id = h.id("spare");
    let started = h.backend.start(&app, &id).await.expect("start");
    let body = http_get(h.backend.connect(&id).await.expect("connect")).await;
    assert!(body.contains("hello from busybox"), "{body}");
    // The app's process is a child of the spare shim: no shim of its own was spawned.
    let task = h
        .ctr(&["tasks", "ls"])
        .into_iter()
        .find(|l| l.starts_with(id.as_str()))
        .expect("the instance's task");
    let pid: u32 = task.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(parent_of(pid), Some(spare_pid), "task {task}");
    eprintln!(
        "spare shim {spare_pid} took instance {id} (pid {pid}); phases {:?}",
        started.phases
    );

    // The claimed keeper goes, a new spare comes (both done once `settled` returns); the
    // claimed shim serves the instance.
    settled(&h).await;
    let (keepers, shims) = spares(&h);
    assert!(
        keepers.len() == 1 && keepers[0] != keeper && shims.len() == 2,
        "{keepers:?} {shims:?}"
    );
    assert!(std::path::Path::new(&format!("/proc/{spare_pid}")).exists());

    // Stopping the instance ends its shim.
    h.backend
        .stop(&id, Duration::from_millis(100))
        .await
        .expect("stop");
    eventually("the instance's shim to exit", || {
        !std::path::Path::new(&format!("/proc/{spare_pid}")).exists()
    })
    .await;
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    assert!(h.backend.list().await.unwrap().is_empty());
    h.shutdown().await;
}

/// A keeper the backend does not know (a previous run's) is removed by reconcile, shims and
/// cgroups included; the backend that made it still starts instances (its stale spare's group
/// simply spawns a new shim) and shuts down cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_removes_a_previous_runs_spare() {
    if !can_run("reconcile_removes_a_previous_runs_spare") {
        return;
    }
    let h = BackendHarness::start().await;
    let app = h.app("stale");
    h.backend.prepare(&app).await.expect("prepare");
    // Ready: its shim runs and its task is stopped (created, then killed).
    eventually("the spare shim", || {
        spares(&h).1.len() == 1
            && h.ctr(&["tasks", "ls"])
                .iter()
                .any(|t| t.starts_with(SPARE_SHIM) && t.ends_with("STOPPED"))
    })
    .await;

    let other = h.other_backend("other").await;
    assert_eq!(other.reconcile().await.expect("reconcile"), 1);
    eventually("the removed keeper's shim to exit", || {
        spares(&h) == (Vec::new(), Vec::new())
    })
    .await;
    let cgroups = std::path::Path::new("/sys/fs/cgroup/memory").join(h.backend.namespace());
    let left: Vec<_> = std::fs::read_dir(&cgroups)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "cgroups left: {left:?}");

    let id = h.id("stale");
    h.backend.start(&app, &id).await.expect("start");
    let body = http_get(h.backend.connect(&id).await.expect("connect")).await;
    assert!(body.contains("hello from busybox"), "{body}");
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    h.shutdown().await;
}

/// `Builder::spare_shim(false)`: no keeper, each start spawns its own shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_shim_off_makes_none() {
    if !can_run("spare_shim_off_makes_none") {
        return;
    }
    let h = BackendHarness::start_with(|b| b.spare_shim(false)).await;
    let app = h.app("nospare");
    h.backend.prepare(&app).await.expect("prepare");
    let id = h.id("nospare");
    h.backend.start(&app, &id).await.expect("start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(spares(&h), (Vec::new(), Vec::new()));
    assert_eq!(h.shims().len(), 1);
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    h.shutdown().await;
}
