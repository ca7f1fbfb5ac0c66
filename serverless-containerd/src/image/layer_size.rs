//! A layer's unpacked size, measured before containerd unpacks it, so an image over the
//! backend's limit (a decompression bomb, say) is refused without being expanded anywhere.

use containerd_client::services::v1::ReadContentRequest;
use serverless_core::{BackendError, ErrorKind};

use super::archive::Desc;
use crate::client::{failed, Client};

/// Why a layer's unpacked size is not known: over the budget, or it could not be measured.
pub(super) enum SizeError {
    OverBudget,
    Failed(BackendError),
}

/// Counts decompressed bytes and fails once they pass `left`.
struct Budget {
    used: u64,
    left: u64,
}

impl std::io::Write for Budget {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.used += buf.len() as u64;
        if self.used > self.left {
            return Err(std::io::Error::other(OverBudget));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("over the unpacked size budget")]
struct OverBudget;

fn is_over(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<OverBudget>())
}

/// Whether a layer media type is one containerd can apply (a tar, plain or compressed).
fn is_layer_type(media_type: &str) -> bool {
    const OK: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ];
    OK.contains(&media_type)
}

/// The unpacked (tar) size of a layer in the content store, read through a streaming
/// decompressor that stops as soon as it passes `left`. gzip is decompressed here; a plain tar
/// is its blob size; zstd layers are not measured (no decoder here) and count as their blob
/// size.
pub(super) async fn unpacked_size(
    client: &Client,
    desc: &Desc,
    left: u64,
) -> Result<u64, SizeError> {
    use std::io::Write;
    if !is_layer_type(&desc.media_type) {
        return Err(SizeError::Failed(BackendError::new(
            ErrorKind::Image,
            format!(
                "layer {} has media type {:?}, which is not a layer containerd can unpack (a tar, plain, gzip or zstd)",
                desc.digest, desc.media_type
            ),
        )));
    }
    if !desc.media_type.ends_with("gzip") {
        return if desc.size > left {
            Err(SizeError::OverBudget)
        } else {
            Ok(desc.size)
        };
    }
    let mut stream = client
        .content()
        .read(client.req(ReadContentRequest {
            digest: desc.digest.clone(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(|s| SizeError::Failed(failed(format_args!("content read of {}", desc.digest), s)))?
        .into_inner();
    let mut decoder = flate2::write::MultiGzDecoder::new(Budget { used: 0, left });
    let invalid = |e: std::io::Error| {
        if is_over(&e) {
            SizeError::OverBudget
        } else {
            SizeError::Failed(
                BackendError::new(
                    ErrorKind::Image,
                    format!("layer {} is not valid gzip", desc.digest),
                )
                .with_source(e),
            )
        }
    };
    while let Some(chunk) = stream.message().await.map_err(|s| {
        SizeError::Failed(failed(format_args!("content read of {}", desc.digest), s))
    })? {
        decoder.write_all(&chunk.data).map_err(invalid)?;
    }
    let budget = decoder.finish().map_err(invalid)?;
    Ok(budget.used)
}
