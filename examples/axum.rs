//! Run with: `cargo run -p examples --bin axum -- --fake` (no containers), or as root
//! `cargo run -p examples --bin axum -- IMAGE` (an image reference or `oci-archive:PATH`, on a
//! private containerd the backend starts), then `curl http://127.0.0.1:<port>/app/` (the port
//! is printed).
//!
//! An axum server with the serverless layers in front of `/app/*`: the first request starts an
//! instance of the app and is held until it listens, more concurrent requests than
//! `max_concurrent_requests` start more instances, an instance idle for `idle_timeout` is
//! stopped, and the server itself exits after 5 idle minutes. The router is built in
//! `axum_app.rs` (the examples' library), so its test drives the same code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use examples::axum_app;
use serverless_core::fake::FakeBackend;
use serverless_core::{AppSpec, ContainerBackend, ImageRef};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "--fake".into());
    let (backend, image): (Arc<dyn ContainerBackend>, _) = if arg == "--fake" {
        // The fake's instances answer any request with a small text naming themselves.
        (
            Arc::new(FakeBackend::new()),
            ImageRef::Registry("example/hello:1".into()),
        )
    } else {
        let data = std::env::temp_dir().join("serverless-axum-example");
        let backend = serverless_containerd::ContainerdBackend::builder(data)
            .build()
            .await?;
        (Arc::new(backend), ImageRef::parse(&arg)?)
    };
    let mut spec = AppSpec::new("hello", image);
    spec.limits.max_concurrent_requests = 4;
    spec.limits.idle_timeout = Duration::from_secs(30);
    let embedded = axum_app::build(backend, spec, Duration::from_secs(300)).await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "try: curl http://{}/app/ (and /instance, /healthz); Ctrl-C to stop",
        listener.local_addr()?
    );
    let idle = embedded.idle.clone();
    let server = axum::serve(
        listener,
        embedded
            .router
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => println!("shutting down"),
            _ = idle.idle() => println!("idle for 5 minutes, exiting"),
        }
    });
    server.await?;
    embedded.pool.shutdown().await;
    Ok(())
}
