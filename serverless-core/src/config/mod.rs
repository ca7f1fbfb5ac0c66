//! The config file: TOML (ours) or the seed's `now.json` (one app).
//!
//! Parsing is two steps: serde reads the document into raw structs that reject unknown keys, then
//! validation checks every value and builds the domain types, naming the field, the
//! value and the accepted range in each error.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::{AppSpec, ImageRef, Limits, Scale};
use crate::{ConfigError, Slot};

/// Limits across all apps of one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GlobalLimits {
    /// Requests in flight across all apps (seed default 500).
    pub max_concurrent_requests: u32,
    /// Instances running across all apps (default 100).
    pub max_instances: u32,
}

impl Default for GlobalLimits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 500,
            max_instances: 100,
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
            limits: GlobalLimits::default(),
            server: ServerConfig::default(),
            registries: Vec::new(),
            registry_auth_file: None,
            apps: Vec::new(),
        }
    }
}

impl Config {
    /// Reads a config file: `*.json` is taken as the seed's `now.json`, anything else as TOML.
    /// Relative `oci-archive:` paths are resolved against the file's directory.
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
    /// durations in milliseconds.
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

/// Serializes durations as humantime strings (`"5m"`), for the normalized config.
pub(crate) mod duration_str {
    use std::time::Duration;

    pub(crate) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    admin: Option<String>,
    admin_token: Option<String>,
    data_dir: Option<PathBuf>,
    containerd: Option<RawContainerd>,
    limits: Option<RawGlobalLimits>,
    server: Option<RawServer>,
    #[serde(default)]
    registries: Vec<RawRegistry>,
    registry_auth_file: Option<PathBuf>,
    #[serde(default)]
    apps: Vec<RawApp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    host: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainerd {
    socket: Option<PathBuf>,
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobalLimits {
    max_concurrent_requests: Option<i64>,
    max_instances: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    header_read_timeout: Option<RawDuration>,
    max_header_bytes: Option<i64>,
    max_body_bytes: Option<i64>,
    tls: Option<RawTls>,
    lean_client: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Option<String>,
    image: Option<String>,
    hosts: Option<Vec<String>>,
    slot: Option<String>,
    pids_limit: Option<i64>,
    env: Option<BTreeMap<String, String>>,
    command: Option<Vec<String>>,
    port: Option<i64>,
    h2c: Option<bool>,
    limits: Option<RawLimits>,
    scale: Option<RawScale>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_concurrent_requests: Option<i64>,
    max_duration: Option<RawDuration>,
    idle_timeout: Option<RawDuration>,
    max_queued_requests: Option<i64>,
    queue_timeout: Option<RawDuration>,
    startup_timeout: Option<RawDuration>,
    stop_grace: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScale {
    min: Option<i64>,
    max: Option<i64>,
    standby: Option<bool>,
}

/// A duration written as `"5m"`/`"250ms"` or as an integer number of milliseconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Millis(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNowJson {
    name: Option<String>,
    image: Option<String>,
    slot: Option<String>,
    limits: Option<RawNowLimits>,
    // Other now.json keys that do not concern us are accepted and ignored.
    #[serde(default, rename = "type")]
    _type: Option<serde_json::Value>,
    #[serde(default, rename = "version")]
    _version: Option<serde_json::Value>,
    #[serde(default, rename = "features")]
    _features: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNowLimits {
    max_concurrent_reqs: Option<i64>,
    duration: Option<i64>,
    timeout: Option<i64>,
}

fn int_in<T: TryFrom<i64>>(
    field: &str,
    v: Option<i64>,
    default: T,
    lo: i64,
    hi: i64,
) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) if (lo..=hi).contains(&v) => {
            T::try_from(v).map_err(|_| ConfigError::invalid(field, v, range_text(lo, hi)))
        }
        Some(v) => Err(ConfigError::invalid(field, v, range_text(lo, hi))),
    }
}

fn range_text(lo: i64, hi: i64) -> String {
    format!("an integer in {lo}..={hi}")
}

fn duration_range_text(lo: Duration, hi: Duration) -> String {
    format!(
        "a duration in {}..={} (\"250ms\", \"30s\", \"5m\" or integer milliseconds)",
        humantime::format_duration(lo),
        humantime::format_duration(hi)
    )
}

const NAME_FORM: &str = "a DNS label: lowercase letters, digits and '-', 1..=63 characters";

/// A typed integer field against its range (for specs built in code).
pub(crate) fn check_int(
    field: &str,
    v: impl Into<i64>,
    (lo, hi): (i64, i64),
) -> Result<(), ConfigError> {
    let v = v.into();
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::invalid(field, v, range_text(lo, hi)))
    }
}

