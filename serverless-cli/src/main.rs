//! The `serverless` binary: `serve`, `validate`, and admin-API clients (`ls`, `logs`, `deploy`,
//! `rm`), plus `image import`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use serverless_containerd::{ContainerdBackend, PullProgress, PullProgressFn};
use serverless_core::{AppSpec, Config, ContainerBackend, ImageRef, SecretSource};
use serverless_proxy::{BoxError, Gateway, ADMIN_TOKEN_ENV};

#[derive(Parser)]
#[command(
    name = "serverless",
    version,
    about = "Run container images as HTTP services that scale from zero"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct AdminArgs {
    /// Admin API address: http://HOST:PORT, or HOST:PORT as in the config's `admin` key.
    #[arg(
        long,
        env = "SERVERLESS_ADMIN",
        default_value = "http://127.0.0.1:8081"
    )]
    admin: String,
    /// Bearer token for the admin API.
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway and the apps of a config file (TOML or now.json).
    Serve {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file; print it normalized as JSON.
    Validate {
        /// The config file (TOML, or now.json).
        file: PathBuf,
    },
    /// List apps and their instances.
    Ls {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print an app's instance logs.
    Logs {
        /// The app.
        app: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deploy or update the apps of a file (TOML config or a JSON app spec).
    Deploy {
        /// The file.
        file: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove an app (drains and stops its instances).
    Rm {
        /// The app.
        app: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Image operations on the engine's containerd.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout or `docker save` tar.
    Import {
        /// The archive.
        file: PathBuf,
        /// Config file naming the containerd to use (default: an embedded one under data_dir).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Pull an image from a registry.
    Pull {
        /// The reference, e.g. `docker.io/library/nginx:1.27`.
        reference: String,
        /// Config file naming the containerd to use (default: an embedded one under data_dir).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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

async fn run(command: Command) -> Result<(), BoxError> {
    match command {
        Command::Validate { file } => {
            let config = Config::from_path(&file)?;
            println!("{}", serde_json::to_string_pretty(&config)?);
            Ok(())
        }
        Command::Serve { config } => serve(Config::from_path(&config)?).await,
        Command::Ls { admin } => {
            let apps: serde_json::Value =
                serde_json::from_slice(&admin_call(&admin, Method::GET, "/v1/apps", None).await?)?;
            println!(
                "{:<20} {:<28} {:<10} {:>9} {:>9}",
                "APP", "INSTANCE", "STATE", "IN_FLIGHT", "AGE"
            );
            for app in apps.as_array().into_iter().flatten() {
                let name = app["name"].as_str().unwrap_or("?");
                let instances = app["instances"].as_array().cloned().unwrap_or_default();
                if instances.is_empty() {
                    println!(
                        "{name:<20} {:<28} {:<10} {:>9} {:>9}",
                        "-", "scaled-to-zero", "-", "-"
                    );
                }
                for i in instances {
                    println!(
                        "{name:<20} {:<28} {:<10} {:>9} {:>8}s",
                        i["id"].as_str().unwrap_or("?"),
                        i["state"].as_str().unwrap_or("?"),
                        i["in_flight"],
                        i["age_ms"].as_u64().unwrap_or(0) / 1000
                    );
                }
            }
            Ok(())
        }
        Command::Logs { app, follow, admin } => {
            let path = format!("/v1/apps/{app}/logs");
            let mut seen = String::new();
            loop {
                let text =
                    String::from_utf8_lossy(&admin_call(&admin, Method::GET, &path, None).await?)
                        .into_owned();
                // Print what is new since the last poll (logs are a tail, so match on overlap).
                let new = match text.find(seen.as_str()) {
                    Some(_) if !seen.is_empty() => {
                        text.strip_prefix(seen.as_str()).unwrap_or(&text).to_owned()
                    }
                    _ => text.clone(),
                };
                print!("{new}");
                if !follow {
                    return Ok(());
                }
                seen = text;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Command::Deploy { file, admin } => {
            let apps: Vec<AppSpec> = if file.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                vec![AppSpec::from_json(&text)?]
            } else {
                Config::from_path(&file)?.apps
            };
            for app in apps {
                let body = serde_json::to_vec(&app)?;
                admin_call(
                    &admin,
                    Method::PUT,
                    &format!("/v1/apps/{}", app.name),
                    Some(body),
                )
                .await?;
                println!("deployed {}", app.name);
            }
            Ok(())
        }
        Command::Rm { app, admin } => {
            admin_call(&admin, Method::DELETE, &format!("/v1/apps/{app}"), None).await?;
            println!("removed {app}");
            Ok(())
        }
        Command::Image { command } => {
            let (config, image) = match command {
                ImageCommand::Import { file, config } => {
                    let file = std::fs::canonicalize(&file)
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                    (config, ImageRef::OciArchive(file))
                }
                ImageCommand::Pull { reference, config } => (config, ImageRef::parse(&reference)?),
            };
            let config = match config {
                Some(path) => Config::from_path(path)?,
                None => Config::default(),
            };
            // Only imports: no spare shim to make (and leave behind in a given containerd).
            let backend = backend(&config, false).await?;
            let app = AppSpec::new("image", image.clone());
            let result = backend.prepare(&app).await;
            if config.containerd.is_none() {
                backend.shutdown().await?;
            }
            result?;
            println!("{image}: ready");
            Ok(())
        }
    }
}

/// The backend the config describes; `spare_shim`: keep a shim spawned ahead (serving only).
async fn backend(config: &Config, spare_shim: bool) -> Result<ContainerdBackend, BoxError> {
    let mut builder = ContainerdBackend::builder(&config.data_dir)
        .pull_progress(pull_progress())
        .spare_shim(spare_shim);
    if let Some(c) = &config.containerd {
        builder = builder.socket(&c.socket).namespace(&c.namespace);
    }
    for (i, r) in config.registries.iter().enumerate() {
        let field = match &r.password {
            SecretSource::Env(_) => "password_env",
            SecretSource::File(_) => "password_file",
        };
        let password = r
            .password
            .read()
            .map_err(|e| format!("registries[{i}].{field} (registry {}): {e}", r.host))?;
        builder = builder.registry_auth(&r.host, &r.username, password);
    }
    if let Some(path) = &config.registry_auth_file {
        builder = builder.registry_auth_file(path);
    }
    Ok(builder.build().await?)
}

/// Registry pulls draw a progress bar on a terminal (one line per image otherwise).
fn pull_progress() -> PullProgressFn {
    use std::io::IsTerminal;
    let bar = ProgressBar::hidden();
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Arc::new(move |p: PullProgress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
        bar.set_message(format!(
            "pulling {} (blob {}/{})",
            p.reference, p.layer_index, p.layers
        ));
        if p.done >= p.total && p.layer_index == p.layers {
            if bar.is_hidden() {
                eprintln!("pulled {} ({} bytes)", p.reference, p.total);
            }
            bar.finish_and_clear();
            bar.reset();
        }
    })
}

async fn serve(config: Config) -> Result<(), BoxError> {
    let backend = backend(&config, true).await?;
    let removed = backend.reconcile().await?;
    if removed > 0 {
        tracing::info!(removed, "removed instances left by a previous run");
    }
    let backend = Arc::new(backend);
    let gateway = match Gateway::start(config, backend.clone()).await {
        Ok(g) => g,
        Err(err) => {
            let _ = backend.shutdown().await;
            return Err(err);
        }
    };
    eprintln!(
        "serverless: gateway on http://{}  admin on http://{}",
        gateway.listen_addr(),
        gateway.admin_addr()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    gateway.shutdown().await;
    backend.shutdown().await?;
    Ok(())
}

/// The admin API URL of `path`: `--admin` is a base URL (`http://127.0.0.1:8081`) or, like the
/// config's `admin` key, a bare `HOST:PORT`.
fn admin_uri(base: &str, path: &str) -> Result<http::Uri, String> {
    let base = base.trim();
    let full = if base.contains("://") {
        format!("{}{path}", base.trim_end_matches('/'))
    } else {
        format!("http://{}{path}", base.trim_end_matches('/'))
    };
    match full.parse::<http::Uri>() {
        Ok(uri) if uri.host().is_some() && uri.scheme_str() == Some("http") => Ok(uri),
        _ => Err(format!(
            "--admin {base:?} is not an admin API address: expected HOST:PORT or http://HOST:PORT"
        )),
    }
}

async fn admin_call(
    admin: &AdminArgs,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, BoxError> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri = admin_uri(&admin.admin, path)?;
    let mut req = Request::builder().method(method).uri(uri.clone());
    if let Some(token) = &admin.token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let res = client
        .request(req)
        .await
        .map_err(|e| format!("cannot reach the admin API at {uri}: {e}"))?;
    let status = res.status();
    let reason = res
        .headers()
        .get(serverless_proxy::ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = res.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        return Err(format!(
            "{status}: {}",
            reason.unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned())
        )
        .into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::admin_uri;

    #[test]
    fn admin_address_is_a_url_or_host_port() {
        for base in [
            "http://127.0.0.1:8081",
            "http://127.0.0.1:8081/",
            "127.0.0.1:8081",
            " 127.0.0.1:8081 ",
        ] {
            assert_eq!(
                admin_uri(base, "/v1/apps").expect(base).to_string(),
                "http://127.0.0.1:8081/v1/apps"
            );
        }
        assert_eq!(
            admin_uri("[::1]:9000", "/v1/apps").expect("v6").to_string(),
            "http://[::1]:9000/v1/apps"
        );
        for bad in [
            "",
            "https://example.com",
            "ftp://x:1",
            "not a host",
            "http://",
        ] {
            let err = admin_uri(bad, "/v1/apps").expect_err(bad);
            assert!(err.contains("--admin"), "{err}");
        }
    }
}
