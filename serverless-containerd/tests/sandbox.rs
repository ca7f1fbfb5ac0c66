//! The sandbox on a real (private) containerd: probes run inside an instance fail under the
//! defaults (seccomp allow-list, reduced capabilities), and behave differently once
//! `security.seccomp = "unconfined"` and the capabilities are added back, so the defaults are
//! shown to do something.

use std::collections::BTreeMap;
use std::time::Duration;

use serverless_core::{AppSpec, ContainerBackend, Seccomp};
use serverless_testkit::{can_run, http_get, BackendHarness};

/// Each probe is a shell command; its exit status is written to /www/index.html as
/// `name=0|1` lines, then httpd serves it.
const PROBES: [(&str, &str); 7] = [
    ("unshare_user", "/bin/busybox unshare -U /bin/busybox true"),
    ("unshare_net", "/bin/busybox unshare -n /bin/busybox true"),
    ("unshare_mount", "/bin/busybox unshare -m /bin/busybox true"),
    (
        "mount_tmpfs",
        "/bin/busybox mkdir -p /mnt/t && /bin/busybox mount -t tmpfs none /mnt/t",
    ),
    ("sysrq", "echo h > /proc/sysrq-trigger"),
    ("raw_socket", "/bin/busybox ping -c 1 -W 1 127.0.0.1"),
    ("mknod", "/bin/busybox mknod /tmp/null c 1 3"),
];

fn probing(h: &BackendHarness, name: &str, configure: impl FnOnce(&mut AppSpec)) -> AppSpec {
    let mut script = String::from("/bin/busybox mkdir -p /www; : > /www/index.html; ");
    for (name, cmd) in PROBES {
        script.push_str(&format!(
            "( {cmd} ) >/dev/null 2>&1; echo {name}=$? >> /www/index.html; "
        ));
    }
    script.push_str("exec /bin/busybox httpd -f -p $PORT -h /www");
    let mut app = h.app(name);
    app.command = Some(vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        script,
    ]);
    configure(&mut app);
    app
}

/// Runs the probes in an instance of `app`: probe name → whether it succeeded.
async fn probe(h: &BackendHarness, app: &AppSpec) -> BTreeMap<String, bool> {
    let id = h.id(&app.name);
    h.backend.start(app, &id).await.expect("start");
    let response = http_get(h.backend.connect(&id).await.expect("connect")).await;
    h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let results: BTreeMap<String, bool> = body
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim() == "0"))
        .collect();
    assert_eq!(results.len(), PROBES.len(), "{response}");
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_deny_what_relaxing_allows() {
    if !can_run("defaults_deny_what_relaxing_allows") {
        return;
    }
    let h = BackendHarness::start().await;

    let strict = probe(&h, &probing(&h, "strict", |_| {})).await;
    for (name, _) in PROBES {
        assert!(
            !strict[name],
            "{name} succeeded under the defaults: {strict:?}"
        );
    }

    let relaxed = probing(&h, "relaxed", |app| {
        app.security.seccomp = Seccomp::Unconfined;
        app.security.capabilities_add =
            ["SYS_ADMIN", "NET_RAW", "MKNOD"].map(String::from).to_vec();
    });
    let relaxed = probe(&h, &relaxed).await;
    // What the kernel allows once seccomp and the capabilities are out of the way; the
    // rest stays denied by other layers (read-only /proc paths, the devices cgroup).
    for name in [
        "unshare_user",
        "unshare_net",
        "unshare_mount",
        "mount_tmpfs",
        "raw_socket",
    ] {
        assert!(
            relaxed[name],
            "{name} still fails when relaxed: {relaxed:?}"
        );
    }
    assert!(!relaxed["sysrq"], "{relaxed:?}");

    // Seccomp alone (default capabilities, no filter): namespaces without CAP_SYS_ADMIN
    // are the filter's doing.
    let no_filter = probing(&h, "nofilter", |app| {
        app.security.seccomp = Seccomp::Unconfined
    });
    let no_filter = probe(&h, &no_filter).await;
    assert!(no_filter["unshare_user"], "{no_filter:?}");
    assert!(
        !no_filter["mount_tmpfs"] && !no_filter["raw_socket"],
        "{no_filter:?}"
    );

    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    h.shutdown().await;
}

/// With the init as PID 1, SIGTERM reaches busybox httpd (which ignores it as PID 1), so a stop
/// takes milliseconds; without it, the stop waits for the grace period's SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_lets_sigterm_stop_the_app() {
    if !can_run("init_lets_sigterm_stop_the_app") {
        return;
    }
    let h = BackendHarness::start().await;
    let grace = Duration::from_secs(2);
    let mut took = Vec::new();
    for init in [true, false] {
        let mut app = h.app(if init { "withinit" } else { "noinit" });
        app.security.init = init;
        let id = h.id(&app.name);
        h.backend.start(&app, &id).await.expect("start");
        let response = http_get(h.backend.connect(&id).await.expect("connect")).await;
        assert!(response.contains("hello"), "{response}");
        let t = tokio::time::Instant::now();
        h.backend.stop(&id, grace).await.expect("stop");
        took.push(t.elapsed());
    }
    assert!(took[0] < Duration::from_secs(1), "with init: {:?}", took[0]);
    assert!(took[1] >= grace, "without init: {:?}", took[1]);
    eprintln!("stop with init {:?}, without {:?}", took[0], took[1]);
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    h.shutdown().await;
}
