//! Forwarding to an instance: pooled hyper clients over the backend's dialer, hop-by-hop
//! headers, `x-forwarded-*`/`forwarded`, upgrades (WebSocket) and retry of requests that were
//! not sent.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::{Connected, Connection as HyperConnection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serverless_core::{AppSpec, BackendError, Connection, ContainerBackend, ErrorKind, InstanceId};
use serverless_limits::Lease;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::response::{BoxError, ReqBody, ResBody, COLD_START_HEADER};

/// Where a request came from, set by the server on each request.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The peer address.
    pub addr: SocketAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
}

/// The request could not be forwarded or the instance failed while answering: `502`.
#[derive(Debug, thiserror::Error)]
#[error("instance {instance} of app {app} {what}")]
pub struct ForwardError {
    app: String,
    instance: InstanceId,
    what: &'static str,
    #[source]
    source: BoxError,
}

/// A connection to an instance, as hyper's client needs it.
struct Upstream(Connection);

impl HyperConnection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Dials instances through the backend; the URI's host is the instance id.
#[derive(Clone)]
struct InstanceConnector {
    backend: Arc<dyn ContainerBackend>,
}

impl tower::Service<Uri> for InstanceConnector {
    type Response = TokioIo<Upstream>;
    type Error = BackendError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BackendError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let backend = self.backend.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| BackendError::new(ErrorKind::NotFound, "no instance in URI"))?;
            let conn = backend.connect(&InstanceId::new(host)).await?;
            Ok(TokioIo::new(Upstream(conn)))
        })
    }
}

/// The pooled clients to instances (HTTP/1.1, and HTTP/2 prior knowledge for h2c apps).
#[derive(Clone)]
pub(crate) struct Upstreams {
    http1: Client<InstanceConnector, ReqBody>,
    h2c: Client<InstanceConnector, ReqBody>,
}

impl Upstreams {
    pub(crate) fn new(backend: Arc<dyn ContainerBackend>) -> Self {
        let connector = InstanceConnector { backend };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .retry_canceled_requests(true)
            .set_host(false);
        let http1 = builder.build(connector.clone());
        let h2c = builder.http2_only(true).build(connector);
        Self { http1, h2c }
    }
}

/// The innermost service: sends the request to the instance of its [`Lease`].
#[derive(Clone)]
pub struct Forward {
    app: Arc<AppSpec>,
    upstreams: Upstreams,
}

impl Forward {
    pub(crate) fn new(app: Arc<AppSpec>, upstreams: Upstreams) -> Self {
        Self { app, upstreams }
    }
}

impl tower::Service<Request<ReqBody>> for Forward {
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let app = self.app.clone();
        let upstreams = self.upstreams.clone();
        Box::pin(forward(app, upstreams, req))
    }
}

const MAX_ATTEMPTS: usize = 4;

