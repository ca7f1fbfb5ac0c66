//! The gateway over a private containerd, in-process, with a backend wrapper that records when
//! instances start and stop (and each start's phases); a native backend. Test images and what
//! is read off the gateway come from `serverless-testkit`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use serverless_containerd::{ContainerdBackend, ImageBuilder};
use serverless_core::{
    AppSpec, BackendError, Config, Connection, ContainerBackend, ErrorKind, Exit, InstanceId,
    OwnedInstance, Started,
};
use serverless_proxy::Gateway;

use serde_json::json;

use crate::util::{ms, summary, Context, Res};

/// One recorded start.
#[derive(Debug, Clone)]
pub(crate) struct StartRecord {
    pub(crate) took: Duration,
    pub(crate) phases: Vec<(&'static str, Duration)>,
}

/// What [`phase_breakdown`] reports of each phase's samples.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PhaseSummary<'a> {
    /// Each phase's [`Summary`](crate::util::Summary) (`phases`, in `phase_order`), the
    /// backend's whole start (`backend_start`), and what the gateway added to it
    /// (`gateway_overhead`): `totals` are the client-side times of the same runs, in order.
    Full { totals: &'a [f64] },
    /// Only medians: each phase's (`median_ms`, in `order`) and the backend's whole start's
    /// (`backend_start_median_ms`).
    Medians,
}

/// The backend's phases of some recorded starts, in the order they first appear, in ms,
/// summarized as `how` says.
pub(crate) fn phase_breakdown<'a>(
    records: impl IntoIterator<Item = &'a StartRecord>,
    how: PhaseSummary<'_>,
) -> serde_json::Value {
    let records: Vec<&StartRecord> = records.into_iter().collect();
    let mut order: Vec<&str> = Vec::new();
    for r in &records {
        for (p, _) in &r.phases {
            if !order.contains(p) {
                order.push(p);
            }
        }
    }
    let backend_start: Vec<f64> = records.iter().map(|r| ms(r.took)).collect();
    // `f` of each phase's samples, by phase name.
    let each = |f: fn(&[f64]) -> serde_json::Value| {
        order
            .iter()
            .map(|name| {
                let samples: Vec<f64> = records
                    .iter()
                    .filter_map(|r| r.phases.iter().find(|(p, _)| p == name))
                    .map(|(_, d)| ms(*d))
                    .collect();
                ((*name).to_owned(), f(&samples))
            })
            .collect::<serde_json::Map<_, _>>()
    };
    match how {
        PhaseSummary::Full { totals } => {
            let overhead: Vec<f64> = totals
                .iter()
                .zip(&backend_start)
                .map(|(total, start)| total - start)
                .collect();
            json!({
                "phases": each(|v| json!(summary(v))),
                "phase_order": order,
                "backend_start": summary(&backend_start),
                "gateway_overhead": summary(&overhead),
            })
        }
        PhaseSummary::Medians => json!({
            "order": order,
            "median_ms": each(|v| json!(summary(v).p50)),
            "backend_start_median_ms": summary(&backend_start).p50,
        }),
    }
}

/// One recorded stop.
#[derive(Debug, Clone)]
pub(crate) struct StopRecord {
    pub(crate) app: String,
    pub(crate) called: Instant,
    pub(crate) done: Instant,
}

#[derive(Default)]
struct Log {
    apps: HashMap<String, String>,
    starts: Vec<StartRecord>,
    stops: Vec<StopRecord>,
}

/// Delegates to a backend and records starts and stops.
pub(crate) struct Recording<B> {
    inner: B,
    log: Mutex<Log>,
}

impl<B> Recording<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            log: Mutex::default(),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn starts(&self) -> Vec<StartRecord> {
        self.log().starts.clone()
    }

    pub(crate) fn stops(&self) -> Vec<StopRecord> {
        self.log().stops.clone()
    }
}

#[async_trait]
impl<B: ContainerBackend> ContainerBackend for Recording<B> {
    async fn prepare(&self, app: &AppSpec) -> Result<(), BackendError> {
        self.inner.prepare(app).await
    }
    async fn start(&self, app: &AppSpec, id: &InstanceId) -> Result<Started, BackendError> {
        let called = Instant::now();
        self.log()
            .apps
            .insert(id.as_str().to_owned(), app.name.clone());
        let started = self.inner.start(app, id).await?;
        self.log().starts.push(StartRecord {
            took: called.elapsed(),
            phases: started.phases.clone(),
        });
        Ok(started)
    }
    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), BackendError> {
        let called = Instant::now();
        let result = self.inner.stop(id, grace).await;
        let mut log = self.log();
        let app = log.apps.get(id.as_str()).cloned().unwrap_or_default();
        log.stops.push(StopRecord {
            app,
            called,
            done: Instant::now(),
        });
        result
    }
    async fn wait(&self, id: &InstanceId) -> Result<Exit, BackendError> {
        self.inner.wait(id).await
    }
    async fn connect(&self, id: &InstanceId) -> Result<Connection, BackendError> {
        self.inner.connect(id).await
    }
    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
        self.inner.list().await
    }
    async fn logs(&self, id: &InstanceId) -> Result<String, BackendError> {
        self.inner.logs(id).await
    }
    async fn release(&self, app: &AppSpec) {
        self.inner.release(app).await
    }
}

