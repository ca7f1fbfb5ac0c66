//! What the backend holds about a task: [`Created`] (made, not started: the standby's state and
//! the cold start's middle) and [`Instance`] (started and listening: what `connect` dials).

use std::net::SocketAddr;
use std::sync::Arc;

use serverless_core::Exit;
use tokio::sync::watch;

use super::boost::Boost;
use crate::image::PreparedImage;
use crate::netns::Dialer;

/// A task created but not started (see `ContainerdBackend::create` in `start.rs`).
pub(super) struct Created {
    /// The image it was made from (a standby made from an image since replaced is stale).
    pub(super) image: Arc<PreparedImage>,
    pub(super) pid: u32,
    pub(super) dialer: Dialer,
    pub(super) exit: watch::Receiver<Option<Exit>>,
    /// Made with a CPU quota above its slot's: the startup boost (see `boost.rs`).
    pub(super) boost: Option<Boost>,
}

/// A started instance: where it listens and how to reach it.
pub(super) struct Instance {
    pub(super) app: String,
    pub(super) addr: SocketAddr,
    pub(super) dialer: Dialer,
}
