//! TCP LISTEN sockets of the calling thread's network namespace, from the kernel's
//! `NETLINK_SOCK_DIAG` interface (see [`crate::ports`] for why not `/proc/net/tcp`).

use std::io;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::TimeVal;

use crate::ports::Listener;

/// How long a sock_diag dump may take before the query fails (the kernel answers at once; this
/// only bounds a broken kernel).
const DUMP_TIMEOUT: Duration = Duration::from_secs(1);

/// Lists the TCP LISTEN sockets (IPv4 and IPv6) of the calling thread's network namespace with
/// `NETLINK_SOCK_DIAG` dumps. Blocking, but only for the kernel's answer (bounded by
/// [`DUMP_TIMEOUT`]). Fails when the kernel has no `inet_diag` support.
pub(crate) fn listening() -> io::Result<Vec<Listener>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    setsockopt(
        &socket,
        ReceiveTimeout,
        &TimeVal::new(
            DUMP_TIMEOUT.as_secs().try_into().unwrap_or(1),
            DUMP_TIMEOUT.subsec_micros().into(),
        ),
    )?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut found = Vec::new();
    let mut buf = Vec::with_capacity(32 * 1024);
    for family in [AF_INET, AF_INET6] {
        dump(&socket, family, &mut buf, &mut found)?;
    }
    Ok(found)
}

/// One `SOCK_DIAG_BY_FAMILY` dump of `family`'s TCP sockets in state LISTEN.
fn dump(
    socket: &Socket,
    family: u8,
    buf: &mut Vec<u8>,
    found: &mut Vec<Listener>,
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    buf.clear();
    buf.resize(request.buffer_len(), 0);
    request.serialize(buf);
    socket.send(buf, 0)?;
    loop {
        buf.clear();
        let len = socket.recv(buf, 0)?.min(buf.len());
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag dump ended without its done message",
            ));
        }
        if read_dump(&buf[..len], found)? {
            return Ok(());
        }
    }
}

/// Reads the messages of one datagram of a LISTEN dump into `found`. True once the dump's done
/// message was seen.
fn read_dump(mut datagram: &[u8], found: &mut Vec<Listener>) -> io::Result<bool> {
    while !datagram.is_empty() {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(datagram)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r))
                if r.header.state == netlink_packet_sock_diag::constants::TCP_LISTEN =>
            {
                found.push(Listener {
                    addr: r.header.socket_id.source_address,
                    port: r.header.socket_id.source_port,
                });
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
            _ => {}
        }
        // Messages are 4-byte aligned within a datagram.
        let step = (message.header.length as usize + 3) & !3;
        if step == 0 {
            break;
        }
        datagram = datagram.get(step..).unwrap_or_default();
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};

    use super::*;

    #[test]
    fn lists_the_listeners_of_this_namespace_and_not_connections() {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let v4_port = v4.local_addr().expect("addr").port();
        // IPv6 may be off on a CI host: only checked when the bind works.
        let v6 = TcpListener::bind("[::1]:0").ok();
        let client = TcpStream::connect(("127.0.0.1", v4_port)).expect("connect");
        let client_port = client.local_addr().expect("addr").port();

        let found = listening().expect("sock_diag dump");
        assert!(
            found.contains(&Listener {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: v4_port
            }),
            "{found:?}"
        );
        if let Some(v6) = v6 {
            let port = v6.local_addr().expect("addr").port();
            assert!(
                found.contains(&Listener {
                    addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    port
                }),
                "{found:?}"
            );
        }
        assert!(
            !found.iter().any(|l| l.port == client_port),
            "an established connection is not a listener: {found:?}"
        );

        drop(v4);
        let found = listening().expect("sock_diag dump");
        assert!(!found.iter().any(|l| l.port == v4_port), "{found:?}");
    }

    #[test]
    fn a_datagram_that_is_not_netlink_is_an_error_not_a_panic() {
        let mut found = Vec::new();
        for junk in [&[1u8, 2, 3][..], &[0xff; 16][..], &[16, 0, 0, 0, 3, 0][..]] {
            assert!(read_dump(junk, &mut found).is_err(), "{junk:?}");
        }
        assert!(found.is_empty());
    }
}
