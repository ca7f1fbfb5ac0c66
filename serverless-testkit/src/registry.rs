//! Debian's `docker-registry` (the Docker distribution registry v2) on a free loopback port,
//! with its own config and storage: what the pull and build tests push to and pull from.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;

/// A `docker-registry` on a free loopback port, its storage in a temp dir; killed on drop.
/// Check for the program first (`can_run_with(test, &[("docker-registry", "docker-registry")])`).
#[derive(Debug)]
pub struct DockerRegistry {
    child: Child,
    /// `127.0.0.1:PORT`, the registry part of the references pushed to it.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    /// Starts one whose YAML config ends with `extra(addr)` (an `auth:` section, say), and
    /// waits until it listens (at most 20 s).
    pub async fn start(extra: impl FnOnce(&str) -> String) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sl-reg-")
            .tempdir()
            .expect("temp dir");
        let addr = format!("127.0.0.1:{}", free_port().expect("a free port"));
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n{}",
                dir.path().join("storage").display(),
                extra(&addr),
            ),
        )
        .expect("write the registry's config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let registry = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&registry.addr)
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "docker-registry did not listen on {} within 20s",
                registry.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        registry
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
