use crate::guard_future::GuardFuture;
use crate::Lease;

/// Response future of [`ConcurrencyLimit`](super::ConcurrencyLimit): holds the place until the
/// response arrives, then moves it into the response body.
pub type ResponseFuture<F> = GuardFuture<F, Lease>;
