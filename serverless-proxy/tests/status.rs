//! The status page's routes (`/`, `/v1/status`, `/v1/events`) and the Grafana dashboard, over
//! the in-process fake backend with real sockets. The page in a real browser is
//! `serverless-cli/tests/status_page.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use serverless_core::fake::{Behavior, FakeBackend};
use serverless_core::Config;
use serverless_proxy::Gateway;

const TOKEN: &str = "status-page-test-token";

async fn start() -> (Gateway, FakeBackend) {
    let config = Config::from_toml(&format!(
        r#"
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
admin_token = "{TOKEN}"
[[apps]]
name = "hello"
image = "example/hello:1"
hosts = ["hello.localhost"]
"#
    ))
    .unwrap();
    let backend = FakeBackend::new();
    backend.set_behavior(
        "hello",
        Behavior {
            start_delay: Duration::from_millis(150),
            ..Default::default()
        },
    );
    let gateway = Gateway::start(config, Arc::new(backend.clone()))
        .await
        .unwrap();
    (gateway, backend)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn admin_raw(gw: &Gateway, path: &str, token: Option<&str>) -> http::Response<Incoming> {
    let mut req = Request::get(format!("http://{}{path}", gw.admin_addr()));
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    client()
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap()
}

async fn admin(gw: &Gateway, path: &str, token: Option<&str>) -> (http::response::Parts, String) {
    let (parts, body) = admin_raw(gw, path, token).await.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts, String::from_utf8(body.to_vec()).unwrap())
}

async fn hello(gw: &Gateway) -> StatusCode {
    let req = Request::get(format!("http://{}/", gw.listen_addr()))
        .header("host", "hello.localhost")
        .body(Empty::new())
        .unwrap();
    let res = client().request(req).await.unwrap();
    let status = res.status();
    res.into_body().collect().await.unwrap();
    status
}

/// Reads server-sent events off a response body.
struct Events {
    body: Incoming,
    buf: String,
}

impl Events {
    /// The next `(event, data)`, or `None` when the stream ended.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
                let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                return Some((event.to_owned(), serde_json::from_str(data).unwrap()));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads until `pred` holds for a frame; panics after 10 s.
    async fn until(&mut self, mut pred: impl FnMut(&str, &Value) -> bool) -> Value {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let (event, data) = self.next().await.expect("events stream ended");
                if pred(&event, &data) {
                    return data;
                }
            }
        })
        .await
        .expect("no such frame within 10 s")
    }
}

