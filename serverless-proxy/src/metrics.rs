//! Prometheus metrics (`GET /metrics` on the admin listener).

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serverless_core::{BackendError, Exit, InstanceId};
use serverless_limits::{InstanceState, PoolObserver, PoolSnapshot};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppCode {
    app: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppPhase {
    app: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppState {
    app: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppCause {
    app: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppReason {
    app: String,
    reason: String,
}

/// Buckets of the status page's latency counts: up to 0.5 ms, 1 ms, … doubling (the
/// `request_duration_seconds` buckets), and everything above the last.
pub(crate) const LATENCY_BUCKETS: usize = 17;
/// Their upper bounds in ms (the last bucket has none: it reports the last bound).
pub(crate) const LATENCY_BOUNDS_MS: [f64; LATENCY_BUCKETS - 1] = {
    let mut bounds = [0.5; LATENCY_BUCKETS - 1];
    let mut i = 1;
    while i < bounds.len() {
        bounds[i] = bounds[i - 1] * 2.0;
        i += 1;
    }
    bounds
};

/// One app's counters as the status page samples them (prometheus-client's histograms do not
/// give their buckets back).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AppTotals {
    /// Requests answered.
    pub(crate) requests: u64,
    /// Of which with a 5xx status.
    pub(crate) errors: u64,
    /// Requests per latency bucket.
    pub(crate) latency: [u64; LATENCY_BUCKETS],
}

/// One app's request metrics, shared with the families.
#[derive(Debug)]
struct AppRequests {
    duration: Histogram,
    codes: Mutex<Vec<(u16, Counter)>>,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl AppRequests {
    fn count(&self, metrics: &Metrics, app: &str, code: u16, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        let half_ms = (elapsed.as_micros() as u64).saturating_sub(1) / 500;
        let bucket = (u64::BITS - half_ms.leading_zeros()) as usize;
        self.latency[bucket.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, counter)) = codes.iter().find(|(c, _)| *c == code) {
            counter.inc();
            return;
        }
        let counter = metrics
            .requests
            .get_or_create(&AppCode {
                app: app.to_owned(),
                code,
            })
            .clone();
        counter.inc();
        codes.push((code, counter));
    }
}

/// The engine's metrics.
#[derive(Debug)]
pub struct Metrics {
    by_app: RwLock<HashMap<String, AppRequests>>,
    registry: Mutex<Registry>,
    requests: Family<AppCode, Counter>,
    duration: Family<AppLabel, Histogram>,
    cold_start: Family<AppPhase, Histogram>,
    instances: Family<AppState, Gauge>,
    queue: Family<AppLabel, Gauge>,
    boot_failures: Family<AppLabel, Counter>,
    crashes: Family<AppLabel, Counter>,
    stops: Family<AppReason, Counter>,
    upstream_errors: Family<AppCause, Counter>,
    body_failures: Family<AppLabel, Counter>,
    parked: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let requests = Family::<AppCode, Counter>::default();
        let duration = Family::<AppLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let cold_start = Family::<AppPhase, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let instances = Family::<AppState, Gauge>::default();
        let queue = Family::<AppLabel, Gauge>::default();
        let boot_failures = Family::<AppLabel, Counter>::default();
        let crashes = Family::<AppLabel, Counter>::default();
        let stops = Family::<AppReason, Counter>::default();
        let upstream_errors = Family::<AppCause, Counter>::default();
        let body_failures = Family::<AppLabel, Counter>::default();
        let parked = Counter::default();
        let mut registry = Registry::with_prefix("serverless");
        registry.register(
            "requests",
            "Requests answered, by app and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to response headers",
            duration.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "Instance start time by phase (total = start to listening)",
            cold_start.clone(),
        );
        registry.register("instances", "Instances by state", instances.clone());
        registry.register(
            "queue_depth",
            "Requests waiting for an instance",
            queue.clone(),
        );
        registry.register(
            "boot_failures",
            "Instances that failed to start",
            boot_failures.clone(),
        );
        registry.register("crashes", "Instances that exited unasked", crashes.clone());
        registry.register(
            "instance_stops",
            "Instances stopped, by reason",
            stops.clone(),
        );
        registry.register(
            "upstream_errors",
            "Requests an instance failed (no answer, a bad answer, a body cut short), by cause",
            upstream_errors.clone(),
        );
        registry.register(
            "response_body_failures",
            "Requests that failed after their response head (counted in requests by their \
             status too): the body was cut short",
            body_failures.clone(),
        );
        registry.register(
            "connections_parked",
            "Idle HTTP/1 client connections parked (their buffers given back)",
            parked.clone(),
        );
        Self {
            by_app: RwLock::new(HashMap::default()),
            registry: Mutex::new(registry),
            requests,
            duration,
            cold_start,
            instances,
            queue,
            boot_failures,
            crashes,
            stops,
            upstream_errors,
            body_failures,
            parked,
        }
    }

    /// The count of parked client connections (the server increments it).
    pub(crate) fn connections_parked(&self) -> Counter {
        self.parked.clone()
    }

    /// Counts one answered request.
    pub fn request(&self, app: &str, code: u16, elapsed: Duration) {
        // The families are keyed by owned labels; the handles per app (shared counters) spare
        // every request two label allocations and two family lookups.
        {
            let by_app = self.by_app.read().unwrap_or_else(|e| e.into_inner());
            if let Some(handles) = by_app.get(app) {
                handles.count(self, app, code, elapsed);
                return;
            }
        }
        let handles = AppRequests {
            duration: self
                .duration
                .get_or_create(&AppLabel {
                    app: app.to_owned(),
                })
                .clone(),
            codes: Mutex::new(Vec::new()),
            latency: Default::default(),
        };
        handles.count(self, app, code, elapsed);
        self.by_app
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.to_owned())
            .or_insert(handles);
    }

    /// Every app's request counters (apps that answered no request yet are missing).
    pub(crate) fn app_totals(&self) -> HashMap<String, AppTotals> {
        let by_app = self.by_app.read().unwrap_or_else(|e| e.into_inner());
        by_app
            .iter()
            .map(|(app, handles)| {
                let mut totals = AppTotals::default();
                for (code, counter) in handles
                    .codes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                {
                    totals.requests += counter.get();
                    if *code >= 500 {
                        totals.errors += counter.get();
                    }
                }
                for (total, n) in totals.latency.iter_mut().zip(&handles.latency) {
                    *total = n.load(Ordering::Relaxed);
                }
                (app.clone(), totals)
            })
            .collect()
    }

    /// The Prometheus text exposition, with the instance and queue gauges set from `pools`
    /// (one snapshot per app, e.g. [`Engine::snapshots`](crate::Engine::snapshots)).
    pub fn encode(&self, pools: &[PoolSnapshot]) -> String {
        self.instances.clear();
        self.queue.clear();
        for snap in pools {
            for state in [
                InstanceState::Starting,
                InstanceState::Ready,
                InstanceState::Draining,
            ] {
                let n = snap.instances.iter().filter(|i| i.state == state).count();
                self.instances
                    .get_or_create(&AppState {
                        app: snap.app.clone(),
                        state: state.as_str().to_owned(),
                    })
                    .set(n as i64);
            }
            self.queue
                .get_or_create(&AppLabel {
                    app: snap.app.clone(),
                })
                .set(snap.queued as i64);
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

impl PoolObserver for Metrics {
    fn cold_start(&self, app: &str, total: Duration, phases: &[(&'static str, Duration)]) {
        let observe = |phase: &str, d: Duration| {
            self.cold_start
                .get_or_create(&AppPhase {
                    app: app.to_owned(),
                    phase: phase.to_owned(),
                })
                .observe(d.as_secs_f64());
        };
        for (phase, d) in phases {
            observe(phase, *d);
        }
        observe("total", total);
    }

    fn boot_failed(&self, app: &str, _error: &BackendError) {
        self.boot_failures
            .get_or_create(&AppLabel {
                app: app.to_owned(),
            })
            .inc();
    }

    fn crashed(&self, app: &str, _id: &InstanceId, _exit: Exit) {
        self.crashes
            .get_or_create(&AppLabel {
                app: app.to_owned(),
            })
            .inc();
    }

    fn stopped(&self, app: &str, _id: &InstanceId, reason: serverless_limits::StopReason) {
        self.stops
            .get_or_create(&AppReason {
                app: app.to_owned(),
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }
}

impl crate::ForwardObserver for Metrics {
    fn upstream_failed(&self, error: &crate::ForwardError) {
        // Failures only: the label allocation is not on the path of a request that succeeds.
        self.upstream_errors
            .get_or_create(&AppCause {
                app: error.app().to_owned(),
                cause: error.cause().as_str(),
            })
            .inc();
        if error.is_body() {
            self.body_failures
                .get_or_create(&AppLabel {
                    app: error.app().to_owned(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_totals_count_codes_errors_and_latency_buckets() {
        let m = Metrics::new();
        m.request("web", 200, Duration::ZERO);
        m.request("web", 200, Duration::from_micros(500));
        m.request("web", 200, Duration::from_micros(501));
        m.request("web", 503, Duration::from_millis(3));
        m.request("web", 200, Duration::from_secs(60));
        let t = m.app_totals()["web"];
        assert_eq!((t.requests, t.errors), (5, 1));
        // ≤ 0.5 ms: two; ≤ 1 ms: one; ≤ 4 ms: one; above the last bound (16.4 s): one.
        assert_eq!(t.latency[0], 2);
        assert_eq!(t.latency[1], 1);
        assert_eq!(t.latency[3], 1);
        assert_eq!(t.latency[LATENCY_BUCKETS - 1], 1);
        assert_eq!(LATENCY_BOUNDS_MS[3], 4.0);
        assert_eq!(LATENCY_BOUNDS_MS[LATENCY_BUCKETS - 2], 16384.0);
    }
}
