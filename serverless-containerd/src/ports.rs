//! Port discovery: the TCP LISTEN sockets of an instance's network namespace.
//!
//! The first choice is a `NETLINK_SOCK_DIAG` dump asking for LISTEN sockets only
//! ([`crate::sock_diag::listening`], called on a thread inside the namespace): the kernel then
//! walks only its listening hash and answers in microseconds. The fallback, for kernels without
//! `inet_diag`, is `/proc/<pid>/net/tcp` and `tcp6` ([`parse_listeners`]): any process in the
//! namespace sees its sockets there, but producing that text walks every bucket of the
//! host-wide established hash, whatever the namespace, on every poll (slow on a large host;
//! docs/src/architecture.md, "Network model", has the figure).
//!
//! This file is plain `std` code: the fuzz target compiles it in directly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One LISTEN socket found in a `/proc/net/tcp{,6}` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listener {
    /// The local address it is bound to (`0.0.0.0`, `::`, `127.0.0.1`, …).
    pub(crate) addr: IpAddr,
    /// The local port.
    pub(crate) port: u16,
}

impl Listener {
    /// The loopback address to dial to reach this listener from inside its namespace.
    pub(crate) fn dial_addr(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // `::ffff:a.b.c.d` is an IPv4 address seen through a dual-stack socket.
                Some(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                None => IpAddr::V6(Ipv6Addr::LOCALHOST),
            },
        }
    }
}

/// The TCP state number of LISTEN in the kernel's tables.
const TCP_LISTEN: &str = "0A";

/// Parses the text of `/proc/<pid>/net/tcp` or `/proc/<pid>/net/tcp6` and returns its LISTEN
/// sockets, in table order. Lines that are not well-formed socket lines (the header, garbage,
/// truncated reads) are skipped; the function never panics.
pub(crate) fn parse_listeners(table: &str) -> Vec<Listener> {
    table.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Listener> {
    // `  sl  local_address rem_address   st tx_queue:rx_queue ...`
    // `   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 ...`
    let mut fields = line.split_ascii_whitespace();
    let row_number = fields.next()?;
    if !row_number.ends_with(':') {
        return None;
    }
    let local = fields.next()?;
    let _remote = fields.next()?;
    let state = fields.next()?;
    if !state.eq_ignore_ascii_case(TCP_LISTEN) {
        return None;
    }
    let (addr, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let addr = parse_addr(addr)?;
    Some(Listener { addr, port })
}

/// Kernel addresses are printed as 32-bit words in host byte order, each as 8 hex digits.
fn parse_addr(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let words = |n: usize| -> Option<Vec<[u8; 4]>> {
        (0..n)
            .map(|i| {
                let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
                // The kernel printed the word it holds in memory (network order bytes) as a
                // native integer: converting back with native order restores the bytes.
                Some(w.to_ne_bytes())
            })
            .collect()
    };
    match hex.len() {
        8 => {
            let w = words(1)?;
            Some(IpAddr::V4(Ipv4Addr::from(w[0])))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, w) in words(4)?.into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// Picks the port to use among the listeners: `preferred` (the app's `PORT`) when it is one of
/// them, otherwise the lowest port.
pub(crate) fn choose(listeners: &[Listener], preferred: u16) -> Option<Listener> {
    listeners
        .iter()
        .find(|l| l.port == preferred)
        .or_else(|| listeners.iter().min_by_key(|l| l.port))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1435 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 1236 1 0000000000000000 20 4 30 10 -1
";

    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1435 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 98 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 97 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn finds_ipv4_listeners_only_in_listen_state() {
        let l = parse_listeners(TCP);
        assert_eq!(
            l,
            vec![
                Listener {
                    addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    port: 8080
                },
                Listener {
                    addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port: 5173
                },
            ]
        );
    }

    #[test]
    fn finds_ipv6_listeners() {
        let l = parse_listeners(TCP6);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].addr, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(l[0].port, 5173);
        assert_eq!(l[1].addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(l[1].port, 80);
        assert_eq!(l[1].dial_addr(), IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(
            l[2].addr,
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            "v4-mapped"
        );
        assert_eq!(l[2].dial_addr(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(l[0].dial_addr(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn prefers_port_then_lowest() {
        let l = parse_listeners(TCP);
        assert_eq!(choose(&l, 8080).map(|l| l.port), Some(8080));
        assert_eq!(choose(&l, 9999).map(|l| l.port), Some(5173));
        assert_eq!(choose(&[], 8080), None);
    }

    #[test]
    fn skips_garbage_without_panicking() {
        for junk in [
            "",
            "\n\n",
            "0: 00000000:1F90",
            "0: 00000000:1F90 00000000:0000",
            "0: 0000000:1F90 00000000:0000 0A",
            "0: 00000000:1F9G 00000000:0000 0A",
            "0: 00000000:11F90 00000000:0000 0A",
            "0: zzzzzzzz:1F90 00000000:0000 0A",
            "0: 00000000 00000000:0000 0A",
            "0: é0000000:1F90 00000000:0000 0A",
            "0: 000000000000000000000000000000é:1F90 0:0 0A",
            "00000000:1F90 00000000:0000 0A",
            "   0: 00000000:1F90 00000000:0000 0A",
        ] {
            let _ = parse_listeners(junk);
        }
        // A truncated read keeps the complete lines before it.
        let cut = &TCP[..TCP.len() - 60];
        assert_eq!(parse_listeners(cut).len(), 2);
    }
}
