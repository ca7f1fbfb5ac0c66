//! The sandbox: an app's `[apps.security]` table (`seccomp`, `init`, `userns`,
//! `capabilities.add`), the engine's `[security]` table (the user-namespace range), and their
//! validation. What each default does is in docs/src/operations.md ("Security model").

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The seccomp filter an app's instances run under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Seccomp {
    /// The engine's default allow-list (Docker's and containerd's RuntimeDefault equivalent):
    /// any other system call fails with `EPERM`.
    #[default]
    Default,
    /// No filter at all.
    Unconfined,
    /// An OCI seccomp profile (the `linux.seccomp` object of a runtime spec) read from this file.
    Profile(PathBuf),
}

impl fmt::Display for Seccomp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Unconfined => f.write_str("unconfined"),
            Self::Profile(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Serialize for Seccomp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What `security.seccomp` accepts.
pub(crate) const SECCOMP_FORM: &str = "\"default\" (the RuntimeDefault allow-list), \"unconfined\" (no filter) or the absolute path of an OCI seccomp profile (JSON)";

/// An app's sandbox settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Security {
    /// The seccomp filter (default: [`Seccomp::Default`]).
    pub seccomp: Seccomp,
    /// Run a tiny init (`tini`) as PID 1 in front of the app, so signals reach it and zombies
    /// are reaped (default true).
    pub init: bool,
    /// Run in a user namespace: the instance's root is an unprivileged host uid of the engine's
    /// range ([`SecurityConfig`]), default true. `false` makes the instance's root the host's
    /// root (the documented risk of the rare image that needs it).
    pub userns: bool,
    /// Capabilities added to the default set, as in [`CAPABILITIES`] without `CAP_`.
    /// Written back as the config spells it: `capabilities = { add = […] }`.
    #[serde(rename = "capabilities", serialize_with = "capabilities_table")]
    pub capabilities_add: Vec<String>,
}

/// `capabilities_add` as the `capabilities` table the config and the JSON app spec read, so a
/// serialized spec reads back as itself.
fn capabilities_table<S: serde::Serializer>(add: &[String], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(1))?;
    map.serialize_entry("add", add)?;
    map.end()
}

impl Default for Security {
    fn default() -> Self {
        Self {
            seccomp: Seccomp::Default,
            init: true,
            userns: true,
            capabilities_add: Vec::new(),
        }
    }
}

/// The engine's sandbox settings (`[security]`): the host uid and gid range every instance's
/// user namespace maps onto (container id `n` is host id `userns_base + n`, for `n` below
/// `userns_size`). One range for the whole engine: see docs/src/operations.md, "Security model".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct SecurityConfig {
    /// The host id of the instances' root (default [`SecurityConfig::DEFAULT_USERNS_BASE`]).
    pub userns_base: u32,
    /// How many ids are mapped (default 65536: every id an image's files and users normally
    /// have, `nobody`'s 65534 included).
    pub userns_size: u32,
}

impl SecurityConfig {
    /// The default base: above the ids `useradd` hands out and the subordinate ranges it
    /// writes to `/etc/subuid` for the first users (100000 + 65536 per user).
    pub const DEFAULT_USERNS_BASE: u32 = 2_000_000_000;
    /// The smallest accepted base: below it are ordinary users' ids.
    pub const MIN_USERNS_BASE: u32 = 65536;
    /// The smallest accepted size: an image's ids go up to 65534 (`nobody`).
    pub const MIN_USERNS_SIZE: u32 = 65536;
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            userns_base: Self::DEFAULT_USERNS_BASE,
            userns_size: 65536,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurityConfig {
    pub(super) userns_base: Option<i64>,
    pub(super) userns_size: Option<i64>,
}

impl RawSecurityConfig {
    pub(super) fn validate(self) -> Result<SecurityConfig, ConfigError> {
        let d = SecurityConfig::default();
        let max = i64::from(u32::MAX);
        let size = self.userns_size.unwrap_or(i64::from(d.userns_size));
        let min_size = i64::from(SecurityConfig::MIN_USERNS_SIZE);
        if !(min_size..=max - i64::from(SecurityConfig::MIN_USERNS_BASE)).contains(&size) {
            return Err(ConfigError::invalid(
                "security.userns_size",
                size,
                format!(
                    "{min_size}..={}",
                    max - i64::from(SecurityConfig::MIN_USERNS_BASE)
                ),
            ));
        }
        let base = self.userns_base.unwrap_or(i64::from(d.userns_base));
        let min_base = i64::from(SecurityConfig::MIN_USERNS_BASE);
        // The last mapped id stays below u32::MAX, which is (uid_t)-1, "no id".
        if !(min_base..=max - size).contains(&base) {
            return Err(ConfigError::invalid(
                "security.userns_base",
                base,
                format!(
                    "{min_base}..={} (the range must end below 4294967295)",
                    max - size
                ),
            ));
        }
        Ok(SecurityConfig {
            userns_base: u32::try_from(base).unwrap_or(d.userns_base),
            userns_size: u32::try_from(size).unwrap_or(d.userns_size),
        })
    }
}

/// Every Linux capability `security.capabilities.add` accepts (without `CAP_`).
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

const CAP_FORM: &str =
    "a Linux capability name such as \"NET_BIND_SERVICE\" (with or without \"CAP_\", see the docs' list)";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    pub(super) seccomp: Option<String>,
    pub(super) init: Option<bool>,
    pub(super) userns: Option<bool>,
    pub(super) capabilities: Option<RawCapabilities>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCapabilities {
    pub(super) add: Option<Vec<String>>,
}

/// A capability name as written (`net_bind_service`, `CAP_NET_BIND_SERVICE`) in its canonical
/// form (`NET_BIND_SERVICE`), if it is one.
fn canonical_cap(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES.iter().copied().find(|c| *c == bare)
}

impl RawSecurity {
    pub(super) fn validate(self, prefix: &str) -> Result<Security, ConfigError> {
        let f = |name: &str| format!("{prefix}security.{name}");
        let seccomp = match self.seccomp.as_deref() {
            None | Some("default") => Seccomp::Default,
            Some("unconfined") => Seccomp::Unconfined,
            Some(p) if p.starts_with('/') => Seccomp::Profile(PathBuf::from(p)),
            Some(other) => {
                return Err(ConfigError::invalid(
                    f("seccomp"),
                    format!("{other:?}"),
                    SECCOMP_FORM,
                ))
            }
        };
        let mut capabilities_add = Vec::new();
        for (j, name) in self
            .capabilities
            .and_then(|c| c.add)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let cap = canonical_cap(&name).ok_or_else(|| {
                ConfigError::invalid(
                    f(&format!("capabilities.add[{j}]")),
                    format!("{name:?}"),
                    CAP_FORM,
                )
            })?;
            if !capabilities_add.iter().any(|c| c == cap) {
                capabilities_add.push(cap.to_owned());
            }
        }
        Ok(Security {
            seccomp,
            init: self.init.unwrap_or(true),
            userns: self.userns.unwrap_or(true),
            capabilities_add,
        })
    }
}

