//! Reads OCI image layout tars and `docker save` tars: finds the manifest for this platform,
//! its config and its layers, without unpacking the archive to disk.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os};
use serde::Deserialize;

use super::builder::sha256_hex;

/// Why an archive could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    #[error("image archive {path} not found")]
    Missing { path: PathBuf },
    #[error("reading image archive {path} failed")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an image archive: {why}")]
    NotAnImage { path: PathBuf, why: String },
    #[error("image in {path} has no {want} variant (found: {found})")]
    WrongPlatform {
        path: PathBuf,
        want: String,
        found: String,
    },
}

/// Where a blob's bytes are.
#[derive(Debug, Clone)]
pub(crate) enum Blob {
    /// Held in memory (manifests and configs, and manifests we wrote for docker archives).
    Bytes(Vec<u8>),
    /// A byte range of the archive file.
    Range { offset: u64, size: u64 },
}

/// A content-store descriptor in plain types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Desc {
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
}

/// One image found in an archive, ready to be written to the content store.
#[derive(Debug)]
pub(crate) struct ArchiveImage {
    pub(crate) path: PathBuf,
    pub(crate) manifest: (Desc, Vec<u8>),
    pub(crate) config: (Desc, Vec<u8>),
    pub(crate) layers: Vec<(Desc, Blob)>,
    pub(crate) image_config: ImageConfiguration,
}

/// The platform we run: `linux/<GOARCH>`.
pub(crate) fn host_platform() -> (Os, Arch) {
    (Os::Linux, Arch::default())
}

struct Reader {
    path: PathBuf,
    file: File,
    entries: HashMap<String, (u64, u64)>,
}

fn normalize(name: &str) -> String {
    let mut n = name.trim_start_matches("./");
    while let Some(rest) = n.strip_prefix('/') {
        n = rest;
    }
    n.to_owned()
}

