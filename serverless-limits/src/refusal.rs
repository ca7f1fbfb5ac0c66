//! The one mapping from the layers' errors to HTTP answers, for the gateway and for embedders.
//!
//! Every failure is answered — a status, a one-line reason in [`ERROR_HEADER`], `Retry-After`
//! where retrying makes sense, and a short text body — never a reset connection:
//!
//! | error | status | `Retry-After` |
//! |---|---|---|
//! | [`PoolError::Overloaded`] (queue full, no instance may start) | 503 | 1 |
//! | [`PoolError::Elapsed`] (cold-start wait expired) | 504 | — |
//! | [`PoolError::BootFailed`] (body: the last log lines) | 503 | 1 |
//! | [`PoolError::Closed`] (app removed, engine stopping) | 503 | — |
//! | [`GlobalOverloaded`] | 503 | 1 |
//!
//! ```
//! use serverless_limits::{GlobalOverloaded, Refusal, ERROR_HEADER};
//!
//! let err: serverless_limits::BoxError = Box::new(GlobalOverloaded { max: 500 });
//! let refusal = Refusal::of(err.as_ref()).expect("a layer's error");
//! let res: http::Response<String> = refusal.into_response();
//! assert_eq!(res.status(), 503);
//! assert_eq!(res.headers()["retry-after"], "1");
//! assert_eq!(res.headers()[ERROR_HEADER], "server overloaded: 500 requests in flight across all apps");
//! ```

use std::error::Error;
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::{GlobalOverloaded, PoolError};

/// The header that carries the one-line reason of a failure.
pub const ERROR_HEADER: &str = "x-serverless-error";

/// How one failure is answered: status, reason, `Retry-After`, and details for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status.
    pub status: StatusCode,
    /// One line, no control characters (it goes into a header).
    pub reason: String,
    /// `Retry-After`, when a retry may succeed.
    pub retry_after: Option<Duration>,
    /// More lines for the body (e.g. the last log lines of an app that failed to boot).
    pub detail: Option<String>,
}

impl Refusal {
    /// A refusal with `status` and `reason` (control characters become spaces).
    pub fn new(status: StatusCode, reason: &str) -> Self {
        Self {
            status,
            reason: reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
            retry_after: None,
            detail: None,
        }
    }

    /// Classifies an error the layers returned by walking its cause chain: a [`PoolError`] or a
    /// [`GlobalOverloaded`]. `None` for anything else (the inner service's own errors, which the
    /// caller maps).
    pub fn of(err: &(dyn Error + 'static)) -> Option<Self> {
        let chain = std::iter::successors(Some(err), |e: &&(dyn Error + 'static)| (*e).source());
        for e in chain {
            if let Some(pool) = e.downcast_ref::<PoolError>() {
                return Some(Self::from(pool));
            }
            if let Some(global) = e.downcast_ref::<GlobalOverloaded>() {
                return Some(Self::from(global));
            }
        }
        None
    }

    /// The response: the status, [`ERROR_HEADER`], `Retry-After` in whole seconds (at least 1),
    /// and a `text/plain` body of `"<status>: <reason>\n"` followed by the details.
    pub fn into_response<B: From<String>>(self) -> Response<B> {
        let mut body = format!("{}: {}\n", self.status, self.reason);
        if let Some(detail) = &self.detail {
            body.push_str(detail);
            if !detail.ends_with('\n') {
                body.push('\n');
            }
        }
        let mut res = Response::new(B::from(body));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&self.reason) {
            headers.insert(ERROR_HEADER, v);
        }
        if let Some(after) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        res
    }
}

impl From<&PoolError> for Refusal {
    fn from(err: &PoolError) -> Self {
        let mut refusal = Self::new(err.status(), &err.to_string());
        refusal.retry_after = err.retry_after();
        if let PoolError::BootFailed {
            logs: Some(logs), ..
        } = err
        {
            refusal.detail = Some(format!("last log lines:\n{logs}"));
        }
        refusal
    }
}

impl From<&GlobalOverloaded> for Refusal {
    fn from(err: &GlobalOverloaded) -> Self {
        let mut refusal = Self::new(err.status(), &err.to_string());
        refusal.retry_after = err.retry_after();
        refusal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Overload;

    #[test]
    fn every_layer_error_has_its_answer() {
        let cases: Vec<(crate::BoxError, u16, Option<&str>)> = vec![
            (
                Box::new(PoolError::Overloaded {
                    app: "a".into(),
                    reason: Overload::QueueFull,
                }),
                503,
                Some("1"),
            ),
            (
                Box::new(PoolError::Elapsed {
                    app: "a".into(),
                    waited: Duration::from_secs(30),
                }),
                504,
                None,
            ),
            (Box::new(PoolError::Closed { app: "a".into() }), 503, None),
            (Box::new(GlobalOverloaded { max: 2 }), 503, Some("1")),
        ];
        for (err, status, retry) in cases {
            let res: Response<String> = Refusal::of(err.as_ref()).unwrap().into_response();
            assert_eq!(res.status(), status, "{err}");
            assert_eq!(
                res.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap()),
                retry,
                "{err}"
            );
            assert_eq!(res.headers()[ERROR_HEADER], err.to_string().as_str());
        }
    }

    #[test]
    fn boot_failures_carry_their_logs_and_causes_are_walked() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapper(#[source] PoolError);
        let err = Wrapper(PoolError::BootFailed {
            app: "a".into(),
            message: "exited with code 3\nbefore listening".into(),
            exit_code: Some(3),
            logs: Some("boom".into()),
        });
        let refusal = Refusal::of(&err).unwrap();
        assert_eq!(refusal.status, 503);
        assert!(
            !refusal.reason.contains('\n'),
            "one line: {}",
            refusal.reason
        );
        let res: Response<String> = refusal.into_response();
        assert!(
            res.body().ends_with("last log lines:\nboom\n"),
            "{}",
            res.body()
        );
        assert!(Refusal::of(&std::io::Error::other("x")).is_none());
    }
}
