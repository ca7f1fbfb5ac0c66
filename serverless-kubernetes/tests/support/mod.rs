//! A scripted Kubernetes API server for the backend's tests.
//!
//! No API server can run on the machines this project is built on, so the tests hand kube's
//! real client (`kube::Client::new` over a `tower_test::mock` service, the pattern of kube's
//! "testing controllers" guide) to this script. It answers the requests the backend makes
//! (create, get, list, watch, log, delete and deletecollection of Pods) from an in-memory Pod
//! table, records every request (method, path and query, body) for the tests to check, and
//! plays the kubelet: each Pod goes through scheduling and container states the test chose for
//! its app ([`Behavior`]), and a Pod that "serves" is a task listening on its own loopback
//! address (`127.0.0.N`, the Pod IP) and the app's port, so the backend's TCP probe and
//! `connect` use real sockets.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, Time};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const NAMESPACE: &str = "apps";

/// What the scripted kubelet does with the Pods of one app.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Scheduled, running, and listening on the Pod IP and port after `listen_after`.
    Serves { listen_after: Duration },
    /// Running, never listening.
    NeverListens,
    /// Running, then the container exits with `code` (as `OOMKilled` when `oom`) after `after`.
    Exits {
        code: i32,
        oom: bool,
        after: Duration,
    },
    /// Serving, then the container exits after `after` (a crash or OOM kill of a live instance).
    ServesThenExits {
        code: i32,
        oom: bool,
        after: Duration,
    },
    /// The image cannot be pulled: waiting `ImagePullBackOff`.
    ImagePullBackOff,
    /// No node fits: `PodScheduled=False`, reason `Unschedulable`.
    Unschedulable,
    /// Restarting: waiting `CrashLoopBackOff`, last exit `code`.
    CrashLoopBackOff { code: i32 },
}

/// One request the backend made.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, percent-decoded.
    pub uri: String,
    pub body: Value,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

struct Watcher {
    name: String,
    tx: mpsc::UnboundedSender<Bytes>,
}

struct Entry {
    pod: Pod,
    server: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Entry>,
    version: u64,
    watchers: Vec<Watcher>,
    behaviors: HashMap<String, Behavior>,
    logs: HashMap<String, String>,
    next_ip: u8,
    /// Answer the next watch with `410 Gone` (the backend must resync with a GET).
    gone_once: bool,
    /// End every watch stream after one event (the backend must restart it).
    short_watches: bool,
    /// Refuse Pod creation with 403 and this message (missing RBAC, a quota).
    forbid_create: Option<String>,
}

