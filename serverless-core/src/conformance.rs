//! A conformance suite for [`ContainerBackend`] implementations: it drives a backend through
//! every rule of the trait's contract and reports the first one broken.
//!
//! Run it from a test of your backend, with apps your backend can start:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use serverless_core::conformance::{self, Apps};
//! use serverless_core::fake::{Behavior, FakeBackend};
//! use serverless_core::{AppSpec, ImageRef};
//!
//! let backend = FakeBackend::new();
//! let image = ImageRef::Registry("example/hello:1".into());
//! let crashes = AppSpec::new("crashes", image.clone());
//! backend.set_behavior("crashes", Behavior { boot_failure: Some((3, "boom".into())), ..Default::default() });
//! let mut silent = AppSpec::new("silent", image.clone());
//! silent.limits.startup_timeout = Duration::from_millis(200);
//! backend.set_behavior("silent", Behavior { never_listen: true, ..Default::default() });
//! let apps = Apps {
//!     serves: AppSpec::new("serves", image),
//!     boot_failure: Some(crashes),
//!     never_listens: Some(silent),
//! };
//! conformance::run(&backend, &apps).await.unwrap();
//! # }
//! ```
//!
//! What it checks, in order (each failure names its rule):
//! 1. `prepare` is idempotent;
//! 2. `start` returns a port, `connect` reaches an HTTP/1.1 server, `list` shows the instance
//!    running under its app, `logs` answers or is unsupported;
//! 3. `wait` resolves with an [`Exit`] when `stop` ends the instance; `stop` again succeeds;
//!    afterwards `connect` fails with `NotFound`/`Connect`, a new `wait` does not hang, and
//!    `list` no longer shows it running;
//! 4. unknown ids: `wait` → `NotFound` at once, `connect` → `NotFound`/`Connect`, `stop` → `Ok`;
//! 5. two instances start concurrently and are told apart;
//! 6. a `start` dropped half-way, then `stop`, leaves nothing listed;
//! 7. (if given) an app that exits before listening → `BootFailed` with its exit, nothing left;
//! 8. (if given) an app that never listens → `StartTimeout` within its `startup_timeout` (plus
//!    10 s of slack), nothing left.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{AppSpec, BackendError, ContainerBackend, ErrorKind, Exit, InstanceId};

/// The apps the suite starts.
#[derive(Debug, Clone)]
pub struct Apps {
    /// An app that listens and answers HTTP/1.1 (any status) on its port.
    pub serves: AppSpec,
    /// An app whose process exits before it listens, if the backend can run one.
    pub boot_failure: Option<AppSpec>,
    /// An app that never listens, with a short `limits.startup_timeout`, if the backend can run
    /// one.
    pub never_listens: Option<AppSpec>,
}

/// A broken rule of the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule, as the trait's docs state it.
    pub rule: &'static str,
    /// What happened instead.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend contract broken: {}: {}", self.rule, self.detail)
    }
}

impl std::error::Error for Violation {}

fn broken(rule: &'static str, detail: impl fmt::Display) -> Violation {
    Violation {
        rule,
        detail: detail.to_string(),
    }
}

/// Bounds every backend call, so a hanging backend is a violation instead of a hung test.
async fn bounded<T>(
    rule: &'static str,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Result<T, Violation> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| broken(rule, format!("did not return within {limit:?}")))
}

const CALL: Duration = Duration::from_secs(30);

fn id(tag: &str) -> InstanceId {
    // Unique per run of the suite, so several runs can share a backend.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    InstanceId::new(format!(
        "conformance-{tag}-{:x}",
        nanos ^ std::process::id()
    ))
}

