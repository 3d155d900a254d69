//! Directory trees on the host, read without following anything a user of the tree planted.
//!
//! A file server's tree is written by its users, so names and links in it are untrusted: the
//! walk opens every directory and file relative to its parent's open handle with
//! `O_NOFOLLOW`, and checks that what it opened is what it listed (same device and inode).
//! A symlink swapped in for a directory or a file between the listing and the open is
//! refused for that entry (and logged by the caller), never followed out of the tree.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::{Error, Result};

/// A file item's source: a directory, with the patterns of what to leave out.
#[derive(Debug, Clone)]
pub struct TreeSource {
    root: PathBuf,
    /// Where it is read from when not `root` (a snapshot of it).
    read_from: Option<PathBuf>,
    patterns: Vec<String>,
    by_name: globset::GlobSet,
    by_path: globset::GlobSet,
}

/// Checks exclude patterns and builds their matchers: a pattern without `/` matches an
/// entry's name anywhere in the tree (`*.tmp`, `cache`); one with `/` matches its path from
/// the tree's root (`/var/tmp`, `home/*/.cache`).
fn matchers(patterns: &[String]) -> Result<(globset::GlobSet, globset::GlobSet)> {
    let mut by_name = globset::GlobSetBuilder::new();
    let mut by_path = globset::GlobSetBuilder::new();
    for p in patterns {
        let anchored = p.trim_start_matches('/');
        if anchored.is_empty() {
            return Err(Error::Invalid(format!(
                "--exclude {p:?}: the pattern would exclude the whole tree"
            )));
        }
        let glob = globset::GlobBuilder::new(anchored.trim_end_matches('/'))
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Invalid(format!("--exclude {p:?}: {e}")))?;
        if p.trim_end_matches('/').contains('/') {
            by_path.add(glob);
        } else {
            by_name.add(glob);
        }
    }
    let build = |b: globset::GlobSetBuilder| {
        b.build()
            .map_err(|e| Error::Invalid(format!("--exclude: {e}")))
    };
    Ok((build(by_name)?, build(by_path)?))
}

impl TreeSource {
    /// The tree at `root` (absolute), leaving out what `exclude` matches.
    pub fn new(root: &Path, exclude: &[String]) -> Result<Self> {
        let (by_name, by_path) = matchers(exclude)?;
        Ok(TreeSource {
            root: root.to_path_buf(),
            read_from: None,
            patterns: exclude.to_vec(),
            by_name,
            by_path,
        })
    }

    /// The same tree read from `snapshot`, a copy of it at one instant; what the snapshots
    /// directory holds (`/.kura-snapshots`) is left out.
    pub fn read_from(mut self, snapshot: &Path) -> Result<Self> {
        self.patterns
            .push(format!("/{}", crate::tree_snapshot::SNAPSHOT_DIR));
        let (by_name, by_path) = matchers(&self.patterns)?;
        self.by_name = by_name;
        self.by_path = by_path;
        self.read_from = Some(snapshot.to_path_buf());
        Ok(self)
    }

    /// Checks patterns without building a source (for protect).
    pub fn check_patterns(exclude: &[String]) -> Result<()> {
        matchers(exclude).map(|_| ())
    }

    /// The tree's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The exclude patterns.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether the entry at `rel` (its path from the root, `a/b/c`) is left out.
    pub fn excluded(&self, rel: &[u8]) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let text = String::from_utf8_lossy(rel);
        let name = text.rsplit('/').next().unwrap_or_default();
        self.by_name.is_match(name) || self.by_path.is_match(text.as_ref())
    }

    /// Opens the root directory.
    pub fn open_root(&self) -> Result<SourceDir> {
        let at = self.read_from.as_ref().unwrap_or(&self.root);
        let open = |extra: OFlags| {
            rustix::fs::open(
                at,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | extra,
                Mode::empty(),
            )
        };
        let fd = match open(OFlags::NOATIME) {
            Err(rustix::io::Errno::PERM) => open(OFlags::empty()),
            r => r,
        }
        .map_err(|e| io(&self.root, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io(&self.root, e))?;
        Ok(SourceDir {
            fd,
            path: self.root.clone(),
            dev: st.st_dev,
            stat: st,
        })
    }
}

