//! [`KubernetesBackend`]: the [`ContainerBackend`] trait over the Pods API.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::Client;
use serverless_core::{
    AppSpec, BackendError, Connection, ContainerBackend, ErrorKind, Exit, InstanceId,
    OwnedInstance, Started,
};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::pod::{self, PodContext};
use crate::status::{self, Assessment};
use crate::watch::{PodWatch, Seen};

/// The log lines a boot failure carries, and `logs` returns.
const LOG_TAIL_LINES: i64 = 200;
/// How long `stop` waits for the Pod to be gone, beyond its grace period.
const REMOVE_SLACK: Duration = Duration::from_secs(30);

/// Runs each instance as one Pod (see the crate docs).
#[derive(Debug)]
pub struct KubernetesBackend {
    pods: Api<Pod>,
    namespace: String,
    gateway: String,
    owner: Option<OwnerReference>,
    probe_interval: Duration,
    connect_timeout: Duration,
    /// Where each started instance listens (Pod IP and port).
    addrs: Mutex<HashMap<InstanceId, SocketAddr>>,
}

/// Builds a [`KubernetesBackend`]; see [`KubernetesBackend::builder`].
pub struct Builder {
    client: Client,
    namespace: Option<String>,
    gateway: Option<String>,
    owner: Option<OwnerReference>,
    probe_interval: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("namespace", &self.namespace)
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// The namespace instances run in (default: the client's, i.e. the kubeconfig context's or
    /// the in-cluster service account's namespace).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// This gateway's identity, the value of the `serverless.dev/gateway` label on its Pods:
    /// `list` and `reconcile` see only Pods with this value, so gateways sharing a namespace
    /// each manage their own. Default: `$POD_NAME` (in a cluster, given by the downward API),
    /// else `serverless`. At most 63 characters of `[a-z0-9.-]`.
    pub fn gateway(mut self, id: impl Into<String>) -> Self {
        self.gateway = Some(id.into());
        self
    }

    /// An owner reference put on every instance Pod, so that the cluster garbage-collects
    /// instances when the owner (normally the gateway's own Pod) is deleted.
    pub fn owner(mut self, owner: OwnerReference) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The owner reference of the gateway's own Pod, from `$POD_NAME` and `$POD_UID` (set them
    /// with the downward API, as `deploy/kubernetes/gateway.yaml` does); nothing when either is
    /// unset (outside a cluster).
    pub fn owner_from_env(mut self) -> Self {
        if let (Ok(name), Ok(uid)) = (std::env::var("POD_NAME"), std::env::var("POD_UID")) {
            if !name.is_empty() && !uid.is_empty() {
                self.owner = Some(OwnerReference {
                    api_version: "v1".to_owned(),
                    kind: "Pod".to_owned(),
                    name,
                    uid,
                    ..OwnerReference::default()
                });
            }
        }
        self
    }

    /// How often `start` tries to connect to the Pod IP once the container runs (default
    /// 20 ms): the first request goes out as soon as the app listens, not at the next kubelet
    /// probe.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The bound of one TCP connect to a Pod (default 3 s): a Pod IP whose Pod is gone may
    /// drop packets instead of refusing them.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The backend.
    pub fn build(self) -> Result<KubernetesBackend, BackendError> {
        let gateway = self
            .gateway
            .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "serverless".to_owned());
        if gateway.is_empty() || !pod::is_label_value(&gateway) {
            return Err(BackendError::new(
                ErrorKind::Unavailable,
                format!(
                    "kubernetes.gateway = {gateway:?}: a label value (1 to 63 letters, digits, \
                     '-', '_' or '.', alphanumeric at both ends)"
                ),
            ));
        }
        let namespace = self
            .namespace
            .unwrap_or_else(|| self.client.default_namespace().to_owned());
        Ok(KubernetesBackend {
            pods: Api::namespaced(self.client, &namespace),
            namespace,
            gateway,
            owner: self.owner,
            probe_interval: self.probe_interval,
            connect_timeout: self.connect_timeout,
            addrs: Mutex::new(HashMap::new()),
        })
    }
}

