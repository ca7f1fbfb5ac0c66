//! Registry pulls. containerd 1.6 has no Transfer service, so the pull is client-side: the
//! manifest (through an index for this platform), config and layers are fetched with
//! [`oci_client`] and streamed into the content service under a lease, then unpacked like an
//! archive import.
//!
//! Plain HTTP is used only for loopback registries (`127.0.0.1`, `localhost`, `[::1]`); every
//! other registry is HTTPS. Pulls are anonymous unless credentials are given for the registry
//! ([`Builder::registry_auth`](crate::Builder::registry_auth) or an auth file, see
//! [`logins`](super::logins)): then HTTP Basic, or the token the registry's Bearer challenge
//! hands out for them.

use std::fmt;
use std::sync::{Arc, Once};

use containerd_client::tonic::metadata::AsciiMetadataValue;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::Deserialize;
use serverless_core::{BackendError, ErrorKind};
use sha2::{Digest as _, Sha256};

use super::archive::{host_platform, Desc};
use super::content::{exists, write_content};
use super::import::{unpack_and_register, PreparedImage};
use super::logins::RegistryLogins;
use crate::client::{failed, Client};
use crate::gc_lease::GcLease;

/// How far a registry pull is: handed to the [`PullProgressFn`] set with
/// [`Builder::pull_progress`](crate::Builder::pull_progress) after every chunk written.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PullProgress {
    /// The normalized reference being pulled (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// Digest of the blob being fetched (a layer or the config).
    pub layer: String,
    /// 1-based number of that blob, out of [`layers`](Self::layers) (layers and config).
    pub layer_index: usize,
    /// How many blobs the image has (layers and config).
    pub layers: usize,
    /// Bytes of all blobs done, including blobs already present (skipped).
    pub done: u64,
    /// Total bytes of all blobs, from the manifest.
    pub total: u64,
    /// True when the blob was already in the content store and was not fetched.
    pub skipped: bool,
}

/// The pull progress callback: called often, so keep it cheap.
pub type PullProgressFn = Arc<dyn Fn(PullProgress) + Send + Sync>;

/// A [`PullProgressFn`] that can sit in `Debug` structs.
#[derive(Clone, Default)]
pub(crate) struct ProgressHook(pub(crate) Option<PullProgressFn>);

impl fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

