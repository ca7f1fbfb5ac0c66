//! Run with: `cargo build -p serverless-cli --bin serverless-hello && cargo run -p examples --bin hello-image -- [SERVERLESS_HELLO_BINARY] [OUTPUT.tar]`
//!
//! Packages the `serverless-hello` demo app (a dynamically linked binary) with the shared
//! libraries it needs into an OCI archive (default `examples/hello.tar`), using
//! [`ImageBuilder::executable`]. Serve it with `image = "oci-archive:examples/hello.tar"`.

use std::path::PathBuf;

use serverless_containerd::ImageBuilder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let binary = match args.next() {
        Some(path) => PathBuf::from(path),
        None => default_binary().ok_or(
            "serverless-hello not found under target/{release,debug}: build it with \
             `cargo build -p serverless-cli --bin serverless-hello` or pass its path",
        )?,
    };
    let output = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "examples/hello.tar".to_owned()),
    );
    let digest = ImageBuilder::new()
        .executable(&binary, "/app/serverless-hello")?
        .cmd(["/app/serverless-hello"])
        .tag("hello")
        .write_oci_archive(&output)?;
    let size = std::fs::metadata(&output)?.len();
    println!(
        "wrote {} ({} KiB, manifest {digest}) from {}",
        output.display(),
        size / 1024,
        binary.display()
    );
    println!(
        "serve it with: image = \"oci-archive:{}\"",
        output.display()
    );
    Ok(())
}

/// `$CARGO_TARGET_DIR` or `target`, release before debug.
fn default_binary() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("serverless-hello"))
        .find(|p| p.is_file())
}
