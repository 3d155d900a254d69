//! File-level restore: the partitions and files of a recovery point's disk, read from the
//! vault chunk by chunk as the file system asks for them (a small file of a large disk
//! fetches that file's chunks and some metadata, not the disk), and extracted safely.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kura_catalog::{ItemRow, JobOperation, RpRow};
use kura_files::{Entry, ExtractOptions, ExtractReport, FileSystem, ReadAt, Volume};
use kura_store::{ChunkId, DiskIndex, Vault};
use serde::Serialize;

use crate::{Error, ErrorKind, Home, Progress, Result, Secrets};

/// Which disk and volume of which point.
#[derive(Debug, Clone, Default)]
pub struct FilesTarget {
    /// Recovery point id, short id or `latest`.
    pub rp: String,
    /// The disk (needed when the point has several).
    pub disk: Option<String>,
    /// The volume (partition number, 0 for a disk without a table); needed when the disk
    /// has several readable ones.
    pub volume: Option<u32>,
    /// Read the point from the vault's replica (cross-region restore).
    pub from_replica: bool,
}

/// How many chunks and bytes were fetched from the vault to answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Fetched {
    /// Chunks fetched (zero chunks are not).
    pub chunks: u64,
    /// Their plaintext bytes.
    pub bytes: u64,
}

/// A point's disk and its volumes.
#[derive(Debug, Clone, Serialize)]
pub struct PointVolumes {
    /// Recovery point id.
    pub rp_id: String,
    /// Disk name.
    pub disk: String,
    /// Disk size.
    pub size: u64,
    /// Its partitions (or the whole disk as volume 0), with what each holds.
    pub volumes: Vec<Volume>,
    /// What reading them fetched.
    pub fetched: Fetched,
}

/// A directory of a point's file system (or one entry, when the path is not a directory).
#[derive(Debug, Clone, Serialize)]
pub struct FileListing {
    /// Recovery point id.
    pub rp_id: String,
    /// Disk name.
    pub disk: String,
    /// Volume number.
    pub volume: u32,
    /// The entry listed.
    pub entry: Entry,
    /// A directory's entries, by name; empty for anything else.
    pub entries: Vec<Entry>,
    /// What reading them fetched.
    pub fetched: Fetched,
}

/// What a file restore wrote.
#[derive(Debug, Clone, Serialize)]
pub struct FileRestoreReport {
    /// The job.
    pub job_id: String,
    /// Recovery point id.
    pub rp_id: String,
    /// Disk name.
    pub disk: String,
    /// Volume number.
    pub volume: u32,
    /// The target directory.
    pub to: String,
    /// What was written and skipped.
    #[serde(flatten)]
    pub extracted: ExtractReport,
    /// What it fetched from the vault.
    pub fetched: Fetched,
}

/// Decoded chunks kept for the file system's next reads.
const CACHED_CHUNKS: usize = 32;

/// A recovery point's disk read from its vault: each read fetches (and decodes) only the
/// chunks it covers, keeping the last few.
struct VaultDisk {
    vault: Vault,
    codec: kura_store::Codec,
    index: DiskIndex,
    cache: HashMap<usize, Arc<Vec<u8>>>,
    order: VecDeque<usize>,
    chunks: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl VaultDisk {
    fn chunk(&mut self, i: usize) -> std::io::Result<Arc<Vec<u8>>> {
        if let Some(c) = self.cache.get(&i) {
            return Ok(c.clone());
        }
        let id: ChunkId = self.index.chunks[i];
        let len = (self.index.chunk_range(i).end - self.index.chunk_range(i).start) as usize;
        let data = if id.is_zero() {
            vec![0; len]
        } else {
            let d = self
                .vault
                .get_chunk(&id, &mut self.codec)
                .map_err(|e| std::io::Error::other(format!("chunk {}: {e}", id.to_hex())))?;
            if d.len() != len {
                return Err(std::io::Error::other(format!(
                    "chunk {} holds {} bytes where the index expects {len}",
                    id.to_hex(),
                    d.len()
                )));
            }
            self.chunks.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(len as u64, Ordering::Relaxed);
            d
        };
        let data = Arc::new(data);
        if self.order.len() == CACHED_CHUNKS
            && let Some(old) = self.order.pop_front()
        {
            self.cache.remove(&old);
        }
        self.order.push_back(i);
        self.cache.insert(i, data.clone());
        Ok(data)
    }
}

impl ReadAt for VaultDisk {
    fn size(&self) -> u64 {
        self.index.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.index.size)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("a read at {offset} runs past the disk's end"),
                )
            })?;
        let cs = u64::from(self.index.chunk_size);
        let mut pos = offset;
        while pos < end {
            let i = (pos / cs) as usize;
            let chunk = self.chunk(i)?;
            let within = (pos - i as u64 * cs) as usize;
            let n = ((end - pos) as usize).min(chunk.len() - within);
            let at = (pos - offset) as usize;
            buf[at..at + n].copy_from_slice(&chunk[within..within + n]);
            pos += n as u64;
        }
        Ok(())
    }
}