const ACCEPTED: &[&str] = &[
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDesc {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Debug, Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// An index, a manifest list, an OCI manifest or a Docker v2 schema 2 manifest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<RawDesc>>,
    #[serde(default)]
    config: Option<RawDesc>,
    #[serde(default)]
    layers: Option<Vec<RawDesc>>,
}

impl From<&RawDesc> for Desc {
    fn from(d: &RawDesc) -> Self {
        Desc {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
        }
    }
}

fn image_err(reference: &str, what: impl fmt::Display) -> BackendError {
    BackendError::new(
        ErrorKind::Image,
        format!("pulling image {reference}: {what}"),
    )
}

/// Turns a registry client error into an [`ErrorKind::Image`] error naming the reference.
fn registry_err(
    reference: &str,
    registry: &str,
    user: Option<&str>,
    e: OciDistributionError,
) -> BackendError {
    let unauthorized = || match user {
        Some(user) => format!(
            "registry {registry} refused the credentials of user {user:?} \
             (or the repository does not exist)"
        ),
        None => format!(
            "registry {registry} requires authentication (or the repository does not exist), \
             and no credentials are configured for it"
        ),
    };
    let what = match &e {
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
            format!("registry {registry} is unreachable")
        }
        OciDistributionError::ImageManifestNotFoundError(_) => {
            "no such image (unknown repository or tag)".to_owned()
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                "no such image (unknown repository or tag)".to_owned()
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized()
            } else {
                format!("registry {registry} refused the request")
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => {
            "no such image (unknown repository or tag)".to_owned()
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => unauthorized(),
        OciDistributionError::RequestError(_) => {
            format!("request to registry {registry} failed")
        }
        _ => format!("registry {registry} failed"),
    };
    image_err(reference, what).with_source(e)
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => registry,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]") || host.starts_with("127.")
}

fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means some provider is installed already: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Pulls `reference` (`host/repo:tag`, `host/repo@sha256:…`, or a Docker Hub short name) and
/// unpacks it into `snapshotter`.
pub(crate) async fn pull_image(
    client: &Client,
    snapshotter: &str,
    reference: &str,
    progress: &ProgressHook,
    logins: &RegistryLogins,
    max_unpacked: u64,
) -> Result<PreparedImage, BackendError> {
    install_crypto();
    let parsed: Reference = reference.parse().map_err(|e| {
        BackendError::new(
            ErrorKind::Image,
            format!("image reference {reference:?} is not valid"),
        )
        .with_source(e)
    })?;
    let name = parsed.whole();
    let registry = parsed.resolve_registry().to_owned();
    let protocol = if is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let oci = oci_client::Client::new(ClientConfig {
        protocol,
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    });
    let login = logins.for_reference(&parsed);
    let user = login.map(|(u, _)| u.as_str());
    let auth = match login {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => RegistryAuth::Anonymous,
    };

    // The manifest, through an index if there is one.
    let (bytes, digest) = oci
        .pull_manifest_raw(&parsed, &auth, ACCEPTED)
        .await
        .map_err(|e| registry_err(&name, &registry, user, e))?;
    let mut manifest_bytes = bytes.to_vec();
    let mut manifest_digest = checked_digest(&name, &manifest_bytes, &digest)?;
    if let Some(want) = parsed.digest() {
        // By digest: the document fetched must be the one named.
        if want != manifest_digest {
            return Err(image_err(
                &name,
                format!("the registry returned {manifest_digest} for digest {want}"),
            ));
        }
    }
    let mut manifest: RawManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| image_err(&name, "the manifest is not valid JSON").with_source(e))?;
    let mut manifest_type = media_type_of(&manifest);
    if let Some(entries) = &manifest.manifests {
        let (os, arch) = host_platform();
        let (os, arch) = (os.to_string(), arch.to_string());
        let chosen = entries.iter().find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        });
        let Some(chosen) = chosen else {
            let found: Vec<String> = entries
                .iter()
                .map(|e| match &e.platform {
                    Some(p) => match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    },
                    None => "unknown".to_owned(),
                })
                .collect();
            return Err(image_err(
                &name,
                format!(
                    "no {os}/{arch} variant (available: {})",
                    if found.is_empty() {
                        "none".to_owned()
                    } else {
                        found.join(", ")
                    }
                ),
            ));
        };
        let by_digest = parsed.clone_with_digest(chosen.digest.clone());
        let (bytes, digest) = oci
            .pull_manifest_raw(&by_digest, &auth, ACCEPTED)
            .await
            .map_err(|e| registry_err(&name, &registry, user, e))?;
        manifest_bytes = bytes.to_vec();
        manifest_digest = checked_digest(&name, &manifest_bytes, &digest)?;
        if manifest_digest != chosen.digest {
            return Err(image_err(
                &name,
                format!(
                    "manifest digest {manifest_digest} does not match the index's {}",
                    chosen.digest
                ),
            ));
        }
        manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| image_err(&name, "the manifest is not valid JSON").with_source(e))?;
        manifest_type = media_type_of(&manifest);
        if manifest.manifests.is_some() {
            return Err(image_err(&name, "nested image indexes are not supported"));
        }
    }
    let (Some(config), Some(layers)) = (&manifest.config, &manifest.layers) else {
        return Err(image_err(
            &name,
            format!("unsupported manifest (media type {manifest_type})"),
        ));
    };
    let config_desc = Desc::from(config);
    let layer_descs: Vec<Desc> = layers.iter().map(Desc::from).collect();
    let manifest_desc = Desc {
        media_type: manifest_type,
        digest: manifest_digest,
        size: manifest_bytes.len() as u64,
    };

    let lease = GcLease::create(client, "pull").await?;
    let result = async {
        let mut meter = Meter {
            reference: name.clone(),
            hook: progress.clone(),
            layers: layer_descs.len() + 1,
            done: 0,
            total: layer_descs.iter().map(|d| d.size).sum::<u64>() + config_desc.size,
        };
        for (i, layer) in layer_descs.iter().enumerate() {
            fetch_blob(
                client,
                &oci,
                &parsed,
                &lease.value,
                layer,
                &mut meter,
                i + 1,
                (&registry, user),
            )
            .await?;
        }
        fetch_blob(
            client,
            &oci,
            &parsed,
            &lease.value,
            &config_desc,
            &mut meter,
            layer_descs.len() + 1,
            (&registry, user),
        )
        .await?;
        write_bytes(client, &lease.value, &manifest_desc, manifest_bytes).await?;
        let config_bytes = read_content(client, &config_desc).await?;
        let image_config: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(&config_bytes)
                .map_err(|e| image_err(&name, "the image config is not valid").with_source(e))?;
        unpack_and_register(
            client,
            snapshotter,
            &lease.value,
            &name,
            &manifest_desc,
            &config_desc,
            &layer_descs,
            &image_config,
            max_unpacked,
        )
        .await
    }
    .await;
    if result.is_ok() {
        lease.delete(client).await;
    } else {
        lease.delete_collecting(client).await;
    }
    result
}

