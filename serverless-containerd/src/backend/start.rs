//! The cold start's mechanics: a container's task created (snapshot, container, task, dialer;
//! the part a standby does ahead of time), then started and its port found. Which path a start
//! takes, and the cleanup after a failed one, are in `trait_impl.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, StartRequest, UpdateTaskRequest,
};
use containerd_client::types::Mount;
use serverless_core::{AppSpec, BackendError, ErrorKind, Exit, NetworkMode, Started};
use tokio::sync::watch;
use tokio::time::Instant;

use super::boost::{self, Boost};
use super::handle::{ContainerdBackend, SPEC_TYPE_URL};
use super::spare_shim::GROUP_ANNOTATION;
use super::task::{Created, Instance};
use crate::client::failed;
use crate::gc_lease::GcLease;
use crate::logs::LogFifos;
use crate::netns::Dialer;
use crate::{labels, network, ports, spec};

impl ContainerdBackend {
    /// A start without a standby: creates the task and starts it.
    pub(super) async fn start_fresh(
        &self,
        app: &AppSpec,
        id: &str,
        phases: &mut Vec<(&'static str, Duration)>,
    ) -> Result<Started, BackendError> {
        let created = self.create(app, id, false, phases).await?;
        self.run(app, id, id, created, phases).await
    }

    /// Everything up to a created (not started) task: snapshot, container, task (shim spawn and
    /// `runc create`: namespaces, cgroup, rootfs; the app's process has not run yet) and the
    /// dialer into its network namespace. The exit watch of `id` is registered first.
    pub(super) async fn create(
        &self,
        app: &AppSpec,
        id: &str,
        standby: bool,
        phases: &mut Vec<(&'static str, Duration)>,
    ) -> Result<Created, BackendError> {
        let client = &self.inner.client;
        let image = self.prepared(app).await?;
        let cgroup_path = self.cgroup(id);
        // The startup boost: a fresh start takes its permit now (or boots at its slot); a
        // standby is made boosted and takes its permit when it is started.
        let budget = &self.inner.boost;
        let boost = budget.millicpu_for(app).and_then(|millicpu| {
            let permit = match standby {
                true => None,
                false => Some(budget.try_acquire()?),
            };
            Some(Boost { millicpu, permit })
        });
        let mut spec = spec::build(
            app,
            &spec::SpecInput {
                id,
                cgroup_path: &cgroup_path,
                image: image.config.as_ref(),
                user: &image.user,
                cpu_millicpu: boost.as_ref().map_or(app.slot.millicpu(), |b| b.millicpu),
                userns: app.security.userns.then_some(self.inner.userns),
            },
        )?;
        if app.network == NetworkMode::Bridge {
            let hostname: String = id.chars().take(63).collect();
            let t = Instant::now();
            let attached = self
                .inner
                .network
                .attach(id, &hostname)
                .await
                .map_err(|e| e.into_backend(format_args!("wiring the network of {id}")))?;
            network::apply(&mut spec, &attached)?;
            let phase = if attached.pooled {
                "network_pooled"
            } else {
                "network_wired"
            };
            phases.push((phase, t.elapsed()));
        }
        // A standby is made off the request's path: it spawns its own shim.
        let spare_shim = if standby { None } else { self.claim_shim() };
        if let Some(claim) = &spare_shim {
            let mut annotations = spec.annotations().clone().unwrap_or_default();
            annotations.insert(GROUP_ANNOTATION.to_owned(), claim.group().to_owned());
            spec.set_annotations(Some(annotations));
        }
        let spec_json = serde_json::to_vec(&spec).map_err(|e| {
            BackendError::new(ErrorKind::Image, "serializing the runtime spec failed")
                .with_source(e)
        })?;
        let mut our_labels: HashMap<String, String> = [
            (labels::MANAGED.to_owned(), "true".to_owned()),
            (labels::APP.to_owned(), app.name.clone()),
            (labels::INSTANCE.to_owned(), id.to_owned()),
            (
                labels::SPEC_HASH.to_owned(),
                labels::spec_hash(app, &image, &self.engine_inputs(app)),
            ),
        ]
        .into();
        if standby {
            our_labels.insert(labels::STANDBY.to_owned(), "true".to_owned());
        }
        // The image's layers, or their copy owned by the user namespace's range.
        let parent = image.snapshot_parent(app.security.userns)?;
        let exit = self.inner.exits.register(id, cgroup_path);

        let mut t = Instant::now();
        let mut phase = |name: &'static str, t: &mut Instant| {
            let now = Instant::now();
            phases.push((name, now - *t));
            *t = now;
        };

        // From here to the created task, runc's cgroup attach passes without a grace period.
        let _primed = self.inner.primer.hold();
        // The snapshot is unreferenced until the container exists: a lease keeps a garbage
        // collection (after another instance's removal) from taking it meanwhile.
        let lease = GcLease::create(client, &format!("start-{id}")).await?;
        let mounts = client
            .snapshots()
            .prepare(client.leased(
                PrepareSnapshotRequest {
                    snapshotter: self.inner.snapshotter.clone(),
                    key: id.to_owned(),
                    parent,
                    labels: our_labels.clone(),
                },
                &lease.value,
            ))
            .await
            .map_err(|s| failed(format_args!("snapshot prepare for {id}"), s));
        let mounts: Vec<Mount> = match mounts {
            Ok(m) => m.into_inner().mounts,
            Err(e) => {
                lease.delete(client).await;
                return Err(e);
            }
        };
        phase("snapshot", &mut t);

        let created = client
            .containers()
            .create(client.req(CreateContainerRequest {
                container: Some(Container {
                    id: id.to_owned(),
                    labels: our_labels,
                    image: image.name.clone(),
                    runtime: Some(Runtime {
                        name: self.inner.runtime.clone(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: SPEC_TYPE_URL.to_owned(),
                        value: spec_json,
                    }),
                    snapshotter: self.inner.snapshotter.clone(),
                    snapshot_key: id.to_owned(),
                    created_at: None,
                    updated_at: None,
                    extensions: HashMap::new(),
                    sandbox: String::new(),
                }),
            }))
            .await
            .map_err(|s| failed(format_args!("container create of {id}"), s));
        // The container references the snapshot now (or failed and start cleans up).
        let lease_client = client.clone();
        tokio::spawn(async move { lease.delete(&lease_client).await });
        created?;
        phase("container", &mut t);

        let fifos = LogFifos::open(&self.log_path(id)).map_err(|e| {
            BackendError::new(
                ErrorKind::Unavailable,
                format!("making the output FIFOs of {id} failed"),
            )
            .with_source(e)
        })?;
        let pid = client
            .tasks()
            .create(client.req(CreateTaskRequest {
                container_id: id.to_owned(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: fifos.stdout.clone(),
                stderr: fifos.stderr.clone(),
                terminal: false,
                checkpoint: None,
                options: None,
                runtime_path: String::new(),
            }))
            .await
            .map_err(|s| failed(format_args!("task create of {id}"), s))?
            .into_inner()
            .pid;
        let copied = fifos.copy();
        self.inner
            .log_copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), copied);
        let dialer = Dialer::spawn(pid, id).await.map_err(|e| {
            BackendError::new(
                ErrorKind::Unavailable,
                format!("joining the network namespace of {id} (pid {pid}) failed"),
            )
            .with_source(e)
        })?;
        phase("task_create", &mut t);
        // The instance's task is in the spare shim now: its keeper can go.
        drop(spare_shim);
        Ok(Created {
            image,
            pid,
            dialer,
            exit,
            boost,
        })
    }

    /// Starts a created task (container `id`, known to callers as instance `name`) and waits
    /// until it listens.
    pub(super) async fn run(
        &self,
        app: &AppSpec,
        id: &str,
        name: &str,
        created: Created,
        phases: &mut Vec<(&'static str, Duration)>,
    ) -> Result<Started, BackendError> {
        let client = &self.inner.client;
        let Created {
            pid,
            dialer,
            mut exit,
            boost,
            ..
        } = created;
        // A standby was made boosted without a permit: it takes one now or boots at its slot.
        let permit = match boost {
            Some(Boost {
                permit: Some(permit),
                ..
            }) => Some(permit),
            Some(Boost { permit: None, .. }) => match self.inner.boost.try_acquire() {
                Some(permit) => Some(permit),
                None => {
                    let t = Instant::now();
                    self.apply_slot(app, id, name).await?;
                    phases.push(("slot_applied", t.elapsed()));
                    None
                }
            },
            None => None,
        };
        let mut t = Instant::now();
        client
            .tasks()
            .start(client.req(StartRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| failed(format_args!("task start of {name}"), s))?;
        let now = Instant::now();
        phases.push(("task_start", now - t));
        t = now;

        let listen = async {
            let listener = self
                .await_listener(app, name, pid, &dialer, &mut exit)
                .await?;
            Ok((listener, t.elapsed()))
        };
        let listener = match permit {
            None => {
                let (listener, port_ready) = listen.await?;
                phases.push(("port_ready", port_ready));
                listener
            }
            // Boosted: the slot is applied the moment it listens, behind the start (or at the
            // startup timeout).
            Some(permit) => {
                let deadline = t + app.limits.startup_timeout;
                let apply = {
                    let (backend, app) = (self.clone(), app.clone());
                    let (id, name) = (id.to_owned(), name.to_owned());
                    async move { backend.apply_slot(&app, &id, &name).await }
                };
                let ((listener, port_ready), boosted) =
                    boost::until_listening(permit, deadline, listen, apply).await?;
                phases.push(("port_ready", port_ready));
                phases.push(("boosted", boosted));
                listener
            }
        };

        let addr = SocketAddr::new(listener.dial_addr(), listener.port);
        self.instances().insert(
            id.to_owned(),
            Arc::new(Instance {
                app: app.name.clone(),
                addr,
                dialer,
            }),
        );
        Ok(Started {
            port: listener.port,
            phases: std::mem::take(phases),
        })
    }

    /// Sets the CPU quota of container `id` (instance `name`) to its slot's, through
    /// containerd's task update (`runc update`); the memory and pids limits are written again
    /// with the values they have.
    async fn apply_slot(&self, app: &AppSpec, id: &str, name: &str) -> Result<(), BackendError> {
        let client = &self.inner.client;
        let resources = spec::resources(app, app.slot.millicpu())?;
        let value = serde_json::to_vec(&resources).map_err(|e| {
            BackendError::new(ErrorKind::Image, "serializing the slot's resources failed")
                .with_source(e)
        })?;
        client
            .tasks()
            .update(client.req(UpdateTaskRequest {
                container_id: id.to_owned(),
                resources: Some(prost_types::Any {
                    type_url: RESOURCES_TYPE_URL.to_owned(),
                    value,
                }),
                annotations: HashMap::new(),
            }))
            .await
            .map_err(|s| failed(format_args!("applying the slot's CPU quota to {name}"), s))?;
        Ok(())
    }

    /// Polls the instance's TCP tables until something listens, the process exits, or the
    /// startup timeout passes.
    async fn await_listener(
        &self,
        app: &AppSpec,
        id: &str,
        pid: u32,
        dialer: &Dialer,
        exit: &mut watch::Receiver<Option<Exit>>,
    ) -> Result<ports::Listener, BackendError> {
        let started = Instant::now();
        let timeout = app.limits.startup_timeout;
        let mut polls = 0u32;
        let mut sock_diag = true;
        loop {
            if let Some(code) = *exit.borrow() {
                return Err(BackendError::boot_failed(code, String::new()));
            }
            let mut listeners = Vec::new();
            if sock_diag {
                match dialer.listeners().await {
                    Ok(found) => listeners = found,
                    Err(e) => {
                        tracing::debug!(instance = %id, error = %e, "sock_diag port discovery failed, reading /proc/{pid}/net instead");
                        sock_diag = false;
                    }
                }
            }
            if !sock_diag {
                for table in ["tcp", "tcp6"] {
                    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
                        listeners.extend(ports::parse_listeners(&text));
                    }
                }
            }
            if let Some(l) = ports::choose(&listeners, app.port) {
                return Ok(l);
            }
            let elapsed = started.elapsed();
            if elapsed >= timeout {
                return Err(BackendError::new(
                    ErrorKind::StartTimeout,
                    format!(
                        "instance {id} of app {} listened on no port within {}",
                        app.name,
                        humanize(timeout)
                    ),
                ));
            }
            polls += 1;
            // 1 ms steps for the first ~100 ms (most apps listen by then), then 10 ms.
            let step = if polls < 100 {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(10)
            };
            let step = step.min(timeout - elapsed);
            let _ = tokio::time::timeout(step, exit.wait_for(|e| e.is_some())).await;
        }
    }
}

/// The type URL of the OCI runtime spec's Linux resources in a task update.
const RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
