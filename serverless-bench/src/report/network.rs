//! The network section: cold starts with `network = "bridge"` (the default) and `"none"` side
//! by side, the pool's take and refill times.

use std::fmt::Write as _;

use serde_json::Value;

use super::f;

pub(super) fn network_section(md: &mut String, n: &Value) {
    let _ = write!(
        md,
        "## Network: `bridge` against `none`\n\n\
         Zero instances → first response through the gateway (busybox httpd), {} runs of each mode interleaved run by run on one gateway, after an unrecorded round of each. `bridge` takes a namespace the pool wired ahead ({} of {} starts did; the pool was full before each); \"no pool\" is a second gateway whose bridge starts wire their namespace on the request's path. The engine's bridge, NAT and rules live in a network namespace the bench made (`serverless_testkit::NetLab`), never on the machine's own network. Milliseconds.\n\n",
        n["runs"], n["bridge_pooled_starts"], n["runs"]
    );
    md.push_str("| mode | runs | min | median | p99 | max |\n|---|---|---|---|---|---|\n");
    for (key, name) in [
        ("none", "`network = \"none\"` (loopback only)"),
        (
            "bridge",
            "`network = \"bridge\"` (the default), pooled namespace",
        ),
        (
            "bridge_unpooled",
            "`network = \"bridge\"`, no pool (CNI ADD on the path)",
        ),
    ] {
        let s = &n[key]["summary"];
        if s.is_null() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            s["n"],
            f(&s["min"]),
            f(&s["p50"]),
            f(&s["p99"]),
            f(&s["max"])
        );
    }
    let delta = f(&n["bridge"]["summary"]["p50"]) - f(&n["none"]["summary"]["p50"]);
    let met = if delta <= 5.0 { "met" } else { "**not met**" };
    let _ = write!(
        md,
        "\nMedian `bridge` − `none`: **{delta:.1} ms** (goal: within 5 ms; {met}). Taking a pooled namespace (the `network_pooled` phase): median {:.2} ms, p99 {:.2} ms. The pool's refill time, one CNI ADD in the background (namespace, `loopback`, `bridge` + `host-local`, `firewall`, port isolation; the `network_wired` phase without a pool): median {:.0} ms, p99 {:.0} ms, over {} starts.\n\n",
        f(&n["take_ms"]["p50"]),
        f(&n["take_ms"]["p99"]),
        f(&n["refill_ms"]["p50"]),
        f(&n["refill_ms"]["p99"]),
        n["refill_ms"]["n"],
    );
    let _ = writeln!(md, "Load while it ran: {}.\n", super::noise_line(n));
}
