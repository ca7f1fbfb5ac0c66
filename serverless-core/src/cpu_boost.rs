//! Startup CPU boost: how much CPU an instance gets while it boots, before it listens.
//!
//! An instance starts with a CPU quota above its slot's and gets its slot's quota the moment it
//! listens: an interpreter that needs 100 ms of CPU to boot would otherwise take 800 ms under a
//! `c.125` slot. The engine bounds it ([`GlobalLimits`](crate::GlobalLimits)): at most
//! `max_boosted_instances` boot boosted at once, each to at most `startup_cpu_boost` vCPU.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

use crate::{ConfigError, Slot};

/// An app's startup CPU boost (`startup_cpu_boost = true | false | <vCPU>`).
///
/// ```
/// use serverless_core::{AppSpec, CpuBoost, ImageRef};
/// let mut app = AppSpec::new("hello", ImageRef::Registry("example/hello:1".into()));
/// assert_eq!(app.startup_cpu_boost, CpuBoost::Max);
/// app.startup_cpu_boost = CpuBoost::Millicpu(100); // below the slot's 0.125 vCPU
/// assert_eq!(
///     app.validate().unwrap_err().field(),
///     Some("startup_cpu_boost")
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CpuBoost {
    /// No boost: the instance boots at its slot (`false`).
    Off,
    /// Boosted to the engine's cap, `[limits] startup_cpu_boost` (`true`, the default).
    #[default]
    Max,
    /// Boosted to this many thousandths of a vCPU, at most the engine's cap (`2`, `0.5`).
    Millicpu(u32),
}

impl CpuBoost {
    /// The quota an instance of `slot` boots with, in thousandths of a vCPU, under an engine cap
    /// of `cap_millicpu`; `None` when that is no more than the slot's (no boost).
    pub fn boosted_millicpu(self, slot: Slot, cap_millicpu: u32) -> Option<u32> {
        let boost = match self {
            Self::Off => return None,
            Self::Max => cap_millicpu,
            Self::Millicpu(m) => m.min(cap_millicpu),
        };
        (boost > slot.millicpu()).then_some(boost)
    }

    /// Checks a per-app amount: above the slot's CPU, at most the host's cores.
    pub(crate) fn check(self, field: &str, slot: Slot) -> Result<(), ConfigError> {
        match self {
            Self::Millicpu(m) if m <= slot.millicpu() || m > host_millicpu() => {
                Err(ConfigError::invalid(field, vcpu(m), app_range(slot)))
            }
            _ => Ok(()),
        }
    }
}

/// What an app's `startup_cpu_boost` accepts.
fn app_range(slot: Slot) -> String {
    format!(
        "true, false or a vCPU amount above the slot's {} and at most the host's {} (up to 3 decimals)",
        vcpu(slot.millicpu()),
        vcpu(host_millicpu())
    )
}

impl Serialize for CpuBoost {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_bool(false),
            Self::Max => s.serialize_bool(true),
            Self::Millicpu(m) => s.serialize_f64(f64::from(*m) / 1000.0),
        }
    }
}

impl fmt::Display for CpuBoost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("false"),
            Self::Max => f.write_str("true"),
            Self::Millicpu(m) => f.write_str(&vcpu(*m)),
        }
    }
}

/// The host's CPUs in thousandths of a vCPU (what this process may run on), at least 1000.
pub fn host_millicpu() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cpus)
        .unwrap_or(u32::MAX / 1000)
        .saturating_mul(1000)
}

/// A vCPU amount as written in the config: `0.125`, `2`.
pub(crate) fn vcpu(millicpu: u32) -> String {
    let (whole, frac) = (millicpu / 1000, millicpu % 1000);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{frac:03}").trim_end_matches('0'))
    }
}

/// A vCPU amount written as an integer or a float, in thousandths; `None` when it is not
/// positive or has more than 3 decimals.
pub(crate) fn parse_vcpu(v: f64) -> Option<u32> {
    let milli = v * 1000.0;
    let rounded = milli.round();
    if !v.is_finite() || rounded < 1.0 || rounded > f64::from(u32::MAX) {
        return None;
    }
    ((milli - rounded).abs() < 1e-6).then_some(rounded as u32)
}

/// `startup_cpu_boost` as written: `true`, `false` or a vCPU amount.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawBoost {
    Switch(bool),
    Vcpu(f64),
}

/// An app's `startup_cpu_boost` (default [`CpuBoost::Max`]), checked against its slot.
pub(crate) fn parse_app(
    field: &str,
    raw: Option<RawBoost>,
    slot: Slot,
) -> Result<CpuBoost, ConfigError> {
    let boost = match raw {
        None | Some(RawBoost::Switch(true)) => CpuBoost::Max,
        Some(RawBoost::Switch(false)) => CpuBoost::Off,
        Some(RawBoost::Vcpu(v)) => match parse_vcpu(v) {
            Some(m) => CpuBoost::Millicpu(m),
            None => return Err(ConfigError::invalid(field, v, app_range(slot))),
        },
    };
    boost.check(field, slot)?;
    Ok(boost)
}

/// `[limits] startup_cpu_boost`: the engine's cap in vCPU, 0.001 up to the host's CPUs.
pub(crate) fn parse_cap(field: &str, raw: Option<f64>, default: u32) -> Result<u32, ConfigError> {
    let Some(v) = raw else {
        return Ok(default);
    };
    let host = host_millicpu();
    match parse_vcpu(v) {
        Some(m) if m <= host => Ok(m),
        _ => Err(ConfigError::invalid(
            field,
            v,
            format!(
                "a vCPU amount in 0.001..={} (the host's CPUs, up to 3 decimals)",
                vcpu(host)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boost_is_above_the_slot_and_within_the_cap() {
        let slot = Slot::DEFAULT;
        assert_eq!(CpuBoost::Max.boosted_millicpu(slot, 2000), Some(2000));
        assert_eq!(CpuBoost::Off.boosted_millicpu(slot, 2000), None);
        assert_eq!(
            CpuBoost::Millicpu(500).boosted_millicpu(slot, 2000),
            Some(500)
        );
        assert_eq!(
            CpuBoost::Millicpu(4000).boosted_millicpu(slot, 2000),
            Some(2000)
        );
        // A cap at or below the slot boosts nothing.
        assert_eq!(CpuBoost::Max.boosted_millicpu(slot, 125), None);
        let big: Slot = "c2-m512".parse().unwrap();
        assert_eq!(CpuBoost::Max.boosted_millicpu(big, 2000), None);
    }

    #[test]
    fn vcpu_amounts_parse_and_print() {
        assert_eq!(parse_vcpu(2.0), Some(2000));
        assert_eq!(parse_vcpu(0.5), Some(500));
        assert_eq!(parse_vcpu(0.125), Some(125));
        assert_eq!(parse_vcpu(0.1255), None);
        assert_eq!(parse_vcpu(0.0), None);
        assert_eq!(parse_vcpu(-1.0), None);
        assert_eq!(parse_vcpu(f64::NAN), None);
        assert_eq!(vcpu(125), "0.125");
        assert_eq!(vcpu(2000), "2");
        assert_eq!(vcpu(1500), "1.5");
        assert!(host_millicpu() >= 1000);
    }
}