/// A kube client for the cluster of `kubeconfig`, or when `None` the default: in a Pod, its
/// service account (in-cluster config); elsewhere `$KUBECONFIG` or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, BackendError> {
    let unavailable = |what: String, e: kube::Error| {
        BackendError::new(ErrorKind::Unavailable, what).with_source(e)
    };
    match kubeconfig {
        None => Client::try_default()
            .await
            .map_err(|e| unavailable("kubernetes: no in-cluster config nor kubeconfig".into(), e)),
        Some(path) => {
            let config = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                BackendError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "kubernetes.kubeconfig = {:?}: {e}",
                        path.display().to_string()
                    ),
                )
            })?;
            let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
                .await
                .map_err(|e| {
                    BackendError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "kubernetes.kubeconfig = {:?}: {e}",
                            path.display().to_string()
                        ),
                    )
                })?;
            Client::try_from(config).map_err(|e| {
                unavailable(
                    format!("kubernetes.kubeconfig = {:?}", path.display().to_string()),
                    e,
                )
            })
        }
    }
}

/// An API failure as a backend error: `404` is [`ErrorKind::NotFound`], `403` names the RBAC
/// rule that is missing, the rest is [`ErrorKind::Unavailable`] with the API's message.
fn api_error(what: &str, e: kube::Error) -> BackendError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => {
            BackendError::new(ErrorKind::NotFound, format!("{what}: not found"))
        }
        // A quota is a 403 too: its message says so, and RBAC is not the cause.
        kube::Error::Api(s) if s.code == 403 && s.message.contains("exceeded quota") => {
            BackendError::new(
                ErrorKind::Unavailable,
                format!("{what}: over the namespace's quota: {}", s.message),
            )
        }
        kube::Error::Api(s) if s.code == 403 => BackendError::new(
            ErrorKind::Unavailable,
            format!(
                "{what}: forbidden by the cluster ({}); the gateway's service account needs a \
                 Role with pods get/list/watch/create/delete/deletecollection and pods/log get \
                 (deploy/kubernetes/rbac.yaml)",
                s.message
            ),
        ),
        kube::Error::Api(s) => BackendError::new(
            ErrorKind::Unavailable,
            format!(
                "{what}: the API answered {} {}: {}",
                s.code, s.reason, s.message
            ),
        ),
        _ => BackendError::new(ErrorKind::Unavailable, format!("{what}: kubernetes API"))
            .with_source(e),
    }
}

