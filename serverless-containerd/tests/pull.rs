//! Registry pulls against a real registry: Debian's `docker-registry` (the Docker distribution
//! registry v2) on loopback with its own config and storage, holding images built by our
//! `ImageBuilder` and pushed with `oci-client`.
//!
//! Needs `docker-registry` (`apt-get install docker-registry`): without it these tests fail when
//! `CI` is set and are skipped loudly otherwise.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use serverless_containerd::{ImageBuilder, PullProgress};
use serverless_core::{AppSpec, ContainerBackend, ErrorKind, ImageRef};
use serverless_testkit::{
    busybox_image, can_run, can_run_with, free_port, http_get, loopback_app, BackendHarness,
    DockerRegistry, BUSYBOX,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The test's `docker-registry`, and the login it pushes with.
struct Registry {
    server: DockerRegistry,
    /// User and password the test pushes with (a registry with `htpasswd` auth).
    login: Option<(String, String)>,
}

impl Registry {
    /// None (after a loud message) when the registry is missing outside CI.
    async fn start(test: &str) -> Option<Self> {
        Self::start_with(test, |_| String::new()).await
    }

    /// With more config (given the registry's address) appended.
    async fn start_with(test: &str, extra: impl FnOnce(&str) -> String) -> Option<Self> {
        if !can_run_with(test, &[("docker-registry", "docker-registry")]) {
            return None;
        }
        Some(Registry {
            server: DockerRegistry::start(extra).await,
            login: None,
        })
    }

    fn client(&self) -> oci_client::Client {
        // The library installs it on its first pull; the test pushes before that.
        let _ = rustls::crypto::ring::default_provider().install_default();
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.server.addr.clone()]),
            ..ClientConfig::default()
        })
    }
}

/// The blobs of an OCI archive written by `ImageBuilder`: digest → bytes, and the manifest digest.
fn archive_blobs(
    image: &ImageBuilder,
    dir: &Path,
    name: &str,
) -> (HashMap<String, Vec<u8>>, String) {
    let path = dir.join(format!("{name}.tar"));
    let manifest = image.write_oci_archive(&path).expect("write archive");
    let mut blobs = HashMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&path).expect("open archive"));
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let p = entry.path().expect("path").to_string_lossy().into_owned();
        if let Some(hex) = p.strip_prefix("blobs/sha256/") {
            if hex.is_empty() {
                continue;
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("read blob");
            blobs.insert(format!("sha256:{hex}"), bytes);
        }
    }
    (blobs, manifest)
}

/// Pushes an image's blobs and its manifest (by digest, and under `tag` if given); returns the
/// manifest digest and size.
async fn push_image(
    registry: &Registry,
    repo: &str,
    tag: Option<&str>,
    image: &ImageBuilder,
    dir: &Path,
) -> (String, usize) {
    let client = registry.client();
    let (blobs, manifest_digest) =
        archive_blobs(image, dir, &format!("{repo}-{tag:?}").replace('/', "_"));
    let reference: Reference = format!("{}/{repo}:x", registry.server.addr)
        .parse()
        .expect("ref");
    if let Some((user, password)) = &registry.login {
        client
            .auth(
                &reference,
                &RegistryAuth::Basic(user.clone(), password.clone()),
                RegistryOperation::Push,
            )
            .await
            .expect("log in to push");
    }
    let manifest = blobs.get(&manifest_digest).expect("manifest blob").clone();
    for (digest, bytes) in &blobs {
        if *digest != manifest_digest {
            client
                .push_blob(&reference, bytes.clone(), digest)
                .await
                .expect("push blob");
        }
    }
    let by_digest = reference.clone_with_digest(manifest_digest.clone());
    client
        .push_manifest_raw(
            &by_digest,
            manifest.clone(),
            OCI_MANIFEST.parse().expect("header"),
        )
        .await
        .expect("push manifest by digest");
    if let Some(tag) = tag {
        let tagged: Reference = format!("{}/{repo}:{tag}", registry.server.addr)
            .parse()
            .expect("ref");
        client
            .push_manifest_raw(
                &tagged,
                manifest.clone(),
                OCI_MANIFEST.parse().expect("header"),
            )
            .await
            .expect("push manifest by tag");
    }
    (manifest_digest, manifest.len())
}

