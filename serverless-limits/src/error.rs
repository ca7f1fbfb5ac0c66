//! Errors of the pool and the layers. Each maps to one HTTP status at the edge.

use std::time::Duration;

use http::StatusCode;

/// The error type the layers return: a [`PoolError`], a [`GlobalOverloaded`] or the inner
/// service's error. Classify it with `downcast_ref`, or answer it with
/// [`Refusal::of`](crate::Refusal::of).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which limit made an app [overloaded](PoolError::Overloaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Overload {
    /// Every instance is at `max_concurrent_requests` and the caller would not wait.
    InstancesFull,
    /// `max_queued_requests` requests are already waiting.
    QueueFull,
    /// The host-wide `max_instances` is reached and the app has no instance.
    HostMaxInstances,
}

impl std::fmt::Display for Overload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::InstancesFull => "every instance is at max_concurrent_requests",
            Self::QueueFull => "the request queue is full",
            Self::HostMaxInstances => "the host's max_instances is reached",
        })
    }
}

/// Why a request could not get a place on an instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The queue is full, or no instance may be started: answer `503` with `Retry-After`.
    #[error("app {app} is overloaded: {reason}")]
    Overloaded {
        /// The app.
        app: String,
        /// Which limit was hit.
        reason: Overload,
    },
    /// The request waited `waited` without getting a place: answer `504`.
    #[error("app {app} had no free instance within {}", humantime::format_duration(*waited))]
    Elapsed {
        /// The app.
        app: String,
        /// The queue timeout.
        waited: Duration,
    },
    /// The app's instances fail to start; the pool is backing off: answer `503`.
    #[error("app {app} failed to start: {message}")]
    BootFailed {
        /// The app.
        app: String,
        /// One line: `exited with code 3 before listening`, `listened on no port within 10s`.
        message: String,
        /// The exit code, when the process exited.
        exit_code: Option<i32>,
        /// The last log lines, when known.
        logs: Option<String>,
    },
    /// The app is being removed or the engine is shutting down: answer `503`.
    #[error("app {app} is shutting down")]
    Closed {
        /// The app.
        app: String,
    },
}

impl PoolError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Elapsed { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `Retry-After` to send, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Overloaded { .. } | Self::BootFailed { .. } => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// The engine-wide limit of concurrent requests is reached: answer `503` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("server overloaded: {max} requests in flight across all apps")]
pub struct GlobalOverloaded {
    /// The limit.
    pub max: u32,
}

impl GlobalOverloaded {
    /// The HTTP status this error is answered with: `503`.
    pub fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    /// The `Retry-After` to send: one second.
    pub fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}
