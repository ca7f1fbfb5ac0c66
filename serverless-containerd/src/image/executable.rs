//! [`ImageBuilder::executable`]: a host executable plus the shared libraries `ldd` says it
//! needs, so a dynamically linked binary runs in an otherwise empty image.

use std::io;
use std::path::Path;
use std::process::Command;

use super::builder::{BuildError, ImageBuilder};

impl ImageBuilder {
    /// Adds the host executable `host_path` at `image_path` (mode `0755`) together with every
    /// shared library it loads, each at the absolute path `ldd` reports for it on this host
    /// (the dynamic loader too, e.g. `/lib64/ld-linux-x86-64.so.2`), so the image needs no base.
    ///
    /// Symbolic links are followed when reading; the file is written as a regular file at the
    /// path `ldd` printed. `linux-vdso` is skipped (the kernel provides it). A statically linked
    /// executable is added alone. Libraries loaded at run time with `dlopen` (NSS modules, …)
    /// are not found by `ldd` and must be added with [`file`](Self::file).
    ///
    /// Fails with [`BuildError::Io`] when the executable cannot be read, `ldd` cannot run or
    /// reports a library as `not found`, and with [`BuildError::InvalidPath`] when `image_path`
    /// is not absolute.
    ///
    /// ```no_run
    /// use serverless_containerd::ImageBuilder;
    ///
    /// ImageBuilder::new()
    ///     .executable("target/release/serverless-hello", "/app/serverless-hello")?
    ///     .cmd(["/app/serverless-hello"])
    ///     .write_oci_archive("hello.tar")?;
    /// # Ok::<(), serverless_containerd::BuildError>(())
    /// ```
    pub fn executable(
        self,
        host_path: impl AsRef<Path>,
        image_path: impl Into<String>,
    ) -> Result<Self, BuildError> {
        let host_path = host_path.as_ref();
        let image_path = image_path.into();
        if !image_path.starts_with('/') || image_path.split('/').any(|c| c == "..") {
            return Err(BuildError::InvalidPath(image_path));
        }
        let contents = std::fs::read(host_path).map_err(|e| with_path(e, host_path))?;
        let libs = shared_libraries(host_path)?;
        let mut image = self.file(image_path, contents, 0o755);
        for lib in libs {
            let contents = std::fs::read(&lib).map_err(|e| with_path(e, Path::new(&lib)))?;
            image = image.file(lib, contents, 0o755);
        }
        Ok(image)
    }
}

fn with_path(e: io::Error, path: &Path) -> BuildError {
    BuildError::Io(io::Error::new(
        e.kind(),
        format!("reading {}: {e}", path.display()),
    ))
}

/// Runs `ldd` on `exe` and returns the libraries' absolute paths (empty for a static binary).
fn shared_libraries(exe: &Path) -> Result<Vec<String>, BuildError> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|e| BuildError::Io(io::Error::new(e.kind(), format!("running ldd: {e}"))))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // glibc's ldd exits 1 with "not a dynamic executable"; musl's says "Not a valid dynamic
        // program". Either way there is nothing to add.
        let text = format!("{stdout}{stderr}").to_ascii_lowercase();
        if text.contains("not a dynamic executable") || text.contains("not a valid dynamic") {
            return Ok(Vec::new());
        }
        return Err(BuildError::Io(io::Error::other(format!(
            "ldd {} failed: {}",
            exe.display(),
            stderr.trim()
        ))));
    }
    parse_ldd(&stdout).map_err(|e| {
        BuildError::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: {e}", exe.display()),
        ))
    })
}

/// A library `ldd` reports as `not found`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared library {0} not found")]
pub(crate) struct MissingLibrary(pub(crate) String);

