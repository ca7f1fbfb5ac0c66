//! The command line: subcommands and their arguments (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The admin token's environment variable: read by `serve` when the config has no
/// `admin_token`, and by the admin-API client commands for `--token`.
pub(crate) const ADMIN_TOKEN_ENV: &str = "SERVERLESS_ADMIN_TOKEN";

#[derive(Debug, Parser)]
#[command(
    name = "serverless",
    version,
    about = "Run container images as HTTP services that scale from zero"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the admin-API client commands find the gateway.
#[derive(clap::Args)]
pub(crate) struct AdminArgs {
    /// Admin API address: http://HOST:PORT, or HOST:PORT as in the config's `admin` key.
    #[arg(
        long,
        env = "SERVERLESS_ADMIN",
        default_value = "http://127.0.0.1:8081"
    )]
    pub(crate) admin: String,
    /// Bearer token for the admin API.
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true)]
    pub(crate) token: Option<String>,
}

impl std::fmt::Debug for AdminArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminArgs")
            .field("admin", &self.admin)
            .field("token", &self.token.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway and the apps of a config file (TOML or now.json).
    ///
    /// The admin API's token is the config's `admin_token`, else $SERVERLESS_ADMIN_TOKEN.
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
    /// Deploy or update: a folder with a Dockerfile (built, then deployed), or the apps of a
    /// file (TOML config, JSON app spec or now.json; `image = "build:DIR"` apps are built first).
    Deploy {
        /// The folder or file.
        file: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        build: BuildArgs,
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

/// How `deploy` builds a folder's Dockerfile.
#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// The app's name (default: the folder's name).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// The Dockerfile, relative to the folder.
    #[arg(long, short = 'f')]
    pub(crate) dockerfile: Option<PathBuf>,
    /// The stage to build.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// A build argument, NAME=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    pub(crate) build_args: Vec<String>,
    /// The build's time budget, e.g. "10m".
    #[arg(long)]
    pub(crate) build_timeout: Option<String>,
    /// Where builds keep their layer cache and images (the engine's data_dir).
    #[arg(
        long,
        env = "SERVERLESS_DATA_DIR",
        default_value = "/var/lib/serverless"
    )]
    pub(crate) data_dir: PathBuf,
    /// The gateway's address, for the URL printed after a deploy.
    #[arg(long, env = "SERVERLESS_GATEWAY", default_value = "127.0.0.1:8080")]
    pub(crate) gateway: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
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
