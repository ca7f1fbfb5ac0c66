//! The real `buildah` building real Dockerfiles from a base image the test writes (the testkit's
//! busybox image as an OCI archive): multi-stage builds, `.dockerignore`, the layer cache,
//! build errors, the time budget, and nothing left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serverless_build::{BuildError, BuildEvent, BuildRequest, Buildah, Builder, Built};

fn can_run(test: &str) -> bool {
    serverless_testkit::can_run_with(test, &[("buildah", "buildah")])
}

/// A context folder with `files`, a base image archive, and a builder storing under `dir`.
struct Fixture {
    dir: tempfile::TempDir,
    base: PathBuf,
    builder: Buildah,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = serverless_testkit::busybox_archive(dir.path());
        let builder = Buildah::new(dir.path().join("build"));
        Self { dir, base, builder }
    }

    fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.dir.path().join(name);
        for (path, text) in files {
            let path = ctx.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(
                &path,
                text.replace("BASE_ARCHIVE", &self.base.display().to_string()),
            )
            .expect("write");
        }
        ctx
    }

    fn request(&self, ctx: &Path) -> BuildRequest {
        BuildRequest::new(
            ctx,
            "localhost/serverless-build/t:latest",
            self.dir.path().join("out.tar"),
        )
    }

    async fn build(&self, request: &BuildRequest) -> (Result<Built, BuildError>, Vec<BuildEvent>) {
        let mut events = Vec::new();
        let result = self.builder.build(request, &mut |e| events.push(e)).await;
        (result, events)
    }

    /// Working containers in the builder's storage (a finished build leaves none).
    fn containers(&self) -> String {
        let out = std::process::Command::new("buildah")
            .arg("--root")
            .arg(self.builder.storage_dir())
            .arg("--runroot")
            .arg(self.dir.path().join("build/run"))
            .args(["--storage-driver", "overlay", "containers", "--quiet"])
            .output()
            .expect("buildah containers");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Mounts under the fixture's folder (a finished build leaves none).
    fn mounts(&self) -> Vec<String> {
        let dir = self.dir.path().display().to_string();
        std::fs::read_to_string("/proc/self/mounts")
            .expect("mounts")
            .lines()
            .filter(|l| l.contains(&dir))
            .map(str::to_owned)
            .collect()
    }
}

const TWO_STAGE: &str = r#"ARG BASE=oci-archive:BASE_ARCHIVE
FROM $BASE AS build
ARG GREETING=hello
WORKDIR /src
COPY . .
RUN ls /src && test ! -e /src/secret.txt && echo "$GREETING from the build stage" > /greeting
RUN ["/bin/busybox", "sh", "-c", "cat /src/page.txt >> /greeting"]

FROM $BASE
LABEL org.example.app=two-stage
ENV MODE=prod
COPY --from=build /greeting /www/index.html
USER 1000
EXPOSE 8080
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
"#;

#[tokio::test]
async fn two_stage_build_honours_dockerignore_and_reuses_its_cache() {
    if !can_run("two_stage_build_honours_dockerignore_and_reuses_its_cache") {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(
        "app",
        &[
            ("Dockerfile", TWO_STAGE),
            ("page.txt", "page one\n"),
            ("secret.txt", "not for the image\n"),
            (".dockerignore", "secret.txt\n"),
        ],
    );
    let mut request = f.request(&ctx);
    request.args.insert("GREETING".into(), "hi".into());
    let (cold, events) = f.build(&request).await;
    let cold = cold.expect("cold build");
    assert!(request.output.exists(), "archive written");
    assert_eq!(cold.steps.len(), 13, "{:#?}", cold.steps);
    assert_eq!(cold.cached_steps(), 0);
    let started = events
        .iter()
        .filter(|e| matches!(e, BuildEvent::StepStarted(_)))
        .count();
    assert_eq!(started, 13);
    let output: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            BuildEvent::Output(l) => Some(l),
            _ => None,
        })
        .collect();
    assert!(
        output.iter().any(|l| l.as_str() == "page.txt"),
        "ls output streamed: {output:?}"
    );
    assert!(
        !output.iter().any(|l| l.contains("secret.txt")),
        "{output:?}"
    );

    // Nothing changed: every step but the FROMs comes from the cache.
    let (warm, _) = f.build(&request).await;
    let warm = warm.expect("cached build");
    assert_eq!(warm.cached_steps(), 11, "{:#?}", warm.steps);
    assert_eq!(warm.image_id, cold.image_id);
    assert!(
        warm.elapsed < cold.elapsed,
        "cached {:?} vs cold {:?}",
        warm.elapsed,
        cold.elapsed
    );

    // One source file changed: the steps before its COPY are cached, the ones after re-run.
    std::fs::write(ctx.join("page.txt"), "page two\n").expect("write");
    let (changed, _) = f.build(&request).await;
    let changed = changed.expect("rebuild");
    let cached: Vec<bool> = changed.steps.iter().map(|s| s.cached).collect();
    let copy = changed
        .steps
        .iter()
        .position(|s| s.step.instruction == "COPY . .")
        .expect("the COPY step");
    assert!(cached[1..copy].iter().all(|c| *c), "{:#?}", changed.steps);
    assert!(
        cached[copy..=copy + 2].iter().all(|c| !c),
        "{:#?}",
        changed.steps
    );
    assert_ne!(changed.image_id, cold.image_id);
    assert!(f.containers().is_empty(), "{}", f.containers());
    eprintln!(
        "cold {:?}, cached {:?}, one file changed {:?}",
        cold.elapsed, warm.elapsed, changed.elapsed
    );
}