fn grace_seconds(grace: Duration) -> u32 {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

impl KubernetesBackend {
    /// A builder over a kube client (see [`client`] for one from a kubeconfig or the Pod's
    /// service account; tests hand in a client over a scripted API).
    pub fn builder(client: Client) -> Builder {
        Builder {
            client,
            namespace: None,
            gateway: None,
            owner: None,
            probe_interval: Duration::from_millis(20),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// The namespace instances run in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// This gateway's identity (the `serverless.dev/gateway` label value).
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// The label selector of this gateway's Pods.
    pub fn selector(&self) -> String {
        pod::selector(&self.gateway)
    }

    /// Removes every Pod of this gateway (what a previous run of it left), in one
    /// `deletecollection` by label selector, and returns how many there were.
    pub async fn reconcile(&self) -> Result<usize, BackendError> {
        let params = ListParams::default().labels(&self.selector());
        let deleted = self
            .pods
            .delete_collection(&DeleteParams::default().grace_period(0), &params)
            .await
            .map_err(|e| api_error("removing the Pods of a previous run", e))?;
        // A list of what was deleted, or (for none) a Status.
        Ok(deleted.left().map_or(0, |list| list.items.len()))
    }

    fn addr(&self, id: &InstanceId) -> Option<SocketAddr> {
        self.addrs.lock().ok()?.get(id).copied()
    }

    async fn logs_of(&self, name: &str) -> Result<String, kube::Error> {
        let params = LogParams {
            container: Some(pod::CONTAINER.to_owned()),
            tail_lines: Some(LOG_TAIL_LINES),
            ..LogParams::default()
        };
        self.pods.logs(name, &params).await
    }

    /// Deletes Pod `name` with `grace` and waits until it is gone (at most `grace` + 30 s).
    async fn remove(&self, name: &str, grace: Duration) -> Result<(), BackendError> {
        let params = DeleteParams {
            grace_period_seconds: Some(grace_seconds(grace)),
            ..DeleteParams::default()
        };
        match self.pods.delete(name, &params).await {
            // A Status: deleted at once.
            Ok(deleted) if deleted.is_right() => return Ok(()),
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(api_error(&format!("deleting Pod {name}"), e)),
        }
        // The Pod the DELETE returns may be its last state (deleted at once) or a terminating
        // one: read it again, and watch from that version until it is gone.
        let pod = match self.pods.get_opt(name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return Ok(()),
            Err(e) => return Err(api_error(&format!("reading Pod {name}"), e)),
        };
        let version = pod.metadata.resource_version.clone().unwrap_or_default();
        let mut watch = PodWatch::new(self.pods.clone(), name, version);
        let gone = async {
            loop {
                match watch.next().await {
                    Ok(Seen::Deleted(_)) => return Ok(()),
                    Ok(Seen::Pod(_)) => {}
                    Err(e) => return Err(api_error(&format!("watching Pod {name}"), e)),
                }
            }
        };
        match tokio::time::timeout(grace + REMOVE_SLACK, gone).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    pod = name,
                    "Pod still terminating {:?} after its delete",
                    grace + REMOVE_SLACK
                );
                Ok(())
            }
        }
    }

    /// Everything of `start` after the Pod was created; the caller removes the Pod on `Err`.
    async fn until_listening(
        &self,
        app: &AppSpec,
        name: &str,
        created: &Pod,
        phases: &mut Vec<(&'static str, Duration)>,
    ) -> Result<SocketAddr, BackendError> {
        let t0 = Instant::now();
        let version = created
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let mut watch = PodWatch::new(self.pods.clone(), name, version);
        let mut ip: Option<IpAddr> = None;
        let mut probe = tokio::time::interval(self.probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                seen = watch.next() => {
                    let pod = match seen.map_err(|e| api_error(&format!("watching Pod {name}"), e))? {
                        Seen::Pod(pod) => pod,
                        Seen::Deleted(_) => {
                            return Err(BackendError::new(
                                ErrorKind::Unavailable,
                                format!("Pod {name} was deleted while it started"),
                            ))
                        }
                    };
                    match status::assess(&pod) {
                        Assessment::Pending => {}
                        Assessment::Running(at) => {
                            if ip.is_none() {
                                phases.push(("pod_running", t0.elapsed()));
                            }
                            ip = Some(at);
                        }
                        Assessment::Exited(exit, reason) => {
                            let logs = self.logs_of(name).await.unwrap_or_default();
                            return Err(BackendError::boot_failed(exit, logs)
                                .with_source(format!("the cluster reports {reason}")));
                        }
                        Assessment::Failed(e) => return Err(e),
                    }
                }
                _ = probe.tick(), if ip.is_some() => {
                    let Some(at) = ip else { continue };
                    let addr = SocketAddr::new(at, app.port);
                    if let Ok(Ok(_)) = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                        phases.push(("listen", t0.elapsed()));
                        return Ok(addr);
                    }
                }
            }
        }
    }
}

#[async_trait]
impl ContainerBackend for KubernetesBackend {
    /// Checks that the image is a registry reference; the kubelet pulls it (there is no
    /// cluster-wide pre-pull).
    async fn prepare(&self, app: &AppSpec) -> Result<(), BackendError> {
        pod::image(app).map(|_| ())
    }

