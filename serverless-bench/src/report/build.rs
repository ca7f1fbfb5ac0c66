//! The build section: a Dockerfile built through our builder against `buildah` run by hand.

use std::fmt::Write as _;

use serde_json::Value;

use super::f;

pub(super) fn build_section(md: &mut String, s: &Value) {
    let _ = write!(
        md,
        "## Building an image from a Dockerfile\n\n\
         `examples/dockerfile-app` (two stages on a busybox base archive) built through our `Buildah` builder and by the same `buildah build` command line run by hand (same flags: `--layers --isolation oci --network none --memory 2 GiB`, same overlay storage kind), each followed by `buildah push oci-archive:` as our builder does. Per run and for each: cold (fresh storage), cached (the same build again), then one file of the context changed. {} runs, interleaved, alternating which goes first. Milliseconds; ratios are ours ÷ buildah, of the medians and run by run (each pair ran back to back, under the same load).\n\n",
        s["runs"],
    );
    md.push_str(
        "| build | ours median | buildah median | ratio of medians | median of run-by-run ratios | buildah `build` alone | ours min / max |\n|---|---|---|---|---|---|---|\n",
    );
    for (key, name) in [
        ("cold", "cold (fresh storage)"),
        ("cached", "cached (nothing changed)"),
        ("changed", "one file changed"),
    ] {
        let o = &s["ours"][key]["summary"];
        let b = &s["buildah"][key]["summary"];
        if o.is_null() || b.is_null() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.0} | {:.2}× | {:.2}× | {:.0} | {:.0} / {:.0} |",
            f(&o["p50"]),
            f(&b["p50"]),
            f(&o["p50"]) / f(&b["p50"]),
            f(&s["paired_ratio"][key]),
            f(&s["buildah_build_only"][key]["summary"]["p50"]),
            f(&o["min"]),
            f(&o["max"]),
        );
    }
    let _ = writeln!(md, "\nLoad while it ran: {}.\n", super::noise_line(s));
}
