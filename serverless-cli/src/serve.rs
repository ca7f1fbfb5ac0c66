//! `serve`: the gateway over containerd until SIGINT or SIGTERM, then a graceful shutdown.

use std::sync::Arc;

use serverless_core::Config;
use serverless_proxy::{BoxError, Gateway, GatewayError, Takeover};

use crate::backend::backend;
use crate::cli::ADMIN_TOKEN_ENV;

/// Serves the config's apps: adopts the instances of unchanged apps a previous run left
/// running and removes the rest of what it left, starts the gateway, waits for a signal, then
/// lets in-flight requests finish and stops every instance.
pub(crate) async fn serve(mut config: Config) -> Result<(), BoxError> {
    if config.admin_token.is_none() {
        config.admin_token = admin_token_from_env();
    }
    let backend = backend(&config, true).await?;
    // A previous run's instances of unchanged apps stay warm; the rest of what it left goes.
    let adopted = backend.adopt(&config.apps).await?;
    let removed = backend.reconcile().await?;
    if !adopted.is_empty() || removed > 0 {
        tracing::info!(
            adopted = adopted.len(),
            removed,
            "took over the instances a previous run left"
        );
    }
    let takeover = Takeover {
        instances: adopted
            .into_iter()
            .map(|a| (a.app, a.id, a.age))
            .collect(),
    };
    let backend = Arc::new(backend);
    let gateway = match Gateway::start_with(config, backend.clone(), takeover).await {
        Ok(g) => g,
        Err(err) => {
            let _ = backend.shutdown().await;
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
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
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
