//! Hand-over of the listening sockets from a running gateway to its successor (an upgrade).
//!
//! A serving gateway listens on `<data_dir>/control.sock`. A new `serverless serve` on the same
//! `data_dir` connects to it first: when it answers, the new process gets everything ready
//! (containerd, images, adopted instances), then writes `takeover\n`; the old one answers with
//! one byte and both listening sockets (the gateway's, then the admin API's) as `SCM_RIGHTS`,
//! stops accepting, lets its in-flight requests finish and exits without stopping the
//! instances or the embedded containerd. Its end of the control connection closes when it
//! exits: the new process then removes what the old one left that it did not adopt
//! (reconcile), and starts answering on the control socket itself, for the next upgrade.
//!
//! The listening sockets never close in between, so a connection arriving during the upgrade
//! waits in their backlog for whichever process accepts next: none is refused.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// What the new process writes to ask for the sockets.
const REQUEST: &[u8] = b"takeover\n";

/// The control socket of the gateway serving `data_dir`.
pub(crate) fn control_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// A running gateway on the same data dir, found by [`predecessor`].
#[derive(Debug)]
pub(crate) struct Predecessor {
    stream: UnixStream,
}

/// The gateway serving `data_dir`, if one answers on its control socket.
pub(crate) fn predecessor(data_dir: &Path) -> Option<Predecessor> {
    let stream = UnixStream::connect(control_path(data_dir)).ok()?;
    Some(Predecessor { stream })
}

impl Predecessor {
    /// Asks for the listening sockets: (gateway, admin). The old process stops accepting once
    /// it has sent them.
    pub(crate) async fn take_listeners(&self) -> std::io::Result<(TcpListener, TcpListener)> {
        let mut stream = self.stream.try_clone()?;
        tokio::task::spawn_blocking(move || {
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(REQUEST)?;
            let mut byte = [0u8; 1];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            recvmsg(
                &stream,
                &mut [IoSliceMut::new(&mut byte)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            let mut fds: Vec<OwnedFd> = Vec::new();
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            let mut fds = fds.into_iter();
            match (fds.next(), fds.next()) {
                (Some(gateway), Some(admin)) => Ok((gateway.into(), admin.into())),
                _ => Err(std::io::Error::other(
                    "the running gateway sent no listening sockets",
                )),
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Resolves when the old process has exited (its end of the control connection closed).
    pub(crate) async fn exited(self) {
        let mut stream = self.stream;
        let _ = tokio::task::spawn_blocking(move || {
            let _ = stream.set_read_timeout(None);
            let mut buf = [0u8; 64];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// The control socket of a serving gateway: [`next`](Self::next) resolves when a successor
/// asks for the listening sockets.
#[derive(Debug)]
pub(crate) struct ControlSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Listens on `data_dir`'s control socket (a stale file of a dead gateway is replaced).
    pub(crate) fn bind(data_dir: &Path) -> std::io::Result<Self> {
        let path = control_path(data_dir);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener: tokio::net::UnixListener::from_std(listener)?,
            path,
        })
    }

    /// The next successor that asked for the listening sockets (a connection that asks for
    /// something else is closed). Keep the returned stream until this process exits: its
    /// closing tells the successor that this one is gone.
    pub(crate) async fn next(&self) -> UnixStream {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            let asked = tokio::task::spawn_blocking(move || {
                stream.set_nonblocking(false)?;
                let mut request = [0u8; REQUEST.len()];
                (&stream).read_exact(&mut request)?;
                Ok::<_, std::io::Error>((request == REQUEST).then_some(stream))
            })
            .await;
            if let Ok(Ok(Some(stream))) = asked {
                return stream;
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends the listening sockets (gateway, admin) to the successor on `stream`.
pub(crate) fn send_listeners(
    stream: &UnixStream,
    gateway: BorrowedFd<'_>,
    admin: BorrowedFd<'_>,
) -> std::io::Result<()> {
    let fds = [gateway.as_fd(), admin.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("the control message does not fit"));
    }
    sendmsg(
        stream,
        &[IoSlice::new(b"L")],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}
