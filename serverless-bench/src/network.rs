//! Scenario: what `network = "bridge"` (the default) costs a cold start, against
//! `network = "none"`, measured side by side (interleaved run by run) on one gateway; then the
//! namespace pool's refill time: one CNI ADD, timed as the `network_wired` phase of bridge
//! starts on a second gateway without a pool (the work a refill does in the background).
//!
//! The bench's traffic stays on this machine: the engine's bridge, NAT and rules live in a
//! [`NetLab`]'s engine namespace (made here, removed at the end), never in the machine's own,
//! and the app (busybox httpd) only answers the gateway, which dials it inside its namespace.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use serverless_testkit::{busybox_image, env_num, NetLab};

use crate::lab::Lab;
use crate::util::{headline, ms, noise, summary, Context, Res};

pub(crate) async fn run(out: &Path) -> Res<()> {
    let runs: usize = env_num("BENCH_NET_RUNS", 20)?;
    let unpooled_runs: usize = env_num("BENCH_NET_UNPOOLED_RUNS", 10)?;
    for (program, package) in serverless_testkit::NETLAB_PROGRAMS {
        if !Path::new(program).is_file() && !on_path(program) {
            return Err(
                format!("network scenario: {program} not found (install {package})").into(),
            );
        }
    }
    let noise_before = noise();
    let netlab = NetLab::new(41);
    let pooled = measure_pooled(&netlab, runs).await;
    let unpooled = measure_unpooled(&netlab, unpooled_runs).await;
    let (mut value, unpooled) = (pooled?, unpooled?);
    value["bridge_unpooled"] = unpooled["bridge_unpooled"].clone();
    value["refill_ms"] = unpooled["refill_ms"].clone();
    value["noise_before"] = noise_before;
    value["noise_after"] = noise();
    let p50 = |k: &str| value[k]["summary"]["p50"].as_f64().unwrap_or(f64::NAN);
    headline("net_cold_none_p50_ms", format!("{:.1}", p50("none")));
    headline("net_cold_bridge_p50_ms", format!("{:.1}", p50("bridge")));
    headline(
        "net_cold_bridge_minus_none_p50_ms",
        format!("{:.1}", p50("bridge") - p50("none")),
    );
    let paired = crate::util::paired_difference(&value, "bridge", "none");
    headline(
        "net_cold_bridge_minus_none_paired_p50_ms",
        format!("{:.1}", paired.p50),
    );
    value["bridge_minus_none_paired"] = json!(paired);
    headline(
        "net_pool_refill_p50_ms",
        format!(
            "{:.1}",
            value["refill_ms"]["p50"].as_f64().unwrap_or(f64::NAN)
        ),
    );
    crate::util::write_json(out, "network", &value)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn images() -> [(&'static str, serverless_containerd::ImageBuilder); 1] {
    [("web.tar", busybox_image().tag("bench"))]
}

/// The default pool (2 namespaces wired ahead): `none` and `bridge` cold starts, alternating.
async fn measure_pooled(netlab: &NetLab, runs: usize) -> Res<serde_json::Value> {
    let (network, netns) = (netlab.network(), netlab.engine_netns());
    let lab = Lab::start_with("bench-net", &images(), move |b| {
        b.network(network).network_host_netns(netns).network_pool(2)
    })
    .await?;
    let result = async {
        let wired = lab.dir.path().join("containerd/network/wired");
        // One unrecorded round each: the image is unpacked, the bridge and its rules made.
        cold(&lab, "warmnone", "none").await?;
        cold(&lab, "warmbridge", "bridge").await?;
        let (mut none, mut bridge, mut take, mut pooled) = (vec![], vec![], vec![], 0);
        let mut phases_of: [std::collections::BTreeMap<&'static str, Vec<f64>>; 2] =
            Default::default();
        let mut record = |mode: usize| {
            for (p, d) in lab
                .rec
                .starts()
                .last()
                .map(|s| s.phases.clone())
                .unwrap_or_default()
            {
                phases_of[mode].entry(p).or_default().push(ms(d));
            }
        };
        for i in 0..runs {
            let t = cold(&lab, &format!("none{i}"), "none").await?;
            none.push(ms(t));
            record(0);
            // The pool refills in the background after each take: start from a full one.
            wait_for(&wired, 2).await?;
            let t = cold(&lab, &format!("bridge{i}"), "bridge").await?;
            bridge.push(ms(t));
            record(1);
            let phases = lab
                .rec
                .starts()
                .last()
                .map(|s| s.phases.clone())
                .unwrap_or_default();
            if let Some((_, d)) = phases.iter().find(|(p, _)| *p == "network_pooled") {
                pooled += 1;
                take.push(ms(*d));
            }
        }
        Ok::<_, crate::util::BoxError>(json!({
            "runs": runs,
            "pool": 2,
            "none": { "summary": summary(&none), "samples": none },
            "bridge": { "summary": summary(&bridge), "samples": bridge },
            "bridge_pooled_starts": pooled,
            "take_ms": summary(&take),
            // Each start phase's median, per mode: where a difference comes from.
            "phases_p50": phases_of.iter().zip(["none", "bridge"]).map(|(m, mode)| {
                let p50: serde_json::Map<String, serde_json::Value> = m
                    .iter()
                    .map(|(p, v)| ((*p).to_owned(), json!(summary(v).p50)))
                    .collect();
                (mode.to_owned(), serde_json::Value::Object(p50))
            }).collect::<serde_json::Map<_, _>>(),
        }))
    }
    .await;
    lab.stop().await?;
    result
}

/// No pool: every bridge start wires its namespace on the request's path; its
/// `network_wired` phase is one CNI ADD (namespace, loopback, bridge + host-local, firewall,
/// port isolation), which is what a refill runs in the background.
async fn measure_unpooled(netlab: &NetLab, runs: usize) -> Res<serde_json::Value> {
    let (network, netns) = (netlab.network(), netlab.engine_netns());
    let lab = Lab::start_with("bench-net0", &images(), move |b| {
        b.network(network).network_host_netns(netns).network_pool(0)
    })
    .await?;
    let result = async {
        cold(&lab, "warm", "bridge").await?;
        let (mut total, mut add) = (vec![], vec![]);
        for i in 0..runs {
            let t = cold(&lab, &format!("wired{i}"), "bridge").await?;
            total.push(ms(t));
            let phases = lab
                .rec
                .starts()
                .last()
                .map(|s| s.phases.clone())
                .unwrap_or_default();
            let (_, d) = phases
                .iter()
                .find(|(p, _)| *p == "network_wired")
                .context("a bridge start without a pool has a network_wired phase")?;
            add.push(ms(*d));
        }
        Ok::<_, crate::util::BoxError>(json!({
            "bridge_unpooled": { "summary": summary(&total), "samples": total },
            "refill_ms": summary(&add),
        }))
    }
    .await;
    lab.stop().await?;
    result
}

/// Waits until `dir` holds `n` wired namespaces (each with its ADD result).
async fn wait_for(dir: &Path, n: usize) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("result.json").exists())
                    .count()
            })
            .unwrap_or(0);
        if ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the namespace pool did not refill to {n} in 10 s").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A cold start of a fresh app with `network = mode` (see [`Lab::cold_request`]).
async fn cold(lab: &Lab, name: &str, mode: &str) -> Res<Duration> {
    lab.cold_request(
        name,
        &format!(
            "[[apps]]\nname = \"{name}\"\nnetwork = \"{mode}\"\nimage = \"oci-archive:{{dir}}/web.tar\"\n[apps.limits]\nstop_grace = \"0s\"\n"
        ),
    )
    .await
}