fn media_type_of(m: &RawManifest) -> String {
    match &m.media_type {
        Some(t) => t.clone(),
        None if m.manifests.is_some() => OCI_IMAGE_INDEX_MEDIA_TYPE.to_owned(),
        None => OCI_IMAGE_MEDIA_TYPE.to_owned(),
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format!("sha256:{:x}", h.finalize())
}

/// The digest of a fetched manifest, checked against what the registry said it is.
fn checked_digest(reference: &str, bytes: &[u8], claimed: &str) -> Result<String, BackendError> {
    let actual = sha256_digest(bytes);
    if !claimed.is_empty() && claimed.starts_with("sha256:") && claimed != actual {
        return Err(image_err(
            reference,
            format!("manifest digest mismatch: registry said {claimed}, content is {actual}"),
        ));
    }
    Ok(actual)
}

struct Meter {
    reference: String,
    hook: ProgressHook,
    layers: usize,
    done: u64,
    total: u64,
}

impl Meter {
    fn report(&self, layer: &str, index: usize, skipped: bool) {
        if let Some(f) = &self.hook.0 {
            f(PullProgress {
                reference: self.reference.clone(),
                layer: layer.to_owned(),
                layer_index: index,
                layers: self.layers,
                done: self.done,
                total: self.total,
                skipped,
            });
        }
    }
}

/// Streams one blob from the registry into the content store (unless it is there already),
/// checking its size and digest.
#[allow(clippy::too_many_arguments)]
async fn fetch_blob(
    client: &Client,
    oci: &oci_client::Client,
    image: &Reference,
    lease: &AsciiMetadataValue,
    desc: &Desc,
    meter: &mut Meter,
    index: usize,
    (registry, user): (&str, Option<&str>),
) -> Result<(), BackendError> {
    let name = meter.reference.clone();
    if exists(client, &desc.digest).await? {
        meter.done += desc.size;
        meter.report(&desc.digest, index, true);
        return Ok(());
    }
    if !desc.digest.starts_with("sha256:") {
        return Err(image_err(
            &name,
            format!("blob {}: only sha256 digests are supported", desc.digest),
        ));
    }
    let mut stream = oci
        .pull_blob_stream(image, desc.digest.as_str())
        .await
        .map_err(|e| registry_err(&name, registry, user, e))?;
    let reference = format!("serverless-pull-{}", desc.digest);
    write_content(client, lease, desc, reference, |mut sink| async move {
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                image_err(&name, format!("downloading blob {} failed", desc.digest)).with_source(e)
            })?;
            hasher.update(&chunk);
            let n = chunk.len() as u64;
            if offset + n > desc.size {
                return Err(image_err(
                    &name,
                    format!(
                        "blob {} is larger than its {} bytes",
                        desc.digest, desc.size
                    ),
                ));
            }
            if !sink.send(chunk.to_vec()).await {
                // The write call ended early: its error is reported by write_content.
                return Ok(());
            }
            offset += n;
            meter.done += n;
            meter.report(&desc.digest, index, false);
        }
        let actual = format!("sha256:{:x}", hasher.finalize());
        if offset != desc.size || actual != desc.digest {
            return Err(image_err(
                &name,
                format!(
                    "blob {} failed verification: got {offset} bytes with digest {actual}",
                    desc.digest
                ),
            ));
        }
        sink.commit().await;
        Ok(())
    })
    .await
}

/// Writes a small in-memory blob (the manifest) unless it is there already.
async fn write_bytes(
    client: &Client,
    lease: &AsciiMetadataValue,
    desc: &Desc,
    bytes: Vec<u8>,
) -> Result<(), BackendError> {
    if exists(client, &desc.digest).await? {
        return Ok(());
    }
    let reference = format!("serverless-pull-{}", desc.digest);
    write_content(client, lease, desc, reference, |mut sink| async move {
        if sink.send(bytes).await {
            sink.commit().await;
        }
        Ok(())
    })
    .await
}

/// Reads a (small) blob back from the content store.
async fn read_content(client: &Client, desc: &Desc) -> Result<Vec<u8>, BackendError> {
    use containerd_client::services::v1::ReadContentRequest;
    let mut stream = client
        .content()
        .read(client.req(ReadContentRequest {
            digest: desc.digest.clone(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(|s| failed(format_args!("content read of {}", desc.digest), s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| failed(format_args!("content read of {}", desc.digest), s))?
    {
        out.extend_from_slice(&msg.data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognized() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("index.docker.io"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("localhost.example.com:5000"));
    }

    #[test]
    fn short_names_go_to_docker_hub() {
        let r: Reference = match "busybox".parse() {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");
        assert_eq!(r.resolve_registry(), "index.docker.io");
        let r: Reference = match "127.0.0.1:5000/test/httpd@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".parse() {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "test/httpd");
    }
}
