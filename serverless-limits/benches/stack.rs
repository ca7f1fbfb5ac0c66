//! The cost of the request path's layers over a no-op service, warm (a `Ready` instance with
//! room): time per request (criterion) and heap allocations per request (counted).
//!
//! Run with: `cargo bench -p serverless-limits --bench stack`

#![allow(clippy::unwrap_used, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use serverless_core::fake::FakeBackend;
use serverless_core::{AppSpec, ImageRef};
use serverless_limits::{ColdStartBufferLayer, ConcurrencyLimitLayer, GlobalLimitLayer, Pool};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn noop() -> impl Service<
    Request<()>,
    Response = Response<Empty<bytes::Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Empty::new())) })
}

async fn one<S, B>(svc: &mut S)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async {
        let mut app = AppSpec::new("bench", ImageRef::Registry("bench:1".into()));
        app.scale.min = 1;
        app.limits.max_concurrent_requests = 256;
        let pool = Pool::new(app, Arc::new(FakeBackend::new())).unwrap();
        while pool
            .snapshot()
            .instances
            .iter()
            .all(|i| i.state.as_str() != "ready")
        {
            tokio::task::yield_now().await;
        }
        pool
    });
    let mut bare = noop();
    let mut stack = ServiceBuilder::new()
        .layer(GlobalLimitLayer::new(500))
        .layer(ColdStartBufferLayer::new(pool.clone()))
        .layer(ConcurrencyLimitLayer::new(pool.clone()))
        .service(noop());

    // Allocations per request, measured over many requests.
    const N: usize = 10_000;
    let count = |svc: &mut dyn FnMut()| {
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..N {
            svc();
        }
        (ALLOCS.load(Ordering::Relaxed) - before) as f64 / N as f64
    };
    let bare_allocs = count(&mut || rt.block_on(one(&mut bare)));
    let stack_allocs = count(&mut || rt.block_on(one(&mut stack)));
    println!("allocs_per_request_bare={bare_allocs:.2}");
    println!("allocs_per_request_stack={stack_allocs:.2}");
    println!("allocs_per_request_added={:.2}", stack_allocs - bare_allocs);

    let mut group = c.benchmark_group("request_path");
    group.bench_function("noop", |b| b.iter(|| rt.block_on(one(&mut bare))));
    group.bench_function("global+buffer+concurrency over noop", |b| {
        b.iter(|| rt.block_on(one(&mut stack)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
