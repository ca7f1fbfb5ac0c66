//! Run with: `sudo cargo run -p examples --bin embed -- [IMAGE.tar] [DATA_DIR]` then
//! `curl http://127.0.0.1:3000/` (needs root, `containerd` and `runc`; build the image first
//! with the `hello-image` example)
//!
//! Composes the layers in your own hyper server instead of using the `serverless` gateway: a
//! [`Pool`] of instances of one app on an embedded containerd, and per request
//! `GlobalLimit → ColdStartBuffer → ConcurrencyLimit → Forward`. [`Forward`] is the gateway's
//! own forwarder: it sends the request to the instance of the [`Lease`](serverless_limits::Lease)
//! the layers put in its extensions over connections kept per instance, rewrites hop-by-hop and
//! `x-forwarded-*` headers, tunnels upgrades, and trades an unreachable instance for another.
//! Its [`Upstreams`] are the pool's observer, so an instance's kept connections go with it.
//! Errors become answers through [`Refusal`] (503/504 with `x-serverless-error` and
//! `Retry-After`) or a 502.
//!
//! Stop it with Ctrl-C: the instances are stopped, then the embedded containerd (which runs in its
//! own process group, so the terminal's signal does not reach it first).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serverless_containerd::ContainerdBackend;
use serverless_core::{AppSpec, ContainerBackend, ImageRef};
use serverless_limits::{
    BoxError, ColdStartBufferLayer, ConcurrencyLimitLayer, GlobalLimitLayer, Pool, Refusal,
};
use serverless_proxy::{ClientInfo, Forward, ForwardError, ResBody, Upstreams};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let image = args
        .next()
        .unwrap_or_else(|| "examples/hello.tar".to_owned());
    let data_dir = args
        .next()
        .unwrap_or_else(|| "/tmp/serverless-embed".to_owned());
    let image = std::fs::canonicalize(&image)
        .map_err(|e| format!("{image}: {e} (build it with the hello-image example)"))?;

    let backend = Arc::new(ContainerdBackend::embedded(&data_dir).await?);
    let app = AppSpec::new("hello", ImageRef::OciArchive(image));
    backend.prepare(&app).await?;
    // Connections kept per instance, dropped when the pool removes an instance.
    let upstreams: Upstreams<Incoming> = Upstreams::new(backend.clone());
    let pool = Pool::builder(app.clone(), backend.clone())
        .observer(Arc::new(upstreams.clone()))
        .build()?;
    // Built once; each request clones it.
    let svc = ServiceBuilder::new()
        .layer(GlobalLimitLayer::new(100))
        .layer(ColdStartBufferLayer::new(pool.clone()))
        .layer(ConcurrencyLimitLayer::new(pool.clone()))
        .service(Forward::new(Arc::new(app), upstreams));

    let listener = TcpListener::bind("127.0.0.1:3000").await?;
    println!("serving the app from a private containerd under {data_dir}");
    println!("try: curl http://127.0.0.1:3000/   (Ctrl-C to stop)");
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let svc = svc.clone();
        let handler = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let svc = svc.clone();
            // The forwarder names the client in `x-forwarded-for` and `forwarded`.
            req.extensions_mut().insert(ClientInfo { addr, tls: false });
            async move {
                // Boxed: sidesteps a higher-ranked inference limit when this future is spawned.
                let fut: Pin<Box<dyn Future<Output = Result<_, BoxError>> + Send>> =
                    Box::pin(svc.oneshot(req));
                let res = match fut.await {
                    Ok(res) => res.map(ResBody::new),
                    Err(err) => error_response(&err),
                };
                Ok::<_, Infallible>(res)
            }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), handler)
                .await;
        });
    }
    println!("stopping instances");
    pool.shutdown().await;
    backend.shutdown().await?;
    Ok(())
}

/// Errors are answered, never dropped: the layers' through [`Refusal`], the forwarder's as
/// [`ForwardError::status`] says (502, or 504 for a response timeout), anything else 500.
fn error_response(err: &BoxError) -> Response<ResBody> {
    let refusal = Refusal::of(err.as_ref()).unwrap_or_else(|| {
        let status = err
            .downcast_ref::<ForwardError>()
            .map_or(StatusCode::INTERNAL_SERVER_ERROR, ForwardError::status);
        Refusal::new(status, &err.to_string())
    });
    refusal
        .into_response::<String>()
        .map(|body| ResBody::new(http_body_util::Full::from(body).map_err(|e| match e {})))
}
