//! Scenario 2: warm proxy overhead. One native `serverless-hello` on loopback, reached directly,
//! through our gateway (as its own process, over a backend whose "instance" is that server),
//! through nginx (`proxy_pass`, keep-alive upstream) and through haproxy. Proxies and the
//! upstream are pinned to CPU 1, the load generator (this process) to CPU 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use serverless_core::Config;
use serverless_proxy::Gateway;

use crate::lab::NativeBackend;
use crate::loadgen::{fixed_rate, max_throughput, Outcome};
use serverless_testkit::{env_num, free_port, wait_http};

use crate::util::{headline, noise, summary, write_json, Context, Res};

pub(crate) const HOST: &str = "hello.localhost";

/// Child processes, stopped with SIGTERM (then SIGKILL) when dropped.
#[derive(Default)]
pub(crate) struct Procs(Vec<(String, Child)>);

impl Procs {
    pub(crate) fn spawn(&mut self, name: &str, cmd: &mut Command) -> Res<()> {
        let child = cmd
            .stdout(Stdio::null())
            .spawn()
            .context(format_args!("start {name}"))?;
        self.0.push((name.to_owned(), child));
        Ok(())
    }

    pub(crate) fn pid(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, c)| c.id())
    }

    pub(crate) fn check(&mut self) -> Res<()> {
        for (name, child) in &mut self.0 {
            if let Some(status) = child.try_wait()? {
                return Err(format!("{name} exited early: {status}").into());
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    // Synchronous on purpose: Drop runs outside async code, also on error paths.
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = Command::new("kill")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        for (_, child) in &mut self.0 {
            let deadline = std::time::SystemTime::now() + Duration::from_secs(5);
            while std::time::SystemTime::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The upstream and the two proxies every warm measurement has: the native
/// `serverless-hello`, the gateway over it, and nginx with its plain and forwarding servers;
/// optionally a second gateway with its lean HTTP/1.1 client off (`server.lean_client = false`).
pub(crate) struct Lab {
    pub(crate) procs: Procs,
    pub(crate) upstream: u16,
    pub(crate) gateway: u16,
    pub(crate) nginx: u16,
    pub(crate) nginx_fwd: u16,
    /// The gateway that sends every request through hyper's client (`gateway-hyper`).
    pub(crate) gateway_hyper: Option<u16>,
}

impl Lab {
    /// Starts them, the upstream pinned to CPU 1 and each proxy (`gateway`, `nginx`, and
    /// `gateway-hyper` when `hyper_client`) with the command `launch(name, program)` gives
    /// (pinned, or under valgrind); nginx without a master process when `single_nginx`.
    pub(crate) fn start(
        dir: &Path,
        hello_bin: &Path,
        single_nginx: bool,
        hyper_client: bool,
        launch: &dyn Fn(&str, &std::ffi::OsStr) -> Command,
    ) -> Res<Self> {
        let mut procs = Procs::default();
        let upstream = free_port()?;
        procs.spawn(
            "serverless-hello",
            pinned("1", hello_bin).args(["--port", &upstream.to_string()]),
        )?;
        let self_exe = std::env::current_exe().context("find the bench binary")?;
        let gateway = free_port()?;
        procs.spawn(
            "gateway",
            launch("gateway", self_exe.as_os_str()).args([
                "gateway-native",
                &format!("127.0.0.1:{gateway}"),
                &upstream.to_string(),
            ]),
        )?;
        let gateway_hyper = if hyper_client {
            let port = free_port()?;
            procs.spawn(
                "gateway-hyper",
                launch("gateway-hyper", self_exe.as_os_str()).args([
                    "gateway-native",
                    &format!("127.0.0.1:{port}"),
                    &upstream.to_string(),
                    HYPER_CLIENT,
                ]),
            )?;
            Some(port)
        } else {
            None
        };
        let (nginx, nginx_fwd) = (free_port()?, free_port()?);
        let conf = nginx_config(dir, nginx, nginx_fwd, upstream, single_nginx)?;
        procs.spawn(
            "nginx",
            launch("nginx", "nginx".as_ref())
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf)
                .stderr(Stdio::null()),
        )?;
        Ok(Self {
            procs,
            upstream,
            gateway,
            nginx,
            nginx_fwd,
            gateway_hyper,
        })
    }
}

/// `gateway-native`'s optional last argument: the lean HTTP/1.1 client off.
pub(crate) const HYPER_CLIENT: &str = "hyper-client";

pub(crate) fn pinned(cpu: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu]).arg(program);
    c
}

pub(crate) async fn run(out: &Path, hello_bin: &Path) -> Res<()> {
    let duration = Duration::from_secs(env_num("BENCH_WARM_SECS", 8)?);
    let tput_duration = Duration::from_secs(env_num("BENCH_TPUT_SECS", 3)?);
    let repeats: usize = env_num("BENCH_WARM_REPEATS", 3)?;
    let tput_repeats: usize = env_num("BENCH_TPUT_REPEATS", 7)?;
    let rate: u64 = env_num("BENCH_WARM_RPS", 1000)?;
    let noise_before = noise();
    let dir = tempfile::Builder::new()
        .prefix("serverless-bench-warm-")
        .tempdir()
        .context("create a temp dir")?;
    let Lab {
        mut procs,
        upstream: up,
        gateway: gw,
        nginx: ng,
        nginx_fwd: ng_fwd,
        ..
    } = Lab::start(dir.path(), hello_bin, false, false, &|_, program| {
        pinned("1", program)
    })?;
    let hp = free_port()?;
    let haproxy_conf = haproxy_config(dir.path(), hp, up)?;
    procs.spawn(
        "haproxy",
        pinned("1", "haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&haproxy_conf),
    )?;
    let targets: Vec<(&str, SocketAddr)> = vec![
        ("direct", ([127, 0, 0, 1], up).into()),
        ("serverless", ([127, 0, 0, 1], gw).into()),
        ("nginx", ([127, 0, 0, 1], ng).into()),
        ("haproxy", ([127, 0, 0, 1], hp).into()),
        ("nginx-fwd", ([127, 0, 0, 1], ng_fwd).into()),
    ];
    for (name, addr) in &targets {
        wait_http(*addr, HOST, Duration::from_secs(10))
            .await
            .context(format_args!("{name} is not answering"))?;
    }
    procs.check()?;

    let mut results = serde_json::Map::new();
    for (name, _) in &targets {
        results.insert((*name).to_owned(), json!({ "fixed": [], "tput": [] }));
    }
    let mut cdf: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
    for r in 0..repeats {
        for (name, addr) in &targets {
            if *name == "nginx-fwd" {
                // Throughput only: the fixed-rate latency is nginx's either way.
                continue;
            }
            // Warm-up, then the measured run.
            fixed_rate(*addr, HOST, "/", rate, Duration::from_secs(1), 16).await?;
            let o = fixed_rate(*addr, HOST, "/", rate, duration, 16).await?;
            let s = lat_summary(&o);
            eprintln!(
                "warm {name} run {r}: {rate} rps p50 {:.3} ms p99 {:.3} ms errors {}",
                s.p50, s.p99, o.errors
            );
            if r == 0 {
                cdf.insert((*name).to_owned(), json!(percentile_curve(&o)));
            }
            results[*name]["fixed"]
                .as_array_mut()
                .context("results")?
                .push(json!({ "summary": s, "errors": o.errors, "achieved_rps": o.rps() }));
        }
    }
    let upstream_pid = procs.pid("serverless-hello").context("upstream pid")?;
    // Short runs, many repeats, the order rotated each time: this machine's speed drifts (it
    // is shared), so the ratio to nginx is taken per repeat, between runs seconds apart, and
    // the headline is the median of those paired ratios.
    for r in 0..tput_repeats {
        for i in 0..targets.len() {
            let (name, addr) = &targets[(i + r) % targets.len()];
            // CPU time of the proxy (and of the upstream) per request during the run, from
            // /proc: what the core spends, independent of how busy the machine is otherwise.
            let proxy_pid = match *name {
                "serverless" => procs.pid("gateway"),
                "nginx" | "nginx-fwd" => procs.pid("nginx"),
                "haproxy" => procs.pid(name),
                _ => None,
            };
            let (proxy0, up0) = (proxy_pid.map(cpu_us), cpu_us(upstream_pid));
            let o = max_throughput(*addr, HOST, "/", tput_duration, 64).await?;
            let (proxy1, up1) = (proxy_pid.map(cpu_us), cpu_us(upstream_pid));
            let n = (o.latencies_us.len() as f64).max(1.0);
            let per_req = |a: (f64, f64), b: (f64, f64)| json!({ "user_us": (b.0 - a.0) / n, "sys_us": (b.1 - a.1) / n });
            let proxy_cpu = match (proxy0, proxy1) {
                (Some(a), Some(b)) => per_req(a, b),
                _ => json!(null),
            };
            eprintln!(
                "throughput {name} run {r}: {:.0} rps, errors {}, proxy CPU per request {proxy_cpu}",
                o.rps(),
                o.errors
            );
            results[*name]["tput"]
                .as_array_mut()
                .context("results")?
                .push(json!({
                    "repeat": r,
                    "rps": o.rps(),
                    "errors": o.errors,
                    "summary": lat_summary(&o),
                    "proxy_cpu": proxy_cpu,
                    "upstream_cpu": per_req(up0, up1),
                }));
        }
    }
    procs.check()?;
    drop(procs);

    // Headlines: median over repeats.
    let med = |name: &str, f: &dyn Fn(&serde_json::Value) -> f64, key: &str| -> f64 {
        let v: Vec<f64> = results[name][key]
            .as_array()
            .map(|a| a.iter().map(f).collect())
            .unwrap_or_default();
        summary(&v).p50
    };
    let p50 = |v: &serde_json::Value| v["summary"]["p50"].as_f64().unwrap_or(f64::NAN);
    let p99 = |v: &serde_json::Value| v["summary"]["p99"].as_f64().unwrap_or(f64::NAN);
    let rps = |v: &serde_json::Value| v["rps"].as_f64().unwrap_or(f64::NAN);
    let (d50, d99) = (med("direct", &p50, "fixed"), med("direct", &p99, "fixed"));
    for name in ["serverless", "nginx", "haproxy"] {
        headline(
            &format!("warm_{name}_added_p50_ms"),
            format!("{:.3}", med(name, &p50, "fixed") - d50),
        );
        headline(
            &format!("warm_{name}_added_p99_ms"),
            format!("{:.3}", med(name, &p99, "fixed") - d99),
        );
    }
    for name in ["direct", "serverless", "nginx", "haproxy", "nginx-fwd"] {
        headline(
            &format!("throughput_{}_rps", name.replace('-', "_")),
            format!("{:.0}", med(name, &rps, "tput")),
        );
    }
    for peer in ["nginx", "nginx-fwd", "haproxy"] {
        let ratios = paired_ratios(&results, "serverless", peer);
        headline(
            &format!("throughput_serverless_vs_{}_ratio", peer.replace('-', "_")),
            format!("{:.2}", summary(&ratios).p50),
        );
    }
    let proxy_cpu = |v: &serde_json::Value| {
        v["proxy_cpu"]["user_us"].as_f64().unwrap_or(f64::NAN)
            + v["proxy_cpu"]["sys_us"].as_f64().unwrap_or(f64::NAN)
    };
    for name in ["serverless", "nginx", "haproxy", "nginx-fwd"] {
        headline(
            &format!("throughput_{}_cpu_us_per_request", name.replace('-', "_")),
            format!("{:.1}", med(name, &proxy_cpu, "tput")),
        );
    }
    let value = json!({
        "rate": rate,
        "duration_s": duration.as_secs(),
        "tput_duration_s": tput_duration.as_secs(),
        "repeats": repeats,
        "tput_repeats": tput_repeats,
        "connections_fixed": 16,
        "connections_tput": 64,
        "results": results,
        "cdf": cdf,
        "noise_before": noise_before,
        "noise_after": noise(),
    });
    write_json(out, "warm", &value)
}

/// `a`'s requests/s over `b`'s in each throughput repeat (runs seconds apart).
pub(crate) fn paired_ratios(
    results: &serde_json::Map<String, serde_json::Value>,
    a: &str,
    b: &str,
) -> Vec<f64> {
    let runs = |name: &str| {
        results
            .get(name)
            .and_then(|v| v["tput"].as_array())
            .cloned()
            .unwrap_or_default()
    };
    let (ra, rb) = (runs(a), runs(b));
    ra.iter()
        .filter_map(|x| {
            let y = rb.iter().find(|y| y["repeat"] == x["repeat"])?;
            Some(x["rps"].as_f64()? / y["rps"].as_f64()?)
        })
        .collect()
}

/// User and system CPU time (µs) of a process and its children (nginx's workers), from
/// `/proc/PID/stat` (clock ticks of 10 ms: USER_HZ is 100 on Linux).
fn cpu_us(pid: u32) -> (f64, f64) {
    let ticks = |pid: &str| -> (f64, f64) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
        (num(11) * 10_000.0, num(12) * 10_000.0)
    };
    let pid = pid.to_string();
    let mut total = ticks(&pid);
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace() {
        let (u, s) = ticks(child);
        total.0 += u;
        total.1 += s;
    }
    total
}

fn lat_summary(o: &Outcome) -> crate::util::Summary {
    let v: Vec<f64> = o.latencies_us.iter().map(|u| *u as f64 / 1000.0).collect();
    summary(&v)
}

/// (percentile, ms) pairs for a latency-by-percentile plot.
fn percentile_curve(o: &Outcome) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = o.latencies_us.iter().map(|u| *u as f64 / 1000.0).collect();
    v.sort_by(f64::total_cmp);
    let mut out = Vec::new();
    // 0..99.99 on a "nines" scale: x = -log10(1 - p).
    for k in 0..=400 {
        let nines = k as f64 / 100.0;
        let p = 100.0 * (1.0 - 10f64.powf(-nines));
        out.push((nines, crate::util::percentile(&v, p)));
    }
    out
}

