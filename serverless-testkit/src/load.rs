//! Continuous client load that counts what it sent and what failed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};

use crate::client::{client, send};

/// `clients` tasks sending `GET path` back to back until [`finish`](Self::finish)ed. A request
/// fails when it gets no answer within 30 s, no answer at all, or a status other than 200.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the clients (each with a pool of its own) against `addr` with `Host: host`.
    pub fn start(addr: SocketAddr, host: &str, path: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
                let (host, path) = (host.to_owned(), path.to_owned());
                tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        sent.fetch_add(1, Ordering::Relaxed);
                        let r = tokio::time::timeout(
                            Duration::from_secs(30),
                            send(&client, addr, &host, Method::GET, &path, b""),
                        )
                        .await;
                        let failure = match r {
                            Err(_) => Some("no answer within 30 s".to_owned()),
                            Ok(Err(e)) => Some(e),
                            Ok(Ok(a)) if a.status != StatusCode::OK => {
                                Some(format!("{} {} {}", a.status, a.reason, a.body.trim()))
                            }
                            Ok(Ok(_)) => None,
                        };
                        if let Some(f) = failure {
                            failures.lock().unwrap_or_else(|e| e.into_inner()).push(f);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            failures,
            tasks,
        }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the clients and waits for their last requests; returns how many were sent and
    /// each failure.
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a load client panicked");
        }
        let failures =
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(|e| e.into_inner()));
        (self.sent.load(Ordering::Relaxed), failures)
    }
}
