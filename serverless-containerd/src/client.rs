//! A thin handle on containerd's gRPC services that stamps every request with our namespace.

use std::fmt::Display;

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    events_client::EventsClient, images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient,
};
use containerd_client::tonic::metadata::{AsciiMetadataValue, MetadataValue};
use containerd_client::tonic::transport::Channel;
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
};
use containerd_client::tonic::{Code, Request, Status};
use serverless_core::{BackendError, ErrorKind};

use crate::labels;

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

    /// A request in our namespace whose new resources are held by `lease` (not collected).
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

/// A containerd lease: what is created under it is not garbage-collected until it is deleted
/// (an import until the image record and its references exist, an instance's snapshot until
/// its container references it).
pub(crate) struct Lease {
    id: String,
    pub(crate) value: AsciiMetadataValue,
}

impl Lease {
    pub(crate) async fn create(client: &Client, purpose: &str) -> Result<Self, BackendError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!("serverless-{purpose}-{nanos}");
        let value = AsciiMetadataValue::try_from(id.as_str()).map_err(|e| {
            BackendError::new(ErrorKind::Unavailable, "invalid lease id").with_source(e)
        })?;
        client
            .leases()
            .create(client.req(CreateLeaseRequest {
                id: id.clone(),
                labels: [(labels::MANAGED.to_owned(), "true".to_owned())].into(),
            }))
            .await
            .map_err(|s| failed("lease create", s))?;
        Ok(Self { id, value })
    }

    pub(crate) async fn delete(self, client: &Client) {
        self.delete_with(client, false).await;
    }

    /// Deletes the lease and waits for containerd's garbage collection to remove what only it
    /// held (a failed import leaves no content or snapshots behind).
    pub(crate) async fn delete_collecting(self, client: &Client) {
        self.delete_with(client, true).await;
    }

    async fn delete_with(self, client: &Client, sync: bool) {
        if let Err(s) = client
            .leases()
            .delete(client.req(DeleteLeaseRequest {
                id: self.id.clone(),
                sync,
            }))
            .await
        {
            tracing::warn!(lease = %self.id, error = %s.message(), "deleting a lease failed");
        }
    }
}
