//! The startup CPU boost on a real containerd: an app that burns CPU before it listens boots
//! at the boost's quota and gets its slot's quota the moment it listens (read back from its
//! cgroup); without the boost the same boot is throttled by the slot. A real interpreter (a
//! Python standard-library server on Debian, built with debootstrap) cold-starts boosted at the
//! default slot and answers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serverless_core::{AppSpec, ContainerBackend, CpuBoost, ImageRef, InstanceId, Started};
use serverless_testkit::{
    can_run, can_run_with, http_get, python_archive, BackendHarness, PYTHON_GREETING,
};
use tokio::time::Instant;

/// A boot that burns a fixed amount of CPU (a busybox shell loop), then serves.
const BURN_THEN_SERVE: &str = "i=0; while [ $i -lt 150000 ]; do i=$((i+1)); done; \
                               exec /bin/busybox httpd -f -p $PORT -h /www";

fn burner(h: &BackendHarness, name: &str, boost: CpuBoost) -> AppSpec {
    let mut app = h.app(name);
    app.slot = "c.05-m64".parse().expect("slot");
    app.pids_limit = 64;
    app.startup_cpu_boost = boost;
    app.command = Some(
        ["/bin/busybox", "sh", "-c", BURN_THEN_SERVE]
            .map(String::from)
            .to_vec(),
    );
    app.limits.startup_timeout = Duration::from_secs(60);
    app
}

/// A cgroup v1 file of container `id` under `controller` (this host has v1 hierarchies; `cpu`
/// and `cpuacct` may be mounted together as `cpu,cpuacct`).
fn cgroup_file(h: &BackendHarness, controller: &str, id: &str, file: &str) -> PathBuf {
    let root = PathBuf::from("/sys/fs/cgroup");
    let joint = root.join("cpu,cpuacct");
    let dir = if matches!(controller, "cpu" | "cpuacct") && joint.exists() {
        joint
    } else {
        root.join(controller)
    };
    dir.join(h.backend.namespace()).join(id).join(file)
}

