//! What the host must offer for an app's sandbox, checked when the app is prepared (deploy, so
//! at the engine's startup for the config's apps): user namespaces, runc built with seccomp,
//! the init binary. A host that lacks one gets an error naming what is missing and the
//! app's opt-out; the sandbox is never quietly weakened.

use std::path::Path;
use std::sync::OnceLock;

use serverless_core::{AppSpec, BackendError, ErrorKind, Seccomp};

use crate::image::IdMap;
use crate::spec::INIT_HOST_PATH;

/// Checks that the host can run `app`'s sandbox, its user namespace mapped onto `map`.
pub(crate) async fn check(app: &AppSpec, map: IdMap) -> Result<(), BackendError> {
    let refuse = |key: &str, what: String| {
        Err(BackendError::new(
            ErrorKind::Unsupported,
            format!("app {}: security.{key}: {what}", app.name),
        ))
    };
    if app.security.userns {
        if let Err(what) = userns_support() {
            return refuse(
                "userns",
                format!("{what} (or set security.userns = false for this app)"),
            );
        }
        if let Err(what) = range_is_free(map) {
            return refuse(
                "userns",
                format!("{what}; choose another [security] userns_base"),
            );
        }
    }
    if app.security.seccomp != Seccomp::Unconfined {
        if let Err(what) = runc_seccomp().await {
            return refuse(
                "seccomp",
                format!("{what} (or set security.seccomp = \"unconfined\" for this app)"),
            );
        }
    }
    if app.security.init && !Path::new(INIT_HOST_PATH).is_file() {
        return refuse(
            "init",
            format!("{INIT_HOST_PATH} is missing (install Debian's tini package, or set security.init = false for this app)"),
        );
    }
    Ok(())
}

/// Whether this kernel lets the engine create user namespaces.
fn userns_support() -> Result<(), String> {
    if !Path::new("/proc/self/ns/user").exists() {
        return Err("this kernel has no user namespaces (CONFIG_USER_NS)".to_owned());
    }
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map_err(|e| format!("reading /proc/sys/user/max_user_namespaces failed: {e}"))?;
    if max.trim() == "0" {
        return Err(
            "user namespaces are turned off (/proc/sys/user/max_user_namespaces is 0)".to_owned(),
        );
    }
    Ok(())
}

/// The range gives no instance the ids of a host user or group, or of another user's
/// subordinate ids (`/etc/subuid`, `/etc/subgid`).
fn range_is_free(map: IdMap) -> Result<(), String> {
    let range = u64::from(map.base)..u64::from(map.base) + u64::from(map.size);
    let text = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    for (file, what) in [("/etc/passwd", "user"), ("/etc/group", "group")] {
        for line in text(file).lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if let Some(id) = fields.get(2).and_then(|f| f.parse::<u64>().ok()) {
                if range.contains(&id) {
                    return Err(format!(
                        "the range {}..{} holds host {what} {} ({id}, {file})",
                        range.start, range.end, fields[0]
                    ));
                }
            }
        }
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        for line in text(file).lines() {
            let fields: Vec<&str> = line.split(':').collect();
            let (Some(start), Some(count)) = (
                fields.get(1).and_then(|f| f.parse::<u64>().ok()),
                fields.get(2).and_then(|f| f.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if start < range.end && range.start < start + count {
                return Err(format!(
                    "the range {}..{} overlaps {}'s subordinate ids {start}..{} ({file})",
                    range.start,
                    range.end,
                    fields[0],
                    start + count
                ));
            }
        }
    }
    Ok(())
}

/// Whether runc was built with seccomp (`runc --version` names its libseccomp).
async fn runc_seccomp() -> Result<(), String> {
    static FOUND: OnceLock<Result<(), String>> = OnceLock::new();
    if let Some(found) = FOUND.get() {
        return found.clone();
    }
    let found = match tokio::process::Command::new("runc")
        .arg("--version")
        .output()
        .await
    {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("libseccomp:") => Ok(()),
        Ok(out) => Err(format!(
            "runc was built without seccomp (`runc --version` names no libseccomp: {:?})",
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        Err(e) => Err(format!("running `runc --version` failed: {e}")),
    };
    FOUND.get_or_init(|| found).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn this_host_offers_the_default_sandbox() {
        let app = AppSpec::new(
            "a",
            serverless_core::ImageRef::parse("oci-archive:/x.tar").unwrap(),
        );
        let map = IdMap {
            base: serverless_core::SecurityConfig::DEFAULT_USERNS_BASE,
            size: 65536,
        };
        check(&app, map).await.unwrap();
        // A range over host root's own ids is refused, naming the user and the key to change.
        let e = range_is_free(IdMap {
            base: 0,
            size: 65536,
        })
        .unwrap_err();
        assert!(e.contains("root (0, /etc/passwd)"), "{e}");
        let mut app = app;
        app.security.init = false;
        let e = check(&app, IdMap { base: 0, size: 10 })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("app a: security.userns") && e.contains("userns_base"),
            "{e}"
        );
    }
}
