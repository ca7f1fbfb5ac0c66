//! Small helpers every harness uses: unique names, waiting for a condition, numbers from the
//! environment, and the lock that lets one test run alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The error of the fallible helpers (the bench's too): anything, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test of any running test process has: `{prefix}-{pid}-{n}`. Namespaces,
/// instance ids and files of parallel tests must not meet.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits until `f` holds, checking every 20 ms; panics naming `what` after 10 s.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A number from the environment variable `name` (a test's or a benchmark's count), `default`
/// when it is unset or empty; an error naming the variable when it is not a number.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BoxError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a valid number").into()),
        _ => Ok(default),
    }
}

/// Tests of one binary share the process; one that counts process-wide things (file
/// descriptors) takes [`exclusive`] and runs alone, the others take [`shared`].
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by a test while it runs; others holding it may run alongside.
pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().await
}

/// Held by a test that must run alone in its test binary (see [`shared`]).
pub async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().await
}
