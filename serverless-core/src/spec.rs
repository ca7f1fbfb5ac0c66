//! The app spec: what to run and how to scale it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::network::NetworkMode;
use crate::config::security::Security;
use crate::cpu_boost::CpuBoost;
use crate::error::ConfigError;
use crate::slot::Slot;

/// Where an app's image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ImageRef {
    /// `oci-archive:PATH`: an OCI image layout tar or a `docker save` tar.
    OciArchive(PathBuf),
    /// A registry reference such as `docker.io/library/nginx:1.27` or `host:5000/app@sha256:…`.
    Registry(String),
}

/// An image reference that is neither `oci-archive:PATH` nor a registry reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageRefError {
    /// `oci-archive:` with nothing after it.
    #[error("oci-archive: needs a path, e.g. oci-archive:./hello.tar")]
    MissingArchivePath,
    /// Empty, too long, or with characters no registry reference has.
    #[error("oci-archive:PATH or a registry reference like docker.io/library/nginx:1.27")]
    Malformed,
}

impl ImageRef {
    /// Parses `oci-archive:PATH` or a registry reference.
    pub fn parse(s: &str) -> Result<Self, ImageRefError> {
        if let Some(path) = s.strip_prefix("oci-archive:") {
            if path.is_empty() {
                return Err(ImageRefError::MissingArchivePath);
            }
            return Ok(Self::OciArchive(PathBuf::from(path)));
        }
        let valid = !s.is_empty()
            && s.len() <= 512
            && s.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'-' | b'_' | b'/' | b':' | b'@')
                    || b.is_ascii_uppercase()
            })
            && !s.starts_with(['/', ':', '@', '.', '-']);
        if valid {
            Ok(Self::Registry(s.to_owned()))
        } else {
            Err(ImageRefError::Malformed)
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OciArchive(p) => write!(f, "oci-archive:{}", p.display()),
            Self::Registry(r) => f.write_str(r),
        }
    }
}

impl TryFrom<String> for ImageRef {
    type Error = ImageRefError;
    fn try_from(s: String) -> Result<Self, ImageRefError> {
        Self::parse(&s)
    }
}

impl From<ImageRef> for String {
    fn from(i: ImageRef) -> String {
        i.to_string()
    }
}

/// Per-instance request and lifetime limits of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Requests in flight per instance, 1..=256 (seed default 10).
    pub max_concurrent_requests: u32,
    /// Age after which an instance takes no new requests and is recycled (default 5 min).
    #[serde(with = "crate::check::duration_str")]
    pub max_duration: Duration,
    /// Time with nothing in flight after which an instance is stopped (default 60 s).
    #[serde(with = "crate::check::duration_str")]
    pub idle_timeout: Duration,
    /// Requests that may wait for a free slot (cold start or all instances full), 0..=100000.
    pub max_queued_requests: u32,
    /// How long a request may wait in that queue before it is answered 504 (default 30 s).
    #[serde(with = "crate::check::duration_str")]
    pub queue_timeout: Duration,
    /// How long an instance may take to listen after it starts (default 10 s).
    #[serde(with = "crate::check::duration_str")]
    pub startup_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when stopping, also the bound on draining (default 10 s).
    #[serde(with = "crate::check::duration_str")]
    pub stop_grace: Duration,
    /// How long an instance may take to send a response head once the request was sent
    /// (default 300 s, Cloud Run's request timeout: an app may think that long before its
    /// first byte). Past it the request is answered `504` and not sent again.
    #[serde(with = "crate::check::duration_str")]
    pub response_timeout: Duration,
    /// The longest gap between two reads of a response body (default 60 s, nginx's
    /// `proxy_read_timeout`). Past it the response is cut short as an error. Upgraded
    /// connections (WebSocket) are exempt.
    #[serde(with = "crate::check::duration_str")]
    pub body_idle_timeout: Duration,
}

