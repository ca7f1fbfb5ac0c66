//! The header rewrite between client and instance: hop-by-hop headers removed both ways
//! (RFC 9110 §7.6.1), upgrades recognised, and `x-forwarded-for`, `x-forwarded-proto` and
//! `forwarded` appended.

use std::cell::RefCell;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::client::ClientInfo;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Which of the headers that rewriting a request looks at it carries: found in one pass over
/// its names (a request has few) instead of a hashed lookup for each.
#[derive(Debug, Default)]
pub(super) struct PresentHeaders {
    pub(super) host: bool,
    pub(super) hop_by_hop: bool,
    pub(super) x_forwarded_for: bool,
    pub(super) forwarded: bool,
}

impl PresentHeaders {
    pub(super) fn scan(headers: &HeaderMap) -> Self {
        let mut present = Self::default();
        for name in headers.keys() {
            if name == header::HOST {
                present.host = true;
            } else if name == X_FORWARDED_FOR {
                present.x_forwarded_for = true;
            } else if name == header::FORWARDED {
                present.forwarded = true;
            } else if is_hop_by_hop(name) {
                present.hop_by_hop = true;
            }
        }
        present
    }
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` + `Upgrade: X`).
pub(super) fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    // `Upgrade: h2c` (RFC 7540 §3.2, removed in RFC 9113) is not tunnelled: the request goes on
    // as HTTP/1.1, which the upgrade mechanism allows; clients use prior knowledge for h2c.
    headers
        .get(header::UPGRADE)
        .filter(|p| asks && !p.as_bytes().eq_ignore_ascii_case(b"h2c"))
        .cloned()
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names, and
/// the classic list. `TE: trailers` is kept (gRPC needs it end to end).
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of a lookup per name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ] {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Writes an IP address as text (IPv4 by hand: this runs for every request).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// A header value built here (only visible ASCII and spaces, so always valid): one allocation.
fn built_value(bytes: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(bytes).ok()
}

/// The `x-forwarded-for` and `forwarded` values built for a request without earlier hops.
type ForwardingValues = (Option<HeaderValue>, Option<HeaderValue>);

/// The forwarding values built for the last request without earlier hops, and what they were
/// built from.
struct ForwardingMemo {
    ip: IpAddr,
    tls: bool,
    host: Option<Vec<u8>>,
    values: ForwardingValues,
}

thread_local! {
    /// Consecutive requests mostly come from one client for one host (a keep-alive
    /// connection): they share their forwarding values instead of formatting and allocating
    /// their own.
    static FORWARDING_MEMO: RefCell<Option<ForwardingMemo>> = const { RefCell::new(None) };
}

/// Appends the client to `x-forwarded-for` and `forwarded`, sets `x-forwarded-proto`.
/// `present`: which of them (and `Host`) the request has.
pub(super) fn add_forwarded(headers: &mut HeaderMap, info: ClientInfo, present: &PresentHeaders) {
    let ip = info.addr.ip();
    // Only a host that fits in a quoted string without escapes is passed on in `forwarded`.
    let host = headers
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .filter(|h| {
            h.iter()
                .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        });
    let prev = |present: bool, name: HeaderName| {
        present
            .then(|| headers.get(name))
            .flatten()
            .map(HeaderValue::as_bytes)
    };
    let prev_xff = prev(present.x_forwarded_for, X_FORWARDED_FOR);
    let prev_forwarded = prev(present.forwarded, header::FORWARDED);
    let (xff, forwarded) = if prev_xff.is_none() && prev_forwarded.is_none() {
        FORWARDING_MEMO.with_borrow_mut(|memo| match memo {
            Some(last) if last.ip == ip && last.tls == info.tls && last.host.as_deref() == host => {
                last.values.clone()
            }
            _ => {
                let values = forwarding_values(None, None, ip, info.tls, host);
                *memo = Some(ForwardingMemo {
                    ip,
                    tls: info.tls,
                    host: host.map(<[u8]>::to_vec),
                    values: values.clone(),
                });
                values
            }
        })
    } else {
        forwarding_values(prev_xff, prev_forwarded, ip, info.tls, host)
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Some(v) = forwarded {
        headers.insert(header::FORWARDED, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if info.tls { "https" } else { "http" }),
    );
}

/// The `x-forwarded-for` and `forwarded` values: the earlier hops', if any, then this one's.
fn forwarding_values(
    prev_xff: Option<&[u8]>,
    prev_forwarded: Option<&[u8]>,
    ip: IpAddr,
    tls: bool,
    host: Option<&[u8]>,
) -> ForwardingValues {
    // One scratch buffer for both values (they are copied into their headers).
    let mut buf = Vec::with_capacity(256);
    if let Some(prev) = prev_xff {
        buf.extend_from_slice(prev);
        buf.extend_from_slice(b", ");
    }
    push_ip(&mut buf, ip);
    let xff = built_value(&buf);
    buf.clear();
    if let Some(prev) = prev_forwarded {
        buf.extend_from_slice(prev);
        buf.extend_from_slice(b", ");
    }
    buf.extend_from_slice(b"for=");
    if ip.is_ipv6() {
        buf.extend_from_slice(b"\"[");
        push_ip(&mut buf, ip);
        buf.extend_from_slice(b"]\"");
    } else {
        push_ip(&mut buf, ip);
    }
    buf.extend_from_slice(b";proto=");
    buf.extend_from_slice(if tls { b"https" } else { b"http" });
    if let Some(host) = host {
        buf.extend_from_slice(b";host=\"");
        buf.extend_from_slice(host);
        buf.push(b'"');
    }
    (xff, built_value(&buf))
}
