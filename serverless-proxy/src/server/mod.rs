//! The listeners: HTTP/1.1 and HTTP/2 (h2c and TLS/ALPN) on one port, limits on the request
//! head, idle HTTP/1 connections parked without buffers, graceful shutdown.
//!
//! - [`accept`]: the accept loop, shutdown and drain.
//! - [`detect`]: a plain-TCP connection, h2c or HTTP/1.1 by its first bytes.
//! - [`tls`]: the TLS acceptor and TLS connections.
//! - [`park`]: HTTP/1.1 connections, parked when idle.
//! - [`conn`]: the state a connection's parts share, and the per-connection service.
//! - [`protocols`]: settings and hyper's builders.

mod accept;
mod conn;
mod detect;
mod park;
mod protocols;
mod tls;

#[cfg(test)]
mod tests;

pub(crate) use accept::serve;
#[cfg(test)]
use conn::ClientInfo;
pub(crate) use protocols::ConnSettings;
pub(crate) use tls::tls_acceptor;
pub use tls::TlsError;
