//! Scenario 3: step load from zero — 50 clients start at once against an app with no instance
//! (limit 10 per instance), each sending `GET /sleep?ms=100` back to back.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use http::StatusCode;
use serde_json::json;

use serverless_testkit::{connect, env_num, get, hello_archive};

use crate::lab::Lab;
use crate::util::{headline, ms, noise, summary, write_json, Res};

pub(crate) async fn run(out: &Path, hello_bin: &Path) -> Res<()> {
    let clients: usize = env_num("BENCH_STEP_CLIENTS", 50)?;
    let secs: u64 = env_num("BENCH_STEP_SECS", 10)?;
    let noise_before = noise();
    let lab = Lab::start("bench-step", &[]).await?;
    let result = measure(&lab, hello_bin, clients, Duration::from_secs(secs)).await;
    lab.stop().await?;
    let mut value = result?;
    value["noise_before"] = noise_before;
    value["noise_after"] = noise();
    write_json(out, "step", &value)
}

async fn measure(
    lab: &Lab,
    hello_bin: &Path,
    clients: usize,
    duration: Duration,
) -> Res<serde_json::Value> {
    hello_archive(hello_bin, lab.dir.path());
    lab.deploy(
        "[[apps]]\nname = \"step\"\nnetwork = \"none\"\nimage = \"oci-archive:{dir}/hello.tar\"\n[apps.limits]\nmax_concurrent_requests = 10\n[apps.scale]\nmax = 10\n",
    )
    .await?;
    let gw = lab.gateway.listen_addr();
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                // (send time s, latency ms, ok)
                let mut samples: Vec<(f64, f64, bool)> = Vec::new();
                let mut errors: Vec<String> = Vec::new();
                let mut tx = None;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    if tx.is_none() {
                        match connect(gw).await {
                            Ok(c) => tx = Some(c),
                            Err(e) => {
                                errors.push(e.to_string());
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let Some(conn) = tx.as_mut() else { continue };
                    let at = (sent - t0).as_secs_f64();
                    match get(conn, "step.localhost", "/sleep?ms=100").await {
                        Ok((StatusCode::OK, _)) => samples.push((at, ms(sent.elapsed()), true)),
                        Ok((s, _)) => {
                            samples.push((at, ms(sent.elapsed()), false));
                            errors.push(format!("status {s}"));
                        }
                        Err(e) => {
                            samples.push((at, ms(sent.elapsed()), false));
                            errors.push(e.to_string());
                            tx = None;
                        }
                    }
                }
                (samples, errors)
            })
        })
        .collect();
    // Instances over time, every 5 ms.
    let mut timeline: Vec<(f64, usize, usize)> = Vec::new();
    let mut five_ready = None;
    while Instant::now() < deadline {
        let (ready, total) = lab.instances("step");
        let t = t0.elapsed().as_secs_f64();
        if ready >= 5 && five_ready.is_none() {
            five_ready = Some(t * 1000.0);
        }
        if timeline.last().map(|l| (l.1, l.2)) != Some((ready, total)) {
            timeline.push((t, ready, total));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (s, e) = t.await?;
        samples.extend(s);
        errors.extend(e);
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ready, total) = lab.instances("step");
    timeline.push((t0.elapsed().as_secs_f64(), ready, total));
    let lat: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let first: Vec<f64> = samples.iter().filter(|s| s.0 < 0.05).map(|s| s.1).collect();
    let steady: Vec<f64> = samples.iter().filter(|s| s.0 > 2.0).map(|s| s.1).collect();
    let five = five_ready.unwrap_or(f64::NAN);
    headline("step_time_to_5_ready_ms", format!("{five:.0}"));
    headline("step_errors", errors.len());
    headline(
        "step_max_instances",
        timeline.iter().map(|t| t.2).max().unwrap_or(0),
    );
    let mut distinct = errors.clone();
    distinct.sort();
    distinct.dedup();
    Ok(json!({
        "clients": clients,
        "duration_s": duration.as_secs(),
        "time_to_5_ready_ms": five,
        "requests": samples.len(),
        "errors": errors.len(),
        "error_kinds": distinct.into_iter().take(10).collect::<Vec<_>>(),
        "latency": summary(&lat),
        "first_wave_latency": summary(&first),
        "steady_latency": summary(&steady),
        "samples": samples,
        "timeline": timeline,
        "max_instances": timeline.iter().map(|t| t.2).max().unwrap_or(0),
    }))
}
