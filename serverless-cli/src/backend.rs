//! The backend choice: containerd, as the config describes it (a given socket, or an embedded
//! containerd under `data_dir`), with registry credentials and a pull progress bar.

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use serverless_containerd::{ContainerdBackend, PullProgress, PullProgressFn};
use serverless_core::{Config, SecretSource};
use serverless_proxy::BoxError;

/// The backend the config describes; `spare_shim`: keep a shim spawned ahead (serving only).
pub(crate) async fn backend(
    config: &Config,
    spare_shim: bool,
) -> Result<ContainerdBackend, BoxError> {
    let mut builder = ContainerdBackend::builder(&config.data_dir)
        .pull_progress(pull_progress())
        .spare_shim(spare_shim)
        .network(config.network.clone())
        .security(config.security)
        .startup_cpu_boost(
            config.limits.max_boosted_instances,
            config.limits.startup_cpu_boost_millicpu,
        );
    if let Some(c) = &config.containerd {
        builder = builder.socket(&c.socket).namespace(&c.namespace);
    }
    for (i, r) in config.registries.iter().enumerate() {
        let field = match &r.password {
            SecretSource::Env(_) => "password_env",
            SecretSource::File(_) => "password_file",
        };
        let password = r
            .password
            .read()
            .map_err(|e| format!("registries[{i}].{field} (registry {}): {e}", r.host))?;
        builder = builder.registry_auth(&r.host, &r.username, password);
    }
    if let Some(path) = &config.registry_auth_file {
        builder = builder.registry_auth_file(path);
    }
    Ok(builder.build().await?)
}

/// Registry pulls draw a progress bar on a terminal (one line per image otherwise).
fn pull_progress() -> PullProgressFn {
    use std::io::IsTerminal;
    let bar = ProgressBar::hidden();
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Arc::new(move |p: PullProgress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
        bar.set_message(format!(
            "pulling {} (blob {}/{})",
            p.reference, p.layer_index, p.layers
        ));
        if p.done >= p.total && p.layer_index == p.layers {
            if bar.is_hidden() {
                eprintln!("pulled {} ({} bytes)", p.reference, p.total);
            }
            bar.finish_and_clear();
            bar.reset();
        }
    })
}

/// The Kubernetes backend of a `[kubernetes]` table: Pods in its namespace, through its
/// kubeconfig (or, in a Pod, the service account), owned by this gateway's Pod when the
/// downward API gives `POD_NAME` and `POD_UID`.
pub(crate) async fn kubernetes(
    k: &serverless_core::KubernetesConfig,
) -> Result<serverless_kubernetes::KubernetesBackend, BoxError> {
    let client = serverless_kubernetes::client(k.kubeconfig.as_deref()).await?;
    let mut builder = serverless_kubernetes::KubernetesBackend::builder(client).owner_from_env();
    if let Some(ns) = &k.namespace {
        builder = builder.namespace(ns);
    }
    if let Some(gateway) = &k.gateway {
        builder = builder.gateway(gateway);
    }
    Ok(builder.build()?)
}
