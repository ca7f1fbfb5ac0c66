//! The admin API, `/metrics` and the status page.
//!
//! - `GET /` → the status page (HTML; `/status.css` and `/status.js` are its style and script)
//! - `GET /v1/status` → every app with its spec, instances (with their cold-start phases) and
//!   request stats over the last minutes, and the last instance transitions
//! - `GET /v1/events` → server-sent events: `state` (the `/v1/status` document, at once, every
//!   second and after each transition) and `instance` (one transition)
//! - `GET /v1/apps` → `[{"name", "hosts", "image", "instances": [...]}]`
//! - `GET /v1/apps/{name}` → `{"name", …, "instances": [{"id", "state", "in_flight", "age_ms"}], "queued"}`
//! - `GET /v1/apps/{name}/logs` → each instance's recent stdout/stderr, as text
//!   (`?instance=<id>`: that instance's only)
//! - `PUT /v1/apps/{name}` with a JSON app spec (the keys of a TOML `[[apps]]` entry) → deploy
//! - `DELETE /v1/apps/{name}` → drain, stop and remove
//! - `GET /metrics` → Prometheus text format
//!
//! With a token configured, every request needs `Authorization: Bearer <token>`, but for the
//! page and its two assets: they hold no data (the page's script asks for the token and sends
//! it on its own requests), so a browser can load them; nothing puts the token in a URL.

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;
use serverless_core::AppSpec;

use crate::body::{full_response_body, ResBody};
use crate::engine::{App, DeployError, Engine};
use crate::error::failure;
use crate::status::{events_response, PAGE_CSS, PAGE_HTML, PAGE_JS};

/// The page and its assets: served from the binary, scripts and styles from here only.
fn asset(content_type: &'static str, text: &'static str) -> Response<ResBody> {
    let mut res = text_response(content_type, text.to_owned());
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
            .parse()
            .expect("static"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        "nosniff".parse().expect("static"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        "no-referrer".parse().expect("static"),
    );
    headers.insert(header::CACHE_CONTROL, "no-cache".parse().expect("static"));
    res
}

/// The page and its assets, which need no token (`None` for any other request).
fn public(req: &Request<Incoming>) -> Option<Response<ResBody>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    match req.uri().path() {
        "/" | "/index.html" => Some(asset("text/html; charset=utf-8", PAGE_HTML)),
        "/status.css" => Some(asset("text/css; charset=utf-8", PAGE_CSS)),
        "/status.js" => Some(asset("text/javascript; charset=utf-8", PAGE_JS)),
        _ => None,
    }
}

/// The value of query parameter `key` (no percent-decoding: instance ids need none).
fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ResBody> {
    let mut res = Response::new(full_response_body(value.to_string() + "\n"));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    res
}

fn text_response(content_type: &'static str, text: String) -> Response<ResBody> {
    let mut res = Response::new(full_response_body(text));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, content_type.parse().expect("static"));
    res
}

fn app_json(app: &App) -> serde_json::Value {
    let snap = app.pool.snapshot();
    json!({
        "name": app.spec.name,
        "image": app.spec.image.to_string(),
        "hosts": app.spec.hosts,
        "slot": app.spec.slot.to_string(),
        "scale": {
            "min": app.spec.scale.min,
            "max": app.spec.scale.max,
            "standby": app.spec.scale.standby,
        },
        "queued": snap.queued,
        "instances": snap.instances.iter().map(|i| json!({
            "id": i.id.as_str(),
            "state": i.state.as_str(),
            "in_flight": i.in_flight,
            "age_ms": i.age.as_millis() as u64,
        })).collect::<Vec<_>>(),
    })
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Answers one admin request.
pub(crate) async fn handle(
    engine: Engine,
    token: Option<String>,
    req: Request<Incoming>,
) -> Response<ResBody> {
    if let Some(page) = public(&req) {
        return page;
    }
    if let Some(token) = &token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            let mut res = failure(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token",
                None,
            );
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            return res;
        }
    }
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["metrics"]) => text_response(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            engine.encode_metrics(),
        ),
        (Method::GET, ["v1", "status"]) => {
            json_response(StatusCode::OK, &engine.status().json(&engine))
        }
        (Method::GET, ["v1", "events"]) => events_response(&engine),
        (Method::GET, ["v1", "apps"]) => {
            let apps: Vec<_> = engine.apps().iter().map(|a| app_json(a)).collect();
            json_response(StatusCode::OK, &json!(apps))
        }
        (Method::GET, ["v1", "apps", name]) => match engine.app(name) {
            Some(app) => json_response(StatusCode::OK, &app_json(&app)),
            None => failure(StatusCode::NOT_FOUND, &format!("no app named {name}"), None),
        },
        (Method::GET, ["v1", "apps", name, "logs"]) => match engine.app(name) {
            Some(app) => {
                let only = query_param(&req, "instance");
                let mut out = String::new();
                for inst in app.pool.snapshot().instances {
                    if only.is_some_and(|id| id != inst.id.as_str()) {
                        continue;
                    }
                    let logs = match engine.backend().logs(&inst.id).await {
                        Ok(logs) => logs,
                        Err(err) => format!("(logs unavailable: {err})\n"),
                    };
                    for line in logs.lines() {
                        out.push_str(&format!("[{}] {line}\n", inst.id));
                    }
                }
                text_response("text/plain; charset=utf-8", out)
            }
            None => failure(StatusCode::NOT_FOUND, &format!("no app named {name}"), None),
        },
        (Method::PUT, ["v1", "apps", name]) => {
            let name = (*name).to_owned();
            let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
                Ok(body) => body.to_bytes(),
                Err(err) => {
                    return failure(
                        StatusCode::BAD_REQUEST,
                        &format!("cannot read body: {err}"),
                        None,
                    )
                }
            };
            let spec = match std::str::from_utf8(&body)
                .map_err(|e| e.to_string())
                .and_then(|text| AppSpec::from_json(text).map_err(|e| e.to_string()))
            {
                Ok(spec) => spec,
                Err(err) => return failure(StatusCode::UNPROCESSABLE_ENTITY, &err, None),
            };
            if spec.name != name {
                return failure(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!(
                        "name {:?} in the body does not match {name:?} in the path",
                        spec.name
                    ),
                    None,
                );
            }
            match engine.deploy(spec).await {
                Ok(()) => match engine.app(&name) {
                    Some(app) => json_response(StatusCode::OK, &app_json(&app)),
                    None => failure(StatusCode::CONFLICT, "app was removed meanwhile", None),
                },
                Err(err @ DeployError::HostTaken { .. }) => {
                    failure(StatusCode::CONFLICT, &err.to_string(), None)
                }
                Err(err) => failure(StatusCode::UNPROCESSABLE_ENTITY, &err.to_string(), None),
            }
        }
        (Method::DELETE, ["v1", "apps", name]) => {
            if engine.remove(name).await {
                json_response(StatusCode::OK, &json!({"removed": name}))
            } else {
                failure(StatusCode::NOT_FOUND, &format!("no app named {name}"), None)
            }
        }
        (_, ["metrics"]) | (_, ["v1", "apps" | "status" | "events", ..]) | (_, []) => failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed here",
            None,
        ),
        _ => failure(
            StatusCode::NOT_FOUND,
            &format!("no admin endpoint {path}"),
            None,
        ),
    }
}
