//! Deploy from source (issue 17), end to end with the real binary: `image = "build:DIR"` built
//! by `serverless serve` at startup, and `serverless deploy DIR` against a running gateway —
//! the real buildah building `examples/dockerfile-app` (two stages, `RUN` in both forms,
//! `COPY --from`, `ENV`, `ARG`, `WORKDIR`, `USER`, `LABEL`, `EXPOSE`, `ENTRYPOINT`+`CMD`,
//! `.dockerignore`) on a base image the test writes (the testkit's busybox as an OCI archive),
//! imported into the real containerd and served from zero. And a Dockerfile for an app nobody
//! here wrote: a Python standard-library server `FROM` a Debian python image (the testkit's
//! debootstrap image, built once and cached under `target/bench-images`) served by a real
//! `docker-registry` on loopback.
//!
//! Needs root, `containerd`, `runc`, `ctr`, `buildah` and Debian's `busybox-static`; the Python
//! test also `docker-registry` and `debootstrap` (and the Debian mirror, the first time).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use http::{Method, StatusCode};
use serverless_testkit::*;

const SERVERLESS: &str = env!("CARGO_BIN_EXE_serverless");

fn can_build(test: &str) -> bool {
    can_run_with(test, &[("buildah", "buildah")])
}

/// `examples/dockerfile-app`.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dockerfile-app")
}

/// The admin API's address, from the gateway's `… admin on http://ADDR` line.
fn admin_addr(gateway: &GatewayProcess) -> String {
    let log = gateway.log();
    log.split("admin on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admin address in {log}"))
        .to_owned()
}

async fn get(addr: std::net::SocketAddr, host: &str, path: &str) -> Answer {
    send(&client(), addr, host, Method::GET, path, b"")
        .await
        .unwrap_or_else(|e| panic!("GET {path} for {host}: {e}"))
}

/// `serverless ARGS…` to completion.
async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(SERVERLESS)
            .args(&args)
            .output()
            .expect("run serverless")
    })
    .await
    .unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// `serve` builds the `build:` app before it starts, the image is imported into containerd and
/// the app answers from zero with what its Dockerfile made of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_builds_a_dockerfile_app_and_serves_it_from_zero() {
    if !can_build("serve_builds_a_dockerfile_app_and_serves_it_from_zero") {
        return;
    }
    let _shared = shared().await;
    let dir = tempfile::Builder::new().prefix("sl-bd-").tempdir().unwrap();
    let base = busybox_archive(dir.path());
    let config = dir.path().join("serverless.toml");
    GatewayToml::new()
        .data_dir(dir.path().join("data"))
        .app(
            AppToml::new("site", format_args!("build:{}", example().display())).with(&format!(
                "build = {{ args = {{ BASE = \"oci-archive:{}\", GREETING = \"built by serve\" }} }}",
                base.display()
            )),
        )
        .write(&config);
    let gateway = GatewayProcess::start(SERVERLESS.as_ref(), &config).await;
    let log = gateway.log();
    assert!(log.contains("[2/2] STEP 9/9: CMD"), "steps streamed: {log}");
    assert!(log.contains("built site in"), "{log}");

    let index = get(gateway.addr, "site.localhost", "/").await;
    assert_eq!(index.status, StatusCode::OK, "{index:?}\n{}", gateway.log());
    assert!(
        index.body.contains("built from a Dockerfile"),
        "{}",
        index.body
    );
    let greeting = get(gateway.addr, "site.localhost", "/greeting.txt").await;
    assert_eq!(greeting.body, "built by serve\n");
    // .dockerignore kept secret.env (and README.md) out of the build context.
    let files = get(gateway.addr, "site.localhost", "/files.txt").await;
    assert!(files.body.contains("Dockerfile"), "{}", files.body);
    assert!(!files.body.contains("secret.env"), "{}", files.body);
    // ENV and USER of the final stage, seen by the running app (WORKDIR: httpd serves `.`).
    let who = get(gateway.addr, "site.localhost", "/cgi-bin/whoami").await;
    assert_eq!(who.body, "mode=production uid=1000\n", "{who:?}");
    gateway.terminate().await;
}

