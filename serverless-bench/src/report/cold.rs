//! The cold-start section: the table against the peers, the phases, the plots.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use super::*;
use crate::util::Res;

/// One system's row of the cold-start table, with its median over each gateway variant's.
pub(super) fn cold_row(name: &str, s: &Value, p50: f64, p50_standby: f64) -> String {
    let ratio = |base: f64| {
        if base.is_finite() {
            format!("{:.2}×", f(&s["p50"]) / base)
        } else {
            "–".to_owned()
        }
    };
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
        s["n"],
        f(&s["min"]),
        f(&s["p50"]),
        f(&s["p99"]),
        f(&s["max"]),
        ratio(p50),
        ratio(p50_standby)
    )
}

/// The phase table of one gateway variant (`v` holds `phase_order`, `phases`,
/// `backend_start`, `gateway_overhead`).
pub(super) fn cold_phases(md: &mut String, v: &Value) {
    md.push_str("| phase | median | p99 | max |\n|---|---|---|---|\n");
    if let Some(order) = v["phase_order"].as_array() {
        for p in order {
            let name = p.as_str().unwrap_or("?");
            let s = &v["phases"][name];
            let _ = writeln!(
                md,
                "| {name} | {:.1} | {:.1} | {:.1} |",
                f(&s["p50"]),
                f(&s["p99"]),
                f(&s["max"])
            );
        }
    }
    let b = &v["backend_start"];
    let o = &v["gateway_overhead"];
    let _ = writeln!(
        md,
        "| backend start, total | {:.1} | {:.1} | {:.1} |",
        f(&b["p50"]),
        f(&b["p99"]),
        f(&b["max"])
    );
    let _ = writeln!(
        md,
        "| gateway (connect, route, queue, forward, first byte) | {:.1} | {:.1} | {:.1} |\n",
        f(&o["p50"]),
        f(&o["p99"]),
        f(&o["max"])
    );
}

