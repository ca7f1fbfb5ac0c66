//! An in-process [`ContainerBackend`] for tests: each instance is a tokio task serving a tiny
//! HTTP/1.1 app on a loopback port.
//!
//! The app answers every request with its instance id (header `x-instance` and body), and:
//! - `GET /sleep/<ms>` answers after `<ms>` milliseconds (tokio time, so pausable);
//! - `GET /stream/<chunks>/<ms>` sends `<chunks>` chunks, one every `<ms>` milliseconds;
//! - request bodies (`content-length`) are read and their length reported in `x-body-len`.
//!
//! Behaviour per app ([`Behavior`]): start delay, boot failure with an exit code and log lines,
//! never listening. [`FakeBackend::crash`] kills a running instance as a host SIGKILL would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::backend::{
    BackendError, Connection, ContainerBackend, ErrorKind, Exit, InstanceId, OwnedInstance, Started,
};
use crate::AppSpec;

/// How a fake app behaves when started.
#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Time from `start` until it listens.
    pub start_delay: Duration,
    /// Exit with this code (and these log lines) instead of listening.
    pub boot_failure: Option<(i32, String)>,
    /// Never listen; `start` then fails with [`ErrorKind::StartTimeout`] after the app's
    /// startup timeout.
    pub never_listen: bool,
}

struct FakeInstance {
    app: String,
    addr: SocketAddr,
    kill: watch::Sender<bool>,
    exit: watch::Receiver<Option<Exit>>,
}

#[derive(Default)]
struct State {
    behaviors: HashMap<String, Behavior>,
    running: HashMap<InstanceId, FakeInstance>,
    /// Instances that crashed and were not stopped yet: `wait` still reports their exit.
    crashed: HashMap<InstanceId, Exit>,
    started: usize,
    stopped: usize,
    /// Most instances running at once.
    peak: usize,
}

/// The in-process backend. Cheap to clone; clones share instances.
#[derive(Clone, Default)]
pub struct FakeBackend {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("FakeBackend")
            .field("started", &state.started)
            .field("stopped", &state.stopped)
            .finish_non_exhaustive()
    }
}

impl FakeBackend {
    /// A backend whose apps start at once.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock is a test failure already; keep going with the data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how instances of `app` behave from now on.
    pub fn set_behavior(&self, app: &str, behavior: Behavior) {
        self.lock().behaviors.insert(app.to_owned(), behavior);
    }

    /// Kills a running instance as a SIGKILL from the host would: open connections are reset,
    /// new ones refused, and `wait` reports exit code 137.
    pub fn crash(&self, id: &InstanceId) -> bool {
        let mut state = self.lock();
        match state.running.remove(id) {
            Some(inst) => {
                let _ = inst.kill.send(true);
                state.crashed.insert(id.clone(), Exit::code(137));
                true
            }
            None => false,
        }
    }

    /// Ids of the running instances of `app`.
    pub fn running(&self, app: &str) -> Vec<InstanceId> {
        let mut ids: Vec<_> = self
            .lock()
            .running
            .iter()
            .filter(|(_, i)| i.app == app)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Instances started successfully so far.
    pub fn started(&self) -> usize {
        self.lock().started
    }

    /// Instances stopped so far (by `stop`).
    pub fn stopped(&self) -> usize {
        self.lock().stopped
    }

    /// The most instances that ran at once.
    pub fn peak(&self) -> usize {
        self.lock().peak
    }
}

#[async_trait]
impl ContainerBackend for FakeBackend {
    async fn prepare(&self, _app: &AppSpec) -> Result<(), BackendError> {
        Ok(())
    }

    async fn start(&self, app: &AppSpec, id: &InstanceId) -> Result<Started, BackendError> {
        let behavior = self
            .lock()
            .behaviors
            .get(&app.name)
            .cloned()
            .unwrap_or_default();
        if behavior.never_listen {
            tokio::time::sleep(app.limits.startup_timeout).await;
            return Err(BackendError::new(
                ErrorKind::StartTimeout,
                format!(
                    "listened on no port within {}",
                    humantime::format_duration(app.limits.startup_timeout)
                ),
            ));
        }
        tokio::time::sleep(behavior.start_delay).await;
        if let Some((code, logs)) = behavior.boot_failure {
            return Err(BackendError::boot_failed(Exit::code(code), logs));
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| BackendError::new(ErrorKind::Unavailable, "bind").with_source(e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| BackendError::new(ErrorKind::Unavailable, "bind").with_source(e))?;
        let (kill_tx, kill_rx) = watch::channel(false);
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(serve(listener, id.clone(), kill_rx, exit_tx));
        let mut state = self.lock();
        state.running.insert(
            id.clone(),
            FakeInstance {
                app: app.name.clone(),
                addr,
                kill: kill_tx,
                exit: exit_rx,
            },
        );
        state.started += 1;
        state.peak = state.peak.max(state.running.len());
        Ok(Started {
            port: addr.port(),
            phases: vec![("start", behavior.start_delay)],
        })
    }

    async fn stop(&self, id: &InstanceId, _grace: Duration) -> Result<(), BackendError> {
        let mut state = self.lock();
        if let Some(inst) = state.running.remove(id) {
            let _ = inst.kill.send(true);
        }
        state.crashed.remove(id);
        state.stopped += 1;
        Ok(())
    }

    async fn wait(&self, id: &InstanceId) -> Result<Exit, BackendError> {
        let rx = {
            let state = self.lock();
            if let Some(exit) = state.crashed.get(id) {
                return Ok(*exit);
            }
            state.running.get(id).map(|i| i.exit.clone())
        };
        let Some(mut rx) = rx else {
            return Err(BackendError::new(
                ErrorKind::NotFound,
                format!("instance {id} is not running"),
            ));
        };
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit.unwrap_or(Exit::code(137)),
            Err(_) => Exit::code(137),
        };
        Ok(exit)
    }

