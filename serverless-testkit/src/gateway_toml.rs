//! [`GatewayToml`] and [`AppToml`]: the config a test hands to a gateway, built from the few
//! things tests vary instead of written out by each test.

use std::fmt::{self, Display, Write as _};
use std::path::{Path, PathBuf};

/// A gateway config file as tests write it: `listen` and `admin` on loopback ports the system
/// chooses (`127.0.0.1:0`; the gateway logs where it listens), then in this order what the
/// test set: `data_dir`, extra top-level TOML ([`top`](Self::top)), a `[containerd]` table and
/// the `[[apps]]` tables ([`AppToml`], `network = "none"` unless said otherwise).
///
/// [`Display`] gives the TOML text; [`write`](Self::write) writes it to a file for
/// [`GatewayProcess`](crate::GatewayProcess). String values are TOML-quoted, so any path works.
///
/// ```
/// use serverless_testkit::{AppToml, GatewayToml};
///
/// let toml = GatewayToml::new()
///     .data_dir("/tmp/gw")
///     .containerd("/tmp/containerd.sock", "tests")
///     .app(AppToml::archive("web", "/tmp/web.tar").with("[apps.scale]\nmin = 1"))
///     .to_string();
/// let config = serverless_core::Config::from_toml(&toml).unwrap();
/// assert_eq!(config.listen.to_string(), "127.0.0.1:0");
/// assert_eq!(config.apps[0].name, "web");
/// assert_eq!(config.apps[0].network, serverless_core::NetworkMode::None);
/// assert_eq!(config.apps[0].scale.min, 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct GatewayToml {
    data_dir: Option<PathBuf>,
    top: String,
    containerd: Option<(PathBuf, String)>,
    apps: String,
}

impl GatewayToml {
    /// `listen` and `admin` on `127.0.0.1:0`, nothing else: the embedded containerd under the
    /// default data dir, no apps.
    pub fn new() -> Self {
        Self::default()
    }

    /// `data_dir = "DIR"`: where the gateway keeps its state (and, with no
    /// [`containerd`](Self::containerd) table, its embedded containerd).
    pub fn data_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.data_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// More top-level TOML, written after `data_dir`: keys first (`admin_token = "…"`), then
    /// tables (`[server]`, `[kubernetes]`). Appends to what an earlier call gave.
    pub fn top(mut self, toml: &str) -> Self {
        push_lines(&mut self.top, toml);
        self
    }

    /// A `[containerd]` table with `socket` and `namespace`: run instances on a containerd the
    /// test started ([`Containerd`](crate::Containerd)) instead of the embedded one.
    pub fn containerd(mut self, socket: impl AsRef<Path>, namespace: &str) -> Self {
        self.containerd = Some((socket.as_ref().to_owned(), namespace.to_owned()));
        self
    }

    /// One more `[[apps]]` table.
    pub fn app(mut self, app: AppToml) -> Self {
        // Infallible: writing to a String.
        let _ = write!(self.apps, "{app}");
        self
    }

    /// Writes the config to `path`; panics naming the path when it cannot.
    pub fn write(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        std::fs::write(path, self.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl Display for GatewayToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"")?;
        if let Some(dir) = &self.data_dir {
            writeln!(f, "data_dir = {}", quoted(dir.display()))?;
        }
        f.write_str(&self.top)?;
        if let Some((socket, namespace)) = &self.containerd {
            writeln!(
                f,
                "[containerd]\nsocket = {}\nnamespace = {}",
                quoted(socket.display()),
                quoted(namespace)
            )?;
        }
        f.write_str(&self.apps)
    }
}

/// One `[[apps]]` table: `name`, `image` and `network = "none"` (tests run in the machine's
/// own network namespace, so the harnesses refuse `bridge`:
/// [`assert_no_bridge`](crate::assert_no_bridge)), then what [`with`](Self::with) adds.
///
/// [`Display`] gives the table's TOML; [`apps_toml`] joins several, for
/// [`GatewayHarness::start`](crate::GatewayHarness::start), which writes the top level itself.
#[derive(Debug, Clone)]
pub struct AppToml {
    name: String,
    image: String,
    network: Option<String>,
    extra: String,
}

