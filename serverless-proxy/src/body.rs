//! The body types of the request path and the error type they carry.

use bytes::Bytes;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Empty, Full};

/// Errors carried through bodies and services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// Request body as forwarded to instances.
pub type ReqBody = BoxBody<Bytes, BoxError>;
/// Response body as sent to clients.
pub type ResBody = UnsyncBoxBody<Bytes, BoxError>;

/// An empty request body.
pub(crate) fn empty_request_body() -> ReqBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

/// A response body of `bytes`, complete at once.
pub(crate) fn full_response_body(bytes: impl Into<Bytes>) -> ResBody {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}
