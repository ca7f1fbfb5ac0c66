//! The sandbox section: cold starts with the full default sandbox, without its user namespace,
//! and bare, side by side.

use std::fmt::Write as _;

use serde_json::Value;

use super::f;

pub(super) fn sandbox_section(md: &mut String, s: &Value) {
    let _ = write!(
        md,
        "## Sandbox: the defaults against none\n\n\
         Zero instances → first response through the gateway (busybox httpd, `network = \"none\"`), {} runs of each mode interleaved run by run on one gateway, after an unrecorded round of each (the first sandboxed deploy, which imports the image and makes its remapped layers, took {:.0} ms). Milliseconds.\n\n",
        s["runs"],
        f(&s["first_deploy_ms"])
    );
    md.push_str("| mode | runs | min | median | p99 | max |\n|---|---|---|---|---|---|\n");
    for (key, name) in [
        ("full", "defaults: user namespace, seccomp allow-list, init"),
        ("no_userns", "`userns = false` (seccomp and init on)"),
        (
            "bare",
            "`userns = false`, `seccomp = \"unconfined\"`, `init = false`",
        ),
    ] {
        let v = &s[key]["summary"];
        if v.is_null() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            v["n"],
            f(&v["min"]),
            f(&v["p50"]),
            f(&v["p99"]),
            f(&v["max"])
        );
    }
    let d = |q: &str| f(&s["full"]["summary"][q]) - f(&s["no_userns"]["summary"][q]);
    let met = if d("p50") <= 3.0 {
        "met"
    } else {
        "**not met**"
    };
    let _ = write!(
        md,
        "\nThe user namespace's cost (defaults − `userns = false`): median **{:.1} ms**, p99 {:.1} ms (goal: median within 3 ms; {met}). The whole sandbox (defaults − bare): median {:.1} ms.\n\n",
        d("p50"),
        d("p99"),
        f(&s["full"]["summary"]["p50"]) - f(&s["bare"]["summary"]["p50"]),
    );
    let _ = writeln!(md, "Load while it ran: {}.\n", super::noise_line(s));
}
