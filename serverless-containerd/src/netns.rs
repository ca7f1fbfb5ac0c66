//! Dialing into an instance's network namespace.
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole life.
//! Each instance gets one small helper thread that joined the instance's namespace with
//! `setns(2)` once; connecting means asking that thread for a fresh socket (a channel round
//! trip and a `socket(2)` call) and connecting it from the async caller to the loopback port.
//! The same thread answers port discovery's sock_diag queries, which must also be made from a
//! socket inside the namespace.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;

use nix::sched::{setns, CloneFlags};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

use crate::ports::Listener;
use crate::sock_diag;

enum Request {
    /// A new TCP socket, IPv6 when true.
    Socket(bool, oneshot::Sender<io::Result<TcpSocket>>),
    /// The namespace's TCP LISTEN sockets.
    Listeners(oneshot::Sender<io::Result<Vec<Listener>>>),
}

/// Makes sockets inside one network namespace. Dropping it ends the helper thread.
pub(crate) struct Dialer {
    requests: mpsc::Sender<Request>,
}

impl Dialer {
    /// Joins the network namespace of `pid` on a new helper thread.
    pub(crate) async fn spawn(pid: u32, name: &str) -> io::Result<Self> {
        let netns = File::open(format!("/proc/{pid}/ns/net"))?;
        let (requests, incoming) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!(
                "netns-{}",
                name.chars().take(9).collect::<String>()
            ))
            .stack_size(128 * 1024)
            .spawn(move || {
                if let Err(e) = setns(&netns, CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(io::Error::from(e)));
                    return;
                }
                // The thread now holds the namespace; the file is no longer needed.
                drop(netns);
                let _ = ready_tx.send(Ok(()));
                for request in incoming {
                    match request {
                        Request::Socket(v6, reply) => {
                            let socket = if v6 {
                                TcpSocket::new_v6()
                            } else {
                                TcpSocket::new_v4()
                            };
                            let _ = reply.send(socket);
                        }
                        Request::Listeners(reply) => {
                            let _ = reply.send(sock_diag::listening());
                        }
                    }
                }
            })?;
        ready_rx
            .await
            .map_err(|_| io::Error::other("netns helper thread ended"))??;
        Ok(Self { requests })
    }

    /// Connects to `addr` (a loopback address) inside the namespace.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = self
            .ask(|reply| Request::Socket(addr.is_ipv6(), reply))
            .await?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// The TCP LISTEN sockets of the namespace (see [`sock_diag::listening`]).
    pub(crate) async fn listeners(&self) -> io::Result<Vec<Listener>> {
        self.ask(Request::Listeners).await
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<io::Result<T>>) -> Request,
    ) -> io::Result<T> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .map_err(|_| io::Error::other("netns helper thread ended"))?;
        answer
            .await
            .map_err(|_| io::Error::other("netns helper thread ended"))?
    }
}
