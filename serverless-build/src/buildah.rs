//! [`Buildah`]: builds with Debian's `buildah` as a subprocess, then exports the image as an
//! OCI archive.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::event::StepTracker;
use crate::{BuildError, BuildEvent, BuildRequest, Builder, Built};

/// How `buildah` runs a `RUN` step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Isolation {
    /// A runc container per `RUN` (`--isolation oci`), with no network (`--network none`), the
    /// memory and CPU limits, runc's default seccomp filter and capability set. The default.
    #[default]
    Oci,
    /// `chroot` plus mount, PID, UTS and IPC namespaces (`--isolation chroot`): no runc needed,
    /// but the step shares the host's network (it can reach loopback services) and no cgroup
    /// limit applies. For hosts without runc only.
    Chroot,
}

/// Builds with `buildah build` (Debian's buildah 1.28 here), keeping its image store and layer
/// cache under one folder of the engine's, and writes the result with `buildah push … oci-archive:`.
///
/// # Sandbox
///
/// With the default [`Isolation::Oci`] every `RUN` step is a runc container: its own mount, PID,
/// IPC, UTS and network namespaces, **no network at all** (so no access to the gateway's or the
/// admin API's ports, nor anything else), runc's default seccomp filter and reduced capability
/// set, and a memory limit ([`memory`](Self::memory), default 2 GiB) and optional CPU quota
/// ([`cpus`](Self::cpus)). Not isolated: steps run as root without a user namespace (like
/// `docker build`), the build's disk use is bounded only by the image size cap checked after the
/// build ([`max_image_bytes`](Self::max_image_bytes)), and base images are fetched by buildah
/// itself with the host's network (`FROM` of a registry, or of a local `oci-archive:`).
///
/// The whole build is bounded by the request's `timeout`: past it the buildah process group is
/// killed and its working containers removed.
#[derive(Debug, Clone)]
pub struct Buildah {
    program: PathBuf,
    dir: PathBuf,
    isolation: Isolation,
    memory: Option<u64>,
    millicpu: Option<u32>,
    max_image_bytes: u64,
    tail_lines: usize,
}

/// Makes the names of temporary files unique within the process.
static NEXT: AtomicU64 = AtomicU64::new(0);

