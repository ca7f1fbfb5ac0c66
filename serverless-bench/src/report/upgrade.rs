//! The upgrade section: requests/s and failed requests with and without a gateway upgrade under
//! load, and how long until the new process serves, and serves alone.

use std::fmt::Write as _;

use serde_json::Value;

use super::f;

pub(super) fn upgrade_section(md: &mut String, u: &Value) {
    let _ = write!(
        md,
        "## Gateway upgrade under load\n\n\
         The real `serverless serve` (embedded containerd, one warm serverless-hello instance, `network = \"none\"`) under {} closed-loop clients sending `GET /` back to back. Each of {} runs measures a {} ms window without an upgrade, then one of the same length in which a second copy of the binary takes over a quarter of the way in (the listening sockets handed over, the instance adopted; the two copies alternate run by run).\n\n",
        u["clients"], u["runs"], u["window_ms"]
    );
    md.push_str("| window | runs | min req/s | median req/s | max req/s | failed requests |\n|---|---|---|---|---|---|\n");
    for (key, failed, name) in [
        ("steady_rps", "steady_failed", "no upgrade"),
        ("upgrade_rps", "upgrade_failed", "an upgrade in the window"),
    ] {
        let s = &u[key];
        let _ = writeln!(
            md,
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {} |",
            s["n"],
            f(&s["min"]),
            f(&s["p50"]),
            f(&s["max"]),
            u[failed]
        );
    }
    let _ = write!(
        md,
        "\nMedian requests/s with an upgrade ÷ without: **{:.2}×**. The new process serves (it logged `gateway on http://…`) after a median {:.0} ms (max {:.0} ms) from its start, and serves alone (the old process has exited) after a median {:.0} ms (max {:.0} ms).\n\n",
        f(&u["rps_ratio"]),
        f(&u["serving_ms"]["p50"]),
        f(&u["serving_ms"]["max"]),
        f(&u["alone_ms"]["p50"]),
        f(&u["alone_ms"]["max"]),
    );
    let _ = writeln!(md, "Load while it ran: {}.\n", super::noise_line(u));
}
