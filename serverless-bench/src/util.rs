//! Shared helpers: errors with context, statistics, machine description, result files.

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

pub(crate) use serverless_testkit::BoxError;
pub(crate) type Res<T> = Result<T, BoxError>;

/// Adds a "while doing X" prefix to any error.
pub(crate) trait Context<T> {
    fn context(self, what: impl Display) -> Res<T>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, what: impl Display) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}").into())
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Display) -> Res<T> {
        self.ok_or_else(|| what.to_string().into())
    }
}

/// min / percentiles / max of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, Default)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) min: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

/// Nearest-rank percentile of a sorted slice.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn summary(values: &[f64]) -> Summary {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Summary::default();
    }
    Summary {
        n: v.len(),
        min: v[0],
        p50: percentile(&v, 50.0),
        p90: percentile(&v, 90.0),
        p99: percentile(&v, 99.0),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

/// The summary of `a[i] - b[i]` over the `samples` of modes `a` and `b` in a scenario's
/// `value`: what one mode costs over another when each pair of samples ran back to back,
/// steadier than the difference of two medians on a noisy machine.
pub(crate) fn paired_difference(value: &serde_json::Value, a: &str, b: &str) -> Summary {
    let samples = |k: &str| -> Vec<f64> {
        value[k]["samples"]
            .as_array()
            .map(|s| s.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    let d: Vec<f64> = samples(a)
        .iter()
        .zip(samples(b))
        .map(|(x, y)| x - y)
        .collect();
    summary(&d)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The 1-minute load average and the number of running compiler processes (noise indicators).
pub(crate) fn noise() -> serde_json::Value {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    let mut compilers = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
                let c = comm.trim();
                if c == "rustc" || c == "cc1" || c == "cc1plus" || c == "ld" {
                    compilers += 1;
                }
            }
        }
    }
    serde_json::json!({ "loadavg1": load, "compiler_processes": compilers })
}

pub(crate) fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Res<()> {
    std::fs::create_dir_all(dir).context(format_args!("create {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)
        .context(format_args!("write {}", path.display()))?;
    Ok(())
}

/// Prints a `name=value` summary line (what scripts read).
pub(crate) fn headline(name: &str, value: impl Display) {
    println!("{name}={value}");
}
