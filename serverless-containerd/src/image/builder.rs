//! Writes small OCI images from Rust: one layer made of the given files, a config with
//! ENTRYPOINT/CMD/ENV, a manifest and an index, packed as an OCI image layout tar (what
//! `oci-archive:PATH` imports) or as a legacy `docker save` tar.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
    SCHEMA_VERSION,
};
use sha2::{Digest as _, Sha256};

/// An error while building an image: a spec type refused a value, or writing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// An image path is not absolute, or is `/`, or contains `..`.
    #[error("invalid path in image {0:?}: expected an absolute path like /bin/app without ..")]
    InvalidPath(String),
    /// Building an OCI structure failed.
    #[error("building the OCI {what} failed")]
    Spec {
        /// Which structure.
        what: &'static str,
        /// The cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// Writing the archive failed.
    #[error("writing the image archive failed")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone)]
enum Entry {
    File { contents: Vec<u8>, mode: u32 },
    Symlink { target: String },
    Dir { mode: u32 },
}

/// Builds a single-layer OCI image from files, for tests and small static apps.
///
/// ```
/// use serverless_containerd::ImageBuilder;
///
/// let dir = tempfile::tempdir()?;
/// let tar = dir.path().join("hello.tar");
/// ImageBuilder::new()
///     .file("/app/hello.txt", b"hello\n".to_vec(), 0o644)
///     .symlink("/bin/sh", "/bin/busybox")
///     .entrypoint(["/bin/sh", "-c"])
///     .cmd(["cat /app/hello.txt"])
///     .env("GREETING", "hi")
///     .write_oci_archive(&tar)?;
/// assert!(tar.metadata()?.len() > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ImageBuilder {
    entries: Vec<(String, Entry)>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    user: Option<String>,
    tag: Option<String>,
    architecture: Option<String>,
}

