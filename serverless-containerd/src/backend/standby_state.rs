//! The standbys' state: what the backend keeps per app ([`AppStandby`]) and which instance took
//! which standby's container. The operations on it are in `standby.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, MutexGuard};

use serverless_core::AppSpec;
use tokio::task::JoinHandle;

use super::task::Created;

/// A created task kept for an app.
pub(super) struct Standby {
    /// Its container id.
    pub(super) container: String,
    pub(super) created: Created,
}

/// What the backend keeps for one app: its standby, or the fill making it.
pub(super) struct AppStandby {
    /// The spec the standby is made for (only a start with an equal spec takes it).
    pub(super) spec: AppSpec,
    /// Which fill is current: an older fill that finishes discards what it made.
    pub(super) generation: u64,
    pub(super) ready: Option<Standby>,
    pub(super) fill: Option<JoinHandle<()>>,
}

impl AppStandby {
    pub(super) fn filling(&self) -> bool {
        self.fill.as_ref().is_some_and(|f| !f.is_finished())
    }
}

/// The parts of an [`AppStandby`] that are no longer wanted.
#[derive(Default)]
pub(super) struct Leftover {
    pub(super) ready: Option<Standby>,
    pub(super) fill: Option<JoinHandle<()>>,
}

impl Leftover {
    pub(super) fn is_empty(&self) -> bool {
        self.ready.is_none() && self.fill.is_none()
    }
}

impl From<AppStandby> for Leftover {
    fn from(app: AppStandby) -> Self {
        Self {
            ready: app.ready,
            fill: app.fill,
        }
    }
}

/// The standbys of a backend and the instances that took one.
#[derive(Default)]
pub(super) struct Standbys {
    /// App name → its standby.
    pub(super) apps: Mutex<HashMap<String, AppStandby>>,
    /// Instance id → container id, for instances that took a standby.
    aliases: Mutex<HashMap<String, String>>,
    /// Disposals running in the background (awaited by shutdown).
    pub(super) background: Mutex<Vec<JoinHandle<()>>>,
    /// The next fill's generation.
    pub(super) next: AtomicU64,
    /// Set by backend shutdown: no more standbys.
    pub(super) closed: AtomicBool,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Standbys {
    /// The container an instance runs in: its own id, or the standby it took.
    pub(super) fn container_of(&self, id: &str) -> String {
        lock(&self.aliases)
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_owned())
    }

    /// The instance id a (standby's) container is known by.
    pub(super) fn instance_of(&self, container: &str) -> Option<String> {
        lock(&self.aliases)
            .iter()
            .find(|(_, c)| *c == container)
            .map(|(id, _)| id.clone())
    }

    /// Whether an instance with this id took a standby.
    pub(super) fn aliased(&self, id: &str) -> bool {
        lock(&self.aliases).contains_key(id)
    }

    /// Instance `id` took the standby in `container`.
    pub(super) fn alias(&self, id: &str, container: &str) {
        lock(&self.aliases).insert(id.to_owned(), container.to_owned());
    }

    /// Forgets the instance id of `container`.
    pub(super) fn unalias(&self, container: &str) {
        lock(&self.aliases).retain(|_, c| c != container);
    }
}