/// Pushes an OCI index of the given (digest, size, arch) manifests under `tag`.
async fn push_index(registry: &Registry, repo: &str, tag: &str, entries: &[(String, usize, &str)]) {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(digest, size, arch)| {
            serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "platform": {"os": "linux", "architecture": arch},
            })
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .expect("index json");
    let tagged: Reference = format!("{}/{repo}:{tag}", registry.server.addr)
        .parse()
        .expect("ref");
    registry
        .client()
        .push_manifest_raw(&tagged, index, OCI_INDEX.parse().expect("header"))
        .await
        .expect("push index");
}

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// This machine's architecture in OCI terms, and another one.
fn arches() -> (&'static str, &'static str) {
    if std::env::consts::ARCH == "aarch64" {
        ("arm64", "amd64")
    } else {
        ("amd64", "arm64")
    }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// Pushes the image as Docker v2 schema 2 (gzipped layer, Docker media types) behind a Docker
/// manifest list with one linux/amd64 entry, under `tag`.
async fn push_docker_image(registry: &Registry, repo: &str, tag: &str, dir: &Path) {
    let client = registry.client();
    let (blobs, manifest_digest) = archive_blobs(&busybox_image(), dir, "docker");
    let oci: serde_json::Value =
        serde_json::from_slice(&blobs[&manifest_digest]).expect("manifest json");
    let config_digest = oci["config"]["digest"].as_str().expect("config").to_owned();
    let layer_digest = oci["layers"][0]["digest"]
        .as_str()
        .expect("layer")
        .to_owned();
    let config = blobs[&config_digest].clone();
    let mut gzip = Command::new(BUSYBOX)
        .args(["gzip", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("busybox gzip");
    let mut stdin = gzip.stdin.take().expect("stdin");
    let layer = blobs[&layer_digest].clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        stdin.write_all(&layer).expect("gzip input");
    });
    let layer_gz = gzip.wait_with_output().expect("gzip output").stdout;
    writer.join().expect("gzip writer");
    let reference: Reference = format!("{}/{repo}:x", registry.server.addr)
        .parse()
        .expect("ref");
    client
        .push_blob(&reference, config.clone(), &config_digest)
        .await
        .expect("push config");
    client
        .push_blob(&reference, layer_gz.clone(), &sha256(&layer_gz))
        .await
        .expect("push gzipped layer");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config.len(),
            "digest": config_digest,
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": layer_gz.len(),
            "digest": sha256(&layer_gz),
        }],
    }))
    .expect("manifest json");
    let digest = sha256(&manifest);
    client
        .push_manifest_raw(
            &reference.clone_with_digest(digest.clone()),
            manifest.clone(),
            DOCKER_MANIFEST.parse().expect("header"),
        )
        .await
        .expect("push docker manifest");
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{
            "mediaType": DOCKER_MANIFEST,
            "size": manifest.len(),
            "digest": digest,
            "platform": {"os": "linux", "architecture": arches().0},
        }],
    }))
    .expect("list json");
    let tagged: Reference = format!("{}/{repo}:{tag}", registry.server.addr)
        .parse()
        .expect("ref");
    client
        .push_manifest_raw(&tagged, list, DOCKER_LIST.parse().expect("header"))
        .await
        .expect("push manifest list");
}

