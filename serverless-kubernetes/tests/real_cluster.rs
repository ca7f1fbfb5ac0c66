//! Opt-in, never run by CI (no cluster can run on this project's machines): the backend against
//! a **real cluster**, through the trait's conformance suite. It needs a kubeconfig
//! (`$KUBECONFIG` or `~/.kube/config`, or a Pod's service account), rights to create Pods in
//! the namespace, nodes that can pull the images, and Pod IPs reachable from where the test
//! runs (inside the cluster, or a kind/minikube node network routed to the host):
//!
//! ```sh
//! SERVERLESS_K8S_NAMESPACE=default \
//!   cargo test -p serverless-kubernetes --test real_cluster -- --ignored --nocapture
//! ```
//!
//! `SERVERLESS_K8S_IMAGE` (default `docker.io/library/nginx:1.27`, port 80) is the app that
//! serves; `SERVERLESS_K8S_BUSYBOX` (default `docker.io/library/busybox:1.36`) runs the app that
//! exits before listening and the one that never listens.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serverless_core::conformance::{self, Apps};
use serverless_core::{AppSpec, ImageRef};
use serverless_kubernetes::{client, KubernetesBackend};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::test]
#[ignore = "needs a real cluster (KUBECONFIG); see the file's docs"]
async fn a_real_cluster_passes_the_conformance_suite() {
    let backend = KubernetesBackend::builder(client(None).await.unwrap())
        .namespace(env("SERVERLESS_K8S_NAMESPACE", "default"))
        .gateway("serverless-conformance")
        .build()
        .unwrap();
    let image = |r: String| ImageRef::Registry(r);
    let mut serves = AppSpec::new(
        "serves",
        image(env("SERVERLESS_K8S_IMAGE", "docker.io/library/nginx:1.27")),
    );
    serves.port = 80;
    serves.limits.startup_timeout = Duration::from_secs(120);
    let busybox = env("SERVERLESS_K8S_BUSYBOX", "docker.io/library/busybox:1.36");
    let mut crashes = AppSpec::new("crashes", image(busybox.clone()));
    crashes.command = Some(vec!["sh".into(), "-c".into(), "echo boom; exit 3".into()]);
    crashes.limits.startup_timeout = Duration::from_secs(120);
    let mut silent = AppSpec::new("silent", image(busybox));
    silent.command = Some(vec!["sleep".into(), "3600".into()]);
    silent.limits.startup_timeout = Duration::from_secs(60);
    let apps = Apps {
        serves,
        boot_failure: Some(crashes),
        never_listens: Some(silent),
    };
    let result = conformance::run(&backend, &apps).await;
    // Whatever happened, leave nothing behind.
    let removed = backend.reconcile().await.unwrap();
    result.unwrap();
    assert_eq!(removed, 0, "the suite left {removed} Pods");
}
