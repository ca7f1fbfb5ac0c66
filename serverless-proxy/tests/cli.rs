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
