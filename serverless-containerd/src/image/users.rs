//! The image's `USER` as numbers: `name`, `uid`, `name:group`, `uid:gid`, … resolved against
//! the image's own `/etc/passwd` and `/etc/group`, as Docker and containerd do — a user name's
//! uid and primary gid from passwd, a group name's gid from group, and supplementary groups from
//! the groups that list the user as a member.
//!
//! The two files are read once per image, when it is prepared: a read-only view of its top
//! snapshot is mounted in a temp dir, the files are opened with `openat2(RESOLVE_IN_ROOT)` (a
//! symlink in the image, `/etc/passwd -> /data/passwd` say, resolves inside the image, never on
//! the host), then it is unmounted and the view removed. Images without `USER` skip all that.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::snapshots::{RemoveSnapshotRequest, ViewSnapshotRequest};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use containerd_client::types::Mount;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use serverless_core::{BackendError, ErrorKind};

use crate::client::{failed, Client};

/// Who an instance's process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ImageUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups: `gid` first, then the groups listing the user (as containerd
    /// sets them; `id` shows them as `groups=`).
    pub(crate) additional_gids: Vec<u32>,
}

/// The most of `/etc/passwd` or `/etc/group` that is read (larger files are refused).
const MAX_FILE: u64 = 4 << 20;

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// `name:password:uid:gid:gecos:home:shell` lines; malformed lines and comments are skipped (as
/// libc does).
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next().filter(|n| !n.is_empty() && !n.starts_with('#'))?;
        let _password = f.next()?;
        let uid = f.next()?.trim().parse().ok()?;
        let gid = f.next()?.trim().parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    })
}

/// `name:password:gid:member,member` lines.
fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next().filter(|n| !n.is_empty() && !n.starts_with('#'))?;
        let _password = f.next()?;
        let gid = f.next()?.trim().parse().ok()?;
        let members = f
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        Some(GroupEntry { name, gid, members })
    })
}

/// Why a `USER` value cannot be used (the image and the value are named by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UserError {
    /// Not `user[:group]` with both parts non-empty.
    #[error("expected user[:group], each a name or a number")]
    Malformed,
    /// A number that is not a valid uid or gid.
    #[error("{0} is out of range (0 to {max})", max = u32::MAX)]
    OutOfRange(String),
    /// A user name the image's `/etc/passwd` does not have.
    #[error("user {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    /// A user name in an image without `/etc/passwd`.
    #[error("user {0:?} needs the image's /etc/passwd, which it lacks")]
    NoPasswd(String),
    /// A group name the image's `/etc/group` does not have.
    #[error("group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
    /// A group name in an image without `/etc/group`.
    #[error("group {0:?} needs the image's /etc/group, which it lacks")]
    NoGroupFile(String),
}

fn numeric(s: &str) -> Option<Result<u32, UserError>> {
    s.bytes().all(|b| b.is_ascii_digit()).then(|| {
        s.parse::<u32>()
            .map_err(|_| UserError::OutOfRange(s.to_owned()))
    })
}

/// Resolves a `USER` value. `passwd`/`group` are the image's files (`None`: the image has none).
pub(crate) fn resolve(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ImageUser, UserError> {
    if spec.is_empty() {
        return Ok(ImageUser::default());
    }
    let (user, group_spec) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group_spec.is_some_and(str::is_empty) {
        return Err(UserError::Malformed);
    }
    let entries = || passwd_entries(passwd.unwrap_or(""));
    let (uid, name, primary) = match numeric(user) {
        Some(uid) => {
            let uid = uid?;
            let entry = entries().find(|e| e.uid == uid);
            (uid, entry.as_ref().map(|e| e.name), entry.map(|e| e.gid))
        }
        None => {
            let entry = entries()
                .find(|e| e.name == user)
                .ok_or_else(|| match passwd {
                    Some(_) => UserError::UnknownUser(user.to_owned()),
                    None => UserError::NoPasswd(user.to_owned()),
                })?;
            (entry.uid, Some(entry.name), Some(entry.gid))
        }
    };
    let gid = match group_spec {
        None => primary.unwrap_or(0),
        Some(g) => match numeric(g) {
            Some(gid) => gid?,
            None => group_entries(group.unwrap_or(""))
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| match group {
                    Some(_) => UserError::UnknownGroup(g.to_owned()),
                    None => UserError::NoGroupFile(g.to_owned()),
                })?,
        },
    };
    let mut additional_gids = vec![gid];
    if let Some(name) = name {
        for e in group_entries(group.unwrap_or("")) {
            if e.members.contains(&name) && !additional_gids.contains(&e.gid) {
                additional_gids.push(e.gid);
            }
        }
    }
    Ok(ImageUser {
        uid,
        gid,
        additional_gids,
    })
}