/// Runs every check against `backend`; the first broken rule is returned.
pub async fn run<B: ContainerBackend + ?Sized>(backend: &B, apps: &Apps) -> Result<(), Violation> {
    prepare_is_idempotent(backend, &apps.serves).await?;
    lifecycle(backend, &apps.serves).await?;
    unknown_ids(backend).await?;
    concurrent_starts(backend, &apps.serves).await?;
    dropped_start(backend, &apps.serves).await?;
    if let Some(app) = &apps.boot_failure {
        boot_failure(backend, app).await?;
    }
    if let Some(app) = &apps.never_listens {
        start_timeout(backend, app).await?;
    }
    Ok(())
}

async fn prepare_is_idempotent<B: ContainerBackend + ?Sized>(
    backend: &B,
    app: &AppSpec,
) -> Result<(), Violation> {
    const RULE: &str = "prepare is idempotent";
    for _ in 0..2 {
        bounded(RULE, Duration::from_secs(300), backend.prepare(app))
            .await?
            .map_err(|e| broken(RULE, e))?;
    }
    Ok(())
}

/// Sends one HTTP/1.1 request over `connect` and returns the status line.
async fn http_status<B: ContainerBackend + ?Sized>(
    backend: &B,
    id: &InstanceId,
) -> Result<String, Violation> {
    const RULE: &str = "connect reaches the app's port";
    let mut conn = bounded(RULE, CALL, backend.connect(id))
        .await?
        .map_err(|e| broken(RULE, e))?;
    let io = async {
        conn.write_all(b"GET / HTTP/1.1\r\nhost: conformance\r\nconnection: close\r\n\r\n")
            .await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.contains(&b'\n') {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = bounded(RULE, CALL, io)
        .await?
        .map_err(|e| broken(RULE, e))?;
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    if !line.starts_with("HTTP/1.") {
        return Err(broken(RULE, format!("the app answered {line:?}")));
    }
    Ok(line)
}

async fn listed_running<B: ContainerBackend + ?Sized>(
    backend: &B,
    id: &InstanceId,
) -> Result<Option<(String, bool)>, Violation> {
    const RULE: &str = "list shows what the backend owns";
    let all = bounded(RULE, CALL, backend.list())
        .await?
        .map_err(|e| broken(RULE, e))?;
    Ok(all
        .into_iter()
        .find(|o| &o.id == id)
        .map(|o| (o.app, o.running)))
}

/// Polls `list` until `id` is no longer shown running (a backend may remove asynchronously).
async fn eventually_not_running<B: ContainerBackend + ?Sized>(
    backend: &B,
    id: &InstanceId,
    rule: &'static str,
) -> Result<(), Violation> {
    for _ in 0..100 {
        match listed_running(backend, id).await? {
            Some((_, true)) => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => return Ok(()),
        }
    }
    Err(broken(
        rule,
        format!("{id} is still listed running 10 s later"),
    ))
}

fn is_gone(e: &BackendError) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Connect)
}

