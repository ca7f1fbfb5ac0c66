//! The sandbox on a real (private) containerd: probes run inside an instance fail under the
//! defaults (seccomp allow-list, reduced capabilities, user namespace), and behave differently
//! once `security.seccomp = "unconfined"`, the capabilities are added back and
//! `security.userns = false`, so the defaults are shown to do something. Also: the user
//! namespace as seen from the host (file and process owners), zombies reaped by the init.
//!
//! Busybox has no applet for keyctl, ptrace or module loading: those probes are `sysprobe`, a
//! small C program built here with `gcc -static` (Debian's gcc and libc6-dev) into the image.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serverless_core::{AppSpec, ContainerBackend, ImageRef, NetworkMode, Seccomp, SecurityConfig};
use serverless_testkit::{busybox_image, can_run_with, http_get, instance_pids, BackendHarness};

/// The calls busybox cannot make: exit status 0 when the call succeeded.
const SYSPROBE_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "keyctl")) /* KEYCTL_JOIN_SESSION_KEYRING, a new anonymous keyring */
        return syscall(SYS_keyctl, 1, 0) < 0;
    if (!strcmp(argv[1], "ptrace")) { /* attach to another process: pid 1 */
        if (ptrace(PTRACE_ATTACH, 1, 0, 0) < 0) return 1;
        waitpid(1, 0, __WALL);
        ptrace(PTRACE_DETACH, 1, 0, 0);
        return 0;
    }
    if (!strcmp(argv[1], "module")) { /* an empty module image: refused before it is parsed */
        static char image[64];
        return syscall(SYS_init_module, image, sizeof image, "") < 0;
    }
    if (!strcmp(argv[1], "clock")) { /* set the clock to what it reads */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        return clock_settime(CLOCK_REALTIME, &now) < 0;
    }
    if (!strcmp(argv[1], "compat32")) { /* a 32-bit system call: getpid through int 0x80 */
#if defined(__x86_64__)
        long r;
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
        return r <= 0;
#else
        return 1;
#endif
    }
    if (!strcmp(argv[1], "pid1") && argc > 2) { /* runs argv[2..], never reaps anything */
        if (fork() == 0) { execv(argv[2], argv + 2); return 127; }
        for (;;) pause();
    }
    return 2;
}
"#;

/// Builds `sysprobe` into `dir`.
fn sysprobe(dir: &Path) -> Vec<u8> {
    let src = dir.join("sysprobe.c");
    let bin = dir.join("sysprobe");
    std::fs::write(&src, SYSPROBE_C).expect("write sysprobe.c");
    let out = std::process::Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc -static: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&bin).expect("read sysprobe")
}

/// The busybox image with `sysprobe` and the zombie CGI scripts, written as an archive in the
/// harness's dir.
fn probe_archive(h: &BackendHarness) -> PathBuf {
    let cgi = |body: &str| {
        format!("#!/bin/busybox sh\necho 'Content-Type: text/plain'\necho\n{body}\n").into_bytes()
    };
    let path = h.dir.path().join("probe.tar");
    busybox_image()
        .file("/bin/sysprobe", sysprobe(h.dir.path()), 0o755)
        // A child orphaned (its parent exits at once) that exits 0.2 s later: reparented to
        // PID 1, whose job it then is to reap it.
        .file(
            "/www/cgi-bin/orphan",
            cgi("/bin/busybox sh -c '/bin/busybox sleep 0.2 &'\necho orphaned"),
            0o755,
        )
        // Processes in the zombie state, one `pid name` line each.
        .file(
            "/www/cgi-bin/zombies",
            cgi("for s in /proc/[0-9]*/stat; do read -r pid comm state rest < $s 2>/dev/null && [ \"$state\" = Z ] && echo $pid $comm; done; echo end"),
            0o755,
        )
        .write_oci_archive(&path)
        .expect("write the probe image");
    path
}

