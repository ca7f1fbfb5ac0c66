//! Runs serverless-container instances as Kubernetes Pods: [`KubernetesBackend`] implements the
//! engine's [`ContainerBackend`](serverless_core::ContainerBackend) trait over the Pods API with
//! kube-rs, so the same gateway, pool and limits scale Pods in a cluster instead of containers
//! on one host.
//!
//! - **One Pod per instance**, created and deleted by the gateway: the pool decides which
//!   instance takes a request, idles out or is recycled, so it controls Pods one by one rather
//!   than scaling a Deployment's replica count (as Knative and KEDA do, where the cluster picks
//!   which Pod goes).
//! - **The Pod**: one container `app`; `resources.requests` = `limits` = the app's slot (`cpu`
//!   in millicores, `memory` in MiB); the app's env plus `PORT`; `restartPolicy: Never` (a crash
//!   is an exit the pool sees at once); labels `app.kubernetes.io/managed-by=serverless`,
//!   `serverless.dev/gateway=<gateway id>`, `serverless.dev/app=<app>` and
//!   `serverless.dev/instance=<id>`, by which `list` and [`KubernetesBackend::reconcile`] find
//!   them; with [`Builder::owner_from_env`], an owner reference to the gateway's own Pod (from
//!   `$POD_NAME`/`$POD_UID`, given by the downward API), so the cluster garbage-collects the
//!   instances of a deleted gateway.
//! - **Readiness**: `start` follows the Pod's watch events (restarting the watch when the API
//!   server ends it, resynchronising on `410 Gone`) and, once the container runs and the Pod has
//!   an IP, tries a TCP connect to `podIP:port` every 20 ms from the gateway, so the first
//!   request goes out the moment the app listens, not at the next kubelet probe.
//! - **The port** is the app's `port` (also its `PORT`): there is no port discovery on
//!   Kubernetes (the gateway cannot read a Pod's sockets as it reads a local network
//!   namespace's), so an app must listen on `$PORT` or declare the port it uses.
//! - **Failures**: a Pod the cluster cannot schedule (`Unschedulable`), an image it cannot pull
//!   (`ErrImagePull`, `ImagePullBackOff`, `InvalidImageName`), a container it cannot create, or a
//!   `CrashLoopBackOff` fails the start at once with the cluster's reason and message — which the
//!   gateway's 503 carries — and the Pod is deleted. An app that exits before it listens is a
//!   boot failure with its exit code (and `OOMKilled` as an OOM kill) and its last log lines.
//! - `connect` dials the Pod IP (the gateway must be able to reach Pod IPs: run it in the
//!   cluster); `logs` reads the Pods log API; `wait` follows the Pod until its container
//!   terminates and reports the exit code and OOM kill from the container status.
//! - **Images** are registry references the kubelet pulls; an `oci-archive:` image is a config
//!   error naming the field.
//!
//! # How it is tested
//!
//! No API server runs in this project's CI. The tests drive the backend through kube's real
//! client stack (request building, serialisation, watch-stream decoding) against a scripted API
//! server (a `tower_test` mock service behind `kube::Client::new`) that checks each request and
//! answers with `k8s-openapi` objects, and whose "Pods" are tasks listening on loopback
//! addresses. Nothing here has been run against a real cluster by CI.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use serverless_kubernetes::{client, KubernetesBackend};
//!
//! let backend = KubernetesBackend::builder(client(None).await?)
//!     .namespace("serverless")
//!     .owner_from_env()
//!     .build()?;
//! let removed = backend.reconcile().await?;
//! # let _ = removed; Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod backend;
pub mod pod;
mod status;
mod watch;

pub use backend::{client, Builder, KubernetesBackend};
