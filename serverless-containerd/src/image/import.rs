//! Puts an image into containerd: blobs through the content service (under a lease), an image
//! record, and its layers unpacked into committed snapshots named by chain id.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, Image, Info, UpdateImageRequest, UpdateRequest,
};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use containerd_client::types::Descriptor;
use prost_types::FieldMask;
use serverless_core::{BackendError, ErrorKind};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::archive::{read_archive, ArchiveError, ArchiveImage, Blob, Desc};
use super::builder::sha256_hex;
use super::content::{exists, write_content};
use super::layer_size::{unpacked_size, SizeError};
use crate::client::{failed, is_already_exists, is_not_found, Client};
use crate::gc_lease::GcLease;
use crate::labels;

/// An image ready to run: its top snapshot and its run config.
#[derive(Debug, Clone)]
pub(crate) struct PreparedImage {
    /// containerd image name.
    pub(crate) name: String,
    /// Chain id of the top layer: the parent of every instance's snapshot.
    pub(crate) chain_id: String,
    /// ENTRYPOINT, CMD, ENV, … from the image config.
    pub(crate) config: Option<oci_spec::image::Config>,
    /// Its `USER`, resolved against its own `/etc/passwd` and `/etc/group`.
    pub(crate) user: super::users::ImageUser,
    /// Its layers owned by the engine's user-namespace range, once made (see `remap.rs`).
    pub(crate) remapped: tokio::sync::OnceCell<String>,
}

const CHUNK: usize = 1 << 20;

fn image_error(e: ArchiveError) -> BackendError {
    BackendError::new(ErrorKind::Image, e.to_string())
}

/// Imports an OCI layout or docker-save tar and unpacks it.
pub(crate) async fn import_archive(
    client: &Client,
    snapshotter: &str,
    name: &str,
    path: &Path,
    max_unpacked: u64,
) -> Result<PreparedImage, BackendError> {
    let owned = path.to_owned();
    let (image, blobs) = tokio::task::spawn_blocking(move || read_archive(&owned))
        .await
        .map_err(|e| {
            BackendError::new(ErrorKind::Image, "reading the image archive panicked").with_source(e)
        })?
        .map_err(image_error)?;
    let lease = GcLease::create(client, "import").await?;
    let result = import_leased(
        client,
        snapshotter,
        name,
        image,
        tokio::fs::File::from_std(blobs.file),
        &lease.value,
        max_unpacked,
    )
    .await;
    if result.is_ok() {
        lease.delete(client).await;
    } else {
        lease.delete_collecting(client).await;
    }
    result
}

