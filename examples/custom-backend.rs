//! Run with: `cargo run -p examples --bin custom-backend -- [COMMAND ARGS…]` then
//! `curl http://hello.localhost:<port>/` (the port is printed)
//!
//! Implements [`ContainerBackend`] with plain local processes instead of containers: `start`
//! spawns the app's `command` with `PORT` set to a free loopback port and waits until that port
//! accepts; `connect` dials it; `stop` sends SIGTERM, then SIGKILL after the grace period. A
//! [`Gateway`] serves one app over it, so the first request starts a process, idle ones stop.
//! The default command is `python3 -m http.server` on `$PORT`; pass another (e.g. the path of
//! `serverless-hello`) as arguments. No isolation, no limits: a demo of the trait, not a sandbox.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serverless_core::{
    AppSpec, BackendError, Config, Connection, ContainerBackend, ErrorKind, Exit, InstanceId,
    OwnedInstance, Started,
};
use serverless_proxy::Gateway;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::watch;

/// Lines of stderr kept per process.
const LOG_LINES: usize = 50;

struct Process {
    app: String,
    addr: SocketAddr,
    pid: Option<u32>,
    exit: watch::Receiver<Option<Exit>>,
    logs: Arc<Mutex<VecDeque<String>>>,
}

/// Runs each instance as a child process listening on a loopback port.
#[derive(Default)]
struct ProcessBackend {
    procs: Mutex<HashMap<InstanceId, Process>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn tail(logs: &Mutex<VecDeque<String>>) -> String {
    lock(logs).iter().map(|l| format!("{l}\n")).collect()
}

impl ProcessBackend {
    fn get(
        &self,
        id: &InstanceId,
    ) -> Result<(SocketAddr, watch::Receiver<Option<Exit>>), BackendError> {
        let procs = lock(&self.procs);
        let p = procs
            .get(id)
            .ok_or_else(|| BackendError::new(ErrorKind::NotFound, format!("no instance {id}")))?;
        Ok((p.addr, p.exit.clone()))
    }

    fn signal(&self, id: &InstanceId, signal: Signal) {
        if let Some(pid) = lock(&self.procs).get(id).and_then(|p| p.pid) {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }
}

#[async_trait]
impl ContainerBackend for ProcessBackend {
    async fn prepare(&self, _app: &AppSpec) -> Result<(), BackendError> {
        Ok(()) // Nothing to fetch: the command runs from the host.
    }