impl VaultDisk {
    /// Another reader of the same disk, with its own cache (one per NBD client).
    fn fresh(&self) -> VaultDisk {
        VaultDisk {
            vault: self.vault.clone(),
            codec: self.vault.codec(),
            index: self.index.clone(),
            cache: HashMap::new(),
            order: VecDeque::new(),
            chunks: self.chunks.clone(),
            bytes: self.bytes.clone(),
        }
    }
}

impl kura_nbd::Export for VaultDisk {
    fn size(&self) -> u64 {
        self.index.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        ReadAt::read_at(self, buf, offset)
    }

    /// Zero chunks are holes; runs of chunks of one kind are merged.
    fn extents(&mut self, offset: u64, len: u64) -> std::io::Result<Vec<kura_nbd::Extent>> {
        let cs = u64::from(self.index.chunk_size);
        let end = (offset + len).min(self.index.size);
        let mut out: Vec<kura_nbd::Extent> = Vec::new();
        let mut at = offset;
        while at < end {
            let i = (at / cs) as usize;
            let chunk_end = self.index.chunk_range(i).end.min(end);
            let state = if self.index.chunks[i].is_zero() {
                kura_nbd::STATE_HOLE_ZERO
            } else {
                0
            };
            match out.last_mut() {
                Some(last) if last.state == state => last.len += chunk_end - at,
                _ => out.push(kura_nbd::Extent {
                    len: chunk_end - at,
                    state,
                }),
            }
            at = chunk_end;
        }
        Ok(out)
    }
}

/// A snapshot-tier disk (a local file or image) as a [`ReadAt`].
struct SnapshotDisk(Box<dyn kura_source::DiskReader>);

impl ReadAt for SnapshotDisk {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0
            .read_at(buf, offset)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// A recovery point's disk ready to be served over NBD: each client gets its own reader.
pub struct PointExport {
    /// Recovery point id.
    pub rp_id: String,
    /// Disk name.
    pub disk: String,
    /// Disk size.
    pub size: u64,
    /// Makes the reader of a new client.
    pub factory: kura_nbd::Factory,
}

impl std::fmt::Debug for PointExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PointExport({} {})", self.rp_id, self.disk)
    }
}

fn files_error(e: kura_files::Error) -> Error {
    let kind = match &e {
        kura_files::Error::NotFound(_) => ErrorKind::NotFound,
        kura_files::Error::Invalid(_) | kura_files::Error::Unsupported(_) => ErrorKind::Invalid,
        kura_files::Error::Corrupt { .. } => ErrorKind::Corrupt,
        kura_files::Error::Io(_) | kura_files::Error::Write { .. } => ErrorKind::Other,
    };
    Error::new(kind, e.to_string())
}

/// An opened point disk, with its fetch counters.
struct OpenDisk {
    rp: RpRow,
    disk: String,
    reader: Box<dyn ReadAt>,
    /// The vault's storage, when it is read from a vault (not a snapshot).
    storage: Option<Arc<dyn kura_backend::Backend>>,
    chunks: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl OpenDisk {
    fn fetched(&self) -> Fetched {
        Fetched {
            chunks: self.chunks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

impl Home {
    /// Opens the disk of a point for random reads: from the vault when the point has a vault
    /// tier, else from its snapshot.
    fn open_point_disk(
        &self,
        item: &ItemRow,
        target: &FilesTarget,
        secrets: &Secrets,
    ) -> Result<OpenDisk> {
        Self::check_can_restore(item)?;
        let rp = self.resolve_rp(item, &target.rp)?;
        if rp.tier == "snapshot" {
            let snap = rp
                .snapshot
                .as_deref()
                .and_then(kura_source::Snapshot::decode)
                .filter(|s| s.exists())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "recovery point {} had only a snapshot tier, and the snapshot is gone",
                            rp.id
                        ),
                    )
                })?;
            let disk = crate::restore::pick_snapshot_disk(
                &rp.id,
                &snap.disk_names(),
                target.disk.as_deref(),
            )?;
            let reader = Box::new(SnapshotDisk(snap.reader_of(target.disk.as_deref())?));
            // Nothing is fetched from a vault.
            return Ok(OpenDisk {
                rp,
                disk,
                reader,
                storage: None,
                chunks: Arc::default(),
                bytes: Arc::default(),
            });
        }
        let (disk, vd) = self.open_vault_disk(item, &rp, target, secrets)?;
        Ok(OpenDisk {
            rp,
            disk,
            storage: Some(vd.vault.backend().clone()),
            chunks: vd.chunks.clone(),
            bytes: vd.bytes.clone(),
            reader: Box::new(vd),
        })
    }

