//! The checks every config value goes through (a leaf module: the config parser, `AppSpec::validate`
//! and the spec's serializers use it; it uses only the error type): ranges, durations, names and host names. Each
//! failure is a [`ConfigError::Invalid`] naming the field, the value and the accepted range.

use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

/// A duration written as `"5m"`/`"250ms"` or as an integer number of milliseconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawDuration {
    Millis(i64),
    Text(String),
}

/// Serializes durations as humantime strings (`"5m"`), for the normalized config.
pub(crate) mod duration_str {
    use std::time::Duration;

    pub(crate) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

pub(crate) fn int_in<T: TryFrom<i64>>(
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

pub(crate) fn range_text(lo: i64, hi: i64) -> String {
    format!("an integer in {lo}..={hi}")
}

pub(crate) fn duration_range_text(lo: Duration, hi: Duration) -> String {
    format!(
        "a duration in {}..={} (\"250ms\", \"30s\", \"5m\" or integer milliseconds)",
        humantime::format_duration(lo),
        humantime::format_duration(hi)
    )
}

pub(crate) const NAME_FORM: &str =
    "a DNS label: lowercase letters, digits and '-', 1..=63 characters";

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

pub(crate) fn duration_in(
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

pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `host` or `host:port` as in image references: a DNS name (letters kept as written, any case
/// folded by the caller), an IPv4 address or `[IPv6]`, and a port in 1..=65535.
pub(crate) fn is_registry_host(s: &str) -> bool {
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

pub(crate) fn is_host_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}