impl ImageBuilder {
    /// An empty image for this host's architecture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a regular file at `path` (absolute, in the image) with these bytes and mode
    /// (e.g. `0o755`). Parent directories are created as needed.
    pub fn file(mut self, path: impl Into<String>, contents: Vec<u8>, mode: u32) -> Self {
        self.entries
            .push((path.into(), Entry::File { contents, mode }));
        self
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(mut self, path: impl Into<String>, target: impl Into<String>) -> Self {
        self.entries.push((
            path.into(),
            Entry::Symlink {
                target: target.into(),
            },
        ));
        self
    }

    /// Adds an (empty) directory.
    pub fn dir(mut self, path: impl Into<String>, mode: u32) -> Self {
        self.entries.push((path.into(), Entry::Dir { mode }));
        self
    }

    /// Sets the config's `Entrypoint`.
    pub fn entrypoint<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entrypoint = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the config's `Cmd`.
    pub fn cmd<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cmd = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Adds an `Env` entry (`KEY=value`).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the config's `WorkingDir`.
    pub fn working_dir(mut self, dir: impl Into<String>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Sets the config's `User` (`uid[:gid]`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Sets the tag recorded in the archive (`org.opencontainers.image.ref.name`, and
    /// `RepoTags` for a docker archive). Default `latest`.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Sets the architecture (Go names: `amd64`, `arm64`, …). Default: this host's.
    pub fn architecture(mut self, arch: impl Into<String>) -> Self {
        self.architecture = Some(arch.into());
        self
    }

    /// Writes an OCI image layout tar (`oci-layout`, `index.json`, `blobs/sha256/…`) to `path`
    /// and returns the manifest digest (`sha256:…`).
    pub fn write_oci_archive(&self, path: impl AsRef<Path>) -> Result<String, BuildError> {
        let blobs = self.blobs()?;
        let mut out = tar::Builder::new(io::BufWriter::new(std::fs::File::create(path)?));
        append(
            &mut out,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            0o644,
        )?;
        append(&mut out, "index.json", &blobs.index, 0o644)?;
        append_dir(&mut out, "blobs/")?;
        append_dir(&mut out, "blobs/sha256/")?;
        for blob in [&blobs.layer, &blobs.config, &blobs.manifest] {
            append(
                &mut out,
                &format!("blobs/sha256/{}", sha256_hex(blob)),
                blob,
                0o644,
            )?;
        }
        out.into_inner()?.flush()?;
        Ok(format!("sha256:{}", sha256_hex(&blobs.manifest)))
    }

    /// Writes a legacy `docker save` tar (`manifest.json`, `<id>.json`, `<id>/layer.tar`) to
    /// `path`.
    pub fn write_docker_archive(&self, path: impl AsRef<Path>) -> Result<(), BuildError> {
        let blobs = self.blobs()?;
        let config_hex = sha256_hex(&blobs.config);
        let layer_id = sha256_hex(&blobs.layer);
        let manifest = serde_json::json!([{
            "Config": format!("{config_hex}.json"),
            "RepoTags": [format!("serverless.local/image:{}", self.tag_or_latest())],
            "Layers": [format!("{layer_id}/layer.tar")],
        }]);
        let mut out = tar::Builder::new(io::BufWriter::new(std::fs::File::create(path)?));
        append(
            &mut out,
            "manifest.json",
            manifest.to_string().as_bytes(),
            0o644,
        )?;
        append(
            &mut out,
            &format!("{config_hex}.json"),
            &blobs.config,
            0o644,
        )?;
        append_dir(&mut out, &format!("{layer_id}/"))?;
        append(
            &mut out,
            &format!("{layer_id}/layer.tar"),
            &blobs.layer,
            0o644,
        )?;
        out.into_inner()?.flush()?;
        Ok(())
    }

    fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    fn layer_tar(&self) -> Result<Vec<u8>, BuildError> {
        let mut dirs = BTreeSet::new();
        let mut entries = Vec::with_capacity(self.entries.len());
        for (path, entry) in &self.entries {
            let rel = image_path(path)?;
            // Every parent directory gets its own entry, as image tools expect.
            let mut parent = Path::new(&rel).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                dirs.insert(format!("{}/", p.display()));
                parent = p.parent();
            }
            entries.push((rel, entry));
        }
        let mut tar = tar::Builder::new(Vec::new());
        for dir in &dirs {
            if !entries
                .iter()
                .any(|(p, e)| matches!(e, Entry::Dir { .. }) && format!("{p}/") == *dir)
            {
                append_dir(&mut tar, dir)?;
            }
        }
        for (rel, entry) in entries {
            match entry {
                Entry::File { contents, mode } => append(&mut tar, &rel, contents, *mode)?,
                Entry::Dir { mode } => {
                    let mut header = header(tar::EntryType::Directory, *mode, 0);
                    tar.append_data(&mut header, format!("{rel}/"), io::empty())?;
                }
                Entry::Symlink { target } => {
                    let mut header = header(tar::EntryType::Symlink, 0o777, 0);
                    tar.append_link(&mut header, &rel, target)?;
                }
            }
        }
        Ok(tar.into_inner()?)
    }

    /// Serializes the layer, the config, the manifest and the index.
    fn blobs(&self) -> Result<ImageBlobs, BuildError> {
        let spec = |what| move |source| BuildError::Spec { what, source };
        let layer = self.layer_tar()?;
        let diff_id = format!("sha256:{}", sha256_hex(&layer));
        let arch = self
            .architecture
            .as_deref()
            .map(Arch::from)
            .unwrap_or_default();

        let mut exec = ConfigBuilder::default();
        if let Some(e) = &self.entrypoint {
            exec = exec.entrypoint(e.clone());
        }
        if let Some(c) = &self.cmd {
            exec = exec.cmd(c.clone());
        }
        let mut env: Vec<String> =
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()];
        env.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        exec = exec.env(env);
        if let Some(w) = &self.working_dir {
            exec = exec.working_dir(w.clone());
        }
        if let Some(u) = &self.user {
            exec = exec.user(u.clone());
        }
        let config = ImageConfigurationBuilder::default()
            .architecture(arch.clone())
            .os(Os::Linux)
            .config(exec.build().map_err(spec("image config"))?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![diff_id])
                    .build()
                    .map_err(spec("rootfs"))?,
            )
            // One history entry per layer, as real builders write them: buildah refuses a base
            // image whose history lists fewer layers than its rootfs.
            .history(vec![HistoryBuilder::default()
                .created_by("serverless ImageBuilder")
                .build()
                .map_err(spec("history"))?])
            .build()
            .map_err(spec("image configuration"))?;
        let config = config.to_string().map_err(spec("image configuration"))?;
        let config = config.into_bytes();