    async fn connect(&self, id: &InstanceId) -> Result<Connection, BackendError> {
        let addr = self.lock().running.get(id).map(|i| i.addr);
        let addr = addr.ok_or_else(|| {
            BackendError::new(ErrorKind::NotFound, format!("instance {id} is not running"))
        })?;
        let stream = TcpStream::connect(addr).await.map_err(|e| {
            BackendError::new(ErrorKind::Connect, format!("connect to instance {id}"))
                .with_source(e)
        })?;
        let _ = stream.set_nodelay(true);
        Ok(Box::new(stream))
    }

    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
        Ok(self
            .lock()
            .running
            .iter()
            .map(|(id, i)| OwnedInstance {
                id: id.clone(),
                app: i.app.clone(),
                running: true,
            })
            .collect())
    }

    async fn logs(&self, id: &InstanceId) -> Result<String, BackendError> {
        if !self.lock().running.contains_key(id) {
            return Err(BackendError::new(
                ErrorKind::NotFound,
                format!("instance {id} is not running"),
            ));
        }
        Ok(format!("fake instance {id}\n"))
    }
}

async fn serve(
    listener: TcpListener,
    id: InstanceId,
    mut kill: watch::Receiver<bool>,
    exit: watch::Sender<Option<Exit>>,
) {
    let conn_kill_rx = kill.clone();
    loop {
        tokio::select! {
            _ = kill.wait_for(|k| *k) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let id = id.clone();
                let mut conn_kill = conn_kill_rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = conn_kill.wait_for(|k| *k) => {}
                        _ = handle(stream, &id) => {}
                    }
                });
            }
        }
    }
    let _ = exit.send(Some(Exit::code(137)));
}

/// Serves HTTP/1.1 keep-alive requests on one connection until the client closes it.
async fn handle(mut stream: TcpStream, id: &InstanceId) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let body_len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < body_len {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..body_len);

        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["sleep", ms] => {
                let ms: u64 = ms.parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            ["stream", chunks, ms] => {
                let chunks: u32 = chunks.parse().unwrap_or(1);
                let ms: u64 = ms.parse().unwrap_or(0);
                let header = format!(
                    "HTTP/1.1 200 OK\r\nx-instance: {id}\r\ntransfer-encoding: chunked\r\n\r\n"
                );
                stream.write_all(header.as_bytes()).await?;
                for i in 0..chunks {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let data = format!("chunk {i}\n");
                    stream
                        .write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
                        .await?;
                }
                stream.write_all(b"0\r\n\r\n").await?;
                continue;
            }
            _ => {}
        }
        let body = format!("{id}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nx-instance: {id}\r\nx-body-len: {body_len}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageRef;

    #[tokio::test]
    async fn serves_http_and_crashes() {
        let backend = FakeBackend::new();
        let app = AppSpec::new("a", ImageRef::Registry("x".into()));
        let id = InstanceId::new("a-1");
        backend.start(&app, &id).await.unwrap();
        let mut conn = backend.connect(&id).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("x-instance: a-1"), "{text}");

        let waiter = tokio::spawn({
            let backend = backend.clone();
            let id = id.clone();
            async move { backend.wait(&id).await }
        });
        assert!(backend.crash(&id));
        assert_eq!(waiter.await.unwrap().unwrap(), Exit::code(137));
        let err = match backend.connect(&id).await {
            Err(e) => e,
            Ok(_) => panic!("connected to a crashed instance"),
        };
        assert!(err.is_not_found());
    }

    #[tokio::test]
    async fn boot_failure_reports_exit_and_logs() {
        let backend = FakeBackend::new();
        backend.set_behavior(
            "a",
            Behavior {
                boot_failure: Some((3, "panic: no config".into())),
                ..Default::default()
            },
        );
        let app = AppSpec::new("a", ImageRef::Registry("x".into()));
        let err = backend
            .start(&app, &InstanceId::new("a-1"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BootFailed);
        assert_eq!(err.exit(), Some(Exit::code(3)));
        assert_eq!(err.logs(), Some("panic: no config"));
        assert_eq!(err.to_string(), "exited with code 3 before listening");
    }
}
