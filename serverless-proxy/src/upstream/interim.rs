//! Interim (1xx) responses bounded on hyper's HTTP/1.1 path as the lean client bounds them
//! ([`h1::head::MAX_INTERIM`] heads, [`h1::MAX_HEAD`] bytes before the final head): hyper's client
//! skips any number of them, so an endless `100 Continue` stream would hold the request until
//! the response timeout. hyper tells each one to a callback on the request
//! ([`hyper::ext::on_informational`]); past the bound the request is given up (its connection
//! closes with it) and answered `502` naming it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::h1;

/// The error's message (the lean client's words).
pub(super) const TOO_MANY: &str = "more than 16 interim (1xx) responses or 64 KiB of them";

/// What one request's interim heads added up to.
#[derive(Default)]
pub(super) struct Interim {
    heads: AtomicUsize,
    bytes: AtomicUsize,
    over: Notify,
}

impl Interim {
    /// Counts `req`'s interim heads from now on.
    pub(super) fn watch<B>(req: &mut http::Request<B>) -> Arc<Self> {
        let interim = Arc::new(Self::default());
        let counted = interim.clone();
        hyper::ext::on_informational(req, move |res| counted.count(res.headers()));
        interim
    }

    fn count(&self, headers: &http::HeaderMap) {
        // The head's size as sent, near enough: `HTTP/1.1 100 Continue\r\n` and the blank
        // line, then `name: value\r\n` per header.
        let size = 26
            + headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum::<usize>();
        let heads = self.heads.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes.fetch_add(size, Ordering::Relaxed) + size;
        if heads > h1::head::MAX_INTERIM || bytes > h1::MAX_HEAD {
            self.over.notify_one();
        }
    }

    /// `send` unless the bound is passed first (then `None`: the request is dropped with its
    /// connection).
    pub(super) async fn bound<F: Future>(&self, send: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = send => Some(out),
            () = self.over.notified() => None,
        }
    }
}
