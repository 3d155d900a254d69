//! A [`FileSystem`] mounted read-only through FUSE (the fuser crate), as `restic mount` and
//! `proxmox-backup-client mount` do.
//!
//! The kernel's requests arrive on fuser's thread and are handed, reply and all, to the
//! thread that called [`mount`], which owns the file system (its readers are not `Send`).
//! The mount is `ro,nosuid,nodev,noexec` with the kernel checking modes: whatever modes,
//! owners, setuid bits or device nodes a guest put in its disk, the mount gives no one more
//! than reading files their modes allow. It ends when `stop` is set or when the mount
//! point is unmounted (`umount`, `fusermount -u`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};

use crate::{Entry, EntryKind, Error, FileSystem, Result};

/// How long the kernel may keep what it was told: a point never changes.
const TTL: Duration = Duration::from_secs(3600);

/// A kernel request with the means to answer it.
enum Op {
    Lookup(u64, Vec<u8>, ReplyEntry),
    GetAttr(u64, ReplyAttr),
    ReadLink(u64, ReplyData),
    Open(u64, ReplyOpen),
    Read(u64, u64, u32, ReplyData),
    Release(u64, ReplyEmpty),
    ReadDir(u64, u64, ReplyDirectory),
}

/// What fuser calls: every request goes to the owner's thread.
struct Forward(mpsc::Sender<Op>);

impl Forward {
    fn send(&self, op: Op) {
        // The owner has gone only when the mount is ending; the kernel then gets an error
        // from fuser when the reply is dropped.
        let _ = self.0.send(op);
    }
}

impl Filesystem for Forward {
    fn lookup(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.send(Op::Lookup(parent.0, name.as_bytes().to_vec(), reply));
    }

    fn getattr(&self, _: &Request, ino: INodeNo, _: Option<FileHandle>, reply: ReplyAttr) {
        self.send(Op::GetAttr(ino.0, reply));
    }

    fn readlink(&self, _: &Request, ino: INodeNo, reply: ReplyData) {
        self.send(Op::ReadLink(ino.0, reply));
    }

    fn open(&self, _: &Request, ino: INodeNo, _: OpenFlags, reply: ReplyOpen) {
        self.send(Op::Open(ino.0, reply));
    }

    fn read(
        &self,
        _: &Request,
        _: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.send(Op::Read(fh.0, offset, size, reply));
    }

    fn release(
        &self,
        _: &Request,
        _: INodeNo,
        fh: FileHandle,
        _: OpenFlags,
        _: Option<LockOwner>,
        _: bool,
        reply: ReplyEmpty,
    ) {
        self.send(Op::Release(fh.0, reply));
    }

    fn readdir(
        &self,
        _: &Request,
        ino: INodeNo,
        _: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.send(Op::ReadDir(ino.0, offset, reply));
    }
}

fn errno(e: &Error) -> Errno {
    match e {
        Error::NotFound(_) => Errno::ENOENT,
        Error::Invalid(_) => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

fn kind(k: EntryKind) -> FileType {
    match k {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::BlockDevice => FileType::BlockDevice,
        EntryKind::CharDevice => FileType::CharDevice,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::Socket => FileType::Socket,
    }
}

fn time(secs: i64, nsec: u32) -> SystemTime {
    let d = Duration::new(secs.unsigned_abs(), nsec.min(999_999_999));
    if secs >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
    .unwrap_or(UNIX_EPOCH)
}

/// The kernel's 32-bit device encoding of a glibc `dev_t`.
fn encode_dev(dev: u64) -> u32 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)) as u32
}

/// An open file: its path and a reader at `pos`.
struct Open {
    path: Vec<u8>,
    reader: Box<dyn std::io::Read>,
    pos: u64,
}

/// The owner's side: inode numbers for the paths the kernel has seen, open files, and the
/// last directory listed (the kernel reads a large one in several calls).
struct Served<'a> {
    fs: &'a FileSystem,
    paths: Vec<Vec<u8>>,
    inodes: HashMap<Vec<u8>, u64>,
    open: HashMap<u64, Open>,
    next_fh: u64,
    listed: Option<(u64, Vec<Entry>)>,
}

