//! The config file: TOML (ours) or the seed's `now.json` (one app).
//!
//! Parsing is two steps: serde reads the document into raw structs that reject unknown keys, then
//! validation checks every value and builds the domain types, naming the field, the
//! value and the accepted range in each error.

mod build;
pub(crate) mod network;
mod raw;
pub(crate) mod security;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use self::build::{BuildSpec, BUILD_PREFIX, BUILD_TIMEOUT};
pub use self::network::{host_nameservers, Ipv4Subnet, NetworkConfig, NetworkMode};
use self::raw::{RawApp, RawConfig, RawLimits, RawNowJson};
pub use self::security::{Seccomp, Security, SecurityConfig, CAPABILITIES};
use crate::check::{duration_str, RawDuration};
use crate::spec::{AppSpec, ImageRef};
use crate::ConfigError;

/// Limits across all apps of one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GlobalLimits {
    /// Requests in flight across all apps (seed default 500).
    pub max_concurrent_requests: u32,
    /// Instances running across all apps (default 100).
    pub max_instances: u32,
    /// Instances that may boot with a startup CPU boost at once; more start at their slot
    /// (default: the host's CPU count, see [`CpuBoost`](crate::CpuBoost); 0 turns the boost
    /// off).
    pub max_boosted_instances: u32,
    /// The most CPU a boosted instance boots with, in thousandths of a vCPU (`[limits]
    /// startup_cpu_boost`, in vCPU; default: the host's CPUs).
    pub startup_cpu_boost_millicpu: u32,
}

impl Default for GlobalLimits {
    fn default() -> Self {
        let host = crate::cpu_boost::host_millicpu();
        Self {
            max_concurrent_requests: 500,
            max_instances: 100,
            max_boosted_instances: host / 1000,
            startup_cpu_boost_millicpu: host,
        }
    }
}

/// How to reach containerd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerdConfig {
    /// The containerd gRPC socket.
    pub socket: PathBuf,
    /// The containerd namespace our objects live in (default `serverless`).
    pub namespace: String,
}

/// The Kubernetes backend (`[kubernetes]`): instances run as Pods of a cluster instead of
/// containerd containers (crate `serverless-kubernetes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubernetesConfig {
    /// The namespace instance Pods run in; `None` = the kubeconfig context's, or in a Pod its
    /// service account's.
    pub namespace: Option<String>,
    /// A kubeconfig file; `None` = in a Pod its service account, else `$KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// This gateway's identity, the `serverless.dev/gateway` label of its Pods; `None` =
    /// `$POD_NAME`, else `serverless`.
    pub gateway: Option<String>,
}

/// TLS for the gateway listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Gateway server settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerConfig {
    /// Time a client has to send a complete request header section (default 10 s).
    #[serde(with = "duration_str")]
    pub header_read_timeout: Duration,
    /// Largest request header section in bytes (default 64 KiB); larger → 431.
    pub max_header_bytes: usize,
    /// Largest request body in bytes; larger → 413. None = unlimited.
    pub max_body_bytes: Option<u64>,
    /// TLS with ALPN (h2, http/1.1) when set.
    pub tls: Option<TlsConfig>,
    /// A benchmark knob, not a tuning one (default `true`): body-less HTTP/1.1 requests go
    /// through the gateway's own lean HTTP/1.1 client; `false` sends them through hyper's
    /// client like the others, so that what the lean client saves can be measured again.
    pub lean_client: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_body_bytes: None,
            tls: None,
            lean_client: true,
        }
    }
}

/// Where a secret is read from when the engine starts (never written in the config itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    /// An environment variable of the engine's process.
    Env(String),
    /// A file (one trailing newline is dropped), e.g. a mounted secret.
    File(PathBuf),
}

impl SecretSource {
    /// Reads the secret; the error says which variable or file and why.
    pub fn read(&self) -> Result<String, SecretError> {
        match self {
            SecretSource::Env(name) => {
                let problem = match std::env::var(name) {
                    Ok(v) if !v.is_empty() => return Ok(v),
                    Ok(_) => SecretProblem::Empty,
                    Err(std::env::VarError::NotPresent) => SecretProblem::NotSet,
                    Err(std::env::VarError::NotUnicode(_)) => SecretProblem::NotUtf8,
                };
                Err(SecretError {
                    from: self.clone(),
                    problem,
                })
            }
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| SecretError {
                    from: self.clone(),
                    problem: SecretProblem::Unreadable(e.to_string()),
                })?;
                let v = text
                    .strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text);
                if v.is_empty() {
                    return Err(SecretError {
                        from: self.clone(),
                        problem: SecretProblem::Empty,
                    });
                }
                Ok(v.to_owned())
            }
        }
    }
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A secret that could not be read: which variable or file, and why (never its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{from} {problem}")]
pub struct SecretError {
    /// Where it was read from.
    pub from: SecretSource,
    /// What was wrong.
    pub problem: SecretProblem,
}

/// What was wrong with a secret's source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretProblem {
    /// The variable is not set.
    #[error("is not set")]
    NotSet,
    /// The variable is set but not UTF-8.
    #[error("is not UTF-8")]
    NotUtf8,
    /// The variable or the file is empty.
    #[error("is empty")]
    Empty,
    /// The file could not be read (the I/O error's message).
    #[error("could not be read: {0}")]
    Unreadable(String),
}

/// Credentials for pulling from one registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryCredentials {
    /// The registry as written in image references: `host` or `host:port` (`docker.io` for
    /// Docker Hub).
    pub host: String,
    /// The user name.
    pub username: String,
    /// Where the password (or token) is read from at startup.
    pub password: SecretSource,
}

