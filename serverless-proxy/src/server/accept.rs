//! The accept loop: hands each connection to its task (plain TCP or TLS),
//! and on shutdown stops accepting and waits for open connections to finish.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::conn::ClientInfo;
use super::detect::serve_plain;
use super::protocols::{ConnSettings, Shared};
use super::tls::serve_tls;
use crate::body::ResBody;

/// How long to back off after a failed accept (out of file descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `listener` with `handler` until `shutdown` resolves; then stops accepting and waits
/// (at most `drain`) for open connections to finish their requests. `parked` counts the
/// HTTP/1 connections parked (see [`super::park`]).
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    settings: ConnSettings,
    parked: Counter,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    H: Fn(Request<Incoming>, ClientInfo) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let shared = Arc::new(Shared::new(&settings, parked));
    // Each connection holds a receiver: `send` asks them to finish, `closed` is all of them gone.
    let (stop, _) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let shared = shared.clone();
        let tls = tls.clone();
        let stop = stop.subscribe();
        tokio::spawn(async move {
            let info = ClientInfo {
                addr,
                tls: tls.is_some(),
            };
            let result = match tls {
                None => serve_plain(stream, info, handler, &shared, stop).await,
                // Boxed: the TLS state would otherwise size every connection's task.
                Some(acceptor) => {
                    Box::pin(serve_tls(stream, acceptor, info, handler, &shared, stop)).await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%addr, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(());
    if tokio::time::timeout(drain, stop.closed()).await.is_err() {
        tracing::warn!("connections still open after {drain:?}; closing them");
    }
}
