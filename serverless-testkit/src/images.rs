//! Test images, built at test time by the project's own `ImageBuilder` (never pulled): busybox
//! httpd with a few CGI scripts, and the demo app.

use std::path::{Path, PathBuf};

use serverless_containerd::{BuildError, ImageBuilder};

/// Debian's `busybox-static`: the payload of [`busybox_image`].
pub const BUSYBOX: &str = "/bin/busybox";

/// An app command that runs `script` with the image's busybox `sh -c`.
pub fn busybox_sh(script: &str) -> Option<Vec<String>> {
    Some(vec![
        BUSYBOX.into(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ])
}

/// busybox httpd serving `/www` on 8080 (`hello from busybox` at `/`; the app's command may
/// override it), with `/bin/sh`, a writable `/tmp` and CGI scripts:
///
/// - `slow`: answers after 1 s;
/// - `probe?HOST+PORT`: whether the instance can connect there (`open`/`closed`);
/// - `bomb`: makes the init process allocate 1 GiB; `fork`: a fork bomb;
/// - `spin?N`: burns one CPU for N seconds (default 3).
///
/// Panics when [`BUSYBOX`] cannot be read.
pub fn busybox_image() -> ImageBuilder {
    let busybox = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("read {BUSYBOX} (Debian package busybox-static): {e}"));
    let cgi = |body: &str| {
        format!("#!/bin/busybox sh\necho 'Content-Type: text/plain'\necho\n{body}\n").into_bytes()
    };
    ImageBuilder::new()
        .file("/bin/busybox", busybox, 0o755)
        .symlink("/bin/sh", "/bin/busybox")
        .dir("/tmp", 0o1777)
        .file("/www/index.html", b"hello from busybox\n".to_vec(), 0o644)
        .file("/www/cgi-bin/slow", cgi("/bin/busybox sleep 1\necho slow"), 0o755)
        .file(
            "/www/cgi-bin/probe",
            cgi("set -- $(echo \"$QUERY_STRING\" | /bin/busybox tr '+' ' ')\n\
                 if /bin/busybox nc -w 1 \"$1\" \"$2\" </dev/null >/dev/null 2>&1; then echo open; else echo closed; fi"),
            0o755,
        )
        .file("/www/cgi-bin/bomb", cgi("/bin/busybox touch /tmp/bomb\necho armed"), 0o755)
        .file(
            "/www/cgi-bin/fork",
            cgi("n=0\nwhile [ $n -lt 2000 ]; do /bin/busybox sleep 30 </dev/null >/dev/null 2>&1 & n=$((n+1)); done 2>/dev/null\n\
                 echo started"),
            0o755,
        )
        .file(
            "/www/cgi-bin/spin",
            cgi("/bin/busybox timeout ${QUERY_STRING:-3} /bin/busybox sh -c 'while :; do :; done'\necho spun"),
            0o755,
        )
        .cmd(["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"])
}

/// [`busybox_image`] written as `dir/busybox.tar` (an OCI archive); returns its path.
pub fn busybox_archive(dir: &Path) -> PathBuf {
    let path = dir.join("busybox.tar");
    busybox_image()
        .write_oci_archive(&path)
        .expect("write the busybox image");
    path
}

/// The demo app: the `serverless-hello` binary at `bin` (with the shared libraries it needs)
/// as `/app/serverless-hello`, its command. Tests pass their package's
/// `env!("CARGO_BIN_EXE_serverless-hello")`; only the binary's own package has that variable.
pub fn hello_image(bin: impl AsRef<Path>) -> Result<ImageBuilder, BuildError> {
    Ok(ImageBuilder::new()
        .executable(bin, "/app/serverless-hello")?
        .cmd(["/app/serverless-hello"]))
}

/// [`hello_image`] written as `dir/hello.tar` (an OCI archive); returns its path.
pub fn hello_archive(bin: impl AsRef<Path>, dir: &Path) -> PathBuf {
    let bin = bin.as_ref();
    let path = dir.join("hello.tar");
    hello_image(bin)
        .unwrap_or_else(|e| panic!("package {}: {e}", bin.display()))
        .write_oci_archive(&path)
        .expect("write the hello image");
    path
}