/// A whole engine configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Gateway address (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Admin API + `/metrics` address (default `127.0.0.1:8081`).
    pub admin: SocketAddr,
    /// Bearer token for the admin API; required when `admin` is not a loopback address.
    pub admin_token: Option<String>,
    /// Where the engine keeps its state (embedded containerd, logs). Default `/var/lib/serverless`.
    pub data_dir: PathBuf,
    /// An existing containerd; `None` = the engine starts its own.
    pub containerd: Option<ContainerdConfig>,
    /// Run instances as Kubernetes Pods instead (`[kubernetes]`; excludes `[containerd]`).
    pub kubernetes: Option<KubernetesConfig>,
    /// Limits across apps.
    pub limits: GlobalLimits,
    /// Gateway server settings.
    pub server: ServerConfig,
    /// Registry credentials for pulls (`[[registries]]`); registries not listed are pulled
    /// from anonymously.
    pub registries: Vec<RegistryCredentials>,
    /// An auth file as `docker login`/`podman login` write it, for registries not listed in
    /// `registries`.
    pub registry_auth_file: Option<PathBuf>,
    /// Networking of `bridge` instances (`[network]`).
    pub network: NetworkConfig,
    /// The instances' user-namespace range (`[security]`).
    pub security: SecurityConfig,
    /// The apps.
    pub apps: Vec<AppSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_token: None,
            data_dir: PathBuf::from("/var/lib/serverless"),
            containerd: None,
            kubernetes: None,
            limits: GlobalLimits::default(),
            server: ServerConfig::default(),
            registries: Vec::new(),
            registry_auth_file: None,
            network: NetworkConfig::default(),
            security: SecurityConfig::default(),
            apps: Vec::new(),
        }
    }
}

impl Config {
    /// Reads a config file: `*.json` is taken as the seed's `now.json`, anything else as TOML.
    /// Relative `oci-archive:` paths and build contexts are resolved against the file's
    /// directory.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = if path.extension().is_some_and(|e| e == "json") {
            Self::from_now_json(&text)?
        } else {
            Self::from_toml(&text)?
        };
        if let Some(dir) = path.parent() {
            for app in &mut config.apps {
                if let ImageRef::OciArchive(p) = &mut app.image {
                    if p.is_relative() {
                        *p = dir.join(&*p);
                    }
                }
                if let Some(build) = &mut app.build {
                    build.resolve(dir);
                }
            }
        }
        Ok(config)
    }

    /// Parses our TOML format.
    ///
    /// ```
    /// let config = serverless_core::Config::from_toml(r#"
    ///     [[apps]]
    ///     name = "hello"
    ///     image = "oci-archive:./hello.tar"
    ///     [apps.limits]
    ///     max_concurrent_requests = 4
    /// "#).unwrap();
    /// assert_eq!(config.apps[0].limits.max_concurrent_requests, 4);
    /// assert_eq!(config.apps[0].hosts, ["hello.localhost"]);
    ///
    /// let err = serverless_core::Config::from_toml(r#"
    ///     [[apps]]
    ///     name = "hello"
    ///     image = "oci-archive:./hello.tar"
    ///     limits = { max_concurrent_requests = 300 }
    /// "#).unwrap_err();
    /// assert_eq!(err.to_string(),
    ///     "invalid apps[0].limits.max_concurrent_requests = 300: expected an integer in 1..=256");
    /// ```
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            format: "toml",
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        raw.validate()
    }

    /// Parses the seed's `now.json` (one app):
    /// `{"name", "image", "slot", "limits": {"maxConcurrentReqs", "duration", "timeout"}}`,
    /// durations in milliseconds, plus our `"network"` (`"bridge"` or `"none"`).
    pub fn from_now_json(text: &str) -> Result<Self, ConfigError> {
        let raw: RawNowJson = serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
            format: "json",
            message: e.to_string(),
        })?;
        let limits = raw.limits.unwrap_or_default();
        let app = RawApp {
            name: raw.name,
            image: raw.image,
            slot: raw.slot,
            limits: Some(RawLimits {
                max_concurrent_requests: limits.max_concurrent_reqs,
                max_duration: limits.duration.map(RawDuration::Millis),
                idle_timeout: limits.timeout.map(RawDuration::Millis),
                ..Default::default()
            }),
            network: raw.network,
            ..Default::default()
        };
        let mut config = RawConfig {
            apps: vec![app],
            ..Default::default()
        }
        .validate()
        .map_err(|e| match e {
            // Name the now.json keys, not ours.
            ConfigError::Invalid {
                field,
                value,
                expected,
            } => ConfigError::Invalid {
                field: field
                    .replace(
                        "apps[0].limits.max_concurrent_requests",
                        "limits.maxConcurrentReqs",
                    )
                    .replace("apps[0].limits.max_duration", "limits.duration")
                    .replace("apps[0].limits.idle_timeout", "limits.timeout")
                    .replace("apps[0].", ""),
                value,
                expected,
            },
            other => other,
        })?;
        config.apps.truncate(1);
        Ok(config)
    }

    /// The app named `name`.
    pub fn app(&self, name: &str) -> Option<&AppSpec> {
        self.apps.iter().find(|a| a.name == name)
    }
}

impl AppSpec {
    /// Parses and validates one app from JSON (the admin API's `PUT /v1/apps/{name}` body), with
    /// the same keys as a TOML `[[apps]]` entry.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let raw: RawApp = serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
            format: "json",
            message: e.to_string(),
        })?;
        raw.validate("")
    }
}

#[cfg(test)]
mod tests;
