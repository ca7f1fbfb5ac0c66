//! An image's layers owned by the user-namespace range: a committed snapshot holding the image's
//! whole tree with every file's owner and group shifted by the range's base, made once per image
//! (chain id) and range, and kept as the parent of every instance's snapshot.
//!
//! containerd 1.6's overlay snapshotter cannot mount layers id-mapped, so the shift is a real
//! `lchown` of each file. It is made on a copy, not through overlayfs: the image's merged layers
//! (a read-only view) are copied with `cp -a` into a new snapshot without a parent, and every
//! file of that copy is shifted there. An `lchown` through an overlay mount copies each file up
//! one at a time (work dir, xattrs, rename), many times slower than copying the tree and
//! shifting it on a plain directory (figures in docs/src/architecture.md, "Startup CPU boost").
//! Either way the remapped copy costs about the image's size on disk. It happens when the image
//! is prepared (deploy), never on a cold start's path. The snapshot is found again by its name
//! (`userns-BASE-SIZE-CHAINID`) and kept alive by a garbage-collection reference from the
//! image's top layer, so it goes with the image.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::snapshots::Info;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
    UpdateSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::types::Mount;
use nix::mount::MntFlags;
use prost_types::FieldMask;
use serverless_core::{BackendError, ErrorKind};

use crate::client::{failed, is_already_exists, is_not_found, Client};
use crate::gc_lease::GcLease;
use crate::labels;

/// The host id range an instance's user namespace maps onto: container id `n` is host id
/// `base + n` for `n < size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct IdMap {
    pub(crate) base: u32,
    pub(crate) size: u32,
}

impl IdMap {
    /// The remapped snapshot's name for the image whose top layer is `chain_id`.
    pub(crate) fn snapshot_name(&self, chain_id: &str) -> String {
        format!("userns-{}-{}-{chain_id}", self.base, self.size)
    }

    /// Host id of container id `id`, if the range maps it.
    fn shift(&self, id: u32) -> Option<u32> {
        (id < self.size).then(|| self.base + id)
    }
}

impl super::PreparedImage {
    /// The parent of an instance's snapshot: with a user namespace the image's remapped copy
    /// (an error if it was not made: never the image's own layers, whose files root owns),
    /// else the image's top layer.
    pub(crate) fn snapshot_parent(&self, userns: bool) -> Result<String, BackendError> {
        if !userns {
            return Ok(self.chain_id.clone());
        }
        self.remapped.get().cloned().ok_or_else(|| {
            BackendError::new(
                ErrorKind::Unavailable,
                format!(
                    "image {}: its user-namespace copy was not prepared",
                    self.name
                ),
            )
        })
    }
}

/// The label on a remapped snapshot naming the chain id it was made from.
pub(crate) const REMAP_OF: &str = "serverless.userns-remap-of";

/// The name of the committed snapshot holding the image `chain_id`'s files shifted into `map`,
/// made now unless it exists.
pub(crate) async fn remapped(
    client: &Client,
    snapshotter: &str,
    image: &str,
    chain_id: &str,
    map: IdMap,
) -> Result<String, BackendError> {
    let name = map.snapshot_name(chain_id);
    let stat = client
        .snapshots()
        .stat(client.req(StatSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: name.clone(),
        }))
        .await;
    match stat {
        Ok(_) => return Ok(name),
        Err(s) if is_not_found(&s) => {}
        Err(s) => return Err(failed(format_args!("snapshot stat of {name}"), s)),
    }
    let lease = GcLease::create(client, "remap").await?;
    let result = make(client, snapshotter, image, chain_id, map, &name, &lease).await;
    match &result {
        Ok(_) => lease.delete(client).await,
        Err(_) => lease.delete_collecting(client).await,
    }
    result.map(|()| name)
}