/// `serverless deploy DIR` builds the folder, deploys it to a running gateway and prints the
/// URL; a second deploy of the unchanged folder is answered by the cache; a bad Dockerfile gets
/// a one-line error naming the step, and the app keeps serving its last good image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_dir_builds_deploys_and_rebuilds_from_cache() {
    if !can_build("deploy_dir_builds_deploys_and_rebuilds_from_cache") {
        return;
    }
    let _shared = shared().await;
    let dir = tempfile::Builder::new().prefix("sl-bd-").tempdir().unwrap();
    let base = busybox_archive(dir.path());
    let data = dir.path().join("data");
    let config = dir.path().join("serverless.toml");
    GatewayToml::new().data_dir(&data).write(&config);
    let gateway = GatewayProcess::start(SERVERLESS.as_ref(), &config).await;
    let admin = admin_addr(&gateway);
    // The app is a copy of the example (the test changes a file in it).
    let app = dir.path().join("myapp");
    copy_dir(&example(), &app);
    let deploy = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "deploy".into(),
            app.display().to_string(),
            "--admin".into(),
            admin.clone(),
            "--data-dir".into(),
            data.display().to_string(),
            "--gateway".into(),
            gateway.addr.to_string(),
            "--build-arg".into(),
            format!("BASE=oci-archive:{}", base.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run(args)
    };

    let first = deploy(&[]).await;
    let (stdout, stderr) = (text(&first.stdout), text(&first.stderr));
    assert!(first.status.success(), "{stderr}");
    assert_eq!(
        stdout.lines().last().unwrap(),
        format!(
            "myapp is live at http://myapp.localhost:{}/",
            gateway.addr.port()
        )
    );
    // A line per step with its time, as it ran.
    assert!(stderr.contains("s  [1/2] STEP 5/6: COPY . ."), "{stderr}");
    assert!(!stderr.contains("(cached)"), "{stderr}");
    let index = get(gateway.addr, "myapp.localhost", "/greeting.txt").await;
    assert_eq!(index.status, StatusCode::OK, "{index:?}\n{}", gateway.log());
    assert_eq!(index.body, "hello from a Dockerfile\n");

    // Unchanged: every step after the FROMs comes from the cache.
    let again = deploy(&[]).await;
    let stderr = text(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("(13 of 15 steps cached)"), "{stderr}");

    // One file changed: rebuilt from its COPY on, deployed, served.
    std::fs::write(app.join("site/index.html"), "version two\n").unwrap();
    let changed = deploy(&["--build-arg", "GREETING=second"]).await;
    let stderr = text(&changed.stderr);
    assert!(changed.status.success(), "{stderr}");
    assert!(
        stderr.contains("RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]  (cached)"),
        "{stderr}"
    );
    let mut served = String::new();
    for _ in 0..100 {
        served = get(gateway.addr, "myapp.localhost", "/").await.body;
        if served == "version two\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, "version two\n");
    let archives = std::fs::read_dir(data.join("build/images"))
        .unwrap()
        .count();
    assert_eq!(archives, 1, "earlier builds' archives are pruned");

    // A failing RUN: one line naming the step, its status and output; nothing deployed.
    std::fs::write(
        app.join("Dockerfile"),
        "ARG BASE\nFROM ${BASE}\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo no compiler here; exit 7\"]\n",
    )
    .unwrap();
    let bad = deploy(&[]).await;
    assert!(!bad.status.success());
    let stderr = text(&bad.stderr);
    let error = stderr.lines().last().unwrap();
    assert!(
        error.starts_with("error: app myapp: build failed at STEP 2/2: RUN")
            && error.contains("exit status 7; last output: no compiler here"),
        "{stderr}"
    );
    let still = get(gateway.addr, "myapp.localhost", "/").await;
    assert_eq!(still.body, "version two\n");

    // No Dockerfile.
    std::fs::remove_file(app.join("Dockerfile")).unwrap();
    let none = deploy(&[]).await;
    let stderr = text(&none.stderr);
    assert_eq!(
        stderr.lines().last().unwrap(),
        format!(
            "error: app myapp: no Dockerfile at {}/Dockerfile",
            app.canonicalize().unwrap().display()
        )
    );
    gateway.terminate().await;
}