impl Reader {
    fn open(path: &Path) -> Result<Self, ArchiveError> {
        let read_err = |source| ArchiveError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ArchiveError::Missing {
                    path: path.to_owned(),
                }
            } else {
                read_err(e)
            }
        })?;
        let not_image = |why: String| ArchiveError::NotAnImage {
            path: path.to_owned(),
            why,
        };
        let mut entries = HashMap::new();
        let mut links = Vec::new();
        let mut archive = tar::Archive::new(&file);
        let iter = archive
            .entries()
            .map_err(|e| not_image(format!("not a tar file ({e})")))?;
        for entry in iter {
            let entry = entry.map_err(|e| not_image(format!("not a tar file ({e})")))?;
            let name = match entry.path() {
                Ok(p) => normalize(&p.to_string_lossy()),
                Err(_) => continue,
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    entries.insert(name, (entry.raw_file_position(), entry.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Ok(Some(target)) = entry.link_name() {
                        links.push((name, target.to_string_lossy().into_owned()));
                    }
                }
                _ => {}
            }
        }
        // docker save links identical layers: `<id>/layer.tar -> ../<other>/layer.tar`.
        for (name, target) in links {
            let resolved = if target.starts_with("../") {
                normalize(target.trim_start_matches("../"))
            } else {
                let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                normalize(&dir.join(&target).to_string_lossy())
            };
            let resolved = entries
                .get(&resolved)
                .or_else(|| entries.get(&normalize(&target)))
                .copied();
            if let Some(range) = resolved {
                entries.insert(name, range);
            }
        }
        let file = File::open(path).map_err(read_err)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            entries,
        })
    }

    fn not_image(&self, why: impl Into<String>) -> ArchiveError {
        ArchiveError::NotAnImage {
            path: self.path.clone(),
            why: why.into(),
        }
    }

    fn range(&self, name: &str) -> Option<(u64, u64)> {
        self.entries.get(name).copied()
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>, ArchiveError> {
        let (offset, size) = self
            .range(name)
            .ok_or_else(|| self.not_image(format!("{name} is missing")))?;
        if size > 64 << 20 {
            return Err(self.not_image(format!("{name} is too large for metadata")));
        }
        self.read_range(offset, size)
    }

    fn read_range(&mut self, offset: u64, size: u64) -> Result<Vec<u8>, ArchiveError> {
        let mut buf = vec![0; usize::try_from(size).unwrap_or(usize::MAX)];
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|source| ArchiveError::Read {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    fn blob_name(digest: &str) -> Option<String> {
        let (algo, hex) = digest.split_once(':')?;
        if algo.is_empty() || hex.is_empty() || hex.contains('/') || algo.contains('/') {
            return None;
        }
        Some(format!("blobs/{algo}/{hex}"))
    }

    fn read_blob(&mut self, digest: &str) -> Result<Vec<u8>, ArchiveError> {
        let name = Self::blob_name(digest)
            .ok_or_else(|| self.not_image(format!("invalid digest {digest:?}")))?;
        let data = self.read(&name)?;
        if digest.starts_with("sha256:") && format!("sha256:{}", sha256_hex(&data)) != digest {
            return Err(self.not_image(format!("blob {digest} does not match its digest")));
        }
        Ok(data)
    }
}

/// Reads the image for this platform from an OCI layout tar or a `docker save` tar.
/// Blocking (file IO); call from a blocking thread.
pub(crate) fn read_archive(path: &Path) -> Result<(ArchiveImage, ArchiveFile), ArchiveError> {
    let mut reader = Reader::open(path)?;
    let image = if reader.range("index.json").is_some() {
        read_oci(&mut reader)?
    } else if reader.range("manifest.json").is_some() {
        read_docker(&mut reader)?
    } else {
        return Err(reader
            .not_image("it has neither index.json (OCI layout) nor manifest.json (docker save)"));
    };
    check_platform(&reader, &image.image_config)?;
    Ok((image, ArchiveFile { file: reader.file }))
}

/// The archive file, for streaming layer ranges.
pub(crate) struct ArchiveFile {
    pub(crate) file: File,
}

fn desc_of(d: &oci_spec::image::Descriptor) -> Desc {
    Desc {
        media_type: d.media_type().to_string(),
        digest: d.digest().to_string(),
        size: d.size(),
    }
}

fn is_index(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex)
        || media_type.as_ref() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn read_oci(reader: &mut Reader) -> Result<ArchiveImage, ArchiveError> {
    let index_bytes = reader.read("index.json")?;
    let mut index = ImageIndex::from_reader(&index_bytes[..])
        .map_err(|e| reader.not_image(format!("index.json is not an OCI index ({e})")))?;
    let (want_os, want_arch) = host_platform();
    // Nested indexes (a multi-platform image inside the layout index) are followed.
    for _depth in 0..4 {
        let mut found = Vec::new();
        let mut chosen = None;
        for m in index.manifests() {
            match m.platform() {
                Some(p) if *p.os() != want_os || *p.architecture() != want_arch => {
                    found.push(format!("{}/{}", p.os(), p.architecture()));
                }
                // No platform field: accept (imported images often have none).
                _ => {
                    chosen = Some(m.clone());
                    break;
                }
            }
        }
        let Some(desc) = chosen else {
            if found.is_empty() {
                return Err(reader.not_image("index.json lists no manifest"));
            }
            return Err(ArchiveError::WrongPlatform {
                path: reader.path.clone(),
                want: format!("{want_os}/{want_arch}"),
                found: found.join(", "),
            });
        };
        let bytes = reader.read_blob(desc.digest().as_ref())?;
        if is_index(desc.media_type()) {
            index = ImageIndex::from_reader(&bytes[..])
                .map_err(|e| reader.not_image(format!("nested index is invalid ({e})")))?;
            continue;
        }
        let manifest = ImageManifest::from_reader(&bytes[..])
            .map_err(|e| reader.not_image(format!("manifest is invalid ({e})")))?;
        let config_bytes = reader.read_blob(manifest.config().digest().as_ref())?;
        let image_config = parse_config(reader, &config_bytes)?;
        let mut layers = Vec::new();
        for l in manifest.layers() {
            let name = Reader::blob_name(l.digest().as_ref())
                .ok_or_else(|| reader.not_image(format!("invalid layer digest {}", l.digest())))?;
            let (offset, size) = reader
                .range(&name)
                .ok_or_else(|| reader.not_image(format!("layer {} is missing", l.digest())))?;
            if size != l.size() {
                return Err(reader.not_image(format!("layer {} has the wrong size", l.digest())));
            }
            layers.push((desc_of(l), Blob::Range { offset, size }));
        }
        let mut manifest_desc = desc_of(&desc);
        if manifest_desc.size != bytes.len() as u64 {
            manifest_desc.size = bytes.len() as u64;
        }
        return Ok(ArchiveImage {
            path: reader.path.clone(),
            manifest: (manifest_desc, bytes),
            config: (desc_of(manifest.config()), config_bytes),
            layers,
            image_config,
        });
    }
    Err(reader.not_image("indexes nested too deeply"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    layers: Vec<String>,
}

fn read_docker(reader: &mut Reader) -> Result<ArchiveImage, ArchiveError> {
    let bytes = reader.read("manifest.json")?;
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&bytes).map_err(|e| {
        reader.not_image(format!("manifest.json is not a docker save manifest ({e})"))
    })?;
    let entry = entries
        .into_iter()
        .next()
        .ok_or_else(|| reader.not_image("manifest.json lists no image"))?;
    let config_bytes = reader.read(&normalize(&entry.config))?;
    let image_config = parse_config(reader, &config_bytes)?;
    let config_desc = Desc {
        media_type: MediaType::ImageConfig.to_string(),
        digest: format!("sha256:{}", sha256_hex(&config_bytes)),
        size: config_bytes.len() as u64,
    };
    let mut layers = Vec::new();
    let mut layer_descs = Vec::new();
    for name in &entry.layers {
        let name = normalize(name);
        let (offset, size) = reader
            .range(&name)
            .ok_or_else(|| reader.not_image(format!("layer {name} is missing")))?;
        let data = reader.read_range(offset, size)?;
        let gzip = data.starts_with(&[0x1f, 0x8b]);
        let desc = Desc {
            media_type: if gzip {
                MediaType::ImageLayerGzip.to_string()
            } else {
                MediaType::ImageLayer.to_string()
            },
            digest: format!("sha256:{}", sha256_hex(&data)),
            size,
        };
        layer_descs.push(serde_json::json!({
            "mediaType": desc.media_type, "digest": desc.digest, "size": desc.size,
        }));
        layers.push((desc, Blob::Range { offset, size }));
    }
    // docker save has no manifest blob: write the OCI manifest it implies.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MediaType::ImageManifest.to_string(),
        "config": {
            "mediaType": config_desc.media_type, "digest": config_desc.digest,
            "size": config_desc.size,
        },
        "layers": layer_descs,
    })
    .to_string()
    .into_bytes();
    Ok(ArchiveImage {
        path: reader.path.clone(),
        manifest: (
            Desc {
                media_type: MediaType::ImageManifest.to_string(),
                digest: format!("sha256:{}", sha256_hex(&manifest)),
                size: manifest.len() as u64,
            },
            manifest,
        ),
        config: (config_desc, config_bytes),
        layers,
        image_config,
    })
}

fn parse_config(reader: &Reader, bytes: &[u8]) -> Result<ImageConfiguration, ArchiveError> {
    ImageConfiguration::from_reader(bytes)
        .map_err(|e| reader.not_image(format!("image config is invalid ({e})")))
}

fn check_platform(reader: &Reader, config: &ImageConfiguration) -> Result<(), ArchiveError> {
    let (os, arch) = host_platform();
    if *config.os() != os || *config.architecture() != arch {
        return Err(ArchiveError::WrongPlatform {
            path: reader.path.clone(),
            want: format!("{os}/{arch}"),
            found: format!("{}/{}", config.os(), config.architecture()),
        });
    }
    Ok(())
}
