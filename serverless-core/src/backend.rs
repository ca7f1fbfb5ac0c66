//! The container backend trait: how the engine starts, stops, watches and reaches instances.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::AppSpec;

/// Boxed error used as the source of backend errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The identity of one instance, unique per engine run (`<app>-<n>-<random>`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct InstanceId(Arc<str>);

impl InstanceId {
    /// Wraps an identifier.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The identifier as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Exit {
    /// Exit code (128+signal when killed by a signal, as shells report it).
    pub code: i32,
    /// The kernel's OOM killer ended it (memory slot exceeded).
    pub oom_killed: bool,
}

impl Exit {
    /// A plain exit code.
    pub const fn code(code: i32) -> Self {
        Self {
            code,
            oom_killed: false,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exited with code {}", self.code)?;
        if self.oom_killed {
            f.write_str(" (out of memory)")?;
        }
        Ok(())
    }
}

/// What a successful start reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The port the app listens on (discovered, not configured).
    pub port: u16,
    /// Time spent per cold-start phase, in order (`("task_create", 61ms)`, …), for metrics.
    pub phases: Vec<(&'static str, Duration)>,
}

/// An instance the backend holds, as found by [`ContainerBackend::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnedInstance {
    /// Its id.
    pub id: InstanceId,
    /// The app it belongs to.
    pub app: String,
    /// Whether its process still runs.
    pub running: bool,
}

/// What kind of failure a [`BackendError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The image could not be found, read, pulled or unpacked.
    Image,
    /// The app's process exited before it listened (see [`BackendError::exit`]).
    BootFailed,
    /// The app did not listen within the startup timeout.
    StartTimeout,
    /// The instance does not exist (any more).
    NotFound,
    /// The instance exists but could not be connected to.
    Connect,
    /// The backend itself (e.g. containerd) is unreachable or failed.
    Unavailable,
    /// The backend does not offer this operation (the default of optional trait methods).
    Unsupported,
}

/// A backend failure: a kind, a one-line message, and for boot failures the exit and the last
/// log lines.
#[derive(Debug)]
pub struct BackendError {
    kind: ErrorKind,
    message: String,
    exit: Option<Exit>,
    logs: Option<String>,
    source: Option<BoxError>,
}

