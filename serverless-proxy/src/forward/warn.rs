//! Upstream violations (a timeout, a framing error, a reset) logged at `warn`, naming app,
//! instance and cause — at most one line per app per second, so a misbehaving app cannot
//! flood the log.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ForwardError;

/// One line per app per this long.
const EVERY: Duration = Duration::from_secs(1);

/// Logs `error` unless a line for its app was logged within the last second.
pub(super) fn upstream_failed(error: &ForwardError) {
    static LAST: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    let now = Instant::now();
    {
        let mut last = LAST
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match last.get_mut(error.app()) {
            Some(at) if now.duration_since(*at) < EVERY => return,
            Some(at) => *at = now,
            None => {
                last.insert(error.app().to_owned(), now);
            }
        }
    }
    let cause = std::error::Error::source(error).map(ToString::to_string);
    tracing::warn!(
        app = error.app(),
        instance = %error.instance(),
        cause = cause.as_deref().unwrap_or(""),
        "{error}"
    );
}