fn io(path: &Path, e: impl Into<std::io::Error>) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// What a listed entry is, from `lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

/// The metadata of an entry, as `lstat` gives it.
#[derive(Debug, Clone, Copy)]
pub struct EntryStat {
    /// What it is.
    pub kind: EntryType,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: (i64, u32),
    /// Access time.
    pub atime: (i64, u32),
    /// Status change time.
    pub ctime: (i64, u32),
    /// Inode.
    pub ino: u64,
    /// Device of the file system holding it.
    pub dev: u64,
    /// Links.
    pub nlink: u64,
    /// Device number of a device node.
    pub rdev: u64,
}

impl EntryStat {
    /// What an open file is now (to tell whether it changed while it was read).
    pub fn of_file(f: &File) -> std::io::Result<Self> {
        Ok(Self::of(&rustix::fs::fstat(f)?))
    }

    /// Whether the content may differ from what `earlier` described: its size or its
    /// modification or change time moved.
    pub fn changed_since(&self, earlier: &EntryStat) -> bool {
        self.size != earlier.size || self.mtime != earlier.mtime || self.ctime != earlier.ctime
    }

    fn of(st: &rustix::fs::Stat) -> Self {
        use rustix::fs::FileType as T;
        let kind = match T::from_raw_mode(st.st_mode) {
            T::Directory => EntryType::Dir,
            T::Symlink => EntryType::Symlink,
            T::BlockDevice => EntryType::BlockDevice,
            T::CharacterDevice => EntryType::CharDevice,
            T::Fifo => EntryType::Fifo,
            T::Socket => EntryType::Socket,
            _ => EntryType::File,
        };
        let t = |s: i64, ns: i64| (s, ns.clamp(0, 999_999_999) as u32);
        EntryStat {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size.max(0) as u64,
            mtime: t(st.st_mtime, st.st_mtime_nsec as i64),
            atime: t(st.st_atime, st.st_atime_nsec as i64),
            ctime: t(st.st_ctime, st.st_ctime_nsec as i64),
            ino: st.st_ino,
            dev: st.st_dev,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
        }
    }
}

/// An open directory of the tree.
pub struct SourceDir {
    fd: OwnedFd,
    path: PathBuf,
    dev: u64,
    stat: rustix::fs::Stat,
}

/// Most entries one directory may hold before the walk calls it broken.
const MAX_ENTRIES: usize = 10_000_000;

impl SourceDir {
    /// Its path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its own metadata.
    pub fn stat(&self) -> EntryStat {
        EntryStat::of(&self.stat)
    }