async fn make(
    client: &Client,
    snapshotter: &str,
    image: &str,
    chain_id: &str,
    map: IdMap,
    name: &str,
    lease: &GcLease,
) -> Result<(), BackendError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = format!("remap-{nanos}-{chain_id}");
    let view_key = format!("remap-view-{nanos}-{chain_id}");
    let managed: HashMap<String, String> = [(labels::MANAGED.to_owned(), "true".to_owned())].into();
    let view = client
        .snapshots()
        .view(client.leased(
            ViewSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: view_key.clone(),
                parent: chain_id.to_owned(),
                labels: HashMap::new(),
            },
            &lease.value,
        ))
        .await
        .map_err(|s| failed(format_args!("snapshot view of {chain_id}"), s))?
        .into_inner()
        .mounts;
    // No parent: the copy holds the whole tree, so no file of the image's own layers shows
    // through with its unshifted owner.
    let prepared = client
        .snapshots()
        .prepare(client.leased(
            PrepareSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: key.clone(),
                parent: String::new(),
                labels: managed.clone(),
            },
            &lease.value,
        ))
        .await;
    let mounts = match prepared {
        Ok(r) => r.into_inner().mounts,
        Err(s) => {
            remove(client, snapshotter, &view_key).await;
            return Err(failed(format_args!("snapshot prepare of {key}"), s));
        }
    };
    let shifted = tokio::task::spawn_blocking(move || copy_shifted(&view, &mounts, map)).await;
    remove(client, snapshotter, &view_key).await;
    let shifted = shifted.map_err(|e| {
        BackendError::new(
            ErrorKind::Unavailable,
            "remapping the image's files panicked",
        )
        .with_source(e)
    })?;
    if let Err(e) = shifted {
        remove(client, snapshotter, &key).await;
        return Err(BackendError::new(
            ErrorKind::Image,
            format!(
                "image {image}: giving its files to the user-namespace range {}..{} failed",
                map.base,
                u64::from(map.base) + u64::from(map.size)
            ),
        )
        .with_source(e));
    }
    let mut commit_labels = managed;
    commit_labels.insert(REMAP_OF.to_owned(), chain_id.to_owned());
    let committed = client
        .snapshots()
        .commit(client.leased(
            CommitSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                name: name.to_owned(),
                key: key.clone(),
                labels: commit_labels,
            },
            &lease.value,
        ))
        .await;
    match committed {
        Ok(_) => {}
        // Another engine on the same containerd made it meanwhile.
        Err(s) if is_already_exists(&s) => remove(client, snapshotter, &key).await,
        Err(s) => {
            remove(client, snapshotter, &key).await;
            return Err(failed(format_args!("snapshot commit of {name}"), s));
        }
    }
    // The image's top layer references its remapped copy: kept while the image is, collected
    // with it.
    let gc_ref = format!(
        "containerd.io/gc.ref.snapshot.{snapshotter}/userns-{}-{}",
        map.base, map.size
    );
    client
        .snapshots()
        .update(client.req(UpdateSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            info: Some(Info {
                name: chain_id.to_owned(),
                labels: [(gc_ref.clone(), name.to_owned())].into(),
                ..Info::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec![format!("labels.{gc_ref}")],
            }),
        }))
        .await
        .map_err(|s| failed(format_args!("labelling snapshot {chain_id}"), s))?;
    Ok(())
}

async fn remove(client: &Client, snapshotter: &str, key: &str) {
    if let Err(s) = client
        .snapshots()
        .remove(client.req(RemoveSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.to_owned(),
        }))
        .await
    {
        if !is_not_found(&s) {
            tracing::warn!(snapshot = key, error = %s, "removing a remap's snapshot failed");
        }
    }
}

