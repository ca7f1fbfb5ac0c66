//! Body types and errors as responses: every failure is a status, an `x-serverless-error`
//! header with a one-line reason, and a short body — never a reset.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Full};
use serverless_limits::{GlobalOverloaded, PoolError};

use crate::forward::ForwardError;

/// Errors carried through bodies and services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// Request body as forwarded to instances.
pub type ReqBody = BoxBody<Bytes, BoxError>;
/// Response body as sent to clients.
pub type ResBody = UnsyncBoxBody<Bytes, BoxError>;

/// The header that carries the one-line reason of a failure.
pub const ERROR_HEADER: &str = "x-serverless-error";
/// The header that says how long a request waited for a cold start, in milliseconds.
pub const COLD_START_HEADER: &str = "x-serverless-cold-start";

/// A response with a status, the reason in `x-serverless-error` and as the body.
pub fn failure(status: StatusCode, reason: &str, detail: Option<&str>) -> Response<ResBody> {
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
    let mut res = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
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
pub fn error_response(app: Option<&str>, err: &BoxError) -> Response<ResBody> {
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
