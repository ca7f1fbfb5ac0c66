//! The idle connections kept per instance, for reuse: lean HTTP/1.1 connections, hyper's
//! HTTP/1.1 connections (one request at a time each), and one multiplexed HTTP/2 connection per
//! instance for h2c apps. A connection is checked out for a request and checked in when its
//! response body ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use foldhash::HashMap;
use hyper::client::conn::{http1, http2};
use serverless_core::{ContainerBackend, InstanceId};
use tokio::time::Instant;

use crate::body::{ForwardBody, Outgoing};
use crate::h1;

/// Idle HTTP/1.1 connections older than this are closed instead of reused (apps may close
/// idle keep-alive connections themselves; a fresh dial into the instance is cheap).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many idle HTTP/1.1 connections are kept per instance.
const MAX_IDLE_PER_INSTANCE: usize = 256;

/// An idle hyper HTTP/1.1 connection and since when it is idle.
struct IdleHttp1<B> {
    sender: http1::SendRequest<Outgoing<B>>,
    since: Instant,
}

type LeanLists = HashMap<InstanceId, Vec<(h1::Conn, Instant)>>;
type Http1Lists<B> = HashMap<InstanceId, VecDeque<IdleHttp1<B>>>;
type Http2Conns<B> = HashMap<InstanceId, http2::SendRequest<Outgoing<B>>>;

/// What every clone of [`Upstreams`](super::Upstreams) shares: the backend that dials
/// instances, and the idle connections per instance.
pub(super) struct Shared<B> {
    pub(super) backend: Arc<dyn ContainerBackend>,
    /// Whether lean-eligible requests go through the lean client (else through hyper's).
    pub(super) lean: bool,
    lean_idle: Mutex<LeanLists>,
    /// Whether the task that closes stale idle lean connections runs.
    sweeping: AtomicBool,
    http1_idle: Mutex<Http1Lists<B>>,
    http2: Mutex<Http2Conns<B>>,
}

impl<B: ForwardBody> Shared<B> {
    pub(super) fn new(backend: Arc<dyn ContainerBackend>, lean: bool) -> Self {
        Self {
            backend,
            lean,
            lean_idle: Mutex::new(HashMap::default()),
            sweeping: AtomicBool::new(false),
            http1_idle: Mutex::new(HashMap::default()),
            http2: Mutex::new(HashMap::default()),
        }
    }

    fn lean_idle(&self) -> MutexGuard<'_, LeanLists> {
        self.lean_idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn http1_idle(&self) -> MutexGuard<'_, Http1Lists<B>> {
        self.http1_idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn http2(&self) -> MutexGuard<'_, Http2Conns<B>> {
        self.http2.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle lean connection that still looks open and is young enough.
    pub(super) fn checkout_lean(&self, instance: &InstanceId) -> Option<h1::Conn> {
        let mut idle = self.lean_idle();
        let list = idle.get_mut(instance)?;
        let now = Instant::now();
        let found = loop {
            let Some((mut conn, since)) = list.pop() else {
                break None;
            };
            if now.duration_since(since) >= IDLE_TIMEOUT {
                list.clear();
                break None;
            }
            if conn.is_usable() {
                break Some(conn);
            }
        };
        // An emptied list stays (its room is reused when the connection comes back); the
        // sweep and `forget` remove it.
        found
    }

    /// Keeps a lean connection whose response is complete for the next request.
    pub(super) fn checkin_lean(self: &Arc<Self>, instance: &InstanceId, conn: h1::Conn) {
        {
            let mut idle = self.lean_idle();
            let list = idle.entry(instance.clone()).or_default();
            if list.len() < MAX_IDLE_PER_INSTANCE {
                list.push((conn, Instant::now()));
            }
        }
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            // Nothing watches an idle lean connection: every so often, close the ones that
            // expired or that their instance closed. Ends with the last `Upstreams`.
            let shared = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match shared.upgrade() {
                        Some(shared) => shared.sweep_lean(),
                        None => break,
                    }
                }
            });
        }
    }

    /// Closes idle lean connections that are too old or that their instance closed (nothing
    /// watches them while they sit idle).
    pub(super) fn sweep_lean(&self) {
        let now = Instant::now();
        let mut idle = self.lean_idle();
        idle.retain(|_, list| {
            list.retain_mut(|(conn, since)| {
                now.duration_since(*since) < IDLE_TIMEOUT && conn.is_usable()
            });
            !list.is_empty()
        });
    }

    /// The most recently used idle hyper HTTP/1.1 connection that is ready, still open and
    /// young enough.
    pub(super) fn checkout_http1(
        &self,
        instance: &InstanceId,
    ) -> Option<http1::SendRequest<Outgoing<B>>> {
        let mut idle = self.http1_idle();
        let list = idle.get_mut(instance)?;
        let now = Instant::now();
        // Checked in at its body's end, a connection is ready once its task has seen that end
        // too (on a multi-thread runtime that may be a moment later): such ones stay listed.
        let mut not_yet = Vec::new();
        let found = loop {
            let Some(conn) = list.pop_back() else {
                break None;
            };
            if now.duration_since(conn.since) >= IDLE_TIMEOUT {
                // Everything before it is older still.
                list.clear();
                break None;
            }
            if conn.sender.is_ready() {
                break Some(conn.sender);
            }
            if !conn.sender.is_closed() {
                not_yet.push(conn);
            }
        };
        list.extend(not_yet.into_iter().rev());
        if list.is_empty() {
            idle.remove(instance);
        }
        found
    }

    /// Keeps a hyper HTTP/1.1 connection whose response is complete for the next request.
    pub(super) fn checkin_http1(
        &self,
        instance: InstanceId,
        sender: http1::SendRequest<Outgoing<B>>,
    ) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.http1_idle();
        let list = idle.entry(instance).or_default();
        if list.len() < MAX_IDLE_PER_INSTANCE {
            list.push_back(IdleHttp1 {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Forgets closed connections of an instance (called when one of its connections ends).
    pub(super) fn prune(&self, instance: &InstanceId) {
        {
            let mut idle = self.http1_idle();
            if let Some(list) = idle.get_mut(instance) {
                list.retain(|c| !c.sender.is_closed());
                if list.is_empty() {
                    idle.remove(instance);
                }
            }
        }
        let mut h2 = self.http2();
        if h2.get(instance).is_some_and(|s| s.is_closed()) {
            h2.remove(instance);
        }
    }

    /// Closes every connection kept for `instance`.
    pub(super) fn forget(&self, instance: &InstanceId) {
        self.lean_idle().remove(instance);
        self.http1_idle().remove(instance);
        self.http2().remove(instance);
    }

    /// Idle lean connections kept, over all instances.
    #[cfg(test)]
    pub(super) fn lean_idle_count(&self) -> usize {
        self.lean_idle().values().map(Vec::len).sum()
    }

    /// Idle HTTP/1.1 connections kept for `instance`.
    #[cfg(test)]
    pub(super) fn idle(&self, instance: &InstanceId) -> usize {
        self.http1_idle().get(instance).map_or(0, VecDeque::len)
            + self.lean_idle().get(instance).map_or(0, Vec::len)
    }
}
