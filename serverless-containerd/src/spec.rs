//! The OCI runtime spec of an instance: containerd's defaults (capabilities, mounts, masked and
//! read-only paths, no-new-privileges) plus the image's and app's process, the slot's limits,
//! an own cgroup, a new network namespace and (by default) a user namespace mapping the
//! instance's ids onto the engine's unprivileged host range.

use std::collections::HashSet;
use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use serverless_core::{AppSpec, BackendError, ErrorKind, Seccomp, Slot};

use crate::image::{IdMap, ImageUser};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's (and Docker's) default capability set without what no web app needs:
/// `NET_RAW` (raw sockets, ping), `MKNOD` (device nodes) and `SETFCAP` (file capabilities).
/// An app adds any back with `security.capabilities.add`. `AUDIT_WRITE` stays: without it
/// runc 1.1.5 fails the start on this project's hosts ("unable to apply caps: operation not
/// permitted"); see docs/src/operations.md, "Security model".
const DEFAULT_CAPS: [Capability; 11] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The init run as PID 1 in front of the app (Debian's `tini`, static build).
pub(crate) const INIT_HOST_PATH: &str = "/usr/bin/tini-static";
/// Where the init is bind-mounted read-only: on the instance's own `/dev` tmpfs, so nothing is
/// written into the image's root filesystem.
const INIT_PATH: &str = "/dev/init";

/// The process's command line: the app's, behind the init unless `security.init = false`.
/// `-g` sends signals to the app's whole process group (a shell wrapper's children too).
fn process_args(
    app: &AppSpec,
    image: Option<&oci_spec::image::Config>,
) -> Result<Vec<String>, BackendError> {
    let app_args = args(app, image)?;
    if !app.security.init {
        return Ok(app_args);
    }
    let mut out = vec![INIT_PATH.to_owned(), "-g".to_owned(), "--".to_owned()];
    out.extend(app_args);
    Ok(out)
}

/// The read-only bind mount of the init, or an error naming what is missing.
fn init_mount() -> Result<Mount, BackendError> {
    if !std::path::Path::new(INIT_HOST_PATH).is_file() {
        return Err(BackendError::new(
            ErrorKind::Unsupported,
            format!("security.init: {INIT_HOST_PATH} is missing (install Debian's tini package, or set security.init = false)"),
        ));
    }
    MountBuilder::default()
        .destination(INIT_PATH)
        .typ("bind")
        .source(INIT_HOST_PATH)
        .options(
            ["rbind", "ro", "nosuid", "nodev"]
                .map(String::from)
                .to_vec(),
        )
        .build()
        .map_err(spec_error)
}

/// The default set plus the app's `security.capabilities.add`.
fn capabilities(app: &AppSpec) -> Result<HashSet<Capability>, BackendError> {
    let mut caps: HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
    for name in &app.security.capabilities_add {
        let cap: Capability = serde_json::from_value(serde_json::Value::String(format!(
            "CAP_{name}"
        )))
        .map_err(|e| {
            BackendError::new(
                ErrorKind::Unsupported,
                format!(
                    "security.capabilities.add: {name:?} is not a capability this runtime knows"
                ),
            )
            .with_source(e)
        })?;
        caps.insert(cap);
    }
    Ok(caps)
}

/// The command line: the app's `command` if set, else the image's ENTRYPOINT + CMD.
pub(crate) fn args(
    app: &AppSpec,
    image: Option<&oci_spec::image::Config>,
) -> Result<Vec<String>, BackendError> {
    if let Some(cmd) = app.command.as_ref().filter(|c| !c.is_empty()) {
        return Ok(cmd.clone());
    }
    let mut args = Vec::new();
    if let Some(c) = image {
        args.extend(c.entrypoint().iter().flatten().cloned());
        args.extend(c.cmd().iter().flatten().cloned());
    }
    if args.is_empty() {
        return Err(BackendError::new(
            ErrorKind::Image,
            format!(
                "image {} has no ENTRYPOINT or CMD and app {} sets no command",
                app.image, app.name
            ),
        ));
    }
    Ok(args)
}

/// Image ENV, then the app's env, then `PORT`; a later value replaces an earlier one in place.
pub(crate) fn env(app: &AppSpec, image: Option<&oci_spec::image::Config>) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match out.iter_mut().find(|(key, _)| key == k) {
        Some(entry) => entry.1 = v.to_owned(),
        None => out.push((k.to_owned(), v.to_owned())),
    };
    let image_env = image.and_then(|c| c.env().clone()).unwrap_or_default();
    if !image_env.iter().any(|e| e.starts_with("PATH=")) {
        if let Some((k, v)) = DEFAULT_PATH.split_once('=') {
            set(k, v);
        }
    }
    for e in &image_env {
        match e.split_once('=') {
            Some((k, v)) => set(k, v),
            None => set(e, ""),
        }
    }
    for (k, v) in &app.env {
        set(k, v);
    }
    set("PORT", &app.port.to_string());
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn tmpfs(dest: &str, source: &str, options: &[&str]) -> Result<Mount, BackendError> {
    MountBuilder::default()
        .destination(dest)
        .typ("tmpfs")
        .source(source)
        .options(options.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error)
}

fn mount(dest: &str, typ: &str, options: &[&str]) -> Result<Mount, BackendError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(typ)
        .options(options.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error)
}