fn app(name: &str, reference: &str) -> AppSpec {
    loopback_app(name, ImageRef::Registry(reference.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_and_digest_then_serve() {
    if !can_run("pull_by_tag_and_digest_then_serve") {
        return;
    }
    let Some(registry) = Registry::start("pull_by_tag_and_digest_then_serve").await else {
        return;
    };
    let events: Arc<Mutex<Vec<PullProgress>>> = Arc::default();
    let seen = events.clone();
    let h = BackendHarness::start_with(|b| {
        b.pull_progress(Arc::new(move |p| seen.lock().expect("lock").push(p)))
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (digest, size) = push_image(
        &registry,
        "test/httpd",
        Some("1"),
        &busybox_image(),
        dir.path(),
    )
    .await;

    // By tag: pull, start, serve.
    let tagged = app("pulled", &format!("{}/test/httpd:1", registry.server.addr));
    h.backend.prepare(&tagged).await.expect("pull by tag");
    {
        let events = events.lock().expect("lock");
        let last = events.last().expect("progress reported");
        assert_eq!(last.done, last.total, "{last:?}");
        assert!(last.total > 1_000_000, "busybox layer counted: {last:?}");
        assert_eq!(last.layers, 2);
        assert!(events.iter().any(|e| !e.skipped && e.done < e.total));
        assert_eq!(
            last.reference,
            format!("{}/test/httpd:1", registry.server.addr)
        );
    }
    let id = h.id("pulled");
    let started = h.backend.start(&tagged, &id).await.expect("start");
    assert_eq!(started.port, 8080);
    let response = http_get(h.backend.connect(&id).await.expect("connect")).await;
    assert!(response.contains("hello from busybox"), "{response}");
    h.backend
        .stop(&id, Duration::from_millis(100))
        .await
        .expect("stop");

    // By digest: all blobs present already, so everything is skipped.
    events.lock().expect("lock").clear();
    let by_digest = app(
        "digest",
        &format!("{}/test/httpd@{digest}", registry.server.addr),
    );
    h.backend.prepare(&by_digest).await.expect("pull by digest");
    assert!(events.lock().expect("lock").iter().all(|e| e.skipped));
    let id = h.id("digest");
    h.backend
        .start(&by_digest, &id)
        .await
        .expect("start by digest");
    let response = http_get(h.backend.connect(&id).await.expect("connect")).await;
    assert!(response.contains("hello from busybox"), "{response}");
    h.backend
        .stop(&id, Duration::from_millis(100))
        .await
        .expect("stop");

    // Docker v2 media types: a manifest list, a schema 2 manifest, a gzipped layer.
    push_docker_image(&registry, "test/docker", "1", dir.path()).await;
    let docker = app("docker", &format!("{}/test/docker:1", registry.server.addr));
    h.backend
        .prepare(&docker)
        .await
        .expect("pull docker v2 image");
    let id = h.id("docker");
    h.backend
        .start(&docker, &id)
        .await
        .expect("start docker v2 image");
    let response = http_get(h.backend.connect(&id).await.expect("connect")).await;
    assert!(response.contains("hello from busybox"), "{response}");
    h.backend
        .stop(&id, Duration::from_millis(100))
        .await
        .expect("stop");

    // Through an index: the amd64 entry is chosen among others.
    let (arm, arm_size) = push_image(
        &registry,
        "test/httpd",
        None,
        &busybox_image().architecture(arches().1),
        dir.path(),
    )
    .await;
    push_index(
        &registry,
        "test/httpd",
        "multi",
        &[
            (arm.clone(), arm_size, arches().1),
            (digest, size, arches().0),
        ],
    )
    .await;
    let multi = app(
        "multi",
        &format!("{}/test/httpd:multi", registry.server.addr),
    );
    h.backend.prepare(&multi).await.expect("pull through index");

    // No amd64 entry: an error naming what there is.
    push_index(
        &registry,
        "test/httpd",
        "armonly",
        &[(arm, arm_size, arches().1)],
    )
    .await;
    let reference = format!("{}/test/httpd:armonly", registry.server.addr);
    let err = h
        .backend
        .prepare(&app("armonly", &reference))
        .await
        .expect_err("no amd64 variant");
    assert_eq!(err.kind(), ErrorKind::Image);
    let msg = err.to_string();
    assert!(
        msg.contains(&reference) && msg.contains(&format!("linux/{}", arches().1)),
        "{msg}"
    );

    assert_eq!(h.leftovers(), Vec::<String>::new());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_errors_name_the_reference() {
    if !can_run("pull_errors_name_the_reference") {
        return;
    }
    let Some(registry) = Registry::start("pull_errors_name_the_reference").await else {
        return;
    };
    let h = BackendHarness::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    push_image(
        &registry,
        "test/httpd",
        Some("1"),
        &busybox_image(),
        dir.path(),
    )
    .await;

    for (reference, want) in [
        (
            format!("{}/test/httpd:nope", registry.server.addr),
            "no such image",
        ),
        (
            format!("{}/test/missing:1", registry.server.addr),
            "no such image",
        ),
        (
            format!(
                "127.0.0.1:{}/test/httpd:1",
                free_port().expect("a free port")
            ),
            "unreachable",
        ),
    ] {
        let err = h
            .backend
            .prepare(&app("bad", &reference))
            .await
            .expect_err(&reference);
        assert_eq!(err.kind(), ErrorKind::Image, "{err}");
        let msg = err.to_string();
        eprintln!("{reference}: {msg}");
        assert!(
            msg.contains(&reference) && msg.contains(want),
            "{reference}: {msg}"
        );
    }
    let err = h
        .backend
        .prepare(&app("bad", "Not A Reference"))
        .await
        .expect_err("invalid");
    assert_eq!(err.kind(), ErrorKind::Image, "{err}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_registry_that_wants_auth() {
    if !can_run("pull_from_a_registry_that_wants_auth") {
        return;
    }
    // "silly" auth: every request without an Authorization header gets a Bearer challenge; the
    // token endpoint (a path the registry does not serve) refuses anonymous tokens.
    let Some(registry) = Registry::start_with("pull_from_a_registry_that_wants_auth", |addr| {
        format!("auth:\n  silly:\n    realm: http://{addr}/token\n    service: test\n")
    })
    .await
    else {
        return;
    };
    let h = BackendHarness::start().await;
    let reference = format!("{}/test/httpd:1", registry.server.addr);
    let err = h
        .backend
        .prepare(&app("auth", &reference))
        .await
        .expect_err("auth required");
    assert_eq!(err.kind(), ErrorKind::Image, "{err}");
    let msg = err.to_string();
    eprintln!("{reference}: {msg}");
    assert!(
        msg.contains(&reference) && msg.contains("requires authentication"),
        "{msg}"
    );
    h.shutdown().await;
}

/// `robot` / `secret`, bcrypt (cost 4), for the registry's `htpasswd` auth.
const HTPASSWD: &str = "robot:$2b$04$j2SsFAm/xr4Bm6L0Fj9EHeyySLpFZtvudIoRPAr.r566AV3dhXz3G\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_credentials() {
    if !can_run("pull_with_credentials") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, HTPASSWD).expect("write htpasswd");
    let Some(mut registry) = Registry::start_with("pull_with_credentials", |_| {
        format!(
            "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
            htpasswd.display()
        )
    })
    .await
    else {
        return;
    };
    registry.login = Some(("robot".to_owned(), "secret".to_owned()));
    push_image(
        &registry,
        "private/httpd",
        Some("1"),
        &busybox_image(),
        dir.path(),
    )
    .await;
    let reference = format!("{}/private/httpd:1", registry.server.addr);

    // Without credentials: refused, saying none are configured.
    let h = BackendHarness::start().await;
    let err = h
        .backend
        .prepare(&app("anon", &reference))
        .await
        .expect_err("anonymous pull");
    assert_eq!(err.kind(), ErrorKind::Image, "{err}");
    assert!(
        err.to_string().contains("no credentials are configured"),
        "{err}"
    );
    h.shutdown().await;

    // A wrong password: refused, naming the user (and never the password).
    let addr = registry.server.addr.clone();
    let h = BackendHarness::start_with(|b| b.registry_auth(&addr, "robot", "wrong-password")).await;
    let err = h
        .backend
        .prepare(&app("wrong", &reference))
        .await
        .expect_err("wrong password");
    let msg = format!("{err} {err:?}");
    assert!(
        msg.contains("refused the credentials of user \"robot\""),
        "{msg}"
    );
    assert!(!msg.contains("wrong-password"), "{msg}");
    h.shutdown().await;

    // The right ones: pulled, started, served.
    let h = BackendHarness::start_with(|b| b.registry_auth(&addr, "robot", "secret")).await;
    let app = app("private", &reference);
    h.backend
        .prepare(&app)
        .await
        .expect("pull with credentials");
    let id = h.id("private");
    h.backend.start(&app, &id).await.expect("start");
    let response = http_get(h.backend.connect(&id).await.expect("connect")).await;
    assert!(response.contains("hello from busybox"), "{response}");
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    h.shutdown().await;

    // The same from an auth file as `docker login` writes it (key with scheme and path).
    let auth_file = dir.path().join("auth.json");
    std::fs::write(
        &auth_file,
        format!(r#"{{"auths": {{"http://{addr}/v2/": {{"auth": "cm9ib3Q6c2VjcmV0"}}}}}}"#),
    )
    .expect("write auth file");
    let h = BackendHarness::start_with(|b| b.registry_auth_file(&auth_file)).await;
    h.backend
        .prepare(&app)
        .await
        .expect("pull with the auth file's credentials");
    h.shutdown().await;
}
