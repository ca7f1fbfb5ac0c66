//! Streaming writes of blobs into containerd's content store, shared by archive import and
//! registry pull.

use std::collections::HashMap;
use std::future::Future;

use containerd_client::services::v1::{
    AbortRequest, InfoRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use serverless_core::BackendError;
use tokio::sync::mpsc;

use super::archive::Desc;
use crate::client::{failed, is_already_exists, is_not_found, Client};

/// Whether the content store has the blob already.
pub(crate) async fn exists(client: &Client, digest: &str) -> Result<bool, BackendError> {
    match client
        .content()
        .info(client.req(InfoRequest {
            digest: digest.to_owned(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if is_not_found(&s) => Ok(false),
        Err(s) => Err(failed(format_args!("content info of {digest}"), s)),
    }
}

/// Where a producer sends one blob's bytes, in order.
pub(crate) struct BlobSink {
    tx: mpsc::Sender<WriteContentRequest>,
    reference: String,
    digest: String,
    total: i64,
    offset: i64,
}

impl BlobSink {
    fn request(&self, action: WriteAction, data: Vec<u8>) -> WriteContentRequest {
        WriteContentRequest {
            action: action as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.digest.clone(),
            offset: self.offset,
            data,
            labels: HashMap::new(),
        }
    }

    /// Sends the next chunk. False when the write call has ended early; stop producing then
    /// (its error is reported by [`write_content`]).
    pub(crate) async fn send(&mut self, data: Vec<u8>) -> bool {
        let n = data.len() as i64;
        let request = self.request(WriteAction::Write, data);
        if self.tx.send(request).await.is_err() {
            return false;
        }
        self.offset += n;
        true
    }

    /// Commits the blob (containerd checks its size and digest).
    pub(crate) async fn commit(self) {
        let request = self.request(WriteAction::Commit, Vec::new());
        let _ = self.tx.send(request).await;
    }
}

/// Writes one blob under `lease`: `produce` sends its bytes into the sink and commits. A failed
/// write is aborted, so nothing partial stays in the store; a blob that appeared meanwhile
/// counts as written.
pub(crate) async fn write_content<F, Fut>(
    client: &Client,
    lease: &AsciiMetadataValue,
    desc: &Desc,
    reference: String,
    produce: F,
) -> Result<(), BackendError>
where
    F: FnOnce(BlobSink) -> Fut,
    Fut: Future<Output = Result<(), BackendError>>,
{
    let (tx, rx) = mpsc::channel::<WriteContentRequest>(4);
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut content = client.content();
    let call = async {
        let mut responses = content
            .write(client.leased(requests, lease))
            .await?
            .into_inner();
        while responses.message().await?.is_some() {}
        Ok::<_, containerd_client::tonic::Status>(())
    };
    let sink = BlobSink {
        tx,
        reference: reference.clone(),
        digest: desc.digest.clone(),
        total: i64::try_from(desc.size).unwrap_or(i64::MAX),
        offset: 0,
    };
    let (called, produced) = tokio::join!(call, produce(sink));
    let outcome = match (called, produced) {
        (_, Err(e)) => Err(e),
        (Err(s), _) if is_already_exists(&s) => Ok(()),
        (Err(s), _) => Err(failed(format_args!("content write of {}", desc.digest), s)),
        (Ok(()), Ok(())) => Ok(()),
    };
    if outcome.is_err() {
        let _ = client
            .content()
            .abort(client.req(AbortRequest { r#ref: reference }))
            .await;
    }
    outcome
}
