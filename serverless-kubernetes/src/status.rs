//! What a Pod's status says about an instance: still coming, running at an IP, failed for a
//! reason the cluster gives, or exited.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use serverless_core::{BackendError, ErrorKind, Exit};

use crate::pod::CONTAINER;

/// Container waiting reasons that will not resolve by waiting: the start fails at once, with the
/// cluster's reason and message. (`ErrImagePull` is the first failed pull, before the kubelet's
/// back-off turns it into `ImagePullBackOff`: an image that cannot be pulled now fails the start
/// now, not 10 s later.)
const IMAGE_REASONS: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
];
/// Waiting reasons where the container cannot be made from the Pod as given.
const CONFIG_REASONS: &[&str] = &["CreateContainerConfigError", "CreateContainerError"];

/// One reading of a Pod.
#[derive(Debug)]
pub(crate) enum Assessment {
    /// Not scheduled or not running yet.
    Pending,
    /// The container runs and the Pod has an IP: probe it.
    Running(IpAddr),
    /// The container ended.
    Exited(Exit, String),
    /// The cluster cannot run it (the error names the cluster's reason).
    Failed(BackendError),
}

/// The exit a terminated container state describes.
pub(crate) fn exit_of(t: &ContainerStateTerminated) -> Exit {
    Exit {
        code: t.exit_code,
        oom_killed: t.reason.as_deref() == Some("OOMKilled"),
    }
}

fn described(reason: &str, message: Option<&str>) -> String {
    match message.filter(|m| !m.is_empty()) {
        Some(m) => format!("{reason}: {m}"),
        None => reason.to_owned(),
    }
}

/// Reads a Pod's status.
pub(crate) fn assess(pod: &Pod) -> Assessment {
    let Some(status) = &pod.status else {
        return Assessment::Pending;
    };
    // Scheduling comes first: an unschedulable Pod has no container status.
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        return Assessment::Failed(BackendError::new(
            ErrorKind::Unavailable,
            format!(
                "the cluster cannot schedule the Pod: {}",
                described("Unschedulable", c.message.as_deref())
            ),
        ));
    }
    let container = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER);
    if let Some(c) = container {
        if let Some(state) = &c.state {
            if let Some(t) = &state.terminated {
                let exit = exit_of(t);
                return Assessment::Exited(
                    exit,
                    described(
                        t.reason.as_deref().unwrap_or("Terminated"),
                        t.message.as_deref(),
                    ),
                );
            }
            if let Some(w) = &state.waiting {
                let reason = w.reason.as_deref().unwrap_or("");
                let text = described(reason, w.message.as_deref());
                if IMAGE_REASONS.contains(&reason) {
                    return Assessment::Failed(BackendError::new(
                        ErrorKind::Image,
                        format!("the cluster cannot pull the image: {text}"),
                    ));
                }
                if reason == "CrashLoopBackOff" {
                    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
                    let exit = last.map(exit_of).unwrap_or(Exit::code(1));
                    return Assessment::Failed(
                        BackendError::boot_failed(exit, text.clone())
                            .with_source(format!("the cluster reports CrashLoopBackOff ({text})")),
                    );
                }
                if CONFIG_REASONS.contains(&reason) {
                    return Assessment::Failed(BackendError::new(
                        ErrorKind::Unavailable,
                        format!("the cluster cannot create the container: {text}"),
                    ));
                }
            }
            if state.running.is_some() {
                if let Some(ip) = status.pod_ip.as_deref().and_then(|s| s.parse().ok()) {
                    return Assessment::Running(ip);
                }
            }
        }
    }
    match status.phase.as_deref() {
        // Failed or Succeeded without a container status: evicted, or the node went away.
        Some(phase @ ("Failed" | "Succeeded")) => Assessment::Exited(
            Exit::code(if phase == "Succeeded" { 0 } else { 1 }),
            described(
                status.reason.as_deref().unwrap_or(phase),
                status.message.as_deref(),
            ),
        ),
        _ => Assessment::Pending,
    }
}

/// Whether a listed Pod counts as running (created or running, not being deleted).
pub(crate) fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            None | Some("Pending" | "Running")
        )
}