impl Buildah {
    /// A builder keeping its storage (images, layer cache) under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            program: PathBuf::from("buildah"),
            dir: dir.into(),
            isolation: Isolation::default(),
            memory: Some(2 << 30),
            millicpu: None,
            max_image_bytes: 4 << 30,
            tail_lines: 20,
        }
    }

    /// The `buildah` program to run (default: `buildah` on `PATH`).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// How `RUN` steps are isolated (default [`Isolation::Oci`]).
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Memory limit of each `RUN` step, in bytes (default 2 GiB; `None` = no limit).
    pub fn memory(mut self, bytes: Option<u64>) -> Self {
        self.memory = bytes;
        self
    }

    /// CPU quota of each `RUN` step, in thousandths of a vCPU (default `None`: no quota).
    pub fn cpus(mut self, millicpu: Option<u32>) -> Self {
        self.millicpu = millicpu;
        self
    }

    /// Largest image allowed, as an archive (default 4 GiB).
    pub fn max_image_bytes(mut self, bytes: u64) -> Self {
        self.max_image_bytes = bytes;
        self
    }

    /// The folder buildah keeps its images and layer cache in.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// `buildah --root … --runroot … --storage-driver overlay`, with temp files (and the `RUN`
    /// steps' runc bundles) under `tmp`.
    fn command_in(&self, tmp: &Path) -> Command {
        let mut cmd = self.command();
        cmd.env("TMPDIR", tmp);
        cmd
    }

    /// `buildah --root … --runroot … --storage-driver overlay`.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--root")
            .arg(self.storage_dir())
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "overlay"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    fn build_args(&self, request: &BuildRequest, iidfile: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["build".into(), "--layers".into(), "--force-rm".into()];
        match self.isolation {
            Isolation::Oci => {
                args.extend(["--isolation", "oci", "--network", "none"].map(OsString::from));
                if let Some(m) = self.memory {
                    args.extend(["--memory".into(), m.to_string().into()]);
                }
                if let Some(c) = self.millicpu {
                    args.extend([
                        "--cpu-period".into(),
                        "100000".into(),
                        "--cpu-quota".into(),
                        (u64::from(c) * 100).to_string().into(),
                    ]);
                }
            }
            Isolation::Chroot => {
                args.extend(["--isolation", "chroot"].map(OsString::from));
            }
        }
        args.push("-f".into());
        args.push(request.dockerfile_path().into());
        if let Some(target) = &request.target {
            args.extend(["--target".into(), target.into()]);
        }
        for (k, v) in &request.args {
            args.extend(["--build-arg".into(), format!("{k}={v}").into()]);
        }
        args.push("--iidfile".into());
        args.push(iidfile.into());
        args.extend(["-t".into(), request.tag.clone().into()]);
        args.push(request.context.clone().into());
        args
    }

    /// Removes the runc containers of a killed build's `RUN` steps (state and cgroups; their
    /// bundles are under `tmp`); its working containers go with [`Self::clean_up_failed`].
    async fn clean_up_killed(&self, tmp: &Path) {
        let runc = Command::new("runc")
            .arg("list")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .await;
        if let Ok(out) = runc {
            for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if let [id, _pid, _status, bundle, ..] = cols[..] {
                    if Path::new(bundle).starts_with(tmp) {
                        let _ = Command::new("runc")
                            .args(["delete", "--force", id])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .await;
                    }
                }
            }
        }
    }

    /// An exclusive `flock` on `DIR/build.lock`, held until dropped.
    async fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, BuildError> {
        let path = self.dir.join("build.lock");
        tokio::task::spawn_blocking(move || {
            let io = |source| BuildError::Io {
                path: path.clone(),
                source,
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io)?;
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, errno)| io(std::io::Error::from(errno)))
        })
        .await
        .map_err(|e| BuildError::Io {
            path: self.dir.join("build.lock"),
            source: std::io::Error::other(e),
        })?
    }

    /// Removes the working containers (and their mounts) a failed build left: with `--force-rm`
    /// buildah removes most, but not one whose commit failed.
    async fn clean_up_failed(&self) {
        let _ = self
            .command()
            .args(["rm", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    /// `buildah push IMAGE oci-archive:TMP`, then renamed onto `output` when within the cap.
    async fn export(
        &self,
        image_id: &str,
        output: &Path,
        tmp_dir: &Path,
    ) -> Result<u64, BuildError> {
        let tmp = temp_name(output, "tmp");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BuildError::Io { path, source }
        };
        if let Some(parent) = output.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io(parent))?;
        }
        let mut dest = OsString::from("oci-archive:");
        dest.push(&tmp);
        dest.push(":latest");
        let out = self
            .command_in(tmp_dir)
            .args(["push", "--quiet"])
            .arg(image_id)
            .arg(&dest)
            .output()
            .await
            .map_err(|source| self.spawn_error(source))?;
        if !out.status.success() {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(BuildError::Export {
                path: output.to_owned(),
                message: last_error(&String::from_utf8_lossy(&out.stderr)),
            });
        }
        let bytes = tokio::fs::metadata(&tmp).await.map_err(io(&tmp))?.len();
        if bytes > self.max_image_bytes {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(BuildError::TooLarge {
                bytes,
                max: self.max_image_bytes,
            });
        }
        tokio::fs::rename(&tmp, output).await.map_err(io(output))?;
        Ok(bytes)
    }

    fn spawn_error(&self, source: std::io::Error) -> BuildError {
        BuildError::Spawn {
            program: self.program.display().to_string(),
            source,
        }
    }
}

