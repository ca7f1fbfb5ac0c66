//! The axum example's router (`examples::axum_app`) over the fake backend: it scales out, stops
//! an idle instance, and answers a boot failure with the refusal headers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use examples::axum_app::{self, Embedded};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serverless_core::fake::{Behavior, FakeBackend};
use serverless_core::{AppSpec, ImageRef};
use serverless_limits::ERROR_HEADER;
use tower::ServiceExt;

async fn router(backend: &Arc<FakeBackend>, configure: impl FnOnce(&mut AppSpec)) -> Embedded {
    let mut spec = AppSpec::new("hello", ImageRef::Registry("example/hello:1".into()));
    configure(&mut spec);
    axum_app::build(backend.clone(), spec, Duration::from_secs(300))
        .await
        .expect("router")
}

fn get(path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("host", "hello.localhost")
        .body(Body::empty())
        .expect("a request")
}

#[tokio::test]
async fn more_requests_than_an_instance_takes_start_a_second_one() {
    let backend = Arc::new(FakeBackend::new());
    let app = router(&backend, |s| s.limits.max_concurrent_requests = 1).await;
    // A response holds its place on the instance until its body is read or dropped.
    let first = app.router.clone().oneshot(get("/app/a")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = app.router.clone().oneshot(get("/app/b")).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(
        backend.started(),
        2,
        "the second request found the first instance full"
    );
    assert_eq!(app.pool.snapshot().instances.len(), 2);

    // A handler behind route_layer gets the lease of the instance it holds a place on.
    drop(first);
    let res = app.router.clone().oneshot(get("/instance")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"instance "), "{body:?}");
    drop(second);
    app.pool.shutdown().await;
}

#[tokio::test]
async fn an_idle_instance_is_stopped_after_the_idle_timeout() {
    let backend = Arc::new(FakeBackend::new());
    let app = router(&backend, |s| {
        s.limits.idle_timeout = Duration::from_secs(60)
    })
    .await;
    let res = app.router.clone().oneshot(get("/app/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await.unwrap();
    assert_eq!(backend.running("hello").len(), 1);

    // Nothing in flight: the pool stops the instance once the idle timeout has passed.
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(
        backend.running("hello").len(),
        1,
        "not idle long enough yet"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..100 {
        if backend.running("hello").is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(backend.running("hello").is_empty(), "stopped when idle");
    assert_eq!(backend.stopped(), 1);
    // The router's own idle handle: idle as well (its timeout is longer).
    assert_eq!(app.idle.in_flight(), 0);
    app.pool.shutdown().await;
}

#[tokio::test]
async fn a_boot_failure_is_a_503_with_the_refusal_headers() {
    let backend = Arc::new(FakeBackend::new());
    backend.set_behavior(
        "hello",
        Behavior {
            boot_failure: Some((3, "boom".into())),
            ..Default::default()
        },
    );
    let app = router(&backend, |_| {}).await;
    let res = app.router.clone().oneshot(get("/app/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let reason = res.headers()[ERROR_HEADER].to_str().unwrap().to_owned();
    assert!(reason.contains("hello") && reason.contains('3'), "{reason}");
    assert!(res.headers().contains_key(http::header::RETRY_AFTER));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("boom"), "{body:?}");
    app.pool.shutdown().await;
}