/// The scripted API server; clone freely.
#[derive(Clone)]
pub struct Cluster {
    state: Arc<Mutex<State>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Cluster {
    /// A cluster and a kube client whose every request goes to it.
    pub fn start() -> (Self, kube::Client) {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let cluster = Cluster {
            state: Arc::new(Mutex::new(State {
                next_ip: 2,
                ..State::default()
            })),
            requests: Arc::default(),
        };
        let c = cluster.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = c.handle(request).await;
                respond.send_response(response);
            }
        });
        (cluster, kube::Client::new(service, NAMESPACE))
    }

    /// Also answers over plain HTTP on a loopback port, for a client in another process (the
    /// `serverless` binary, through a kubeconfig whose server is `http://<the address>`).
    pub async fn serve_http(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cluster = self.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let cluster = cluster.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let cluster = cluster.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let req =
                                    Request::from_parts(parts, kube::client::Body::from(body));
                                Ok::<_, Infallible>(cluster.handle(req).await)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        addr
    }

    pub fn behave(&self, app: &str, behavior: Behavior) {
        self.state().behaviors.insert(app.to_owned(), behavior);
    }

    pub fn set_logs(&self, app: &str, logs: &str) {
        self.state().logs.insert(app.to_owned(), logs.to_owned());
    }

    pub fn gone_once(&self) {
        self.state().gone_once = true;
    }

    pub fn short_watches(&self) {
        self.state().short_watches = true;
    }

    pub fn forbid_create(&self, message: &str) {
        self.state().forbid_create = Some(message.to_owned());
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The requests with this method whose path starts with `prefix`.
    pub fn requests_to(&self, method: Method, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.uri.starts_with(prefix))
            .collect()
    }

    /// The names of the Pods that exist.
    pub fn pod_names(&self) -> Vec<String> {
        self.state().pods.keys().cloned().collect()
    }

    pub fn pod(&self, name: &str) -> Option<Pod> {
        self.state().pods.get(name).map(|e| e.pod.clone())
    }

    /// Adds a Pod as if someone else (another gateway, a previous run) created it.
    pub fn insert_pod(&self, pod: Pod) {
        let mut st = self.state();
        st.version += 1;
        let mut pod = pod;
        pod.metadata.resource_version = Some(st.version.to_string());
        let name = pod.metadata.name.clone().unwrap();
        st.pods.insert(name, Entry { pod, server: None });
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    async fn handle(&self, request: Request<kube::client::Body>) -> Response<Body> {
        let method = request.method().clone();
        let uri = request.uri().to_string();
        let uri = percent_decode(&uri);
        let body = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        self.requests.lock().unwrap().push(Recorded {
            method: method.clone(),
            uri: uri.clone(),
            body: body.clone(),
        });
        let (path, query) = uri.split_once('?').unwrap_or((&uri, ""));
        let query: HashMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let base = format!("/api/v1/namespaces/{NAMESPACE}/pods");
        let rest = path.strip_prefix(&base).unwrap_or("!");
        let name = rest.trim_start_matches('/');
        match (method, rest) {
            (Method::POST, "") => self.create(body),
            (Method::GET, "") if query.get("watch") == Some(&"true") => self.watch(&query),
            (Method::GET, "") => self.list(query.get("labelSelector").copied()),
            (Method::DELETE, "") => self.delete_collection(query.get("labelSelector").copied()),
            (Method::GET, _) if name.ends_with("/log") => self.log(name.trim_end_matches("/log")),
            (Method::GET, _) => match self.pod(name) {
                Some(pod) => json_response(StatusCode::OK, &pod),
                None => not_found(name),
            },
            (Method::DELETE, _) => self.delete(name, &body),
            (m, _) => status_response(StatusCode::METHOD_NOT_ALLOWED, &format!("{m} {uri}")),
        }
    }

    fn create(&self, body: Value) -> Response<Body> {
        if let Some(message) = self.state().forbid_create.clone() {
            return status_response(StatusCode::FORBIDDEN, &message);
        }
        let mut pod: Pod = serde_json::from_value(body).unwrap();
        let name = pod.metadata.name.clone().unwrap();
        let app = labels(&pod)
            .get("serverless.dev/app")
            .cloned()
            .unwrap_or_default();
        let mut st = self.state();
        if st.pods.contains_key(&name) {
            return status_response(
                StatusCode::CONFLICT,
                &format!("pods \"{name}\" already exists"),
            );
        }
        st.version += 1;
        pod.metadata.uid = Some(format!("uid-{}", st.version));
        pod.metadata.resource_version = Some(st.version.to_string());
        pod.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        pod.status = Some(PodStatus {
            phase: Some("Pending".into()),
            ..PodStatus::default()
        });
        st.pods.insert(
            name.clone(),
            Entry {
                pod: pod.clone(),
                server: None,
            },
        );
        let behavior = st.behaviors.get(&app).cloned().unwrap_or(Behavior::Serves {
            listen_after: Duration::from_millis(30),
        });
        let ip = Ipv4Addr::new(127, 0, 0, st.next_ip);
        st.next_ip = if st.next_ip >= 250 { 2 } else { st.next_ip + 1 };
        drop(st);
        let port = pod.spec.as_ref().unwrap().containers[0]
            .ports
            .as_ref()
            .unwrap()[0]
            .container_port as u16;
        let kubelet = self.clone();
        tokio::spawn(async move { kubelet.run(name, behavior, IpAddr::V4(ip), port).await });
        json_response(StatusCode::CREATED, &pod)
    }

    /// The scripted kubelet: moves Pod `name` through the states of its behavior.
    async fn run(self, name: String, behavior: Behavior, ip: IpAddr, port: u16) {
        let step = Duration::from_millis(10);
        tokio::time::sleep(step).await;
        if let Behavior::Unschedulable = behavior {
            self.update(&name, |s| {
                s.conditions = Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some("0/3 nodes are available: 3 Insufficient memory.".into()),
                    ..PodCondition::default()
                }]);
            });
            return;
        }
        self.update(&name, |s| {
            s.conditions = Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]);
        });
        tokio::time::sleep(step).await;
        let waiting = |reason: &str, message: &str| ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some(message.into()),
            }),
            ..ContainerState::default()
        };
        match behavior {
            Behavior::ImagePullBackOff => {
                let image = self.image(&name);
                self.set_container(
                    &name,
                    waiting(
                        "ImagePullBackOff",
                        &format!("Back-off pulling image \"{image}\""),
                    ),
                    None,
                    None,
                );
            }
            Behavior::CrashLoopBackOff { code } => self.set_container(
                &name,
                waiting(
                    "CrashLoopBackOff",
                    "back-off 10s restarting failed container=app",
                ),
                Some(terminated(code, false)),
                Some(ip),
            ),
            Behavior::Serves { listen_after } => {
                self.set_container(&name, running(), None, Some(ip));
                tokio::time::sleep(listen_after).await;
                self.listen(&name, SocketAddr::new(ip, port)).await;
            }
            Behavior::NeverListens => self.set_container(&name, running(), None, Some(ip)),
            Behavior::Exits { code, oom, after } => {
                self.set_container(&name, running(), None, Some(ip));
                tokio::time::sleep(after).await;
                self.exit(&name, code, oom);
            }
            Behavior::ServesThenExits { code, oom, after } => {
                self.set_container(&name, running(), None, Some(ip));
                self.listen(&name, SocketAddr::new(ip, port)).await;
                tokio::time::sleep(after).await;
                self.exit(&name, code, oom);
            }
            Behavior::Unschedulable => unreachable!(),
        }
    }

    fn image(&self, name: &str) -> String {
        self.pod(name)
            .and_then(|p| p.spec?.containers[0].image.clone())
            .unwrap_or_default()
    }

    /// Starts the "app": a task answering HTTP/1.1 200 on the Pod's address.
    async fn listen(&self, name: &str, addr: SocketAddr) {
        let listener = TcpListener::bind(addr).await.unwrap();
        let server = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nfrom-pod\n")
                        .await;
                });
            }
        });
        let mut st = self.state();
        match st.pods.get_mut(name) {
            Some(entry) => entry.server = Some(server),
            None => server.abort(),
        }
    }

    fn exit(&self, name: &str, code: i32, oom: bool) {
        if let Some(server) = self
            .state()
            .pods
            .get_mut(name)
            .and_then(|e| e.server.take())
        {
            server.abort();
        }
        self.set_container(name, terminated_state(code, oom), None, None);
        self.update(name, |s| {
            s.phase = Some(if code == 0 { "Succeeded" } else { "Failed" }.into())
        });
    }

    fn set_container(
        &self,
        name: &str,
        state: ContainerState,
        last: Option<ContainerStateTerminated>,
        ip: Option<IpAddr>,
    ) {
        self.update(name, |s| {
            let running = state.running.is_some();
            s.container_statuses = Some(vec![ContainerStatus {
                name: "app".into(),
                ready: running,
                started: Some(running),
                state: Some(state),
                last_state: last.map(|t| ContainerState {
                    terminated: Some(t),
                    ..ContainerState::default()
                }),
                restart_count: 0,
                image: String::new(),
                image_id: String::new(),
                ..ContainerStatus::default()
            }]);
            if running {
                s.phase = Some("Running".into());
            }
            if let Some(ip) = ip {
                s.pod_ip = Some(ip.to_string());
            }
        });
    }

    /// Changes a Pod's status, bumps its version and tells the watchers.
    fn update(&self, name: &str, change: impl FnOnce(&mut PodStatus)) {
        let mut st = self.state();
        st.version += 1;
        let version = st.version.to_string();
        let Some(entry) = st.pods.get_mut(name) else {
            return;
        };
        change(entry.pod.status.get_or_insert_with(PodStatus::default));
        entry.pod.metadata.resource_version = Some(version);
        let pod = entry.pod.clone();
        notify(&mut st, name, "MODIFIED", &pod);
    }

    fn watch(&self, query: &HashMap<&str, &str>) -> Response<Body> {
        let name = query
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .unwrap_or_default()
            .to_owned();
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.state();
        if std::mem::take(&mut st.gone_once) {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "code": 410, "reason": "Expired",
                "message": format!("too old resource version: {since}")}});
            let _ = tx.send(line(&gone));
            drop(tx);
        } else {
            // What happened since the version the client has, then every later change.
            if let Some(entry) = st.pods.get(&name) {
                let v: u64 = entry
                    .pod
                    .metadata
                    .resource_version
                    .as_deref()
                    .unwrap()
                    .parse()
                    .unwrap();
                if v > since {
                    let _ = tx.send(line(&json!({"type": "MODIFIED", "object": entry.pod})));
                    if st.short_watches {
                        drop(tx);
                        return stream_response(rx);
                    }
                }
            }
            st.watchers.push(Watcher { name, tx });
        }
        stream_response(rx)
    }

    fn list(&self, selector: Option<&str>) -> Response<Body> {
        let st = self.state();
        let items: Vec<&Pod> = st
            .pods
            .values()
            .map(|e| &e.pod)
            .filter(|p| matches(p, selector))
            .collect();
        json_response(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "PodList",
                "metadata": {"resourceVersion": st.version.to_string()}, "items": items}),
        )
    }

    fn log(&self, name: &str) -> Response<Body> {
        let Some(pod) = self.pod(name) else {
            return not_found(name);
        };
        let app = labels(&pod)
            .get("serverless.dev/app")
            .cloned()
            .unwrap_or_default();
        let text = self.state().logs.get(&app).cloned().unwrap_or_default();
        Response::builder()
            .status(StatusCode::OK)
            .body(Full::new(Bytes::from(text)).boxed_unsync())
            .unwrap()
    }

    fn delete(&self, name: &str, body: &Value) -> Response<Body> {
        let grace = body["gracePeriodSeconds"].as_u64().unwrap_or(30);
        let Some(pod) = self.pod(name) else {
            return not_found(name);
        };
        if grace == 0 {
            return json_response(StatusCode::OK, &self.remove(name));
        }
        // Graceful: mark it, let the "app" take SIGTERM and exit 143 a moment later, then remove.
        {
            let mut st = self.state();
            st.version += 1;
            let version = st.version.to_string();
            let entry = st.pods.get_mut(name).unwrap();
            entry.pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            entry.pod.metadata.deletion_grace_period_seconds = Some(grace as i64);
            entry.pod.metadata.resource_version = Some(version);
            let pod = entry.pod.clone();
            notify(&mut st, name, "MODIFIED", &pod);
        }
        let kubelet = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            kubelet.exit(&name, 143, false);
            kubelet.remove(&name);
        });
        json_response(StatusCode::OK, &pod)
    }

    fn delete_collection(&self, selector: Option<&str>) -> Response<Body> {
        let names: Vec<String> = {
            let st = self.state();
            st.pods
                .iter()
                .filter(|(_, e)| matches(&e.pod, selector))
                .map(|(n, _)| n.clone())
                .collect()
        };
        let items: Vec<Pod> = names.iter().map(|n| self.remove(n)).collect();
        json_response(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
        )
    }

    /// Removes a Pod at once: its "app" stops, watchers get `DELETED`.
    fn remove(&self, name: &str) -> Pod {
        let mut st = self.state();
        st.version += 1;
        let version = st.version.to_string();
        let Some(mut entry) = st.pods.remove(name) else {
            return Pod::default();
        };
        if let Some(server) = entry.server.take() {
            server.abort();
        }
        entry.pod.metadata.resource_version = Some(version);
        notify(&mut st, name, "DELETED", &entry.pod);
        entry.pod
    }
}