fn read_i64(path: &PathBuf) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Starts `app` as `id` (in container `container`) while watching its cgroup's CPU quota;
/// returns what the start reported, how long it took and the largest quota seen meanwhile.
async fn start_watching_quota(
    h: &BackendHarness,
    app: &AppSpec,
    id: &InstanceId,
    container: &str,
) -> (Started, Duration, i64) {
    let quota_file = cgroup_file(h, "cpu", container, "cpu.cfs_quota_us");
    let done = Arc::new(AtomicBool::new(false));
    let max_quota = Arc::new(AtomicI64::new(-1));
    let watcher = {
        let (done, max_quota) = (done.clone(), max_quota.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Acquire) {
                if let Some(q) = read_i64(&quota_file) {
                    max_quota.fetch_max(q, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let t = Instant::now();
    let started = h.backend.start(app, id).await.expect("start");
    let took = t.elapsed();
    done.store(true, Ordering::Release);
    watcher.await.expect("watcher");
    (started, took, max_quota.load(Ordering::Acquire))
}

/// The CPU time container `id`'s cgroup has used.
fn cpu_time(h: &BackendHarness, id: &str) -> Duration {
    let ns = read_i64(&cgroup_file(h, "cpuacct", id, "cpuacct.usage")).unwrap_or(0);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

fn has_phase(started: &Started, name: &str) -> bool {
    started.phases.iter().any(|(p, _)| *p == name)
}

/// Waits for the backend's background work (here: the slot applied after the boost).
async fn settled(h: &BackendHarness) {
    tokio::time::timeout(Duration::from_secs(30), h.backend.settled())
        .await
        .expect("the backend settles within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_hungry_boot_is_boosted_then_held_to_its_slot() {
    if !can_run("a_cpu_hungry_boot_is_boosted_then_held_to_its_slot") {
        return;
    }
    // The boost's cap is 1 vCPU whatever the host: the boost is measurable on any machine.
    let h = BackendHarness::start_with(|b| b.startup_cpu_boost(2, 1000)).await;

    let boosted_app = burner(&h, "boosted", CpuBoost::Max);
    // The image is imported once, off the timed starts (both apps run it).
    h.backend.prepare(&boosted_app).await.expect("prepare");
    let id = h.id("boosted");
    let (started, boosted_took, max_quota) =
        start_watching_quota(&h, &boosted_app, &id, id.as_str()).await;
    // The slot is applied behind the start: the start does not wait for the update.
    assert!(
        has_phase(&started, "boosted") && !has_phase(&started, "slot_applied"),
        "{:?}",
        started.phases
    );
    settled(&h).await;
    assert_eq!(max_quota, 100_000, "created with the boost's 1 vCPU quota");
    let boosted_phases = started.phases.clone();
    // Its slot's quota once it listens; memory and pids limits as the slot says.
    let quota = read_i64(&cgroup_file(&h, "cpu", id.as_str(), "cpu.cfs_quota_us"));
    assert_eq!(quota, Some(5_000), "c.05: 5 ms per 100 ms");
    let memory = read_i64(&cgroup_file(
        &h,
        "memory",
        id.as_str(),
        "memory.limit_in_bytes",
    ));
    assert_eq!(memory, Some(64 << 20));
    let pids = read_i64(&cgroup_file(&h, "pids", id.as_str(), "pids.max"));
    assert_eq!(pids, Some(64));
    let boosted_cpu = cpu_time(&h, id.as_str());
    let response = http_get(h.backend.connect(&id).await.expect("connect")).await;
    assert!(response.contains("hello from busybox"), "{response}");
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");

    let slow_app = burner(&h, "throttled", CpuBoost::Off);
    let id = h.id("throttled");
    let (started, throttled_took, max_quota) =
        start_watching_quota(&h, &slow_app, &id, id.as_str()).await;
    assert!(!has_phase(&started, "boosted"), "{:?}", started.phases);
    assert_eq!(max_quota, 5_000, "never above the slot");
    let throttled_cpu = cpu_time(&h, id.as_str());
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");

    let ratio = throttled_took.as_secs_f64() / boosted_took.as_secs_f64();
    println!(
        "CPU-hungry boot at c.05: boosted {boosted_took:?} (phases {boosted_phases:?}), throttled {throttled_took:?} (phases {:?}): {ratio:.1}x; boot CPU time {boosted_cpu:?} and {throttled_cpu:?}",
        started.phases
    );
    assert!(
        ratio > 2.0,
        "boosted {boosted_took:?} vs throttled {throttled_took:?}: the boost should make the boot clearly faster"
    );
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_made_boosted_and_gets_its_slot_when_it_listens() {
    if !can_run("a_standby_is_made_boosted_and_gets_its_slot_when_it_listens") {
        return;
    }
    let h = BackendHarness::start_with(|b| b.startup_cpu_boost(1, 1000).spare_shim(false)).await;
    let mut app = burner(&h, "sb", CpuBoost::Max);
    app.scale.standby = true;
    h.backend.prepare(&app).await.expect("prepare");
    let standby = h.container_ids();
    assert_eq!(standby.len(), 1, "{standby:?}");
    let quota = read_i64(&cgroup_file(&h, "cpu", &standby[0], "cpu.cfs_quota_us"));
    assert_eq!(quota, Some(100_000), "the standby is made boosted");

    let id = h.id("sb");
    let (started, took, max_quota) = start_watching_quota(&h, &app, &id, &standby[0]).await;
    assert_eq!(started.phases[0].0, "standby", "{:?}", started.phases);
    assert!(has_phase(&started, "boosted"), "{:?}", started.phases);
    assert_eq!(max_quota, 100_000);
    settled(&h).await;
    let quota = read_i64(&cgroup_file(&h, "cpu", &standby[0], "cpu.cfs_quota_us"));
    assert_eq!(quota, Some(5_000));
    println!("from a boosted standby in {took:?}: {:?}", started.phases);
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    h.backend.release(&app).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_app_on_debian_cold_starts_boosted_at_the_default_slot_and_answers() {
    let test = "a_python_app_on_debian_cold_starts_boosted_at_the_default_slot_and_answers";
    if !can_run_with(test, &[("debootstrap", "debootstrap"), ("gzip", "gzip")]) {
        return;
    }
    // Built once (debootstrap from the Debian mirror), then cached under target/bench-images.
    let archive = tokio::task::spawn_blocking(python_archive)
        .await
        .expect("builder thread")
        .expect("build the Python image");
    let h = BackendHarness::start_with(|b| b.startup_cpu_boost(1, 1000)).await;
    let mut app = h.app("py");
    app.image = ImageRef::parse(&format!("oci-archive:{}", archive.display())).expect("reference");
    assert_eq!(app.slot.to_string(), "c.125-m512", "the default slot");
    app.limits.startup_timeout = Duration::from_secs(60);
    let t = Instant::now();
    h.backend
        .prepare(&app)
        .await
        .expect("import the Python image");
    println!(
        "prepare (import, user-namespace copy) of the Python image: {:?}",
        t.elapsed()
    );
    let id = h.id("py");
    let (started, took, max_quota) = start_watching_quota(&h, &app, &id, id.as_str()).await;
    // The slot is applied behind the start: the start does not wait for the update.
    assert!(
        has_phase(&started, "boosted") && !has_phase(&started, "slot_applied"),
        "{:?}",
        started.phases
    );
    settled(&h).await;
    assert_eq!(max_quota, 100_000, "booted with the boost's 1 vCPU");
    let quota = read_i64(&cgroup_file(&h, "cpu", id.as_str(), "cpu.cfs_quota_us"));
    assert_eq!(quota, Some(12_500), "then held to c.125");
    assert_eq!(started.port, 8080, "found the port python3 listens on");
    let boot_cpu = cpu_time(&h, id.as_str());
    assert!(
        boot_cpu > Duration::from_millis(5),
        "the interpreter's boot used CPU: {boot_cpu:?}"
    );
    let response = http_get(h.backend.connect(&id).await.expect("connect")).await;
    assert!(response.contains(PYTHON_GREETING), "{response}");
    println!(
        "python3 on Debian at c.125 with boost: listening in {took:?}, boot CPU {boot_cpu:?}, phases {:?}",
        started.phases
    );
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    h.backend.release(&app).await;
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    h.shutdown().await;
}