    /// A point's disk in its vault: the disk's name and a reader of its chunks.
    fn open_vault_disk(
        &self,
        item: &ItemRow,
        rp: &RpRow,
        target: &FilesTarget,
        secrets: &Secrets,
    ) -> Result<(String, VaultDisk)> {
        let disk = target.disk.as_deref();
        let vrow = self.catalog.vault_by_id(&item.vault_id)?;
        let vault = self.open_vault_for(&vrow, secrets, target.from_replica)?;
        let manifest = vault.get_manifest(&rp.id)?;
        let entry = crate::restore::pick_disk(&manifest, disk)?;
        let index = vault.get_index(&entry.index)?;
        if index.size != entry.size {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "index {} disagrees with its manifest on the disk size",
                    entry.index
                ),
            ));
        }
        let vd = VaultDisk {
            codec: vault.codec(),
            vault,
            index,
            cache: HashMap::new(),
            order: VecDeque::new(),
            chunks: Arc::default(),
            bytes: Arc::default(),
        };
        Ok((entry.name.clone(), vd))
    }

    /// A point's disk to serve read-only over NBD (`kura export`), from its vault tier.
    pub fn point_export(
        &self,
        item: &str,
        target: &FilesTarget,
        secrets: &Secrets,
    ) -> Result<PointExport> {
        let row = self.catalog.item(item)?;
        Self::check_can_restore(&row)?;
        let rp = self.resolve_rp(&row, &target.rp)?;
        if rp.tier == "snapshot" {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "recovery point {} has only a snapshot tier (its disk is a local file): restore it instead",
                    rp.id
                ),
            ));
        }
        let (disk, proto) = self.open_vault_disk(&row, &rp, target, secrets)?;
        let size = proto.index.size;
        let proto = std::sync::Mutex::new(proto);
        let factory: kura_nbd::Factory = Arc::new(move || {
            let p = proto.lock().unwrap_or_else(|e| e.into_inner());
            Ok(Box::new(p.fresh()) as Box<dyn kura_nbd::Export>)
        });
        Ok(PointExport {
            rp_id: rp.id,
            disk,
            size,
            factory,
        })
    }

    /// The partitions (volumes) of a point's disk and what each holds.
    pub fn point_volumes(
        &self,
        item: &str,
        target: &FilesTarget,
        secrets: &Secrets,
    ) -> Result<PointVolumes> {
        let item = self.catalog.item(item)?;
        if item.kind == "files" {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "item {:?} protects a directory tree: its points have files but no disks or volumes (see `kura files ls {}`)",
                    item.name, item.name
                ),
            ));
        }
        let mut d = self.open_point_disk(&item, target, secrets)?;
        let volumes = kura_files::volumes(d.reader.as_mut()).map_err(files_error)?;
        Ok(PointVolumes {
            rp_id: d.rp.id.clone(),
            disk: d.disk.clone(),
            size: d.reader.size(),
            volumes,
            fetched: d.fetched(),
        })
    }

    /// Opens the file system of the chosen (or only readable) volume.
    fn open_point_fs(
        &self,
        item: &ItemRow,
        target: &FilesTarget,
        secrets: &Secrets,
    ) -> Result<(OpenDisk, FileSystem, u32)> {
        if item.kind == "files" {
            return self.open_point_tree(item, target, secrets);
        }
        let mut d = self.open_point_disk(item, target, secrets)?;
        let volumes = kura_files::volumes(d.reader.as_mut()).map_err(files_error)?;
        let describe = || {
            volumes
                .iter()
                .map(|v| format!("{} ({:?}, {} bytes)", v.number, v.fs, v.size))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let volume = match target.volume {
            Some(n) => volumes.iter().find(|v| v.number == n).ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "disk {} of point {} has no volume {n}; it has: {}",
                        d.disk,
                        d.rp.id,
                        describe()
                    ),
                )
            })?,
            None => {
                let readable: Vec<&Volume> =
                    volumes.iter().filter(|v| v.fs.readable()).collect();
                match readable.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(Error::new(
                            ErrorKind::Invalid,
                            format!(
                                "disk {} of point {} has no file system kura can read (ext2/3/4, XFS, FAT); its volumes: {}",
                                d.disk,
                                d.rp.id,
                                describe()
                            ),
                        ));
                    }
                    _ => {
                        return Err(Error::new(
                            ErrorKind::Invalid,
                            format!(
                                "disk {} of point {} has several readable volumes: name one with --volume ({})",
                                d.disk,
                                d.rp.id,
                                describe()
                            ),
                        ));
                    }
                }
            }
        }
        .clone();
        // The file system reads through its own handle; the counters are shared.
        let reader = std::mem::replace(&mut d.reader, Box::new(Empty));
        let fs = FileSystem::open(reader, &volume).map_err(files_error)?;
        Ok((d, fs, volume.number))
    }

    /// A file item's point as a file system (its tree; `target.disk` names one when the
    /// point has several).
    fn open_point_tree(
        &self,
        item: &ItemRow,
        target: &FilesTarget,
        secrets: &Secrets,
    ) -> Result<(OpenDisk, FileSystem, u32)> {
        Self::check_can_restore(item)?;
        let rp = self.resolve_rp(item, &target.rp)?;
        let vrow = self.catalog.vault_by_id(&item.vault_id)?;
        let vault = self.open_vault_for(&vrow, secrets, target.from_replica)?;
        let manifest = vault.get_manifest(&rp.id)?;
        let tree = crate::restore::pick(
            &rp.id,
            "tree",
            &manifest.trees,
            |t| &t.name,
            target.disk.as_deref(),
        )?;
        let index = vault.get_tree_index(&tree.index)?;
        let storage = Some(vault.backend().clone());
        let vt = crate::tree_read::VaultTree::new(vault, Arc::new(index));
        let d = OpenDisk {
            rp,
            disk: tree.name.clone(),
            reader: Box::new(Empty),
            storage,
            chunks: vt.chunks.clone(),
            bytes: vt.bytes.clone(),
        };
        Ok((d, FileSystem::from_tree(Box::new(vt)), 0))
    }

    /// Mounts a point's file system read-only at `mountpoint` through FUSE, served by this
    /// thread until `stop` is set or the mount point is unmounted; then it is unmounted.
    /// Returns what was fetched from the vault while it was mounted.
    pub fn mount_files(
        &self,
        item: &str,
        target: &FilesTarget,
        mountpoint: &std::path::Path,
        secrets: &Secrets,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Fetched> {
        let item = self.catalog.item(item)?;
        let (d, fs, volume) = self.open_point_fs(&item, target, secrets)?;
        let short = &d.rp.id[d.rp.id.len().saturating_sub(8)..];
        let name = if item.kind == "files" {
            format!("kura:{}@{short}", item.name)
        } else {
            format!("kura:{}@{short}:{}:{volume}", item.name, d.disk)
        };
        kura_files::mount(&fs, mountpoint, &name, stop).map_err(files_error)?;
        Ok(d.fetched())
    }

    /// Lists a directory of a point's file system (or shows one entry).
    pub fn list_files(
        &self,
        item: &str,
        target: &FilesTarget,
        path: &str,
        secrets: &Secrets,
    ) -> Result<FileListing> {
        let item = self.catalog.item(item)?;
        let (d, fs, volume) = self.open_point_fs(&item, target, secrets)?;
        let entry = fs.entry(path).map_err(files_error)?;
        let entries = if entry.kind == kura_files::EntryKind::Dir {
            fs.list(path).map_err(files_error)?
        } else {
            Vec::new()
        };
        Ok(FileListing {
            rp_id: d.rp.id.clone(),
            disk: d.disk.clone(),
            volume,
            entry,
            entries,
            fetched: d.fetched(),
        })
    }

    /// Writes the file at `path` of a point to `out` (its contents), or a directory as an
    /// archive (`archive`) of everything under it; returns the bytes of file contents. For
    /// downloads: look the entry up with [`Home::list_files`] first to know which it is.
    pub fn write_files(
        &self,
        item: &str,
        target: &FilesTarget,
        path: &str,
        archive: kura_files::Archive,
        secrets: &Secrets,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        let item = self.catalog.item(item)?;
        let (_d, fs, _) = self.open_point_fs(&item, target, secrets)?;
        let entry = fs.entry(path).map_err(files_error)?;
        match entry.kind {
            kura_files::EntryKind::Dir => {
                kura_files::write_archive(&fs, path, archive, out).map_err(files_error)
            }
            kura_files::EntryKind::File => {
                let mut r = fs.reader(path).map_err(files_error)?;
                std::io::copy(&mut r, out).map_err(|e| Error::io(format!("{path} of the point"), e))
            }
            k => Err(Error::new(
                ErrorKind::Invalid,
                format!("{path}: a {k:?} has no contents to download"),
            )),
        }
    }

    /// Checks, touching nothing, that the point, its disk and volume and every one of
    /// `paths` exist (what [`Home::restore_files`] checks before its job starts; the server
    /// asks before it queues one).
    pub fn check_files(
        &self,
        item: &str,
        target: &FilesTarget,
        paths: &[String],
        secrets: &Secrets,
    ) -> Result<()> {
        let row = self.catalog.item(item)?;
        if paths.is_empty() {
            return Err(Error::new(
                ErrorKind::Invalid,
                "paths: name at least one file or directory to restore",
            ));
        }
        let (_, fs, _) = self.open_point_fs(&row, target, secrets)?;
        for p in paths {
            fs.entry(p).map_err(files_error)?;
        }
        Ok(())
    }

    /// Restores files and directories of a point into the existing directory `to` (a
    /// `RestoreFiles` job): each path under its own name, existing files skipped unless
    /// `overwrite`, owners kept when running as root. Without `to`, a file item's paths go
    /// back where they were in its protected directory (the original location).
    #[allow(clippy::too_many_arguments)]
    pub fn restore_files(
        &self,
        item: &str,
        target: &FilesTarget,
        paths: &[String],
        to: Option<&Path>,
        overwrite: bool,
        job_id: Option<&str>,
        secrets: &Secrets,
        progress: &dyn Progress,
    ) -> Result<FileRestoreReport> {
        let row = self.catalog.item(item)?;
        if paths.is_empty() {
            return Err(Error::new(
                ErrorKind::Invalid,
                "paths: name at least one file or directory to restore",
            ));
        }
        let original = to.is_none();
        let to = match to {
            Some(t) => crate::home::absolute(t)?,
            None => self.original_location(&row)?,
        };
        if !to.is_dir() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("to: {} is not an existing directory", to.display()),
            ));
        }
        // Everything that can be checked is checked before a job exists.
        let (d, fs, volume) = self.open_point_fs(&row, target, secrets)?;
        for p in paths {
            fs.entry(p).map_err(files_error)?;
        }
        let (job_id, report) = self.run_job(
            JobOperation::RestoreFiles,
            &row.name,
            false,
            job_id,
            progress,
            |job| {
                if let Some(s) = &d.storage {
                    crate::home::job_storage(s);
                }
                let from = if row.kind == "files" {
                    format!("tree {}", d.disk)
                } else {
                    format!("disk {}, volume {volume}", d.disk)
                };
                job.message(&format!(
                    "restoring {} from recovery point {} ({from}) into {}{}",
                    paths.join(", "),
                    d.rp.id,
                    to.display(),
                    if original { " (the original location)" } else { "" }
                ));
                let opts = ExtractOptions {
                    overwrite,
                    owners: rustix::process::geteuid().is_root(),
                };
                let r = if original {
                    kura_files::extract_original(&fs, paths, &to, opts)
                } else {
                    kura_files::extract(&fs, paths, &to, opts)
                }
                .map_err(files_error)?;
                for s in &r.skipped {
                    job.message(&format!("skipped {s}"));
                }
                job.message(&format!(
                    "{} file(s), {} directorie(s), {} link(s), {} bytes written; {} chunk(s) fetched",
                    r.files,
                    r.dirs,
                    r.links,
                    r.bytes,
                    d.fetched().chunks
                ));
                let report = FileRestoreReport {
                    job_id: String::new(),
                    rp_id: d.rp.id.clone(),
                    disk: d.disk.clone(),
                    volume,
                    to: to.display().to_string(),
                    extracted: r,
                    fetched: d.fetched(),
                };
                Ok((report, Some(d.rp.id.clone())))
            },
        )?;
        Ok(FileRestoreReport { job_id, ..report })
    }
}

impl Home {
    /// Where a file item's tree was read: the target of an original-location restore.
    pub fn original_location(&self, item: &ItemRow) -> Result<std::path::PathBuf> {
        match crate::home::source_spec(self, item, None)? {
            kura_source::SourceSpec::Files { path, .. } => Ok(path.into()),
            _ => Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "original: item {:?} is a {} item; only a file item's files go back to their original location (name a directory with --to)",
                    item.name, item.kind
                ),
            )),
        }
    }
}

/// A disk with nothing on it: what is left in [`OpenDisk`] once its reader moved on.
struct Empty;

impl ReadAt for Empty {
    fn size(&self) -> u64 {
        0
    }

    fn read_at(&mut self, _: &mut [u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "the disk was handed to its file system",
        ))
    }
}
