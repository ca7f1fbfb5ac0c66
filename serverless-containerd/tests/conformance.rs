//! The containerd backend keeps the `ContainerBackend` contract: `serverless_core::conformance`
//! on a private containerd, with busybox apps that serve, fail to boot, and never listen.

use std::time::Duration;

use serverless_core::conformance::{self, Apps};
use serverless_testkit::{busybox_sh, can_run, BackendHarness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_containerd_backend_passes_the_conformance_suite() {
    if !can_run("the_containerd_backend_passes_the_conformance_suite") {
        return;
    }
    let h = BackendHarness::start().await;
    // busybox httpd on $PORT (the image's command).
    let serves = h.app("serves");
    let mut boot_failure = h.app("boot-failure");
    boot_failure.command = busybox_sh("exit 3");
    let mut never_listens = h.app("never-listens");
    never_listens.command = busybox_sh("exec /bin/busybox sleep 1000");
    never_listens.limits.startup_timeout = Duration::from_secs(1);
    let apps = Apps {
        serves,
        boot_failure: Some(boot_failure),
        never_listens: Some(never_listens),
    };
    let result = conformance::run(&h.backend, &apps).await;
    let leftovers = h.leftovers();
    result.unwrap();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    h.shutdown().await;
}
