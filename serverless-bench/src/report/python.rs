//! The real-interpreter section: the Python app's cold starts (boost, no boost, unthrottled,
//! standby, `ctr run` / `podman run` with the same CPU limit) and its first deploy.

use std::fmt::Write as _;

use serde_json::Value;

use super::f;

fn row(md: &mut String, name: &str, s: &Value, base: f64) {
    let _ = writeln!(
        md,
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× |",
        s["n"],
        f(&s["min"]),
        f(&s["p50"]),
        f(&s["p99"]),
        f(&s["max"]),
        f(&s["p50"]) / base
    );
}

pub(super) fn python_section(md: &mut String, p: &Value) {
    let mb = f(&p["image_bytes"]) / 1e6;
    let _ = write!(
        md,
        "## 6. A real interpreter: Python on Debian\n\n\
         The app: Python 3's standard-library `http.server` (`ThreadingHTTPServer`, a dozen lines, listening on `$PORT`) on a Debian `minbase` built with `debootstrap` from Debian's packages (`python3`), as an OCI archive of two gzip layers ({mb:.0} MB), built once by `serverless_testkit::python_archive` and cached under `target/bench-images/`. Zero instances → first response, {} runs of each, interleaved run by run, after one unrecorded warm-up round. Milliseconds; the last column is each median over the default slot's with the boost.\n\n",
        p["runs"]
    );
    md.push_str("| system | runs | min | median | p99 | max | ÷ default slot, boosted |\n|---|---|---|---|---|---|---|\n");
    let base = f(&p["boost"]["summary"]["p50"]);
    for (key, name) in [
        (
            "boost",
            "serverless, `c.125-m512` (the default) with the startup CPU boost (the default)",
        ),
        (
            "no_boost",
            "serverless, `c.125-m512`, `startup_cpu_boost = false`",
        ),
        (
            "unthrottled",
            "serverless, `c2-m512` (2 vCPU: not throttled)",
        ),
        (
            "standby",
            "serverless, `c.125-m512` with boost, from a standby",
        ),
        (
            "ctr_cpus",
            "`ctr run --net-host --cpus 0.125` + first response",
        ),
        (
            "ctr",
            "`ctr run --net-host` (no CPU limit) + first response",
        ),
        (
            "podman_cpus",
            "`podman run --network host --cpus 0.125` + first response",
        ),
    ] {
        if !p[key]["summary"].is_null() {
            row(md, name, &p[key]["summary"], base);
        }
    }
    if let Some(e) = p["podman_error"].as_str() {
        let _ = writeln!(md, "\n`podman run` could not run here: `{e}`.");
    }
    let _ = write!(
        md,
        "\nDefault slot with boost ÷ unthrottled slot: **{:.2}×** (goal ≤ 1.25×); without the boost the default slot is **{:.1}×** slower than with it; `ctr run --cpus 0.125` ÷ ours: **{:.2}×**.\n\n",
        f(&p["boost_vs_unthrottled"]),
        f(&p["no_boost_vs_boost"]),
        f(&p["ctr_cpus"]["summary"]["p50"]) / base,
    );
    md.push_str("Backend phases (medians, ms) of each serverless variant: `port_ready` is the interpreter's boot until it listens, `boosted` the time from the task's start until it listens, above the slot (the update back to the slot's quota runs behind the start, off the request's path; `slot_applied` appears only for a standby started at its slot because the boost budget was spent).\n\n");
    let keys = ["boost", "no_boost", "unthrottled", "standby"];
    let mut names: Vec<String> = Vec::new();
    for k in keys {
        for n in p[k]["phases"]["order"].as_array().into_iter().flatten() {
            let n = n.as_str().unwrap_or("?").to_owned();
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    md.push_str("| phase | boost | no boost | c2 | standby |\n|---|---|---|---|---|\n");
    for n in &names {
        let cell = |k: &str| {
            p[k]["phases"]["median_ms"][n.as_str()]
                .as_f64()
                .map_or("–".to_owned(), |v| format!("{v:.1}"))
        };
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} |",
            cell("boost"),
            cell("no_boost"),
            cell("unthrottled"),
            cell("standby")
        );
    }
    let cell = |k: &str| format!("{:.1}", f(&p[k]["phases"]["backend_start_median_ms"]));
    let _ = writeln!(
        md,
        "| backend start, total | {} | {} | {} | {} |\n",
        cell("boost"),
        cell("no_boost"),
        cell("unthrottled"),
        cell("standby")
    );
    let d = &p["first_deploy"];
    if !d.is_null() {
        let _ = write!(
            md,
            "### First deploy of the image\n\nFrom `deploy` of the app to its first answer, on a fresh private containerd each time (nothing of the image in it): from the OCI archive (import: blobs into the content store, unpack of both layers into snapshots), and from a loopback `docker-registry` (pull, then the same unpack); next to `ctr images import` / `ctr images pull --plain-http` + `ctr run --net-host` + first response on a fresh containerd too. {} runs each, interleaved. Milliseconds; the last column is each median over ours from the archive.\n\n| system | runs | min | median | p99 | max | ÷ ours, archive |\n|---|---|---|---|---|---|---|\n",
            d["runs"]
        );
        let base = f(&d["archive"]["summary"]["p50"]);
        for (key, name) in [
            (
                "archive",
                "serverless: deploy `oci-archive:` + first answer",
            ),
            (
                "archive_no_userns",
                "serverless: the same with `[apps.security] userns = false`",
            ),
            (
                "ctr_import",
                "`ctr images import` + `ctr run` + first answer",
            ),
            (
                "registry",
                "serverless: deploy from the loopback registry + first answer",
            ),
            ("ctr_pull", "`ctr images pull` + `ctr run` + first answer"),
        ] {
            row(md, name, &d[key]["summary"], base);
        }
        md.push_str("\nWith `security.userns` (the default) a deploy also makes the image's copy owned by the engine's id range, once per image (`serverless-containerd/src/image/remap.rs`): containerd 1.6's overlay snapshotter cannot mount layers id-mapped, so the image's tree is copied (`cp -a`) into a snapshot of its own and every file is `lchown`ed there — the difference between the first two rows. (It was made by `lchown` through an overlay mount before, which copied each file up one at a time: ≈ 30 s of a ≈ 45 s first deploy of this image, when `ctr images import` + `ctr run` took 10–21 s.) The rest is containerd's own unpack (its diff service, the same code `ctr` drives), plus reading each gzip layer once more to check its unpacked size against `max_unpacked_bytes` before it is expanded.\n\n");
    }
    let _ = writeln!(md, "Load while it ran: {}.\n", super::noise_line(p));
}