/// A typed duration field against its range (for specs built in code).
pub(crate) fn check_duration(
    field: &str,
    v: Duration,
    (lo, hi): (Duration, Duration),
) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("{:?}", humantime::format_duration(v).to_string()),
            duration_range_text(lo, hi),
        ))
    }
}

/// A routed host name (lowercase, no port).
pub(crate) fn check_host(field: &str, host: &str) -> Result<(), ConfigError> {
    if is_host_name(host) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("{host:?}"),
            "a lowercase host name without port, e.g. \"hello.example.com\"",
        ))
    }
}

/// An app name.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(ConfigError::invalid(field, format!("{name:?}"), NAME_FORM))
    }
}

fn duration_in(
    field: &str,
    v: Option<RawDuration>,
    default: Duration,
    lo: Duration,
    hi: Duration,
) -> Result<Duration, ConfigError> {
    let expected = || duration_range_text(lo, hi);
    let (d, shown) = match v {
        None => return Ok(default),
        Some(RawDuration::Millis(ms)) => {
            let d = u64::try_from(ms)
                .map(Duration::from_millis)
                .map_err(|_| ConfigError::invalid(field, ms, expected()))?;
            (d, ms.to_string())
        }
        Some(RawDuration::Text(s)) => {
            let d = humantime::parse_duration(s.trim())
                .map_err(|_| ConfigError::invalid(field, format!("{s:?}"), expected()))?;
            (d, format!("{s:?}"))
        }
    };
    if d < lo || d > hi {
        return Err(ConfigError::invalid(field, shown, expected()));
    }
    Ok(d)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `host` or `host:port` as in image references: a DNS name (letters kept as written, any case
/// folded by the caller), an IPv4 address or `[IPv6]`, and a port in 1..=65535.
fn is_registry_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        // `[v6]` alone has colons inside its brackets, not a port.
        Some((h, p)) if !s.ends_with(']') => (h, Some(p)),
        _ => (s, None),
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => is_host_name(host),
    };
    port_ok && host_ok
}

impl RawRegistry {
    fn validate(self, i: usize) -> Result<RegistryCredentials, ConfigError> {
        let f = |name: &str| format!("registries[{i}].{name}");
        let host = self.host.ok_or_else(|| {
            ConfigError::invalid(
                f("host"),
                "(missing)",
                "the registry as in image references: host or host:port",
            )
        })?;
        if !is_registry_host(&host) {
            return Err(ConfigError::invalid(
                f("host"),
                format!("{host:?}"),
                "the registry as in image references: a lowercase host or host:port, without scheme or path (e.g. \"ghcr.io\", \"127.0.0.1:5000\")",
            ));
        }
        let username = self.username.ok_or_else(|| {
            ConfigError::invalid(f("username"), "(missing)", "the user name to log in with")
        })?;
        if username.is_empty() || username.contains(':') || username.chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                f("username"),
                format!("{username:?}"),
                "a non-empty user name without ':' or control characters",
            ));
        }
        let password = match (self.password_env, self.password_file) {
            (Some(name), None) => {
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    return Err(ConfigError::invalid(
                        f("password_env"),
                        format!("{name:?}"),
                        "an environment variable name (non-empty, without '=' or NUL)",
                    ));
                }
                SecretSource::Env(name)
            }
            (None, Some(path)) => SecretSource::File(path),
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    format!("registries[{i}]"),
                    "both password_env and password_file",
                    "exactly one of password_env or password_file",
                ))
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    format!("registries[{i}]"),
                    "no password_env or password_file",
                    "exactly one of password_env (a variable name) or password_file (a path); passwords are not written in the config",
                ))
            }
        };
        Ok(RegistryCredentials {
            host,
            username,
            password,
        })
    }
}

