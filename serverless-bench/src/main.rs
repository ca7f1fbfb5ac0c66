//! `serverless-bench`: measures the serverless gateway against its peers on this machine and
//! writes `docs/benchmarks.md` with SVG plots. Run everything with `scripts/bench`.
//!
//! ```text
//! serverless-bench cold    OUT_DIR                 # cold start vs ctr run / podman run
//! serverless-bench warm    OUT_DIR HELLO_BIN       # proxy overhead vs nginx / haproxy
//! serverless-bench instr   OUT_DIR HELLO_BIN       # instructions per request vs nginx (callgrind)
//! serverless-bench step    OUT_DIR HELLO_BIN       # 0 → 50 clients
//! serverless-bench idle    OUT_DIR HELLO_BIN       # idle stop precision, recycle under load
//! serverless-bench memory  OUT_DIR SERVERLESS_BIN  # gateway RSS
//! serverless-bench python  OUT_DIR                 # Python on Debian: boost, ctr/podman, first deploy
//! serverless-bench network OUT_DIR                 # cold start, bridge vs none; pool refill
//! serverless-bench sandbox OUT_DIR                 # cold start, default sandbox vs none
//! serverless-bench build   OUT_DIR                 # Dockerfile build time vs buildah by hand
//! serverless-bench upgrade OUT_DIR SERVERLESS HELLO # req/s and errors with and without an upgrade
//! serverless-bench report  OUT_DIR DOCS_DIR        # docs/benchmarks.md + SVGs
//! ```
//!
//! Each scenario writes `OUT_DIR/<scenario>.json` and prints `name=value` headline lines.

/// The same allocator as the `serverless` binary, so `gateway-native` measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod build;
mod cold;
mod idle;
mod instr;
mod lab;
mod loadgen;
mod memory;
mod network;
mod peer;
mod python;
mod report;
mod sandbox;
mod step;
mod upgrade;
mod util;
mod warm;

use std::path::PathBuf;

use util::Res;

const USAGE: &str = "usage: serverless-bench cold OUT | warm OUT HELLO_BIN | instr OUT HELLO_BIN | step OUT HELLO_BIN | idle OUT HELLO_BIN | memory OUT SERVERLESS_BIN | python OUT | network OUT | sandbox OUT | build OUT | upgrade OUT SERVERLESS_BIN HELLO_BIN | report OUT DOCS | gateway-native LISTEN UPSTREAM_PORT [hyper-client]";

fn main() {
    if let Err(e) = run() {
        eprintln!("serverless-bench: {e}");
        std::process::exit(1);
    }
}

fn arg(args: &[String], i: usize) -> Res<PathBuf> {
    args.get(i)
        .map(PathBuf::from)
        .ok_or_else(|| USAGE.to_string().into())
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    if cmd == "gateway-native" {
        let listen = args.get(2).ok_or(USAGE)?;
        let upstream = args.get(3).ok_or(USAGE)?;
        let lean_client = args.get(4).map(String::as_str) != Some(warm::HYPER_CLIENT);
        return warm::gateway_native(listen, upstream, lean_client);
    }
    if cmd == "report" {
        return report::run(&arg(&args, 2)?, &arg(&args, 3)?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = arg(&args, 2)?;
    rt.block_on(async {
        match cmd {
            "cold" => cold::run(&out).await,
            "warm" => warm::run(&out, &arg(&args, 3)?).await,
            "instr" => instr::run(&out, &arg(&args, 3)?).await,
            "step" => step::run(&out, &arg(&args, 3)?).await,
            "idle" => idle::run(&out, &arg(&args, 3)?).await,
            "memory" => memory::run(&out, &arg(&args, 3)?).await,
            "python" => python::run(&out).await,
            "network" => network::run(&out).await,
            "sandbox" => sandbox::run(&out).await,
            "build" => build::run(&out).await,
            "upgrade" => upgrade::run(&out, &arg(&args, 3)?, &arg(&args, 4)?).await,
            _ => Err(USAGE.into()),
        }
    })
}