/// An app named `name` running the archive `image`, loopback only (as the harness's apps).
fn archive_app(name: &str, image: &Path) -> AppSpec {
    let mut app = AppSpec::new(
        name,
        ImageRef::parse(&format!("oci-archive:{}", image.display())).expect("an archive"),
    );
    app.network = NetworkMode::None;
    app
}

/// `GET path` over HTTP/1.0 on `conn`: the whole response.
async fn get_path(mut conn: serverless_core::Connection, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    conn.write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut response = Vec::new();
    conn.read_to_end(&mut response)
        .await
        .expect("read response");
    String::from_utf8_lossy(&response).into_owned()
}

const PROGRAMS: [(&str, &str); 1] = [("gcc", "gcc")];

/// Each probe is a shell command; its exit status is written to /www/index.html as
/// `name=0|1` lines, then httpd serves it.
const PROBES: [(&str, &str); 12] = [
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
    ("keyctl", "/bin/sysprobe keyctl"),
    ("ptrace", "/bin/sysprobe ptrace"),
    ("kernel_module", "/bin/sysprobe module"),
    // Sets the clock to what it reads: harmless should it ever succeed.
    ("clock", "/bin/sysprobe clock"),
    // The default filter knows the native architecture only: a 32-bit call is refused
    // (SIGSYS), where Docker's profile allows the x86 and x32 tables.
    ("compat32", "/bin/sysprobe compat32"),
];