fn is_host_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let d = Config::default();
        let addr = |field: &str, v: Option<String>, default: SocketAddr| match v {
            None => Ok(default),
            Some(s) => s.parse::<SocketAddr>().map_err(|_| {
                ConfigError::invalid(
                    field,
                    format!("{s:?}"),
                    "an IP:port address, e.g. \"127.0.0.1:8080\"",
                )
            }),
        };
        let listen = addr("listen", self.listen, d.listen)?;
        let admin = addr("admin", self.admin, d.admin)?;
        if let Some(token) = &self.admin_token {
            if token.len() < 16 {
                return Err(ConfigError::invalid(
                    "admin_token",
                    "(hidden)",
                    "at least 16 characters",
                ));
            }
        }
        let containerd = match self.containerd {
            None => None,
            Some(c) => {
                let socket = c.socket.ok_or_else(|| {
                    ConfigError::invalid("containerd.socket", "(missing)", "the path of containerd's socket; omit [containerd] to start an embedded containerd")
                })?;
                let namespace = c.namespace.unwrap_or_else(|| "serverless".into());
                if !is_dns_label(&namespace) {
                    return Err(ConfigError::invalid(
                        "containerd.namespace",
                        format!("{namespace:?}"),
                        "lowercase letters, digits and '-', 1..=63 characters",
                    ));
                }
                Some(ContainerdConfig { socket, namespace })
            }
        };
        let gl = self.limits.unwrap_or_default();
        let limits = GlobalLimits {
            max_concurrent_requests: int_in(
                "limits.max_concurrent_requests",
                gl.max_concurrent_requests,
                d.limits.max_concurrent_requests,
                1,
                1_000_000,
            )?,
            max_instances: int_in(
                "limits.max_instances",
                gl.max_instances,
                d.limits.max_instances,
                1,
                10_000,
            )?,
        };
        let rs = self.server.unwrap_or_default();
        let server = ServerConfig {
            header_read_timeout: duration_in(
                "server.header_read_timeout",
                rs.header_read_timeout,
                d.server.header_read_timeout,
                Duration::from_millis(100),
                Duration::from_secs(600),
            )?,
            max_header_bytes: int_in(
                "server.max_header_bytes",
                rs.max_header_bytes,
                d.server.max_header_bytes,
                1024,
                16 * 1024 * 1024,
            )?,
            max_body_bytes: match rs.max_body_bytes {
                None => None,
                Some(v) => Some(int_in("server.max_body_bytes", Some(v), 0u64, 0, i64::MAX)?),
            },
            tls: rs.tls.map(|t| TlsConfig {
                cert: t.cert,
                key: t.key,
            }),
            lean_client: rs.lean_client.unwrap_or(d.server.lean_client),
        };
        let mut registries = Vec::with_capacity(self.registries.len());
        for (i, raw) in self.registries.into_iter().enumerate() {
            let r = raw.validate(i)?;
            if registries
                .iter()
                .any(|o: &RegistryCredentials| o.host == r.host)
            {
                return Err(ConfigError::invalid(
                    format!("registries[{i}].host"),
                    format!("{:?}", r.host),
                    "a registry not listed before",
                ));
            }
            registries.push(r);
        }
        let mut apps = Vec::with_capacity(self.apps.len());
        let mut names = HashSet::new();
        let mut hosts = HashSet::new();
        for (i, raw) in self.apps.into_iter().enumerate() {
            let prefix = format!("apps[{i}].");
            let app = raw.validate(&prefix)?;
            if !names.insert(app.name.clone()) {
                return Err(ConfigError::invalid(
                    format!("{prefix}name"),
                    format!("{:?}", app.name),
                    "a name not used by another app",
                ));
            }
            for (j, h) in app.hosts.iter().enumerate() {
                if !hosts.insert(h.clone()) {
                    return Err(ConfigError::invalid(
                        format!("{prefix}hosts[{j}]"),
                        format!("{h:?}"),
                        "a host not routed to another app",
                    ));
                }
            }
            apps.push(app);
        }
        let total_min: u64 = apps.iter().map(|a| u64::from(a.scale.min)).sum();
        if total_min > u64::from(limits.max_instances) {
            return Err(ConfigError::invalid(
                "limits.max_instances",
                limits.max_instances,
                format!("at least the sum of the apps' scale.min ({total_min})"),
            ));
        }
        Ok(Config {
            listen,
            admin,
            admin_token: self.admin_token,
            data_dir: self.data_dir.unwrap_or(d.data_dir),
            containerd,
            limits,
            server,
            registries,
            registry_auth_file: self.registry_auth_file,
            apps,
        })
    }
}