/// "Instances" that are one native server on a loopback port: isolates the gateway's own cost
/// (routing, limits, forwarding) from the container's network namespace.
pub(crate) struct NativeBackend {
    pub(crate) port: u16,
}

#[async_trait]
impl ContainerBackend for NativeBackend {
    async fn prepare(&self, _app: &AppSpec) -> Result<(), BackendError> {
        Ok(())
    }
    async fn start(&self, _app: &AppSpec, _id: &InstanceId) -> Result<Started, BackendError> {
        Ok(Started {
            port: self.port,
            phases: Vec::new(),
        })
    }
    async fn stop(&self, _id: &InstanceId, _grace: Duration) -> Result<(), BackendError> {
        Ok(())
    }
    async fn wait(&self, _id: &InstanceId) -> Result<Exit, BackendError> {
        std::future::pending().await
    }
    async fn connect(&self, _id: &InstanceId) -> Result<Connection, BackendError> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| BackendError::new(ErrorKind::Connect, e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(Box::new(stream))
    }
    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
        Ok(Vec::new())
    }
    async fn logs(&self, _id: &InstanceId) -> Result<String, BackendError> {
        Ok(String::new())
    }
}

/// A gateway over a private containerd under a temp dir.
pub(crate) struct Lab {
    pub(crate) gateway: Gateway,
    pub(crate) containerd: Arc<ContainerdBackend>,
    pub(crate) rec: Arc<Recording<Arc<ContainerdBackend>>>,
    pub(crate) dir: tempfile::TempDir,
}

impl Lab {
    /// Writes `images` (file name, image) into a temp dir, starts containerd and the gateway.
    /// The bench's apps say `network = "none"`: a bridge start fails here (its namespace,
    /// [`NO_BRIDGE_NETNS`](serverless_testkit::NO_BRIDGE_NETNS), does not exist), so nothing
    /// the bench runs wires the machine's own network; `network.rs` puts its bridge in a
    /// namespace it makes ([`start_with`](Self::start_with)).
    pub(crate) async fn start(namespace: &str, images: &[(&str, ImageBuilder)]) -> Res<Self> {
        Self::start_with(namespace, images, |b| {
            b.network_host_netns(serverless_testkit::NO_BRIDGE_NETNS)
        })
        .await
    }

    /// [`start`](Self::start) with more settings on the backend's builder.
    pub(crate) async fn start_with(
        namespace: &str,
        images: &[(&str, ImageBuilder)],
        configure: impl FnOnce(serverless_containerd::Builder) -> serverless_containerd::Builder,
    ) -> Res<Self> {
        let dir = tempfile::Builder::new()
            .prefix("serverless-bench-")
            .tempdir()
            .context("create a temp dir")?;
        for (name, image) in images {
            let path = dir.path().join(name);
            image
                .write_oci_archive(&path)
                .context(format_args!("write {}", path.display()))?;
        }
        let containerd = Arc::new(
            configure(
                ContainerdBackend::builder(dir.path().join("containerd")).namespace(namespace),
            )
            .build()
            .await
            .context("start a private containerd (needs root, containerd and runc)")?,
        );
        let rec = Arc::new(Recording::new(containerd.clone()));
        let config = Config::from_toml("listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n")
            .context("gateway config")?;
        let gateway = Gateway::start(config, rec.clone())
            .await
            .map_err(|e| format!("start the gateway: {e}"))?;
        Ok(Self {
            gateway,
            containerd,
            rec,
            dir,
        })
    }

