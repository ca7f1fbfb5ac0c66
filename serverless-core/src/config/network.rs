//! Networking: an app's mode (`network = "bridge" | "none"`) and the engine-wide `[network]`
//! table (subnet, bridge name, nameservers), with their validation.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// How an app's instances are networked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A veth into the engine's bridge, an address from its subnet, NAT for egress and DNS;
    /// nothing but the gateway may open a connection to the instance. The default: apps
    /// reach their databases and APIs, as on Cloud Run, Knative or Fly.
    #[default]
    Bridge,
    /// Loopback only: the instance can reach nothing and nothing but the gateway reaches it.
    None,
}

/// What `network` accepts.
pub(crate) const MODE_FORM: &str =
    "\"bridge\" (egress through NAT, DNS) or \"none\" (loopback only)";

impl FromStr for NetworkMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "bridge" => Ok(Self::Bridge),
            "none" => Ok(Self::None),
            _ => Err(ConfigError::invalid("network", format!("{s:?}"), MODE_FORM)),
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bridge => "bridge",
            Self::None => "none",
        })
    }
}

/// An IPv4 network: an address without host bits and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Subnet {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Ipv4Subnet {
    /// The netmask as an integer.
    pub fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// Whether `ip` is inside.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether the two share an address.
    pub fn overlaps(self, other: Ipv4Subnet) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.addr) & mask == u32::from(other.addr) & mask
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Ipv4Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Engine-wide networking of `bridge` instances (the `[network]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkConfig {
    /// The subnet instances get addresses from (default `10.73.0.0/16`; prefix 8..=28). The
    /// bridge holds its first address and is the instances' gateway.
    pub subnet: Ipv4Subnet,
    /// The bridge's interface name (default `sls0`).
    pub bridge: String,
    /// Nameservers written into each instance's `/etc/resolv.conf`; `None` (the default) takes
    /// the host's at engine start, without loopback ones ([`host_nameservers`]).
    pub nameservers: Option<Vec<IpAddr>>,
}

impl NetworkConfig {
    /// The default subnet.
    pub const DEFAULT_SUBNET: Ipv4Subnet = Ipv4Subnet {
        addr: Ipv4Addr::new(10, 73, 0, 0),
        prefix: 16,
    };
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            subnet: Self::DEFAULT_SUBNET,
            bridge: "sls0".to_owned(),
            nameservers: None,
        }
    }
}

/// The nameservers of a `resolv.conf` text an instance can use: loopback resolvers (a local
/// stub such as systemd-resolved's `127.0.0.53`) are skipped, since inside an instance's
/// namespace loopback is the instance's own.
///
/// ```
/// use serverless_core::config::host_nameservers;
/// let text = "nameserver 127.0.0.53\nnameserver 192.0.2.53 # primary\nsearch example\n";
/// assert_eq!(host_nameservers(text), ["192.0.2.53".parse::<std::net::IpAddr>().unwrap()]);
/// ```
pub fn host_nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then_some(words.next())?
        })
        .filter_map(|w| w.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect()
}

/// The accepted prefix lengths of `network.subnet`: room for at least 14 instances, and no
/// wider than a /8.
const PREFIX: (u8, u8) = (8, 28);
/// glibc reads at most three nameservers.
const MAX_NAMESERVERS: usize = 3;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    subnet: Option<String>,
    bridge: Option<String>,
    nameservers: Option<Vec<String>>,
}

impl RawNetwork {
    pub(super) fn validate(self) -> Result<NetworkConfig, ConfigError> {
        let mut config = NetworkConfig::default();
        if let Some(text) = self.subnet {
            config.subnet = parse_subnet(&text).ok_or_else(|| {
                ConfigError::invalid(
                    "network.subnet",
                    format!("{text:?}"),
                    format!(
                        "an IPv4 network in CIDR form without host bits, prefix {}..={}, e.g. \"10.73.0.0/16\"",
                        PREFIX.0, PREFIX.1
                    ),
                )
            })?;
        }
        if let Some(bridge) = self.bridge {
            check_ifname(&bridge)?;
            config.bridge = bridge;
        }
        if let Some(list) = self.nameservers {
            if list.is_empty() || list.len() > MAX_NAMESERVERS {
                return Err(ConfigError::invalid(
                    "network.nameservers",
                    format!("{list:?}"),
                    format!("1..={MAX_NAMESERVERS} addresses (leave it out for the host's)"),
                ));
            }
            let mut ips = Vec::with_capacity(list.len());
            for (i, text) in list.iter().enumerate() {
                match text.parse::<IpAddr>() {
                    Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() => ips.push(ip),
                    _ => {
                        return Err(ConfigError::invalid(
                            format!("network.nameservers[{i}]"),
                            format!("{text:?}"),
                            "an IP address an instance can reach (not loopback or unspecified)",
                        ))
                    }
                }
            }
            config.nameservers = Some(ips);
        }
        Ok(config)
    }
}

fn parse_subnet(text: &str) -> Option<Ipv4Subnet> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    if !(PREFIX.0..=PREFIX.1).contains(&prefix) {
        return None;
    }
    let subnet = Ipv4Subnet { addr, prefix };
    (u32::from(addr) & !subnet.mask() == 0).then_some(subnet)
}

