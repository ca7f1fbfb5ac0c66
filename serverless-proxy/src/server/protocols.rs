//! Per-connection protocol settings and the hyper builders a listener's connections share.

use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;

/// Per-connection protocol settings.
#[derive(Debug, Clone)]
pub(crate) struct ConnSettings {
    /// Time to receive a complete request head (HTTP/1.1); slow clients are cut off. An idle
    /// keep-alive connection is closed after the same time.
    pub(crate) header_read_timeout: Duration,
    /// Largest request head in bytes; larger → `431`.
    pub(crate) max_header_bytes: usize,
}

/// What every connection of one listener shares: the protocol builders and the count of
/// parked connections.
pub(super) struct Shared {
    pub(super) h1: http1::Builder,
    pub(super) h2: http2::Builder<TokioExecutor>,
    /// TLS connections: the version comes from the first bytes after the handshake.
    pub(super) auto: auto::Builder<TokioExecutor>,
    pub(super) header_read_timeout: Duration,
    /// Incremented each time an HTTP/1 connection is parked.
    pub(super) parked: Counter,
}

impl Shared {
    pub(super) fn new(settings: &ConnSettings, parked: Counter) -> Self {
        let max_buf = settings.max_header_bytes.max(8192);
        let header_list = u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX);
        let mut h1 = http1::Builder::new();
        // Plain HTTP/1 connections get their header timeout from the parking timer
        // (`park::drive_until_parked`).
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_buf)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(header_list)
            .max_concurrent_streams(1024);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(max_buf)
            .keep_alive(true);
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(header_list)
            .max_concurrent_streams(1024);
        Self {
            h1,
            h2,
            auto,
            header_read_timeout: settings.header_read_timeout,
            parked,
        }
    }
}
