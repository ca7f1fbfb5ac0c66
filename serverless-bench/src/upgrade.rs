//! Scenario `upgrade`: the gateway upgraded under load. The real `serverless serve` (embedded
//! containerd, one warm instance of serverless-hello, `network = "none"`) under closed-loop
//! GET load; each run measures a window without an upgrade and a window of the same length in
//! which a second copy of the binary takes over (issue 23's hand-over), alternating the two
//! copies run by run: requests/s and failed requests in each window, the time until the new
//! process serves (it logged `gateway on http://…`) and until it serves alone (the old process
//! has exited).

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use serverless_testkit::{env_num, hello_archive, GatewayProcess, Load};

use crate::util::{headline, ms, noise, summary, write_json, Context, Res};

pub(crate) async fn run(out: &Path, serverless_bin: &Path, hello_bin: &Path) -> Res<()> {
    let runs: usize = env_num("BENCH_UPGRADE_RUNS", 5)?;
    let clients: usize = env_num("BENCH_UPGRADE_CLIENTS", 8)?;
    let window_ms: u64 = env_num("BENCH_UPGRADE_WINDOW_MS", 4000)?;
    let window = Duration::from_millis(window_ms);
    let noise_before = noise();
    let dir = tempfile::Builder::new()
        .prefix("serverless-bench-upgrade-")
        .tempdir()
        .context("create a temp dir")?;
    let data = dir.path().join("data");
    let config = dir.path().join("serverless.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
             [[apps]]\nname = \"web\"\nnetwork = \"none\"\nimage = \"oci-archive:{}\"\n\
             [apps.limits]\nmax_concurrent_requests = 64\n[apps.scale]\nmin = 1\nmax = 1\n",
            data.display(),
            hello_archive(hello_bin, dir.path()).display()
        ),
    )
    .context("write serverless.toml")?;
    let copy = dir.path().join("serverless-next");
    std::fs::copy(serverless_bin, &copy).context("copy the serverless binary")?;
    let binaries = [serverless_bin, copy.as_path()];

    let mut current = Some(GatewayProcess::start(binaries[0], &config).await);
    let result = async {
        let addr = current.as_ref().ok_or("no gateway")?.addr;
        // Warm: the instance is up and the clients' connections are open.
        Load::start(addr, "web.localhost", "/", clients)
            .finish()
            .await;
        let mut steady_rps = Vec::new();
        let mut upgrade_rps = Vec::new();
        let mut steady_failed = 0usize;
        let mut upgrade_failed = 0usize;
        let mut serving_ms = Vec::new();
        let mut alone_ms = Vec::new();
        let mut failures = Vec::new();
        for run in 1..=runs {
            // Without an upgrade.
            let load = Load::start(addr, "web.localhost", "/", clients);
            let t = Instant::now();
            tokio::time::sleep(window).await;
            let (sent, failed) = load.finish().await;
            steady_rps.push(sent as f64 / t.elapsed().as_secs_f64());
            steady_failed += failed.len();
            failures.extend(failed);

            // The same window with an upgrade a quarter of the way in.
            let load = Load::start(addr, "web.localhost", "/", clients);
            let t = Instant::now();
            tokio::time::sleep(window / 4).await;
            let started = Instant::now();
            let next = GatewayProcess::start(binaries[run % 2], &config).await;
            serving_ms.push(ms(started.elapsed()));
            let mut old = current.replace(next).ok_or("no gateway")?;
            let status = tokio::time::timeout(Duration::from_secs(60), old.child.wait())
                .await
                .map_err(|_| "the old gateway did not exit within 60 s of the upgrade")?
                .context("wait for the old gateway")?;
            alone_ms.push(ms(started.elapsed()));
            if !status.success() {
                return Err(format!("the old gateway exited with {status}").into());
            }
            tokio::time::sleep_until(t + window).await;
            let (sent, failed) = load.finish().await;
            upgrade_rps.push(sent as f64 / t.elapsed().as_secs_f64());
            upgrade_failed += failed.len();
            failures.extend(failed);
            if current
                .as_ref()
                .is_some_and(|g| g.log().contains("instance ready"))
            {
                return Err("a cold start after the upgrade".into());
            }
            eprintln!(
                "upgrade run {run}: {:.0} req/s without, {:.0} with; new serving after {:.0} ms, alone after {:.0} ms",
                steady_rps[run - 1],
                upgrade_rps[run - 1],
                serving_ms[run - 1],
                alone_ms[run - 1]
            );
        }
        failures.truncate(5);
        let (steady, upgrade) = (summary(&steady_rps), summary(&upgrade_rps));
        Ok::<_, crate::util::BoxError>(json!({
            "runs": runs,
            "clients": clients,
            "window_ms": window_ms,
            "steady_rps": steady,
            "upgrade_rps": upgrade,
            "rps_ratio": upgrade.p50 / steady.p50,
            "steady_failed": steady_failed,
            "upgrade_failed": upgrade_failed,
            "serving_ms": summary(&serving_ms),
            "alone_ms": summary(&alone_ms),
            "failures": failures,
        }))
    }
    .await;
    if let Some(gateway) = current.take() {
        gateway.signal("TERM");
        let mut gateway = gateway;
        let _ = tokio::time::timeout(Duration::from_secs(60), gateway.child.wait()).await;
    }
    let mut value = result?;
    value["noise_before"] = noise_before;
    value["noise_after"] = noise();
    headline(
        "upgrade_failed_requests",
        value["upgrade_failed"].as_u64().unwrap_or(u64::MAX),
    );
    headline(
        "upgrade_rps_ratio",
        format!("{:.2}", value["rps_ratio"].as_f64().unwrap_or(f64::NAN)),
    );
    write_json(out, "upgrade", &value)
}
