//! Standbys (`scale.standby`): a created-not-started task per app that a cold start only starts.
//! Taken, refilled, discarded on a spec change, released, reconciled and shut down without
//! leaving containers, tasks, snapshots, shims or cgroups; a boot failure still reports code
//! and logs. Prints the memory a standby costs (shim + `runc init`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serverless_core::{AppSpec, ContainerBackend, ErrorKind};
use serverless_testkit::{
    can_run, children_of, eventually, http_get, memory_kib, shims, BackendHarness,
};
use tokio::time::Instant;

fn standby_app(h: &BackendHarness, name: &str) -> AppSpec {
    let mut app = h.app(name);
    app.scale.standby = true;
    app
}

/// Container ids containerd holds in our namespace.
fn containers(h: &BackendHarness) -> Vec<String> {
    h.leftovers()
        .iter()
        .filter_map(|l| l.strip_prefix("container "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// (rss, pss) KiB of the shims of our namespace and their children (`runc init`).
fn standby_memory(h: &BackendHarness) -> (u64, u64, u64, u64) {
    let (mut shim_rss, mut shim_pss, mut init_rss, mut init_pss) = (0, 0, 0, 0);
    for shim in h.shims() {
        if let Some((rss, pss)) = memory_kib(shim) {
            shim_rss += rss;
            shim_pss += pss;
        }
        for child in children_of(shim) {
            if let Some((rss, pss)) = memory_kib(child) {
                init_rss += rss;
                init_pss += pss;
            }
        }
    }
    (shim_rss, shim_pss, init_rss, init_pss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_takes_the_standby_and_refills_it() {
    if !can_run("cold_start_takes_the_standby_and_refills_it") {
        return;
    }
    let h = BackendHarness::start().await;
    let app = standby_app(&h, "warmish");
    h.backend.prepare(&app).await.expect("prepare");
    let standby = containers(&h);
    assert_eq!(standby.len(), 1, "one standby after prepare: {standby:?}");
    assert_eq!(h.shims().len(), 1);
    // Not an instance: not listed.
    assert!(h.backend.list().await.expect("list").is_empty());
    let (shim_rss, shim_pss, init_rss, init_pss) = standby_memory(&h);
    eprintln!(
        "standby memory: shim rss {shim_rss} KiB pss {shim_pss} KiB; runc init rss {init_rss} KiB pss {init_pss} KiB; total rss {} KiB pss {} KiB",
        shim_rss + init_rss,
        shim_pss + init_pss
    );

    for round in 0..2 {
        let id = h.id("warmish");
        let t = Instant::now();
        let started = h.backend.start(&app, &id).await.expect("start");
        let took = t.elapsed();
        eprintln!(
            "round {round}: start from standby {took:?}: {:?}",
            started.phases
        );
        assert_eq!(started.phases[0].0, "standby", "{:?}", started.phases);
        assert!(
            !started.phases.iter().any(|(p, _)| *p == "task_create"),
            "{:?}",
            started.phases
        );
        assert_eq!(started.port, 8080);
        let response = http_get(h.backend.connect(&id).await.expect("connect")).await;
        assert!(response.contains("hello from busybox"), "{response}");
        // Known by its instance id everywhere.
        let listed = h.backend.list().await.expect("list");
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].id, id);
        assert!(listed[0].running);
        h.backend.logs(&id).await.expect("logs");
        // The taken standby is refilled in the background.
        eventually("the refill", || containers(&h).len() == 2).await;
        eventually("the refill's task", || h.shims().len() == 2).await;
        h.backend.stop(&id, Duration::ZERO).await.expect("stop");
        assert!(h.backend.connect(&id).await.is_err());
        let left = containers(&h);
        assert_eq!(left.len(), 1, "only the new standby is left: {left:?}");
        assert!(!standby.contains(&left[0]), "a new standby: {left:?}");
    }

    // The app is removed: its standby goes.
    h.backend.release(&app).await;
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_change_discards_the_standby() {
    if !can_run("spec_change_discards_the_standby") {
        return;
    }
    let h = BackendHarness::start().await;
    let app = standby_app(&h, "change");
    h.backend.prepare(&app).await.expect("prepare");
    let first = containers(&h);
    assert_eq!(first.len(), 1);

    // A start with another spec does not take it: it is discarded, the start creates a new
    // container, and a standby for the new spec follows.
    let mut changed = app.clone();
    changed.env.insert("GREETING".into(), "hi".into());
    let id = h.id("change");
    let started = h.backend.start(&changed, &id).await.expect("start");
    assert!(
        started.phases.iter().any(|(p, _)| *p == "task_create"),
        "{:?}",
        started.phases
    );
    assert!(started.phases[0].0 != "standby");
    let response = http_get(h.backend.connect(&id).await.expect("connect")).await;
    assert!(response.contains("hello"), "{response}");
    eventually("the old standby's removal and a new one", || {
        let now = containers(&h);
        now.len() == 2 && !now.contains(&first[0])
    })
    .await;

    // A redeploy (prepare of a third spec) replaces it; releasing an older spec keeps it.
    let mut third = app.clone();
    third.env.insert("GREETING".into(), "hello".into());
    let before = containers(&h);
    h.backend.prepare(&third).await.expect("prepare third");
    let after = containers(&h);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_ne!(before, after);
    h.backend.release(&changed).await;
    h.backend.release(&app).await;
    assert_eq!(containers(&h).len(), 2);
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    assert_eq!(containers(&h).len(), 1);
    // The third spec's standby answers a start with that spec.
    let id = h.id("change");
    let started = h.backend.start(&third, &id).await.expect("start third");
    assert_eq!(started.phases[0].0, "standby");
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    h.backend.release(&third).await;
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_failure_from_a_standby_reports_code_and_logs() {
    if !can_run("boot_failure_from_a_standby_reports_code_and_logs") {
        return;
    }
    let h = BackendHarness::start().await;
    let mut app = standby_app(&h, "boomsb");
    app.command = Some(vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "echo starting; echo boom >&2; exit 3".into(),
    ]);
    h.backend.prepare(&app).await.expect("prepare");
    assert_eq!(containers(&h).len(), 1);
    let id = h.id("boomsb");
    let err = h.backend.start(&app, &id).await.expect_err("must fail");
    assert_eq!(err.kind(), ErrorKind::BootFailed, "{err}");
    assert_eq!(err.exit().map(|e| e.code), Some(3));
    let logs = err.logs().unwrap_or_default();
    assert!(
        logs.contains("boom") && logs.contains("starting"),
        "logs: {logs:?}"
    );
    // The engine stops what it started, also after a failure.
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    h.backend.release(&app).await;
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_after_a_crash_removes_standbys() {
    if !can_run("reconcile_after_a_crash_removes_standbys") {
        return;
    }
    // Without the spare shim, whose keeper would be the crashed engine's leftover too (covered
    // in spare_shim.rs).
    let h = BackendHarness::start_with(|b| b.spare_shim(false)).await;
    let app = standby_app(&h, "crashed");
    // The engine that crashes: a second backend on the harness's containerd, gone (its events
    // loop with it) once it made the standby. A live engine would delete the standby's task on
    // its exit event while reconcile deletes it too, which can leak the shim (see
    // `ContainerdBackend::reconcile`).
    let crashed = h.other_backend("crashed").await;
    crashed.prepare(&app).await.expect("prepare");
    assert_eq!(containers(&h).len(), 1);
    drop(crashed);
    // The gateway after the crash sees a leftover.
    assert_eq!(h.backend.list().await.expect("list").len(), 1);
    assert_eq!(h.backend.reconcile().await.expect("reconcile"), 1);
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    // Its own standby for the app is made as usual.
    h.backend.prepare(&app).await.expect("prepare");
    assert_eq!(containers(&h).len(), 1);
    h.backend.release(&app).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_refill_in_flight_leaves_no_shims() {
    if !can_run("shutdown_with_a_refill_in_flight_leaves_no_shims") {
        return;
    }
    let h = BackendHarness::start().await;
    let app = standby_app(&h, "inflight");
    h.backend.prepare(&app).await.expect("prepare");
    let id = h.id("inflight");
    h.backend.start(&app, &id).await.expect("start");
    // The refill is scheduled (or running): shut down right away.
    let namespace = h.backend.namespace().to_owned();
    h.shutdown().await;
    let shims: Vec<_> = shims()
        .into_iter()
        .filter(|s| s.namespace == namespace)
        .collect();
    assert!(shims.is_empty(), "{shims:?}");
}
