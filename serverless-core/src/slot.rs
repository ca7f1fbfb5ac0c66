//! Resource slots: `c.125-m512` = 0.125 vCPU and 512 MiB.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The slot form, shown in every parse error.
pub const SLOT_FORM: &str = "c<vCPU>-m<MiB> with vCPU in 0.001..=64 (up to 3 decimals) and MiB in 16..=262144, e.g. c.125-m512, c1-m1024, c2-m4096";

/// CPU and memory reserved for one instance, enforced by the runtime (cgroup CPU quota, memory
/// limit without swap, pids limit).
///
/// Parsed from the seed's identifiers:
///
/// ```
/// use serverless_core::Slot;
/// let slot: Slot = "c.125-m512".parse().unwrap();
/// assert_eq!(slot.millicpu(), 125);
/// assert_eq!(slot.memory_mib(), 512);
/// assert_eq!(slot.to_string(), "c.125-m512");
/// assert!("2cpu".parse::<Slot>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slot {
    millicpu: u32,
    memory_mib: u32,
}

impl Slot {
    /// The seed's default slot, `c.125-m512`.
    pub const DEFAULT: Slot = Slot {
        millicpu: 125,
        memory_mib: 512,
    };
    /// The CFS period used to express the CPU quota, in microseconds.
    pub const CPU_PERIOD_US: u64 = 100_000;

    /// Builds a slot from thousandths of a vCPU and MiB, checking the ranges of [`SLOT_FORM`].
    pub fn new(millicpu: u32, memory_mib: u32) -> Result<Self, SlotError> {
        if !(1..=64_000).contains(&millicpu) || !(16..=262_144).contains(&memory_mib) {
            return Err(SlotError(format!("c{}-m{memory_mib}", fmt_cpu(millicpu))));
        }
        Ok(Self {
            millicpu,
            memory_mib,
        })
    }

    /// Thousandths of a vCPU (`c.125` → 125).
    pub const fn millicpu(&self) -> u32 {
        self.millicpu
    }

    /// Memory limit in MiB.
    pub const fn memory_mib(&self) -> u32 {
        self.memory_mib
    }

    /// Memory limit in bytes.
    pub const fn memory_bytes(&self) -> u64 {
        self.memory_mib as u64 * 1024 * 1024
    }

    /// CFS quota in microseconds per [`Slot::CPU_PERIOD_US`].
    pub const fn cpu_quota_us(&self) -> u64 {
        self.millicpu as u64 * Self::CPU_PERIOD_US / 1000
    }
}

impl Default for Slot {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A string that is not a slot identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid slot {0:?}: expected {SLOT_FORM}")]
pub struct SlotError(String);

fn fmt_cpu(millicpu: u32) -> String {
    let whole = millicpu / 1000;
    let frac = millicpu % 1000;
    match (whole, frac) {
        (w, 0) => w.to_string(),
        (0, f) => format!(".{}", format!("{f:03}").trim_end_matches('0')),
        (w, f) => format!("{w}.{}", format!("{f:03}").trim_end_matches('0')),
    }
}

fn parse_millicpu(s: &str) -> Option<u32> {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 3 || whole.len() > 3 {
        return None;
    }
    let whole: u32 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut frac_milli = 0;
    for (i, b) in frac.bytes().enumerate() {
        frac_milli += u32::from(b - b'0') * [100, 10, 1][i];
    }
    Some(whole * 1000 + frac_milli)
}

impl FromStr for Slot {
    type Err = SlotError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SlotError(s.to_owned());
        let rest = s.strip_prefix('c').ok_or_else(err)?;
        let (cpu, mem) = rest.split_once("-m").ok_or_else(err)?;
        let millicpu = parse_millicpu(cpu).ok_or_else(err)?;
        if mem.is_empty() || mem.len() > 6 || !mem.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let memory_mib: u32 = mem.parse().map_err(|_| err())?;
        Slot::new(millicpu, memory_mib).map_err(|_| err())
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}-m{}", fmt_cpu(self.millicpu), self.memory_mib)
    }
}

impl TryFrom<String> for Slot {
    type Error = SlotError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Slot> for String {
    fn from(s: Slot) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seed_identifiers() {
        for (s, cpu, mem) in [
            ("c.125-m512", 125, 512),
            ("c1-m1024", 1000, 1024),
            ("c2-m4096", 2000, 4096),
            ("c.5-m256", 500, 256),
            ("c0.25-m128", 250, 128),
            ("c1.5-m2048", 1500, 2048),
        ] {
            let slot: Slot = s.parse().unwrap();
            assert_eq!((slot.millicpu(), slot.memory_mib()), (cpu, mem), "{s}");
        }
    }

    #[test]
    fn round_trips_canonical_form() {
        for s in [
            "c.125-m512",
            "c1-m1024",
            "c2-m4096",
            "c.5-m256",
            "c1.5-m64",
            "c.001-m16",
        ] {
            assert_eq!(s.parse::<Slot>().unwrap().to_string(), s);
        }
        assert_eq!(
            "c0.500-m256".parse::<Slot>().unwrap().to_string(),
            "c.5-m256"
        );
    }

    #[test]
    fn rejects_other_forms_with_expected_form() {
        for s in [
            "",
            "c",
            "c-m",
            "c.125",
            "m512",
            "c.125-512",
            "c.125m512",
            "c.1255-m512",
            "c0-m512",
            "c65-m512",
            "c1-m8",
            "c1-m999999",
            "C1-m512",
            "c1-M512",
            "c1-m512 ",
            "c+1-m5",
            "c.-m512",
            "c1-m-5",
            "c1e3-m5",
        ] {
            let err = s.parse::<Slot>().unwrap_err();
            assert!(err.to_string().contains("c.125-m512"), "{s}: {err}");
        }
    }

    #[test]
    fn quota_follows_cpu() {
        let slot: Slot = "c.125-m512".parse().unwrap();
        assert_eq!(slot.cpu_quota_us(), 12_500);
        assert_eq!(slot.memory_bytes(), 512 << 20);
    }
}
