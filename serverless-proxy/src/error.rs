//! Errors of the request path and how they are answered: every failure is a status, an
//! `x-serverless-error` header with a one-line reason, and a short body — never a reset.

use std::fmt;
use std::sync::Arc;

use http::{Response, StatusCode};
use serverless_core::{AppSpec, InstanceId};
use serverless_limits::Refusal;
pub use serverless_limits::ERROR_HEADER;

use crate::body::{full_response_body, BoxError, ResBody};

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
    /// No response head within the app's `limits.response_timeout`.
    ResponseTimeout,
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

    pub(crate) fn response_timeout(
        app: Arc<AppSpec>,
        instance: InstanceId,
        source: BoxError,
    ) -> Self {
        Self::new(app, instance, Kind::ResponseTimeout, source)
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

    /// The connection failed while the response body was being read (the body's idle limit
    /// included).
    pub fn is_body(&self) -> bool {
        self.kind == Kind::Body
    }

    /// The request was sent and no response head came within the app's
    /// `limits.response_timeout`; it was not sent again.
    pub fn is_response_timeout(&self) -> bool {
        self.kind == Kind::ResponseTimeout
    }

    /// What went wrong, by walking the cause chain: for counting failures by cause.
    pub fn cause(&self) -> FailureCause {
        if self.kind == Kind::Unreachable {
            return FailureCause::Refused;
        }
        if self.kind == Kind::ResponseTimeout {
            return FailureCause::ResponseTimeout;
        }
        let chain = std::iter::successors(
            Some(&*self.source as &(dyn std::error::Error + 'static)),
            |e| e.source(),
        );
        for e in chain {
            if e.is::<crate::upstream::BodyIdleTimeout>() {
                return FailureCause::BodyIdleTimeout;
            }
            if e.is::<crate::upstream::ResponseTimeout>() {
                return FailureCause::ResponseTimeout;
            }
            if let Some(e) = e.downcast_ref::<hyper::Error>() {
                if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
                    return FailureCause::Framing;
                }
                if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
                    return FailureCause::Reset;
                }
            }
            if let Some(e) = e.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                match e.kind() {
                    // hyper's chunk decoder says `InvalidInput` for a malformed chunk.
                    InvalidData | InvalidInput => return FailureCause::Framing,
                    ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                        return FailureCause::Reset
                    }
                    _ => {}
                }
            }
        }
        FailureCause::Other
    }

    /// The status a client gets for it before the response head: `504` for a response
    /// timeout, `502` otherwise.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
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

/// Why an instance failed a request, as [`ForwardError::cause`] tells it (the `cause` label of
/// `serverless_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureCause {
    /// No connection could be opened.
    Refused,
    /// No response head within `limits.response_timeout`.
    ResponseTimeout,
    /// A gap in the response body longer than `limits.body_idle_timeout`.
    BodyIdleTimeout,
    /// The response broke HTTP/1.1 framing (a bad head, length or chunk; too many or too
    /// large interim responses; an unasked `101`).
    Framing,
    /// The connection was reset or closed before the response was complete.
    Reset,
    /// Anything else.
    Other,
}

impl FailureCause {
    /// The label: `refused`, `response_timeout`, `body_idle_timeout`, `framing`, `reset`,
    /// `other`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::ResponseTimeout => "response_timeout",
            Self::BodyIdleTimeout => "body_idle_timeout",
            Self::Framing => "framing",
            Self::Reset => "reset",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Unreachable => "could not be reached",
            Kind::NoResponse => "failed before answering",
            Kind::Body => "failed while sending the response body",
            // The cause says it all ("sent no response head within 300s").
            Kind::ResponseTimeout => "",
        };
        write!(f, "instance {} of app {} ", self.instance, self.app.name)?;
        // The cause, named: which framing error, which timeout, a reset — with the causes
        // under it that its own words leave out (hyper's "error reading a body from
        // connection" is followed by what was wrong with the body).
        let mut cause = self.source.to_string();
        let mut next = self.source.source();
        while let Some(e) = next {
            let words = e.to_string();
            if !cause.contains(&words) {
                cause.push_str(": ");
                cause.push_str(&words);
            }
            next = e.source();
        }
        if what.is_empty() {
            write!(f, "{cause}")
        } else {
            write!(f, "{what}: {cause}")
        }
    }
}

