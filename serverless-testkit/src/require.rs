//! Whether this machine can run a real-containerd test, and the rule for when it cannot: skip
//! loudly on a developer's machine, fail under `CI`.

use std::path::Path;

use crate::images::BUSYBOX;

/// The programs every real-containerd test runs, each with the Debian package that has it.
const PROGRAMS: [(&str, &str); 3] = [
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("ctr", "containerd"),
];

/// Whether this machine can run the real-containerd test `test`: root, `containerd`, `runc`
/// and `ctr` on `PATH`, and Debian's `busybox-static` at [`BUSYBOX`].
///
/// When something is missing: with the `CI` environment variable set (to anything but empty,
/// `0` or `false`) it panics naming what is missing, so the test fails instead of passing
/// without having run; otherwise it prints a loud `SKIPPING` line and returns `false`, and the
/// test returns early.
pub fn can_run(test: &str) -> bool {
    can_run_with(test, &[])
}

/// Like [`can_run`], with more programs the test runs: `(program, Debian package)` pairs, such
/// as `("docker-registry", "docker-registry")`.
pub fn can_run_with(test: &str, programs: &[(&str, &str)]) -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_owned());
    }
    for (program, package) in PROGRAMS.iter().chain(programs) {
        if !on_path(program) {
            missing.push(format!("`{program}` (Debian package {package})"));
        }
    }
    if !Path::new(BUSYBOX).exists() {
        missing.push(format!("{BUSYBOX} (Debian package busybox-static)"));
    }
    verdict(test, &missing, in_ci())
}

/// Run (`true`) when nothing is `missing`; else fail under CI (panic), skip loudly otherwise.
fn verdict(test: &str, missing: &[String], ci: bool) -> bool {
    if missing.is_empty() {
        return true;
    }
    let what = format!(
        "{test} needs {}; as root, scripts/install-deps installs the packages",
        missing.join(", ")
    );
    if ci {
        panic!("{what}. CI is set: a real-containerd test that cannot run fails");
    }
    eprintln!("\n!!!!!!!! SKIPPING {what} !!!!!!!!\n");
    false
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

fn is_root() -> bool {
    procfs::process::Process::myself()
        .and_then(|p| p.status())
        .is_ok_and(|s| s.euid == 0)
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::verdict;

    #[test]
    fn runs_when_nothing_is_missing() {
        assert!(verdict("t", &[], false));
        assert!(verdict("t", &[], true));
    }

    #[test]
    fn skips_outside_ci() {
        assert!(!verdict("t", &["root".to_owned()], false));
    }

    #[test]
    #[should_panic(expected = "t needs root, `runc` (Debian package runc)")]
    fn fails_under_ci_naming_what_is_missing() {
        verdict(
            "t",
            &["root".to_owned(), "`runc` (Debian package runc)".to_owned()],
            true,
        );
    }
}