impl AppToml {
    /// App `name` serving `image`, a reference as the config takes it (`oci-archive:PATH`,
    /// `build:DIR`, `registry.example/hello:1`).
    pub fn new(name: &str, image: impl Display) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_string(),
            network: Some("none".to_owned()),
            extra: String::new(),
        }
    }

    /// App `name` serving the OCI archive at `path` (`image = "oci-archive:PATH"`).
    pub fn archive(name: &str, path: impl AsRef<Path>) -> Self {
        Self::new(
            name,
            format_args!("oci-archive:{}", path.as_ref().display()),
        )
    }

    /// `network = "MODE"` instead of `"none"`: `"bridge"` only for a gateway whose containerd
    /// runs in a [`NetLab`](crate::NetLab) namespace.
    pub fn network(mut self, mode: &str) -> Self {
        self.network = Some(mode.to_owned());
        self
    }

    /// No `network` key (the config's default), for backends that do not use it: the
    /// `[kubernetes]` table's Pods.
    pub fn without_network(mut self) -> Self {
        self.network = None;
        self
    }

    /// More of the app's TOML, written after its `name`, `image` and `network`: keys first
    /// (`port = 9000`, `env = { … }`), then its sub-tables (`[apps.limits]`, `[apps.scale]`).
    /// Appends to what an earlier call gave.
    pub fn with(mut self, toml: &str) -> Self {
        push_lines(&mut self.extra, toml);
        self
    }
}

impl Display for AppToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "[[apps]]\nname = {}\nimage = {}",
            quoted(&self.name),
            quoted(&self.image)
        )?;
        if let Some(mode) = &self.network {
            writeln!(f, "network = {}", quoted(mode))?;
        }
        f.write_str(&self.extra)
    }
}

/// The `[[apps]]` tables of `apps`, one after the other: what the closure given to
/// [`GatewayHarness::start`](crate::GatewayHarness::start) returns.
pub fn apps_toml(apps: impl IntoIterator<Item = AppToml>) -> String {
    apps.into_iter().map(|app| app.to_string()).collect()
}

/// `value` as a TOML string (quoted, escaped).
fn quoted(value: impl Display) -> toml::Value {
    toml::Value::String(value.to_string())
}

/// Appends `toml` to `out`, ending it with a newline.
fn push_lines(out: &mut String, toml: &str) {
    out.push_str(toml);
    if !toml.is_empty() && !toml.ends_with('\n') {
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_tables_in_order_and_quotes_values() {
        let toml = GatewayToml::new()
            .data_dir("/tmp/a \"b\"")
            .top("admin_token = \"0123456789abcdef\"\n[server]\nmax_header_bytes = 16384")
            .containerd("/run/c.sock", "ns")
            .app(AppToml::new("k", "registry.example/hello:1").without_network())
            .app(
                AppToml::archive("web", "/tmp/web.tar")
                    .with("port = 9000")
                    .with("[apps.scale]\nmin = 1\n"),
            )
            .to_string();
        assert_eq!(
            toml,
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             data_dir = '/tmp/a \"b\"'\n\
             admin_token = \"0123456789abcdef\"\n[server]\nmax_header_bytes = 16384\n\
             [containerd]\nsocket = \"/run/c.sock\"\nnamespace = \"ns\"\n\
             [[apps]]\nname = \"k\"\nimage = \"registry.example/hello:1\"\n\
             [[apps]]\nname = \"web\"\nimage = \"oci-archive:/tmp/web.tar\"\nnetwork = \"none\"\n\
             port = 9000\n[apps.scale]\nmin = 1\n"
        );
        let config = serverless_core::Config::from_toml(&toml).expect("valid");
        assert_eq!(config.data_dir, Path::new("/tmp/a \"b\""));
        assert_eq!(config.apps.len(), 2);
    }

    #[test]
    fn apps_toml_joins_tables() {
        let apps = apps_toml([AppToml::new("a", "x/a:1"), AppToml::new("b", "x/b:1")]);
        assert_eq!(apps.matches("[[apps]]").count(), 2);
        assert!(apps.ends_with("network = \"none\"\n"), "{apps}");
    }
}