async fn lifecycle<B: ContainerBackend + ?Sized>(
    backend: &B,
    app: &AppSpec,
) -> Result<(), Violation> {
    let id = id("life");
    const START: &str = "start returns once the app listens";
    let started = bounded(
        START,
        app.limits.startup_timeout + CALL,
        backend.start(app, &id),
    )
    .await?
    .map_err(|e| broken(START, e))?;
    if started.port == 0 {
        return Err(broken(START, "Started.port is 0"));
    }
    http_status(backend, &id).await?;
    match listed_running(backend, &id).await? {
        Some((owner, true)) if owner == app.name => {}
        other => {
            return Err(broken(
                "list shows a started instance running under its app",
                format!("{id} listed as {other:?}"),
            ))
        }
    }
    const LOGS: &str = "logs answers for a running instance or is unsupported";
    match bounded(LOGS, CALL, backend.logs(&id)).await? {
        Ok(_) => {}
        Err(e) if e.is_unsupported() => {}
        Err(e) => return Err(broken(LOGS, e)),
    }

    const WAIT: &str = "wait resolves with the exit when stop ends the instance";
    let grace = Duration::from_secs(2);
    let (exit, stopped) = tokio::join!(bounded(WAIT, grace + CALL, backend.wait(&id)), async {
        // Let `wait` subscribe first, as the pool does.
        tokio::time::sleep(Duration::from_millis(50)).await;
        bounded("stop succeeds", grace + CALL, backend.stop(&id, grace)).await
    });
    stopped?.map_err(|e| broken("stop succeeds", e))?;
    match exit? {
        Ok(Exit { .. }) => {}
        Err(e) if e.is_unsupported() => {}
        Err(e) => return Err(broken(WAIT, e)),
    }
    bounded("stop is idempotent", CALL, backend.stop(&id, grace))
        .await?
        .map_err(|e| broken("stop is idempotent", e))?;
    const AFTER: &str = "connect to a stopped instance fails with NotFound or Connect";
    match bounded(AFTER, CALL, backend.connect(&id)).await? {
        Ok(_) => return Err(broken(AFTER, "it connected")),
        Err(e) if is_gone(&e) => {}
        Err(e) => return Err(broken(AFTER, format!("{:?}: {e}", e.kind()))),
    }
    const WAIT_AGAIN: &str =
        "wait on a stopped instance returns at once (its exit, or NotFound), never hangs";
    match bounded(WAIT_AGAIN, Duration::from_secs(5), backend.wait(&id)).await? {
        Ok(_) => {}
        Err(e) if e.is_not_found() || e.is_unsupported() => {}
        Err(e) => return Err(broken(WAIT_AGAIN, e)),
    }
    eventually_not_running(
        backend,
        &id,
        "list no longer shows a stopped instance running",
    )
    .await
}

async fn unknown_ids<B: ContainerBackend + ?Sized>(backend: &B) -> Result<(), Violation> {
    let id = id("never-started");
    const WAIT: &str = "wait on an unknown id returns NotFound at once, not a made-up exit";
    match bounded(WAIT, Duration::from_secs(5), backend.wait(&id)).await? {
        Err(e) if e.is_not_found() || e.is_unsupported() => {}
        Err(e) => return Err(broken(WAIT, format!("{:?}: {e}", e.kind()))),
        Ok(exit) => return Err(broken(WAIT, format!("it returned Ok({exit})"))),
    }
    const CONNECT: &str = "connect to an unknown id fails with NotFound or Connect";
    match bounded(CONNECT, CALL, backend.connect(&id)).await? {
        Ok(_) => return Err(broken(CONNECT, "it connected")),
        Err(e) if is_gone(&e) => {}
        Err(e) => return Err(broken(CONNECT, format!("{:?}: {e}", e.kind()))),
    }
    const STOP: &str = "stop of an unknown id succeeds";
    bounded(STOP, CALL, backend.stop(&id, Duration::ZERO))
        .await?
        .map_err(|e| broken(STOP, e))?;
    Ok(())
}

async fn concurrent_starts<B: ContainerBackend + ?Sized>(
    backend: &B,
    app: &AppSpec,
) -> Result<(), Violation> {
    const RULE: &str = "instances start concurrently";
    let (a, b) = (id("conc-a"), id("conc-b"));
    let limit = app.limits.startup_timeout + CALL;
    let (ra, rb) = tokio::join!(
        bounded(RULE, limit, backend.start(app, &a)),
        bounded(RULE, limit, backend.start(app, &b))
    );
    let checked = async {
        ra?.map_err(|e| broken(RULE, e))?;
        rb?.map_err(|e| broken(RULE, e))?;
        http_status(backend, &a).await?;
        http_status(backend, &b).await?;
        Ok::<_, Violation>(())
    }
    .await;
    for id in [&a, &b] {
        bounded("stop succeeds", CALL, backend.stop(id, Duration::ZERO))
            .await?
            .map_err(|e| broken("stop succeeds", e))?;
    }
    checked
}

