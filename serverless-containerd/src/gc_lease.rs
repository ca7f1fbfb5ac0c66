//! [`GcLease`]: a containerd lease, holding what is being made until something references it.

use std::time::{SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use serverless_core::{BackendError, ErrorKind};

use crate::client::{failed, Client};
use crate::labels;

/// A containerd lease, which only holds off containerd's garbage collector (not a request's
/// place on an instance): what is created under it is not garbage-collected until it is deleted
/// (an import until the image record and its references exist, an instance's snapshot until
/// its container references it).
pub(crate) struct GcLease {
    id: String,
    pub(crate) value: AsciiMetadataValue,
}

impl GcLease {
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
