//! Harness for the reliability suite: a containerd process the test owns (so it can be killed
//! and restarted), the real gateway over it, test images, load generators, and leak counts.
//!
//! Cleanup does not depend on the test passing: [`Env`]'s `Drop` reconciles away whatever the
//! test left (containers, tasks, snapshots, cgroups), stops containerd and kills any shim that
//! still names its socket.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serverless_containerd::{ContainerdBackend, ImageBuilder};
use serverless_core::{Config, ContainerBackend};
use serverless_proxy::{Gateway, ERROR_HEADER};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Tests share the process; one that counts process-wide things (file descriptors) runs alone.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by every test while it runs (others may run alongside).
pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().await
}

/// Held by a test that must run alone in this process.
pub async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().await
}

/// Whether this machine can run real-containerd tests.
pub fn can_run(test: &str) -> bool {
    let ok = ["/bin/busybox"].iter().all(|p| Path::new(p).exists())
        && which("containerd")
        && which("runc")
        && which("ctr")
        && Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.trim_ascii() == b"0")
            .unwrap_or(false);
    if !ok {
        eprintln!(
            "\n!!!!!!!! SKIPPING {test}: needs root, containerd, runc, ctr and /bin/busybox !!!!!!!!\n"
        );
    }
    ok
}

fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A unique name for this test's namespace and files.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `containerd` process this test started and may kill and restart.
pub struct Containerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    config: PathBuf,
}

// Synchronous on purpose (also used from `Drop`); its waits are short polls of a socket or a
// child process.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
impl Containerd {
    pub fn start(dir: &Path) -> Self {
        let dir = dir.join("cd");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("c.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
            ),
        )
        .unwrap();
        let mut c = Self {
            child: None,
            dir,
            socket,
            config,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "containerd did not come up on {}",
                self.socket.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, like a crash: shims (and their containers) live on.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same root, state and socket.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.wait();
        }
    }

    /// `ctr` rows (header skipped) in `namespace`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Vec<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .output()
            .expect("ctr runs");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Shim processes serving this containerd (their command line names our socket).
    pub fn shims(&self) -> Vec<u32> {
        let needle = self.socket.to_string_lossy().into_owned();
        processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("containerd-shim") && cmd.contains(&needle))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Like [`shims`](Self::shims), without the backend's spare shim: one spawned for a
    /// keeper (`-id spare-shim.…`) that runs no process. A spare that an instance joined has
    /// the instance's process as its child and is counted.
    pub fn serving_shims(&self) -> Vec<u32> {
        let needle = self.socket.to_string_lossy().into_owned();
        let procs = processes();
        procs
            .iter()
            .filter(|(_, cmd)| cmd.contains("containerd-shim") && cmd.contains(&needle))
            .filter(|(pid, cmd)| {
                !cmd.contains(&format!("-id {SPARE_SHIM}"))
                    || procs
                        .iter()
                        .any(|(child, _)| parent_of(*child) == Some(*pid))
            })
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// Containers, tasks, active snapshots and shims in `namespace`, keepers of spare shims
    /// left out (see [`serving_shims`](Self::serving_shims)).
    pub fn objects(&self, namespace: &str) -> Objects {
        let rows = |what: &str| -> Vec<String> {
            self.ctr(namespace, &[what, "ls"])
                .into_iter()
                .filter(|l| !l.starts_with(SPARE_SHIM))
                .collect()
        };
        Objects {
            containers: rows("containers").len(),
            tasks: rows("tasks").len(),
            snapshots: rows("snapshots")
                .iter()
                .filter(|l| l.contains("Active"))
                .count(),
            shims: self.serving_shims().len(),
        }
    }
}

/// Container ids of spare shims' keepers start with this.
pub const SPARE_SHIM: &str = "spare-shim.";

/// The parent pid of a process.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        // Shims of a failed test: kill them and what they run.
        for pid in self.shims() {
            signal(pid, "KILL");
        }
        // Mounts left under our state dir (rootfs of killed tasks).
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let dir = self.dir.to_string_lossy().into_owned();
            for line in mounts.lines() {
                if let Some(target) = line.split(' ').nth(1) {
                    if target.starts_with(&dir) {
                        let _ = Command::new("umount").args(["-l", target]).status();
                    }
                }
            }
        }
    }
}

/// All processes with their command lines (NULs as spaces).
pub fn processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            out.push((pid, cmd));
        }
    }
    out
}

