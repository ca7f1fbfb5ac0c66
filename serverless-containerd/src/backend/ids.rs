//! Container ids: the check on instance ids (which become container ids, file names and cgroup
//! paths) and the ids of standbys' containers.

use std::time::SystemTime;

use serverless_core::{BackendError, ErrorKind, InstanceId};

/// containerd ids: `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76 characters. Also keeps ids
/// safe in file and cgroup paths.
pub(super) fn validate_id(id: &InstanceId) -> Result<&str, BackendError> {
    let s = id.as_str();
    let mut prev_sep = true;
    let mut ok = !s.is_empty() && s.len() <= 76;
    for b in s.bytes() {
        let sep = matches!(b, b'.' | b'_' | b'-');
        if !(b.is_ascii_alphanumeric() || sep) || (sep && prev_sep) {
            ok = false;
            break;
        }
        prev_sep = sep;
    }
    if ok && !prev_sep {
        Ok(s)
    } else {
        Err(BackendError::new(
            ErrorKind::NotFound,
            format!("invalid instance id {s:?}: expected letters and digits separated by single '.', '_' or '-', at most 76 characters"),
        ))
    }
}

/// A standby's container id, `<app>-sb<generation>-<random>`: a valid containerd id, unique
/// across runs.
pub(super) fn standby_container_id(app: &str, generation: u64) -> String {
    let app: String = app.chars().take(40).collect();
    let app = app.trim_end_matches(['-', '.', '_']);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let random = nanos ^ std::process::id().rotate_left(16);
    format!("{app}-sb{generation}-{random:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for ok in ["hello-1-abc", "a", "a.b_c-d", "A1"] {
            assert!(validate_id(&InstanceId::new(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "a/b",
            "../x",
            "a b",
            &"x".repeat(77),
        ] {
            assert!(validate_id(&InstanceId::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn standby_ids_are_valid_containerd_ids() {
        for app in [
            "a",
            "hello",
            &"x".repeat(63),
            &format!("{}-y", "x".repeat(39)),
        ] {
            let id = InstanceId::new(standby_container_id(app, u64::MAX));
            assert!(validate_id(&id).is_ok(), "{id}");
        }
    }
}
