//! Shared helpers: errors with context, statistics, HTTP one-shots, machine description.

use std::error::Error;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

pub(crate) type BoxError = Box<dyn Error + Send + Sync>;
pub(crate) type Res<T> = Result<T, BoxError>;

/// Adds a "while doing X" prefix to any error.
pub(crate) trait Context<T> {
    fn context(self, what: impl Display) -> Res<T>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, what: impl Display) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}").into())
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Display) -> Res<T> {
        self.ok_or_else(|| what.to_string().into())
    }
}

/// min / percentiles / max of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, Default)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) min: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

/// Nearest-rank percentile of a sorted slice.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn summary(values: &[f64]) -> Summary {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Summary::default();
    }
    Summary {
        n: v.len(),
        min: v[0],
        p50: percentile(&v, 50.0),
        p90: percentile(&v, 90.0),
        p99: percentile(&v, 99.0),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) type Sender = SendRequest<Empty<Bytes>>;

/// A new HTTP/1.1 connection (no pool).
pub(crate) async fn connect(addr: SocketAddr) -> Res<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .context(format_args!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context(format_args!("HTTP handshake with {addr}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}

/// Sends one GET on `tx`; returns the status and the time to the response head (first byte).
/// The body is read to the end.
pub(crate) async fn get(tx: &mut Sender, host: &str, path: &str) -> Res<(StatusCode, Duration)> {
    tx.ready().await?;
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::new())?;
    let t = Instant::now();
    let res = tx.send_request(req).await?;
    let head = t.elapsed();
    let status = res.status();
    res.into_body().collect().await?;
    Ok((status, head))
}

/// Polls `addr` until a GET answers 200 (or `timeout`).
pub(crate) async fn wait_http(addr: SocketAddr, host: &str, timeout: Duration) -> Res<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match connect(addr).await {
            Ok(mut tx) => match get(&mut tx, host, "/").await {
                Ok((s, _)) if s == StatusCode::OK => return Ok(()),
                Ok((s, _)) => last = format!("status {s}"),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{addr} did not answer 200 within {timeout:?}: {last}").into())
}

/// A free loopback port (bound then released; good enough for a benchmark).
pub(crate) fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

/// The 1-minute load average and the number of running compiler processes (noise indicators).
pub(crate) fn noise() -> serde_json::Value {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    let mut compilers = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
                let c = comm.trim();
                if c == "rustc" || c == "cc1" || c == "cc1plus" || c == "ld" {
                    compilers += 1;
                }
            }
        }
    }
    serde_json::json!({ "loadavg1": load, "compiler_processes": compilers })
}

pub(crate) fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Res<()> {
    std::fs::create_dir_all(dir).context(format_args!("create {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)
        .context(format_args!("write {}", path.display()))?;
    Ok(())
}

/// Reads an environment variable as a number, with a default.
pub(crate) fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Res<T> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a valid number").into()),
        _ => Ok(default),
    }
}

/// Prints a `name=value` summary line (what scripts read).
pub(crate) fn headline(name: &str, value: impl Display) {
    println!("{name}={value}");
}
