//! Scenario: what building an image through our [`Builder`] costs next to `buildah` run on its
//! own. `examples/dockerfile-app` (two stages on a busybox base archive) three ways per run —
//! cold (fresh storage), cached (the same build again) and one file changed (`site/index.html`)
//! — through [`Buildah`] and through the same `buildah build` command line by hand (same flags,
//! same overlay storage kind, its own fresh storage), followed by the same `buildah push
//! oci-archive:` our builder does (so both produce the archive the engine imports). The two are
//! interleaved run by run, alternating which goes first; each figure is a median, and the
//! ratio is given both of the medians and as the median of the run-by-run ratios.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::process::Command;
use tokio::time::Instant;

use serverless_build::{BuildRequest, Buildah, Builder};
use serverless_testkit::{busybox_archive, env_num};

use crate::util::{headline, ms, noise, summary, Context, Res};

/// The phases of one run, in order.
const PHASES: [&str; 3] = ["cold", "cached", "changed"];

/// `Buildah`'s default memory limit of a `RUN` step, passed to the hand-run buildah too.
const MEMORY: u64 = 2 << 30;

pub(crate) async fn run(out: &Path) -> Res<()> {
    let runs: usize = env_num("BENCH_BUILD_RUNS", 5)?;
    let noise_before = noise();
    let tmp = tempfile::Builder::new()
        .prefix("bench-build")
        .tempdir()
        .context("tempdir")?;
    let result = measure(tmp.path(), runs).await;
    let mut value = result?;
    value["noise_before"] = noise_before;
    value["noise_after"] = noise();
    for phase in PHASES {
        let p = |who: &str| {
            value[who][phase]["summary"]["p50"]
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        headline(
            &format!("build_{phase}_ours_p50_ms"),
            format!("{:.0}", p("ours")),
        );
        headline(
            &format!("build_{phase}_buildah_p50_ms"),
            format!("{:.0}", p("buildah")),
        );
        headline(
            &format!("build_{phase}_ratio"),
            format!("{:.3}", p("ours") / p("buildah")),
        );
        headline(
            &format!("build_{phase}_paired_ratio_p50"),
            format!(
                "{:.3}",
                value["paired_ratio"][phase].as_f64().unwrap_or(f64::NAN)
            ),
        );
    }
    crate::util::write_json(out, "build", &value)
}

/// The example's folder in this checkout.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dockerfile-app")
}

async fn measure(tmp: &Path, runs: usize) -> Res<serde_json::Value> {
    let base = busybox_archive(tmp);
    let ctx = tmp.join("ctx");
    copy_dir(&example(), &ctx)?;
    let index = ctx.join("site/index.html");
    let original = std::fs::read_to_string(&index).context("read site/index.html")?;
    let mut ours: [Vec<f64>; 3] = Default::default();
    let mut peer: [Vec<f64>; 3] = Default::default();
    let mut peer_build_only: [Vec<f64>; 3] = Default::default();
    let mut cached_steps: [Vec<usize>; 3] = Default::default();
    for i in 0..runs {
        for turn in 0..2 {
            let ours_turn = (i + turn) % 2 == 0;
            std::fs::write(&index, &original).context("reset site/index.html")?;
            let dir = tmp.join(format!("{}-{i}", if ours_turn { "ours" } else { "peer" }));
            for (p, _) in PHASES.iter().enumerate() {
                if p == 2 {
                    std::fs::write(&index, format!("{original}<!-- changed {i} -->\n"))
                        .context("change site/index.html")?;
                }
                if ours_turn {
                    let (took, cached) = ours_build(&dir, &ctx, &base, tmp).await?;
                    ours[p].push(ms(took));
                    cached_steps[p].push(cached);
                } else {
                    let (build, total) = peer_build(&dir, &ctx, &base, tmp).await?;
                    peer[p].push(ms(total));
                    peer_build_only[p].push(ms(build));
                }
            }
            remove_storage(&dir).await?;
        }
    }
    let mut value = json!({ "runs": runs, "ours": {}, "buildah": {}, "buildah_build_only": {} });
    for (p, phase) in PHASES.iter().enumerate() {
        value["ours"][*phase] = json!({
            "summary": summary(&ours[p]), "samples": ours[p], "cached_steps": cached_steps[p],
        });
        value["buildah"][*phase] = json!({ "summary": summary(&peer[p]), "samples": peer[p] });
        value["buildah_build_only"][*phase] =
            json!({ "summary": summary(&peer_build_only[p]), "samples": peer_build_only[p] });
        value["ratio"][*phase] = json!(summary(&ours[p]).p50 / summary(&peer[p]).p50);
        // Run by run (each pair ran back to back, so under the same load): steadier on a
        // shared machine than the ratio of medians.
        let paired: Vec<f64> = ours[p].iter().zip(&peer[p]).map(|(o, b)| o / b).collect();
        value["paired_ratio"][*phase] = json!(summary(&paired).p50);
    }
    Ok(value)
}

