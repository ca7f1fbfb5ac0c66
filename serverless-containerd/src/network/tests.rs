//! Reconcile's release of leftovers against this run's own namespaces. No namespace is made:
//! the bridge's namespace does not exist, so a release that is attempted fails at `nsenter`
//! and touches nothing.

use std::path::PathBuf;

use serverless_core::NetworkConfig;

use super::Network;

fn network(dir: &std::path::Path) -> Network {
    Network::new(
        dir,
        NetworkConfig::default(),
        Some(PathBuf::from("/run/serverless-test/no-such-netns")),
        0,
    )
    .expect("a network on a temp dir")
}

/// An instance of this run between its attach and the moment the backend knows it (its exit
/// watch is registered after the namespace is taken): reconcile's `held` does not accept it
/// yet, but its namespace is this run's and must not be released under it (a reconcile runs
/// while the gateway serves after an upgrade's hand-over).
#[tokio::test]
async fn release_others_keeps_a_namespace_taken_by_an_instance_still_starting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = network(dir.path());
    let cni_id = "sls-starting";
    std::fs::create_dir_all(net.wired_dir(cni_id)).expect("namespace dir");
    std::fs::write(net.wired_dir(cni_id).join("instance"), "web-1").expect("owner");
    net.taken
        .lock()
        .expect("taken")
        .insert("web-1".to_owned(), cni_id.to_owned());

    net.release_others(|_| false).await;

    assert_eq!(
        net.taken
            .lock()
            .expect("taken")
            .get("web-1")
            .map(String::as_str),
        Some(cni_id),
        "the starting instance still holds its namespace"
    );
    assert!(net.wired_dir(cni_id).exists());
}