impl std::error::Error for ForwardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A response with a status, the reason in [`ERROR_HEADER`] and as the body (followed by
/// `detail`, if any): [`Refusal`]'s answer, for the gateway's own refusals (no host, no app,
/// body too large).
#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
pub(crate) fn failure(status: StatusCode, reason: &str, detail: Option<&str>) -> Response<ResBody> {
    let mut refusal = Refusal::new(status, reason);
    refusal.detail = detail.map(str::to_owned);
    answer(refusal)
}

#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
fn answer(refusal: Refusal) -> Response<ResBody> {
    refusal.into_response::<String>().map(full_response_body)
}

/// Maps an error from the request path to its response, by walking the cause chain: a request
/// body over the limit is `413` (the client's fault, not the app's), the layers' errors are
/// answered as [`Refusal::of`] says, a [`ForwardError`] (or anything else) is `502`.
#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
pub(crate) fn error_response(app: Option<&str>, err: &BoxError) -> Response<ResBody> {
    let chain = || {
        std::iter::successors(
            Some(err.as_ref() as &(dyn std::error::Error + 'static)),
            |e| e.source(),
        )
    };
    if chain().any(|e| e.is::<http_body_util::LengthLimitError>()) {
        return failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is over the configured limit",
            None,
        );
    }
    if let Some(refusal) = Refusal::of(err.as_ref()) {
        return answer(refusal);
    }
    if let Some(fwd) = chain().find_map(|e| e.downcast_ref::<ForwardError>()) {
        return failure(fwd.status(), &fwd.to_string(), None);
    }
    let reason = match app {
        Some(app) => format!("app {app}: {err}"),
        None => err.to_string(),
    };
    failure(StatusCode::BAD_GATEWAY, &reason, None)
}

#[cfg(all(test, feature = "gateway"))]
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
            let kinds = [
                err.is_unreachable(),
                err.is_no_response(),
                err.is_body(),
                err.is_response_timeout(),
            ];
            assert_eq!(kinds.iter().filter(|k| **k).count(), 1, "{err}");
            let what = format!("{what}: connection reset");
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

    #[test]
    fn the_cause_is_found_in_the_chain() {
        let app = Arc::new(AppSpec::new(
            "web",
            ImageRef::Registry("example/web:1".into()),
        ));
        let id = InstanceId::new("i-1");
        let io = |kind| -> BoxError { Box::new(std::io::Error::new(kind, "x")) };
        let idle = crate::upstream::BodyIdleTimeout(std::time::Duration::from_secs(1));
        let cases = [
            (
                ForwardError::unreachable(app.clone(), id.clone(), "refused".into()),
                FailureCause::Refused,
            ),
            (
                ForwardError::no_response(
                    app.clone(),
                    id.clone(),
                    io(std::io::ErrorKind::InvalidData),
                ),
                FailureCause::Framing,
            ),
            (
                ForwardError::no_response(
                    app.clone(),
                    id.clone(),
                    io(std::io::ErrorKind::ConnectionReset),
                ),
                FailureCause::Reset,
            ),
            (
                ForwardError::body(app.clone(), id.clone(), Box::new(idle)),
                FailureCause::BodyIdleTimeout,
            ),
            (
                ForwardError::body(app.clone(), id.clone(), "what".into()),
                FailureCause::Other,
            ),
        ];
        for (err, cause) in cases {
            assert_eq!(err.cause(), cause, "{err}");
        }
    }

    #[test]
    fn a_response_timeout_is_504_naming_it() {
        let app = Arc::new(AppSpec::new(
            "web",
            ImageRef::Registry("example/web:1".into()),
        ));
        let timeout = crate::upstream::ResponseTimeout(std::time::Duration::from_secs(300));
        let err = ForwardError::response_timeout(app, InstanceId::new("i-1"), Box::new(timeout));
        assert!(err.is_response_timeout() && !err.is_no_response());
        let res = error_response(Some("web"), &(Box::new(err) as BoxError));
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            res.headers()[ERROR_HEADER],
            "instance i-1 of app web sent no response head within 300s"
        );
    }

    #[test]
    fn the_layers_errors_are_answered_as_refusal_says_and_a_body_over_the_limit_is_413() {
        use serverless_limits::{GlobalOverloaded, PoolError};
        let errors: Vec<BoxError> = vec![
            Box::new(GlobalOverloaded { max: 2 }),
            Box::new(PoolError::BootFailed {
                app: "web".into(),
                message: "exited with code 3".into(),
                exit_code: Some(3),
                logs: Some("boom".into()),
            }),
            Box::new(PoolError::Elapsed {
                app: "web".into(),
                waited: std::time::Duration::from_secs(30),
            }),
        ];
        for err in errors {
            let expected: Response<String> = Refusal::of(err.as_ref()).unwrap().into_response();
            let res = error_response(Some("web"), &err);
            assert_eq!(res.status(), expected.status(), "{err}");
            assert_eq!(res.headers(), expected.headers(), "{err}");
        }
        let mut limited = http_body_util::Limited::new(
            http_body_util::Full::new(bytes::Bytes::from_static(b"xx")),
            1,
        );
        let too_long = std::pin::pin!(&mut limited);
        let err = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::frame(
            too_long.get_mut(),
        ))
        .flatten()
        .and_then(Result::err)
        .expect("a length limit error");
        let res = error_response(Some("web"), &err);
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            res.headers()[ERROR_HEADER],
            "request body is over the configured limit"
        );
    }
}
