//! Run with: `sudo cargo run -p examples --bin embed -- [IMAGE.tar] [DATA_DIR]` then
//! `curl http://127.0.0.1:3000/` (needs root, `containerd` and `runc`; build the image first
//! with the `hello-image` example)
//!
//! Composes the layers in your own hyper server instead of using the `serverless` gateway: a
//! [`Pool`] of instances of one app on an embedded containerd, and per request
//! `GlobalLimit → ColdStartBuffer → ConcurrencyLimit → forwarder`, where the forwarder takes the
//! [`Lease`] the layers put in the request's extensions, dials that instance through the
//! backend and sends the request over a fresh HTTP/1.1 connection (no pooling). Pool errors
//! become `503`/`504` answers.
//!
//! Stop it with Ctrl-C: the instances are stopped, then the embedded containerd (which runs in its
//! own process group, so the terminal's signal does not reach it first).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serverless_containerd::ContainerdBackend;
use serverless_core::{AppSpec, ContainerBackend, ImageRef};
use serverless_limits::{
    BoxError, ColdStartBufferLayer, ConcurrencyLimitLayer, GlobalLimitLayer, GlobalOverloaded,
    Lease, Pool, PoolError,
};
use tokio::net::TcpListener;
use tower::{service_fn, ServiceBuilder, ServiceExt};

type Body = UnsyncBoxBody<Bytes, BoxError>;

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
    let pool = Pool::new(app, backend.clone())?;

    // The forwarder: the instance comes from the Lease the layers inserted.
    let forward = service_fn({
        let backend = backend.clone();
        move |req: Request<Incoming>| {
            let backend = backend.clone();
            async move {
                let lease = req
                    .extensions()
                    .get::<Lease>()
                    .cloned()
                    .ok_or("no lease in the request")?;
                let conn = backend.connect(&lease.instance()).await?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(conn)).await?;
                tokio::spawn(conn);
                let res = sender.send_request(req).await?;
                Ok::<_, BoxError>(res)
            }
        }
    });
    let svc = ServiceBuilder::new()
        .layer(GlobalLimitLayer::new(100))
        .layer(ColdStartBufferLayer::new(pool.clone()))
        .layer(ConcurrencyLimitLayer::new(pool.clone()))
        .service(forward);

    let listener = TcpListener::bind("127.0.0.1:3000").await?;
    println!("serving the app from a private containerd under {data_dir}");
    println!("try: curl http://127.0.0.1:3000/   (Ctrl-C to stop)");
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted?.0,
            _ = tokio::signal::ctrl_c() => break,
        };
        let svc = svc.clone();
        let handler = hyper::service::service_fn(move |req: Request<Incoming>| {
            let svc = svc.clone();
            async move {
                // Boxed: sidesteps a higher-ranked inference limit when this future is spawned.
                let fut: Pin<Box<dyn Future<Output = Result<_, BoxError>> + Send>> =
                    Box::pin(svc.oneshot(req));
                let res = match fut.await {
                    Ok(res) => res.map(|body| body.map_err(box_error).boxed_unsync()),
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

fn box_error(e: hyper::Error) -> BoxError {
    Box::new(e)
}

/// Errors are answered, never dropped: pool errors carry their status, the rest is a 502.
fn error_response(err: &BoxError) -> Response<Body> {
    let (status, retry_after) = if let Some(e) = err.downcast_ref::<PoolError>() {
        (e.status(), e.retry_after())
    } else if err.downcast_ref::<GlobalOverloaded>().is_some() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(std::time::Duration::from_secs(1)),
        )
    } else {
        (StatusCode::BAD_GATEWAY, None)
    };
    let body = Full::new(Bytes::from(format!("{err}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut res = Response::new(body);
    *res.status_mut() = status;
    if let Some(after) = retry_after {
        res.headers_mut()
            .insert(header::RETRY_AFTER, after.as_secs().max(1).into());
    }
    res
}