async fn import_leased(
    client: &Client,
    snapshotter: &str,
    name: &str,
    image: ArchiveImage,
    mut file: tokio::fs::File,
    lease: &AsciiMetadataValue,
    max_unpacked: u64,
) -> Result<PreparedImage, BackendError> {
    let diff_ids = image.image_config.rootfs().diff_ids().clone();
    if diff_ids.len() != image.layers.len() {
        return Err(BackendError::new(
            ErrorKind::Image,
            format!(
                "{} is not a valid image: {} layers but {} diff ids in its config",
                image.path.display(),
                image.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    for (desc, blob) in &image.layers {
        write_blob(client, lease, desc, blob, &mut file).await?;
    }
    let (config_desc, config_bytes) = &image.config;
    write_blob(
        client,
        lease,
        config_desc,
        &Blob::Bytes(config_bytes.clone()),
        &mut file,
    )
    .await?;
    let (manifest_desc, manifest_bytes) = &image.manifest;
    write_blob(
        client,
        lease,
        manifest_desc,
        &Blob::Bytes(manifest_bytes.clone()),
        &mut file,
    )
    .await?;

    let layers: Vec<Desc> = image.layers.iter().map(|(d, _)| d.clone()).collect();
    unpack_and_register(
        client,
        snapshotter,
        lease,
        name,
        manifest_desc,
        config_desc,
        &layers,
        &image.image_config,
        max_unpacked,
    )
    .await
}

/// After the blobs are in the content store: unpacks the layers, labels the content for
/// garbage collection and creates (or updates) the image record `name`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn unpack_and_register(
    client: &Client,
    snapshotter: &str,
    lease: &AsciiMetadataValue,
    name: &str,
    manifest_desc: &Desc,
    config_desc: &Desc,
    layers: &[Desc],
    image_config: &oci_spec::image::ImageConfiguration,
    max_unpacked: u64,
) -> Result<PreparedImage, BackendError> {
    let diff_ids = image_config.rootfs().diff_ids().clone();
    if diff_ids.len() != layers.len() {
        return Err(BackendError::new(
            ErrorKind::Image,
            format!(
                "image {name} is not valid: {} layers but {} diff ids in its config",
                layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let chain_id = unpack(client, snapshotter, lease, layers, &diff_ids, max_unpacked).await?;
    let user_spec = image_config
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let user =
        super::users::image_user(client, snapshotter, lease, name, &chain_id, &user_spec).await?;

    // Garbage-collection references: image → manifest → config + layers, config → snapshot.
    let mut manifest_labels = HashMap::new();
    manifest_labels.insert(
        "containerd.io/gc.ref.content.config".to_owned(),
        config_desc.digest.clone(),
    );
    for (i, l) in layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    set_labels(client, &manifest_desc.digest, manifest_labels).await?;
    let mut config_labels = HashMap::new();
    config_labels.insert(
        format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
        chain_id.clone(),
    );
    set_labels(client, &config_desc.digest, config_labels).await?;

    let record = Image {
        name: name.to_owned(),
        labels: [(labels::MANAGED.to_owned(), "true".to_owned())].into(),
        target: Some(descriptor(manifest_desc)),
        created_at: None,
        updated_at: None,
    };
    let created = client
        .images()
        .create(client.leased(
            CreateImageRequest {
                image: Some(record.clone()),
                source_date_epoch: None,
            },
            lease,
        ))
        .await;
    match created {
        Ok(_) => {}
        Err(s) if is_already_exists(&s) => {
            client
                .images()
                .update(client.req(UpdateImageRequest {
                    image: Some(record),
                    update_mask: None,
                    source_date_epoch: None,
                }))
                .await
                .map_err(|s| failed(format_args!("update of image {name}"), s))?;
        }
        Err(s) => return Err(failed(format_args!("create of image {name}"), s)),
    }
    Ok(PreparedImage {
        name: name.to_owned(),
        chain_id,
        config: image_config.config().clone(),
        user,
        remapped: tokio::sync::OnceCell::new(),
    })
}

fn descriptor(d: &Desc) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: i64::try_from(d.size).unwrap_or(i64::MAX),
        annotations: HashMap::new(),
    }
}

async fn set_labels(
    client: &Client,
    digest: &str,
    labels: HashMap<String, String>,
) -> Result<(), BackendError> {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    client
        .content()
        .update(client.req(UpdateRequest {
            info: Some(Info {
                digest: digest.to_owned(),
                size: 0,
                created_at: None,
                updated_at: None,
                labels,
            }),
            update_mask: Some(FieldMask { paths }),
        }))
        .await
        .map_err(|s| failed(format_args!("labelling of content {digest}"), s))?;
    Ok(())
}

/// Writes one blob to the content store unless it is there already.
async fn write_blob(
    client: &Client,
    lease: &AsciiMetadataValue,
    desc: &Desc,
    blob: &Blob,
    file: &mut tokio::fs::File,
) -> Result<(), BackendError> {
    if exists(client, &desc.digest).await? {
        return Ok(());
    }
    let read_failed = |e: std::io::Error| {
        BackendError::new(
            ErrorKind::Image,
            format!("reading blob {} from the archive failed", desc.digest),
        )
        .with_source(e)
    };
    let reference = format!("serverless-import-{}", desc.digest);
    write_content(client, lease, desc, reference, |mut sink| async move {
        match blob {
            Blob::Bytes(bytes) => {
                for chunk in bytes.chunks(CHUNK) {
                    if !sink.send(chunk.to_vec()).await {
                        return Ok(());
                    }
                }
            }
            Blob::Range {
                offset: start,
                size,
            } => {
                file.seek(SeekFrom::Start(*start))
                    .await
                    .map_err(read_failed)?;
                let mut left = *size;
                while left > 0 {
                    let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                    let mut buf = vec![0; n];
                    file.read_exact(&mut buf).await.map_err(read_failed)?;
                    if !sink.send(buf).await {
                        return Ok(());
                    }
                    left -= n as u64;
                }
            }
        }
        sink.commit().await;
        Ok(())
    })
    .await
}

/// Chain id of layer `n` from the chain id below it and its diff id (OCI image spec).
pub(crate) fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_owned(),
        Some(p) => format!("sha256:{}", sha256_hex(format!("{p} {diff_id}").as_bytes())),
    }
}

async fn unpack(
    client: &Client,
    snapshotter: &str,
    lease: &AsciiMetadataValue,
    layers: &[Desc],
    diff_ids: &[String],
    max_unpacked: u64,
) -> Result<String, BackendError> {
    let mut parent: Option<String> = None;
    let mut unpacked = 0u64;
    for (desc, diff_id) in layers.iter().zip(diff_ids) {
        let chain = chain_id(parent.as_deref(), diff_id);
        let stat = client
            .snapshots()
            .stat(client.req(StatSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: chain.clone(),
            }))
            .await;
        match stat {
            Ok(_) => {
                parent = Some(chain);
                continue;
            }
            Err(s) if is_not_found(&s) => {}
            Err(s) => return Err(failed(format_args!("snapshot stat of {chain}"), s)),
        }
        // Before containerd unpacks it: the layer's media type and unpacked size (a zip bomb
        // is refused without being expanded anywhere).
        unpacked += unpacked_size(client, desc, max_unpacked.saturating_sub(unpacked))
            .await
            .map_err(|e| match e {
                SizeError::OverBudget => BackendError::new(
                    ErrorKind::Image,
                    format!(
                        "layer {} unpacks to more than the maximum of {max_unpacked} bytes for an image (max_unpacked_bytes)",
                        desc.digest
                    ),
                ),
                SizeError::Failed(e) => e,
            })?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = format!("extract-{nanos}-{chain}");
        let result = apply_layer(
            client,
            snapshotter,
            lease,
            &key,
            parent.as_deref(),
            desc,
            diff_id,
            &chain,
        )
        .await;
        if result.is_err() {
            let _ = client
                .snapshots()
                .remove(client.req(RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_owned(),
                    key: key.clone(),
                }))
                .await;
        }
        result?;
        parent = Some(chain);
    }
    parent.ok_or_else(|| BackendError::new(ErrorKind::Image, "the image has no layers"))
}

#[allow(clippy::too_many_arguments)]
async fn apply_layer(
    client: &Client,
    snapshotter: &str,
    lease: &AsciiMetadataValue,
    key: &str,
    parent: Option<&str>,
    desc: &Desc,
    diff_id: &str,
    chain: &str,
) -> Result<(), BackendError> {
    let mounts = client
        .snapshots()
        .prepare(client.leased(
            PrepareSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: key.to_owned(),
                parent: parent.unwrap_or_default().to_owned(),
                labels: HashMap::new(),
            },
            lease,
        ))
        .await
        .map_err(|s| {
            failed(
                format_args!("snapshot prepare for layer {}", desc.digest),
                s,
            )
        })?
        .into_inner()
        .mounts;
    let applied = client
        .diff()
        .apply(client.leased(
            ApplyRequest {
                diff: Some(descriptor(desc)),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            },
            lease,
        ))
        .await
        .map_err(|s| {
            BackendError::new(
                ErrorKind::Image,
                format!(
                    "unpacking layer {} ({}) failed",
                    desc.digest, desc.media_type
                ),
            )
            .with_source(crate::client::StatusError(s))
        })?
        .into_inner()
        .applied
        .map(|d| d.digest)
        .unwrap_or_default();
    if applied != diff_id {
        return Err(BackendError::new(
            ErrorKind::Image,
            format!(
                "layer {} unpacked to {applied} but the image config says {diff_id}",
                desc.digest
            ),
        ));
    }
    let committed = client
        .snapshots()
        .commit(client.leased(
            CommitSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                name: chain.to_owned(),
                key: key.to_owned(),
                labels: HashMap::new(),
            },
            lease,
        ))
        .await;
    match committed {
        Ok(_) => Ok(()),
        // Someone unpacked the same layer meanwhile: theirs is as good; drop ours.
        Err(s) if is_already_exists(&s) => {
            let _ = client
                .snapshots()
                .remove(client.req(RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_owned(),
                    key: key.to_owned(),
                }))
                .await;
            Ok(())
        }
        Err(s) => Err(failed(format_args!("snapshot commit of {chain}"), s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = "sha256:aaaa";
        let b = "sha256:bbbb";
        assert_eq!(chain_id(None, a), a);
        assert_eq!(
            chain_id(Some(a), b),
            format!("sha256:{}", sha256_hex(b"sha256:aaaa sha256:bbbb"))
        );
    }
}
