//! The Kubernetes backend against a scripted API server (see `support/mod.rs`: kube's real
//! client over a `tower_test` mock; Pods are tasks on loopback addresses). No real cluster.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serverless_core::conformance::{self, Apps};
use serverless_core::{AppSpec, ContainerBackend, ErrorKind, ImageRef, InstanceId};
use serverless_kubernetes::KubernetesBackend;
use support::{Behavior, Cluster, NAMESPACE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PODS: &str = "/api/v1/namespaces/apps/pods";

fn backend(client: kube::Client) -> KubernetesBackend {
    KubernetesBackend::builder(client)
        .gateway("gw-1")
        .owner(OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: "serverless-gateway-abc".into(),
            uid: "1234-uid".into(),
            ..OwnerReference::default()
        })
        .probe_interval(Duration::from_millis(5))
        .build()
        .unwrap()
}

/// A loopback port free right now (the scripted Pods bind 127.0.0.N:port, N ≥ 2).
fn port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn app(name: &str) -> AppSpec {
    let mut app = AppSpec::new(
        name,
        ImageRef::Registry(format!("registry.example/{name}:1")),
    );
    app.port = port();
    app.limits.startup_timeout = Duration::from_secs(5);
    app
}

async fn get(backend: &KubernetesBackend, id: &InstanceId) -> String {
    let mut conn = backend.connect(id).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn start_creates_the_pod_follows_it_and_probes_the_pod_ip() {
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    let mut app = app("hello");
    app.slot = "c.5-m256".parse().unwrap();
    app.env.insert("GREETING".into(), "hi".into());
    // The app listens 200 ms after its container runs: start returns once it does.
    cluster.behave(
        "hello",
        Behavior::Serves {
            listen_after: Duration::from_millis(200),
        },
    );
    let id = InstanceId::new("hello-1-abc");

    let started = backend.start(&app, &id).await.unwrap();

    assert_eq!(started.port, app.port);
    let phases: Vec<_> = started.phases.iter().map(|(p, _)| *p).collect();
    assert_eq!(phases, ["pod_create", "pod_running", "listen"]);
    // The probe, not a kubelet probe, noticed the listener: within a few probe intervals of it.
    let running = started.phases[1].1;
    let listen = started.phases[2].1;
    assert!(
        listen - running >= Duration::from_millis(190),
        "{:?}",
        started.phases
    );
    assert!(
        listen - running < Duration::from_millis(600),
        "{:?}",
        started.phases
    );

    // One POST with the Pod the spec describes.
    let posts = cluster.requests_to(Method::POST, PODS);
    assert_eq!(posts.len(), 1);
    let pod: Pod = serde_json::from_value(posts[0].body.clone()).unwrap();
    assert_eq!(pod.metadata.name.as_deref(), Some("hello-1-abc"));
    assert_eq!(pod.metadata.namespace.as_deref(), Some(NAMESPACE));
    let labels = support::labels(&pod);
    assert_eq!(labels["app.kubernetes.io/managed-by"], "serverless");
    assert_eq!(labels["serverless.dev/gateway"], "gw-1");
    assert_eq!(labels["serverless.dev/app"], "hello");
    assert_eq!(labels["serverless.dev/instance"], "hello-1-abc");
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Pod", "1234-uid")
    );
    let spec = pod.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/hello:1"));
    let resources = c.resources.as_ref().unwrap();
    for q in [
        resources.requests.as_ref().unwrap(),
        resources.limits.as_ref().unwrap(),
    ] {
        assert_eq!(q["cpu"].0, "500m");
        assert_eq!(q["memory"].0, "256Mi");
    }
    let env: Vec<(String, String)> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    assert!(env.contains(&("GREETING".into(), "hi".into())), "{env:?}");
    assert!(
        env.contains(&("PORT".into(), app.port.to_string())),
        "{env:?}"
    );
    assert_eq!(
        c.ports.as_ref().unwrap()[0].container_port,
        i32::from(app.port)
    );

    // The watch is by field selector on the Pod's name, from the created version.
    let watches = cluster.requests_to(Method::GET, PODS);
    assert!(
        watches.iter().any(|r| r.uri.contains("watch=true")
            && r.uri.contains("fieldSelector=metadata.name=hello-1-abc")),
        "{watches:?}"
    );

    // connect dials the Pod IP: the scripted Pod answers.
    assert!(get(&backend, &id).await.ends_with("from-pod\n"));
}

