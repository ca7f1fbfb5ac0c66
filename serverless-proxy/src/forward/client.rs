//! Where a request came from, for the forwarding headers.

/// Where a request came from: [`Forward`](super::Forward) names it in the forwarding headers
/// (`x-forwarded-for`, `x-forwarded-proto`, `forwarded`) when the request carries it as an
/// extension. The gateway's server sets it on each request; an embedder sets it from its own
/// server's peer address (axum: `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The peer address.
    pub addr: std::net::SocketAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
}