impl Served<'_> {
    fn path(&self, ino: u64) -> Option<&[u8]> {
        self.paths
            .get(ino.checked_sub(1)? as usize)
            .map(Vec::as_slice)
    }

    fn inode(&mut self, path: &[u8]) -> u64 {
        if let Some(i) = self.inodes.get(path) {
            return *i;
        }
        self.paths.push(path.to_vec());
        let ino = self.paths.len() as u64;
        self.inodes.insert(path.to_vec(), ino);
        ino
    }

    fn attr(&mut self, e: &Entry) -> FileAttr {
        let ino = self.inode(e.raw_path());
        FileAttr {
            ino: INodeNo(ino),
            size: e.size,
            blocks: e.size.div_ceil(512),
            atime: time(e.atime, e.atime_nsec),
            mtime: time(e.mtime, e.mtime_nsec),
            ctime: time(e.mtime, e.mtime_nsec),
            crtime: time(e.mtime, e.mtime_nsec),
            kind: kind(e.kind),
            perm: (e.mode & 0o7777) as u16,
            nlink: if e.kind == EntryKind::Dir { 2 } else { 1 },
            uid: e.uid,
            gid: e.gid,
            rdev: encode_dev(e.extra.rdev),
            blksize: 4096,
            flags: 0,
        }
    }

    fn entry(&self, ino: u64) -> std::result::Result<Entry, Errno> {
        let path = self.path(ino).ok_or(Errno::ENOENT)?;
        self.fs.entry_raw(path).map_err(|e| errno(&e))
    }

    fn child(parent: &[u8], name: &[u8]) -> Vec<u8> {
        let mut p = parent.to_vec();
        if p != b"/" {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }

    fn answer(&mut self, op: Op) {
        match op {
            Op::Lookup(parent, name, reply) => {
                let Some(p) = self.path(parent) else {
                    return reply.error(Errno::ENOENT);
                };
                if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
                    return reply.error(Errno::ENOENT);
                }
                let path = Self::child(p, &name);
                match self.fs.entry_raw(&path) {
                    Ok(e) => {
                        let a = self.attr(&e);
                        reply.entry(&TTL, &a, fuser::Generation(0));
                    }
                    Err(e) => reply.error(errno(&e)),
                }
            }
            Op::GetAttr(ino, reply) => match self.entry(ino) {
                Ok(e) => {
                    let a = self.attr(&e);
                    reply.attr(&TTL, &a);
                }
                Err(e) => reply.error(e),
            },
            Op::ReadLink(ino, reply) => match self.entry(ino) {
                Ok(e) if e.kind == EntryKind::Symlink => reply.data(&e.raw_target),
                Ok(_) => reply.error(Errno::EINVAL),
                Err(e) => reply.error(e),
            },
            Op::Open(ino, reply) => {
                let Some(path) = self.path(ino).map(<[u8]>::to_vec) else {
                    return reply.error(Errno::ENOENT);
                };
                match self.fs.reader_raw(&path) {
                    Ok(r) => {
                        self.next_fh += 1;
                        let fh = self.next_fh;
                        self.open.insert(
                            fh,
                            Open {
                                path,
                                reader: Box::new(r),
                                pos: 0,
                            },
                        );
                        // A point never changes: the kernel may keep its pages.
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
                    }
                    Err(e) => reply.error(errno(&e)),
                }
            }
            Op::Read(fh, offset, size, reply) => match self.read(fh, offset, size) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            },
            Op::Release(fh, reply) => {
                self.open.remove(&fh);
                reply.ok();
            }
            Op::ReadDir(ino, offset, mut reply) => {
                let Some(path) = self.path(ino).map(<[u8]>::to_vec) else {
                    return reply.error(Errno::ENOENT);
                };
                let cached = matches!(&self.listed, Some((i, _)) if *i == ino) && offset > 0;
                if !cached {
                    match self.fs.list_raw(&path) {
                        Ok(list) => self.listed = Some((ino, list)),
                        Err(e) => return reply.error(errno(&e)),
                    }
                }
                let list = self.listed.take().map(|(_, l)| l).unwrap_or_default();
                let parent = match path.iter().rposition(|b| *b == b'/') {
                    Some(0) | None => b"/".to_vec(),
                    Some(cut) => path[..cut].to_vec(),
                };
                let mut all: Vec<(u64, FileType, Vec<u8>)> = vec![
                    (ino, FileType::Directory, b".".to_vec()),
                    (self.inode(&parent), FileType::Directory, b"..".to_vec()),
                ];
                for e in &list {
                    let i = self.inode(e.raw_path());
                    let name = e
                        .raw_path()
                        .rsplit(|b| *b == b'/')
                        .next()
                        .unwrap_or_default();
                    all.push((i, kind(e.kind), name.to_vec()));
                }
                for (n, (i, k, name)) in all.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*i), n as u64 + 1, *k, OsStr::from_bytes(name)) {
                        break;
                    }
                }
                self.listed = Some((ino, list));
                reply.ok();
            }
        }
    }

    /// `size` bytes at `offset` of open file `fh` (fewer at its end). Reads go forward; a
    /// read before the reader's position opens the file again.
    fn read(&mut self, fh: u64, offset: u64, size: u32) -> std::result::Result<Vec<u8>, Errno> {
        let fs = self.fs;
        let f = self.open.get_mut(&fh).ok_or(Errno::EBADF)?;
        if offset < f.pos {
            f.reader = Box::new(fs.reader_raw(&f.path).map_err(|e| errno(&e))?);
            f.pos = 0;
        }
        let mut sink = vec![0u8; 1 << 16];
        while f.pos < offset {
            let want = ((offset - f.pos) as usize).min(sink.len());
            let n = f.reader.read(&mut sink[..want]).map_err(|_| Errno::EIO)?;
            if n == 0 {
                return Ok(Vec::new());
            }
            f.pos += n as u64;
        }
        let mut out = vec![0u8; size as usize];
        let mut got = 0;
        while got < out.len() {
            let n = f.reader.read(&mut out[got..]).map_err(|_| Errno::EIO)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        f.pos += got as u64;
        out.truncate(got);
        Ok(out)
    }
}