async fn dropped_start<B: ContainerBackend + ?Sized>(
    backend: &B,
    app: &AppSpec,
) -> Result<(), Violation> {
    const RULE: &str = "stop removes what a dropped start left";
    let id = id("dropped");
    // Give the start a little time to create something, then drop it mid-way.
    let _ = tokio::time::timeout(Duration::from_millis(20), backend.start(app, &id)).await;
    bounded(RULE, CALL, backend.stop(&id, Duration::ZERO))
        .await?
        .map_err(|e| broken(RULE, e))?;
    eventually_not_running(backend, &id, RULE).await
}

async fn boot_failure<B: ContainerBackend + ?Sized>(
    backend: &B,
    app: &AppSpec,
) -> Result<(), Violation> {
    failed_start(
        backend,
        app,
        "boot-failure",
        "an app that exits before listening fails start with BootFailed and its exit",
        app.limits.startup_timeout + CALL,
        |e| e.kind() == ErrorKind::BootFailed && e.exit().is_some(),
    )
    .await
}

async fn start_timeout<B: ContainerBackend + ?Sized>(
    backend: &B,
    app: &AppSpec,
) -> Result<(), Violation> {
    failed_start(
        backend,
        app,
        "never-listens",
        "an app that never listens fails start with StartTimeout within startup_timeout",
        app.limits.startup_timeout + Duration::from_secs(10),
        |e| e.kind() == ErrorKind::StartTimeout,
    )
    .await
}

/// Starts an app that must fail to start: within `limit`, with an error `expected` accepts,
/// and leaving nothing listed.
async fn failed_start<B: ContainerBackend + ?Sized>(
    backend: &B,
    app: &AppSpec,
    tag: &str,
    rule: &'static str,
    limit: Duration,
    expected: impl Fn(&BackendError) -> bool,
) -> Result<(), Violation> {
    let id = id(tag);
    match bounded(rule, limit, backend.start(app, &id)).await? {
        Err(e) if expected(&e) => {}
        Err(e) => return Err(broken(rule, format!("{:?}: {e}", e.kind()))),
        Ok(started) => {
            let _ = backend.stop(&id, Duration::ZERO).await;
            return Err(broken(rule, format!("it started on port {}", started.port)));
        }
    }
    if listed_running(backend, &id).await?.is_some() {
        return Err(broken(
            "a failed start removes what it created",
            format!("{id} is still listed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::fake::FakeBackend;
    use crate::{Connection, ImageRef, OwnedInstance, Started};

    fn apps() -> Apps {
        Apps {
            serves: AppSpec::new("serves", ImageRef::Registry("example/x:1".into())),
            boot_failure: None,
            never_listens: None,
        }
    }

    /// The fake, except that `wait` on an unknown id makes up an exit code.
    struct MadeUpExit(FakeBackend);

    #[async_trait]
    impl ContainerBackend for MadeUpExit {
        async fn start(&self, app: &AppSpec, id: &InstanceId) -> Result<Started, BackendError> {
            self.0.start(app, id).await
        }
        async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), BackendError> {
            self.0.stop(id, grace).await
        }
        async fn wait(&self, id: &InstanceId) -> Result<Exit, BackendError> {
            Ok(self.0.wait(id).await.unwrap_or(Exit::code(137)))
        }
        async fn connect(&self, id: &InstanceId) -> Result<Connection, BackendError> {
            self.0.connect(id).await
        }
        async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
            self.0.list().await
        }
    }

    #[tokio::test]
    async fn the_fake_passes() {
        run(&FakeBackend::new(), &apps()).await.unwrap();
        // Through an Arc<dyn …>, as the engine holds it.
        let dynamic: Arc<dyn ContainerBackend> = Arc::new(FakeBackend::new());
        run(&dynamic, &apps()).await.unwrap();
    }

    #[tokio::test]
    async fn a_made_up_exit_is_caught() {
        let err = run(&MadeUpExit(FakeBackend::new()), &apps())
            .await
            .unwrap_err();
        assert!(err.rule.starts_with("wait on an unknown id"), "{err}");
    }
}
