//! Scenario 5: the gateway's memory — the real `serverless serve` as its own process (with its
//! own private containerd, whose memory is not counted): RSS with 100 apps configured and idle,
//! then with 10 000 idle keep-alive client connections (each has had one request answered).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use serverless_testkit::{
    busybox_archive, connect, env_num, free_port, get, peak_rss_kib, rss_kib,
};

use crate::util::{headline, noise, write_json, Context, Res};

pub(crate) async fn run(out: &Path, serverless_bin: &Path) -> Res<()> {
    let apps: usize = env_num("BENCH_MEM_APPS", 100)?;
    let conns: usize = env_num("BENCH_MEM_CONNS", 10_000)?;
    let noise_before = noise();
    let dir = tempfile::Builder::new()
        .prefix("serverless-bench-mem-")
        .tempdir()
        .context("create a temp dir")?;
    let image = busybox_archive(dir.path());
    let port = free_port()?;
    let admin = free_port()?;
    let mut toml = format!(
        "listen = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"\ndata_dir = \"{}\"\n",
        dir.path().join("data").display()
    );
    for a in 0..apps {
        toml.push_str(&format!(
            "[[apps]]\nname = \"app{a}\"\nnetwork = \"none\"\nimage = \"oci-archive:{}\"\n",
            image.display()
        ));
    }
    let config = dir.path().join("serverless.toml");
    std::fs::write(&config, toml).context("write serverless.toml")?;
    let t = Instant::now();
    let mut child = Command::new(serverless_bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context(format_args!("start {}", serverless_bin.display()))?;
    let pid = child.id();
    let result = async {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let up = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(mut tx) = connect(addr).await {
                if get(&mut tx, "nobody.localhost", "/").await.is_ok() {
                    break;
                }
            }
            if Instant::now() > up {
                return Err("serverless serve did not answer within 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let startup = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_rss = rss_kib(pid).context("the gateway's RSS")?;
        // 10 000 keep-alive connections, each with one answered request (unknown host → 404
        // from the gateway itself), then left open and idle.
        let mut open = Vec::with_capacity(conns);
        let mut failed = 0usize;
        for chunk in 0..conns.div_ceil(500) {
            let n = 500.min(conns - chunk * 500);
            let batch: Vec<_> = (0..n)
                .map(|_| {
                    tokio::spawn(async move {
                        let mut s = TcpStream::connect(addr).await?;
                        s.write_all(b"GET / HTTP/1.1\r\nHost: nobody.localhost\r\n\r\n")
                            .await?;
                        let mut buf = [0u8; 1024];
                        let n = s.read(&mut buf).await?;
                        if n == 0 {
                            return Err(std::io::Error::other("closed"));
                        }
                        Ok(s)
                    })
                })
                .collect();
            for b in batch {
                match b.await? {
                    Ok(s) => open.push(s),
                    Err(_) => failed += 1,
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let conns_rss = rss_kib(pid).context("the gateway's RSS")?;
        let hwm = peak_rss_kib(pid).context("the gateway's peak RSS")?;
        let open_count = open.len();
        drop(open);
        Ok::<_, crate::util::BoxError>(json!({
            "apps": apps,
            "connections": open_count,
            "connections_failed": failed,
            "startup_s": startup,
            "idle_rss_mb": idle_rss as f64 / 1024.0,
            "conns_rss_mb": conns_rss as f64 / 1024.0,
            "peak_rss_mb": hwm as f64 / 1024.0,
        }))
    }
    .await;
    // SIGTERM: the gateway stops its instances and its private containerd.
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if child.try_wait()?.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut value = result?;
    headline(
        "memory_idle_100_apps_mb",
        format!("{:.1}", value["idle_rss_mb"].as_f64().unwrap_or(f64::NAN)),
    );
    headline(
        "memory_10k_conns_mb",
        format!("{:.1}", value["conns_rss_mb"].as_f64().unwrap_or(f64::NAN)),
    );
    value["noise_before"] = noise_before;
    value["noise_after"] = noise();
    write_json(out, "memory", &value)
}