impl Limits {
    /// The seed's defaults.
    pub const DEFAULT: Limits = Limits {
        max_concurrent_requests: 10,
        max_duration: Duration::from_secs(300),
        idle_timeout: Duration::from_secs(60),
        max_queued_requests: 100,
        queue_timeout: Duration::from_secs(30),
        startup_timeout: Duration::from_secs(10),
        stop_grace: Duration::from_secs(10),
        response_timeout: Duration::from_secs(300),
        body_idle_timeout: Duration::from_secs(60),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Instance count bounds of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Scale {
    /// Instances kept running even with no traffic (default 0: scale to zero).
    pub min: u32,
    /// Most instances at once (default 10).
    pub max: u32,
    /// Keep one instance *created but not started* (a standby) so that a cold start only has
    /// to start it (default false). Backends without such a notion ignore it; see
    /// [`ContainerBackend::release`](crate::ContainerBackend::release).
    pub standby: bool,
}

impl Default for Scale {
    fn default() -> Self {
        Self {
            min: 0,
            max: 10,
            standby: false,
        }
    }
}

/// Everything needed to run one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppSpec {
    /// DNS-label name, unique per engine.
    pub name: String,
    /// Image to run.
    pub image: ImageRef,
    /// Host names routed to this app (lowercase, no port). Default: `<name>.localhost`.
    pub hosts: Vec<String>,
    /// CPU/memory slot.
    pub slot: Slot,
    /// Most processes/threads per instance (cgroup pids limit), default 512.
    pub pids_limit: u32,
    /// Extra environment; `PORT` is always set too.
    pub env: BTreeMap<String, String>,
    /// Replaces the image's ENTRYPOINT+CMD when set.
    pub command: Option<Vec<String>>,
    /// Value of `PORT` given to the app and preferred when it listens on several ports.
    pub port: u16,
    /// The app speaks HTTP/2 without TLS (h2c, prior knowledge): forward with HTTP/2.
    pub h2c: bool,
    /// CPU above the slot's while an instance boots, until it listens (default: the engine's
    /// cap, `[limits] startup_cpu_boost`); see [`CpuBoost`].
    pub startup_cpu_boost: CpuBoost,
    /// Request and lifetime limits.
    pub limits: Limits,
    /// Instance count bounds.
    pub scale: Scale,
    /// How instances are networked (`bridge`, the default, or `none`).
    pub network: NetworkMode,
    /// The sandbox: seccomp, init, user namespace, capabilities (`[apps.security]`).
    pub security: Security,
    /// Built from a Dockerfile (`image = "build:DIR"` or a `build` table): what to build; the
    /// image is then the build's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<crate::config::BuildSpec>,
}

impl AppSpec {
    /// A spec with the seed's defaults for everything but name and image.
    pub fn new(name: impl Into<String>, image: ImageRef) -> Self {
        let name = name.into();
        Self {
            hosts: vec![format!("{name}.localhost")],
            name,
            image,
            slot: Slot::DEFAULT,
            pids_limit: 512,
            env: BTreeMap::new(),
            command: None,
            port: 8080,
            h2c: false,
            startup_cpu_boost: CpuBoost::Max,
            limits: Limits::DEFAULT,
            scale: Scale::default(),
            network: NetworkMode::default(),
            security: Security::default(),
            build: None,
        }
    }
}

/// The accepted range of every bounded field of an [`AppSpec`]: one table, used by the config
/// parser and by [`AppSpec::validate`].
pub(crate) mod bounds {
    use std::time::Duration;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    pub(crate) const PIDS_LIMIT: (i64, i64) = (16, 65_536);
    pub(crate) const PORT: (i64, i64) = (1, 65_535);
    pub(crate) const MAX_CONCURRENT_REQUESTS: (i64, i64) = (1, 256);
    pub(crate) const MAX_QUEUED_REQUESTS: (i64, i64) = (0, 100_000);
    pub(crate) const SCALE_MAX: (i64, i64) = (1, 1000);
    pub(crate) const MAX_DURATION: (Duration, Duration) = (secs(1), secs(86_400));
    pub(crate) const IDLE_TIMEOUT: (Duration, Duration) = (ms(100), secs(86_400));
    pub(crate) const QUEUE_TIMEOUT: (Duration, Duration) = (ms(100), secs(600));
    pub(crate) const STARTUP_TIMEOUT: (Duration, Duration) = (ms(100), secs(600));
    pub(crate) const STOP_GRACE: (Duration, Duration) = (ms(0), secs(600));
    pub(crate) const RESPONSE_TIMEOUT: (Duration, Duration) = (ms(100), secs(3_600));
    pub(crate) const BODY_IDLE_TIMEOUT: (Duration, Duration) = (ms(100), secs(3_600));
}

impl AppSpec {
    /// Checks every field against the ranges the config file accepts (the same table), so a
    /// spec built in code is held to the same rules as one read from a file. The error names
    /// the field (`limits.max_concurrent_requests`), the value and the accepted range.
    ///
    /// ```
    /// use serverless_core::{AppSpec, ImageRef};
    /// let mut app = AppSpec::new("hello", ImageRef::Registry("example/hello:1".into()));
    /// assert!(app.validate().is_ok());
    /// app.limits.max_concurrent_requests = 0;
    /// assert_eq!(
    ///     app.validate().unwrap_err().to_string(),
    ///     "invalid limits.max_concurrent_requests = 0: expected an integer in 1..=256"
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::check::{check_duration, check_host, check_int, check_name};
        use bounds::*;
        check_name("name", &self.name)?;
        if self.hosts.is_empty() {
            return Err(ConfigError::invalid(
                "hosts",
                "[]",
                "at least one host name",
            ));
        }
        for (j, host) in self.hosts.iter().enumerate() {
            check_host(&format!("hosts[{j}]"), host)?;
        }
        check_int("pids_limit", self.pids_limit, PIDS_LIMIT)?;
        check_int("port", self.port, PORT)?;
        self.startup_cpu_boost
            .check("startup_cpu_boost", self.slot)?;
        let l = &self.limits;
        check_int(
            "limits.max_concurrent_requests",
            l.max_concurrent_requests,
            MAX_CONCURRENT_REQUESTS,
        )?;
        check_int(
            "limits.max_queued_requests",
            l.max_queued_requests,
            MAX_QUEUED_REQUESTS,
        )?;
        check_duration("limits.max_duration", l.max_duration, MAX_DURATION)?;
        check_duration("limits.idle_timeout", l.idle_timeout, IDLE_TIMEOUT)?;
        check_duration("limits.queue_timeout", l.queue_timeout, QUEUE_TIMEOUT)?;
        check_duration("limits.startup_timeout", l.startup_timeout, STARTUP_TIMEOUT)?;
        check_duration("limits.stop_grace", l.stop_grace, STOP_GRACE)?;
        check_duration(
            "limits.response_timeout",
            l.response_timeout,
            RESPONSE_TIMEOUT,
        )?;
        check_duration(
            "limits.body_idle_timeout",
            l.body_idle_timeout,
            BODY_IDLE_TIMEOUT,
        )?;
        check_int("scale.max", self.scale.max, SCALE_MAX)?;
        check_int("scale.min", self.scale.min, (0, i64::from(self.scale.max)))?;
        self.security.check("security.")?;
        Ok(())
    }
}
