//! Cold start through the backend: start → port discovered → first response byte over
//! `connect`, 10 runs, phases and median printed (numbers for benchmarks, not assertions).
//!
//! `COLD_START_RUNS` (default 10), `COLD_START_STANDBY=1` (start from a standby: the next one
//! is awaited between runs).

use std::time::Duration;

use serverless_core::ContainerBackend;
use serverless_testkit::{can_run, env_num, BackendHarness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_to_first_byte() {
    if !can_run("cold_start_to_first_byte") {
        return;
    }
    let standby = std::env::var("COLD_START_STANDBY").is_ok_and(|v| v == "1");
    let h = BackendHarness::start().await;
    let mut app = h.app("cold");
    app.scale.standby = standby;
    // Import once (deploy time), as the engine does with `prepare`.
    h.backend.prepare(&app).await.expect("prepare");

    let runs: usize = env_num("COLD_START_RUNS", 10).unwrap();
    let mut totals = Vec::new();
    let mut phase_sums: Vec<(&'static str, Vec<Duration>)> = Vec::new();
    for _ in 0..runs {
        if standby {
            // Returns once the standby is ready.
            h.backend.prepare(&app).await.expect("prepare");
        }
        let id = h.id("cold");
        let t0 = Instant::now();
        let started = h.backend.start(&app, &id).await.expect("start");
        let t_started = t0.elapsed();
        let mut conn = h.backend.connect(&id).await.expect("connect");
        conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 1];
        conn.read_exact(&mut first).await.expect("first byte");
        let total = t0.elapsed();
        assert_eq!(first[0], b'H');
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.unwrap();
        assert!(String::from_utf8_lossy(&rest).contains("hello from busybox"));
        assert_eq!(started.port, 8080);

        let t_stop = Instant::now();
        h.backend
            .stop(&id, Duration::from_millis(100))
            .await
            .expect("stop");
        let stop = t_stop.elapsed();

        let phases: Vec<String> = started
            .phases
            .iter()
            .map(|(n, d)| format!("{n}={:.1}ms", d.as_secs_f64() * 1e3))
            .collect();
        eprintln!(
            "cold start: total to first byte {:.1}ms (start {:.1}ms; {}); stop {:.1}ms",
            total.as_secs_f64() * 1e3,
            t_started.as_secs_f64() * 1e3,
            phases.join(" "),
            stop.as_secs_f64() * 1e3
        );
        for (name, d) in &started.phases {
            match phase_sums.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(*d),
                None => phase_sums.push((name, vec![*d])),
            }
        }
        totals.push(total);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let phases: Vec<String> = phase_sums
        .iter_mut()
        .map(|(n, v)| format!("{n}={:.1}ms", median(v).as_secs_f64() * 1e3))
        .collect();
    let (min, max) = (
        totals.iter().min().copied().unwrap_or_default(),
        totals.iter().max().copied().unwrap_or_default(),
    );
    eprintln!(
        "COLD START (standby {standby}) over {runs} runs: median {:.1}ms (min {:.1}ms, max {:.1}ms); median phases: {}",
        median(&mut totals).as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        phases.join(" ")
    );
    h.backend.release(&app).await;
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    h.shutdown().await;
}