/// Host pids of the processes in an instance's cgroup (`/<namespace>/<id>`), init first.
pub fn instance_pids(namespace: &str, id: &str) -> Vec<u32> {
    let needle = format!(":/{namespace}/{id}\n");
    let mut pids: Vec<(bool, u32)> = Vec::new();
    for (pid, _) in processes() {
        let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if !cg.contains(&needle) {
            continue;
        }
        let init = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .map(|v| v.split_whitespace().last() == Some("1"))
            })
            .unwrap_or(false);
        pids.push((!init, pid));
    }
    pids.sort();
    pids.into_iter().map(|(_, p)| p).collect()
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Open file descriptors of this process.
pub fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// busybox httpd with CGI scripts: `slow` (1 s), `probe?HOST+PORT` (can this instance connect
/// there: `open`/`closed`), `bomb` (makes the init process allocate 1 GiB), `fork` (fork bomb),
/// `spin?N` (burns one CPU for N seconds).
pub fn busybox_image(dir: &Path) -> PathBuf {
    let path = dir.join("busybox.tar");
    let cgi = |body: &str| {
        format!("#!/bin/busybox sh\necho 'Content-Type: text/plain'\necho\n{body}\n").into_bytes()
    };
    ImageBuilder::new()
        .file("/bin/busybox", std::fs::read("/bin/busybox").unwrap(), 0o755)
        .symlink("/bin/sh", "/bin/busybox")
        .dir("/tmp", 0o1777)
        .file("/www/index.html", b"hello from busybox\n".to_vec(), 0o644)
        .file("/www/cgi-bin/slow", cgi("/bin/busybox sleep 1\necho slow"), 0o755)
        .file(
            "/www/cgi-bin/probe",
            cgi("set -- $(echo \"$QUERY_STRING\" | /bin/busybox tr '+' ' ')\n\
                 if /bin/busybox nc -w 1 \"$1\" \"$2\" </dev/null >/dev/null 2>&1; then echo open; else echo closed; fi"),
            0o755,
        )
        .file("/www/cgi-bin/bomb", cgi("/bin/busybox touch /tmp/bomb\necho armed"), 0o755)
        .file(
            "/www/cgi-bin/fork",
            cgi("n=0\nwhile [ $n -lt 2000 ]; do /bin/busybox sleep 30 </dev/null >/dev/null 2>&1 & n=$((n+1)); done 2>/dev/null\n\
                 echo started"),
            0o755,
        )
        .file(
            "/www/cgi-bin/spin",
            cgi("/bin/busybox timeout ${QUERY_STRING:-3} /bin/busybox sh -c 'while :; do :; done'\necho spun"),
            0o755,
        )
        .cmd(["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"])
        .write_oci_archive(&path)
        .unwrap();
    path
}

/// The demo app (`serverless-hello`).
pub fn hello_image(dir: &Path) -> PathBuf {
    let path = dir.join("hello.tar");
    ImageBuilder::new()
        .executable(env!("CARGO_BIN_EXE_serverless-hello"), "/app/hello")
        .expect("package serverless-hello")
        .cmd(["/app/hello"])
        .write_oci_archive(&path)
        .unwrap();
    path
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

/// One response: status, `x-serverless-error`, headers, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub reason: String,
    pub headers: http::HeaderMap,
    pub body: String,
}

pub async fn send(
    client: &HttpClient,
    addr: std::net::SocketAddr,
    host: &str,
    method: Method,
    path: &str,
    body: &'static [u8],
) -> Result<Answer, String> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let res = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?
        .to_bytes();
    Ok(Answer::new(parts, &body))
}

impl Answer {
    pub fn new(parts: http::response::Parts, body: &[u8]) -> Self {
        Self {
            status: parts.status,
            reason: parts
                .headers
                .get(ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            headers: parts.headers,
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }
}

/// Continuous client load: `clients` tasks sending `GET path` back to back until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    pub failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: std::net::SocketAddr, host: &str, path: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
                let (host, path) = (host.to_owned(), path.to_owned());
                tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        sent.fetch_add(1, Ordering::Relaxed);
                        let r = tokio::time::timeout(
                            Duration::from_secs(30),
                            send(&client, addr, &host, Method::GET, &path, b""),
                        )
                        .await;
                        let failure = match r {
                            Err(_) => Some("no answer within 30 s".to_owned()),
                            Ok(Err(e)) => Some(e),
                            Ok(Ok(a)) if a.status != StatusCode::OK => {
                                Some(format!("{} {} {}", a.status, a.reason, a.body.trim()))
                            }
                            Ok(Ok(_)) => None,
                        };
                        if let Some(f) = failure {
                            failures.lock().unwrap().push(f);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            failures,
            tasks,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops, waits for the last requests; returns (sent, failures).
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (self.sent.load(Ordering::Relaxed), failures)
    }
}

/// A containerd of our own, a backend in a namespace of its own, and the gateway over it.
pub struct Env {
    pub gateway: Option<Gateway>,
    pub backend: Arc<ContainerdBackend>,
    pub containerd: Containerd,
    pub namespace: String,
    pub client: HttpClient,
    clean: bool,
    // Last: removed after containerd stopped.
    pub dir: tempfile::TempDir,
}

impl Env {
    /// `apps` gets the temp dir (to write images into) and returns the `[[apps]]` TOML.
    pub async fn start(apps: impl FnOnce(&Path) -> String) -> Self {
        Self::start_with("", apps).await
    }