/// Mounts the image's view and the new snapshot in temp dirs, copies the one into the other
/// (`cp -a`: owners, modes, times, hard links, symbolic links, device nodes and extended
/// attributes kept), shifts every file of the copy, unmounts.
fn copy_shifted(view: &[Mount], mounts: &[Mount], map: IdMap) -> std::io::Result<()> {
    with_mounted(view, |from| {
        with_mounted(mounts, |to| {
            let out = std::process::Command::new("cp")
                .arg("-a")
                .arg(from.join("."))
                .arg(to)
                .stdin(std::process::Stdio::null())
                .output()?;
            if !out.status.success() {
                return Err(std::io::Error::other(format!(
                    "copying the image's files failed: cp exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            shift_tree(to, map)
        })
    })
}

/// Mounts `mounts` on a new temp dir, runs `f` on it, unmounts and removes the dir.
fn with_mounted(
    mounts: &[Mount],
    f: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("serverless-remap-XXXXXX"))?;
    let target = dir.as_path();
    let mut mounted = 0;
    let mut result = (|| {
        for m in mounts {
            super::users::mount_one(m, target)?;
            mounted += 1;
        }
        f(target)
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

/// Shifts the owner and group of `root` and everything under it by `map`, never following a
/// symbolic link (`lchown`), keeping every mode bit (a chown clears set-user-ID and
/// set-group-ID: they are set again). A file met again under another name (a hard link) is
/// shifted once: its current owner is then already the shifted one.
pub(crate) fn shift_tree(root: &Path, map: IdMap) -> std::io::Result<()> {
    // (device, inode) → the owner and group it was given.
    let mut done: HashMap<(u64, u64), (u32, u32)> = HashMap::new();
    let mut dirs: Vec<PathBuf> = vec![root.to_owned()];
    shift_one(root, &std::fs::symlink_metadata(root)?, map, &mut done)?;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            shift_one(&path, &meta, map, &mut done)?;
            if meta.file_type().is_dir() {
                dirs.push(path);
            }
        }
    }
    Ok(())
}

fn shift_one(
    path: &Path,
    meta: &std::fs::Metadata,
    map: IdMap,
    done: &mut HashMap<(u64, u64), (u32, u32)>,
) -> std::io::Result<()> {
    let (uid, gid) = (meta.uid(), meta.gid());
    let key = (meta.dev(), meta.ino());
    if done.get(&key) == Some(&(uid, gid)) {
        return Ok(());
    }
    let outside = |what: &str, id: u32| {
        std::io::Error::other(format!(
            "{} has {what} {id}, outside the range's {} ids (raise [security] userns_size)",
            path.display(),
            map.size
        ))
    };
    let to = (
        map.shift(uid).ok_or_else(|| outside("owner", uid))?,
        map.shift(gid).ok_or_else(|| outside("group", gid))?,
    );
    std::os::unix::fs::lchown(path, Some(to.0), Some(to.1))?;
    let mode = meta.mode() & 0o7777;
    if meta.file_type().is_file() && mode & 0o6000 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    done.insert(key, to);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn shifts_owners_keeps_modes_and_links() {
        // Tests run as root (chown needs it).
        let dir = std::env::temp_dir().join(format!("sl-remap-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d")).unwrap();
        let file = dir.join("d/suid");
        std::fs::write(&file, b"x").unwrap();
        std::os::unix::fs::chown(&file, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(&file, dir.join("link")).unwrap();
        std::fs::write(dir.join("user"), b"y").unwrap();
        std::os::unix::fs::chown(dir.join("user"), Some(1000), Some(65534)).unwrap();
        // A link to a host file: never followed.
        symlink("/etc/hostname", dir.join("escape")).unwrap();
        let host_owner = std::fs::metadata("/etc/hostname").map(|m| m.uid()).ok();

        let map = IdMap {
            base: 200_000,
            size: 65536,
        };
        shift_tree(&dir, map).unwrap();
        let meta = |p: &str| std::fs::symlink_metadata(dir.join(p)).unwrap();
        assert_eq!(
            (meta("d/suid").uid(), meta("d/suid").gid()),
            (200_000, 200_000)
        );
        assert_eq!(meta("d/suid").mode() & 0o7777, 0o4755);
        assert_eq!(meta("link").uid(), 200_000);
        assert_eq!((meta("user").uid(), meta("user").gid()), (201_000, 265_534));
        assert_eq!(meta("escape").uid(), 200_000);
        assert_eq!(meta("").uid(), 200_000);
        assert_eq!(
            std::fs::metadata("/etc/hostname").map(|m| m.uid()).ok(),
            host_owner
        );

        // An id the range does not map: an error naming the file.
        std::os::unix::fs::chown(dir.join("user"), Some(70_000), None).unwrap();
        let e = shift_tree(
            &dir.join("user"),
            IdMap {
                base: 1 << 20,
                size: 65536,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("user") && e.contains("70000") && e.contains("userns_size"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
