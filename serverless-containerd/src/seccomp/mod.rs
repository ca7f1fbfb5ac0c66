//! The seccomp filter of an instance: the default allow-list (Docker's and containerd's
//! RuntimeDefault equivalent, kept as data in `default.json` with its provenance), or a user's
//! OCI profile read from a file.
//!
//! Like Docker's, the default depends on the capabilities the process gets: a call guarded by a
//! capability (`mount` by `CAP_SYS_ADMIN`, `chroot` by `CAP_SYS_CHROOT`, …) is allowed only when
//! that capability is in the set. Everything not allowed fails with `EPERM` (a denial, not a
//! kill), `clone3` with `ENOSYS` so libcs fall back to `clone`.
//!
//! The filter covers the machine's native architecture only (Docker's also covers x86 and x32
//! on x86_64, arm on aarch64): a 32-bit system call is refused with `SIGSYS`, as systemd's
//! `SystemCallArchitectures=native` does, which closes the compat syscall tables to strangers'
//! images and keeps runc from compiling the filter two more times on every start (see
//! docs/src/architecture.md, "Cold start"). An image of 32-bit binaries runs with a profile
//! file that lists their architecture (`security.seccomp = "<path>"`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;
use serverless_core::{BackendError, ErrorKind};

/// The profile's data, in this crate's own shape (see its `_source`).
const DEFAULT_JSON: &str = include_str!("default.json");

#[derive(Debug, Deserialize)]
struct Data {
    default_errno: u32,
    architectures: BTreeMap<String, Vec<Arch>>,
    allow: Vec<String>,
    allow_on_arch: BTreeMap<String, Vec<String>>,
    allow_with_arg: Vec<ArgRule>,
    allow_with_cap: BTreeMap<String, Vec<String>>,
    without_cap_sys_admin: WithoutSysAdmin,
}

#[derive(Debug, Deserialize)]
struct ArgRule {
    names: Vec<String>,
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
}

#[derive(Debug, Deserialize)]
struct WithoutSysAdmin {
    clone_allowed_unless_flags: u64,
    clone_index: usize,
    clone3_errno: u32,
}

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        // The file is compiled in and covered by the tests below.
        serde_json::from_str(DEFAULT_JSON).unwrap_or_else(|e| panic!("seccomp/default.json: {e}"))
    })
}

fn spec_error(e: oci_spec::OciSpecError) -> BackendError {
    BackendError::new(ErrorKind::Image, "building the seccomp profile failed").with_source(e)
}

fn cap_name(cap: &Capability) -> String {
    serde_json::to_value(cap)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn rule(
    names: &[String],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    arg: Option<(usize, LinuxSeccompOperator, u64, u64)>,
) -> Result<LinuxSyscall, BackendError> {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.to_vec())
        .action(action);
    if let Some(errno) = errno {
        b = b.errno_ret(errno);
    }
    if let Some((index, op, value, value_two)) = arg {
        b = b.args(vec![LinuxSeccompArgBuilder::default()
            .index(index)
            .op(op)
            .value(value)
            .value_two(value_two)
            .build()
            .map_err(spec_error)?]);
    }
    b.build().map_err(spec_error)
}

/// The default profile for a process holding `caps`, on this machine's architecture.
pub(crate) fn default_profile(caps: &HashSet<Capability>) -> Result<LinuxSeccomp, BackendError> {
    let d = data();
    let arch = std::env::consts::ARCH;
    let held: HashSet<String> = caps.iter().map(cap_name).collect();
    let allow = LinuxSeccompAction::ScmpActAllow;
    let mut names: Vec<String> = d.allow.clone();
    names.extend(d.allow_on_arch.get(arch).into_iter().flatten().cloned());
    for (cap, calls) in &d.allow_with_cap {
        if held.contains(cap) {
            names.extend(calls.iter().cloned());
        }
    }
    names.sort();
    names.dedup();
    let mut syscalls = vec![rule(&names, allow, None, None)?];
    for r in &d.allow_with_arg {
        syscalls.push(rule(
            &r.names,
            allow,
            None,
            Some((r.index, r.op, r.value, 0)),
        )?);
    }
    if !held.contains("CAP_SYS_ADMIN") {
        let w = &d.without_cap_sys_admin;
        syscalls.push(rule(
            &["clone".to_owned()],
            allow,
            None,
            Some((
                w.clone_index,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
                w.clone_allowed_unless_flags,
                0,
            )),
        )?);
        syscalls.push(rule(
            &["clone3".to_owned()],
            LinuxSeccompAction::ScmpActErrno,
            Some(w.clone3_errno),
            None,
        )?);
    }
    let mut b = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(d.default_errno)
        .syscalls(syscalls);
    if let Some(arches) = d.architectures.get(arch) {
        b = b.architectures(arches.clone());
    }
    b.build().map_err(spec_error)
}

/// A user's OCI seccomp profile (the `linux.seccomp` object of a runtime spec).
pub(crate) fn load_profile(path: &Path) -> Result<LinuxSeccomp, BackendError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        BackendError::new(
            ErrorKind::Unsupported,
            format!("security.seccomp: cannot read {}", path.display()),
        )
        .with_source(e)
    })?;
    serde_json::from_str(&text).map_err(|e| {
        BackendError::new(
            ErrorKind::Unsupported,
            format!(
                "security.seccomp: {} is not an OCI seccomp profile (the linux.seccomp object of a runtime spec): {e}",
                path.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(p: &LinuxSeccomp) -> HashSet<String> {
        p.syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn default_denies_with_eperm_and_follows_capabilities() {
        let base: HashSet<Capability> = [Capability::Chown, Capability::Kill].into();
        let p = default_profile(&base).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        let a = allowed(&p);
        for call in ["read", "execve", "epoll_wait", "openat", "futex"] {
            assert!(a.contains(call), "{call}");
        }
        for call in [
            "mount",
            "unshare",
            "init_module",
            "kexec_load",
            "chroot",
            "clock_settime",
            "ptrace",
            "process_vm_readv",
            "keyctl",
            "add_key",
        ] {
            assert!(!a.contains(call), "{call}");
        }
        let tracer: HashSet<Capability> = [Capability::SysPtrace].into();
        assert!(allowed(&default_profile(&tracer).unwrap()).contains("ptrace"));
        let json = serde_json::to_value(&p).unwrap();
        assert!(json.to_string().contains("clone3"));

        let admin: HashSet<Capability> = [Capability::SysAdmin, Capability::SysChroot].into();
        let a = allowed(&default_profile(&admin).unwrap());
        assert!(a.contains("mount") && a.contains("unshare") && a.contains("chroot"));
    }

    #[test]
    fn a_bad_user_profile_names_the_file() {
        let dir = std::env::temp_dir().join(format!("seccomp-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{\"defaultAction\": \"SCMP_ACT_NOPE\"}").unwrap();
        let e = load_profile(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("seccomp"), "{e}");
        let good = dir.join("good.json");
        std::fs::write(&good, "{\"defaultAction\": \"SCMP_ACT_ALLOW\"}").unwrap();
        assert_eq!(
            load_profile(&good).unwrap().default_action(),
            LinuxSeccompAction::ScmpActAllow
        );
        assert!(load_profile(&dir.join("missing.json")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