        let manifest = ImageManifestBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(MediaType::ImageConfig, &config).map_err(spec("descriptor"))?)
            .layers(vec![
                descriptor(MediaType::ImageLayer, &layer).map_err(spec("descriptor"))?
            ])
            .build()
            .map_err(spec("manifest"))?
            .to_string()
            .map_err(spec("manifest"))?
            .into_bytes();

        let mut manifest_desc =
            descriptor(MediaType::ImageManifest, &manifest).map_err(spec("descriptor"))?;
        manifest_desc.set_platform(Some(
            PlatformBuilder::default()
                .architecture(arch)
                .os(Os::Linux)
                .build()
                .map_err(spec("platform"))?,
        ));
        manifest_desc.set_annotations(Some(
            [(
                "org.opencontainers.image.ref.name".to_owned(),
                self.tag_or_latest().to_owned(),
            )]
            .into(),
        ));
        let index = ImageIndexBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![manifest_desc])
            .build()
            .map_err(spec("index"))?
            .to_string()
            .map_err(spec("index"))?
            .into_bytes();
        Ok(ImageBlobs {
            layer,
            config,
            manifest,
            index,
        })
    }
}

/// The image's four blobs, serialized: what both archive formats are written from.
struct ImageBlobs {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
    index: Vec<u8>,
}

fn descriptor(media_type: MediaType, blob: &[u8]) -> Result<Descriptor, oci_spec::OciSpecError> {
    let digest: oci_spec::image::Digest = format!("sha256:{}", sha256_hex(blob)).parse()?;
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(blob.len() as u64)
        .build()
}

/// `/bin/app` → `bin/app`, refusing relative paths, `/` and `..`.
fn image_path(path: &str) -> Result<String, BuildError> {
    let invalid = || BuildError::InvalidPath(path.to_owned());
    let rel = path.strip_prefix('/').ok_or_else(invalid)?;
    let rel = rel.trim_end_matches('/');
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid());
    }
    Ok(rel.to_owned())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append<W: Write>(
    out: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
    mode: u32,
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    out.append_data(&mut h, name, data)
}

fn append_dir<W: Write>(out: &mut tar::Builder<W>, name: &str) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    out.append_data(&mut h, name, io::empty())
}

/// Lowercase hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_paths() {
        for p in ["", "/", "bin/sh", "/a/../b", "/a//b", "/./a"] {
            assert!(image_path(p).is_err(), "{p}");
        }
        assert_eq!(image_path("/bin/sh").unwrap(), "bin/sh");
    }

    #[test]
    fn layer_has_parents_and_is_deterministic() {
        let b = ImageBuilder::new()
            .file("/a/b/c.txt", b"x".to_vec(), 0o600)
            .symlink("/bin/sh", "/bin/busybox");
        let one = b.layer_tar().unwrap();
        assert_eq!(one, b.layer_tar().unwrap());
        let mut ar = tar::Archive::new(&one[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a/", "a/b/", "bin/", "a/b/c.txt", "bin/sh"]);
    }

    #[test]
    fn archive_digests_match_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.tar");
        let digest = ImageBuilder::new()
            .file("/x", b"y".to_vec(), 0o644)
            .cmd(["/x"])
            .write_oci_archive(&path)
            .unwrap();
        let mut ar = tar::Archive::new(std::fs::File::open(&path).unwrap());
        let mut found = false;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                let mut data = Vec::new();
                io::Read::read_to_end(&mut e, &mut data).unwrap();
                assert_eq!(sha256_hex(&data), hex);
                found |= digest == format!("sha256:{hex}");
            }
        }
        assert!(found, "manifest blob present");
    }
}
