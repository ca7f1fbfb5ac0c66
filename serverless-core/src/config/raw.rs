//! The config as written: serde structs that reject unknown keys, and their validation into
//! the domain types.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{
    Config, ContainerdConfig, GlobalLimits, KubernetesConfig, RegistryCredentials, SecretSource,
    ServerConfig, TlsConfig,
};
use crate::check::*;
use crate::spec::{AppSpec, Limits, Scale};
use crate::{ConfigError, Slot};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<String>,
    pub(super) admin: Option<String>,
    pub(super) admin_token: Option<String>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) containerd: Option<RawContainerd>,
    pub(super) kubernetes: Option<RawKubernetes>,
    pub(super) limits: Option<RawGlobalLimits>,
    pub(super) server: Option<RawServer>,
    pub(super) network: Option<super::network::RawNetwork>,
    pub(super) security: Option<super::security::RawSecurityConfig>,
    #[serde(default)]
    pub(super) registries: Vec<RawRegistry>,
    pub(super) registry_auth_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) apps: Vec<RawApp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub(super) host: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContainerd {
    pub(super) socket: Option<PathBuf>,
    pub(super) namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    pub(super) namespace: Option<String>,
    pub(super) kubeconfig: Option<PathBuf>,
    pub(super) gateway: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobalLimits {
    pub(super) max_concurrent_requests: Option<i64>,
    pub(super) max_instances: Option<i64>,
    pub(super) max_boosted_instances: Option<i64>,
    pub(super) startup_cpu_boost: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) header_read_timeout: Option<RawDuration>,
    pub(super) max_header_bytes: Option<i64>,
    pub(super) max_body_bytes: Option<i64>,
    pub(super) tls: Option<RawTls>,
    pub(super) lean_client: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) name: Option<String>,
    pub(super) image: Option<String>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) slot: Option<String>,
    pub(super) pids_limit: Option<i64>,
    pub(super) env: Option<BTreeMap<String, String>>,
    pub(super) command: Option<Vec<String>>,
    pub(super) port: Option<i64>,
    pub(super) h2c: Option<bool>,
    pub(super) startup_cpu_boost: Option<crate::cpu_boost::RawBoost>,
    pub(super) limits: Option<RawLimits>,
    pub(super) scale: Option<RawScale>,
    pub(super) network: Option<String>,
    pub(super) security: Option<super::security::RawSecurity>,
    pub(super) build: Option<super::build::RawBuild>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_concurrent_requests: Option<i64>,
    pub(super) max_duration: Option<RawDuration>,
    pub(super) idle_timeout: Option<RawDuration>,
    pub(super) max_queued_requests: Option<i64>,
    pub(super) queue_timeout: Option<RawDuration>,
    pub(super) startup_timeout: Option<RawDuration>,
    pub(super) stop_grace: Option<RawDuration>,
    pub(super) response_timeout: Option<RawDuration>,
    pub(super) body_idle_timeout: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScale {
    pub(super) min: Option<i64>,
    pub(super) max: Option<i64>,
    pub(super) standby: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNowJson {
    pub(super) name: Option<String>,
    pub(super) image: Option<String>,
    pub(super) slot: Option<String>,
    pub(super) limits: Option<RawNowLimits>,
    /// Ours, like the TOML key: `"bridge"` (the default) or `"none"`.
    pub(super) network: Option<String>,
    // Other now.json keys that do not concern us are accepted and ignored.
    #[serde(default, rename = "type")]
    pub(super) _type: Option<serde_json::Value>,
    #[serde(default, rename = "version")]
    pub(super) _version: Option<serde_json::Value>,
    #[serde(default, rename = "features")]
    pub(super) _features: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawNowLimits {
    pub(super) max_concurrent_reqs: Option<i64>,
    pub(super) duration: Option<i64>,
    pub(super) timeout: Option<i64>,
}

impl RawRegistry {
    pub(super) fn validate(self, i: usize) -> Result<RegistryCredentials, ConfigError> {
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

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
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
        let kubernetes = match self.kubernetes {
            None => None,
            Some(_) if containerd.is_some() => {
                return Err(ConfigError::invalid(
                    "kubernetes",
                    "(with [containerd])",
                    "one backend: [containerd] or [kubernetes], not both",
                ))
            }
            Some(k) => {
                if let Some(ns) = k.namespace.as_deref().filter(|ns| !is_dns_label(ns)) {
                    return Err(ConfigError::invalid(
                        "kubernetes.namespace",
                        format!("{ns:?}"),
                        "lowercase letters, digits and '-', 1..=63 characters",
                    ));
                }
                let label = |g: &str| {
                    (1..=63).contains(&g.len())
                        && g.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                        && g.starts_with(|c: char| c.is_ascii_alphanumeric())
                        && g.ends_with(|c: char| c.is_ascii_alphanumeric())
                };
                if let Some(g) = k.gateway.as_deref().filter(|g| !label(g)) {
                    return Err(ConfigError::invalid(
                        "kubernetes.gateway",
                        format!("{g:?}"),
                        "a label value: 1..=63 letters, digits, '-', '_' or '.', alphanumeric at both ends",
                    ));
                }
                Some(KubernetesConfig {
                    namespace: k.namespace,
                    kubeconfig: k.kubeconfig,
                    gateway: k.gateway,
                })
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
            max_boosted_instances: int_in(
                "limits.max_boosted_instances",
                gl.max_boosted_instances,
                d.limits.max_boosted_instances,
                0,
                10_000,
            )?,
            startup_cpu_boost_millicpu: crate::cpu_boost::parse_cap(
                "limits.startup_cpu_boost",
                gl.startup_cpu_boost,
                d.limits.startup_cpu_boost_millicpu,
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
            kubernetes,
            limits,
            server,
            registries,
            registry_auth_file: self.registry_auth_file,
            network: self.network.unwrap_or_default().validate()?,
            security: self.security.unwrap_or_default().validate()?,
            apps,
        })
    }
}

impl RawApp {
    pub(super) fn validate(self, prefix: &str) -> Result<AppSpec, ConfigError> {
        use crate::spec::bounds::*;
        let f = |name: &str| format!("{prefix}{name}");
        let name = self
            .name
            .ok_or_else(|| ConfigError::invalid(f("name"), "(missing)", NAME_FORM))?;
        check_name(&f("name"), &name)?;
        let (image, build) = super::build::parse(prefix, &name, self.image, self.build)?;
        let mut spec = AppSpec::new(name, image);
        spec.build = build;
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
        spec.startup_cpu_boost = crate::cpu_boost::parse_app(
            &f("startup_cpu_boost"),
            self.startup_cpu_boost,
            spec.slot,
        )?;

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
            response_timeout: duration_in(
                &f("limits.response_timeout"),
                rl.response_timeout,
                dl.response_timeout,
                RESPONSE_TIMEOUT.0,
                RESPONSE_TIMEOUT.1,
            )?,
            body_idle_timeout: duration_in(
                &f("limits.body_idle_timeout"),
                rl.body_idle_timeout,
                dl.body_idle_timeout,
                BODY_IDLE_TIMEOUT.0,
                BODY_IDLE_TIMEOUT.1,
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
        spec.network = super::network::parse_mode(&f("network"), self.network)?;
        spec.security = self.security.unwrap_or_default().validate(prefix)?;
        Ok(spec)
    }
}