#[tokio::test]
async fn stop_deletes_with_the_grace_period_and_waits_until_the_pod_is_gone() {
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    let app = app("hello");
    let id = InstanceId::new("hello-1-stop");
    backend.start(&app, &id).await.unwrap();

    let (exit, stopped) = tokio::join!(backend.wait(&id), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        backend.stop(&id, Duration::from_secs(7)).await
    });
    stopped.unwrap();
    // The scripted app took SIGTERM and exited 143.
    assert_eq!(exit.unwrap().code, 143);

    let deletes = cluster.requests_to(Method::DELETE, &format!("{PODS}/hello-1-stop"));
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].body["gracePeriodSeconds"], 7);
    assert!(cluster.pod_names().is_empty());
    // Gone: wait says NotFound, connect too, stop again is fine.
    assert!(backend.wait(&id).await.unwrap_err().is_not_found());
    assert_eq!(
        backend.connect(&id).await.err().unwrap().kind(),
        ErrorKind::NotFound
    );
    backend.stop(&id, Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn list_and_reconcile_go_by_this_gateways_label_selector() {
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    backend
        .start(&app("one"), &InstanceId::new("one-1-x"))
        .await
        .unwrap();
    backend
        .start(&app("two"), &InstanceId::new("two-1-x"))
        .await
        .unwrap();
    // Another gateway's Pod in the same namespace.
    cluster.insert_pod(Pod {
        metadata: ObjectMeta {
            name: Some("other-1-x".into()),
            labels: Some(
                [
                    ("app.kubernetes.io/managed-by", "serverless"),
                    ("serverless.dev/gateway", "gw-2"),
                    ("serverless.dev/app", "other"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    });

    let mut listed = backend.list().await.unwrap();
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    let seen: Vec<_> = listed
        .iter()
        .map(|o| (o.id.as_str(), o.app.as_str(), o.running))
        .collect();
    assert_eq!(seen, [("one-1-x", "one", true), ("two-1-x", "two", true)]);
    let selector =
        "labelSelector=app.kubernetes.io/managed-by=serverless,serverless.dev/gateway=gw-1";
    let lists = cluster.requests_to(Method::GET, &format!("{PODS}?"));
    assert!(lists.iter().any(|r| r.uri.contains(selector)), "{lists:?}");

    // Reconcile (at the gateway's start) removes this gateway's Pods, in one request.
    assert_eq!(backend.reconcile().await.unwrap(), 2);
    let collection = cluster.requests_to(Method::DELETE, &format!("{PODS}?"));
    assert_eq!(collection.len(), 1);
    assert!(collection[0].uri.contains(selector), "{:?}", collection[0]);
    assert_eq!(cluster.pod_names(), ["other-1-x"]);
}

/// Starts an app whose Pod fails as `behavior` says; returns the error, after checking that the
/// Pod was deleted.
async fn failed_start(behavior: Behavior) -> serverless_core::BackendError {
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    cluster.behave("broken", behavior);
    cluster.set_logs("broken", "booting\npanic: no config\n");
    let err = backend
        .start(&app("broken"), &InstanceId::new("broken-1-x"))
        .await
        .unwrap_err();
    assert_eq!(
        cluster
            .requests_to(Method::DELETE, &format!("{PODS}/broken-1-x"))
            .len(),
        1,
        "a failed start deletes its Pod"
    );
    assert!(cluster.pod_names().is_empty());
    err
}

#[tokio::test]
async fn image_pull_back_off_fails_the_start_with_the_clusters_reason() {
    let err = failed_start(Behavior::ImagePullBackOff).await;
    assert_eq!(err.kind(), ErrorKind::Image);
    let text = err.to_string();
    assert!(text.contains("ImagePullBackOff"), "{text}");
    assert!(text.contains("registry.example/broken:1"), "{text}");
}

#[tokio::test]
async fn an_unschedulable_pod_fails_the_start_with_the_schedulers_message() {
    let err = failed_start(Behavior::Unschedulable).await;
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = err.to_string();
    assert!(text.contains("Unschedulable"), "{text}");
    assert!(text.contains("Insufficient memory"), "{text}");
}

#[tokio::test]
async fn crash_loop_back_off_is_a_boot_failure_with_the_last_exit() {
    let err = failed_start(Behavior::CrashLoopBackOff { code: 2 }).await;
    assert_eq!(err.kind(), ErrorKind::BootFailed);
    assert_eq!(err.exit().unwrap().code, 2);
    assert!(err.to_string().contains("CrashLoopBackOff"), "{err}");
}

#[tokio::test]
async fn an_app_exiting_before_it_listens_is_a_boot_failure_with_code_and_logs() {
    let err = failed_start(Behavior::Exits {
        code: 3,
        oom: false,
        after: Duration::from_millis(20),
    })
    .await;
    assert_eq!(err.kind(), ErrorKind::BootFailed);
    assert_eq!(err.exit().unwrap().code, 3);
    assert!(!err.exit().unwrap().oom_killed);
    assert_eq!(err.logs(), Some("booting\npanic: no config\n"));
}

#[tokio::test]
async fn an_oom_kill_while_booting_is_reported_as_one() {
    let err = failed_start(Behavior::Exits {
        code: 137,
        oom: true,
        after: Duration::from_millis(20),
    })
    .await;
    assert_eq!(err.kind(), ErrorKind::BootFailed);
    assert!(err.exit().unwrap().oom_killed, "{err}");
    assert!(err.to_string().contains("OOMKilled"), "{err}");
}

#[tokio::test]
async fn an_app_that_never_listens_times_out_and_its_pod_is_deleted() {
    let mut app = app("silent");
    app.limits.startup_timeout = Duration::from_millis(300);
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    cluster.behave("silent", Behavior::NeverListens);
    let err = backend
        .start(&app, &InstanceId::new("silent-1-x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StartTimeout);
    assert!(cluster.pod_names().is_empty());
}

#[tokio::test]
async fn wait_reports_a_live_instances_crash_and_oom_kill_from_the_container_status() {
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    cluster.behave(
        "leaky",
        Behavior::ServesThenExits {
            code: 137,
            oom: true,
            after: Duration::from_millis(200),
        },
    );
    let id = InstanceId::new("leaky-1-x");
    backend.start(&app("leaky"), &id).await.unwrap();
    let exit = backend.wait(&id).await.unwrap();
    assert_eq!(exit.code, 137);
    assert!(exit.oom_killed);
    backend.stop(&id, Duration::ZERO).await.unwrap();
    assert!(cluster.pod_names().is_empty());
}

#[tokio::test]
async fn watches_that_end_or_expire_are_restarted() {
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    // The first watch answers 410 Gone; every later one ends after one event.
    cluster.gone_once();
    cluster.short_watches();
    let id = InstanceId::new("hello-1-w");
    backend.start(&app("hello"), &id).await.unwrap();
    let watches = cluster
        .requests_to(Method::GET, PODS)
        .into_iter()
        .filter(|r| r.uri.contains("watch=true"))
        .count();
    assert!(watches >= 3, "{watches} watches");
    // The 410 made the backend read the Pod afresh.
    assert!(!cluster
        .requests_to(Method::GET, &format!("{PODS}/hello-1-w"))
        .is_empty());
    assert!(get(&backend, &id).await.ends_with("from-pod\n"));
}

#[tokio::test]
async fn a_forbidden_api_names_the_missing_rbac_rule() {
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    cluster.forbid_create(
        "pods is forbidden: User \"system:serviceaccount:apps:serverless\" cannot create \
         resource \"pods\" in API group \"\" in the namespace \"apps\"",
    );
    let err = backend
        .start(&app("hello"), &InstanceId::new("hello-1-f"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = err.to_string();
    assert!(
        text.contains("forbidden") && text.contains("pods get/list/watch/create/delete"),
        "{text}"
    );
}

#[tokio::test]
async fn an_oci_archive_image_is_a_config_error_and_no_request_is_made() {
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    let app = AppSpec::new("local", ImageRef::OciArchive("./local.tar".into()));
    let err = backend.prepare(&app).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Image);
    assert!(err.to_string().contains("oci-archive:./local.tar"), "{err}");
    let err = backend
        .start(&app, &InstanceId::new("local-1-x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Image);
    assert!(cluster.requests().is_empty());
}

#[tokio::test]
async fn logs_come_from_the_pods_log_api() {
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    cluster.set_logs("hello", "listening on 8080\n");
    let id = InstanceId::new("hello-1-l");
    backend.start(&app("hello"), &id).await.unwrap();
    assert_eq!(backend.logs(&id).await.unwrap(), "listening on 8080\n");
    let logs = cluster.requests_to(Method::GET, &format!("{PODS}/hello-1-l/log"));
    assert!(logs[0].uri.contains("container=app"), "{:?}", logs[0]);
    assert!(backend
        .logs(&InstanceId::new("nope-1-x"))
        .await
        .unwrap_err()
        .is_not_found());
}

/// The trait's conformance suite, whole, against the scripted cluster.
#[tokio::test]
async fn the_conformance_suite_passes_against_the_scripted_cluster() {
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    cluster.behave(
        "crashes",
        Behavior::Exits {
            code: 3,
            oom: false,
            after: Duration::from_millis(20),
        },
    );
    cluster.behave("silent", Behavior::NeverListens);
    let mut silent = app("silent");
    silent.limits.startup_timeout = Duration::from_millis(500);
    let apps = Apps {
        serves: app("serves"),
        boot_failure: Some(app("crashes")),
        never_listens: Some(silent),
    };
    conformance::run(&backend, &apps).await.unwrap();
    assert!(cluster.pod_names().is_empty(), "{:?}", cluster.pod_names());
}

#[tokio::test]
async fn a_namespace_quota_is_named_as_such() {
    let (cluster, client) = Cluster::start();
    let backend = backend(client);
    cluster.forbid_create(
        "pods \"hello-1-q\" is forbidden: exceeded quota: compute, requested: limits.memory=256Mi, \
         used: limits.memory=1Gi, limited: limits.memory=1Gi",
    );
    let err = backend
        .start(&app("hello"), &InstanceId::new("hello-1-q"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = err.to_string();
    assert!(
        text.contains("quota") && text.contains("limits.memory=1Gi"),
        "{text}"
    );
    assert!(!text.contains("Role"), "{text}");
}