/// Parses `ldd` output into the absolute paths of the libraries and the loader, in order,
/// without duplicates. Fails on a `lib => not found` line.
pub(crate) fn parse_ldd(output: &str) -> Result<Vec<String>, MissingLibrary> {
    let mut paths: Vec<String> = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // Drop the load address: `… (0x00007f…)`.
        let line = match line.rfind(" (0x") {
            Some(i) => line[..i].trim_end(),
            None => line,
        };
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target == "not found" {
                    return Err(MissingLibrary(name.trim().to_owned()));
                }
                target
            }
            // The loader (`/lib64/ld-linux-x86-64.so.2`), `linux-vdso.so.1`,
            // `statically linked`, …: only absolute paths are files.
            None => line,
        };
        if path.starts_with('/') && !path.contains("linux-vdso") && !paths.iter().any(|p| p == path)
        {
            paths.push(path.to_owned());
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn parses_glibc_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd3c5f2000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007fb5c6f6b000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a4e5aa000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a4e5aa000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0a4e7a9000)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }

    #[test]
    fn parses_static_and_odd_lines() {
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        assert!(parse_ldd("").unwrap().is_empty());
        // Old 32-bit style vdso line with an empty target.
        assert!(parse_ldd("\tlinux-gate.so.1 =>  (0xb7f1d000)\n")
            .unwrap()
            .is_empty());
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert_eq!(err, MissingLibrary("libfoo.so.1".into()));
        assert_eq!(err.to_string(), "shared library libfoo.so.1 not found");
    }

    #[test]
    fn rejects_relative_image_path() {
        let err = ImageBuilder::new()
            .executable("/bin/true", "app")
            .unwrap_err();
        assert!(matches!(err, BuildError::InvalidPath(_)), "{err}");
    }

    #[test]
    fn missing_executable_is_an_error() {
        assert!(ImageBuilder::new()
            .executable("/nonexistent/exe", "/app/exe")
            .is_err());
    }

    /// The layer of a written OCI archive, unpacked into `dir`; returns its entry names.
    fn unpack_layer(archive: &Path, dir: &Path) -> Vec<String> {
        let mut blobs = std::collections::HashMap::new();
        let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            blobs.insert(name, data);
        }
        let json =
            |name: &str| -> serde_json::Value { serde_json::from_slice(&blobs[name]).unwrap() };
        let blob = |digest: &serde_json::Value| {
            format!(
                "blobs/sha256/{}",
                digest.as_str().unwrap().trim_start_matches("sha256:")
            )
        };
        let index = json("index.json");
        let manifest = json(&blob(&index["manifests"][0]["digest"]));
        let layer = &blobs[&blob(&manifest["layers"][0]["digest"])];
        std::fs::create_dir_all(dir).unwrap();
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&layer[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            names.push(e.path().unwrap().display().to_string());
            e.unpack_in(dir).unwrap();
        }
        names
    }

    #[test]
    fn packages_a_dynamic_binary_that_runs_in_a_chroot() {
        let exe = Path::new("/bin/true");
        if !exe.exists() || Command::new("ldd").arg("--version").output().is_err() {
            eprintln!("skipped: needs /bin/true and ldd");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("true.tar");
        ImageBuilder::new()
            .executable(exe, "/app/true")
            .unwrap()
            .cmd(["/app/true"])
            .write_oci_archive(&archive)
            .unwrap();
        let root = dir.path().join("root");
        let names = unpack_layer(&archive, &root);
        assert!(names.iter().any(|n| n == "app/true"), "{names:?}");
        assert!(names.iter().any(|n| n.contains("libc.so")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("ld-linux")), "{names:?}");
        // As root, prove the image is self-contained: run it with nothing else around.
        // A directory we created is owned by our effective uid.
        if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.path()).unwrap()) == 0 {
            let status = Command::new("chroot")
                .arg(&root)
                .arg("/app/true")
                .status()
                .unwrap();
            assert!(status.success(), "chroot run: {status}");
        }
    }

    #[test]
    fn packages_a_static_binary_alone() {
        let exe = Path::new("/bin/busybox");
        let static_busybox = Command::new("ldd")
            .arg(exe)
            .output()
            .is_ok_and(|o| !o.status.success());
        if !exe.exists() || !static_busybox {
            eprintln!("skipped: needs a static /bin/busybox");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("bb.tar");
        ImageBuilder::new()
            .executable(exe, "/bin/busybox")
            .unwrap()
            .write_oci_archive(&archive)
            .unwrap();
        let names = unpack_layer(&archive, &dir.path().join("root"));
        assert_eq!(names, ["bin/", "bin/busybox"]);
    }
}
