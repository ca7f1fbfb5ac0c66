//! Many start/stop cycles leave nothing of ours in containerd (set `CYCLES` to change the
//! count; default 200).

use std::time::Duration;

use serverless_core::ContainerBackend;
use serverless_testkit::{can_run, env_num, http_get, BackendHarness};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_cycles_leave_nothing() {
    if !can_run("start_stop_cycles_leave_nothing") {
        return;
    }
    let cycles: usize = env_num("CYCLES", 200).unwrap();
    let h = BackendHarness::start().await;
    let app = h.app("cycle");
    let t0 = Instant::now();
    for i in 0..cycles {
        let id = h.id("cycle");
        let started = h
            .backend
            .start(&app, &id)
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        assert_eq!(started.port, 8080);
        if i % 20 == 0 {
            let response = http_get(h.backend.connect(&id).await.expect("connect")).await;
            assert!(response.contains("hello"), "{response}");
        }
        h.backend
            .stop(&id, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
    }
    eprintln!(
        "{cycles} start/stop cycles in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let left = h.leftovers();
    assert!(left.is_empty(), "after {cycles} cycles: {left:?}");
    assert!(h.backend.list().await.expect("list").is_empty());
    h.shutdown().await;
}
