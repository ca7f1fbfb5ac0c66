//! Errors of the request path and how they are answered: every failure is a status, an
//! `x-serverless-error` header with a one-line reason, and a short body — never a reset.

use std::fmt;
use std::sync::Arc;

use http::{header, HeaderValue, Response, StatusCode};
use serverless_core::{AppSpec, InstanceId};
use serverless_limits::{GlobalOverloaded, PoolError};

use crate::body::{full_response_body, BoxError, ResBody};

/// The header that carries the one-line reason of a failure.
pub const ERROR_HEADER: &str = "x-serverless-error";

/// The request could not be forwarded to its instance, or the instance failed while answering.
/// Answered `502` when it happens before the response head; in a response body it ends the
/// body (the client sees the response cut short).
///
/// Classify it with the `is_*` predicates; the cause is its [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct ForwardError {
    app: Arc<AppSpec>,
    instance: InstanceId,
    kind: Kind,
    source: BoxError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No connection to the instance could be opened.
    Unreachable,
    /// The connection failed before a response head arrived.
    NoResponse,
    /// The connection failed while the response body was being read.
    Body,
}

impl ForwardError {
    pub(crate) fn unreachable(app: Arc<AppSpec>, instance: InstanceId, source: BoxError) -> Self {
        Self::new(app, instance, Kind::Unreachable, source)
    }

    pub(crate) fn no_response(app: Arc<AppSpec>, instance: InstanceId, source: BoxError) -> Self {
        Self::new(app, instance, Kind::NoResponse, source)
    }

    pub(crate) fn body(app: Arc<AppSpec>, instance: InstanceId, source: BoxError) -> Self {
        Self::new(app, instance, Kind::Body, source)
    }

    fn new(app: Arc<AppSpec>, instance: InstanceId, kind: Kind, source: BoxError) -> Self {
        Self {
            app,
            instance,
            kind,
            source,
        }
    }

    /// No connection to the instance could be opened (after trying other instances where the
    /// request allowed it): nothing was sent.
    pub fn is_unreachable(&self) -> bool {
        self.kind == Kind::Unreachable
    }

    /// The connection failed after the request was (or may have been) sent and before a
    /// response head arrived.
    pub fn is_no_response(&self) -> bool {
        self.kind == Kind::NoResponse
    }

    /// The connection failed while the response body was being read.
    pub fn is_body(&self) -> bool {
        self.kind == Kind::Body
    }

    /// The app the request was for.
    pub fn app(&self) -> &str {
        &self.app.name
    }

    /// The instance the request was sent to.
    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Unreachable => "could not be reached",
            Kind::NoResponse => "failed before answering",
            Kind::Body => "failed while sending the response body",
        };
        write!(
            f,
            "instance {} of app {} {what}",
            self.instance, self.app.name
        )
    }
}

impl std::error::Error for ForwardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A response with a status, the reason in `x-serverless-error` and as the body (followed by
/// `detail`, if any).
pub(crate) fn failure(status: StatusCode, reason: &str, detail: Option<&str>) -> Response<ResBody> {
    let line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut body = format!("{status}: {line}\n");
    if let Some(detail) = detail {
        body.push_str(detail);
        if !detail.ends_with('\n') {
            body.push('\n');
        }
    }
    let mut res = Response::new(full_response_body(body));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&line) {
        headers.insert(ERROR_HEADER, v);
    }
    res
}

/// Maps an error from the request path to its response, by walking the cause chain.
pub(crate) fn error_response(app: Option<&str>, err: &BoxError) -> Response<ResBody> {
    let chain = || {
        std::iter::successors(
            Some(err.as_ref() as &(dyn std::error::Error + 'static)),
            |e| e.source(),
        )
    };
    // A request body over the limit fails the forward; it is the client's fault, not the app's.
    if chain().any(|e| e.is::<http_body_util::LengthLimitError>()) {
        return failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is over the configured limit",
            None,
        );
    }
    for e in chain() {
        if let Some(pool) = e.downcast_ref::<PoolError>() {
            let logs = match pool {
                PoolError::BootFailed {
                    logs: Some(logs), ..
                } => Some(format!("last log lines:\n{logs}")),
                _ => None,
            };
            let mut res = failure(pool.status(), &pool.to_string(), logs.as_deref());
            if let Some(after) = pool.retry_after() {
                res.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(after.as_secs().max(1)),
                );
            }
            return res;
        }
        if let Some(global) = e.downcast_ref::<GlobalOverloaded>() {
            let mut res = failure(StatusCode::SERVICE_UNAVAILABLE, &global.to_string(), None);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return res;
        }
        if let Some(fwd) = e.downcast_ref::<ForwardError>() {
            return failure(StatusCode::BAD_GATEWAY, &fwd.to_string(), None);
        }
    }
    let reason = match app {
        Some(app) => format!("app {app}: {err}"),
        None => err.to_string(),
    };
    failure(StatusCode::BAD_GATEWAY, &reason, None)
}

#[cfg(test)]
mod tests {
    use serverless_core::ImageRef;

    use super::*;

    #[test]
    fn forward_errors_say_what_failed_and_answer_502() {
        let app = Arc::new(AppSpec::new(
            "web",
            ImageRef::Registry("example/web:1".into()),
        ));
        let id = InstanceId::new("i-1");
        let cause = || -> BoxError { "connection reset".into() };
        let cases = [
            (
                ForwardError::unreachable(app.clone(), id.clone(), cause()),
                "could not be reached",
            ),
            (
                ForwardError::no_response(app.clone(), id.clone(), cause()),
                "failed before answering",
            ),
            (
                ForwardError::body(app.clone(), id.clone(), cause()),
                "failed while sending the response body",
            ),
        ];
        for (err, what) in cases {
            let kinds = [err.is_unreachable(), err.is_no_response(), err.is_body()];
            assert_eq!(kinds.iter().filter(|k| **k).count(), 1, "{err}");
            assert_eq!(err.to_string(), format!("instance i-1 of app web {what}"));
            assert_eq!((err.app(), err.instance().as_str()), ("web", "i-1"));
            let source = std::error::Error::source(&err).map(ToString::to_string);
            assert_eq!(source.as_deref(), Some("connection reset"));
            let res = error_response(Some("web"), &(Box::new(err) as BoxError));
            assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
            assert_eq!(
                res.headers()[ERROR_HEADER],
                format!("instance i-1 of app web {what}").as_str()
            );
        }
    }
}