/// The image's `USER` as numbers, reading its `/etc/passwd` and `/etc/group` from the snapshot
/// `chain_id` when the value needs them.
pub(crate) async fn image_user(
    client: &Client,
    snapshotter: &str,
    lease: &AsciiMetadataValue,
    image: &str,
    chain_id: &str,
    spec: &str,
) -> Result<ImageUser, BackendError> {
    let refused = |why: UserError| {
        BackendError::new(
            ErrorKind::Image,
            format!("image {image}: USER {spec:?} cannot be used"),
        )
        .with_source(why)
    };
    if spec.is_empty() {
        return Ok(ImageUser::default());
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = format!("users-{nanos}-{chain_id}");
    let mounts = client
        .snapshots()
        .view(client.leased(
            ViewSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: key.clone(),
                parent: chain_id.to_owned(),
                labels: HashMap::new(),
            },
            lease,
        ))
        .await
        .map_err(|s| failed(format_args!("snapshot view of {chain_id}"), s))?
        .into_inner()
        .mounts;
    let read = tokio::task::spawn_blocking(move || read_identity_files(&mounts)).await;
    let _ = client
        .snapshots()
        .remove(client.req(RemoveSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key,
        }))
        .await;
    let (passwd, group) = read
        .map_err(|e| {
            BackendError::new(
                ErrorKind::Unavailable,
                format!("reading the image's users: {e}"),
            )
        })?
        .map_err(|e| {
            BackendError::new(
                ErrorKind::Image,
                format!("image {image}: reading its /etc/passwd and /etc/group failed"),
            )
            .with_source(e)
        })?;
    resolve(spec, passwd.as_deref(), group.as_deref()).map_err(refused)
}

/// Mounts the view in a temp dir, reads the two files, unmounts.
fn read_identity_files(mounts: &[Mount]) -> std::io::Result<(Option<String>, Option<String>)> {
    let dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("serverless-users-XXXXXX"))?;
    let target = dir.as_path();
    let mut mounted = 0;
    let mut result = (|| {
        for m in mounts {
            mount_one(m, target)?;
            mounted += 1;
        }
        let root: OwnedFd = nix::fcntl::open(
            target,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok((
            read_in_root(&root, "etc/passwd")?,
            read_in_root(&root, "etc/group")?,
        ))
    })();
    let mut busy = false;
    for _ in 0..mounted {
        if let Err(e) = nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            busy = true;
            result = result.and(Err(e.into()));
        }
    }
    if !busy {
        // Never recursively: were something still mounted, that would delete the image's files.
        let _ = std::fs::remove_dir(target);
    }
    result
}

pub(super) fn mount_one(m: &Mount, target: &Path) -> std::io::Result<()> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    let typ = (!flags.contains(MsFlags::MS_BIND)).then_some(m.r#type.as_str());
    let data = data.join(",");
    nix::mount::mount(
        Some(m.source.as_str()),
        target,
        typ,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )?;
    Ok(())
}

/// A file's text, resolving every path component inside `root`; `None` when it does not exist.
fn read_in_root(root: &impl AsFd, path: &str) -> std::io::Result<Option<String>> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match nix::fcntl::openat2(root, path, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut file = std::fs::File::from(fd);
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    (&mut file).take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "/{path} is larger than {MAX_FILE} bytes"
        )));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        broken line\n\
        web:x:1234:2345:Web:/srv:/bin/sh\n\
        nobody:x:65534:65534::/:/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\n\
        web:x:2345:\n\
        extra:x:3456:other, web\n\
        more:x:4567:web\n\
        nogroup:x:65534:\n";

    fn ok(spec: &str) -> ImageUser {
        resolve(spec, Some(PASSWD), Some(GROUP)).unwrap()
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(ok(""), ImageUser::default());
        let web = ImageUser {
            uid: 1234,
            gid: 2345,
            additional_gids: vec![2345, 3456, 4567],
        };
        assert_eq!(ok("web"), web);
        // A uid in passwd gets that entry's group and memberships, as a name does.
        assert_eq!(ok("1234"), web);
        assert_eq!(
            ok("web:nogroup"),
            ImageUser {
                uid: 1234,
                gid: 65534,
                additional_gids: vec![65534, 3456, 4567],
            }
        );
        assert_eq!(
            ok("web:3456"),
            ImageUser {
                uid: 1234,
                gid: 3456,
                additional_gids: vec![3456, 4567],
            }
        );
        // Numbers need no files; an unknown uid gets gid 0.
        assert_eq!(
            resolve("1000:50", None, None).unwrap(),
            ImageUser {
                uid: 1000,
                gid: 50,
                additional_gids: vec![50],
            }
        );
        assert_eq!(resolve("1000", None, None).unwrap().gid, 0);
        assert_eq!(ok("nobody").uid, 65534);
    }

    #[test]
    fn unknown_or_malformed_users_are_named() {
        let err = |spec: &str, p: Option<&str>, g: Option<&str>| {
            resolve(spec, p, g).unwrap_err().to_string()
        };
        assert!(err("ghost", Some(PASSWD), Some(GROUP)).contains("\"ghost\" is not in"));
        assert!(err("web", None, None).contains("lacks"));
        assert!(err("web:staff", Some(PASSWD), Some(GROUP)).contains("group \"staff\""));
        assert!(err("web:staff", Some(PASSWD), None).contains("/etc/group, which it lacks"));
        assert!(err("99999999999", None, None).contains("out of range"));
        assert!(err(":", None, None).contains("user[:group]"));
        assert!(err("web:", Some(PASSWD), Some(GROUP)).contains("user[:group]"));
        assert_eq!(
            resolve("ghost", Some(PASSWD), Some(GROUP)),
            Err(UserError::UnknownUser("ghost".into()))
        );
        // A name never matches a comment or a malformed line.
        assert!(err("broken line", Some(PASSWD), None).contains("is not in"));
        assert!(err("# a comment", Some(PASSWD), None).contains("is not in"));
    }
}
