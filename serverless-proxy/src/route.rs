//! The gateway's request handler: the request's host picks the app, the body limit is
//! enforced, the engine serves it, and the answer is counted.

use std::borrow::Cow;

use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{BoxError, ReqBody, ResBody};
use crate::engine::Engine;
use crate::error::failure;
use crate::forward::ClientInfo;

/// Routes by host, enforces the body limit, serves through the engine, counts the answer.
pub(crate) async fn handle(
    engine: Engine,
    req: Request<Incoming>,
    info: ClientInfo,
) -> Response<ResBody> {
    let started = Instant::now();
    let Some(host) = host_of(&req) else {
        return failure(StatusCode::BAD_REQUEST, "request has no Host header", None);
    };
    let Some(app) = engine.route(&host) else {
        return failure(
            StatusCode::NOT_FOUND,
            &format!("no app is routed for host {host}"),
            None,
        );
    };
    let max_body = engine.server_config().max_body_bytes;
    if let (Some(max), Some(len)) = (max_body, content_length(&req)) {
        if len > max {
            let res = failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body of {len} bytes is over the limit of {max} bytes"),
                None,
            );
            engine
                .metrics()
                .request(&app.spec.name, 413, started.elapsed());
            return res;
        }
    }
    let mut req = req.map(|body| -> ReqBody {
        match max_body {
            Some(max) => http_body_util::Limited::new(body, max as usize).boxed_unsync(),
            None => body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync(),
        }
    });
    req.extensions_mut().insert(info);
    let res = engine.serve(&app, req).await;
    engine
        .metrics()
        .request(&app.spec.name, res.status().as_u16(), started.elapsed());
    res
}

/// The host a request is for: `Host` (HTTP/1.1) or the URI authority (HTTP/2), lowercase,
/// without port or trailing dot; borrowed when already in that form (the common case).
fn host_of<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    // `[::1]:8080` or `name:8080`; a bare IPv6 literal is bracketed. (A byte search: cheaper
    // than `str`'s pattern searcher.)
    let host = match raw.bytes().rposition(|b| b == b':') {
        Some(at) if raw.as_bytes()[at + 1..].iter().all(u8::is_ascii_digit) => &raw[..at],
        _ => raw,
    };
    let host = host.trim_end_matches('.');
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_lowercased_without_port() {
        let req = |host: &str| Request::builder().header("host", host).body(()).unwrap();
        let host = |req: &Request<()>| host_of(req).map(Cow::into_owned);
        assert_eq!(
            host(&req("Hello.LOCALHOST:8080")).unwrap(),
            "hello.localhost"
        );
        assert_eq!(host(&req("hello.localhost.")).unwrap(), "hello.localhost");
        assert_eq!(host(&req("[::1]:8080")).unwrap(), "[::1]");
        let h2 = Request::builder()
            .uri("http://api.example.com:443/x")
            .body(())
            .unwrap();
        assert_eq!(host(&h2).unwrap(), "api.example.com");
        assert!(matches!(
            host_of(&req("a.localhost")),
            Some(Cow::Borrowed(_))
        ));
    }
}
