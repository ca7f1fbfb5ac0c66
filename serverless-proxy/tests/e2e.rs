//! End to end: the real gateway over a real (private) containerd running real runc containers,
//! with real HTTP clients. Needs root, `containerd`, `runc` and Debian's `busybox-static`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serverless_containerd::{ContainerdBackend, ImageBuilder};
use serverless_core::{Config, ContainerBackend};
use serverless_proxy::{Gateway, COLD_START_HEADER};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A private containerd under a temp dir, in a namespace of its own (tests run in parallel).
async fn containerd(dir: &Path) -> ContainerdBackend {
    assert!(
        Path::new("/bin/busybox").exists(),
        "e2e tests need Debian's busybox-static (scripts/install-deps installs it)"
    );
    let ns = format!(
        "e2e-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    ContainerdBackend::builder(dir)
        .namespace(ns)
        .build()
        .await
        .expect("start a private containerd (needs root, containerd and runc)")
}

/// busybox httpd serving `/` and a CGI `/cgi-bin/slow` that answers after 1 s.
fn busybox_image(dir: &Path) -> PathBuf {
    let path = dir.join("web.tar");
    let busybox = std::fs::read("/bin/busybox").expect("read /bin/busybox");
    ImageBuilder::new()
        .file("/bin/busybox", busybox, 0o755)
        .symlink("/bin/sh", "/bin/busybox")
        .file("/www/index.html", b"hello from busybox\n".to_vec(), 0o644)
        .file(
            "/www/cgi-bin/slow",
            b"#!/bin/busybox sh\n/bin/busybox sleep 1\necho 'Content-Type: text/plain'\necho\necho slow\n"
                .to_vec(),
            0o755,
        )
        .cmd(["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"])
        .write_oci_archive(&path)
        .expect("write image");
    path
}

struct Env {
    gateway: Gateway,
    backend: Arc<ContainerdBackend>,
    client: Client<HttpConnector, Full<Bytes>>,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start(app_toml: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let apps = app_toml(dir.path());
        let config = Config::from_toml(&format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{apps}"
        ))
        .unwrap();
        let backend = Arc::new(containerd(dir.path()).await);
        let gateway = Gateway::start(config, backend.clone()).await.unwrap();
        Self {
            gateway,
            backend,
            client: Client::builder(TokioExecutor::new()).build_http(),
            _dir: dir,
        }
    }

    async fn get(&self, host: &str, path: &str) -> Result<(http::response::Parts, String), String> {
        let req = Request::builder()
            .uri(format!("http://{}{path}", self.gateway.listen_addr()))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = self.client.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts, String::from_utf8_lossy(&body).into_owned()))
    }

    fn instances(&self, app: &str) -> usize {
        self.gateway
            .engine()
            .app(app)
            .map(|a| a.pool.snapshot().instances.len())
            .unwrap_or(0)
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        let left = self.backend.list().await.unwrap();
        assert!(left.is_empty(), "left behind: {left:?}");
        self.backend.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_warm_scale_out_and_idle_stop() {
    let env = Env::start(|dir| {
        format!(
            r#"
[[apps]]
name = "web"
image = "oci-archive:{}"
[apps.limits]
max_concurrent_requests = 2
idle_timeout = "1500ms"
[apps.scale]
max = 3
"#,
            busybox_image(dir).display()
        )
    })
    .await;

    // Cold start: the first request is held until busybox listens, then answered.
    let (parts, body) = env.get("web.localhost", "/").await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "hello from busybox\n");
    let cold: u64 = parts.headers[COLD_START_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("cold start through the gateway: {cold} ms");

    // Warm.
    let (parts, _) = env.get("web.localhost", "/").await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert!(parts.headers.get(COLD_START_HEADER).is_none());
    assert_eq!(env.instances("web"), 1);

    // Scale out: 6 slow requests at 2 per instance need 3 instances, all succeed.
    let env = Arc::new(env);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let env = env.clone();
            tokio::spawn(async move { env.get("web.localhost", "/cgi-bin/slow").await })
        })
        .collect();
    for t in tasks {
        let (parts, body) = t.await.unwrap().unwrap();
        assert_eq!(parts.status, StatusCode::OK, "{body}");
        assert_eq!(body, "slow\n");
    }
    assert_eq!(env.instances("web"), 3);

    // Idle stop: with nothing in flight every instance stops after idle_timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while env.instances("web") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "instances not stopped when idle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.backend.list().await.unwrap().is_empty());

    // And from zero again.
    let (parts, _) = env.get("web.localhost", "/").await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert!(parts.headers.contains_key(COLD_START_HEADER));
    Arc::into_inner(env).expect("sole owner").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycle_under_load_fails_nothing() {
    let env = Env::start(|dir| {
        format!(
            r#"
[[apps]]
name = "web"
image = "oci-archive:{}"
[apps.limits]
max_concurrent_requests = 4
max_duration = "1s"
stop_grace = "1s"
"#,
            busybox_image(dir).display()
        )
    })
    .await;
    let env = Arc::new(env);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let env = env.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while tokio::time::Instant::now() < deadline {
                    match env.get("web.localhost", "/").await {
                        Ok((parts, _)) if parts.status == StatusCode::OK => ok += 1,
                        Ok((parts, body)) => failed.push(format!("{}: {body}", parts.status)),
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut ok = 0;
    let mut failed = Vec::new();
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    // Recycled instances stop once drained (busybox ignores SIGTERM, so each takes stop_grace).
    let recycled = || {
        let metrics = env.gateway.engine().metrics().encode(env.gateway.engine());
        metrics
            .lines()
            .find(|l| {
                l.starts_with("serverless_instance_stops_total{app=\"web\",reason=\"recycled\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let wait_until = tokio::time::Instant::now() + Duration::from_secs(10);
    while recycled() < 2 && tokio::time::Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recycled = recycled();
    eprintln!(
        "recycle under load: {ok} ok, {} failed, {recycled} recycles",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(recycled >= 2, "only {recycled} recycles");
    Arc::into_inner(env).expect("sole owner").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_that_fails_to_boot_gets_503_with_exit_code_and_logs() {
    let env = Env::start(|dir| {
        format!(
            r#"
[[apps]]
name = "broken"
image = "oci-archive:{}"
command = ["/bin/busybox", "sh", "-c", "echo config missing >&2; exit 3"]
"#,
            busybox_image(dir).display()
        )
    })
    .await;
    let (parts, body) = env.get("broken.localhost", "/").await.unwrap();
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    let reason = parts.headers[serverless_proxy::ERROR_HEADER]
        .to_str()
        .unwrap();
    assert!(reason.contains("exited with code 3"), "{reason}");
    assert!(body.contains("config missing"), "{body}");
    // No container pile-up while backing off.
    for _ in 0..5 {
        let (parts, _) = env.get("broken.localhost", "/").await.unwrap();
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(env.backend.list().await.unwrap().len() <= 1);
    env.stop().await;
}