fn spec_error(e: oci_spec::OciSpecError) -> BackendError {
    BackendError::new(ErrorKind::Image, "building the OCI runtime spec failed").with_source(e)
}

/// Everything the spec needs besides the app.
pub(crate) struct SpecInput<'a> {
    pub(crate) id: &'a str,
    pub(crate) cgroup_path: &'a str,
    pub(crate) image: Option<&'a oci_spec::image::Config>,
    /// The image's `USER`, resolved when the image was prepared.
    pub(crate) user: &'a ImageUser,
    /// The CPU quota the task is created with, in thousandths of a vCPU: the slot's, or the
    /// startup boost's.
    pub(crate) cpu_millicpu: u32,
    /// The host id range of the instance's user namespace; `None`: no user namespace
    /// (`security.userns = false`).
    pub(crate) userns: Option<IdMap>,
}

/// The instance's cgroup limits: the slot's memory (no swap) and the app's pids limit, always;
/// a CPU quota of `cpu_millicpu` thousandths of a vCPU per [`Slot::CPU_PERIOD_US`] (the slot's,
/// or above it while the startup boost lasts); no device access.
pub(crate) fn resources(app: &AppSpec, cpu_millicpu: u32) -> Result<LinuxResources, BackendError> {
    let quota_per_millicpu = i64::try_from(Slot::CPU_PERIOD_US / 1000).unwrap_or(i64::MAX);
    let slot: Slot = app.slot;
    let memory = i64::try_from(slot.memory_bytes()).unwrap_or(i64::MAX);
    LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(spec_error)?])
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory)
                // memory+swap = memory: no swap.
                .swap(memory)
                .build()
                .map_err(spec_error)?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota(i64::from(cpu_millicpu) * quota_per_millicpu)
                .period(Slot::CPU_PERIOD_US)
                .build()
                .map_err(spec_error)?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(i64::from(app.pids_limit))
                .build()
                .map_err(spec_error)?,
        )
        .build()
        .map_err(spec_error)
}