#[async_trait::async_trait]
impl Builder for Buildah {
    async fn build(
        &self,
        request: &BuildRequest,
        events: &mut (dyn FnMut(BuildEvent) + Send),
    ) -> Result<Built, BuildError> {
        if !tokio::fs::metadata(&request.context)
            .await
            .is_ok_and(|m| m.is_dir())
        {
            return Err(BuildError::NoContext {
                path: request.context.clone(),
            });
        }
        let dockerfile = request.dockerfile_path();
        if !tokio::fs::metadata(&dockerfile)
            .await
            .is_ok_and(|m| m.is_file())
        {
            return Err(BuildError::NoDockerfile { path: dockerfile });
        }
        let tmp = temp_name(&self.dir.join("tmp").join("build"), "d");
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|source| BuildError::Io {
                path: tmp.clone(),
                source,
            })?;
        // One build at a time per storage (also across processes): a failed build's working
        // containers can then be removed without touching another build's.
        let _lock = self.lock().await?;
        let result = self.build_in(request, &tmp, &dockerfile, events).await;
        if result.is_err() {
            self.clean_up_failed().await;
        }
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        result
    }
}

impl Buildah {
    /// The build, with its temp files under `tmp` (removed by the caller).
    async fn build_in(
        &self,
        request: &BuildRequest,
        tmp: &Path,
        dockerfile: &Path,
        events: &mut (dyn FnMut(BuildEvent) + Send),
    ) -> Result<Built, BuildError> {
        let started = Instant::now();
        let iidfile = tmp.join("iid");
        let mut child = self
            .command_in(tmp)
            .args(self.build_args(request, &iidfile))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        let (tx, mut rx) = mpsc::channel::<String>(64);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, tx));
        }
        let deadline = started + request.timeout;
        let mut tracker = StepTracker::default();
        let mut tail = VecDeque::with_capacity(self.tail_lines);
        let mut error_line = None;
        let timed_out = loop {
            tokio::select! {
                line = rx.recv() => {
                    let Some(line) = line else { break false };
                    if let Some(message) = line.strip_prefix("Error: ") {
                        error_line = Some(message.to_owned());
                        continue;
                    }
                    if line.starts_with("time=") {
                        // buildah's own log lines (retries, warnings): not the step's output.
                        tracing::debug!(line, "buildah");
                        continue;
                    }
                    for event in tracker.line(&line) {
                        if let BuildEvent::StepStarted(_) = &event {
                            // The tail of an error is the failed step's own output.
                            tail.clear();
                        }
                        if let BuildEvent::Output(text) = &event {
                            if tail.len() == self.tail_lines {
                                tail.pop_front();
                            }
                            tail.push_back(text.clone());
                        }
                        events(event);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break true,
            }
        };
        if timed_out {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                kill_tree(pid);
            }
            let _ = child.wait().await;
            self.clean_up_killed(tmp).await;
            return Err(BuildError::TimedOut {
                after: request.timeout,
                step: tracker.current().map(ToString::to_string),
            });
        }
        let status = child
            .wait()
            .await
            .map_err(|source| self.spawn_error(source))?;
        let failed_step = tracker.current().map(ToString::to_string);
        if let Some(event) = tracker.finish() {
            events(event);
        }
        if !status.success() {
            let tail: Vec<String> = tail
                .into_iter()
                .filter(|l| !l.starts_with("subprocess exited with status"))
                .collect();
            let message = error_line.unwrap_or_else(|| format!("buildah {status}"));
            return Err(classify(&message, failed_step, tail, dockerfile).await);
        }
        let image_id = tokio::fs::read_to_string(&iidfile)
            .await
            .map_err(|source| BuildError::Io {
                path: iidfile.clone(),
                source,
            })?;
        let image_id = image_id.trim().trim_start_matches("sha256:").to_owned();
        self.export(&image_id, &request.output, tmp).await?;
        Ok(Built {
            image_id,
            archive: request.output.clone(),
            steps: tracker.finished,
            elapsed: started.elapsed(),
        })
    }
}

