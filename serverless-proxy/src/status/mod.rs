//! The status page's data: what the admin listener serves at `/`, `GET /v1/status` and
//! `GET /v1/events`.
//!
//! The pools report instance transitions here (through the engine's observer); a sampler task
//! reads the request counters once a second into a ring buffer per app, so a page opened late
//! still sees the last minutes. Every state frame is complete (apps, instances, stats), so a
//! client that lags behind the bounded broadcast channel only misses frames, never data: the
//! next frame has it all. Sending never waits for a client, so the pools are never blocked.

mod events;
mod history;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use foldhash::HashMap;
use serde_json::{json, Value};
use serverless_core::{BackendError, Exit, InstanceId};
use serverless_limits::StopReason;
use tokio::sync::{broadcast, watch, Notify};

pub(crate) use events::events_response;
use history::History;

/// The page, its style and its script, embedded in the binary (no build step, no CDN).
pub(crate) const PAGE_HTML: &str = include_str!("page.html");
pub(crate) const PAGE_CSS: &str = include_str!("page.css");
pub(crate) const PAGE_JS: &str = include_str!("page.js");

/// Frames a slow events client may fall behind by before it skips (and catches up with the
/// next complete state frame).
const CHANNEL_FRAMES: usize = 64;
/// Transitions kept for the page's event log.
const RECENT_EVENTS: usize = 50;
/// How often the sampler reads the counters and sends a state frame.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// One instance's cold start as its pool reported it.
#[derive(Clone, Debug)]
struct ColdStart {
    total: Duration,
    phases: Vec<(&'static str, Duration)>,
}

#[derive(Default)]
struct Inner {
    /// Cold starts of the instances alive, by instance id.
    cold_starts: HashMap<String, ColdStart>,
    /// The last transitions, newest last.
    recent: VecDeque<Value>,
    /// Request and cold-start history per app.
    history: HashMap<String, History>,
}

/// The status hub: transitions in, frames out. One per engine.
pub(crate) struct Status {
    frames: broadcast::Sender<Bytes>,
    changed: Notify,
    closed: watch::Sender<bool>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("clients", &self.frames.receiver_count())
            .finish_non_exhaustive()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

impl Status {
    pub(crate) fn new() -> Self {
        Self {
            frames: broadcast::channel(CHANNEL_FRAMES).0,
            changed: Notify::new(),
            closed: watch::channel(false).0,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a transition, sends it as an `instance` frame and wakes the sampler for a
    /// fresh state frame. Called from the pools: never waits.
    fn transition(&self, app: &str, id: Option<&InstanceId>, what: &str, detail: Value) {
        let event = json!({
            "at_ms": unix_ms(),
            "app": app,
            "instance": id.map(InstanceId::as_str),
            "event": what,
            "detail": detail,
        });
        {
            let mut inner = self.lock();
            if inner.recent.len() == RECENT_EVENTS {
                inner.recent.pop_front();
            }
            inner.recent.push_back(event.clone());
        }
        let _ = self.frames.send(frame("instance", &event));
        self.changed.notify_one();
    }

    pub(crate) fn starting(&self, app: &str, id: &InstanceId) {
        self.transition(app, Some(id), "starting", Value::Null);
    }

    pub(crate) fn ready(
        &self,
        app: &str,
        id: &InstanceId,
        total: Duration,
        phases: &[(&'static str, Duration)],
    ) {
        let cold = ColdStart {
            total,
            phases: phases.to_vec(),
        };
        {
            let mut inner = self.lock();
            inner
                .history
                .entry(app.to_owned())
                .or_default()
                .cold_start(total);
            inner
                .cold_starts
                .insert(id.as_str().to_owned(), cold.clone());
        }
        self.transition(app, Some(id), "ready", cold_start_json(&cold));
    }

    pub(crate) fn boot_failed(&self, app: &str, error: &BackendError) {
        self.transition(app, None, "boot_failed", json!(error.to_string()));
    }

    pub(crate) fn crashed(&self, app: &str, id: &InstanceId, exit: Exit) {
        self.transition(app, Some(id), "crashed", json!(exit.to_string()));
    }

    pub(crate) fn stopped(&self, app: &str, id: &InstanceId, reason: StopReason) {
        self.transition(app, Some(id), "stopped", json!(reason.as_str()));
    }

    pub(crate) fn removed(&self, id: &InstanceId) {
        self.lock().cold_starts.remove(id.as_str());
    }

    /// Ends every events stream (the gateway is stopping: open streams must not hold its
    /// graceful drain).
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The whole status as JSON: every app with its spec, instances and stats.
    pub(crate) fn json(&self, engine: &crate::Engine) -> Value {
        let apps = engine.apps();
        let inner = self.lock();
        let apps: Vec<Value> = apps
            .iter()
            .map(|app| {
                let spec = &app.spec;
                let snap = app.pool.snapshot();
                let instances: Vec<Value> = snap
                    .instances
                    .iter()
                    .map(|i| {
                        json!({
                            "id": i.id.as_str(),
                            "state": i.state.as_str(),
                            "in_flight": i.in_flight,
                            "age_ms": i.age.as_millis() as u64,
                            "cold_start": inner.cold_starts.get(i.id.as_str()).map(cold_start_json),
                        })
                    })
                    .collect();
                let stats = inner
                    .history
                    .get(&spec.name)
                    .map_or_else(|| History::default().json(), History::json);
                json!({
                    "name": spec.name,
                    "image": spec.image.to_string(),
                    "hosts": spec.hosts,
                    "slot": spec.slot.to_string(),
                    "scale": {
                        "min": spec.scale.min,
                        "max": spec.scale.max,
                        "standby": spec.scale.standby,
                    },
                    "limits": {
                        "max_concurrent_requests": spec.limits.max_concurrent_requests,
                        "max_queued_requests": spec.limits.max_queued_requests,
                        "idle_timeout_ms": spec.limits.idle_timeout.as_millis() as u64,
                        "queue_timeout_ms": spec.limits.queue_timeout.as_millis() as u64,
                        "startup_timeout_ms": spec.limits.startup_timeout.as_millis() as u64,
                    },
                    "queued": snap.queued,
                    "instances": instances,
                    "stats": stats,
                })
            })
            .collect();
        json!({
            "at_ms": unix_ms(),
            "apps": apps,
            "events": inner.recent.iter().rev().collect::<Vec<_>>(),
        })
    }

    /// Reads every app's request counters into its history.
    fn sample(&self, engine: &crate::Engine) {
        let totals = engine.metrics().app_totals();
        let mut inner = self.lock();
        for app in engine.apps() {
            let name = &app.spec.name;
            let now = totals.get(name).copied().unwrap_or_default();
            inner.history.entry(name.clone()).or_default().sample(now);
        }
        let names: Vec<String> = engine.apps().iter().map(|a| a.spec.name.clone()).collect();
        inner.history.retain(|name, _| names.contains(name));
    }
}

fn cold_start_json(cold: &ColdStart) -> Value {
    json!({
        "total_ms": ms(cold.total),
        "phases": cold.phases.iter().map(|(name, d)| json!([name, ms(*d)])).collect::<Vec<_>>(),
    })
}

/// One server-sent event.
fn frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Samples once a [`TICK`] and sends a `state` frame then, and right after a transition,
/// while anyone listens. Holds the engine weakly: it ends when the engine is dropped or closed.
pub(crate) fn spawn_sampler(engine: &crate::Engine) {
    let weak = engine.downgrade();
    let status = engine.status().clone();
    let mut closed = status.closed.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sampled = tokio::select! {
                _ = tick.tick() => true,
                () = status.changed.notified() => false,
                _ = closed.wait_for(|c| *c) => return,
            };
            let Some(engine) = crate::Engine::upgrade(&weak) else {
                return;
            };
            if sampled {
                status.sample(&engine);
            }
            if status.frames.receiver_count() > 0 {
                let _ = status.frames.send(frame("state", &status.json(&engine)));
            }
        }
    });
}

impl Status {
    /// A receiver of frames, and the first frame to send it (the state now).
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        engine: &crate::Engine,
    ) -> (Bytes, broadcast::Receiver<Bytes>, watch::Receiver<bool>) {
        let rx = self.frames.subscribe();
        (
            frame("state", &self.json(engine)),
            rx,
            self.closed.subscribe(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_that_never_reads_neither_blocks_nor_grows_the_hub() {
        let status = Status::new();
        let mut idle = status.frames.subscribe();
        let id = InstanceId::new("web-1-x");
        for _ in 0..(CHANNEL_FRAMES * 10) {
            status.starting("web", &id);
        }
        // The hub kept only its last frames; the idle client learns how many it missed.
        match idle.recv().await {
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                assert_eq!(missed as usize, CHANNEL_FRAMES * 9);
            }
            other => panic!("expected a lag, got {other:?}"),
        }
        assert_eq!(status.lock().recent.len(), RECENT_EVENTS);
    }

    #[test]
    fn frames_are_server_sent_events() {
        let f = frame("state", &json!({"a": 1}));
        assert_eq!(&f[..], b"event: state\ndata: {\"a\":1}\n\n");
    }
}
