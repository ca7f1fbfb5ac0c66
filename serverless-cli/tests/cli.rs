//! The `serverless` binary's offline commands: `validate`, and `serve` refusing a bad config.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn serverless(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_serverless"))
        .args(args)
        .output()
        .expect("run serverless");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_prints_the_normalized_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("serverless.toml");
    std::fs::write(
        &file,
        "[[apps]]\nname = \"hello\"\nimage = \"oci-archive:hello.tar\"\n[apps.limits]\nidle_timeout = 90000\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = serverless(&["validate", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let app = &json["apps"][0];
    assert_eq!(app["limits"]["idle_timeout"], "1m 30s");
    assert_eq!(app["limits"]["max_concurrent_requests"], 10);
    assert_eq!(app["slot"], "c.125-m512");
    // Relative archive paths are resolved against the config's directory.
    assert_eq!(
        app["image"],
        format!("oci-archive:{}", dir.path().join("hello.tar").display())
    );
}

#[test]
fn validate_accepts_now_json() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("now.json");
    std::fs::write(
        &file,
        r#"{"name":"api","image":"registry.local/api:1","slot":"c1-m1024","limits":{"maxConcurrentReqs":5,"duration":60000,"timeout":5000}}"#,
    )
    .unwrap();
    let (ok, stdout, stderr) = serverless(&["validate", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["apps"][0]["limits"]["max_concurrent_requests"], 5);
    assert_eq!(json["apps"][0]["limits"]["max_duration"], "1m");
}

#[test]
fn invalid_config_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[apps]]\nname = \"hello\"\nimage = \"x/y:1\"\nslot = \"c.125-m512\"\n[apps.limits]\nmax_concurrent_requests = 1000\n",
    )
    .unwrap();
    for cmd in [
        &["validate", file.to_str().unwrap()][..],
        &["serve", "--config", file.to_str().unwrap()],
    ] {
        let (ok, stdout, stderr) = serverless(cmd);
        assert!(!ok, "{cmd:?} accepted a bad config");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.contains(
                "apps[0].limits.max_concurrent_requests = 1000: expected an integer in 1..=256"
            ),
            "{cmd:?}: {stderr}"
        );
    }
    let (ok, _, stderr) = serverless(&["validate", "/nonexistent.toml"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent.toml"), "{stderr}");
}

/// `ls`, `deploy`, `logs`, `rm` talk to the admin API of a running gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_drive_the_admin_api() {
    use std::sync::Arc;

    let config = serverless_core::Config::from_toml(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nadmin_token = \"0123456789abcdef-cli\"\n",
    )
    .unwrap();
    let backend = serverless_core::fake::FakeBackend::new();
    let gateway = serverless_proxy::Gateway::start(config, Arc::new(backend.clone()))
        .await
        .unwrap();
    let admin = format!("http://{}", gateway.admin_addr());
    let run = |args: Vec<String>| {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_serverless"))
                .args(&args)
                .env("SERVERLESS_ADMIN", admin)
                .env("SERVERLESS_ADMIN_TOKEN", "0123456789abcdef-cli")
                .output()
                .expect("run serverless");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("api.json");
    std::fs::write(
        &spec,
        r#"{"name":"api","image":"example/api:1","scale":{"min":1}}"#,
    )
    .unwrap();

    let (ok, stdout, stderr) = run(vec!["deploy".into(), spec.display().to_string()])
        .await
        .unwrap();
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "deployed api\n");
    // scale.min = 1 starts an instance without traffic.
    while backend.running("api").is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (ok, stdout, stderr) = run(vec!["ls".into()]).await.unwrap();
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("api") && stdout.contains("ready"),
        "{stdout}"
    );
    let (ok, stdout, _) = run(vec!["logs".into(), "api".into()]).await.unwrap();
    assert!(ok);
    assert!(stdout.contains("fake instance api-1-"), "{stdout}");
    let (ok, stdout, _) = run(vec!["rm".into(), "api".into()]).await.unwrap();
    assert!(ok);
    assert_eq!(stdout, "removed api\n");
    assert!(backend.running("api").is_empty());
    let (ok, _, stderr) = run(vec!["rm".into(), "api".into()]).await.unwrap();
    assert!(!ok);
    assert!(
        stderr.contains("404") && stderr.contains("no app named api"),
        "{stderr}"
    );
    // A wrong token is refused with the reason.
    let out = Command::new(env!("CARGO_BIN_EXE_serverless"))
        .args([
            "ls",
            "--admin",
            &admin,
            "--token",
            "wrong-wrong-wrong-wrong",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    gateway.shutdown().await;
}

#[test]
fn registry_password_must_be_readable_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registries.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {:?}\n[[registries]]\nhost = \"ghcr.io\"\nusername = \"robot\"\n\
             password_env = \"SERVERLESS_TEST_UNSET_PASSWORD\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    // `validate` shows where the password comes from, never a password.
    let (ok, stdout, stderr) = serverless(&["validate", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json["registries"][0],
        serde_json::json!({"host": "ghcr.io", "username": "robot",
            "password": {"env": "SERVERLESS_TEST_UNSET_PASSWORD"}})
    );
    // `serve` refuses to start without it, naming the field, the registry and the variable.
    let out = Command::new(env!("CARGO_BIN_EXE_serverless"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .env_remove("SERVERLESS_TEST_UNSET_PASSWORD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "registries[0].password_env (registry ghcr.io): environment variable \
             SERVERLESS_TEST_UNSET_PASSWORD is not set"
        ),
        "{stderr}"
    );
    // An auth file that is not there stops the start too, naming it.
    let missing = dir.path().join("no-such-auth.json");
    std::fs::write(
        &file,
        format!(
            "data_dir = {:?}\nregistry_auth_file = {:?}\n",
            dir.path().join("data"),
            missing
        ),
    )
    .unwrap();
    let (ok, _, stderr) = serverless(&["serve", "--config", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("reading {}", missing.display())),
        "{stderr}"
    );
}