impl BackendError {
    /// A new error of `kind` with a one-line message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            exit: None,
            logs: None,
            source: None,
        }
    }

    /// The app exited before it listened.
    pub fn boot_failed(exit: Exit, logs: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::BootFailed,
            message: format!("{exit} before listening"),
            exit: Some(exit),
            logs: Some(logs.into()),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Attaches the last log lines.
    pub fn with_logs(mut self, logs: impl Into<String>) -> Self {
        self.logs = Some(logs.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The exit of an app that failed to boot.
    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// The last log lines of an app that failed to boot.
    pub fn logs(&self) -> Option<&str> {
        self.logs.as_deref()
    }

    /// True when the instance does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// True when the backend does not offer the operation.
    pub fn is_unsupported(&self) -> bool {
        self.kind == ErrorKind::Unsupported
    }

    /// The error of an optional operation a backend does not offer.
    pub fn unsupported(operation: &str) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            format!("this backend does not support {operation}"),
        )
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A byte stream to an instance's port.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection to an instance.
pub type Connection = Box<dyn Io>;

/// Runs instances of apps. Implemented over containerd by `serverless-containerd`, in-process by
/// `FakeBackend` (feature `test-util`); implement it to run instances anywhere else.
///
/// # The contract
///
/// Who calls what:
///
/// | method | called by | when |
/// |---|---|---|
/// | [`prepare`](Self::prepare) | the engine (`serverless-proxy`'s `Engine::deploy`) | on deploy, before the app takes requests; never by the pool |
/// | [`start`](Self::start) | the pool | once per instance id; ids are unique per engine run |
/// | [`wait`](Self::wait) | the pool | right after a successful `start`, for the instance's life |
/// | [`stop`](Self::stop) | the pool | once per started instance (also after it exited), and after a `start` it gave up on |
/// | [`connect`](Self::connect) | the forwarder | for every new connection to a `Ready` instance |
/// | [`list`](Self::list) | the binary's reconcile at start-up, the admin API | never by the pool |
/// | [`logs`](Self::logs) | the admin API and CLI | never by the pool |
/// | [`release`](Self::release) | the pool's shutdown | after its last instance stopped |
///
/// Every method may be called concurrently, for the same or different instances.
///
/// Time limits: `start` enforces [`Limits::startup_timeout`](crate::Limits::startup_timeout)
/// itself and fails with [`ErrorKind::StartTimeout`]. The pool also bounds it, at
/// `startup_timeout` + 30 s, by dropping the future and calling `stop(id, 0)`; a backend that
/// relies on that bound has failed at its own job, but leaks nothing.
///
/// Cleanup: a `start` that returns `Err` has released everything it made for that id (the pool
/// does not call `stop` after an `Err`). A `start` whose future is dropped before it finishes
/// may leave a half-made instance: `stop` on that id must remove it. `stop` is idempotent and
/// succeeds for ids it does not know.
///
/// Errors: [`ErrorKind::NotFound`] means "this id does not exist (any more)" and nothing else;
/// [`ErrorKind::Unsupported`] marks an optional operation the backend does not offer.
///
/// [`conformance::run`](crate::conformance::run) (feature `test-util`) checks an implementation
/// against this contract; every backend in this workspace passes it.
#[async_trait]
pub trait ContainerBackend: Send + Sync + 'static {
    /// Makes the app's image available (import or pull), so that `start` does not pay for it.
    /// Idempotent. The default does nothing (for backends whose `start` needs no preparation).
    async fn prepare(&self, app: &AppSpec) -> Result<(), BackendError> {
        let _ = app;
        Ok(())
    }

    /// Starts an instance with the given id and returns once the app listens on a port.
    ///
    /// Fails with [`ErrorKind::BootFailed`] (with the [`Exit`] and the last log lines) when the
    /// process exits first, with [`ErrorKind::StartTimeout`] when it does not listen within
    /// `app.limits.startup_timeout`, with [`ErrorKind::Image`] when the image is missing — in
    /// every case after removing what it created. [`Started::port`] is the port it found (for
    /// logs and the admin API: the engine always reaches the instance through
    /// [`connect`](Self::connect)); [`Started::phases`] feed the cold-start metrics.
    async fn start(&self, app: &AppSpec, id: &InstanceId) -> Result<Started, BackendError>;

    /// Stops an instance: SIGTERM (or the backend's equivalent), up to `grace`, SIGKILL, then
    /// frees everything it held. Succeeds for an instance that is already gone or was never
    /// known, and for a half-made one whose `start` was dropped.
    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), BackendError>;

    /// Resolves with the [`Exit`] when the instance's process ends for any reason: a crash, an
    /// OOM kill, or [`stop`](Self::stop). For an id the backend does not know (never started,
    /// or stopped and forgotten) it returns [`ErrorKind::NotFound`] at once — never a made-up
    /// exit code.
    ///
    /// The pool treats `NotFound` as "the instance is gone" (it is removed) and any other error
    /// as "exits cannot be watched": it keeps the instance, logs a warning once, and notices a
    /// dead instance only when [`connect`](Self::connect) fails. The default returns
    /// [`ErrorKind::Unsupported`], which gives exactly that.
    async fn wait(&self, id: &InstanceId) -> Result<Exit, BackendError> {
        let _ = id;
        Err(BackendError::unsupported("watching instance exits"))
    }

    /// Opens a new connection to the instance's port. [`ErrorKind::NotFound`] when the
    /// instance is gone, [`ErrorKind::Connect`] when it refuses: the forwarder then evicts the
    /// instance and sends requests that were not yet written to another one.
    async fn connect(&self, id: &InstanceId) -> Result<Connection, BackendError>;

    /// Everything this backend owns, including leftovers of a previous run (for reconcile).
    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError>;

    /// The instance's recent stdout/stderr. [`ErrorKind::NotFound`] for an unknown id; the
    /// default returns [`ErrorKind::Unsupported`].
    async fn logs(&self, id: &InstanceId) -> Result<String, BackendError> {
        let _ = id;
        Err(BackendError::unsupported("logs"))
    }

    /// This app (exactly this spec) is gone: removed, redeployed with another spec, or the
    /// engine is shutting down. Frees whatever the backend keeps ready for it outside of
    /// instances (e.g. a pre-created standby, see [`Scale::standby`](crate::Scale::standby)).
    /// Called by the pool's shutdown once its instances are stopped. Must not fail; the
    /// default does nothing.
    async fn release(&self, app: &AppSpec) {
        let _ = app;
    }
}

#[async_trait]
impl<B: ContainerBackend + ?Sized> ContainerBackend for Arc<B> {
    async fn prepare(&self, app: &AppSpec) -> Result<(), BackendError> {
        (**self).prepare(app).await
    }
    async fn start(&self, app: &AppSpec, id: &InstanceId) -> Result<Started, BackendError> {
        (**self).start(app, id).await
    }
    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), BackendError> {
        (**self).stop(id, grace).await
    }
    async fn wait(&self, id: &InstanceId) -> Result<Exit, BackendError> {
        (**self).wait(id).await
    }
    async fn connect(&self, id: &InstanceId) -> Result<Connection, BackendError> {
        (**self).connect(id).await
    }
    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
        (**self).list().await
    }
    async fn logs(&self, id: &InstanceId) -> Result<String, BackendError> {
        (**self).logs(id).await
    }
    async fn release(&self, app: &AppSpec) {
        (**self).release(app).await
    }
}