/// SIGKILLs `root`'s process group and every descendant of `root`: a `RUN` step's processes
/// are runc containers under buildah, in their own PID namespace (so signals to the group do
/// not reach them, and their PID 1 ignores SIGTERM).
fn kill_tree(root: i32) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    let mut children: std::collections::HashMap<i32, Vec<i32>> = std::collections::HashMap::new();
    if let Ok(all) = procfs::process::all_processes() {
        for p in all.flatten() {
            if let Ok(stat) = p.stat() {
                children.entry(stat.ppid).or_default().push(stat.pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children.get(&tree[i]).into_iter().flatten());
        i += 1;
    }
    let _ = killpg(Pid::from_raw(root), Signal::SIGKILL);
    for pid in tree {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Sends each line of `reader` (lossy UTF-8) until it ends.
async fn forward_lines(reader: impl AsyncRead + Unpin, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                if tx.send(line.trim_end().to_owned()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The error for buildah's `Error: …` line: a syntax error (with its Dockerfile line), a failed
/// step, or a failure outside any step.
async fn classify(
    message: &str,
    step: Option<String>,
    tail: Vec<String>,
    dockerfile: &Path,
) -> BuildError {
    if let Some(rest) = message.split("Unknown instruction: \"").nth(1) {
        let word = rest.split('"').next().unwrap_or_default().to_owned();
        let text = tokio::fs::read_to_string(dockerfile)
            .await
            .unwrap_or_default();
        let line = text.lines().position(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(&word))
        });
        return BuildError::Syntax {
            path: dockerfile.to_owned(),
            line: line.map(|i| i + 1),
            message: format!("unknown instruction {word}"),
        };
    }
    if let Some(rest) = message.strip_prefix("building at STEP \"") {
        let reason = rest.split_once("\": ").map_or(rest, |(_, r)| r);
        return BuildError::StepFailed {
            step: step.unwrap_or_else(|| rest.split('"').next().unwrap_or_default().to_owned()),
            message: reason.to_owned(),
            tail,
        };
    }
    match step {
        Some(step) => BuildError::StepFailed {
            step,
            message: message.to_owned(),
            tail,
        },
        None => BuildError::Failed {
            message: message.to_owned(),
            tail,
        },
    }
}

/// The last `Error: …` line of buildah's stderr, else its last line.
fn last_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("Error: "))
        .or(lines.last().copied())
        .unwrap_or("no output")
        .to_owned()
}

/// `path` with a unique suffix and `ext`, next to it.
fn temp_name(path: &Path, ext: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(format!(".{}-{n}.{ext}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{classify, last_error};
    use crate::BuildError;

    #[tokio::test]
    async fn buildah_errors_become_one_line_causes() {
        let df = Path::new("/nonexistent/Dockerfile");
        let e = classify(
            "building at STEP \"RUN exit 3\": exit status 3",
            Some("STEP 2/2: RUN exit 3".into()),
            vec!["line1".into(), "oops".into()],
            df,
        )
        .await;
        assert_eq!(
            e.to_string(),
            "build failed at STEP 2/2: RUN exit 3: exit status 3; last output: line1 | oops"
        );
        let e = classify(
            "COPY --from=nostage: no stage or image found with that name",
            None,
            vec![],
            df,
        )
        .await;
        assert!(matches!(e, BuildError::Failed { .. }), "{e}");
        let e = classify("building at STEP \"RUNN \": Build error: Unknown instruction: \"RUNN\" &imagebuilder.Step{}", None, vec![], df).await;
        assert_eq!(
            e.to_string(),
            "Dockerfile /nonexistent/Dockerfile: unknown instruction RUNN"
        );
    }

    #[test]
    fn last_error_line() {
        assert_eq!(last_error("a\nError: b\n\n"), "b");
        assert_eq!(last_error("a\nc\n"), "c");
        assert_eq!(last_error(""), "no output");
    }
}