    async fn start(&self, app: &AppSpec, id: &InstanceId) -> Result<Started, BackendError> {
        let t0 = Instant::now();
        let manifest = pod::manifest(
            app,
            id,
            &PodContext {
                namespace: &self.namespace,
                gateway: &self.gateway,
                owner: self.owner.as_ref(),
            },
        )?;
        let name = pod::pod_name(id)?;
        let created = self
            .pods
            .create(&PostParams::default(), &manifest)
            .await
            .map_err(|e| api_error(&format!("creating Pod {name}"), e))?;
        let mut phases = vec![("pod_create", t0.elapsed())];
        let listening = tokio::time::timeout(
            app.limits.startup_timeout,
            self.until_listening(app, name, &created, &mut phases),
        )
        .await
        .unwrap_or_else(|_| {
            Err(BackendError::new(
                ErrorKind::StartTimeout,
                format!(
                    "Pod {name} did not listen on port {} within {:?}",
                    app.port, app.limits.startup_timeout
                ),
            ))
        });
        match listening {
            Ok(addr) => {
                if let Ok(mut addrs) = self.addrs.lock() {
                    addrs.insert(id.clone(), addr);
                }
                Ok(Started {
                    port: addr.port(),
                    phases,
                })
            }
            Err(e) => {
                if let Err(cleanup) = self.remove(name, Duration::ZERO).await {
                    tracing::warn!(pod = name, error = %cleanup, "could not remove a failed Pod");
                }
                Err(e)
            }
        }
    }

    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), BackendError> {
        if let Ok(mut addrs) = self.addrs.lock() {
            addrs.remove(id);
        }
        // An id that is no Pod name was never started here.
        let Ok(name) = pod::pod_name(id) else {
            return Ok(());
        };
        self.remove(name, grace).await
    }

    async fn wait(&self, id: &InstanceId) -> Result<Exit, BackendError> {
        let not_found = || BackendError::new(ErrorKind::NotFound, format!("no instance {id}"));
        let name = pod::pod_name(id).map_err(|_| not_found())?;
        let pod = self
            .pods
            .get_opt(name)
            .await
            .map_err(|e| api_error(&format!("reading Pod {name}"), e))?
            .ok_or_else(not_found)?;
        let mut last = pod;
        let version = last.metadata.resource_version.clone().unwrap_or_default();
        let mut watch = PodWatch::new(self.pods.clone(), name, version);
        loop {
            match status::assess(&last) {
                Assessment::Exited(exit, _) => return Ok(exit),
                Assessment::Failed(_) | Assessment::Pending | Assessment::Running(_) => {}
            }
            match watch
                .next()
                .await
                .map_err(|e| api_error(&format!("watching Pod {name}"), e))?
            {
                Seen::Pod(pod) => last = *pod,
                Seen::Deleted(pod) => {
                    let last = pod.map(|p| *p).unwrap_or(last);
                    return Ok(match status::assess(&last) {
                        Assessment::Exited(exit, _) => exit,
                        // Deleted before the kubelet reported an exit: it was killed.
                        _ => Exit::code(137),
                    });
                }
            }
        }
    }

    async fn connect(&self, id: &InstanceId) -> Result<Connection, BackendError> {
        let addr = self
            .addr(id)
            .ok_or_else(|| BackendError::new(ErrorKind::NotFound, format!("no instance {id}")))?;
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                BackendError::new(
                    ErrorKind::Connect,
                    format!(
                        "instance {id} at {addr}: no answer within {:?}",
                        self.connect_timeout
                    ),
                )
            })?
            .map_err(|e| {
                BackendError::new(ErrorKind::Connect, format!("instance {id} at {addr}"))
                    .with_source(e)
            })?;
        let _ = stream.set_nodelay(true);
        Ok(Box::new(stream))
    }

    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
        let params = ListParams::default().labels(&self.selector());
        let pods = self
            .pods
            .list(&params)
            .await
            .map_err(|e| api_error("listing Pods", e))?;
        Ok(pods
            .items
            .iter()
            .map(|p| {
                let meta = &p.metadata;
                let id = meta
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(pod::INSTANCE_ANNOTATION))
                    .or(meta.name.as_ref())
                    .cloned()
                    .unwrap_or_default();
                OwnedInstance {
                    id: InstanceId::new(id),
                    app: meta
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(pod::APP))
                        .cloned()
                        .unwrap_or_default(),
                    running: status::is_running(p),
                }
            })
            .collect())
    }

    async fn logs(&self, id: &InstanceId) -> Result<String, BackendError> {
        let name = pod::pod_name(id)
            .map_err(|_| BackendError::new(ErrorKind::NotFound, format!("no instance {id}")))?;
        self.logs_of(name)
            .await
            .map_err(|e| api_error(&format!("logs of Pod {name}"), e))
    }
}