impl Security {
    /// Checks a spec built in code by the config file's rules.
    pub(crate) fn check(&self, prefix: &str) -> Result<(), ConfigError> {
        if let Seccomp::Profile(p) = &self.seccomp {
            if !p.is_absolute() {
                return Err(ConfigError::invalid(
                    format!("{prefix}seccomp"),
                    format!("{:?}", p.display().to_string()),
                    SECCOMP_FORM,
                ));
            }
        }
        for (j, name) in self.capabilities_add.iter().enumerate() {
            if !CAPABILITIES.contains(&name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{prefix}capabilities.add[{j}]"),
                    format!("{name:?}"),
                    CAP_FORM,
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Security, ConfigError> {
        let raw: RawSecurity = toml::from_str(toml_text).unwrap();
        raw.validate("apps[0].")
    }

    #[test]
    fn defaults_and_each_key() {
        assert_eq!(parse("").unwrap(), Security::default());
        let s = parse(
            "seccomp = \"unconfined\"\ninit = false\ncapabilities = { add = [\"net_raw\", \"CAP_MKNOD\", \"NET_RAW\"] }",
        )
        .unwrap();
        assert_eq!(s.seccomp, Seccomp::Unconfined);
        assert!(!s.init);
        assert!(s.userns);
        assert!(!parse("userns = false").unwrap().userns);
        assert_eq!(s.capabilities_add, ["NET_RAW", "MKNOD"]);
        assert_eq!(
            parse("seccomp = \"/etc/p.json\"").unwrap().seccomp,
            Seccomp::Profile("/etc/p.json".into())
        );
        assert!(s.check("").is_ok());
    }

    #[test]
    fn errors_name_field_value_and_accepted() {
        let e = parse("seccomp = \"strict\"").unwrap_err().to_string();
        assert!(
            e.contains("apps[0].security.seccomp") && e.contains("\"strict\""),
            "{e}"
        );
        assert!(e.contains("unconfined"), "{e}");
        let e = parse("capabilities = { add = [\"NET_BIND_SERVICE\", \"ROOT\"] }")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("apps[0].security.capabilities.add[1]") && e.contains("\"ROOT\""),
            "{e}"
        );
        assert!(e.contains("NET_BIND_SERVICE"), "{e}");
        assert!(toml::from_str::<RawSecurity>("userns_base = 1").is_err());
        let bad = Security {
            capabilities_add: vec!["cap_kill".into()],
            ..Security::default()
        };
        assert!(bad.check("security.").is_err());
    }

    #[test]
    fn engine_range_defaults_and_bounds() {
        let parse = |t: &str| toml::from_str::<RawSecurityConfig>(t).unwrap().validate();
        assert_eq!(parse("").unwrap(), SecurityConfig::default());
        let c = parse("userns_base = 100000\nuserns_size = 131072").unwrap();
        assert_eq!((c.userns_base, c.userns_size), (100_000, 131_072));
        let e = parse("userns_base = 0").unwrap_err().to_string();
        assert!(
            e.contains("security.userns_base") && e.contains("65536.."),
            "{e}"
        );
        let e = parse("userns_size = 1000").unwrap_err().to_string();
        assert!(
            e.contains("security.userns_size") && e.contains("1000"),
            "{e}"
        );
        let e = parse("userns_base = 4294967000").unwrap_err().to_string();
        assert!(e.contains("4294967295"), "{e}");
    }
}
