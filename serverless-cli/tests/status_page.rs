//! The status page in a real browser: Debian's `chromium`, headless, driven over its DevTools
//! protocol (a websocket) by this test, against the real gateway over a private containerd.
//! It signs in with the admin token, watches a cold start happen without a reload, opens an
//! instance's logs, and leaves screenshots in `target/test-artifacts/`.
//! Needs root, `containerd`, `runc`, `busybox-static` and `chromium` (scripts/install-deps).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use serverless_testkit::{busybox_archive, busybox_sh, can_run_with, GatewayHarness};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TOKEN: &str = "status-page-browser-token";

/// Headless chromium as root on a machine with no network: no sandbox (root), nothing that
/// phones home, a fresh profile.
async fn launch_chromium(profile: &std::path::Path) -> (Child, String) {
    let mut child = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("chromium exited without a DevTools address");
    })
    .await
    .expect("chromium did not listen within 30 s");
    // Keep draining stderr so chromium never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

/// A DevTools protocol client on one page (a flattened session of the browser connection).
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect to chromium's DevTools");
        Self {
            ws,
            next: 0,
            session: None,
        }
    }

    /// Sends `method` and returns its result (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            msg["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to chromium");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let msg = self.ws.next().await.expect("chromium closed").unwrap();
                let Message::Text(text) = msg else { continue };
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["id"] == id {
                    return value;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"));
        assert!(answer["error"].is_null(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Evaluates `expr` in the page and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{expr}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is true; panics after `within`, naming `what`.
    async fn wait_for(&mut self, what: &str, expr: &str, within: Duration) {
        let t0 = tokio::time::Instant::now();
        while self.eval(expr).await != json!(true) {
            assert!(
                t0.elapsed() < within,
                "{what}: not seen within {within:?}; the page says: {}",
                self.eval("document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }
}

/// The text of the first element matching `selector` in app `web`'s section, as JS.
fn web(selector: &str) -> String {
    format!("(document.querySelector('[data-app=\"web\"] {selector}') || {{}}).textContent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_a_cold_start_live_in_chromium() {
    if !can_run_with(
        "status_page_shows_a_cold_start_live_in_chromium",
        &[("chromium", "chromium")],
    ) {
        return;
    }
    // The app says what it does and takes a second to listen: a cold start long enough to see.
    let env = GatewayHarness::start_with(&format!("admin_token = \"{TOKEN}\""), |dir| {
        format!(
            r#"
[[apps]]
name = "web"
image = "oci-archive:{}"
hosts = ["web.localhost"]
network = "none"
command = {:?}
[apps.limits]
idle_timeout = "10m"
"#,
            busybox_archive(dir).display(),
            busybox_sh(
                "echo booting web; sleep 1; echo httpd on 8080; exec /bin/busybox httpd -f -p 8080 -h /www"
            )
            .unwrap()
        )
    })
    .await;
    let admin = env.gateway().admin_addr();
    let profile = tempfile::tempdir().unwrap();
    let (mut chromium, devtools) = launch_chromium(profile.path()).await;
    let mut cdp = Cdp::connect(&devtools).await;
    let target = cdp
        .call("Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let session = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(session["sessionId"].as_str().unwrap().to_owned());
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1100, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    cdp.call("Page.navigate", json!({"url": format!("http://{admin}/")}))
        .await;

    // The page loads without the token, asks for it, and signs in.
    cdp.wait_for(
        "the sign-in form",
        "!!document.getElementById('login') && !document.getElementById('login').hidden",
        Duration::from_secs(15),
    )
    .await;
    cdp.eval(&format!(
        "document.getElementById('token').value = '{TOKEN}'; \
         document.getElementById('login').requestSubmit(); true"
    ))
    .await;
    cdp.wait_for(
        "app web with no instance",
        "!!document.querySelector('[data-app=\"web\"]') && \
         document.querySelectorAll('[data-app=\"web\"] tr[data-instance]').length === 0 && \
         document.getElementById('conn').textContent === 'live'",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(cdp.eval(&web("[data-field=requests_total]")).await, "0");
    // A mark a reload would wipe.
    cdp.eval("window.__noReload = 'kept'; true").await;

    // A request cold-starts the app; the page shows the instance starting, then ready, and
    // the request counted, without a reload.
    let request = tokio::spawn({
        let client = env.client.clone();
        let addr = env.addr();
        async move {
            serverless_testkit::send(&client, addr, "web.localhost", Method::GET, "/", b"").await
        }
    });
    cdp.wait_for(
        "the instance starting",
        "document.querySelector('[data-app=\"web\"] tr[data-instance] [data-field=state]')?.textContent === 'starting'",
        Duration::from_secs(10),
    )
    .await;
    cdp.screenshot("status-page-cold-start.png").await;
    let answer = request.await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    cdp.wait_for(
        "the instance ready and the request counted",
        &format!(
            "document.querySelector('[data-app=\"web\"] tr[data-instance] [data-field=state]')?.textContent === 'ready' && {} === '1'",
            web("[data-field=requests_total]")
        ),
        Duration::from_secs(10),
    )
    .await;
    let ids = env.instances("web");
    assert_eq!(ids.len(), 1);
    let row = cdp
        .eval("document.querySelector('[data-app=\"web\"] tr[data-instance]').dataset.instance")
        .await;
    assert_eq!(row, ids[0].as_str());
    // The cold start's phases are on the row, the histogram counted it, the event log has it.
    let cold = cdp
        .eval("document.querySelector('[data-app=\"web\"] tr[data-instance] .phases').textContent")
        .await;
    assert!(cold.as_str().unwrap().contains(" ms"), "{cold}");
    cdp.wait_for(
        "the cold-start histogram",
        "document.querySelector('[data-app=\"web\"] table.bars caption').textContent.endsWith(': 1')",
        Duration::from_secs(5),
    )
    .await;
    cdp.wait_for(
        "the ready event in the log",
        "!!document.querySelector('#events tr[data-event=ready]')",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(cdp.eval("window.__noReload").await, "kept");

    // More requests: the count follows.
    for _ in 0..4 {
        assert_eq!(
            env.get("web.localhost", "/").await.unwrap().status,
            StatusCode::OK
        );
    }
    cdp.wait_for(
        "five requests counted",
        &format!("{} === '5'", web("[data-field=requests_total]")),
        Duration::from_secs(10),
    )
    .await;
    cdp.screenshot("status-page.png").await;

    // The instance's logs, on click.
    cdp.eval("document.querySelector('[data-app=\"web\"] [data-logs]').click(); true")
        .await;
    cdp.wait_for(
        "the instance's logs",
        "document.getElementById('logs').open && document.getElementById('logs-text').textContent.includes('httpd on 8080')",
        Duration::from_secs(10),
    )
    .await;
    cdp.screenshot("status-page-logs.png").await;
    assert_eq!(cdp.eval("window.__noReload").await, "kept");

    let _ = cdp.call("Browser.close", json!({})).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), chromium.wait()).await;
    let _ = chromium.kill().await;
    env.stop().await;
}

/// `s` percent-encoded for a query string.
fn query_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every PromQL query of the Grafana dashboard, with Grafana's variables replaced.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/serverless.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$app", ".*");
            out.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    out
}

/// The dashboard's queries in a real Prometheus (Debian's `prometheus`) scraping a gateway's
/// `/metrics` with the admin token: each one parses and runs, and the main panels have data.
/// (`serverless-proxy/tests/status.rs` checks the metric names against `/metrics` without
/// Prometheus.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_queries_run_in_prometheus() {
    if !can_run_with(
        "grafana_queries_run_in_prometheus",
        &[("prometheus", "prometheus")],
    ) {
        return;
    }
    use serverless_core::fake::{Behavior, FakeBackend};
    let backend = FakeBackend::new();
    backend.set_behavior(
        "web",
        Behavior {
            start_delay: Duration::from_millis(100),
            ..Default::default()
        },
    );
    let config = serverless_core::Config::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nadmin_token = \"{TOKEN}\"\n\
         [[apps]]\nname = \"web\"\nimage = \"example/web:1\"\nhosts = [\"web.localhost\"]\n"
    ))
    .unwrap();
    let gateway = serverless_proxy::Gateway::start(config, std::sync::Arc::new(backend))
        .await
        .unwrap();
    let client = serverless_testkit::client();
    let get = |addr, host: &'static str, path: String| {
        let client = client.clone();
        async move {
            serverless_testkit::send(&client, addr, host, Method::GET, &path, b"")
                .await
                .unwrap()
        }
    };
    for _ in 0..5 {
        let answer = get(gateway.listen_addr(), "web.localhost", "/".to_owned()).await;
        assert_eq!(answer.status, StatusCode::OK);
    }

    let dir = tempfile::tempdir().unwrap();
    let port = serverless_testkit::free_port().unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: serverless\n    \
             authorization:\n      credentials: {TOKEN}\n    static_configs:\n      \
             - targets: ['{}']\n",
            gateway.admin_addr()
        ),
    )
    .unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let prom: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let query = |expr: &str| {
        get(
            prom,
            "127.0.0.1",
            format!("/api/v1/query?query={}", query_encode(expr)),
        )
    };

    // Scraped a few times (rates need two samples), with more requests in between.
    let t0 = tokio::time::Instant::now();
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            serverless_testkit::send(
                &client,
                prom,
                "127.0.0.1",
                Method::GET,
                &format!(
                    "/api/v1/query?query={}",
                    query_encode("count_over_time(serverless_requests_total[1m])")
                ),
                b"",
            ),
        )
        .await;
        if let Ok(Ok(answer)) = answer {
            let v: Value = serde_json::from_str(&answer.body).unwrap_or_default();
            if v["data"]["result"][0]["value"][1]
                .as_str()
                .is_some_and(|n| n.parse::<u32>().unwrap_or(0) >= 3)
            {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "prometheus did not scrape the gateway 3 times within 30 s"
        );
        get(gateway.listen_addr(), "web.localhost", "/".to_owned()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    let mut with_data = Vec::new();
    for (title, expr) in &queries {
        let answer = query(expr).await;
        let v: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(
            v["status"], "success",
            "panel {title:?}: prometheus refused {expr}: {}",
            answer.body
        );
        if v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            with_data.push(title.as_str());
        }
    }
    for title in [
        "Requests per second",
        "Responses by status code",
        "Latency to response headers (p50, p99)",
        "Cold-start phases (p50)",
        "Instances by state",
        "Queue depth",
    ] {
        assert!(
            with_data.contains(&title),
            "panel {title:?} has no data; with data: {with_data:?}"
        );
    }
    eprintln!(
        "{} dashboard queries ran in prometheus; with data: {with_data:?}",
        queries.len()
    );
    let _ = prometheus.kill().await;
    gateway.shutdown().await;
}
