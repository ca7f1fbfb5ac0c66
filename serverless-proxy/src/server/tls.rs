//! TLS connections: the acceptor built from the configured PEM files, the handshake, then
//! HTTP/1.1 or HTTP/2 as ALPN and the client's first bytes say.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::conn::{connection_service, ClientInfo, ConnState};
use super::protocols::Shared;
use crate::body::{BoxError, ResBody};

/// The time a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's TLS certificate or key could not be loaded (`server.tls`).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TlsError(#[from] TlsErrorKind);

#[derive(Debug, thiserror::Error)]
enum TlsErrorKind {
    #[error("server.tls.{field} {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server.tls.key {}: no private key found", path.display())]
    NoKey { path: PathBuf },
    #[error("server.tls: {0}")]
    Config(#[source] rustls::Error),
}

/// A TLS acceptor with ALPN `h2` and `http/1.1` from PEM files.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read = |field: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| TlsErrorKind::Read {
            field,
            path,
            source,
        }
    };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(read("cert", cert))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(read("cert", cert))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(read("key", key))?,
    ))
    .map_err(read("key", key))?
    .ok_or_else(|| TlsErrorKind::NoKey {
        path: key.to_owned(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsErrorKind::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsErrorKind::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TLS handshake did not complete within [`HANDSHAKE_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake timed out")]
struct HandshakeTimeout;

/// A TLS connection: handshake, then HTTP/1.1 or HTTP/2 as the client speaks.
pub(super) async fn serve_tls<H, F>(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    info: ClientInfo,
    handler: H,
    shared: &Shared,
    mut stop: watch::Receiver<()>,
) -> Result<(), BoxError>
where
    H: Fn(Request<Incoming>, ClientInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let tls_stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls_stream)) => tls_stream,
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => return Err(HandshakeTimeout.into()),
        },
        _ = stop.changed() => return Ok(()),
    };
    let svc = connection_service(handler, info, Arc::new(ConnState::default()));
    let conn = shared
        .auto
        .serve_connection_with_upgrades(TokioIo::new(tls_stream), svc);
    let mut conn = pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        _ = stop.changed() => conn.as_mut().graceful_shutdown(),
    }
    conn.await
}
