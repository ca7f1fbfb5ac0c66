//! `serve` over the Kubernetes backend (`[kubernetes]`): instances are Pods of a cluster.

use std::sync::Arc;

use serverless_core::{Config, KubernetesConfig};
use serverless_proxy::{BoxError, Gateway};

use crate::cli::ADMIN_TOKEN_ENV;

/// Serves the config's apps as Pods: removes the Pods a previous run of this gateway left,
/// starts the gateway, waits for a signal, then lets in-flight requests finish and deletes
/// every instance's Pod.
pub(crate) async fn serve(mut config: Config, k: KubernetesConfig) -> Result<(), BoxError> {
    if config.admin_token.is_none() {
        config.admin_token = std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty());
    }
    let backend = crate::backend::kubernetes(&k).await?;
    let removed = backend.reconcile().await?;
    if removed > 0 {
        tracing::info!(removed, "removed the Pods a previous run left");
    }
    eprintln!(
        "serverless: instances are Pods in namespace {} (gateway {})",
        backend.namespace(),
        backend.gateway()
    );
    let gateway = Gateway::start(config, Arc::new(backend)).await?;
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
    Ok(())
}
