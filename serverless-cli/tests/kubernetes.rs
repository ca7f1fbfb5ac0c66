//! `serverless serve` with a `[kubernetes]` table, end to end: the real binary, its kubeconfig
//! pointing at a scripted Kubernetes API server on loopback (the one of
//! `serverless-kubernetes/tests/support/mod.rs`; no real cluster — none can run here), serving
//! an app from zero Pods. The scripted cluster's Pods are tasks listening on `127.0.0.N`.

#![allow(clippy::unwrap_used)]

#[path = "../../serverless-kubernetes/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use serverless_testkit::{AppToml, GatewayToml};
use support::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_kubernetes_table_serves_an_app_from_zero_pods() {
    // 1. A scripted API server, reachable over HTTP on loopback.
    let (cluster, _client) = Cluster::start();
    let api = cluster.serve_http().await;

    // 2. A kubeconfig for it, and the config a user writes.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: scripted\n  cluster:\n    server: \
             http://{api}\ncontexts:\n- name: scripted\n  context:\n    cluster: scripted\n    \
             user: nobody\nusers:\n- name: nobody\n  user: {{}}\ncurrent-context: scripted\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("serverless.toml");
    GatewayToml::new()
        .top(&format!(
            "[kubernetes]\nnamespace = \"apps\"\nkubeconfig = \"{}\"\ngateway = \"e2e\"",
            kubeconfig.display()
        ))
        .app(
            AppToml::new("hello", "registry.example/hello:1")
                .without_network()
                .with(&format!("port = {port}")),
        )
        .write(&config);

    // 3. `serverless serve`; it prints where the gateway listens.
    let mut child = Command::new(env!("CARGO_BIN_EXE_serverless"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("POD_NAME")
        .env_remove("POD_UID")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("serverless: {line}");
            if let Some(rest) = line.split("gateway on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let gateway = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway started");
    // The start-up reconcile asked for this gateway's Pods by label.
    let reconcile = cluster.requests_to(Method::DELETE, "/api/v1/namespaces/apps/pods?");
    assert!(
        reconcile[0].uri.contains("serverless.dev/gateway=e2e"),
        "{reconcile:?}"
    );
    assert!(cluster.pod_names().is_empty());

    // 4. The first request starts a Pod and is answered by it.
    let mut conn = tokio::net::TcpStream::connect(&gateway).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: hello.localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("from-pod\n"), "{response}");
    assert_eq!(cluster.pod_names().len(), 1);

    // 5. SIGTERM: the gateway drains and deletes its Pods.
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(cluster.pod_names().is_empty(), "{:?}", cluster.pod_names());
}