#[tokio::test]
async fn a_failing_run_names_its_step_exit_status_and_output() {
    if !can_run("a_failing_run_names_its_step_exit_status_and_output") {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(
        "app",
        &[(
            "Dockerfile",
            "FROM oci-archive:BASE_ARCHIVE\nRUN echo compiling; echo 'error: it broke' >&2; exit 3\n",
        )],
    );
    let request = f.request(&ctx);
    let (result, _) = f.build(&request).await;
    let err = result.expect_err("RUN exits 3").to_string();
    // The step wrote one line to stdout and one to stderr: buildah copies the two through
    // pipes of their own, so either may come first in the output's tail.
    let prefix = "build failed at STEP 2/2: RUN echo compiling; echo 'error: it broke' >&2; \
                  exit 3: while running runtime: exit status 3; last output: ";
    assert!(
        [
            format!("{prefix}compiling | error: it broke"),
            format!("{prefix}error: it broke | compiling"),
        ]
        .contains(&err),
        "{err}"
    );
    assert!(!request.output.exists());
    assert!(f.containers().is_empty(), "{}", f.containers());
}

#[tokio::test]
async fn bad_dockerfiles_get_one_line_errors() {
    if !can_run("bad_dockerfiles_get_one_line_errors") {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(
        "syntax",
        &[(
            "Dockerfile",
            "FROM oci-archive:BASE_ARCHIVE\n\nRUNN echo x\n",
        )],
    );
    let (result, _) = f.build(&f.request(&ctx)).await;
    let err = result.expect_err("syntax");
    assert!(
        matches!(err, BuildError::Syntax { line: Some(3), .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .ends_with("Dockerfile line 3: unknown instruction RUNN"),
        "{err}"
    );

    let ctx = f.context("nodockerfile", &[("app.txt", "x")]);
    let (result, _) = f.build(&f.request(&ctx)).await;
    let err = result.expect_err("no Dockerfile").to_string();
    assert_eq!(
        err,
        format!("no Dockerfile at {}", ctx.join("Dockerfile").display())
    );

    let ctx = f.context(
        "nobase",
        &[(
            "Dockerfile",
            "FROM oci-archive:/nonexistent.tar\nRUN true\n",
        )],
    );
    let (result, _) = f.build(&f.request(&ctx)).await;
    let err = result.expect_err("no base").to_string();
    assert!(
        err.contains("/nonexistent.tar: no such file or directory"),
        "{err}"
    );

    let ctx = f.context(
        "copy",
        &[(
            "Dockerfile",
            "FROM oci-archive:BASE_ARCHIVE\nCOPY missing.txt /x\n",
        )],
    );
    let (result, _) = f.build(&f.request(&ctx)).await;
    let err = result.expect_err("missing COPY source").to_string();
    assert!(
        err.starts_with("build failed at STEP 2/2: COPY missing.txt /x:")
            && err.contains("no such file"),
        "{err}"
    );
    assert!(f.containers().is_empty(), "{}", f.containers());
    assert!(f.mounts().is_empty(), "{:?}", f.mounts());
}

#[tokio::test]
async fn run_steps_have_no_network() {
    if !can_run("run_steps_have_no_network") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let f = Fixture::new();
    let ctx = f.context(
        "net",
        &[(
            "Dockerfile",
            &format!(
                "FROM oci-archive:BASE_ARCHIVE\nRUN if nc -w 1 127.0.0.1 {port} </dev/null; then echo reached; exit 1; fi; echo isolated\n"
            ),
        )],
    );
    let (result, events) = f.build(&f.request(&ctx)).await;
    result.expect("the step cannot reach the host's loopback");
    assert!(
        events.contains(&BuildEvent::Output("isolated".into())),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_build_over_its_time_budget_is_stopped_and_cleaned_up() {
    if !can_run("a_build_over_its_time_budget_is_stopped_and_cleaned_up") {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(
        "slow",
        &[(
            "Dockerfile",
            "FROM oci-archive:BASE_ARCHIVE\nRUN sleep 60\n",
        )],
    );
    let mut request = f.request(&ctx);
    request.timeout = Duration::from_secs(3);
    let started = tokio::time::Instant::now();
    let (result, _) = f.build(&request).await;
    let err = result.expect_err("over budget").to_string();
    assert_eq!(
        err,
        "build stopped after 3s at STEP 2/2: RUN sleep 60: over its time budget (build.timeout)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(!request.output.exists());
    assert!(f.containers().is_empty(), "{}", f.containers());
    let runc = std::process::Command::new("runc")
        .arg("list")
        .output()
        .expect("runc list");
    let runc = String::from_utf8_lossy(&runc.stdout).into_owned();
    assert!(
        !runc.contains(&f.dir.path().display().to_string()),
        "the step's runc container is deleted: {runc}"
    );
    let tmp = std::fs::read_dir(f.dir.path().join("build/tmp"))
        .expect("tmp")
        .count();
    assert_eq!(tmp, 0, "the build's temp files are removed");
}
