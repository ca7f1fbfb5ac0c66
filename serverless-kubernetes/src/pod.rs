//! The Pod an instance runs in, built from its app's spec, and the labels that find it again.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, Pod, PodSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serverless_core::{AppSpec, BackendError, ErrorKind, ImageRef, InstanceId};

/// On every Pod this backend creates (`app.kubernetes.io/managed-by=serverless`).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The gateway that owns the Pod: each gateway lists and reconciles only its own.
pub const GATEWAY: &str = "serverless.dev/gateway";
/// The app the instance belongs to.
pub const APP: &str = "serverless.dev/app";
/// The instance id, when it fits a label value (it always is the Pod's name too).
pub const INSTANCE: &str = "serverless.dev/instance";
/// The instance id, always (annotations have no length limit).
pub const INSTANCE_ANNOTATION: &str = "serverless.dev/instance-id";
/// The name of the one container in an instance's Pod.
pub const CONTAINER: &str = "app";

/// The label selector of every Pod a gateway owns.
pub(crate) fn selector(gateway: &str) -> String {
    format!("{MANAGED_BY}=serverless,{GATEWAY}={gateway}")
}

/// The Pod name of an instance: the id itself, which must be a DNS subdomain (the engine's ids,
/// `<app>-<n>-<epoch>`, are).
pub(crate) fn pod_name(id: &InstanceId) -> Result<&str, BackendError> {
    let s = id.as_str();
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(s)
    } else {
        Err(BackendError::new(
            ErrorKind::Unavailable,
            format!(
                "instance id {s:?} is not a valid Pod name (lowercase letters, digits, '-' and \
                 '.', at most 253 characters)"
            ),
        ))
    }
}

/// A label value: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub(crate) fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// The registry reference of an app's image; `oci-archive:` cannot run in a cluster.
pub(crate) fn image(app: &AppSpec) -> Result<&str, BackendError> {
    match &app.image {
        ImageRef::Registry(r) => Ok(r),
        ImageRef::OciArchive(path) => Err(BackendError::new(
            ErrorKind::Image,
            format!(
                "apps.image = \"oci-archive:{}\" (app {}): the kubernetes backend runs registry \
                 references only (a kubelet pulls the image); push the archive to a registry the \
                 cluster can pull from and name it, e.g. registry.example:5000/{}:1",
                path.display(),
                app.name,
                app.name
            ),
        )),
    }
}

/// What a Pod is made from, besides the app's spec.
#[derive(Debug, Clone)]
pub(crate) struct PodContext<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) gateway: &'a str,
    pub(crate) owner: Option<&'a OwnerReference>,
}

/// The Pod of instance `id` of `app`: one container, requests = limits = the slot, `PORT` and
/// the app's env, restartPolicy `Never` (the pool replaces crashed instances itself, and a crash
/// is reported with its exit code at once instead of after the kubelet's back-off).
pub(crate) fn manifest(
    app: &AppSpec,
    id: &InstanceId,
    cx: &PodContext<'_>,
) -> Result<Pod, BackendError> {
    let name = pod_name(id)?;
    let image = image(app)?;
    let mut labels = BTreeMap::from([
        (MANAGED_BY.to_owned(), "serverless".to_owned()),
        (GATEWAY.to_owned(), cx.gateway.to_owned()),
        (APP.to_owned(), app.name.clone()),
    ]);
    if is_label_value(id.as_str()) {
        labels.insert(INSTANCE.to_owned(), id.as_str().to_owned());
    }
    let quantities = BTreeMap::from([
        (
            "cpu".to_owned(),
            Quantity(format!("{}m", app.slot.millicpu())),
        ),
        (
            "memory".to_owned(),
            Quantity(format!("{}Mi", app.slot.memory_mib())),
        ),
    ]);
    let mut env: Vec<EnvVar> = app
        .env
        .iter()
        .filter(|(k, _)| k.as_str() != "PORT")
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..EnvVar::default()
        })
        .collect();
    env.push(EnvVar {
        name: "PORT".to_owned(),
        value: Some(app.port.to_string()),
        ..EnvVar::default()
    });
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(cx.namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                INSTANCE_ANNOTATION.to_owned(),
                id.as_str().to_owned(),
            )])),
            owner_references: cx.owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            // Instances talk to their clients, not to the API server or to Services by env.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            containers: vec![Container {
                name: CONTAINER.to_owned(),
                image: Some(image.to_owned()),
                image_pull_policy: Some("IfNotPresent".to_owned()),
                // `command` alone replaces ENTRYPOINT and CMD, as `apps.command` does.
                command: app.command.clone(),
                env: Some(env),
                ports: Some(vec![ContainerPort {
                    container_port: i32::from(app.port),
                    name: Some("http".to_owned()),
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                }]),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities.clone()),
                    limits: Some(quantities),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(pod_name(&InstanceId::new("hello-1-abc123")).is_ok());
        assert!(pod_name(&InstanceId::new("Hello_1")).is_err());
        assert!(pod_name(&InstanceId::new("-x")).is_err());
        assert!(is_label_value("hello-1-abc"));
        assert!(!is_label_value(&"a".repeat(64)));
    }

    #[test]
    fn an_archive_is_a_config_error_naming_the_field() {
        let app = AppSpec::new("hello", ImageRef::OciArchive("./hello.tar".into()));
        let err = image(&app).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Image);
        assert!(err.to_string().contains("oci-archive:./hello.tar"), "{err}");
        assert!(err.to_string().contains("registry"), "{err}");
    }
}