/// One build through our builder (storage under `dir`); its time and how many steps were cached.
async fn ours_build(dir: &Path, ctx: &Path, base: &Path, tmp: &Path) -> Res<(Duration, usize)> {
    let mut request = BuildRequest::new(
        ctx,
        "localhost/bench/dockerfile-app:latest",
        tmp.join("ours.tar"),
    );
    request
        .args
        .insert("BASE".into(), format!("oci-archive:{}", base.display()));
    let t = Instant::now();
    let built = Buildah::new(dir)
        .build(&request, &mut |_| {})
        .await
        .context("build through Buildah")?;
    Ok((t.elapsed(), built.cached_steps()))
}

/// `buildah` with storage under `dir`, as [`Buildah`] runs it.
fn buildah(dir: &Path) -> Command {
    let mut cmd = Command::new("buildah");
    cmd.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "overlay"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

async fn checked(mut cmd: Command, what: &str) -> Res<()> {
    let out = cmd.output().await.context(what)?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// The same build by hand: `buildah build` with our flags, then `buildah push oci-archive:`.
/// Returns the build's time and the whole.
async fn peer_build(dir: &Path, ctx: &Path, base: &Path, tmp: &Path) -> Res<(Duration, Duration)> {
    // Temp files (the base's extraction, the `RUN` bundles) under the storage folder, as ours.
    let tmp_dir = dir.join("tmp");
    std::fs::create_dir_all(&tmp_dir).context("create peer storage")?;
    let iid = tmp.join("peer.iid");
    let _ = std::fs::remove_file(&iid);
    let mut cmd = buildah(dir);
    cmd.args(["build", "--layers", "--force-rm", "--isolation", "oci"])
        .args(["--network", "none", "--memory", &MEMORY.to_string()])
        .arg("-f")
        .arg(ctx.join("Dockerfile"))
        .arg("--build-arg")
        .arg(format!("BASE=oci-archive:{}", base.display()))
        .arg("--iidfile")
        .arg(&iid)
        .args(["-t", "localhost/bench/dockerfile-app:latest"])
        .arg(ctx)
        .env("TMPDIR", &tmp_dir);
    let t = Instant::now();
    checked(cmd, "buildah build").await?;
    let build = t.elapsed();
    let id = std::fs::read_to_string(&iid).context("read the iidfile")?;
    let archive = tmp.join("peer.tar");
    let _ = std::fs::remove_file(&archive);
    let mut push = buildah(dir);
    push.args(["push", "--quiet", id.trim()])
        .arg(format!("oci-archive:{}:latest", archive.display()))
        .env("TMPDIR", &tmp_dir);
    checked(push, "buildah push").await?;
    Ok((build, t.elapsed()))
}

/// Removes a run's storage (images first, so no layer stays mounted), then the folder.
async fn remove_storage(dir: &Path) -> Res<()> {
    let mut rmi = buildah(dir);
    rmi.args(["rmi", "--all", "--force"]);
    let _ = rmi.status().await;
    let dir_s = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut left: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&dir_s))
        .collect();
    left.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in left {
        let _ = Command::new("umount").args(["-l", m]).status().await;
    }
    std::fs::remove_dir_all(dir).context(format_args!("remove {}", dir.display()))
}

fn copy_dir(from: &Path, to: &Path) -> Res<()> {
    std::fs::create_dir_all(to).context(format_args!("create {}", to.display()))?;
    for e in std::fs::read_dir(from).context(format_args!("read {}", from.display()))? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), &dest).context(format_args!("copy {}", dest.display()))?;
        }
    }
    Ok(())
}
