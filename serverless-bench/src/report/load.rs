//! The load sections: step load, idle stops, memory.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use super::*;
use crate::util::Res;

pub(super) fn step_section(md: &mut String, s: &Value, img: &Path) -> Res<()> {
    let l = &s["latency"];
    let fw = &s["first_wave_latency"];
    let st = &s["steady_latency"];
    let _ = write!(
        md,
        "## 3. Step load from zero\n\n{} clients start at the same moment against an app with no instance (`max_concurrent_requests = 10`, `scale.max = 10`, slot `c.125-m512`), each sending `GET /sleep?ms=100` to the demo app back to back on a keep-alive connection for {} s, through the in-process gateway over a private containerd.\n\n| figure | value |\n|---|---|\n| time until 5 instances are ready | {:.0} ms |\n| most instances at once | {} |\n| requests / errors | {} / {} |\n| latency, first wave (sent in the first 50 ms), ms: median / p99 / max | {:.0} / {:.0} / {:.0} |\n| latency after 2 s, ms: median / p99 / max | {:.1} / {:.1} / {:.1} |\n| latency, whole run, ms: median / p99 | {:.1} / {:.1} |\n\nGoal: 0 errors. The demo app's own 100 ms sleep is part of every latency.\n\n",
        s["clients"], s["duration_s"], f(&s["time_to_5_ready_ms"]), s["max_instances"], s["requests"], s["errors"],
        f(&fw["p50"]), f(&fw["p99"]), f(&fw["max"]), f(&st["p50"]), f(&st["p99"]), f(&st["max"]), f(&l["p50"]), f(&l["p99"]),
    );
    if let Some(kinds) = s["error_kinds"].as_array().filter(|k| !k.is_empty()) {
        let _ = writeln!(
            md,
            "Errors seen: {}\n",
            kinds
                .iter()
                .filter_map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let _ = write!(
        md,
        "![latency and instances over time](benchmarks/step-load.svg)\n\n{}.\n\n",
        noise_line(s)
    );

    let path = img.join("step-load.svg");
    let root = SVGBackend::new(&path, (800, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(380);
    let samples: Vec<(f64, f64, bool)> = s["samples"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|x| (f(&x[0]), f(&x[1]), x[2].as_bool().unwrap_or(false)))
        .collect();
    let tmax = samples.iter().map(|x| x.0).fold(1.0, f64::max);
    let ymax = samples.iter().map(|x| x.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "Step 0 → 50 clients: latency of each request by send time",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..tmax, (90f64..ymax.max(200.0)).log_scale())?;
    chart.configure_mesh().y_desc("ms (log)").draw()?;
    chart.draw_series(
        samples
            .iter()
            .filter(|x| x.2)
            .map(|x| Circle::new((x.0, x.1.max(90.0)), 1, BLUE.mix(0.4).filled())),
    )?;
    chart.draw_series(
        samples
            .iter()
            .filter(|x| !x.2)
            .map(|x| Cross::new((x.0, x.1.max(90.0)), 4, RED.stroke_width(2))),
    )?;
    let timeline: Vec<(f64, f64, f64)> = s["timeline"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|x| (f(&x[0]), f(&x[1]), f(&x[2])))
        .collect();
    let imax = timeline.iter().map(|x| x.2).fold(1.0, f64::max) + 1.0;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..tmax, 0f64..imax)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the step")
        .y_desc("instances")
        .draw()?;
    let steps = |col: usize| {
        let mut pts = Vec::new();
        let mut last = 0.0;
        for x in &timeline {
            let v = if col == 1 { x.1 } else { x.2 };
            pts.push((x.0, last));
            pts.push((x.0, v));
            last = v;
        }
        pts
    };
    chart
        .draw_series(LineSeries::new(steps(2), BLACK.stroke_width(1)))?
        .label("instances (any state)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .draw_series(LineSeries::new(steps(1), GREEN.stroke_width(2)))?
        .label("ready")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

pub(super) fn idle_section(md: &mut String, v: &Value) {
    let i = &v["idle"];
    let c = &i["stop_begins_after_timeout_ms"];
    let d = &i["container_gone_after_timeout_ms"];
    let r = &v["recycle"];
    let _ = write!(
        md,
        "## 4. Idle stop precision and recycle under load\n\n**Idle stop**: {} samples (apps answering one request each, in parallel, `idle_timeout = {} ms`); time after `last response + idle_timeout` at which the gateway asked the backend to stop the instance, and at which the container was gone (busybox ignores SIGTERM; `stop_grace = 0s`). The client's clock starts when it has read the whole response, slightly after the gateway saw the request end, so small negative values mean \"on time\". ms:\n\n| | min | median | p99 | max |\n|---|---|---|---|---|\n| stop begins | {:.1} | {:.1} | {:.1} | {:.1} |\n| container gone | {:.1} | {:.1} | {:.1} | {:.1} |\n\n**Recycle under load**: {} clients send `GET /sleep?ms=20` back to back to an app with `max_duration = 1s` (limit 4, up to 4 instances) until {} instances were recycled ({:.1} s): {} requests answered, **{} failed**.\n\n{}.\n\n",
        i["samples"], i["idle_timeout_ms"],
        f(&c["min"]), f(&c["p50"]), f(&c["p99"]), f(&c["max"]),
        f(&d["min"]), f(&d["p50"]), f(&d["p99"]), f(&d["max"]),
        r["clients"], r["recycles"], f(&r["seconds"]), r["requests_ok"], r["requests_failed"], noise_line(v),
    );
    if let Some(fails) = r["failures"].as_array().filter(|x| !x.is_empty()) {
        let _ = writeln!(
            md,
            "Failures: {}\n",
            fails
                .iter()
                .filter_map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
}

pub(super) fn memory_section(md: &mut String, m: &Value) {
    let _ = write!(
        md,
        "## 5. Gateway memory\n\nThe real `serverless serve` binary as its own process (its private containerd is a separate process and not counted), RSS from `/proc/PID/status`:\n\n| state | RSS | goal |\n|---|---|---|\n| {} apps configured, idle | {:.1} MB | ≤ 30 MB |\n| + {} idle keep-alive client connections (each answered one request) | {:.1} MB | ≤ 100 MB |\n| peak (VmHWM) | {:.1} MB | |\n\nThat is ≈ {:.1} KB per idle connection. Startup with {} apps (image import included): {:.1} s. Connections refused or failed: {}.\n\n{}.\n\n",
        m["apps"], f(&m["idle_rss_mb"]), m["connections"], f(&m["conns_rss_mb"]), f(&m["peak_rss_mb"]),
        (f(&m["conns_rss_mb"]) - f(&m["idle_rss_mb"])) * 1024.0 / f(&m["connections"]).max(1.0),
        m["apps"], f(&m["startup_s"]), m["connections_failed"], noise_line(m),
    );
}
