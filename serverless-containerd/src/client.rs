//! A thin handle on containerd's gRPC services that stamps every request with our namespace.

use std::fmt::Display;

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    events_client::EventsClient, images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient,
};
use containerd_client::tonic::metadata::{AsciiMetadataValue, MetadataValue};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use serverless_core::{BackendError, ErrorKind};

/// Channel plus namespace.
#[derive(Clone)]
pub(crate) struct Client {
    channel: Channel,
    namespace: AsciiMetadataValue,
    pub(crate) namespace_name: String,
}

impl Client {
    pub(crate) fn new(channel: Channel, namespace: &str) -> Result<Self, BackendError> {
        let valid = !namespace.is_empty()
            && namespace.len() <= 76
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        let value = MetadataValue::try_from(namespace)
            .ok()
            .filter(|_| valid)
            .ok_or_else(|| {
                BackendError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "invalid containerd namespace {namespace:?}: expected 1..=76 letters, digits, '.', '_' or '-'"
                    ),
                )
            })?;
        Ok(Self {
            channel,
            namespace: value,
            namespace_name: namespace.to_owned(),
        })
    }

    /// A request in our namespace.
    pub(crate) fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        req
    }

    /// A request in our namespace whose new resources are held by `lease` (a GC lease's id), so
    /// they are not garbage-collected.
    pub(crate) fn leased<T>(&self, msg: T, lease: &AsciiMetadataValue) -> Request<T> {
        let mut req = self.req(msg);
        req.metadata_mut().insert("containerd-lease", lease.clone());
        req
    }

    pub(crate) fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub(crate) fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }
    pub(crate) fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub(crate) fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
    pub(crate) fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub(crate) fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    pub(crate) fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub(crate) fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
}

pub(crate) fn is_not_found(status: &Status) -> bool {
    status.code() == Code::NotFound
}

pub(crate) fn is_already_exists(status: &Status) -> bool {
    status.code() == Code::AlreadyExists
}

/// A containerd call failed: `containerd <what> failed: <status>`.
pub(crate) fn failed(what: impl Display, status: Status) -> BackendError {
    let kind = match status.code() {
        Code::NotFound => ErrorKind::NotFound,
        _ => ErrorKind::Unavailable,
    };
    BackendError::new(kind, format!("containerd {what} failed")).with_source(StatusError(status))
}

/// tonic's `Status` prints its details and metadata; this prints the code and message only.
#[derive(Debug)]
pub(crate) struct StatusError(pub(crate) Status);

impl Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.0.code(), self.0.message())
    }
}

impl std::error::Error for StatusError {}
