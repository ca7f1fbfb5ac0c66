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
/// Every method may be called concurrently. The engine guarantees `stop` is called once per
/// instance it started, also for instances that exited by themselves (to free their resources).
#[async_trait]
pub trait ContainerBackend: Send + Sync + 'static {
    /// Makes the app's image available (import or pull). Idempotent; called on deploy and again
    /// lazily by `start` implementations that need it.
    async fn prepare(&self, app: &AppSpec) -> Result<(), BackendError>;

    /// Starts an instance with the given id and returns once it listens on a port (or fails
    /// with [`ErrorKind::BootFailed`] / [`ErrorKind::StartTimeout`] after cleaning up).
    async fn start(&self, app: &AppSpec, id: &InstanceId) -> Result<Started, BackendError>;

    /// Stops an instance: SIGTERM, up to `grace`, SIGKILL, then frees everything it held.
    /// Stopping an instance that is already gone succeeds.
    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), BackendError>;

    /// Resolves when the instance's process exits (crash, OOM kill, or stop).
    async fn wait(&self, id: &InstanceId) -> Result<Exit, BackendError>;

    /// Opens a new connection to the instance's port.
    async fn connect(&self, id: &InstanceId) -> Result<Connection, BackendError>;

    /// Everything this backend owns, including leftovers of a previous run (for reconcile).
    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError>;

    /// The instance's recent stdout/stderr.
    async fn logs(&self, id: &InstanceId) -> Result<String, BackendError>;

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