pub(super) fn cold_section(md: &mut String, c: &Value, img: &Path) -> Res<()> {
    let ours = &c["gateway"]["summary"];
    let p50 = f(&ours["p50"]);
    let standby = c.get("gateway_standby");
    let p50_standby = standby.map_or(f64::NAN, |s| f(&s["summary"]["p50"]));
    let _ = write!(
        md,
        "## 1. Cold start\n\nZero instances → first response byte, {} runs each, interleaved run by run (gateway with nothing pre-created, gateway from a standby, `ctr run`, `ctr run` in a netns, `podman run`, bare `runc`), after 2 unrecorded warm-up rounds. Image: static busybox `httpd` serving a small page (built with `ImageBuilder`). Milliseconds.\n\n",
        c["runs"]
    );
    md.push_str("- **serverless, nothing pre-created** (the default): a fresh app is deployed per run (so it has no instance); the time is from opening the TCP connection to the gateway to the response head. It includes creating the instance's snapshot, container, runc task (`runc create`: its own network namespace, cgroup, rootfs; in the backend's spare shim, spawned ahead, when one is ready), starting it, and port discovery.\n");
    md.push_str("- **serverless, from a standby** (`[apps.scale] standby = true`): the same, but the app's deploy already created one task without starting it (shim + `runc init` waiting, ≈ 21 MB PSS per app, which is why it is off by default); the cold start only starts that task and discovers the port, and a new standby is made 100 ms later. Deploy returns once the standby exists, so every run starts from one.\n");
    md.push_str("- **ctr run**: `ctr run -d --net-host` against the same containerd and runc, then a Rust client polling `127.0.0.1:PORT` every 1 ms until it answers 200. Host networking: no network namespace to create — an advantage for the peer.\n");
    md.push_str("- **ctr run + netns**: isolated like the gateway's instances: `ip netns add` + loopback up, `ctr run -d --with-ns network:…`, then `ip netns exec … busybox wget` every 1 ms until it answers (each poll is a process, as a shell user would do it).\n");
    md.push_str("- **podman run**: `podman run -d --network host` with explicit `--ulimit nofile=1024:1024 --ulimit nproc=4096:4096` (this machine lacks CAP_SYS_RESOURCE, so podman's defaults and `--ulimit host` fail), Debian podman 4 with runc, its own `--root`; then the same polling as `ctr run`.\n");
    md.push_str("- **bare runc** (the floor, not a competitor): `runc create` + `runc start` straight from a prepared bundle (the same busybox files as a plain directory, `runc spec`'s default config, host network), then the same polling. No containerd, shim, snapshot or image: the part of every containerd-based start (the gateway's and `ctr run`'s alike) that only pre-creating the task — the standby — takes off the request's path.\n\n");
    md.push_str("| system | runs | min | median | p99 | max | median ÷ serverless | median ÷ serverless from a standby |\n|---|---|---|---|---|---|---|---|\n");
    md.push_str(&cold_row(
        "serverless (gateway), nothing pre-created",
        ours,
        p50,
        p50_standby,
    ));
    let mut series = vec![("serverless", c["gateway"]["samples"].clone(), BLUE)];
    if let Some(sb) = standby {
        md.push_str(&cold_row(
            "serverless (gateway), from a standby",
            &sb["summary"],
            p50,
            p50_standby,
        ));
        series.push(("serverless, standby", sb["samples"].clone(), CYAN));
    }
    for (key, label, color) in [
        ("ctr", "`ctr run --net-host` + first response", RED),
        (
            "ctr_netns",
            "`ip netns add` + `ctr run --with-ns` + first response",
            MAGENTA,
        ),
        (
            "podman",
            "`podman run --network host` + first response",
            GREEN,
        ),
        (
            "runc",
            "bare `runc create` + `runc start` + first response (the floor)",
            BLACK,
        ),
    ] {
        if c.get(key).is_some() {
            md.push_str(&cold_row(label, &c[key]["summary"], p50, p50_standby));
            series.push((key, c[key]["samples"].clone(), color));
        }
    }
    let ctr = f(&c["ctr"]["summary"]["p50"]);
    let _ = write!(
        md,
        "\nGoal: median ≤ 100 ms, p99 ≤ 200 ms, ≥ 1.7× faster than `ctr run` + first response. Measured with nothing pre-created: median {:.1} ms, p99 {:.1} ms, {:.2}× `ctr run`",
        p50,
        f(&ours["p99"]),
        ctr / p50
    );
    match standby {
        Some(sb) => {
            let _ = write!(
                md,
                "; from a standby: median {:.1} ms, p99 {:.1} ms, {:.2}× `ctr run`.\n\n",
                p50_standby,
                f(&sb["summary"]["p99"]),
                ctr / p50_standby
            );
        }
        None => md.push_str(".\n\n"),
    }
    if let Some(r) = c.get("runc") {
        let floor = f(&r["summary"]["p50"]);
        let _ = write!(
            md,
            "The floor: bare `runc create` + `runc start` + first response, with no containerd at all, has a median of {floor:.1} ms — {:.0} % of the {:.1} ms that 1.7× `ctr run` allows. The floor includes one wait that is not work — runc's first cgroup attach waits for an RCU grace period (see docs/src/architecture.md, \"Cold start\") — which the gateway pays ahead, during the shim spawn; the spare shim takes the shim spawn off the path; beyond that, a start that creates its task on the request's path cannot go much below the floor, and the standby takes task creation off that path.\n\n",
            100.0 * floor / (ctr / 1.7),
            ctr / 1.7
        );
    }
    md.push_str("**Phases** of the gateway's cold starts (as the containerd backend reports them in `Started.phases`, recorded by a wrapping backend; the same numbers feed the `serverless_cold_start_seconds` metric), ms.\n\nNothing pre-created:\n\n");
    cold_phases(md, c);
    if let Some(sb) = standby {
        md.push_str("From a standby (`standby` = taking it):\n\n");
        cold_phases(md, sb);
    }
    if let Some(errors) = c["errors"].as_array().filter(|e| !e.is_empty()) {
        let _ = writeln!(md, "Peer runs that failed (excluded): {}\n", errors.len());
    }
    let _ = write!(
        md,
        "![cold start, sorted runs](benchmarks/cold-start.svg)\n\n{}.\n\n",
        noise_line(c)
    );

    // Plot: each system's runs, sorted.
    let path = img.join("cold-start.svg");
    let ymax = series
        .iter()
        .flat_map(|(_, v, _)| v.as_array().cloned().unwrap_or_default())
        .map(|x| f(&x))
        .fold(0.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(&path, (800, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cold start to first response (sorted runs)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..100f64, 0f64..ymax.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("percentile of runs")
        .y_desc("ms")
        .draw()?;
    for (name, v, color) in series {
        let mut xs: Vec<f64> = v
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(f)
            .collect();
        xs.sort_by(f64::total_cmp);
        let n = xs.len().max(1) as f64;
        let pts: Vec<(f64, f64)> = xs
            .iter()
            .enumerate()
            .map(|(i, y)| (100.0 * (i as f64 + 0.5) / n, *y))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
