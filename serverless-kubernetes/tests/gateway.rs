//! The whole gateway (serverless-proxy's `Gateway`: routing, pool, limits, idle stop) over the
//! Kubernetes backend and the scripted API server: an app served from zero Pods, then idled
//! back to zero. Read top to bottom; no real cluster is involved (see `support/mod.rs`).

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http::Method;
use serverless_core::Config;
use serverless_kubernetes::KubernetesBackend;
use serverless_proxy::Gateway;
use support::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(gateway: &Gateway, host: &str) -> String {
    let mut conn = TcpStream::connect(gateway.listen_addr()).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn the_gateway_serves_an_app_from_zero_pods_and_idles_it_back_to_zero() {
    // A scripted cluster, and the backend over kube's client to it.
    let (cluster, client) = Cluster::start();
    let backend = KubernetesBackend::builder(client)
        .gateway("gw-1")
        .probe_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    // The config a user writes: a [kubernetes] table and one app on a registry image.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = Config::from_toml(&format!(
        r#"
        listen = "127.0.0.1:0"
        admin = "127.0.0.1:0"

        [kubernetes]
        namespace = "apps"

        [[apps]]
        name = "hello"
        image = "registry.example/hello:1"
        port = {port}
        slot = "c.25-m128"
        limits = {{ idle_timeout = "300ms" }}
        "#
    ))
    .unwrap();
    assert!(config.kubernetes.is_some());
    let gateway = Gateway::start(config, Arc::new(backend)).await.unwrap();

    // No Pod until the first request.
    assert!(cluster.pod_names().is_empty());
    let t0 = Instant::now();
    let response = get(&gateway, "hello.localhost").await;
    let cold = t0.elapsed();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("from-pod\n"), "{response}");
    // One Pod was created for it, with the app's slot.
    let posts = cluster.requests_to(Method::POST, "/api/v1/namespaces/apps/pods");
    assert_eq!(posts.len(), 1);
    let limits = &posts[0].body["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(
        (limits["cpu"].as_str(), limits["memory"].as_str()),
        (Some("250m"), Some("128Mi"))
    );
    eprintln!("cold start over the scripted cluster: {cold:?}");

    // A second request reuses the running Pod.
    assert!(get(&gateway, "hello.localhost")
        .await
        .ends_with("from-pod\n"));
    assert_eq!(
        cluster
            .requests_to(Method::POST, "/api/v1/namespaces/apps/pods")
            .len(),
        1
    );

    // Idle for longer than idle_timeout: the pool stops the instance, the Pod is deleted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.pod_names().is_empty() {
        assert!(Instant::now() < deadline, "the idle Pod was not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cluster
            .requests_to(Method::DELETE, "/api/v1/namespaces/apps/pods/hello-")
            .len(),
        1
    );

    // And from zero again.
    assert!(get(&gateway, "hello.localhost")
        .await
        .ends_with("from-pod\n"));
    assert_eq!(cluster.pod_names().len(), 1);
    gateway.shutdown().await;
    assert!(cluster.pod_names().is_empty(), "shutdown deletes the Pods");
}

/// The sample manifests: the ConfigMap's config is one `serverless validate` accepts, with a
/// `[kubernetes]` table; the Role grants the verbs the backend uses and no others.
#[test]
fn the_sample_manifests_match_the_backend() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");
    let gateway = std::fs::read_to_string(format!("{dir}/gateway.yaml")).unwrap();
    let toml: String = gateway
        .lines()
        .skip_while(|l| !l.contains("serverless.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    let config = Config::from_toml(&toml).unwrap();
    assert_eq!(
        config.kubernetes.unwrap().namespace.as_deref(),
        Some("serverless")
    );
    assert!(
        gateway.contains("fieldPath: metadata.name") && gateway.contains("fieldPath: metadata.uid")
    );
    let rbac = std::fs::read_to_string(format!("{dir}/rbac.yaml")).unwrap();
    assert!(
        rbac.contains(r#"verbs: ["get", "list", "watch", "create", "delete", "deletecollection"]"#)
    );
    assert!(rbac.contains(r#"resources: ["pods/log"]"#));
}