    pub async fn start_with(top: &str, apps: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sl-rel-")
            .tempdir()
            .unwrap();
        let apps = apps(dir.path());
        let containerd = Containerd::start(dir.path());
        let namespace = unique("rel");
        let backend = Arc::new(
            ContainerdBackend::connect(&containerd.socket, &namespace, dir.path().join("data"))
                .await
                .expect("connect to the test's containerd"),
        );
        let config = Config::from_toml(&format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{top}\n{apps}"
        ))
        .unwrap();
        let gateway = Gateway::start(config, backend.clone()).await.unwrap();
        Self {
            gateway: Some(gateway),
            backend,
            containerd,
            namespace,
            client: client(),
            clean: false,
            dir,
        }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.gateway().listen_addr()
    }

    pub async fn get(&self, host: &str, path: &str) -> Result<Answer, String> {
        send(&self.client, self.addr(), host, Method::GET, path, b"").await
    }

    /// The pool's instance ids of `app`.
    pub fn instances(&self, app: &str) -> Vec<String> {
        self.gateway()
            .engine()
            .app(app)
            .map(|a| {
                a.pool
                    .snapshot()
                    .instances
                    .iter()
                    .map(|i| i.id.as_str().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The cgroup v1 directory of an instance under `controller` (`memory`, `pids`, `cpu,cpuacct`).
    pub fn cgroup(&self, controller: &str, id: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.namespace)
            .join(id)
    }

    /// A counter from the gateway's metrics, summed over lines that start with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        self.gateway()
            .engine()
            .encode_metrics()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Containers, tasks, active snapshots of our namespace and shims, as containerd shows them
    /// (without the spare shim, see [`Containerd::objects`]).
    pub fn objects(&self) -> Objects {
        self.containerd.objects(&self.namespace)
    }

    /// Graceful end: gateway shutdown, backend shutdown, then nothing may be left.
    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
        let left = self.backend.list().await.unwrap();
        assert!(left.is_empty(), "left behind: {left:?}");
        self.backend.shutdown().await.unwrap();
        let objects = self.objects();
        assert_eq!(
            objects,
            Objects::default(),
            "containerd still holds objects"
        );
        let containers = self.containerd.ctr(&self.namespace, &["containers", "ls"]);
        assert!(containers.is_empty(), "containers left: {containers:?}");
        // A shim exits right after it is told to, not always before containerd answers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.containerd.shims().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "shims left after shutdown"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.clean = true;
        self.containerd.stop();
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Objects {
    pub containers: usize,
    pub tasks: usize,
    pub snapshots: usize,
    pub shims: usize,
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.clean {
            return;
        }
        self.gateway.take();
        remove_all(
            &self.containerd.socket,
            &self.namespace,
            &self.dir.path().join("cleanup"),
        );
    }
}

/// Removes every instance of ours in `namespace` (for a test that failed before cleaning up): a
/// fresh backend on a fresh runtime shuts them down (the containerd stops and leftover shims die
/// in `Containerd::drop`).
pub fn remove_all(socket: &Path, namespace: &str, data: &Path) {
    let (socket, namespace, data) = (socket.to_owned(), namespace.to_owned(), data.to_owned());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let connect = ContainerdBackend::connect(&socket, &namespace, &data);
            match tokio::time::timeout(Duration::from_secs(20), connect).await {
                Ok(Ok(b)) => {
                    if let Err(e) = b.shutdown().await {
                        eprintln!("cleanup after a failed test: {e}");
                    }
                }
                Ok(Err(e)) => eprintln!("cleanup after a failed test: {e}"),
                Err(_) => eprintln!("cleanup after a failed test: containerd did not answer"),
            }
        })
    })
    .join();
}

/// The real `serverless` binary serving a config, as a child process (killed on drop).
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub addr: std::net::SocketAddr,
    pub stderr: Arc<Mutex<String>>,
}

impl GatewayProcess {
    pub async fn start(config: &Path) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_serverless"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start serverless");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                stderr.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.split("gateway on http://").nth(1) {
                    return rest.split_whitespace().next().and_then(|a| a.parse().ok());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("serverless did not start:\n{}", stderr.lock().unwrap()));
        let log = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Self {
            child,
            addr,
            stderr,
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            signal(pid, sig);
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}