/// Mounts `fs` read-only at `mountpoint` (an existing directory) and serves it on this
/// thread until `stop` is set or the mount point is unmounted; then unmounts and returns.
/// `name` is what `mount` shows as the source.
pub fn mount(fs: &FileSystem, mountpoint: &Path, name: &str, stop: &AtomicBool) -> Result<()> {
    let what = mountpoint.display().to_string();
    if !mountpoint.is_dir() {
        return Err(Error::Invalid(format!(
            "{what}: not a directory to mount on"
        )));
    }
    let (tx, rx) = mpsc::channel();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::DefaultPermissions,
        MountOption::FSName(name.to_string()),
        MountOption::Subtype("kura".into()),
    ];
    let session =
        fuser::spawn_mount(Forward(tx), mountpoint, &config).map_err(|source| Error::Write {
            what: format!("mounting on {what} (FUSE: /dev/fuse, and fusermount3 when not root)"),
            source,
        })?;
    let mut served = Served {
        fs,
        paths: vec![b"/".to_vec()],
        inodes: HashMap::from([(b"/".to_vec(), 1)]),
        open: HashMap::new(),
        next_fh: 0,
        listed: None,
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(op) => served.answer(op),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // fuser let go of its side: the mount point was unmounted.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Answer what is queued with an error, then unmount (dropping the session does).
    drop(rx);
    drop(session);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn device_numbers_take_the_kernels_encoding() {
        // /dev/null is 1:3; a large one, 259:65536.
        assert_eq!(super::encode_dev((1 << 8) | 3), (1 << 8) | 3);
        let dev = ((259u64 & 0xfff) << 8) | ((65536u64 & !0xff) << 12);
        assert_eq!(super::encode_dev(dev), (259 << 8) | (65536 << 12));
    }
}
