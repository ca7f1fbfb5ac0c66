//! The warm sections: latency and throughput against nginx, and instructions per request.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::util::Res;

pub(super) fn warm_section(md: &mut String, w: &Value, img: &Path) -> Res<()> {
    let _ = write!(
        md,
        "## 2. Warm proxy overhead\n\nOne native `serverless-hello` (hyper) on loopback is the backend for all four paths: **direct**, **serverless** (the real gateway on one thread — tokio's current-thread runtime, mimalloc as in the `serverless` binary — in its own process, over a backend whose \"instance\" is that server — this isolates the gateway's routing, limits and forwarding from container networking), **nginx** (`proxy_pass`, `keepalive 64` upstream, 1 worker) and **haproxy** (`nbthread 1`, `http-reuse always`). Upstream and proxy are pinned to CPU 1 (`taskset`), the load generator to CPU 0. Load generator: this crate's, HTTP/1.1 keep-alive, open-loop fixed rate with coordinated-omission correction (a request delayed because its connection was still busy is timed from when it was due).\n\n**Fixed rate {} rps**, {} s per run, {} connections, {} repeats (median of repeats; range in brackets), ms:\n\n| path | p50 | p99 | added p50 over direct | added p99 over direct | errors |\n|---|---|---|---|---|---|\n",
        w["rate"], w["duration_s"], w["connections_fixed"], w["repeats"]
    );
    let names = ["direct", "serverless", "nginx", "haproxy"];
    let r = &w["results"];
    let p50 = |v: &Value| f(&v["summary"]["p50"]);
    let p99 = |v: &Value| f(&v["summary"]["p99"]);
    let (_, d50, _) = median_of(&r["direct"]["fixed"], p50);
    let (_, d99, _) = median_of(&r["direct"]["fixed"], p99);
    for name in names {
        let (a, m, b) = median_of(&r[name]["fixed"], p50);
        let (a9, m9, b9) = median_of(&r[name]["fixed"], p99);
        let errors: f64 = r[name]["fixed"]
            .as_array()
            .map(|a| a.iter().map(|x| f(&x["errors"])).sum())
            .unwrap_or(0.0);
        let added = |x: f64, d: f64| {
            if name == "direct" {
                "—".to_owned()
            } else {
                format!("{:+.3}", x - d)
            }
        };
        let _ = writeln!(
            md,
            "| {name} | {m:.3} [{a:.3}–{b:.3}] | {m9:.3} [{a9:.3}–{b9:.3}] | {} | {} | {errors} |",
            added(m, d50),
            added(m9, d99)
        );
    }
    let tput_repeats = w.get("tput_repeats").unwrap_or(&w["repeats"]);
    let _ = write!(md, "\n**Max throughput**, {} connections, closed loop, {} s per run, {} repeats with the order of the paths rotated each time; medians [range]. The ratio to nginx is the median of the per-repeat ratios (runs seconds apart, so the machine's drift cancels). CPU time per request from `/proc/PID/stat` during the runs (user + system, µs; the proxy's own, and the upstream's). *nginx-fwd* is nginx adding the same forwarding headers as the gateway (`x-forwarded-for`, `x-forwarded-proto`, `forwarded`):\n\n| path | requests/s | ratio to nginx | p50 ms | p99 ms | errors | proxy CPU µs/req (user + sys) | upstream CPU µs/req |\n|---|---|---|---|---|---|---|---|\n", w["connections_tput"], w["tput_duration_s"], tput_repeats);
    let rps = |v: &Value| f(&v["rps"]);
    let results = r.as_object().cloned().unwrap_or_default();
    for name in ["direct", "serverless", "nginx", "nginx-fwd", "haproxy"] {
        if r.get(name).is_none() {
            continue;
        }
        let (a, m, b) = median_of(&r[name]["tput"], rps);
        let (_, l50, _) = median_of(&r[name]["tput"], p50);
        let (_, l99, _) = median_of(&r[name]["tput"], p99);
        let errors: f64 = r[name]["tput"]
            .as_array()
            .map(|a| a.iter().map(|x| f(&x["errors"])).sum())
            .unwrap_or(0.0);
        let cpu = |key: &str, part: &str| median_of(&r[name]["tput"], |v| f(&v[key][part])).1;
        let proxy = if name == "direct" {
            "—".to_owned()
        } else {
            let (u, s) = (cpu("proxy_cpu", "user_us"), cpu("proxy_cpu", "sys_us"));
            format!("{:.1} ({u:.1} + {s:.1})", u + s)
        };
        let upstream = cpu("upstream_cpu", "user_us") + cpu("upstream_cpu", "sys_us");
        let ratio = match name {
            "nginx" => "1".to_owned(),
            _ => {
                let v = crate::warm::paired_ratios(&results, name, "nginx");
                let (lo, mid, hi) = median_of(&json!(v), f);
                format!("{mid:.2} [{lo:.2}–{hi:.2}]")
            }
        };
        let _ = writeln!(
            md,
            "| {name} | {m:.0} [{a:.0}–{b:.0}] | {ratio} | {l50:.2} | {l99:.2} | {errors} | {proxy} | {upstream:.1} |",
        );
    }
    md.push_str("\nThe upstream shares CPU 1 with the proxy, so the proxies' throughput is bounded by one core split between proxy and upstream; direct has the core to itself. The CPU column is what decides it: requests/s ≈ 1 / (proxy + upstream CPU per request). The gateway is hyper's HTTP/1 server (about what the whole upstream, itself a hyper server, costs per request), our own lean HTTP/1 client for body-less requests (it replaced hyper's client here: no connection task, no channels), and routing, limits and forwarding; system time is on par with nginx's, user time is where the difference is. Goal: added p50 ≤ 0.1 ms, p99 ≤ 0.5 ms; throughput ≥ nginx's. Not measured here: the extra hop into a container's network namespace (the gateway dials it with a socket created in that namespace; loopback to loopback, no bridge or NAT).\n\n");
    let _ = write!(
        md,
        "![latency by percentile at fixed rate](benchmarks/warm-latency.svg)\n\n{}.\n\n",
        noise_line(w)
    );

    let path = img.join("warm-latency.svg");
    let root = SVGBackend::new(&path, (800, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut ymax: f64 = 0.0;
    for name in names {
        for p in w["cdf"][name].as_array().cloned().unwrap_or_default() {
            ymax = ymax.max(f(&p[1]));
        }
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Latency by percentile at {} rps (first repeat)", w["rate"]),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..4f64, 0f64..(ymax * 1.1).max(0.1))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|x| {
            format!("{:.4}", 100.0 * (1.0 - 10f64.powf(-x)))
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_owned()
        })
        .y_desc("ms")
        .draw()?;
    for (name, color) in names.iter().zip([BLACK, BLUE, RED, GREEN]) {
        let pts: Vec<(f64, f64)> = w["cdf"][*name]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| (f(&p[0]), f(&p[1])))
            .filter(|p| p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
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

/// Instructions per request by callgrind (scenario `instr`): counted, so steady across runs.
pub(super) fn instr_section(md: &mut String, v: &Value) {
    md.push_str("### Instructions per proxied request\n\n");
    if let Some(why) = v["skipped"].as_str() {
        let _ = writeln!(md, "Not measured: {why}.\n");
        return;
    }
    let _ = writeln!(
        md,
        "Counted by callgrind (valgrind), user space, each proxy alone on CPU 1 with the same upstream, {} s of closed-loop load over {} connections after a warm-up: instructions in that window over the requests answered in it. Unlike the throughput runs above, this does not move with the machine's load (runs under valgrind are slow; only the count is used): it varies by 1–2 % between runs (with how requests happen to batch), so it is the figure to compare changes to the request path by. System calls are not counted (the gateway makes four per request: read the request, write it upstream, read the answer, write it back; nginx the same and a `getsockopt`). \"gateway (hyper client)\" is the gateway with `server.lean_client = false`: every request through hyper's client instead of the lean HTTP/1.1 one, which is what the lean client saves.\n",
        v["secs"], v["connections"]
    );
    md.push_str("| proxy | instructions per request | gateway's over it | requests counted |\n|---|---|---|---|\n");
    let per = |name: &str| f(&v["results"][name]["per_request"]);
    for name in ["serverless", "serverless-hyper", "nginx", "nginx-fwd"] {
        if v["results"][name].is_null() {
            continue;
        }
        let ratio = per("serverless") / per(name);
        let label = match name {
            "serverless-hyper" => "gateway (hyper client)",
            other => other,
        };
        let _ = writeln!(
            md,
            "| {label} | {:.0} | {} | {} |",
            per(name),
            if name == "serverless" {
                "—".to_owned()
            } else {
                format!("{ratio:.2}×")
            },
            v["results"][name]["requests"]
        );
    }
    md.push('\n');
}