async fn forward(
    app: Arc<AppSpec>,
    upstreams: Upstreams,
    mut req: Request<ReqBody>,
) -> Result<Response<ResBody>, BoxError> {
    let lease = req
        .extensions_mut()
        .remove::<Lease>()
        .ok_or("request reached Forward without a lease")?;
    let client_info = req.extensions().get::<ClientInfo>().copied();
    let upgrade = upgrade_protocol(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto.clone());
    }
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
    if let Some(info) = client_info {
        add_forwarded(&mut parts.headers, info);
    }
    let version = if app.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let client = if app.h2c {
        &upstreams.h2c
    } else {
        &upstreams.http1
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    // A request without a body can be sent again elsewhere if its instance turns out to be
    // unreachable, and (when idempotent) if the connection broke before any response byte;
    // one with a body could only be if it had not been read, which the client does not tell
    // us, so it gets a 502.
    let retry = body.is_end_stream();
    let mut body = Some(body);
    let mut attempt = 0;
    let mut res = loop {
        attempt += 1;
        let instance = lease.instance();
        let body = match body.take() {
            Some(body) => body,
            None if retry => empty(),
            None => return Err("request body already sent".into()),
        };
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.headers_mut() = parts.headers.clone();
        *req.uri_mut() = format!("http://{instance}{path}").parse::<Uri>()?;
        *req.version_mut() = version;
        match client.request(req).await {
            Ok(res) => break res,
            Err(err) if err.is_connect() && retry && attempt < MAX_ATTEMPTS => {
                tracing::debug!(app = %app.name, %instance, error = %err, "instance unreachable, rerouting");
                lease.reroute().await?;
            }
            // The connection broke before any response byte (the instance died with the request
            // in flight): an idempotent request without a body may be sent again. A new
            // connection to the same instance tells whether it is gone (then the connect error
            // above reroutes it).
            Err(err) if retry && parts.method.is_idempotent() && attempt < MAX_ATTEMPTS => {
                tracing::debug!(app = %app.name, %instance, error = %err, "connection to the instance broke before an answer, retrying");
            }
            Err(err) => {
                let what = if err.is_connect() {
                    "could not be reached"
                } else {
                    "failed before answering"
                };
                if err.is_connect() {
                    lease.pool().evict(&instance);
                }
                return Err(Box::new(ForwardError {
                    app: app.name.clone(),
                    instance,
                    what,
                    source: Box::new(err),
                }));
            }
        }
    };
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let server_upgrade = hyper::upgrade::on(&mut res);
            let tunnel_lease = lease.clone();
            tokio::spawn(async move {
                let (client, server) = tokio::join!(client_upgrade, server_upgrade);
                if let (Ok(client), Ok(server)) = (client, server) {
                    let mut client = TokioIo::new(client);
                    let mut server = TokioIo::new(server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                // The slot is held until either side closes.
                drop(tunnel_lease);
            });
        }
    } else {
        strip_hop_by_hop(res.headers_mut());
    }
    if let Some(waited) = lease.cold_start() {
        res.headers_mut().insert(
            COLD_START_HEADER,
            HeaderValue::from(waited.as_millis() as u64),
        );
    }
    let instance = lease.instance();
    let app_name = app.name.clone();
    Ok(res.map(move |b| {
        b.map_err(move |e| -> BoxError {
            Box::new(ForwardError {
                app: app_name.clone(),
                instance: instance.clone(),
                what: "failed while sending the response body",
                source: Box::new(e),
            })
        })
        .boxed_unsync()
    }))
}

fn empty() -> ReqBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|e| match e {})
        .boxed()
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` + `Upgrade: X`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    // `Upgrade: h2c` (RFC 7540 §3.2, removed in RFC 9113) is not tunnelled: the request goes on
    // as HTTP/1.1, which the upgrade mechanism allows; clients use prior knowledge for h2c.
    headers
        .get(header::UPGRADE)
        .filter(|p| asks && !p.as_bytes().eq_ignore_ascii_case(b"h2c"))
        .cloned()
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names, and
/// the classic list. `TE: trailers` is kept (gRPC needs it end to end).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Appends the client to `x-forwarded-for` and `forwarded`, sets `x-forwarded-proto`.
fn add_forwarded(headers: &mut HeaderMap, info: ClientInfo) {
    let ip = info.addr.ip();
    let proto = if info.tls { "https" } else { "http" };
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    let node = if ip.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip.to_string()
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
        if host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            element.push_str(&format!(";host=\"{host}\""));
        }
    }
    let forwarded = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {element}"),
        None => element,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, gzip"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::HOST, HeaderValue::from_static("hello.localhost"));
        add_forwarded(
            &mut h,
            ClientInfo {
                addr: "[::1]:5000".parse().unwrap(),
                tls: false,
            },
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h[header::FORWARDED],
            "for=\"[::1]\";proto=http;host=\"hello.localhost\""
        );
    }

    #[test]
    fn upgrade_needs_connection_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(upgrade_protocol(&h).is_none());
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(
            upgrade_protocol(&h).is_none(),
            "h2c upgrade is answered as HTTP/1.1"
        );
    }
}
