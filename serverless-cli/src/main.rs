//! The `serverless` binary: runs container images as HTTP services that scale from zero.
//!
//! ```text
//! serverless serve --config serverless.toml   # the gateway and its apps over containerd
//! serverless validate serverless.toml         # check a config (TOML or now.json), print it
//! serverless ls | logs APP | deploy FILE|DIR | rm APP   # admin-API clients of a running gateway
//! serverless image import FILE | image pull REF     # prepare images ahead
//! ```
//!
//! This crate is the thin shell around the libraries: the command line (`cli.rs`), the backend
//! choice (containerd, `backend.rs`), the allocator (mimalloc, feature `mimalloc`, on by
//! default) and the logging setup (`RUST_LOG`, default `info`, to stderr). The gateway itself is
//! `serverless_proxy::Gateway`, which embedders use over any backend without compiling any of
//! this. The crate's second binary, `serverless-hello`, is the demo app the quickstart serves.

mod admin;
mod backend;
mod cli;
mod deploy;
mod handover;
mod image;
mod kubernetes;
mod serve;

use std::process::ExitCode;

use clap::Parser;
use serverless_core::Config;
use serverless_proxy::BoxError;

use crate::cli::{Cli, Command};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

async fn run(command: Command) -> Result<(), BoxError> {
    match command {
        Command::Validate { file } => {
            let config = Config::from_path(&file)?;
            println!("{}", serde_json::to_string_pretty(&config)?);
            Ok(())
        }
        Command::Serve { config } => {
            let config = Config::from_path(&config)?;
            match config.kubernetes.clone() {
                Some(k) => kubernetes::serve(config, k).await,
                None => serve::serve(config).await,
            }
        }
        Command::Ls { admin } => admin::ls(&admin).await,
        Command::Logs { app, follow, admin } => admin::logs(&admin, &app, follow).await,
        Command::Deploy { file, admin, build } => deploy::deploy(&admin, &file, &build).await,
        Command::Rm { app, admin } => admin::rm(&admin, &app).await,
        Command::Image { command } => image::run(command).await,
    }
}
