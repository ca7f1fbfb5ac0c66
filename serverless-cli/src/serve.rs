//! `serve`: the gateway over containerd until SIGINT or SIGTERM, then a graceful shutdown; or
//! until a successor takes over (an upgrade, see `handover.rs`).

use std::sync::Arc;

use serverless_core::Config;
use serverless_proxy::{BoxError, Gateway, GatewayError, HandedListeners, Takeover};

use crate::backend::backend;
use crate::cli::ADMIN_TOKEN_ENV;
use crate::handover;

/// Serves the config's apps until SIGINT or SIGTERM (then in-flight requests finish and every
/// instance stops), or until a successor takes over (see [`handover`]).
///
/// At start: when a gateway already serves this `data_dir` (its control socket answers), this
/// one takes over from it — its instances of unchanged apps, then its listening sockets once
/// the apps are deployed; what it leaves that was not adopted is removed after it exited.
/// Otherwise the instances of unchanged apps a previous (crashed or killed) run left are
/// adopted and the rest of what it left is removed.
pub(crate) async fn serve(mut config: Config) -> Result<(), BoxError> {
    if config.admin_token.is_none() {
        config.admin_token = admin_token_from_env();
    }
    // Apps with `image = "build:DIR"` are built first; their image is then the built archive.
    crate::deploy::build_apps(&mut config.apps, &config.data_dir).await?;
    let data_dir = config.data_dir.clone();
    let predecessor = handover::predecessor(&data_dir).map(Arc::new);
    if predecessor.is_some() {
        tracing::info!(data_dir = %data_dir.display(), "a gateway serves this data_dir: taking over from it");
    }
    let backend = backend(&config, true).await?;
    // A previous run's instances of unchanged apps stay warm; the rest of what it left goes
    // (once it has exited, when it still runs).
    let adopted = backend.adopt(&config.apps).await?;
    let removed = match predecessor {
        Some(_) => 0,
        None => backend.reconcile().await?,
    };
    if !adopted.is_empty() || removed > 0 {
        tracing::info!(
            adopted = adopted.len(),
            removed,
            "took over the instances a previous run left"
        );
    }
    let takeover = Takeover {
        instances: adopted.into_iter().map(|a| (a.app, a.id, a.age)).collect(),
        listeners: predecessor
            .clone()
            .map(|p| -> HandedListeners { Box::pin(async move { p.take_listeners().await }) }),
    };
    let backend = Arc::new(backend);
    let gateway = match Gateway::start_with(config, backend.clone(), takeover).await {
        Ok(g) => g,
        Err(err) => {
            match predecessor {
                // The running gateway still serves these instances.
                Some(_) => backend.leave_running().await,
                None => {
                    let _ = backend.shutdown().await;
                }
            }
            return Err(match err {
                GatewayError::AdminTokenRequired { .. } => {
                    format!("{err} (or {ADMIN_TOKEN_ENV})").into()
                }
                err => err.into(),
            });
        }
    };
    eprintln!(
        "serverless: gateway on http://{}  admin on http://{}",
        gateway.listen_addr(),
        gateway.admin_addr()
    );
    // The control socket answers once the predecessor is gone and its leftovers removed.
    let (control_tx, control) = tokio::sync::oneshot::channel();
    {
        let backend = backend.clone();
        let data_dir = data_dir.clone();
        tokio::spawn(async move {
            if let Some(predecessor) = predecessor.and_then(Arc::into_inner) {
                predecessor.exited().await;
                match backend.reconcile().await {
                    Ok(removed) => {
                        tracing::info!(removed, "the previous gateway exited; removed what it left")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "removing what the previous gateway left failed")
                    }
                }
            }
            match handover::ControlSocket::bind(&data_dir) {
                Ok(socket) => {
                    let _ = control_tx.send(socket);
                }
                Err(error) => {
                    tracing::warn!(%error, "no control socket: this gateway cannot hand over to a successor")
                }
            }
        });
    }
    let successor = async {
        let Ok(socket) = control.await else {
            return std::future::pending().await;
        };
        let stream = socket.next().await;
        drop(socket);
        stream
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        stream = successor => {
            let [listen, admin] = gateway.listening_sockets();
            match handover::send_listeners(&stream, listen, admin) {
                Ok(()) => {
                    tracing::info!("handed the listening sockets over to a successor: finishing in-flight requests, then exiting");
                    backend.leave_running().await;
                    gateway.hand_over().await;
                    // `stream` closes when this process exits: the successor then cleans up.
                    drop(stream);
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(%error, "handing the listening sockets over failed; shutting down");
                }
            }
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    gateway.shutdown().await;
    backend.shutdown().await?;
    Ok(())
}

/// `SERVERLESS_ADMIN_TOKEN`, when set and not empty: the admin token of a config that has none.
fn admin_token_from_env() -> Option<String> {
    std::env::var(ADMIN_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
}