/// nginx with two servers: the plain `proxy_pass` on `port`, and on `port_fwd` the same plus
/// the forwarding headers the gateway adds to every request (`x-forwarded-for`,
/// `x-forwarded-proto`, `forwarded`). `single`: no master process (the one process serves, as
/// valgrind needs it).
pub(crate) fn nginx_config(
    dir: &Path,
    port: u16,
    port_fwd: u16,
    upstream: u16,
    single: bool,
) -> Res<PathBuf> {
    let d = dir.display();
    let server = |port: u16, extra: &str| {
        format!(
            r#"    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://hello;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;{extra}
        }}
    }}"#
        )
    };
    let plain = server(port, "");
    let fwd = server(
        port_fwd,
        r#"
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\"$host\"";"#,
    );
    let master = if single { "master_process off;\n" } else { "" };
    let conf = format!(
        r#"daemon off;
{master}worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream hello {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
{plain}
{fwd}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).context("write nginx.conf")?;
    Ok(path)
}

fn haproxy_config(dir: &Path, port: u16, upstream: u16) -> Res<PathBuf> {
    let conf = format!(
        r#"global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
frontend bench
    bind 127.0.0.1:{port}
    default_backend hello
backend hello
    http-reuse always
    server s1 127.0.0.1:{upstream}
"#
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).context("write haproxy.cfg")?;
    Ok(path)
}