/// A Linux interface name: 1..=15 bytes of letters, digits, `-`, `_` and `.`.
fn check_ifname(name: &str) -> Result<(), ConfigError> {
    let ok = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "network.bridge",
            format!("{name:?}"),
            "an interface name: 1..=15 letters, digits, '-', '_' or '.'",
        ))
    }
}

/// An app's `network` key.
pub(super) fn parse_mode(field: &str, text: Option<String>) -> Result<NetworkMode, ConfigError> {
    match text {
        None => Ok(NetworkMode::default()),
        Some(t) => t
            .parse()
            .map_err(|_| ConfigError::invalid(field, format!("{t:?}"), MODE_FORM)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    const APP: &str = "[[apps]]\nname = \"hello\"\nimage = \"oci-archive:./hello.tar\"\n";

    fn invalid(text: &str) -> (String, String, String) {
        match Config::from_toml(text) {
            Err(ConfigError::Invalid {
                field,
                value,
                expected,
            }) => (field, value, expected),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_a_full_table() {
        let c = Config::from_toml(APP).unwrap();
        assert_eq!(c.network, NetworkConfig::default());
        assert_eq!(c.network.subnet.to_string(), "10.73.0.0/16");
        assert_eq!(c.apps[0].network, NetworkMode::Bridge);
        let c = Config::from_toml(&format!(
            "[network]\nsubnet = \"172.31.8.0/24\"\nbridge = \"br-sls\"\nnameservers = [\"192.0.2.53\", \"2001:db8::53\"]\n{APP}network = \"none\"\n"
        ))
        .unwrap();
        assert_eq!(c.network.subnet.to_string(), "172.31.8.0/24");
        assert_eq!(c.network.bridge, "br-sls");
        assert_eq!(c.network.nameservers.as_ref().unwrap().len(), 2);
        assert_eq!(c.apps[0].network, NetworkMode::None);
    }

    #[test]
    fn every_key_is_validated() {
        for (text, field, value, expected) in [
            (
                "subnet = \"10.73.0.1/16\"",
                "network.subnet",
                "\"10.73.0.1/16\"",
                "8..=28",
            ),
            (
                "subnet = \"10.0.0.0/30\"",
                "network.subnet",
                "\"10.0.0.0/30\"",
                "8..=28",
            ),
            (
                "subnet = \"10.0.0.0\"",
                "network.subnet",
                "\"10.0.0.0\"",
                "CIDR",
            ),
            (
                "subnet = \"fd00::/64\"",
                "network.subnet",
                "\"fd00::/64\"",
                "IPv4",
            ),
            (
                "bridge = \"a-very-long-bridge\"",
                "network.bridge",
                "\"a-very-long-bridge\"",
                "1..=15",
            ),
            ("bridge = \"br 0\"", "network.bridge", "\"br 0\"", "letters"),
            ("nameservers = []", "network.nameservers", "[]", "1..=3"),
            (
                "nameservers = [\"127.0.0.53\"]",
                "network.nameservers[0]",
                "\"127.0.0.53\"",
                "not loopback",
            ),
            (
                "nameservers = [\"1.1.1.1\", \"dns\"]",
                "network.nameservers[1]",
                "\"dns\"",
                "IP address",
            ),
        ] {
            let (f, v, e) = invalid(&format!("[network]\n{text}\n{APP}"));
            assert_eq!((f.as_str(), v.as_str()), (field, value), "{text}");
            assert!(e.contains(expected), "{text}: {e}");
        }
        let (f, v, e) = invalid(&format!("{APP}network = \"host\"\n"));
        assert_eq!((f.as_str(), v.as_str()), ("apps[0].network", "\"host\""));
        assert!(e.contains("\"bridge\"") && e.contains("\"none\""), "{e}");
    }

    #[test]
    fn json_app_spec_and_now_json_take_the_mode() {
        let app = crate::AppSpec::from_json(
            r#"{"name": "hello", "image": "oci-archive:/x.tar", "network": "none"}"#,
        )
        .unwrap();
        assert_eq!(app.network, NetworkMode::None);
        let err = crate::AppSpec::from_json(
            r#"{"name": "hello", "image": "oci-archive:/x.tar", "network": "nat"}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid network = \"nat\""),
            "{err}"
        );
        let now =
            Config::from_now_json(r#"{"name": "hello", "image": "oci-archive:/x.tar"}"#).unwrap();
        assert_eq!(now.apps[0].network, NetworkMode::Bridge);
        let now = Config::from_now_json(
            r#"{"name": "hello", "image": "oci-archive:/x.tar", "network": "none"}"#,
        )
        .unwrap();
        assert_eq!(now.apps[0].network, NetworkMode::None);
    }

    #[test]
    fn subnets_contain_and_overlap() {
        let s = parse_subnet("10.73.0.0/16").unwrap();
        assert!(s.contains(Ipv4Addr::new(10, 73, 200, 1)));
        assert!(!s.contains(Ipv4Addr::new(10, 74, 0, 1)));
        assert!(s.overlaps(parse_subnet("10.0.0.0/8").unwrap()));
        assert!(!s.overlaps(parse_subnet("192.0.2.0/24").unwrap()));
    }

    #[test]
    fn loopback_resolvers_are_skipped() {
        let text = "# generated\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.255.255.53\noptions edns0\n";
        assert_eq!(
            host_nameservers(text),
            ["10.255.255.53".parse::<IpAddr>().unwrap()]
        );
        assert!(host_nameservers("nameserver 127.0.0.1\n").is_empty());
    }
}