fn probing(image: &Path, name: &str, configure: impl FnOnce(&mut AppSpec)) -> AppSpec {
    let mut script = String::from("/bin/busybox mkdir -p /www; : > /www/index.html; ");
    for (name, cmd) in PROBES {
        script.push_str(&format!(
            "( {cmd} ) >/dev/null 2>&1; echo {name}=$? >> /www/index.html; "
        ));
    }
    script.push_str("exec /bin/busybox httpd -f -p $PORT -h /www");
    let mut app = archive_app(name, image);
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
    if !can_run_with("defaults_deny_what_relaxing_allows", &PROGRAMS) {
        return;
    }
    let h = BackendHarness::start().await;
    let image = probe_archive(&h);

    let strict = probe(&h, &probing(&image, "strict", |_| {})).await;
    for (name, _) in PROBES {
        assert!(
            !strict[name],
            "{name} succeeded under the defaults: {strict:?}"
        );
    }

    let relaxed = probing(&image, "relaxed", |app| {
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
    if cfg!(target_arch = "x86_64") {
        assert!(relaxed["compat32"], "{relaxed:?}");
    }
    // Without the filter a process may join a new keyring and trace another of its own
    // instance (same ids, same capabilities); no module loads and the clock stays: those need
    // capabilities only the host's user namespace grants.
    assert!(relaxed["keyctl"] && relaxed["ptrace"], "{relaxed:?}");
    assert!(
        !relaxed["kernel_module"] && !relaxed["clock"],
        "{relaxed:?}"
    );
    // The user namespace: CAP_MKNOD inside it makes no device node.
    assert!(!relaxed["mknod"], "{relaxed:?}");

    // The same without the user namespace: the capability is the host's, and mknod works
    // (the devices cgroup still refuses to open the node).
    let host_root = probing(&image, "hostroot", |app| {
        app.security.seccomp = Seccomp::Unconfined;
        app.security.userns = false;
        app.security.capabilities_add = ["MKNOD"].map(String::from).to_vec();
    });
    let host_root = probe(&h, &host_root).await;
    assert!(host_root["mknod"], "{host_root:?}");

    // Seccomp alone (default capabilities, no filter): namespaces without CAP_SYS_ADMIN
    // are the filter's doing.
    let no_filter = probing(&image, "nofilter", |app| {
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
    if !can_run_with("init_lets_sigterm_stop_the_app", &[]) {
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

/// The user namespace as the host sees it: what the instance's root writes is owned by the
/// range's base, its processes run as that uid; with `security.userns = false` both are the
/// host's root. The image is remapped once: one `userns-` snapshot whatever the starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userns_maps_root_to_the_range_on_the_host() {
    if !can_run_with("userns_maps_root_to_the_range_on_the_host", &[]) {
        return;
    }
    let h = BackendHarness::start().await;
    let base = SecurityConfig::default().userns_base;
    for userns in [true, true, false] {
        let mut app = h.app(if userns { "mapped" } else { "hostroot" });
        app.security.userns = userns;
        app.command = Some(vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            "echo x > /tmp/made-by-root; exec /bin/busybox httpd -f -p $PORT -h /www".into(),
        ]);
        let id = h.id(&app.name);
        h.backend.start(&app, &id).await.expect("start");
        let pids = instance_pids(h.backend.namespace(), id.as_str());
        assert!(!pids.is_empty(), "no process of {id} on the host");
        let expected = if userns { base } else { 0 };
        for pid in &pids {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uid_line = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .unwrap_or_default();
            let uids: Vec<u32> = uid_line
                .split_whitespace()
                .skip(1)
                .filter_map(|u| u.parse().ok())
                .collect();
            assert_eq!(uids, vec![expected; 4], "pid {pid} of {id}: {uid_line}");
        }
        let file = format!("/proc/{}/root/tmp/made-by-root", pids[0]);
        let meta = std::fs::metadata(&file).expect("the file the instance wrote");
        assert_eq!((meta.uid(), meta.gid()), (expected, expected), "{file}");
        // The image's own files: root's inside, the range's base outside.
        let busybox = std::fs::metadata(format!("/proc/{}/root/bin/busybox", pids[0])).unwrap();
        assert_eq!(busybox.uid(), expected);
        h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    }
    let remapped: Vec<String> = h
        .ctr(&["snapshots", "ls"])
        .into_iter()
        .filter(|l| l.starts_with("userns-"))
        .collect();
    assert_eq!(remapped.len(), 1, "{remapped:?}");
    assert!(remapped[0].contains("Committed"), "{remapped:?}");
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    h.shutdown().await;
}

/// The init reaps what is reparented to it: an orphan that exits leaves no zombie. Without the
/// init, PID 1 is `sysprobe pid1` (which starts httpd and never reaps, as many apps written
/// without PID 1 in mind) and the orphan stays a zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_reaps_zombies() {
    if !can_run_with("init_reaps_zombies", &PROGRAMS) {
        return;
    }
    let h = BackendHarness::start().await;
    let image = probe_archive(&h);
    let mut zombies = Vec::new();
    for init in [true, false] {
        let mut app = archive_app(if init { "reaped" } else { "unreaped" }, &image);
        app.security.init = init;
        app.command = Some(
            [
                "/bin/sysprobe",
                "pid1",
                "/bin/busybox",
                "httpd",
                "-f",
                "-p",
                "8080",
                "-h",
                "/www",
            ]
            .map(String::from)
            .to_vec(),
        );
        let id = h.id(&app.name);
        h.backend.start(&app, &id).await.expect("start");
        let get = |path: &'static str| {
            let h = &h;
            let id = id.clone();
            async move { get_path(h.backend.connect(&id).await.expect("connect"), path).await }
        };
        let orphaned = get("/cgi-bin/orphan").await;
        assert!(orphaned.contains("orphaned"), "{orphaned}");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let listed = get("/cgi-bin/zombies").await;
        assert!(listed.contains("end"), "{listed}");
        zombies.push(listed.lines().filter(|l| l.ends_with("(busybox)")).count());
        h.backend.stop(&id, Duration::ZERO).await.expect("stop");
    }
    assert_eq!(zombies[0], 0, "zombies left behind the init");
    assert!(
        zombies[1] >= 1,
        "without the init the orphan should stay a zombie: {zombies:?}"
    );
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    h.shutdown().await;
}
