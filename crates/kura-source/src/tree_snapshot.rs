//! A file system snapshot taken before a tree is read, so that every file of a point is
//! from one instant (file-system consistent) instead of read live, file after file.
//!
//! btrfs: the tree must be a subvolume. A read-only snapshot of it is made inside it, at
//! `ROOT/.kura-snapshots/ITEM-RP`, read, and deleted when the point is released. Inside
//! the subvolume it is on the same file system whatever is mounted where, and a snapshot
//! holds its nested subvolumes as empty directories, so later snapshots never contain
//! earlier ones. The walk leaves `/.kura-snapshots` out. A snapshot that a killed backup
//! left behind is deleted by the item's next backup.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where snapshots of a tree are made, below its root.
pub const SNAPSHOT_DIR: &str = ".kura-snapshots";

/// How a file item's tree is captured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TreeSnapshot {
    /// Read live: crash-consistent, each file as it is when read.
    #[default]
    None,
    /// A read-only btrfs snapshot of the subvolume, read and then deleted.
    Btrfs,
}

impl TreeSnapshot {
    /// Parses `none` or `btrfs`, naming the allowed values otherwise.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(TreeSnapshot::None),
            "btrfs" => Ok(TreeSnapshot::Btrfs),
            other => Err(Error::Invalid(format!(
                "snapshot {other:?}: expected none or btrfs"
            ))),
        }
    }

    /// The name used in specs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            TreeSnapshot::None => "none",
            TreeSnapshot::Btrfs => "btrfs",
        }
    }

    /// Checks that `root` can be captured this way (for protect and prechecks).
    pub fn check(self, root: &Path) -> Result<()> {
        match self {
            TreeSnapshot::None => Ok(()),
            TreeSnapshot::Btrfs => check_btrfs(root),
        }
    }

    /// Whether this is the default (not written in specs).
    pub fn is_none(&self) -> bool {
        *self == TreeSnapshot::None
    }
}

const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;
/// The inode number of every btrfs subvolume's root directory.
const BTRFS_SUBVOLUME_INODE: u64 = 256;

/// Checks that `root` can be snapshotted by btrfs: the `btrfs` tool runs, and `root` is a
/// subvolume (not just a directory on btrfs). Touches nothing.
pub fn check_btrfs(root: &Path) -> Result<()> {
    let fs = rustix::fs::statfs(root).map_err(|e| Error::Io {
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    if fs.f_type as u64 != BTRFS_SUPER_MAGIC {
        return Err(Error::Invalid(format!(
            "--snapshot btrfs: {} is not on a btrfs file system",
            root.display()
        )));
    }
    let st = rustix::fs::stat(root).map_err(|e| Error::Io {
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    if st.st_ino != BTRFS_SUBVOLUME_INODE {
        return Err(Error::Invalid(format!(
            "--snapshot btrfs: {} is a directory on btrfs, not a subvolume; make it one \
             (btrfs subvolume create) or protect the subvolume that holds it",
            root.display()
        )));
    }
    btrfs(&["--version"]).map(|_| ())
}

/// Runs the `btrfs` tool; its error output becomes the error.
fn btrfs(args: &[&str]) -> Result<String> {
    let out = Command::new("btrfs").args(args).output().map_err(|e| {
        Error::Invalid(format!(
            "the btrfs tool cannot be run ({e}); install btrfs-progs"
        ))
    })?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "btrfs {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The snapshot for point `rp_id` of item `item_id`.
fn snapshot_path(root: &Path, item_id: &str, rp_id: &str) -> PathBuf {
    root.join(SNAPSHOT_DIR).join(format!("{item_id}-{rp_id}"))
}

/// Makes `ROOT/.kura-snapshots` (mode 0700), or checks the one there is kura's: a real
/// directory, not a link, owned by this user and writable by no one else. Users of the
/// tree can write in its root, and must not be able to steer where snapshots go or which
/// ones are deleted.
fn own_dir(root: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = root.join(SNAPSHOT_DIR);
    let io = |e: std::io::Error| Error::Io {
        path: dir.clone(),
        source: e,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(io)?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(Error::Invalid(format!(
            "{} is not kura's (a directory owned by uid {me}, writable by no one else); \
             remove it so that kura can make its snapshots there",
            dir.display()
        )));
    }
    Ok(())
}

/// Deletes the snapshots a killed backup of `item_id` left; returns what was deleted.
fn remove_stale(root: &Path, item_id: &str) -> Vec<String> {
    let dir = root.join(SNAPSHOT_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{item_id}-")) {
            let path = e.path();
            if btrfs(&["subvolume", "delete", &path.to_string_lossy()]).is_ok() {
                removed.push(path.display().to_string());
            }
        }
    }
    removed
}

/// Takes a read-only snapshot of `root` for point `rp_id`; returns its path and what was
/// cleaned up first.
pub fn take_btrfs(root: &Path, item_id: &str, rp_id: &str) -> Result<(PathBuf, Vec<String>)> {
    check_btrfs(root)?;
    own_dir(root)?;
    let stale = remove_stale(root, item_id);
    let dest = snapshot_path(root, item_id, rp_id);
    btrfs(&[
        "subvolume",
        "snapshot",
        "-r",
        &root.to_string_lossy(),
        &dest.to_string_lossy(),
    ])?;
    Ok((dest, stale))
}

/// Deletes a snapshot `take_btrfs` made (and its directory when nothing else is there).
pub fn release_btrfs(root: &Path, snapshot: &Path) -> Result<()> {
    btrfs(&["subvolume", "delete", &snapshot.to_string_lossy()])?;
    let _ = std::fs::remove_dir(root.join(SNAPSHOT_DIR));
    Ok(())
}
