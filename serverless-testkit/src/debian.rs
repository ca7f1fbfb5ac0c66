//! Real-interpreter images on a Debian base, built from Debian's packages with `debootstrap`
//! (a `minbase` root filesystem plus the interpreter) and written as an OCI archive with
//! gzip-compressed layers, like an image from a registry. Built once and cached under
//! `target/bench-images/`, so `scripts/bench` and the tests share one build.
//!
//! The download is the only network traffic: `debootstrap` fetches packages from the Debian
//! mirror (`SERVERLESS_DEBIAN_MIRROR`, default `http://deb.debian.org/debian`; suite
//! `SERVERLESS_DEBIAN_SUITE`, default `bookworm`). The image's app itself serves on loopback or
//! in the namespaces the test makes.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest as _, Sha256};

use crate::util::BoxError;

/// The Python app: a standard-library HTTP server on `$PORT` (default 8080) that answers every
/// `GET` with [`PYTHON_GREETING`].
pub const PYTHON_APP: &str = r#"import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from python\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Hello).serve_forever()
"#;

/// What the Python app answers.
pub const PYTHON_GREETING: &str = "hello from python";

/// The name `ctr images import` and `podman load` give the Python image.
pub const PYTHON_IMAGE_NAME: &str = "serverless.local/python:bench";

/// The version of `DebianImage::write_archive`'s output, part of the cache key.
const ARCHIVE_FORMAT: u32 = 2;

/// An image on a Debian `minbase` root filesystem.
#[derive(Debug, Clone)]
pub struct DebianImage {
    /// The file name stem under the cache directory.
    pub name: String,
    /// Debian packages installed on top of `minbase`.
    pub packages: Vec<String>,
    /// Files added to the root filesystem: (absolute path, contents, mode).
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Paths (absolute) that go into the second layer; the rest is the first.
    pub top_layer: Vec<String>,
    /// The image's `Cmd`.
    pub cmd: Vec<String>,
    /// The name the archive's index gives the image (see [`PYTHON_IMAGE_NAME`]).
    pub image_name: String,
}

/// The Python image: Debian `minbase` + `python3` (the interpreter and its standard library),
/// running [`PYTHON_APP`] as `python3 /srv/app.py`. Two layers: the base system, and Python's
/// standard library with the app.
pub fn python_image() -> DebianImage {
    DebianImage {
        name: "python-debian".into(),
        packages: vec!["python3".into()],
        files: vec![("/srv/app.py".into(), PYTHON_APP.as_bytes().to_vec(), 0o644)],
        top_layer: vec!["/usr/lib/python3.11".into(), "/srv/app.py".into()],
        cmd: vec!["python3".into(), "/srv/app.py".into()],
        image_name: PYTHON_IMAGE_NAME.into(),
    }
}

/// [`python_image`] as an OCI archive, built on first use and cached: its path.
pub fn python_archive() -> Result<PathBuf, BoxError> {
    python_image().archive()
}

/// Where built images are cached: `$CARGO_TARGET_DIR/bench-images`, else the workspace's
/// `target/bench-images`.
pub fn image_cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("bench-images")
}