impl RawApp {
    fn validate(self, prefix: &str) -> Result<AppSpec, ConfigError> {
        use crate::spec::bounds::*;
        let f = |name: &str| format!("{prefix}{name}");
        let name = self.name.ok_or_else(|| {
            ConfigError::invalid(
                f("name"),
                "(missing)",
                NAME_FORM,
            )
        })?;
        check_name(&f("name"), &name)?;
        let image_text = self.image.ok_or_else(|| {
            ConfigError::invalid(
                f("image"),
                "(missing)",
                "oci-archive:PATH or a registry reference",
            )
        })?;
        let image = ImageRef::parse(&image_text).map_err(|expected| {
            ConfigError::invalid(f("image"), format!("{image_text:?}"), expected.to_string())
        })?;
        let mut spec = AppSpec::new(name, image);
        if let Some(hosts) = self.hosts {
            if hosts.is_empty() {
                return Err(ConfigError::invalid(
                    f("hosts"),
                    "[]",
                    "at least one host name",
                ));
            }
            spec.hosts = Vec::with_capacity(hosts.len());
            for (j, h) in hosts.into_iter().enumerate() {
                let lower = h.to_ascii_lowercase();
                check_host(&f(&format!("hosts[{j}]")), &lower)?;
                spec.hosts.push(lower);
            }
        }
        if let Some(slot) = self.slot {
            spec.slot = slot.parse::<Slot>().map_err(|_| {
                ConfigError::invalid(f("slot"), format!("{slot:?}"), crate::slot::SLOT_FORM)
            })?;
        }
        spec.pids_limit = int_in(
            &f("pids_limit"),
            self.pids_limit,
            spec.pids_limit,
            PIDS_LIMIT.0,
            PIDS_LIMIT.1,
        )?;
        if let Some(env) = self.env {
            for (k, v) in &env {
                if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                    return Err(ConfigError::invalid(
                        f(&format!("env.{k}")),
                        format!("{v:?}"),
                        "a name without '=' or NUL and a value without NUL",
                    ));
                }
            }
            spec.env = env;
        }
        if let Some(cmd) = self.command {
            if cmd.is_empty() || cmd[0].is_empty() {
                return Err(ConfigError::invalid(
                    f("command"),
                    format!("{cmd:?}"),
                    "a non-empty argument list, e.g. [\"/bin/app\", \"--flag\"]",
                ));
            }
            spec.command = Some(cmd);
        }
        spec.port = int_in(&f("port"), self.port, spec.port, PORT.0, PORT.1)?;
        spec.h2c = self.h2c.unwrap_or(false);

        let rl = self.limits.unwrap_or_default();
        let dl = Limits::DEFAULT;
        spec.limits = Limits {
            max_concurrent_requests: int_in(
                &f("limits.max_concurrent_requests"),
                rl.max_concurrent_requests,
                dl.max_concurrent_requests,
                MAX_CONCURRENT_REQUESTS.0,
                MAX_CONCURRENT_REQUESTS.1,
            )?,
            max_duration: duration_in(
                &f("limits.max_duration"),
                rl.max_duration,
                dl.max_duration,
                MAX_DURATION.0,
                MAX_DURATION.1,
            )?,
            idle_timeout: duration_in(
                &f("limits.idle_timeout"),
                rl.idle_timeout,
                dl.idle_timeout,
                IDLE_TIMEOUT.0,
                IDLE_TIMEOUT.1,
            )?,
            max_queued_requests: int_in(
                &f("limits.max_queued_requests"),
                rl.max_queued_requests,
                dl.max_queued_requests,
                MAX_QUEUED_REQUESTS.0,
                MAX_QUEUED_REQUESTS.1,
            )?,
            queue_timeout: duration_in(
                &f("limits.queue_timeout"),
                rl.queue_timeout,
                dl.queue_timeout,
                QUEUE_TIMEOUT.0,
                QUEUE_TIMEOUT.1,
            )?,
            startup_timeout: duration_in(
                &f("limits.startup_timeout"),
                rl.startup_timeout,
                dl.startup_timeout,
                STARTUP_TIMEOUT.0,
                STARTUP_TIMEOUT.1,
            )?,
            stop_grace: duration_in(
                &f("limits.stop_grace"),
                rl.stop_grace,
                dl.stop_grace,
                STOP_GRACE.0,
                STOP_GRACE.1,
            )?,
        };
        let rs = self.scale.unwrap_or_default();
        let max = int_in(
            &f("scale.max"),
            rs.max,
            Scale::default().max,
            SCALE_MAX.0,
            SCALE_MAX.1,
        )?;
        let min = int_in(&f("scale.min"), rs.min, 0, 0, i64::from(max))?;
        let standby = rs.standby.unwrap_or(Scale::default().standby);
        spec.scale = Scale { min, max, standby };
        Ok(spec)
    }
}

#[cfg(test)]
mod tests;
