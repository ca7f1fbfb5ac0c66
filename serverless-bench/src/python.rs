//! Scenario `python`: a real interpreter. The Python standard-library server on Debian
//! (`serverless_testkit::python_archive`, built once with debootstrap) cold-starts through the
//! gateway at the default slot `c.125-m512` with the startup CPU boost and without it, at the
//! unthrottled slot `c2-m512`, and from a standby; next to `ctr run` and `podman run` of the
//! same image with the same CPU limit (`--cpus 0.125`) and without one, interleaved run by run.
//!
//! Then the first deploy of that image (two gzip layers, ~50 MB): from `deploy` of the OCI
//! archive, and of a reference on a loopback registry (Debian's `docker-registry`), to the
//! first answer, next to `ctr images import` / `ctr images pull` + `ctr run` + first answer,
//! each on a fresh containerd.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use serverless_testkit::{connect, env_num, free_port, get, PYTHON_IMAGE_NAME};

use crate::lab::{phase_breakdown, Lab, PhaseSummary, StartRecord};
use crate::peer::{ctr, first_response, podman, remove_ctr, remove_podman, PODMAN_ULIMITS};
use crate::util::{headline, ms, noise, summary, Context, Res};

const CTR_NS: &str = "bench-py-ctr";

/// One gateway variant: its name in the results and the app table's extra keys.
struct Variant {
    key: &'static str,
    slot: &'static str,
    boost: bool,
    standby: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        key: "boost",
        slot: "c.125-m512",
        boost: true,
        standby: false,
    },
    Variant {
        key: "no_boost",
        slot: "c.125-m512",
        boost: false,
        standby: false,
    },
    Variant {
        key: "unthrottled",
        slot: "c2-m512",
        boost: false,
        standby: false,
    },
    Variant {
        key: "standby",
        slot: "c.125-m512",
        boost: true,
        standby: true,
    },
];