    /// Its entries by name (bytes), each with its `lstat`. An entry that vanished between
    /// the listing and its `lstat` is left out.
    pub fn entries(&self) -> Result<Vec<(Vec<u8>, EntryStat)>> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd).map_err(|e| io(&self.path, e))?;
        let mut out = Vec::new();
        while let Some(e) = dir.read() {
            let e = e.map_err(|e| io(&self.path, e))?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if out.len() >= MAX_ENTRIES {
                return Err(Error::Invalid(format!(
                    "{}: more than {MAX_ENTRIES} entries in one directory",
                    self.path.display()
                )));
            }
            match rustix::fs::statat(&self.fd, e.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => out.push((name.to_vec(), EntryStat::of(&st))),
                Err(rustix::io::Errno::NOENT) => {}
                Err(err) => return Err(io(&self.path.join(lossy(name)), err)),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn child(&self, name: &[u8]) -> PathBuf {
        self.path.join(lossy(name))
    }

    fn open_checked(&self, name: &[u8], flags: OFlags, expect: &EntryStat) -> Result<OwnedFd> {
        let path = self.child(name);
        let c = std::ffi::CString::new(name)
            .map_err(|_| Error::Invalid(format!("{}: a name with a NUL byte", path.display())))?;
        // O_NOATIME where allowed (the owner, or root): reading a tree for its backup does
        // not change it, so the next backup finds the same metadata.
        let open = |extra: OFlags| {
            rustix::fs::openat(
                &self.fd,
                c.as_c_str(),
                flags | extra | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
                Mode::empty(),
            )
        };
        let fd = match open(OFlags::NOATIME) {
            Err(rustix::io::Errno::PERM) => open(OFlags::empty()),
            r => r,
        }
        .map_err(|e| io(&path, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io(&path, e))?;
        if st.st_ino != expect.ino || st.st_dev != expect.dev {
            return Err(Error::Changed {
                path,
                what: "it was replaced by another file while the tree was read".into(),
            });
        }
        Ok(fd)
    }

    /// Opens the subdirectory `name`, listed with `stat`. `None` when it is on another file
    /// system (a mount point: the walk stays on the tree's own file system).
    pub fn open_dir(&self, name: &[u8], stat: &EntryStat) -> Result<Option<SourceDir>> {
        if stat.dev != self.dev {
            return Ok(None);
        }
        let fd = self.open_checked(name, OFlags::DIRECTORY | OFlags::RDONLY, stat)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io(&self.child(name), e))?;
        Ok(Some(SourceDir {
            fd,
            path: self.child(name),
            dev: self.dev,
            stat: st,
        }))
    }

    /// Opens the regular file `name`, listed with `stat`, for reading.
    pub fn open_file(&self, name: &[u8], stat: &EntryStat) -> Result<File> {
        // O_NONBLOCK: a FIFO swapped in for the file cannot block the open.
        let fd = self.open_checked(name, OFlags::RDONLY | OFlags::NONBLOCK, stat)?;
        Ok(File::from(fd))
    }

    /// The target of the link `name`, as stored.
    pub fn read_link(&self, name: &[u8]) -> Result<Vec<u8>> {
        let c = std::ffi::CString::new(name)
            .map_err(|_| Error::Invalid("a name with a NUL byte".into()))?;
        rustix::fs::readlinkat(&self.fd, c.as_c_str(), Vec::new())
            .map(|t| t.into_bytes())
            .map_err(|e| io(&self.child(name), e))
    }

    /// This directory's extended attributes (ACLs among them).
    pub fn xattrs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        xattrs_of(&self.fd)
    }
}

/// The extended attributes of an open file, by name. Unreadable ones are left out (a file
/// system without xattrs has none).
pub fn xattrs_of(fd: impl AsFd) -> Vec<(Vec<u8>, Vec<u8>)> {
    let fd = fd.as_fd();
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::flistxattr(fd, &mut names) {
        Ok(0) | Err(_) => return Vec::new(),
        Ok(n) => n,
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(c) = std::ffi::CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 64 << 10];
        if let Ok(len) = rustix::fs::fgetxattr(fd, c.as_c_str(), &mut value) {
            value.truncate(len);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    out
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_anywhere_and_paths_from_the_root() {
        let t = TreeSource::new(
            Path::new("/srv"),
            &["*.tmp".into(), "/var/cache".into(), "home/*/.cache/".into()],
        )
        .unwrap();
        assert!(t.excluded(b"a/b/x.tmp"));
        assert!(t.excluded(b"x.tmp"));
        assert!(t.excluded(b"var/cache"));
        assert!(!t.excluded(b"other/var/cache"));
        assert!(t.excluded(b"home/ann/.cache"));
        assert!(!t.excluded(b"home/ann/sub/.cache"));
        assert!(!t.excluded(b"a/b/x.txt"));
        assert!(TreeSource::check_patterns(&["/".into()]).is_err());
        assert!(TreeSource::check_patterns(&["a[".into()]).is_err());
    }

    #[test]
    fn a_link_swapped_in_for_a_listed_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"mine").unwrap();
        std::fs::write(dir.path().join("secret"), b"host").unwrap();
        let t = TreeSource::new(dir.path(), &[]).unwrap();
        let root = t.open_root().unwrap();
        let entries = root.entries().unwrap();
        let (_, st) = entries.iter().find(|(n, _)| n == b"f").unwrap();
        std::fs::remove_file(dir.path().join("f")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("f")).unwrap();
        assert!(root.open_file(b"f", st).is_err());
        // Replaced by another file (the listed one kept elsewhere, so its inode number is
        // not reused): refused as well.
        std::fs::remove_file(dir.path().join("f")).unwrap();
        std::fs::hard_link(dir.path().join("secret"), dir.path().join("f")).unwrap();
        assert!(root.open_file(b"f", st).is_err());
    }
}
