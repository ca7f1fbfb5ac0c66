//! Scenario: what the sandbox costs a cold start. The same app (busybox httpd, loopback only)
//! three ways, interleaved run by run on one gateway: the full default sandbox (user namespace,
//! seccomp allow-list, init as PID 1), the same without its user namespace, and bare (no user
//! namespace, no seccomp filter, no init). The image's remapped layers are made when the first
//! sandboxed app is deployed, in an unrecorded round: a cold start only prepares its snapshot
//! on top of them.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use serverless_testkit::{busybox_image, env_num};

use crate::lab::Lab;
use crate::util::{headline, ms, noise, summary, Res};

/// The modes, each with the `[apps.security]` table its apps get.
const MODES: [(&str, &str); 3] = [
    ("full", ""),
    ("no_userns", "userns = false\n"),
    (
        "bare",
        "userns = false\nseccomp = \"unconfined\"\ninit = false\n",
    ),
];

pub(crate) async fn run(out: &Path) -> Res<()> {
    let runs: usize = env_num("BENCH_SANDBOX_RUNS", 20)?;
    let noise_before = noise();
    let lab = Lab::start(
        "bench-sandbox",
        &[("web.tar", busybox_image().tag("bench"))],
    )
    .await?;
    let result = measure(&lab, runs).await;
    lab.stop().await?;
    let mut value = result?;
    value["noise_before"] = noise_before;
    value["noise_after"] = noise();
    let p = |k: &str, q: &str| value[k]["summary"][q].as_f64().unwrap_or(f64::NAN);
    for (mode, _) in MODES {
        headline(
            &format!("sandbox_cold_{mode}_p50_ms"),
            format!("{:.1}", p(mode, "p50")),
        );
    }
    headline(
        "sandbox_cold_userns_cost_p50_ms",
        format!("{:.1}", p("full", "p50") - p("no_userns", "p50")),
    );
    let paired = crate::util::paired_difference(&value, "full", "no_userns");
    headline(
        "sandbox_cold_userns_cost_paired_p50_ms",
        format!("{:.1}", paired.p50),
    );
    headline(
        "sandbox_cold_userns_cost_p99_ms",
        format!("{:.1}", p("full", "p99") - p("no_userns", "p99")),
    );
    value["userns_cost_paired"] = json!(paired);
    crate::util::write_json(out, "sandbox", &value)
}

async fn measure(lab: &Lab, runs: usize) -> Res<serde_json::Value> {
    // Unrecorded: the image imported, its remapped copy made, runc and the init warm.
    let t = Instant::now();
    cold(lab, "warmfull", MODES[0].1).await?;
    let first_deploy = ms(t.elapsed());
    for (mode, security) in &MODES[1..] {
        cold(lab, &format!("warm{}", mode.replace('_', "")), security).await?;
    }
    let mut samples: [Vec<f64>; 3] = Default::default();
    let mut phases: [std::collections::BTreeMap<&'static str, Vec<f64>>; 3] = Default::default();
    for i in 0..runs {
        for (m, (mode, security)) in MODES.iter().enumerate() {
            let name = format!("{}{i}", mode.replace('_', ""));
            samples[m].push(ms(cold(lab, &name, security).await?));
            for (p, d) in lab
                .rec
                .starts()
                .last()
                .map(|s| s.phases.clone())
                .unwrap_or_default()
            {
                phases[m].entry(p).or_default().push(ms(d));
            }
        }
    }
    let mut value = json!({ "runs": runs, "first_deploy_ms": first_deploy });
    for (m, (mode, _)) in MODES.iter().enumerate() {
        let p50: serde_json::Map<String, serde_json::Value> = phases[m]
            .iter()
            .map(|(p, v)| ((*p).to_owned(), json!(summary(v).p50)))
            .collect();
        value[*mode] = json!({
            "summary": summary(&samples[m]),
            "samples": samples[m],
            "phases_p50": p50,
        });
    }
    Ok(value)
}

/// A cold start of a fresh app with this `[apps.security]` table (see [`Lab::cold_request`]).
async fn cold(lab: &Lab, name: &str, security: &str) -> Res<Duration> {
    lab.cold_request(
        name,
        &format!(
            "[[apps]]\nname = \"{name}\"\nnetwork = \"none\"\nimage = \"oci-archive:{{dir}}/web.tar\"\n[apps.limits]\nstop_grace = \"0s\"\n[apps.security]\n{security}"
        ),
    )
    .await
}
