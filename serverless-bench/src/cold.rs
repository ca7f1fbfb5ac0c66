//! Scenario 1: cold start (zero instances → first response byte) through the gateway, against
//! `ctr run` + first response and `podman run` + first response, interleaved run by run. The
//! gateway is measured twice per run: with nothing pre-created, and with a standby
//! (`scale.standby = true`: the task created at deploy, only started by the cold start).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use http::StatusCode;
use serde_json::json;

use serverless_testkit::{busybox_image, connect, env_num, free_port};

use crate::lab::{phase_breakdown, Lab, PhaseSummary, StartRecord};
use crate::peer::{ctr, first_response, podman, remove_ctr, remove_podman, PODMAN_ULIMITS};
use crate::util::{headline, ms, noise, summary, Context, Res};

const CTR_NS: &str = "bench-ctr";
const PODMAN_IMAGE: &str = "serverless.local/image:bench";

pub(crate) async fn run(out: &Path) -> Res<()> {
    let runs: usize = env_num("BENCH_COLD_RUNS", 30)?;
    let standby = env_num("BENCH_COLD_STANDBY", 1)? != 0;
    let peers = std::env::var("BENCH_COLD_PEERS").unwrap_or_else(|_| "ctr,podman,runc".into());
    let noise_before = noise();
    let lab = Lab::start("bench-cold", &[("web.tar", busybox_image().tag("bench"))]).await?;
    let result = measure(&lab, runs, &peers, standby).await;
    let podman_root = lab.dir.path().join("podman");
    if podman_root.exists() {
        let _ = podman(&podman_root)
            .args(["rm", "-af", "-t", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = podman(&podman_root)
            .args(["system", "reset", "-f"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    lab.stop().await?;
    let mut value = result?;
    value["noise_before"] = noise_before;
    value["noise_after"] = noise();
    crate::util::write_json(out, "cold", &value)
}

async fn measure(lab: &Lab, runs: usize, peers: &str, use_standby: bool) -> Res<serde_json::Value> {
    let gw = lab.gateway.listen_addr();
    let sock = lab.containerd.socket().to_owned();
    let dir = lab.dir.path();
    let docker_tar = dir.join("web-docker.tar");
    busybox_image()
        .tag("bench")
        .write_docker_archive(&docker_tar)
        .context("write the docker archive")?;
    let use_ctr = peers.contains("ctr");
    let use_podman = peers.contains("podman");
    let use_runc = peers.contains("runc");
    let bundle = dir.join("runc-bundle");
    if use_runc {
        runc_bundle(&bundle)?;
    }
    let mut ctr_image = String::new();
    if use_ctr {
        ctr_image = ctr_import(&sock, &docker_tar)?;
    }
    let podman_root = dir.join("podman");
    if use_podman {
        let out = podman(&podman_root)
            .args(["load", "-q", "-i"])
            .arg(&docker_tar)
            .output()
            .context("run podman (scripts/bench installs it)")?;
        if !out.status.success() {
            return Err(format!("podman load: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
    }

    let mut ours = Vec::new();
    let mut ours_header = Vec::new();
    let mut sb = Vec::new();
    let mut sb_header = Vec::new();
    let mut ctr = Vec::new();
    let mut ctr_ns = Vec::new();
    let mut pod = Vec::new();
    let mut bare = Vec::new();
    let mut errors = Vec::new();
    // Two unrecorded warm-up rounds (page cache, first shim, podman's first-run setup).
    for i in 0..runs + 2 {
        let record = i >= 2;
        let (total, header) = gateway_cold(lab, gw, i, false).await?;
        if record {
            ours.push(ms(total));
            ours_header.push(header);
        }
        if use_standby {
            let (total, header) = gateway_cold(lab, gw, i, true).await?;
            if record {
                sb.push(ms(total));
                sb_header.push(header);
            }
        }
        if use_ctr {
            match ctr_cold(&sock, &ctr_image, i).await {
                Ok(d) if record => ctr.push(ms(d)),
                Ok(_) => {}
                Err(e) => errors.push(format!("ctr run {i}: {e}")),
            }
        }
        if use_ctr {
            match ctr_netns_cold(&sock, &ctr_image, i).await {
                Ok(d) if record => ctr_ns.push(ms(d)),
                Ok(_) => {}
                Err(e) => errors.push(format!("ctr run (netns) {i}: {e}")),
            }
        }
        if use_podman {
            match podman_cold(&podman_root, i).await {
                Ok(d) if record => pod.push(ms(d)),
                Ok(_) => {}
                Err(e) => errors.push(format!("podman run {i}: {e}")),
            }
        }
        if use_runc {
            match runc_cold(&bundle, i).await {
                Ok(d) if record => bare.push(ms(d)),
                Ok(_) => {}
                Err(e) => errors.push(format!("runc {i}: {e}")),
            }
        }
        if record {
            eprintln!(
                "cold {}/{runs}: gateway {:.1} ms{}{}{}{}",
                i - 1,
                ours.last().copied().unwrap_or(f64::NAN),
                sb.last()
                    .map(|d| format!(", gateway from standby {d:.1} ms"))
                    .unwrap_or_default(),
                ctr.last()
                    .map(|d| format!(
                        ", ctr {d:.1} ms, ctr+netns {:.1} ms",
                        ctr_ns.last().copied().unwrap_or(f64::NAN)
                    ))
                    .unwrap_or_default(),
                pod.last()
                    .map(|d| format!(", podman {d:.1} ms"))
                    .unwrap_or_default(),
                bare.last()
                    .map(|d| format!(", bare runc {d:.1} ms"))
                    .unwrap_or_default()
            );
        }
    }

    // Phase breakdown: the backend's phases of the recorded runs (one start per run and
    // variant; a start from a standby reports a `standby` phase first).
    let starts = lab.rec.starts();
    let from_standby = |r: &&StartRecord| r.phases.first().is_some_and(|(p, _)| *p == "standby");
    let plain: Vec<&StartRecord> = starts.iter().filter(|r| !from_standby(r)).collect();
    let standby: Vec<&StartRecord> = starts.iter().filter(from_standby).collect();
    let plain = phase_breakdown(
        plain[plain.len().saturating_sub(runs)..].iter().copied(),
        PhaseSummary::Full { totals: &ours },
    );
    let standby = phase_breakdown(
        standby[standby.len().saturating_sub(runs)..]
            .iter()
            .copied(),
        PhaseSummary::Full { totals: &sb },
    );

    let s_ours = summary(&ours);
    headline("cold_start_gateway_median_ms", format!("{:.1}", s_ours.p50));
    headline("cold_start_gateway_p99_ms", format!("{:.1}", s_ours.p99));
    let mut value = json!({
        "runs": runs,
        "gateway": { "samples": ours, "summary": s_ours, "cold_start_header_ms": ours_header },
        "phases": plain["phases"],
        "phase_order": plain["phase_order"],
        "backend_start": plain["backend_start"],
        "gateway_overhead": plain["gateway_overhead"],
        "errors": errors,
    });
    let s_sb = summary(&sb);
    if use_standby {
        headline("cold_start_standby_median_ms", format!("{:.1}", s_sb.p50));
        headline("cold_start_standby_p99_ms", format!("{:.1}", s_sb.p99));
        let mut v = standby;
        v["samples"] = json!(sb);
        v["summary"] = json!(s_sb);
        v["cold_start_header_ms"] = json!(sb_header);
        value["gateway_standby"] = v;
    }
    // A peer's median and how many times faster the gateway's median is.
    let peer = |name: &str, samples: &[f64]| {
        let s = summary(samples);
        headline(
            &format!("cold_start_{name}_median_ms"),
            format!("{:.1}", s.p50),
        );
        headline(
            &format!("cold_start_speedup_vs_{name}"),
            format!("{:.2}", s.p50 / s_ours.p50),
        );
        (s, json!({ "samples": samples, "summary": s }))
    };
    if use_ctr {
        let (s, v) = peer("ctr", &ctr);
        if use_standby {
            headline(
                "cold_start_standby_speedup_vs_ctr",
                format!("{:.2}", s.p50 / s_sb.p50),
            );
        }
        value["ctr"] = v;
        value["ctr_netns"] = peer("ctr_netns", &ctr_ns).1;
    }
    if use_podman {
        value["podman"] = peer("podman", &pod).1;
    }
    if use_runc {
        value["runc"] = peer("runc", &bare).1;
    }
    for e in &errors {
        eprintln!("cold: {e}");
    }
    Ok(value)
}

/// A fresh app per run (so it has no instance): deploy (with `standby`, deploy returns once
/// the app's standby is created), then time one request from connect to the response head;
/// then remove it and wait until its containers (the standby's refill too) are gone.
async fn gateway_cold(
    lab: &Lab,
    gw: SocketAddr,
    i: usize,
    standby: bool,
) -> Res<(Duration, Option<u64>)> {
    let name = if standby {
        format!("coldsb{i}")
    } else {
        format!("cold{i}")
    };
    lab.deploy(&format!(
        "[[apps]]\nname = \"{name}\"\nnetwork = \"none\"\nimage = \"oci-archive:{{dir}}/web.tar\"\n[apps.limits]\nstop_grace = \"0s\"\n[apps.scale]\nstandby = {standby}\n"
    ))
    .await?;
    lab.settle().await?;
    let host = format!("{name}.localhost");
    let t = Instant::now();
    let mut tx = connect(gw).await?;
    let req = http::Request::get("/")
        .header(http::header::HOST, &host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let res = tx.send_request(req).await.context("cold request")?;
    let total = t.elapsed();
    let status = res.status();
    let header = res
        .headers()
        .get(serverless_proxy::COLD_START_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    http_body_util::BodyExt::collect(res.into_body()).await?;
    if status != StatusCode::OK {
        return Err(format!("cold request to {name} answered {status}").into());
    }
    lab.gateway.engine().remove(&name).await;
    lab.wait_empty(Duration::from_secs(30)).await?;
    Ok((total, header))
}

fn ctr_import(sock: &Path, tar: &Path) -> Res<String> {
    let out = ctr(sock, CTR_NS)
        .args(["images", "import"])
        .arg(tar)
        .output()
        .context("run ctr (Debian's containerd package)")?;
    if !out.status.success() {
        return Err(format!(
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok("serverless.local/image:bench".to_owned())
}

/// Like a user isolating it the way the gateway does: `ip netns add` (+ loopback up), `ctr run
/// -d --with-ns network:…`, then `ip netns exec … busybox wget` until it answers; then removed.
async fn ctr_netns_cold(sock: &Path, image: &str, i: usize) -> Res<Duration> {
    let name = format!("bench-ctrns-{}-{i}", std::process::id());
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let t = Instant::now();
    let result: Res<()> = async {
        if !quiet(Command::new("ip").args(["netns", "add", &name])) {
            return Err("ip netns add failed".into());
        }
        quiet(Command::new("ip").args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"]));
        let ns = format!("network:/var/run/netns/{name}");
        if !quiet(ctr(sock, CTR_NS).args(["run", "-d", "--with-ns", &ns, image, &name])) {
            return Err("ctr run --with-ns failed".into());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if quiet(Command::new("ip").args([
                "netns",
                "exec",
                &name,
                "/bin/busybox",
                "wget",
                "-q",
                "-O",
                "/dev/null",
                "http://127.0.0.1:8080/",
            ])) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("no answer within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    .await;
    let took = t.elapsed();
    remove_ctr(sock, CTR_NS, &name).await;
    quiet(Command::new("ip").args(["netns", "delete", &name]));
    result.map(|()| took)
}

/// `ctr run -d --net-host` (busybox httpd on a unique port) + first response; then removed.
async fn ctr_cold(sock: &Path, image: &str, i: usize) -> Res<Duration> {
    let port = free_port()?;
    let name = format!("bench-ctr-{}-{i}", std::process::id());
    let t = Instant::now();
    let status = ctr(sock, CTR_NS)
        .args(["run", "-d", "--net-host", image, &name])
        .args(["/bin/busybox", "httpd", "-f", "-h", "/www", "-p"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .status()
        .context("ctr run")?;
    let result = if status.success() {
        first_response(port, Duration::from_secs(10)).await
    } else {
        Err(format!("ctr run exited with {status}").into())
    };
    let took = t.elapsed();
    remove_ctr(sock, CTR_NS, &name).await;
    result.map(|()| took)
}

const RUNC_ROOT: &str = "runc-state";

/// A runc bundle for the bare-runtime floor: the busybox image's files as a plain rootfs
/// directory and `runc spec`'s default config (host network, like `ctr run --net-host`).
fn runc_bundle(bundle: &Path) -> Res<()> {
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::create_dir_all(rootfs.join("www"))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copy /bin/busybox")?;
    std::fs::write(rootfs.join("www/index.html"), b"hello from busybox\n")?;
    let status = Command::new("runc")
        .args(["spec", "-b"])
        .arg(bundle)
        .status()
        .context("run runc spec")?;
    if !status.success() {
        return Err(format!("runc spec exited with {status}").into());
    }
    Ok(())
}

/// The runtime floor under every containerd-based start (the gateway's included): `runc
/// create` + `runc start` of busybox httpd on a unique host port, straight from a prepared
/// bundle (no containerd, no shim, no snapshot), + first response; then `runc delete -f`.
async fn runc_cold(bundle: &Path, i: usize) -> Res<Duration> {
    let port = free_port()?;
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!([
        "/bin/busybox",
        "httpd",
        "-f",
        "-h",
        "/www",
        "-p",
        port.to_string()
    ]);
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
    }
    std::fs::write(&config, serde_json::to_vec(&spec)?)?;
    let root = bundle.join(RUNC_ROOT);
    let id = format!("bench-runc-{}-{i}", std::process::id());
    let runc = |args: &[&str]| {
        Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    let t = Instant::now();
    let bundle_arg = bundle.to_string_lossy();
    let result = match runc(&["create", "--bundle", &bundle_arg, &id]) {
        Ok(s) if s.success() => match runc(&["start", &id]) {
            Ok(s) if s.success() => first_response(port, Duration::from_secs(10)).await,
            other => Err(format!("runc start: {other:?}").into()),
        },
        other => Err(format!("runc create: {other:?}").into()),
    };
    let took = t.elapsed();
    let _ = runc(&["delete", "-f", &id]);
    result.map(|()| took)
}

/// `podman run -d --network host` + first response; then removed.
async fn podman_cold(root: &Path, i: usize) -> Res<Duration> {
    let port = free_port()?;
    let name = format!("bench-podman-{}-{i}", std::process::id());
    let t = Instant::now();
    let out = podman(root)
        .args(["run", "-d", "--network", "host"])
        .args(PODMAN_ULIMITS)
        .args(["--name", &name, PODMAN_IMAGE])
        .args(["/bin/busybox", "httpd", "-f", "-h", "/www", "-p"])
        .arg(port.to_string())
        .output()
        .context("podman run")?;
    let result = if out.status.success() {
        first_response(port, Duration::from_secs(10)).await
    } else {
        Err(format!(
            "podman run: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into())
    };
    let took = t.elapsed();
    remove_podman(root, &name);
    result.map(|()| took)
}
