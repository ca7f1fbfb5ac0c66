//! A small HTTP/1.1 keep-alive load generator.
//!
//! Fixed rate is open-loop and coordinated-omission-correct: request `i` is due at
//! `start + i / rate`; when a connection is still busy with an earlier request at that moment,
//! the latency is counted from the due time (the wait is the system's fault). When the
//! connection was free, it is counted from the actual send (so the generator's own timer slack
//! of up to 1 ms is not charged to the system under test).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http::StatusCode;

use serverless_testkit::{connect, get, Sender};

use crate::util::Res;

/// Latencies in microseconds, and failures.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) latencies_us: Vec<u64>,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
}

impl Outcome {
    pub(crate) fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

async fn send(target: &Target, tx: &mut Option<Sender>) -> bool {
    if tx.is_none() {
        *tx = connect(target.addr).await.ok();
    }
    let Some(conn) = tx.as_mut() else {
        return false;
    };
    match get(conn, &target.host, &target.path).await {
        Ok((StatusCode::OK, _)) => true,
        Ok(_) => false,
        Err(_) => {
            *tx = None;
            false
        }
    }
}

/// `rate` requests per second for `duration` over `conns` keep-alive connections.
pub(crate) async fn fixed_rate(
    addr: SocketAddr,
    host: &str,
    path: &str,
    rate: u64,
    duration: Duration,
    conns: usize,
) -> Res<Outcome> {
    let target = Arc::new(Target {
        addr,
        host: host.to_owned(),
        path: path.to_owned(),
    });
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(Some(connect(addr).await?));
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let t0 = Instant::now();
    let workers: Vec<_> = senders
        .into_iter()
        .map(|mut tx| {
            let next = next.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let mut out = Outcome::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                    let now = tokio::time::Instant::now();
                    let from = if due > now {
                        tokio::time::sleep_until(due).await;
                        tokio::time::Instant::now()
                    } else {
                        due
                    };
                    if send(&target, &mut tx).await {
                        out.latencies_us.push(from.elapsed().as_micros() as u64);
                    } else {
                        out.errors += 1;
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Outcome::default();
    for w in workers {
        let o = w.await?;
        all.latencies_us.extend(o.latencies_us);
        all.errors += o.errors;
    }
    all.elapsed = t0.elapsed();
    Ok(all)
}

/// Closed loop: `conns` keep-alive connections each sending back to back for `duration`.
pub(crate) async fn max_throughput(
    addr: SocketAddr,
    host: &str,
    path: &str,
    duration: Duration,
    conns: usize,
) -> Res<Outcome> {
    let target = Arc::new(Target {
        addr,
        host: host.to_owned(),
        path: path.to_owned(),
    });
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(Some(connect(addr).await?));
    }
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let workers: Vec<_> = senders
        .into_iter()
        .map(|mut tx| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut out = Outcome::default();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if send(&target, &mut tx).await {
                        out.latencies_us.push(t.elapsed().as_micros() as u64);
                    } else {
                        out.errors += 1;
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Outcome::default();
    for w in workers {
        let o = w.await?;
        all.latencies_us.extend(o.latencies_us);
        all.errors += o.errors;
    }
    all.elapsed = t0.elapsed();
    Ok(all)
}
