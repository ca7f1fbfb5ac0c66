//! Scenario 4: idle stop precision (when instances stop vs `idle_timeout`) and recycling under
//! load (failed requests while instances are recycled by `max_duration`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http::StatusCode;
use serde_json::json;

use serverless_testkit::{busybox_image, connect, env_num, get, hello_archive};

use crate::lab::Lab;
use crate::util::{headline, ms, noise, summary, write_json, Context, Res};

pub(crate) async fn run(out: &Path, hello_bin: &Path) -> Res<()> {
    let noise_before = noise();
    let lab = Lab::start("bench-idle", &[("web.tar", busybox_image().tag("bench"))]).await?;
    let result = async {
        let idle = idle(&lab).await?;
        let recycle = recycle(&lab, hello_bin).await?;
        Ok::<_, crate::util::BoxError>(json!({ "idle": idle, "recycle": recycle }))
    }
    .await;
    lab.stop().await?;
    let mut value = result?;
    value["noise_before"] = noise_before;
    value["noise_after"] = noise();
    write_json(out, "idle", &value)
}

async fn idle(lab: &Lab) -> Res<serde_json::Value> {
    let apps: usize = env_num("BENCH_IDLE_APPS", 10)?;
    let rounds: usize = env_num("BENCH_IDLE_ROUNDS", 2)?;
    let timeout_ms: u64 = env_num("BENCH_IDLE_TIMEOUT_MS", 2000)?;
    for a in 0..apps {
        lab.deploy(&format!(
            "[[apps]]\nname = \"idle{a}\"\nnetwork = \"none\"\nimage = \"oci-archive:{{dir}}/web.tar\"\n[apps.limits]\nidle_timeout = \"{timeout_ms}ms\"\nstop_grace = \"0s\"\n"
        ))
        .await?;
    }
    let gw = lab.gateway.listen_addr();
    let mut late_called = Vec::new();
    let mut late_done = Vec::new();
    for _ in 0..rounds {
        let before = lab.rec.stops().len();
        let tasks: Vec<_> = (0..apps)
            .map(|a| {
                tokio::spawn(async move {
                    let mut tx = connect(gw).await?;
                    let (status, _) = get(&mut tx, &format!("idle{a}.localhost"), "/").await?;
                    let end = Instant::now();
                    drop(tx);
                    if status != StatusCode::OK {
                        return Err(format!("idle{a} answered {status}").into());
                    }
                    Ok::<_, crate::util::BoxError>((format!("idle{a}"), end))
                })
            })
            .collect();
        let mut ends = Vec::new();
        for t in tasks {
            ends.push(t.await??);
        }
        let deadline = Instant::now() + Duration::from_millis(timeout_ms) + Duration::from_secs(20);
        while lab.rec.stops().len() < before + apps {
            if Instant::now() > deadline {
                return Err("idle instances were not stopped within idle_timeout + 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stops = lab.rec.stops();
        for (app, end) in ends {
            let stop = stops[before..]
                .iter()
                .find(|s| s.app == app)
                .context(format_args!("no stop recorded for {app}"))?;
            let idle = Duration::from_millis(timeout_ms);
            late_called.push(ms(stop.called.saturating_duration_since(end)) - ms(idle));
            late_done.push(ms(stop.done.saturating_duration_since(end)) - ms(idle));
        }
        lab.wait_empty(Duration::from_secs(20)).await?;
    }
    let s_called = summary(&late_called);
    let s_done = summary(&late_done);
    headline("idle_stop_late_median_ms", format!("{:.1}", s_called.p50));
    headline("idle_stop_late_max_ms", format!("{:.1}", s_called.max));
    Ok(json!({
        "idle_timeout_ms": timeout_ms,
        "samples": late_called.len(),
        "stop_begins_after_timeout_ms": s_called,
        "container_gone_after_timeout_ms": s_done,
        "raw": late_called,
    }))
}

async fn recycle(lab: &Lab, hello_bin: &Path) -> Res<serde_json::Value> {
    let want: f64 = env_num("BENCH_RECYCLES", 10.0)?;
    let clients: usize = env_num("BENCH_RECYCLE_CLIENTS", 4)?;
    hello_archive(hello_bin, lab.dir.path());
    lab.deploy(
        "[[apps]]\nname = \"recycle\"\nnetwork = \"none\"\nimage = \"oci-archive:{dir}/hello.tar\"\n[apps.limits]\nmax_concurrent_requests = 4\nmax_duration = \"1s\"\nstop_grace = \"2s\"\n[apps.scale]\nmax = 4\n",
    )
    .await?;
    let gw = lab.gateway.listen_addr();
    let metric = "serverless_instance_stops_total{app=\"recycle\",reason=\"recycled\"}";
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::<String>::new());
                let mut tx = None;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if tx.is_none() {
                        tx = connect(gw).await.ok();
                    }
                    let Some(conn) = tx.as_mut() else {
                        failed.push("connect failed".into());
                        continue;
                    };
                    match get(conn, "recycle.localhost", "/sleep?ms=20").await {
                        Ok((StatusCode::OK, _)) => ok += 1,
                        Ok((s, _)) => failed.push(format!("status {s}")),
                        Err(e) => {
                            failed.push(e.to_string());
                            tx = None;
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    while lab.metric(metric) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in tasks {
        let (o, f) = t.await?;
        ok += o;
        failed.extend(f);
    }
    let recycled = lab.metric(metric);
    headline("recycle_count", recycled);
    headline("recycle_failed_requests", failed.len());
    Ok(json!({
        "recycles": recycled,
        "requests_ok": ok,
        "requests_failed": failed.len(),
        "failures": failed.into_iter().take(10).collect::<Vec<_>>(),
        "seconds": t0.elapsed().as_secs_f64(),
        "clients": clients,
    }))
}