    async fn start(&self, app: &AppSpec, id: &InstanceId) -> Result<Started, BackendError> {
        let begun = tokio::time::Instant::now();
        let argv = app.command.clone().unwrap_or_default();
        let Some((program, args)) = argv.split_first() else {
            return Err(BackendError::new(
                ErrorKind::Image,
                "the app has no command",
            ));
        };
        // A free port: bind port 0, note it, release it for the child.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|l| l.local_addr())
            .map_err(|e| BackendError::new(ErrorKind::Unavailable, "no free port").with_source(e))?
            .port();
        let mut child = Command::new(program)
            .args(args)
            .envs(&app.env)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                BackendError::new(ErrorKind::Image, format!("cannot run {program:?}"))
                    .with_source(e)
            })?;
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let logs = logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut logs = lock(&logs);
                    if logs.len() == LOG_LINES {
                        logs.pop_front();
                    }
                    logs.push_back(line);
                }
            });
        }
        let (exit_tx, exit) = watch::channel(None);
        let pid = child.id();
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt as _;
            let code = match child.wait().await {
                Ok(s) => s
                    .code()
                    .or_else(|| s.signal().map(|n| 128 + n))
                    .unwrap_or(-1),
                Err(_) => -1,
            };
            let _ = exit_tx.send(Some(Exit::code(code)));
        });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        lock(&self.procs).insert(
            id.clone(),
            Process {
                app: app.name.clone(),
                addr,
                pid,
                exit: exit.clone(),
                logs: logs.clone(),
            },
        );

        // Wait until the port accepts, the process exits, or the startup timeout passes.
        let listening = async {
            loop {
                if let Some(e) = *exit.borrow() {
                    return Err(BackendError::boot_failed(e, tail(&logs)));
                }
                if TcpStream::connect(addr).await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let failed = match tokio::time::timeout(app.limits.startup_timeout, listening).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(
                BackendError::new(
                    ErrorKind::StartTimeout,
                    format!(
                        "not listening on {port} within {:?}",
                        app.limits.startup_timeout
                    ),
                )
                .with_logs(tail(&logs)),
            ),
        };
        if let Some(err) = failed {
            let _ = self.stop(id, Duration::ZERO).await;
            return Err(err);
        }
        Ok(Started {
            port,
            phases: vec![("spawn_and_listen", begun.elapsed())],
        })
    }

    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), BackendError> {
        let Ok((_, mut exit)) = self.get(id) else {
            return Ok(()); // Already gone.
        };
        let running = exit.borrow().is_none();
        if running {
            self.signal(id, Signal::SIGTERM);
            let exited = tokio::time::timeout(grace, exit.wait_for(|e| e.is_some()))
                .await
                .is_ok();
            if !exited {
                self.signal(id, Signal::SIGKILL);
                let _ = exit.wait_for(|e| e.is_some()).await;
            }
        }
        lock(&self.procs).remove(id);
        Ok(())
    }

    async fn wait(&self, id: &InstanceId) -> Result<Exit, BackendError> {
        let (_, mut exit) = self.get(id)?;
        let exited = exit.wait_for(|e| e.is_some()).await.map(|e| *e);
        match exited {
            Ok(Some(e)) => Ok(e),
            _ => Err(BackendError::new(
                ErrorKind::NotFound,
                format!("{id} is gone"),
            )),
        }
    }

    async fn connect(&self, id: &InstanceId) -> Result<Connection, BackendError> {
        let (addr, _) = self.get(id)?;
        let stream = TcpStream::connect(addr).await.map_err(|e| {
            BackendError::new(ErrorKind::Connect, format!("connecting to {addr}")).with_source(e)
        })?;
        let _ = stream.set_nodelay(true);
        Ok(Box::new(stream))
    }

    async fn list(&self) -> Result<Vec<OwnedInstance>, BackendError> {
        Ok(lock(&self.procs)
            .iter()
            .map(|(id, p)| OwnedInstance {
                id: id.clone(),
                app: p.app.clone(),
                running: p.exit.borrow().is_none(),
            })
            .collect())
    }

    async fn logs(&self, id: &InstanceId) -> Result<String, BackendError> {
        let procs = lock(&self.procs);
        let p = procs
            .get(id)
            .ok_or_else(|| BackendError::new(ErrorKind::NotFound, format!("no instance {id}")))?;
        Ok(tail(&p.logs))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut command: Vec<String> = std::env::args().skip(1).collect();
    if command.is_empty() {
        command = [
            "sh",
            "-c",
            "exec python3 -m http.server --bind 127.0.0.1 \"$PORT\"",
        ]
        .map(String::from)
        .to_vec();
    }
    let command = command
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = Config::from_toml(&format!(
        r#"
        listen = "127.0.0.1:0"
        admin = "127.0.0.1:0"
        [[apps]]
        name = "hello"
        image = "local/process:1"
        command = [{command}]
        "#
    ))?;
    let gateway = Gateway::start(config, Arc::new(ProcessBackend::default())).await?;
    let port = gateway.listen_addr().port();
    println!("serving app hello (command [{command}])");
    println!("try: curl http://hello.localhost:{port}/");
    println!(
        "admin API on http://{}; Ctrl-C to stop",
        gateway.admin_addr()
    );
    tokio::signal::ctrl_c().await?;
    println!("shutting down");
    gateway.shutdown().await;
    Ok(())
}

/// The process backend keeps the backend contract: `serverless_core::conformance` passes.
#[cfg(test)]
mod tests {
    use serverless_core::conformance::{self, Apps};
    use serverless_core::ImageRef;

    use super::*;

    fn app(name: &str, script: &str) -> AppSpec {
        let mut app = AppSpec::new(name, ImageRef::Registry("local/process:1".into()));
        app.command = Some(["sh", "-c", script].map(String::from).to_vec());
        app
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_process_backend_passes_the_conformance_suite() {
        // A static HTTP server on $PORT: busybox's when the host has it, else Python's.
        let serves = if std::path::Path::new("/usr/bin/busybox").exists()
            || std::path::Path::new("/bin/busybox").exists()
        {
            "exec busybox httpd -f -p 127.0.0.1:$PORT -h /"
        } else {
            "exec python3 -m http.server --bind 127.0.0.1 $PORT"
        };
        let mut never_listens = app("never-listens", "exec sleep 1000");
        never_listens.limits.startup_timeout = Duration::from_secs(1);
        let apps = Apps {
            serves: app("serves", serves),
            boot_failure: Some(app("boot-failure", "echo boom >&2; exit 3")),
            never_listens: Some(never_listens),
        };
        let backend = ProcessBackend::default();
        conformance::run(&backend, &apps).await.unwrap();
        assert!(lock(&backend.procs).is_empty(), "every process was removed");
    }
}