/// Builds the instance's runtime spec.
pub(crate) fn build(app: &AppSpec, input: &SpecInput<'_>) -> Result<Spec, BackendError> {
    let caps = capabilities(app)?;
    let seccomp = match &app.security.seccomp {
        Seccomp::Default => Some(crate::seccomp::default_profile(&caps)?),
        Seccomp::Unconfined => None,
        Seccomp::Profile(path) => Some(crate::seccomp::load_profile(path)?),
    };
    let cwd = input
        .image
        .and_then(|c| c.working_dir().clone())
        .filter(|w| w.starts_with('/'))
        .unwrap_or_else(|| "/".to_owned());
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(input.user.uid)
                .gid(input.user.gid)
                .additional_gids(input.user.additional_gids.clone())
                .build()
                .map_err(spec_error)?,
        )
        .args(process_args(app, input.image)?)
        .env(env(app, input.image))
        .cwd(PathBuf::from(cwd))
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .permitted(caps.clone())
                .effective(caps)
                .build()
                .map_err(spec_error)?,
        )
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()
            .map_err(spec_error)?])
        .no_new_privileges(true)
        .build()
        .map_err(spec_error)?;

    let resources = resources(app, input.cpu_millicpu)?;

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        // A new network namespace: runc brings its loopback up and nothing else.
        LinuxNamespaceType::Network,
    ];
    if input.userns.is_some() {
        namespaces.push(LinuxNamespaceType::User);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(spec_error)?;

    let mut linux = LinuxBuilder::default();
    if let Some(seccomp) = seccomp {
        linux = linux.seccomp(seccomp);
    }
    if let Some(map) = input.userns {
        let mapping = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(map.base)
            .size(map.size)
            .build()
            .map_err(spec_error)?;
        linux = linux
            .uid_mappings(vec![mapping])
            .gid_mappings(vec![mapping]);
    }
    let linux = linux
        .resources(resources)
        .cgroups_path(PathBuf::from(input.cgroup_path))
        .namespaces(namespaces)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .build()
        .map_err(spec_error)?;

    let mut mounts = vec![
        mount("/proc", "proc", &[])?,
        tmpfs(
            "/dev",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        tmpfs(
            "/dev/shm",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
        tmpfs(
            "/run",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
    ];

    if app.security.init {
        mounts.push(init_mount()?);
    }

    let hostname: String = input.id.chars().take(63).collect();
    SpecBuilder::default()
        .version("1.0.2-dev")
        .process(process)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .map_err(spec_error)?,
        )
        .hostname(hostname)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(spec_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::ConfigBuilder;
    use serverless_core::ImageRef;

    fn app() -> AppSpec {
        let mut app = AppSpec::new("hello", ImageRef::parse("oci-archive:/x.tar").unwrap());
        app.slot = "c.5-m32".parse().unwrap();
        app.pids_limit = 64;
        app
    }

    #[test]
    fn spec_carries_slot_limits_and_isolation() {
        let image = ConfigBuilder::default()
            .entrypoint(vec!["/bin/busybox".to_owned()])
            .cmd(vec!["httpd".to_owned(), "-f".to_owned()])
            .env(vec!["PATH=/bin".to_owned(), "PORT=1".to_owned()])
            .build()
            .unwrap();
        let spec = build(
            &app(),
            &SpecInput {
                id: "hello-1",
                cgroup_path: "/serverless/hello-1",
                image: Some(&image),
                user: &ImageUser {
                    uid: 1234,
                    gid: 2345,
                    additional_gids: vec![3456],
                },
                cpu_millicpu: app().slot.millicpu(),
                userns: Some(IdMap {
                    base: 2_000_000_000,
                    size: 65536,
                }),
            },
        )
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let res = &json["linux"]["resources"];
        assert_eq!(res["memory"]["limit"], 32 << 20);
        assert_eq!(res["memory"]["swap"], 32 << 20);
        assert_eq!(res["cpu"]["quota"], 50_000);
        assert_eq!(res["cpu"]["period"], 100_000);
        assert_eq!(res["pids"]["limit"], 64);
        // Boosted: only the CPU quota differs.
        let boosted = serde_json::to_value(resources(&app(), 2000).unwrap()).unwrap();
        assert_eq!(boosted["cpu"]["quota"], 200_000);
        assert_eq!(boosted["memory"], res["memory"]);
        assert_eq!(boosted["pids"], res["pids"]);
        assert_eq!(json["linux"]["cgroupsPath"], "/serverless/hello-1");
        assert_eq!(
            json["process"]["args"],
            serde_json::json!(["/dev/init", "-g", "--", "/bin/busybox", "httpd", "-f"])
        );
        assert!(json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/dev/init" && m["source"] == INIT_HOST_PATH));
        assert_eq!(
            json["process"]["env"],
            serde_json::json!(["PATH=/bin", "PORT=8080"])
        );
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(
            json["process"]["user"],
            serde_json::json!({"uid": 1234, "gid": 2345, "additionalGids": [3456]})
        );
        let caps = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(caps.len(), 11);
        for dropped in ["CAP_SYS_ADMIN", "CAP_NET_RAW", "CAP_MKNOD", "CAP_SETFCAP"] {
            assert!(!caps.iter().any(|c| c == dropped), "{dropped}");
        }
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["linux"]["seccomp"]["defaultErrnoRet"], 1);
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network") && ns.contains(&"user"));
        let map =
            serde_json::json!([{"containerID": 0, "hostID": 2_000_000_000u32, "size": 65536}]);
        assert_eq!(json["linux"]["uidMappings"], map);
        assert_eq!(json["linux"]["gidMappings"], map);
        assert!(json["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/kcore"));
    }

    #[test]
    fn security_unconfined_and_added_capabilities() {
        let mut app = app();
        app.command = Some(vec!["/bin/true".into()]);
        app.security.seccomp = Seccomp::Unconfined;
        app.security.init = false;
        app.security.capabilities_add = vec!["NET_RAW".into(), "SYS_ADMIN".into()];
        let input = SpecInput {
            id: "hello-1",
            cgroup_path: "/serverless/hello-1",
            image: None,
            user: &ImageUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
            },
            cpu_millicpu: 500,
            userns: None,
        };
        let json = serde_json::to_value(build(&app, &input).unwrap()).unwrap();
        assert!(json["linux"].get("seccomp").is_none());
        assert!(json["linux"].get("uidMappings").is_none());
        assert!(!json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "user"));
        assert_eq!(json["process"]["args"], serde_json::json!(["/bin/true"]));
        let caps = json["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert!(caps.iter().any(|c| c == "CAP_NET_RAW"));
        assert!(caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert_eq!(caps.len(), 13);
    }

    #[test]
    fn command_overrides_image_and_env_merges() {
        let mut app = app();
        app.command = Some(vec!["/bin/sh".into(), "-c".into(), "exit 3".into()]);
        app.env.insert("A".into(), "2".into());
        let image = ConfigBuilder::default()
            .cmd(vec!["nope".to_owned()])
            .env(vec!["A=1".to_owned(), "B=x=y".to_owned()])
            .build()
            .unwrap();
        assert_eq!(
            args(&app, Some(&image)).unwrap(),
            ["/bin/sh", "-c", "exit 3"]
        );
        assert_eq!(
            env(&app, Some(&image)),
            [DEFAULT_PATH, "A=2", "B=x=y", "PORT=8080"]
        );
        app.command = None;
        let err = args(&app, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Image);
        assert!(err.to_string().contains("no ENTRYPOINT or CMD"), "{err}");
    }
}