/// `gateway-native LISTEN UPSTREAM_PORT [hyper-client]`: the real gateway (one runtime thread,
/// like nginx's one worker and haproxy's one thread) over a backend whose only instance is the
/// native upstream; `lean_client`: `false` sends every request through hyper's client.
pub(crate) fn gateway_native(listen: &str, upstream: &str, lean_client: bool) -> Res<()> {
    let port: u16 = upstream.parse().context("upstream port")?;
    // One thread: tokio's current-thread runtime, as an embedder serving from one core would
    // run it (a one-worker multi-thread runtime measured ~5 % more CPU per request here).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = Config::from_toml(&format!(
            r#"listen = "{listen}"
admin = "127.0.0.1:0"
[server]
lean_client = {lean_client}
[[apps]]
name = "hello"
network = "none"
image = "example/hello:1"
hosts = ["{HOST}"]
[apps.limits]
max_concurrent_requests = 256
idle_timeout = "1h"
max_duration = "1h"
[apps.scale]
max = 1
"#
        ))
        .context("gateway config")?;
        let gateway = Gateway::start(config, Arc::new(NativeBackend { port }))
            .await
            .map_err(|e| format!("start the gateway: {e}"))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        term.recv().await;
        gateway.shutdown().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn nginx_config_has_the_plain_and_the_forwarding_server() {
        let dir = tempfile::tempdir().unwrap();
        let conf = super::nginx_config(dir.path(), 18001, 18002, 18003, false).unwrap();
        let text = std::fs::read_to_string(&conf).unwrap();
        let servers: Vec<&str> = text.split("    server {").skip(1).collect();
        assert_eq!(servers.len(), 2, "{text}");
        assert!(
            servers[0].contains("listen 127.0.0.1:18001;") && !servers[0].contains("X-Forwarded")
        );
        assert!(servers[1].contains("listen 127.0.0.1:18002;"));
        for header in ["X-Forwarded-For", "X-Forwarded-Proto", "Forwarded \"for="] {
            assert!(servers[1].contains(header), "{header}: {text}");
        }
        assert!(!text.contains("master_process"));
        // The single-process variant (for valgrind) differs only by that.
        let single = super::nginx_config(dir.path(), 18001, 18002, 18003, true).unwrap();
        let single = std::fs::read_to_string(&single).unwrap();
        assert_eq!(single.replace("master_process off;\n", ""), text);
        // nginx's own syntax check, where nginx is installed (scripts/bench installs it).
        if let Ok(out) = std::process::Command::new("nginx")
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .output()
        {
            assert!(
                out.status.success(),
                "{}\n{text}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