    /// A cold start of a fresh app (so it has no instance): deploys app `name` from its
    /// `[[apps]]` table, waits for the backend to settle, times one request from connect to the
    /// response head (it must answer 200), then removes the app and waits until its containers
    /// are gone and the backend settled again.
    pub(crate) async fn cold_request(&self, name: &str, app_toml: &str) -> Res<Duration> {
        self.deploy(app_toml).await?;
        self.settle().await?;
        let t = Instant::now();
        let mut tx = serverless_testkit::connect(self.gateway.listen_addr()).await?;
        let req = http::Request::get("/")
            .header(http::header::HOST, format!("{name}.localhost"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let res = tx.send_request(req).await.context("cold request")?;
        let took = t.elapsed();
        let status = res.status();
        http_body_util::BodyExt::collect(res.into_body()).await?;
        if status != http::StatusCode::OK {
            return Err(format!("cold request to {name} answered {status}").into());
        }
        self.gateway.engine().remove(name).await;
        self.wait_empty(Duration::from_secs(30)).await?;
        Ok(took)
    }

    /// Deploys one app from a `[[apps]]` TOML table (`{dir}` = the lab's temp dir).
    pub(crate) async fn deploy(&self, app_toml: &str) -> Res<AppSpec> {
        let toml = app_toml.replace("{dir}", &self.dir.path().display().to_string());
        let config = Config::from_toml(&format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{toml}"
        ))
        .context("app config")?;
        let spec = config
            .apps
            .into_iter()
            .next()
            .context("app config has no [[apps]]")?;
        self.gateway
            .engine()
            .deploy(spec.clone())
            .await
            .context(format_args!("deploy {}", spec.name))?;
        Ok(spec)
    }

    /// Instances of `app` by state: (ready, total).
    pub(crate) fn instances(&self, app: &str) -> (usize, usize) {
        self.gateway
            .engine()
            .app(app)
            .map(|a| {
                let snap = a.pool.snapshot();
                let ready = snap
                    .instances
                    .iter()
                    .filter(|i| i.state.as_str() == "ready")
                    .count();
                (ready, snap.instances.len())
            })
            .unwrap_or((0, 0))
    }

    /// Waits until the backend's background work is done (the next spare shim, the network
    /// pool's refill, CNI DEL of released namespaces; see `ContainerdBackend::settled`), so
    /// that each measured start begins from the same state and a peer measured next does not
    /// share the CPU with it. Without this, a start often ran while the previous one's spare
    /// shim or namespace was being remade: in the sandbox scenario every other start, which
    /// with three modes interleaved favoured a different mode in each run.
    /// `BENCH_SETTLE=0` skips it, to see what back-to-back starts pay.
    pub(crate) async fn settle(&self) -> Res<()> {
        if serverless_testkit::env_num("BENCH_SETTLE", 1u8)? == 0 {
            return Ok(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.containerd.settled())
            .await
            .map_err(|_| "the backend's background work did not finish within 30 s".into())
    }

    /// Waits until the backend holds no container at all and has settled.
    pub(crate) async fn wait_empty(&self, timeout: Duration) -> Res<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.containerd.list().await.context("list containers")?;
            if left.is_empty() {
                return self.settle().await;
            }
            if Instant::now() > deadline {
                return Err(format!("containers still there after {timeout:?}: {left:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A value of the gateway's Prometheus metrics (summed over the lines starting with
    /// `prefix`).
    pub(crate) fn metric(&self, prefix: &str) -> f64 {
        serverless_testkit::metric(&self.gateway, prefix)
    }

    /// Shuts the gateway down, stops every instance and the private containerd.
    pub(crate) async fn stop(self) -> Res<()> {
        self.gateway.shutdown().await;
        let left = self.containerd.list().await.unwrap_or_default();
        for i in &left {
            let _ = self.containerd.stop(&i.id, Duration::ZERO).await;
        }
        self.containerd
            .shutdown()
            .await
            .context("stop the private containerd")?;
        drop(self.dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{phase_breakdown, PhaseSummary, StartRecord};

    #[test]
    fn phase_breakdown_keeps_first_seen_order_in_both_summaries() {
        let ms = Duration::from_millis;
        let records = [
            StartRecord {
                took: ms(30),
                phases: vec![("create", ms(10)), ("start", ms(20))],
            },
            StartRecord {
                took: ms(50),
                phases: vec![("standby", ms(1)), ("create", ms(30)), ("start", ms(19))],
            },
        ];
        let full = phase_breakdown(
            &records,
            PhaseSummary::Full {
                totals: &[32.0, 55.0],
            },
        );
        assert_eq!(
            full["phase_order"],
            serde_json::json!(["create", "start", "standby"])
        );
        assert_eq!(full["phases"]["create"]["n"], 2);
        assert_eq!(full["phases"]["standby"]["n"], 1);
        assert_eq!(full["backend_start"]["max"], 50.0);
        assert_eq!(full["gateway_overhead"]["min"], 2.0);
        assert_eq!(full["gateway_overhead"]["max"], 5.0);

        let medians = phase_breakdown(&records, PhaseSummary::Medians);
        assert_eq!(medians["order"], full["phase_order"]);
        assert_eq!(medians["median_ms"]["create"], 10.0);
        assert_eq!(medians["median_ms"]["standby"], 1.0);
        assert_eq!(medians["backend_start_median_ms"], 30.0);
    }
}