fn running() -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning::default()),
        ..ContainerState::default()
    }
}

fn terminated(code: i32, oom: bool) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: code,
        reason: Some(
            if oom {
                "OOMKilled"
            } else if code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .into(),
        ),
        ..ContainerStateTerminated::default()
    }
}

fn terminated_state(code: i32, oom: bool) -> ContainerState {
    ContainerState {
        terminated: Some(terminated(code, oom)),
        ..ContainerState::default()
    }
}

fn notify(st: &mut State, name: &str, kind: &str, pod: &Pod) {
    let event = line(&json!({"type": kind, "object": pod}));
    let short = st.short_watches;
    st.watchers.retain(|w| {
        if w.name != name {
            return !w.tx.is_closed();
        }
        // A short watch ends after this event (the receiver sees the end of the stream).
        w.tx.send(event.clone()).is_ok() && !short
    });
}

pub fn labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

/// `k=v,k=v` label selectors, all of which must match.
fn matches(pod: &Pod, selector: Option<&str>) -> bool {
    let labels = labels(pod);
    selector
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| {
            let (k, v) = term.split_once('=').unwrap();
            labels.get(k).map(String::as_str) == Some(v)
        })
}

fn line(v: &Value) -> Bytes {
    let mut s = serde_json::to_vec(v).unwrap();
    s.push(b'\n');
    Bytes::from(s)
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed_unsync())
        .unwrap()
}

fn status_response(code: StatusCode, message: &str) -> Response<Body> {
    let status = Status {
        code: Some(i32::from(code.as_u16())),
        message: Some(message.to_owned()),
        reason: Some(code.canonical_reason().unwrap_or("").replace(' ', "")),
        status: Some("Failure".into()),
        ..Status::default()
    };
    let mut v = serde_json::to_value(&status).unwrap();
    v["kind"] = "Status".into();
    v["apiVersion"] = "v1".into();
    json_response(code, &v)
}

fn not_found(name: &str) -> Response<Body> {
    status_response(StatusCode::NOT_FOUND, &format!("pods \"{name}\" not found"))
}

fn stream_response(rx: mpsc::UnboundedReceiver<Bytes>) -> Response<Body> {
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed_unsync(StreamBody::new(frames)))
        .unwrap()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