/// Bad build options name the field and the value, before anything is built.
#[tokio::test]
async fn bad_build_options_name_field_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(vec![
        "deploy".into(),
        dir.path().display().to_string(),
        "--target".into(),
        "no way".into(),
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid build.target = \"no way\": expected a stage name"),
        "{}",
        text(&out.stderr)
    );
    let config = dir.path().join("s.toml");
    std::fs::write(
        &config,
        "[[apps]]\nname = \"a\"\nimage = \"build:.\"\nbuild = { timeout = \"0s\" }\n",
    )
    .unwrap();
    let out = run(vec!["validate".into(), config.display().to_string()]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .contains("invalid apps[0].build.timeout = \"0s\": expected a duration in 1s..=2h"),
        "{}",
        text(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `buildah ARGS…` with storage under `dir`, to completion; panics with its stderr on failure.
async fn buildah(dir: &Path, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new("buildah");
    cmd.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "overlay"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run buildah"))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "buildah {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A Dockerfile nobody here wrote the app for: a Python standard-library HTTP server `FROM` a
/// Debian image (the testkit's debootstrap python image) pulled from a real registry on
/// loopback (plain http, marked insecure in a `registries.conf` of the test's), `COPY`, `ENV`,
/// `CMD` in exec form; deployed with `serverless deploy FILE` and served from zero through the
/// real gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_dockerfile_from_a_registry_base_builds_and_serves_from_zero() {
    if !can_run_with(
        "a_python_dockerfile_from_a_registry_base_builds_and_serves_from_zero",
        &[
            ("buildah", "buildah"),
            ("docker-registry", "docker-registry"),
            ("debootstrap", "debootstrap"),
        ],
    ) {
        return;
    }
    // Built once with debootstrap (minutes), cached under target/bench-images.
    let base = tokio::task::spawn_blocking(python_archive)
        .await
        .unwrap()
        .expect("the Debian python image");
    let _shared = shared().await;
    let dir = tempfile::Builder::new().prefix("sl-bp-").tempdir().unwrap();

    // The base goes to the registry the way an image gets there: pulled into a builder's
    // storage and pushed.
    let registry = DockerRegistry::start(|_| String::new()).await;
    let reference = format!("{}/debian/python3:bookworm", registry.addr);
    let push_store = dir.path().join("push");
    let id = buildah(
        &push_store,
        &[
            "pull",
            "--quiet",
            &format!("oci-archive:{}", base.display()),
        ],
    )
    .await;
    buildah(
        &push_store,
        &[
            "push",
            "--quiet",
            "--tls-verify=false",
            id.trim(),
            &format!("docker://{reference}"),
        ],
    )
    .await;
    let registries = dir.path().join("registries.conf");
    std::fs::write(
        &registries,
        format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            registry.addr
        ),
    )
    .unwrap();

    let app = dir.path().join("pyapp");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("app.py"),
        r#"import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s says hi from %s\n" % (os.environ["GREETER"], self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
"#,
    )
    .unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        format!(
            "FROM {reference}\nCOPY app.py /srv/app.py\nENV GREETER=python3 PYTHONUNBUFFERED=1\nCMD [\"python3\", \"/srv/app.py\"]\n"
        ),
    )
    .unwrap();
    let apps = dir.path().join("apps.toml");
    std::fs::write(
        &apps,
        AppToml::new("pyapp", format_args!("build:{}", app.display())).to_string(),
    )
    .unwrap();

    let data = dir.path().join("data");
    let config = dir.path().join("serverless.toml");
    GatewayToml::new().data_dir(&data).write(&config);
    let gateway = GatewayProcess::start(SERVERLESS.as_ref(), &config).await;
    let admin = admin_addr(&gateway);
    let mut deploy = std::process::Command::new(SERVERLESS);
    deploy
        .arg("deploy")
        .arg(&apps)
        .args(["--admin", &admin, "--data-dir"])
        .arg(&data)
        .args(["--gateway", &gateway.addr.to_string()])
        .env("CONTAINERS_REGISTRIES_CONF", &registries);
    let out = tokio::task::spawn_blocking(move || deploy.output().expect("run serverless"))
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", gateway.log());
    assert!(stderr.contains("STEP 4/4: CMD"), "steps streamed: {stderr}");

    // From zero: the first request starts the Python app the Dockerfile made.
    let answer = get(gateway.addr, "pyapp.localhost", "/hello").await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{answer:?}\n{}",
        gateway.log()
    );
    assert_eq!(answer.body, "python3 says hi from /hello\n");
    gateway.terminate().await;
    drop(registry);
}