fn mirror() -> String {
    std::env::var("SERVERLESS_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into())
}

fn suite() -> String {
    std::env::var("SERVERLESS_DEBIAN_SUITE").unwrap_or_else(|_| "bookworm".into())
}

impl DebianImage {
    /// The cached archive's path: the name and a hash of the recipe (packages, suite, files,
    /// layers, command), so a changed recipe builds anew.
    pub fn cached_path(&self) -> PathBuf {
        let mut h = Sha256::new();
        h.update(suite());
        for p in &self.packages {
            h.update(p);
        }
        for (path, contents, mode) in &self.files {
            h.update(path);
            h.update(contents);
            h.update(mode.to_le_bytes());
        }
        for p in self.top_layer.iter().chain(&self.cmd) {
            h.update(p);
        }
        h.update(&self.image_name);
        // The archive's format: bumped when write_archive changes what it writes (2: a history
        // entry per layer).
        h.update(ARCHIVE_FORMAT.to_le_bytes());
        let hex = hex(&h.finalize());
        image_cache_dir().join(format!("{}-{}.oci.tar", self.name, &hex[..12]))
    }

    /// The archive, built unless it is already cached (needs root and `debootstrap`, and
    /// reaches the Debian mirror; a few minutes the first time).
    pub fn archive(&self) -> Result<PathBuf, BoxError> {
        let path = self.cached_path();
        if path.exists() {
            return Ok(path);
        }
        let dir = image_cache_dir();
        std::fs::create_dir_all(&dir)?;
        let work = tempfile::Builder::new()
            .prefix(&format!("{}-build-", self.name))
            .tempdir_in(&dir)?;
        eprintln!(
            "building {} with debootstrap (once; cached as {})",
            self.name,
            path.display()
        );
        let rootfs = work.path().join("rootfs");
        self.debootstrap(&rootfs)?;
        let partial = work.path().join("image.oci.tar");
        self.write_archive(&rootfs, work.path(), &partial)?;
        // Renamed into place whole: a build cut off half-way leaves no cached archive.
        std::fs::rename(&partial, &path)?;
        Ok(path)
    }

    fn debootstrap(&self, rootfs: &Path) -> Result<(), BoxError> {
        let mut cmd = Command::new("debootstrap");
        cmd.args(["--variant=minbase"]);
        if !self.packages.is_empty() {
            cmd.arg(format!("--include={}", self.packages.join(",")));
        }
        cmd.arg(suite()).arg(rootfs).arg(mirror());
        run(&mut cmd, "debootstrap (Debian package debootstrap)")?;
        // What a container image leaves out: device nodes (the runtime mounts /dev), apt's
        // downloads and lists, logs.
        for dir in [
            "dev",
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "var/log",
        ] {
            let dir = rootfs.join(dir);
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    if entry.file_name() != "partial" {
                        std::fs::remove_dir_all(entry.path())?;
                    }
                } else {
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
        for cache in [
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/srcpkgcache.bin",
        ] {
            let _ = std::fs::remove_file(rootfs.join(cache));
        }
        for (path, contents, mode) in &self.files {
            use std::os::unix::fs::PermissionsExt as _;
            let file = rootfs.join(path.trim_start_matches('/'));
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, contents)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))?;
        }
        Ok(())
    }

    /// Two gzip layers (GNU tar, numeric owners, hard links kept), a config, a manifest and an
    /// index, packed as an OCI image layout tar.
    fn write_archive(&self, rootfs: &Path, work: &Path, out: &Path) -> Result<(), BoxError> {
        let top: Vec<String> = self
            .top_layer
            .iter()
            .map(|p| format!(".{p}"))
            .filter(|p| rootfs.join(p).exists())
            .collect();
        let mut base = Command::new("tar");
        base.args(["--numeric-owner", "--sort=name", "-C"])
            .arg(rootfs)
            .args(top.iter().map(|p| format!("--exclude={p}")))
            .args(["-cf", "-", "."]);
        let mut upper = Command::new("tar");
        upper
            .args(["--numeric-owner", "--sort=name", "-C"])
            .arg(rootfs)
            .args(["-cf", "-"])
            .args(&top);
        let mut layers = Vec::new();
        for (i, cmd) in [base, upper].iter_mut().enumerate() {
            let tar = work.join(format!("layer{i}.tar"));
            run(
                cmd.stdout(std::fs::File::create(&tar)?),
                "tar (Debian package tar)",
            )?;
            let diff_id = sha256_file(&tar)?;
            let gz = work.join(format!("layer{i}.tar.gz"));
            run(
                Command::new("gzip")
                    .args(["-n", "-c"])
                    .arg(&tar)
                    .stdout(std::fs::File::create(&gz)?),
                "gzip",
            )?;
            std::fs::remove_file(&tar)?;
            let digest = sha256_file(&gz)?;
            let size = std::fs::metadata(&gz)?.len();
            layers.push((gz, diff_id, digest, size));
        }
        let config = serde_json::json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": self.cmd,
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| format!("sha256:{}", l.1)).collect::<Vec<_>>(),
            },
            // One history entry per layer, as real builders write them: buildah refuses a base
            // image whose history lists fewer layers than its rootfs.
            "history": [
                { "created_by": format!("debootstrap --variant=minbase {}", suite()) },
                { "created_by": format!("{} and the image's files", self.packages.join(" ")) },
            ],
        })
        .to_string()
        .into_bytes();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{}", sha256(&config)),
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": format!("sha256:{}", l.2),
                "size": l.3,
            })).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        let tag = self
            .image_name
            .rsplit_once(':')
            .map_or("latest", |(_, t)| t);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", sha256(&manifest)),
                "size": manifest.len(),
                "platform": { "architecture": oci_arch(), "os": "linux" },
                "annotations": {
                    "io.containerd.image.name": self.image_name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        })
        .to_string()
        .into_bytes();

        let mut tar = tar::Builder::new(io::BufWriter::new(std::fs::File::create(out)?));
        let mut small = |name: &str, data: &[u8]| -> io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, data)
        };
        small("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        small("index.json", &index)?;
        small(&format!("blobs/sha256/{}", sha256(&config)), &config)?;
        small(&format!("blobs/sha256/{}", sha256(&manifest)), &manifest)?;
        for (gz, _, digest, _) in &layers {
            tar.append_path_with_name(gz, format!("blobs/sha256/{digest}"))?;
        }
        tar.into_inner()?.flush()?;
        Ok(())
    }
}

/// The OCI name of this host's architecture.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), BoxError> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {what}: {e}"))?
        .wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!(
            "{what} exited with {}: {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
        .into());
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn sha256_file(path: &Path) -> Result<String, BoxError> {
    let mut h = Sha256::new();
    io::copy(&mut std::fs::File::open(path)?, &mut h)?;
    Ok(hex(&h.finalize()))
}