pub(crate) async fn run(out: &Path) -> Res<()> {
    let runs: usize = env_num("BENCH_PY_RUNS", 10)?;
    let deploy_runs: usize = env_num("BENCH_PY_DEPLOY_RUNS", 3)?;
    let peers = std::env::var("BENCH_PY_PEERS").unwrap_or_else(|_| "ctr,podman".into());
    let archive = tokio::task::spawn_blocking(serverless_testkit::python_archive)
        .await?
        .context("build the Python image (debootstrap; needs root and the Debian mirror)")?;
    let noise_before = noise();
    let lab = Lab::start("bench-py", &[]).await?;
    let cold = cold_starts(&lab, &archive, runs, &peers).await;
    let podman_root = lab.dir.path().join("podman");
    if podman_root.exists() {
        let _ = podman(&podman_root)
            .args(["system", "reset", "-f"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    lab.stop().await?;
    let mut value = cold?;
    if deploy_runs > 0 {
        value["first_deploy"] = first_deploys(&archive, deploy_runs).await?;
    }
    value["image_bytes"] = json!(std::fs::metadata(&archive)?.len());
    value["noise_before"] = noise_before;
    value["noise_after"] = noise();
    crate::util::write_json(out, "python", &value)
}

fn app_toml(name: &str, image: &str, v: &Variant) -> String {
    format!(
        "[[apps]]\nname = \"{name}\"\nnetwork = \"none\"\nimage = \"{image}\"\nslot = \"{}\"\nstartup_cpu_boost = {}\n\
         [apps.limits]\nstop_grace = \"0s\"\nstartup_timeout = \"60s\"\n[apps.scale]\nstandby = {}\n",
        v.slot, v.boost, v.standby
    )
}

async fn cold_starts(
    lab: &Lab,
    archive: &Path,
    runs: usize,
    peers: &str,
) -> Res<serde_json::Value> {
    let image = format!("oci-archive:{}", archive.display());
    let sock = lab.containerd.socket().to_owned();
    let use_ctr = peers.contains("ctr");
    let mut use_podman = peers.contains("podman");
    if use_ctr {
        ctr_import(&sock, CTR_NS, archive)?;
    }
    let podman_root = lab.dir.path().join("podman");
    let mut podman_image = String::new();
    let mut podman_error = None;
    if use_podman {
        match podman_load(&podman_root, archive) {
            Ok(id) => podman_image = id,
            Err(e) => {
                eprintln!("python: podman cannot load the image here: {e}");
                podman_error = Some(e.to_string());
                use_podman = false;
            }
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut ctr_limited = Vec::new();
    let mut ctr_free = Vec::new();
    let mut pod = Vec::new();
    let mut errors = Vec::new();
    let mut records: Vec<Vec<StartRecord>> = vec![Vec::new(); VARIANTS.len()];
    // One unrecorded warm-up round (page cache, the image's first unpack, the first shim).
    for i in 0..runs + 1 {
        let record = i >= 1;
        for (k, v) in VARIANTS.iter().enumerate() {
            let name = format!("py{}{i}", v.key.replace('_', ""));
            let before = lab.rec.starts().len();
            let took = gateway_cold(lab, &name, &app_toml(&name, &image, v)).await?;
            if record {
                samples[k].push(ms(took));
                records[k].extend(lab.rec.starts().into_iter().skip(before));
            }
        }
        if use_ctr {
            for (cpus, out) in [(Some("0.125"), &mut ctr_limited), (None, &mut ctr_free)] {
                match ctr_cold(&sock, cpus, i).await {
                    Ok(d) if record => out.push(ms(d)),
                    Ok(_) => {}
                    Err(e) => errors.push(format!("ctr run {cpus:?} {i}: {e}")),
                }
            }
        }
        if use_podman {
            match podman_cold(&podman_root, &podman_image, i).await {
                Ok(d) if record => pod.push(ms(d)),
                Ok(_) => {}
                Err(e) => {
                    errors.push(format!("podman run {i}: {e}"));
                    if !record {
                        eprintln!("python: podman run fails here, left out: {e}");
                        podman_error = Some(e.to_string());
                        use_podman = false;
                    }
                }
            }
        }
        if record {
            eprintln!(
                "python {i}/{runs}: boost {:.0} ms, no boost {:.0} ms, c2 {:.0} ms, standby {:.0} ms, ctr --cpus 0.125 {:.0} ms, ctr {:.0} ms, podman --cpus 0.125 {:.0} ms",
                samples[0].last().copied().unwrap_or(f64::NAN),
                samples[1].last().copied().unwrap_or(f64::NAN),
                samples[2].last().copied().unwrap_or(f64::NAN),
                samples[3].last().copied().unwrap_or(f64::NAN),
                ctr_limited.last().copied().unwrap_or(f64::NAN),
                ctr_free.last().copied().unwrap_or(f64::NAN),
                pod.last().copied().unwrap_or(f64::NAN),
            );
        }
    }
    let mut value = json!({ "runs": runs, "errors": errors, "podman_error": podman_error });
    for (k, v) in VARIANTS.iter().enumerate() {
        let s = summary(&samples[k]);
        headline(
            &format!("python_cold_{}_median_ms", v.key),
            format!("{:.1}", s.p50),
        );
        value[v.key] = json!({
            "slot": v.slot,
            "boost": v.boost,
            "standby": v.standby,
            "samples": samples[k],
            "summary": s,
            "phases": phase_breakdown(&records[k], PhaseSummary::Medians),
        });
    }
    let p50 = |k: usize| summary(&samples[k]).p50;
    let (boost, no_boost, unthrottled) = (p50(0), p50(1), p50(2));
    let ratio = boost / unthrottled;
    headline("python_boost_vs_unthrottled", format!("{ratio:.2}"));
    value["boost_vs_unthrottled"] = json!(ratio);
    value["no_boost_vs_boost"] = json!(no_boost / boost);
    if use_ctr {
        let s = summary(&ctr_limited);
        headline("python_ctr_cpus_median_ms", format!("{:.1}", s.p50));
        headline(
            "python_speedup_vs_ctr_cpus",
            format!("{:.2}", s.p50 / boost),
        );
        value["ctr_cpus"] = json!({ "cpus": 0.125, "samples": ctr_limited, "summary": s });
        value["ctr"] = json!({ "samples": ctr_free, "summary": summary(&ctr_free) });
    }
    if !pod.is_empty() {
        let s = summary(&pod);
        headline("python_podman_cpus_median_ms", format!("{:.1}", s.p50));
        value["podman_cpus"] = json!({ "cpus": 0.125, "samples": pod, "summary": s });
    }
    for e in &errors {
        eprintln!("python: {e}");
    }
    Ok(value)
}

/// A cold start of app `name` (see [`Lab::cold_request`]; with a standby, deploy returns once
/// the standby is made).
async fn gateway_cold(lab: &Lab, name: &str, toml: &str) -> Res<Duration> {
    lab.cold_request(name, toml).await
}

/// One request to app `name` through the gateway: connect to response head; must be 200.
async fn first_request(gw: SocketAddr, name: &str) -> Res<Duration> {
    let t = Instant::now();
    let mut tx = connect(gw).await?;
    let (status, _) = get(&mut tx, &format!("{name}.localhost"), "/").await?;
    let took = t.elapsed();
    if status != http::StatusCode::OK {
        return Err(format!("request to {name} answered {status}").into());
    }
    Ok(took)
}

fn checked(cmd: &mut Command, what: &str) -> Res<()> {
    let out = cmd.output().context(format_args!("run {what}"))?;
    if !out.status.success() {
        return Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()).into());
    }
    Ok(())
}

fn ctr_import(sock: &Path, namespace: &str, archive: &Path) -> Res<()> {
    checked(
        ctr(sock, namespace).args(["images", "import"]).arg(archive),
        "ctr images import",
    )
}

/// `ctr run -d --net-host [--cpus N]` with `PORT` set, + first response; then removed.
async fn ctr_cold(sock: &Path, cpus: Option<&str>, i: usize) -> Res<Duration> {
    ctr_run(sock, CTR_NS, PYTHON_IMAGE_NAME, cpus, &format!("py-{i}")).await
}

async fn ctr_run(
    sock: &Path,
    namespace: &str,
    image: &str,
    cpus: Option<&str>,
    suffix: &str,
) -> Res<Duration> {
    let port = free_port()?;
    let name = format!("bench-{}-{suffix}", std::process::id());
    let t = Instant::now();
    let mut cmd = ctr(sock, namespace);
    cmd.args(["run", "-d", "--net-host", "--env"])
        .arg(format!("PORT={port}"));
    if let Some(cpus) = cpus {
        cmd.args(["--cpus", cpus]);
    }
    let status = cmd
        .args([image, &name])
        .stdout(Stdio::null())
        .status()
        .context("ctr run")?;
    let result = if status.success() {
        first_response(port, Duration::from_secs(30)).await
    } else {
        Err(format!("ctr run exited with {status}").into())
    };
    let took = t.elapsed();
    remove_ctr(sock, namespace, &name).await;
    result.map(|()| took)
}

/// `podman load` of the OCI archive; the loaded image's name.
fn podman_load(root: &Path, archive: &Path) -> Res<String> {
    let out = podman(root)
        .args(["load", "-i"])
        .arg(archive)
        .output()
        .context("run podman")?;
    if !out.status.success() {
        return Err(format!(
            "podman load: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("Loaded image: ")
                .map(str::trim)
                .map(str::to_owned)
        })
        .context("podman load printed no image name")
}

/// `podman run -d --network host --cpus 0.125` with `PORT` set, + first response; removed.
async fn podman_cold(root: &Path, image: &str, i: usize) -> Res<Duration> {
    let port = free_port()?;
    let name = format!("bench-py-podman-{}-{i}", std::process::id());
    let t = Instant::now();
    let out = podman(root)
        .args(["run", "-d", "--network", "host", "--cpus", "0.125"])
        .args(PODMAN_ULIMITS)
        .args(["--env", &format!("PORT={port}"), "--name", &name, image])
        .output()
        .context("podman run")?;
    let result = if out.status.success() {
        first_response(port, Duration::from_secs(30)).await
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

/// Debian's `docker-registry` on a free loopback port, storage in `dir`; killed on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    async fn start(dir: &Path) -> Res<Self> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("run docker-registry (Debian package docker-registry)")?;
        let registry = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&registry.addr)
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("docker-registry did not listen within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(registry)
    }
}

/// A fresh private containerd (and gateway) for one first deploy.
async fn fresh_lab() -> Res<Lab> {
    Lab::start("bench-py-first", &[]).await
}

/// First deploys, each on a fresh containerd (nothing of the image in it): ours from the
/// archive and from the loopback registry, `ctr` import/pull + run, interleaved.
async fn first_deploys(archive: &Path, runs: usize) -> Res<serde_json::Value> {
    let dir = tempfile::Builder::new()
        .prefix("serverless-bench-py-")
        .tempdir()?;
    let registry = Registry::start(dir.path()).await?;
    let remote = format!("{}/bench/python:1", registry.addr);
    {
        // Pushed once, by ctr from a throwaway containerd.
        let lab = fresh_lab().await?;
        let sock = lab.containerd.socket().to_owned();
        ctr_import(&sock, "push", archive)?;
        checked(
            ctr(&sock, "push").args(["images", "tag", PYTHON_IMAGE_NAME, &remote]),
            "ctr images tag",
        )?;
        checked(
            ctr(&sock, "push").args(["images", "push", "--plain-http", &remote]),
            "ctr images push",
        )?;
        lab.stop().await?;
    }
    let boost = &VARIANTS[0];
    let archive_ref = format!("oci-archive:{}", archive.display());
    let mut ours_archive = Vec::new();
    let mut ours_no_userns = Vec::new();
    let mut ours_registry = Vec::new();
    let mut ctr_import_run = Vec::new();
    let mut ctr_pull_run = Vec::new();
    let mut phases_archive = Vec::new();
    let mut phases_no_userns = Vec::new();
    let mut phases_registry = Vec::new();
    // The user namespace's one-time copy of the layers (see image/remap.rs) is part of the
    // default deploy; without it is what a deploy costs when an app turns it off.
    let no_userns = "[apps.security]\nuserns = false\n";
    for i in 0..runs {
        for (image, extra, out, phases) in [
            (&archive_ref, "", &mut ours_archive, &mut phases_archive),
            (
                &archive_ref,
                no_userns,
                &mut ours_no_userns,
                &mut phases_no_userns,
            ),
            (&remote, "", &mut ours_registry, &mut phases_registry),
        ] {
            let lab = fresh_lab().await?;
            let t = Instant::now();
            lab.deploy(&(app_toml("first", image, boost) + extra))
                .await?;
            let deployed = t.elapsed();
            first_request(lab.gateway.listen_addr(), "first").await?;
            out.push(ms(t.elapsed()));
            phases.push(json!({ "deploy_ms": ms(deployed), "start": lab.rec.starts().first().map(|r| ms(r.took)) }));
            lab.gateway.engine().remove("first").await;
            lab.stop().await?;
        }
        for (pull, out) in [(false, &mut ctr_import_run), (true, &mut ctr_pull_run)] {
            let lab = fresh_lab().await?;
            let sock = lab.containerd.socket().to_owned();
            let t = Instant::now();
            let image = if pull {
                checked(
                    ctr(&sock, CTR_NS).args(["images", "pull", "--plain-http", &remote]),
                    "ctr images pull",
                )?;
                remote.clone()
            } else {
                ctr_import(&sock, CTR_NS, archive)?;
                PYTHON_IMAGE_NAME.to_owned()
            };
            let run = ctr_run(&sock, CTR_NS, &image, None, &format!("first-{i}")).await;
            let took = t.elapsed();
            lab.stop().await?;
            run?;
            out.push(ms(took));
        }
        eprintln!(
            "python first deploy {}/{runs}: archive {:.0} ms (without userns {:.0} ms; ctr import + run {:.0} ms), registry {:.0} ms (ctr pull + run {:.0} ms)",
            i + 1,
            ours_archive[i],
            ours_no_userns[i],
            ctr_import_run[i],
            ours_registry[i],
            ctr_pull_run[i]
        );
    }
    drop(registry);
    let s = |v: &[f64]| summary(v);
    headline(
        "python_first_deploy_archive_median_ms",
        format!("{:.0}", s(&ours_archive).p50),
    );
    headline(
        "python_first_deploy_registry_median_ms",
        format!("{:.0}", s(&ours_registry).p50),
    );
    headline(
        "python_first_deploy_ctr_import_median_ms",
        format!("{:.0}", s(&ctr_import_run).p50),
    );
    headline(
        "python_first_deploy_ctr_pull_median_ms",
        format!("{:.0}", s(&ctr_pull_run).p50),
    );
    Ok(json!({
        "runs": runs,
        "archive": { "samples": ours_archive, "summary": s(&ours_archive), "detail": phases_archive },
        "archive_no_userns": { "samples": ours_no_userns, "summary": s(&ours_no_userns), "detail": phases_no_userns },
        "registry": { "samples": ours_registry, "summary": s(&ours_registry), "detail": phases_registry },
        "ctr_import": { "samples": ctr_import_run, "summary": s(&ctr_import_run) },
        "ctr_pull": { "samples": ctr_pull_run, "summary": s(&ctr_pull_run) },
    }))
}
