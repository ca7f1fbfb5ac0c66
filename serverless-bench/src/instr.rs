//! Scenario 2b: instructions per proxied request, counted by callgrind (valgrind) for the
//! gateway, for the gateway with its lean HTTP/1.1 client off (`server.lean_client = false`:
//! every request through hyper's client, to measure what the lean client saves) and for nginx
//! (plain, and adding the same forwarding headers) over the same upstream and the same load. Counted, not timed: the figure does not move with this shared
//! machine's noise, so it tells whether a change to the request path made it cheaper when the
//! throughput runs cannot (their spread is tens of percent). User space only: both make the
//! same system calls per request (four: read the request, write it upstream, read the answer,
//! write it back).
//!
//! Each proxy runs under `valgrind --tool=callgrind`; after a warm-up the counters are zeroed
//! (`callgrind_control -z`), the load runs, and a dump (`callgrind_control -d`) gives the
//! instructions of that window, which are divided by the requests answered in it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::loadgen::max_throughput;
use serverless_testkit::{env_num, wait_http};

use crate::util::{headline, write_json, Context, Res};
use crate::warm::{pinned, Lab, HOST};

/// Connections of the measured load (as many requests in flight as the proxy gets to batch).
const CONNS: usize = 16;

pub(crate) async fn run(out: &Path, hello_bin: &Path) -> Res<()> {
    let secs: u64 = env_num("BENCH_INSTR_SECS", 5)?;
    if !installed("valgrind") || !installed("callgrind_control") {
        eprintln!("instr: valgrind is not installed, skipped (scripts/bench installs it)");
        return write_json(
            out,
            "instr",
            &json!({ "skipped": "valgrind is not installed" }),
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("serverless-bench-instr-")
        .tempdir()
        .context("create a temp dir")?;
    let out_of = |name: &str| dir.path().join(format!("{name}.callgrind"));
    let Lab {
        mut procs,
        gateway: gw,
        nginx: ng,
        nginx_fwd: ng_fwd,
        gateway_hyper,
        ..
    } = Lab::start(dir.path(), hello_bin, true, true, &|name, program| {
        let mut c = callgrind(&out_of(name));
        // valgrind's own messages.
        c.arg(program).stderr(Stdio::null());
        c
    })?;
    let (gw_out, gw_hyper_out, ng_out) =
        (out_of("gateway"), out_of("gateway-hyper"), out_of("nginx"));
    let gw_hyper = gateway_hyper.context("the hyper-client gateway's port")?;
    let targets: [(&str, &str, SocketAddr, &Path); 4] = [
        (
            "serverless",
            "gateway",
            ([127, 0, 0, 1], gw).into(),
            &gw_out,
        ),
        (
            "serverless-hyper",
            "gateway-hyper",
            ([127, 0, 0, 1], gw_hyper).into(),
            &gw_hyper_out,
        ),
        ("nginx", "nginx", ([127, 0, 0, 1], ng).into(), &ng_out),
        (
            "nginx-fwd",
            "nginx",
            ([127, 0, 0, 1], ng_fwd).into(),
            &ng_out,
        ),
    ];
    for (name, _, addr, _) in &targets {
        // Valgrind starts programs slowly.
        wait_http(*addr, HOST, Duration::from_secs(60))
            .await
            .context(format_args!("{name} under valgrind is not answering"))?;
    }
    procs.check()?;

    let mut results = serde_json::Map::new();
    for (name, proc_name, addr, out_file) in &targets {
        let pid = procs.pid(proc_name).context("proxy pid")?;
        max_throughput(*addr, HOST, "/", Duration::from_secs(2), CONNS).await?;
        control(pid, "-z")?;
        let o = max_throughput(*addr, HOST, "/", Duration::from_secs(secs), CONNS).await?;
        control(pid, "-d")?;
        let instructions = latest_dump_total(out_file).await?;
        let requests = o.latencies_us.len() as u64;
        if requests == 0 || o.errors > 0 {
            return Err(format!(
                "instr: {name} answered {requests} requests with {} errors",
                o.errors
            )
            .into());
        }
        let per_request = instructions as f64 / requests as f64;
        eprintln!("instr {name}: {instructions} instructions, {requests} requests, {per_request:.0} per request");
        results.insert(
            (*name).to_owned(),
            json!({ "instructions": instructions, "requests": requests, "per_request": per_request }),
        );
    }
    procs.check()?;
    drop(procs);

    let per = |name: &str| results[name]["per_request"].as_f64().unwrap_or(f64::NAN);
    for name in ["serverless", "serverless-hyper", "nginx", "nginx-fwd"] {
        headline(
            &format!("instructions_{}_per_request", name.replace('-', "_")),
            format!("{:.0}", per(name)),
        );
    }
    headline(
        "instructions_lean_client_saves_per_request",
        format!("{:.0}", per("serverless-hyper") - per("serverless")),
    );
    headline(
        "instructions_serverless_vs_nginx_ratio",
        format!("{:.2}", per("serverless") / per("nginx")),
    );
    headline(
        "instructions_serverless_vs_nginx_fwd_ratio",
        format!("{:.2}", per("serverless") / per("nginx-fwd")),
    );
    write_json(
        out,
        "instr",
        &json!({ "secs": secs, "connections": CONNS, "results": results }),
    )
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `valgrind --tool=callgrind` on CPU 1 (with the upstream, as in the throughput runs), writing
/// to `out` (dumps go to `out.1`, `out.2`, …).
fn callgrind(out: &Path) -> Command {
    let mut c = pinned("1", "valgrind");
    c.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()));
    c
}

/// `callgrind_control ARG PID`: zero the counters (`-z`) or dump them (`-d`). Synchronous: a
/// short command between load runs, with nothing else running.
fn control(pid: u32, arg: &str) -> Res<()> {
    let status = Command::new("callgrind_control")
        .arg(arg)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context(format_args!("run callgrind_control {arg}"))?;
    if !status.success() {
        return Err(format!("callgrind_control {arg} {pid}: {status}").into());
    }
    Ok(())
}

/// The instruction total of the newest dump next to `out` (`out.N` with the largest N).
async fn latest_dump_total(out: &Path) -> Res<u64> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .context("callgrind file name")?;
    let dir = out.parent().context("callgrind dir")?;
    // valgrind writes the dump when the program next runs: wait for a complete one.
    for _ in 0..100 {
        let newest: Option<(u32, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let file = e.file_name().into_string().ok()?;
                let n = file.strip_prefix(name)?.strip_prefix('.')?.parse().ok()?;
                Some((n, e.path()))
            })
            .max_by_key(|(n, _)| *n);
        if let Some((_, path)) = newest {
            if let Some(total) = dump_total(&std::fs::read_to_string(&path)?) {
                return Ok(total);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no complete callgrind dump next to {}", out.display()).into())
}

/// The `totals:` line of a callgrind dump (instructions, the only event counted here), which
/// is its last: `None` while the dump is still being written.
fn dump_total(text: &str) -> Option<u64> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_total_of_a_dump() {
        let dump =
            "version: 1\ncmd: x\nevents: Ir\nsummary: 1200\nfn=(1) main\n3 4\ntotals: 1234\n";
        assert_eq!(super::dump_total(dump), Some(1234));
        // Still being written.
        assert_eq!(
            super::dump_total("events: Ir\nsummary: 99\nfn=(1) main\n"),
            None
        );
    }
}
