//! The listeners: accept loop, HTTP/1.1 + HTTP/2 (h2c and TLS/ALPN) on one port, limits on the
//! request head, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::engine::Engine;
use crate::forward::ClientInfo;
use crate::response::{failure, BoxError, ReqBody, ResBody};

/// Per-connection protocol settings.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// Time to receive a complete request head (HTTP/1.1); slow clients are cut off.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes; larger → `431`.
    pub max_header_bytes: usize,
}

/// Serves `listener` with `handler` until `shutdown` resolves; then stops accepting and waits
/// (at most `drain`) for open connections to finish their requests.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    settings: ConnSettings,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    H: Fn(Request<Incoming>, ClientInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_bytes as u32)
        .max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let info = ClientInfo {
                addr,
                tls: tls.is_some(),
            };
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req, info).await) }
            });
            let result = match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(tls_stream)) => {
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(tls_stream), svc);
                            watcher.watch(conn.into_owned()).await
                        }
                        _ => return,
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(%addr, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {drain:?}; closing them");
    }
}

/// The host a request is for: `Host` (HTTP/1.1) or the URI authority (HTTP/2), lowercase,
/// without port.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })?;
    let host = match raw.rsplit_once(':') {
        // `[::1]:8080` or `name:8080`; a bare IPv6 literal is bracketed.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_owned(),
        _ => raw,
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// The gateway's request handler: route by host, enforce the body limit, serve through the
/// engine, count it.
pub async fn handle(engine: Engine, req: Request<Incoming>, info: ClientInfo) -> Response<ResBody> {
    let started = Instant::now();
    let Some(host) = request_host(&req) else {
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
            Some(max) => http_body_util::Limited::new(body, max as usize).boxed(),
            None => body.map_err(|e| -> BoxError { Box::new(e) }).boxed(),
        }
    });
    req.extensions_mut().insert(info);
    let res = engine.serve(&app, req).await;
    engine
        .metrics()
        .request(&app.spec.name, res.status().as_u16(), started.elapsed());
    res
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    })
}

/// A TLS acceptor with ALPN `h2` and `http/1.1` from PEM files.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<TlsAcceptor, BoxError> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .map_err(|e| format!("server.tls.cert {}: {e}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("server.tls.cert {}: {e}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(|e| format!("server.tls.key {}: {e}", key.display()))?,
    ))
    .map_err(|e| format!("server.tls.key {}: {e}", key.display()))?
    .ok_or_else(|| format!("server.tls.key {}: no private key found", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_lowercased_without_port() {
        let req = |host: &str| Request::builder().header("host", host).body(()).unwrap();
        assert_eq!(
            request_host(&req("Hello.LOCALHOST:8080")).unwrap(),
            "hello.localhost"
        );
        assert_eq!(
            request_host(&req("hello.localhost.")).unwrap(),
            "hello.localhost"
        );
        assert_eq!(request_host(&req("[::1]:8080")).unwrap(), "[::1]");
        let h2 = Request::builder()
            .uri("http://api.example.com:443/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h2).unwrap(), "api.example.com");
    }
}
