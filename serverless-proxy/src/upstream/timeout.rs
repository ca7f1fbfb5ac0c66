//! The per-app time limits on an instance's answer: the response head must come within
//! `limits.response_timeout` of the request being sent, and no gap between two reads of the
//! response body may be longer than `limits.body_idle_timeout`. Upgraded connections are not
//! bodies: their tunnels are exempt.

use std::fmt;
use std::time::Duration;

use serverless_core::Limits;

/// An app's upstream time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// Request sent → response head.
    pub(crate) response: Duration,
    /// The longest gap between two reads of the response body.
    pub(crate) body_idle: Duration,
}

impl Timeouts {
    pub(crate) fn of(limits: &Limits) -> Self {
        Self {
            response: limits.response_timeout,
            body_idle: limits.body_idle_timeout,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::of(&Limits::DEFAULT)
    }
}

/// `300s`, `1500ms`.
struct Short(Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_millis() == 0 {
            write!(f, "{}s", self.0.as_secs())
        } else {
            write!(f, "{}ms", self.0.as_millis())
        }
    }
}

/// The instance sent no response head within the app's `limits.response_timeout`. The request
/// is not sent again: the instance may still be working on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseTimeout(pub(crate) Duration);

impl fmt::Display for ResponseTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sent no response head within {}", Short(self.0))
    }
}

impl std::error::Error for ResponseTimeout {}

/// The instance sent nothing of the response body for the app's `limits.body_idle_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyIdleTimeout(pub(crate) Duration);

impl fmt::Display for BodyIdleTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sent no response body bytes for {}", Short(self.0))
    }
}

impl std::error::Error for BodyIdleTimeout {}
