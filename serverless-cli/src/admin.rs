//! The admin-API client commands: `ls`, `logs`, `deploy` and `rm` against a running gateway.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serverless_core::{AppSpec, Config};
use serverless_proxy::{BoxError, ERROR_HEADER};

use crate::cli::AdminArgs;

/// `ls`: the apps and their instances, one line per instance.
pub(crate) async fn ls(admin: &AdminArgs) -> Result<(), BoxError> {
    let apps: serde_json::Value =
        serde_json::from_slice(&admin_call(admin, Method::GET, "/v1/apps", None).await?)?;
    println!(
        "{:<20} {:<28} {:<10} {:>9} {:>9}",
        "APP", "INSTANCE", "STATE", "IN_FLIGHT", "AGE"
    );
    for app in apps.as_array().into_iter().flatten() {
        let name = app["name"].as_str().unwrap_or("?");
        let instances = app["instances"].as_array().cloned().unwrap_or_default();
        if instances.is_empty() {
            println!(
                "{name:<20} {:<28} {:<10} {:>9} {:>9}",
                "-", "scaled-to-zero", "-", "-"
            );
        }
        for i in instances {
            println!(
                "{name:<20} {:<28} {:<10} {:>9} {:>8}s",
                i["id"].as_str().unwrap_or("?"),
                i["state"].as_str().unwrap_or("?"),
                i["in_flight"],
                i["age_ms"].as_u64().unwrap_or(0) / 1000
            );
        }
    }
    Ok(())
}

/// `logs`: an app's instance logs; with `follow`, polls every second for new lines.
pub(crate) async fn logs(admin: &AdminArgs, app: &str, follow: bool) -> Result<(), BoxError> {
    let path = format!("/v1/apps/{app}/logs");
    let mut seen = String::new();
    loop {
        let text = String::from_utf8_lossy(&admin_call(admin, Method::GET, &path, None).await?)
            .into_owned();
        // Print what is new since the last poll (logs are a tail, so match on overlap).
        let new = match text.find(seen.as_str()) {
            Some(_) if !seen.is_empty() => {
                text.strip_prefix(seen.as_str()).unwrap_or(&text).to_owned()
            }
            _ => text.clone(),
        };
        print!("{new}");
        if !follow {
            return Ok(());
        }
        seen = text;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The apps of a file `deploy` takes: a TOML config, one JSON app spec, or a `now.json`.
pub(crate) fn load_apps(file: &Path) -> Result<Vec<AppSpec>, BoxError> {
    if file.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        return match AppSpec::from_json(&text) {
            Ok(app) => Ok(vec![app]),
            // Not an app spec: the seed's now.json (`limits.maxConcurrentReqs`, …), else the
            // app spec's error.
            Err(err) => Config::from_path(file)
                .map(|c| c.apps)
                .map_err(|_| err.into()),
        };
    }
    Ok(Config::from_path(file)?.apps)
}

/// `deploy`: puts each app (built apps already carry their archive as image).
pub(crate) async fn deploy(admin: &AdminArgs, apps: &[AppSpec]) -> Result<(), BoxError> {
    for app in apps {
        let body = serde_json::to_vec(app)?;
        admin_call(
            admin,
            Method::PUT,
            &format!("/v1/apps/{}", app.name),
            Some(body),
        )
        .await?;
        println!("deployed {}", app.name);
    }
    Ok(())
}

/// `rm`: removes an app (the gateway drains and stops its instances).
pub(crate) async fn rm(admin: &AdminArgs, app: &str) -> Result<(), BoxError> {
    admin_call(admin, Method::DELETE, &format!("/v1/apps/{app}"), None).await?;
    println!("removed {app}");
    Ok(())
}

/// The admin API URL of `path`: `--admin` is a base URL (`http://127.0.0.1:8081`) or, like the
/// config's `admin` key, a bare `HOST:PORT`.
fn admin_uri(base: &str, path: &str) -> Result<http::Uri, String> {
    let base = base.trim();
    let full = if base.contains("://") {
        format!("{}{path}", base.trim_end_matches('/'))
    } else {
        format!("http://{}{path}", base.trim_end_matches('/'))
    };
    match full.parse::<http::Uri>() {
        Ok(uri) if uri.host().is_some() && uri.scheme_str() == Some("http") => Ok(uri),
        _ => Err(format!(
            "--admin {base:?} is not an admin API address: expected HOST:PORT or http://HOST:PORT"
        )),
    }
}

/// One admin-API request; a status other than 200 is an error naming the gateway's reason.
async fn admin_call(
    admin: &AdminArgs,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, BoxError> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri = admin_uri(&admin.admin, path)?;
    let mut req = Request::builder().method(method).uri(uri.clone());
    if let Some(token) = &admin.token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let res = client
        .request(req)
        .await
        .map_err(|e| format!("cannot reach the admin API at {uri}: {e}"))?;
    let status = res.status();
    let reason = res
        .headers()
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = res.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        return Err(format!(
            "{status}: {}",
            reason.unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned())
        )
        .into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::admin_uri;

    #[test]
    fn admin_address_is_a_url_or_host_port() {
        for base in [
            "http://127.0.0.1:8081",
            "http://127.0.0.1:8081/",
            "127.0.0.1:8081",
            " 127.0.0.1:8081 ",
        ] {
            assert_eq!(
                admin_uri(base, "/v1/apps").expect(base).to_string(),
                "http://127.0.0.1:8081/v1/apps"
            );
        }
        assert_eq!(
            admin_uri("[::1]:9000", "/v1/apps").expect("v6").to_string(),
            "http://[::1]:9000/v1/apps"
        );
        for bad in [
            "",
            "https://example.com",
            "ftp://x:1",
            "not a host",
            "http://",
        ] {
            let err = admin_uri(bad, "/v1/apps").expect_err(bad);
            assert!(err.contains("--admin"), "{err}");
        }
    }
}
