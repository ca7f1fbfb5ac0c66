//! An instance's output, copied into its log file by us.
//!
//! The task's stdout and stderr are two FIFOs (containerd's default `fifo` stdio): the shim
//! copies the process's pipes into them and we copy both into the log file, one writer, so the
//! lines of both streams land whole and in arrival order. (containerd 1.6's `file://` stdio —
//! the shim writing the file itself — shares one file between the two streams and closes it
//! when stdout ends: stderr written after that is lost.) When both FIFOs reach end of file the
//! shim has delivered everything: the receiver [`LogFifos::copy`] returns resolves, so a boot
//! failure's last log lines are complete without guessing from file sizes. [`tail`] reads them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;

/// The FIFOs of one task, made and opened for reading before the task is created (the shim's
/// open for writing blocks until a reader exists).
pub(crate) struct LogFifos {
    /// `stdout` and `stderr` for the task's create request.
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    out: pipe::Receiver,
    err: pipe::Receiver,
    log: PathBuf,
}

impl LogFifos {
    /// Makes the FIFOs `<log>.out` and `<log>.err` next to `log` and opens their read ends.
    pub(crate) fn open(log: &Path) -> std::io::Result<Self> {
        let out = fifo_path(log, "out");
        let err = fifo_path(log, "err");
        Ok(Self {
            out: open_fifo(&out)?,
            err: open_fifo(&err)?,
            stdout: out.display().to_string(),
            stderr: err.display().to_string(),
            log: log.to_owned(),
        })
    }

    /// Starts copying into the log file, once the task exists (the shim holds the write ends
    /// then; before, a read would see end of file).
    pub(crate) fn copy(self) -> watch::Receiver<bool> {
        let (tx, done) = watch::channel(false);
        let Self { out, err, log, .. } = self;
        tokio::spawn(async move {
            match tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .await
            {
                Ok(mut file) => {
                    let mut out = Stream::new(out);
                    let mut err = Stream::new(err);
                    while out.open || err.open {
                        let from_out = tokio::select! {
                            () = out.read(), if out.open => true,
                            () = err.read(), if err.open => false,
                        };
                        let chunk = if from_out { out.chunk() } else { err.chunk() };
                        if let Err(error) = file.write_all(chunk).await {
                            tracing::warn!(log = %log.display(), %error, "writing an instance's log failed");
                        }
                    }
                    let _ = file.flush().await;
                }
                Err(error) => {
                    tracing::warn!(log = %log.display(), %error, "opening an instance's log failed");
                }
            }
            let _ = tx.send(true);
        });
        done
    }
}

impl LogFifos {
    /// Opens the read ends of the FIFOs a previous gateway made for a task that still runs (an
    /// adopted instance), to copy on into the same log file.
    pub(crate) fn reopen(log: &Path) -> std::io::Result<Self> {
        let out = fifo_path(log, "out");
        let err = fifo_path(log, "err");
        let open = |p: &Path| pipe::OpenOptions::new().open_receiver(p);
        Ok(Self {
            out: open(&out)?,
            err: open(&err)?,
            stdout: out.display().to_string(),
            stderr: err.display().to_string(),
            log: log.to_owned(),
        })
    }
}

/// Waits (at most `limit`) until everything the task wrote is in its log file.
pub(crate) async fn copied(mut done: watch::Receiver<bool>, limit: Duration) -> bool {
    tokio::time::timeout(limit, done.wait_for(|d| *d))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// The last `max` bytes of a log file, starting at a line boundary.
pub(crate) async fn tail(path: &Path, max: u64) -> std::io::Result<String> {
    use tokio::io::AsyncSeekExt;
    let mut f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    let start = len.saturating_sub(max);
    f.seek(std::io::SeekFrom::Start(start)).await?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).await?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        if let Some(nl) = text.find('\n') {
            text.drain(..=nl);
        }
    }
    Ok(text)
}

/// Removes the FIFOs of `log` (after the task is gone).
pub(crate) fn remove_fifos(log: &Path) {
    for which in ["out", "err"] {
        let _ = std::fs::remove_file(fifo_path(log, which));
    }
}

fn fifo_path(log: &Path, which: &str) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".");
    name.push(which);
    PathBuf::from(name)
}

fn open_fifo(path: &Path) -> std::io::Result<pipe::Receiver> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    pipe::OpenOptions::new().open_receiver(path)
}

/// One FIFO being read: `open` until its writer closed it.
struct Stream {
    rx: pipe::Receiver,
    buf: Vec<u8>,
    len: usize,
    open: bool,
}

impl Stream {
    fn new(rx: pipe::Receiver) -> Self {
        Self {
            rx,
            buf: vec![0; 8192],
            len: 0,
            open: true,
        }
    }

    /// Reads the next chunk; at end of file (or on an error) the stream is closed and the
    /// chunk is empty.
    async fn read(&mut self) {
        match self.rx.read(&mut self.buf).await {
            Ok(0) | Err(_) => {
                self.open = false;
                self.len = 0;
            }
            Ok(n) => self.len = n,
        }
    }

    fn chunk(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}