#[tokio::test]
async fn the_page_loads_without_the_token_and_the_data_needs_it() {
    let (gw, _backend) = start().await;
    let (parts, body) = admin(&gw, "/", None).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["content-type"], "text/html; charset=utf-8");
    let csp = parts.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(body.contains("<script src=\"/status.js\""), "{body}");
    for (path, ty) in [
        ("/status.js", "text/javascript"),
        ("/status.css", "text/css"),
    ] {
        let (parts, body) = admin(&gw, path, None).await;
        assert_eq!(parts.status, StatusCode::OK, "{path}");
        assert!(parts.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with(ty));
        assert!(body.len() > 1000, "{path}");
    }
    for path in ["/v1/status", "/v1/events", "/v1/apps/hello/logs"] {
        let (parts, _) = admin(&gw, path, None).await;
        assert_eq!(parts.status, StatusCode::UNAUTHORIZED, "{path}");
        let (parts, _) = admin(&gw, path, Some("wrong")).await;
        assert_eq!(parts.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (parts, body) = admin(&gw, "/v1/status", Some(TOKEN)).await;
    assert_eq!(parts.status, StatusCode::OK);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["apps"][0]["name"], "hello");
    assert_eq!(status["apps"][0]["hosts"][0], "hello.localhost");
    assert_eq!(status["apps"][0]["stats"]["requests_total"], 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn events_stream_a_cold_start_and_the_request_count() {
    let (gw, backend) = start().await;
    let res = admin_raw(&gw, "/v1/events", Some(TOKEN)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut events = Events {
        body: res.into_body(),
        buf: String::new(),
    };
    // The state now, at once.
    let (event, first) = events.next().await.unwrap();
    assert_eq!(event, "state");
    assert_eq!(first["apps"][0]["instances"].as_array().unwrap().len(), 0);

    let request = tokio::spawn({
        let gw_addr = gw.listen_addr();
        async move {
            let req = Request::get(format!("http://{gw_addr}/"))
                .header("host", "hello.localhost")
                .body(Empty::<Bytes>::new())
                .unwrap();
            client().request(req).await.unwrap().status()
        }
    });
    // The transitions, as they happen: starting, then ready with the cold start's phases.
    let starting = events
        .until(|e, d| e == "instance" && d["event"] == "starting")
        .await;
    let id = starting["instance"].as_str().unwrap().to_owned();
    // The state frame sent right after the transition shows the instance starting.
    events
        .until(|e, d| e == "state" && d["apps"][0]["instances"][0]["state"] == "starting")
        .await;
    let ready = events
        .until(|e, d| e == "instance" && d["event"] == "ready")
        .await;
    assert_eq!(ready["instance"], id.as_str());
    assert!(
        ready["detail"]["total_ms"].as_f64().unwrap() >= 150.0,
        "{ready}"
    );
    assert_eq!(request.await.unwrap(), StatusCode::OK);
    // The request is counted within a tick or two; the instance carries its cold start.
    let state = events
        .until(|e, d| e == "state" && d["apps"][0]["stats"]["requests_total"] == 1)
        .await;
    let app = &state["apps"][0];
    assert_eq!(app["instances"][0]["id"], id.as_str());
    assert_eq!(app["instances"][0]["state"], "ready");
    assert!(
        app["instances"][0]["cold_start"]["total_ms"]
            .as_f64()
            .unwrap()
            >= 150.0
    );
    assert_eq!(app["stats"]["cold_starts"]["count"], 1);
    assert!(app["stats"]["p50_ms"].as_f64().unwrap() >= 128.0, "{app}");
    assert_eq!(state["events"][0]["event"], "ready");

    // One instance's logs.
    let (parts, body) = admin(
        &gw,
        &format!("/v1/apps/hello/logs?instance={id}"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, format!("[{id}] fake instance {id}\n"));
    let (_, body) = admin(&gw, "/v1/apps/hello/logs?instance=other", Some(TOKEN)).await;
    assert_eq!(body, "");

    // A crash is a transition too.
    assert!(backend.crash(&backend.running("hello")[0]));
    events
        .until(|e, d| e == "instance" && d["event"] == "crashed")
        .await;

    // Shutdown ends the open stream instead of waiting out the admin listener's drain.
    let t0 = tokio::time::Instant::now();
    gw.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let rest = tokio::time::timeout(Duration::from_secs(3), async {
        while events.next().await.is_some() {}
    })
    .await;
    assert!(rest.is_ok(), "the events stream did not end");
}

/// The metric names a PromQL expression reads: identifiers starting with `serverless_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("serverless_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    ("definition", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn grafana_dashboard_reads_only_families_the_gateway_exports() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/serverless.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("deploy/grafana/serverless.json parses");
    assert!(dashboard["title"].is_string());
    assert!(dashboard["uid"].is_string());

    let (gw, _backend) = start().await;
    assert_eq!(hello(&gw).await, StatusCode::OK);
    let (parts, metrics) = admin(&gw, "/metrics", Some(TOKEN)).await;
    assert_eq!(parts.status, StatusCode::OK);
    // Families (`# TYPE name type`) and the sample names each one has.
    let mut exported = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut words = decl.split(' ');
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                exported.insert(format!("{name}{suffix}"));
            }
        }
    }
    assert!(exported.contains("serverless_requests_total"), "{metrics}");

    let mut all = Vec::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "panel {title:?} has no description"
        );
        let mut found = Vec::new();
        exprs(&panel["targets"], &mut found);
        assert!(!found.is_empty(), "panel {title:?} has no query");
        all.extend(found);
    }
    exprs(&dashboard["templating"], &mut all);
    let mut used = BTreeSet::new();
    for expr in &all {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "query names no serverless metric: {expr}"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "query {expr:?} reads {name}, which /metrics does not export; it exports {exported:?}"
            );
            used.insert(name);
        }
    }
    // And every family is on the dashboard.
    for line in metrics.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let family = decl.split(' ').next().unwrap();
            assert!(
                used.iter().any(|u| u.starts_with(family)),
                "family {family} is on no panel"
            );
        }
    }
    gw.shutdown().await;
}
