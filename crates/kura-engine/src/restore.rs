//! Restore: fetch an index's chunks in parallel, out of order, verify each, and write it at
//! its offset into a sparse temporary file that is renamed over the target at the end.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kura_catalog::{JobOperation, JobStatus};
use kura_store::{DiskIndex, Vault};
use serde::Serialize;

use crate::home::absolute;
use crate::{Error, ErrorKind, Home, Progress, Result, Secrets, io_workers};

/// Output format of a restored disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RestoreFormat {
    /// A sparse raw image.
    #[default]
    Raw,
    /// A qcow2 image (made from the sparse raw image with `qemu-img convert`).
    Qcow2,
}

impl RestoreFormat {
    /// Its name in the API and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            RestoreFormat::Raw => "raw",
            RestoreFormat::Qcow2 => "qcow2",
        }
    }

    /// The image format of a restore to the file `to`: the one given, else the one its name
    /// says (`.qcow2`: qcow2; anything else: raw). A format the name contradicts (raw into
    /// `x.qcow2`, qcow2 into `x.raw` or `x.img`) is refused rather than written under a
    /// misleading name.
    pub fn for_target(given: Option<RestoreFormat>, to: &Path) -> Result<RestoreFormat> {
        let ext = to
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let named = match ext.as_deref() {
            Some("qcow2") => Some(RestoreFormat::Qcow2),
            Some("raw" | "img") => Some(RestoreFormat::Raw),
            _ => None,
        };
        match (given, named) {
            (Some(g), Some(n)) if g != n => Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "the image format asked for is {}, but the target {} is named like a {} image; give a matching name or format; nothing was restored",
                    g.name(),
                    to.display(),
                    n.name()
                ),
            )),
            (Some(g), _) => Ok(g),
            (None, n) => Ok(n.unwrap_or(RestoreFormat::Raw)),
        }
    }
}

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Recovery point id, unique prefix, or `latest`.
    pub rp: String,
    /// Target file; must not exist unless `force`.
    pub to: PathBuf,
    /// Output format.
    pub format: RestoreFormat,
    /// Replace an existing target.
    pub force: bool,
    /// A job made beforehand with [`Home::begin_job`] (the API answers with its id at once).
    pub job_id: Option<String>,
    /// Which disk of the point (by name); needed only when the point has several.
    pub disk: Option<String>,
    /// Write a disk that was encrypted at the source decrypted (default: encrypted again,
    /// as qcow2 with LUKS and the source's passphrase).
    pub decrypt: bool,
    /// Read the point from the vault's geo replica (cross-region restore: the primary
    /// location is down).
    pub from_replica: bool,
}

/// The outcome of a restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The job.
    pub job_id: String,
    /// The recovery point restored.
    pub rp_id: String,
    /// Where it went.
    pub target: String,
    /// Format written.
    pub format: RestoreFormat,
    /// Disk size.
    pub size: u64,
    /// Chunks fetched (zero chunks are not).
    pub chunks_fetched: u64,
    /// Bytes written (holes are not).
    pub bytes_written: u64,
    /// Whether the image was written encrypted (LUKS, the source disk's passphrase).
    pub encrypted: bool,
}

/// Granularity at which zero runs inside a chunk are left as holes.
const HOLE_BLOCK: usize = 4096;
/// Bytes written between background flushes of the target.
const FLUSH_EVERY: u64 = 64 << 20;

impl Home {
    /// Restores the disk of a recovery point of `item` to a new file.
    pub fn restore_disk(
        &self,
        item: &str,
        opts: &RestoreOptions,
        secrets: &Secrets,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let (format, force) = (opts.format, opts.force);
        let item = self.catalog.item(item)?;
        Self::check_can_restore(&item)?;
        let rp = self.resolve_rp(&item, &opts.rp)?;
        let target = absolute(&opts.to)?;
        if target.is_dir() {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("restore target {} is a directory", target.display()),
            ));
        }
        if target.exists() && !force {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "restore target {} already exists (use --force to replace it)",
                    target.display()
                ),
            ));
        }
        let dir = target.parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("directory {} does not exist", dir.display()),
            ));
        }
        let vrow = self.catalog.vault_by_id(&item.vault_id)?;
        let vault = self.open_vault_for(&vrow, secrets, opts.from_replica)?;
        // Which disk, before a job starts: naming none of several is a usage error.
        match rp
            .snapshot
            .as_deref()
            .and_then(kura_source::Snapshot::decode)
        {
            Some(snap) if snap.exists() => {
                pick_snapshot_disk(&rp.id, &snap.disk_names(), opts.disk.as_deref())?;
            }
            _ if rp.tier != "snapshot" => {
                pick_disk(&vault.get_manifest(&rp.id)?, opts.disk.as_deref())?;
            }
            _ => {}
        }
        self.remove_restore_leftovers(&target);
        let (job_id, report) = self.run_job(
            JobOperation::Restore,
            &item.name,
            false,
            opts.job_id.as_deref(),
            progress,
            |job| {
                let partial = temp_name(&target, &job.id, "raw");
                let mut secret: Option<String> = None;
                let _cleanup = RemoveOnDrop(partial.clone());
                // Prefer the snapshot tier: it is local and needs no decryption.
                let snapshot = rp
                    .snapshot
                    .as_deref()
                    .and_then(kura_source::Snapshot::decode)
                    .filter(|s| s.exists());
                let (size, fetched, written) = match snapshot {
                    Some(snap) => {
                        job.message(&format!("restoring recovery point {} from the snapshot tier ({}) to {}", rp.id, snap.encode(), target.display()));
                        let mut reader = snap.reader_of(opts.disk.as_deref())?;
                        let size = reader.size();
                        let written = crate::snapshot::copy_sparse(reader.as_mut(), &partial, job)?;
                        (size, 0, written)
                    }
                    None if rp.tier == "snapshot" => {
                        return Err(Error::new(
                            ErrorKind::NotFound,
                            format!("recovery point {} had only a snapshot tier, and the snapshot is gone", rp.id),
                        ));
                    }
                    None => {
                        let manifest = vault.get_manifest(&rp.id)?;
                        let disk = pick_disk(&manifest, opts.disk.as_deref())?;
                        if !opts.decrypt {
                            secret = manifest.disk_secrets.get(&disk.name).cloned();
                        }
                        let index = vault.get_index(&disk.index)?;
                        if index.size != disk.size {
                            return Err(Error::new(
                                ErrorKind::Corrupt,
                                format!("index {} disagrees with its manifest on the disk size", disk.index),
                            ));
                        }
                        job.message(&format!("restoring recovery point {} ({} bytes) from the vault to {}", rp.id, index.size, target.display()));
                        let (fetched, written) = write_raw(&vault, &index, &partial, job)?;
                        (index.size, fetched, written)
                    }
                };
                // A disk encrypted at the source is written encrypted again: qcow2 with LUKS.
                let format = if secret.is_some() { RestoreFormat::Qcow2 } else { format };
                if secret.is_some() {
                    job.message("the disk was encrypted at the source: it is written as qcow2 with LUKS and the same passphrase (--decrypt writes it decrypted)");
                }
                let final_tmp = match format {
                    RestoreFormat::Raw => partial.clone(),
                    RestoreFormat::Qcow2 => temp_name(&target, &job.id, "qcow2"),
                };
                let _cleanup2 = RemoveOnDrop(final_tmp.clone());
                if format == RestoreFormat::Qcow2 {
                    convert_to_qcow2(&partial, &final_tmp, secret.as_deref())?;
                }
                // A restored disk is as private as its source (0600 when the source is gone):
                // never more open than the data was.
                let mode = if item.kind == "disk" {
                    std::fs::metadata(&item.source)
                        .map(|m| m.permissions().mode() & 0o777)
                        .unwrap_or(0o600)
                } else {
                    0o600
                };
                std::fs::set_permissions(&final_tmp, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io(format!("cannot chmod {}", final_tmp.display()), e))?;
                std::fs::rename(&final_tmp, &target).map_err(|e| {
                    Error::io(
                        format!("cannot move the restored image to {}", target.display()),
                        e,
                    )
                })?;
                sync_dir(dir);
                let report = RestoreReport {
                    job_id: String::new(),
                    rp_id: rp.id.clone(),
                    target: target.display().to_string(),
                    format,
                    size,
                    chunks_fetched: fetched,
                    bytes_written: written,
                    encrypted: secret.is_some(),
                };
                Ok((report, Some(rp.id.clone())))
            },
        )?;
        Ok(RestoreReport { job_id, ..report })
    }
}

impl Home {
    /// The manifest of a recovery point (its disks, consistency, retention and, for VMs, the
    /// definition), read from the vault; a snapshot-only point has none and says so.
    pub fn rp_manifest(
        &self,
        item: &str,
        rp: &str,
        secrets: &Secrets,
    ) -> Result<kura_store::Manifest> {
        let row = self.catalog.item(item)?;
        let rp = self.resolve_rp(&row, rp)?;
        if rp.tier == "snapshot" {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "recovery point {} exists only in the snapshot tier: it has no vault copy yet",
                    rp.id
                ),
            ));
        }
        let vrow = self.catalog.vault_by_id(&row.vault_id)?;
        let primary = self
            .open_vault_row(&vrow, secrets)
            .and_then(|v| Ok(v.get_manifest(&rp.id)?));
        // A manifest never changes once written: when the primary location cannot give it
        // (it is down), a geo vault's replica shows the same point.
        let mut m = match primary {
            Err(e) if vrow.redundancy == "geo" => self
                .open_vault_replica(&vrow, secrets)
                .and_then(|v| Ok(v.get_manifest(&rp.id)?))
                .map_err(|_| e)?,
            other => other?,
        };
        // Passphrases of encrypted disks stay in the vault: a restore uses them, nothing
        // shows them.
        m.disk_secrets.clear();
        Ok(m)
    }
}

/// What `restore disks` restores and where.
#[derive(Debug, Clone)]
pub struct RestoreDisksOptions {
    /// Recovery point id, unique prefix, or `latest`.
    pub rp: String,
    /// An existing directory; each disk becomes `DIR/NAME.raw` (or `.qcow2`).
    pub dir: PathBuf,
    /// The disks to restore, by name; empty for all.
    pub disks: Vec<String>,
    /// Output format.
    pub format: RestoreFormat,
    /// Replace existing files.
    pub force: bool,
    /// Write disks that were encrypted at the source decrypted.
    pub decrypt: bool,
    /// A job made beforehand with [`Home::begin_job`] (the API): the restore then runs as
    /// one `RestoreDisks` job.
    pub job_id: Option<String>,
    /// Read the point from the vault's replica (cross-region restore).
    pub from_replica: bool,
}

impl Home {
    /// Restores all (or the named) disks of a recovery point into a directory, one file per
    /// disk named after it. Every target is checked before the first disk is written.
    pub fn restore_disks(
        &self,
        item: &str,
        opts: &RestoreDisksOptions,
        secrets: &Secrets,
        progress: &dyn Progress,
    ) -> Result<Vec<RestoreReport>> {
        let row = self.catalog.item(item)?;
        Self::check_can_restore(&row)?;
        let rp = self.resolve_rp(&row, &opts.rp)?;
        let dir = absolute(&opts.dir)?;
        if !dir.is_dir() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("{} is not a directory", dir.display()),
            ));
        }
        let names: Vec<String> = if rp.tier == "snapshot" {
            rp.snapshot
                .as_deref()
                .and_then(kura_source::Snapshot::decode)
                .map(|s| s.disk_names())
                .unwrap_or_else(|| vec!["disk0".into()])
        } else {
            let vrow = self.catalog.vault_by_id(&row.vault_id)?;
            let vault = self.open_vault_for(&vrow, secrets, opts.from_replica)?;
            let m = vault.get_manifest(&rp.id)?;
            m.disks.iter().map(|d| d.name.clone()).collect()
        };
        let chosen: Vec<String> = if opts.disks.is_empty() {
            names.clone()
        } else {
            for d in &opts.disks {
                if !names.contains(d) {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "recovery point {} has no disk {d:?} (it has: {})",
                            rp.id,
                            names.join(", ")
                        ),
                    ));
                }
            }
            opts.disks.clone()
        };
        let ext = match opts.format {
            RestoreFormat::Raw => "raw",
            RestoreFormat::Qcow2 => "qcow2",
        };
        let targets: Vec<PathBuf> = chosen
            .iter()
            .map(|d| dir.join(format!("{d}.{ext}")))
            .collect();
        if !opts.force
            && let Some(t) = targets.iter().find(|t| t.exists())
        {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "restore target {} already exists (use --force to replace it); nothing was restored",
                    t.display()
                ),
            ));
        }
        let run = |progress: &dyn Progress| -> Result<Vec<RestoreReport>> {
            let mut reports = Vec::new();
            // A restore that fails or is cancelled part way removes the disks it already
            // made (files it replaced with --force are gone either way).
            let mut made: Vec<PathBuf> = Vec::new();
            let undo = |made: &[PathBuf]| {
                for f in made {
                    let _ = std::fs::remove_file(f);
                }
            };
            for (disk, to) in chosen.iter().zip(&targets) {
                if let Err(e) = crate::progress::check_cancel(progress) {
                    undo(&made);
                    return Err(e);
                }
                let one = RestoreOptions {
                    rp: rp.id.clone(),
                    to: to.clone(),
                    format: opts.format,
                    force: opts.force,
                    job_id: None,
                    disk: Some(disk.clone()),
                    decrypt: opts.decrypt,
                    from_replica: opts.from_replica,
                };
                let existed = to.exists();
                match self.restore_disk(&row.name, &one, secrets, progress) {
                    Ok(r) => reports.push(r),
                    Err(e) => {
                        undo(&made);
                        return Err(e);
                    }
                }
                if !existed {
                    made.push(to.clone());
                }
            }
            Ok(reports)
        };
        match &opts.job_id {
            None => run(progress),
            // Through the API: one job whose report lists every disk.
            Some(id) => self
                .run_job(
                    JobOperation::RestoreDisks,
                    &row.name,
                    false,
                    Some(id),
                    progress,
                    |job| Ok((run(job)?, Some(rp.id.clone()))),
                )
                .map(|(_, r)| r),
        }
    }

    /// Removes hidden temporaries that an interrupted restore to `target` left beside it
    /// (Ctrl-C, kill, power loss), unless the restore that made them still runs.
    fn remove_restore_leftovers(&self, target: &Path) {
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return;
        };
        let prefix = format!(".{}.kura-restore-", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = file.strip_prefix(&prefix) else {
                continue;
            };
            let job = rest.split('.').next().unwrap_or_default();
            let running = self.catalog.job(job).is_ok_and(|j| {
                j.status == JobStatus::InProgress
                    && !self.catalog.job_orphaned(&j.id).unwrap_or(true)
            });
            if !running {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The disk of a point to restore: the one named, or the only one.
/// The disk of a snapshot-tier point named `name`, or its only disk; naming none of
/// several is a usage error.
pub(crate) fn pick_snapshot_disk(
    rp_id: &str,
    names: &[String],
    name: Option<&str>,
) -> Result<String> {
    match (name, names) {
        (Some(n), _) => Ok(n.to_string()),
        (None, [one]) => Ok(one.clone()),
        (None, _) => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "recovery point {rp_id} has {} disks ({}): name one with --disk",
                names.len(),
                names.join(", ")
            ),
        )),
    }
}

pub(crate) fn pick_disk<'m>(
    m: &'m kura_store::Manifest,
    name: Option<&str>,
) -> Result<&'m kura_store::DiskEntry> {
    pick(&m.rp_id, "disk", &m.disks, |d| &d.name, name)
}

/// The entry of `entries` (a point's disks or trees) called `name`, or the only one.
pub(crate) fn pick<'m, T>(
    rp_id: &str,
    what: &str,
    entries: &'m [T],
    name_of: impl Fn(&T) -> &str,
    name: Option<&str>,
) -> Result<&'m T> {
    let names = || entries.iter().map(&name_of).collect::<Vec<_>>().join(", ");
    match name {
        Some(n) => entries.iter().find(|d| name_of(d) == n).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "recovery point {rp_id} has no {what} {n:?} (it has: {})",
                    names()
                ),
            )
        }),
        None if entries.len() == 1 => Ok(&entries[0]),
        None if entries.is_empty() => Err(Error::new(
            ErrorKind::Corrupt,
            format!("manifest of {rp_id} lists no {what}"),
        )),
        None => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "recovery point {rp_id} has {} {what}s ({}): name one with --disk",
                entries.len(),
                names()
            ),
        )),
    }
}

fn temp_name(target: &Path, job: &str, ext: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(
        ".{name}.kura-restore-{}.{ext}",
        &job[..12.min(job.len())]
    ))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes every chunk of `index` into a new sparse file at `path`; returns (chunks fetched,
/// bytes written).
fn write_raw(
    vault: &Vault,
    index: &DiskIndex,
    path: &Path,
    progress: &dyn Progress,
) -> Result<(u64, u64)> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    file.set_len(index.size)
        .map_err(|e| Error::io(format!("cannot size {}", path.display()), e))?;
    let slots: Vec<usize> = (0..index.chunks.len())
        .filter(|&i| !index.chunks[i].is_zero())
        .collect();
    let zero_bytes: u64 = (0..index.chunks.len())
        .filter(|&i| index.chunks[i].is_zero())
        .map(|i| index.chunk_range(i).end - index.chunk_range(i).start)
        .sum();
    progress.start("restore disk0", index.size);
    progress.advance(zero_bytes);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let written = std::sync::atomic::AtomicU64::new(0);
    let writers_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Start writeback while chunks are still arriving, so the final fsync has little
        // left to do: the page cache would otherwise hold everything until the end.
        s.spawn(|| {
            let mut flushed = 0;
            while !writers_done.load(Ordering::SeqCst) && !failed.load(Ordering::SeqCst) {
                let now = written.load(Ordering::Relaxed);
                if now - flushed >= FLUSH_EVERY {
                    let _ = file.sync_data();
                    flushed = now;
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        });
        let workers: Vec<_> = (0..io_workers(vault.backend().as_ref()))
            .map(|_| {
                s.spawn(|| {
                let mut codec = vault.codec();
                loop {
                    if failed.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Err(e) = crate::progress::check_cancel(progress) {
                        failed.store(true, Ordering::SeqCst);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&slot) = slots.get(n) else { break };
                    let id = &index.chunks[slot];
                    let range = index.chunk_range(slot);
                    let r = (|| -> Result<u64> {
                        let data = vault.get_chunk(id, &mut codec)?;
                        if data.len() as u64 != range.end - range.start {
                            return Err(Error::new(
                                ErrorKind::Corrupt,
                                format!(
                                    "chunk {id} has {} bytes but its place in the index needs {}",
                                    data.len(),
                                    range.end - range.start
                                ),
                            ));
                        }
                        write_sparse(&file, &data, range.start)
                            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
                    })();
                    match r {
                        Ok(w) => {
                            written.fetch_add(w, Ordering::Relaxed);
                            progress.advance(range.end - range.start);
                            crate::hooks::gate("restore_chunk");
                        }
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            first_error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
            })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        writers_done.store(true, Ordering::SeqCst);
    });
    progress.finish();
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    file.sync_all()
        .map_err(|e| Error::io(format!("cannot sync {}", path.display()), e))?;
    Ok((slots.len() as u64, written.into_inner()))
}

/// Writes the non-zero 4 KiB blocks of `data` at `offset`, coalesced; zero blocks stay holes.
fn write_sparse(file: &File, data: &[u8], offset: u64) -> std::io::Result<u64> {
    let mut written = 0;
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + HOLE_BLOCK).min(data.len());
        let zero = kura_store::is_zero(&data[pos..end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(s)) => {
                file.write_all_at(&data[s..pos], offset + s as u64)?;
                written += (pos - s) as u64;
                run_start = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(s) = run_start {
        file.write_all_at(&data[s..], offset + s as u64)?;
        written += (data.len() - s) as u64;
    }
    Ok(written)
}

fn convert_to_qcow2(raw: &Path, out: &Path, secret_b64: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-W", "-m", "8"]);
    // The passphrase goes through a private file, never the command line.
    let secret_file = match secret_b64 {
        Some(s) => {
            let f = out.with_extension("kura-secret");
            crate::home::write_private(&f, s.as_bytes())?;
            cmd.arg("--object").arg(format!(
                "secret,id=kura-luks,format=base64,file={}",
                f.display()
            ));
            cmd.args(["-o", "encrypt.format=luks,encrypt.key-secret=kura-luks"]);
            Some(RemoveOnDrop(f))
        }
        None => None,
    };
    let output = cmd.arg(raw).arg(out).output().map_err(|e| {
        Error::new(
            ErrorKind::Other,
            if e.kind() == std::io::ErrorKind::NotFound {
                "restoring to qcow2 needs qemu-img (Debian package qemu-utils)".to_string()
            } else {
                format!("qemu-img: {e}")
            },
        )
    })?;
    if !output.status.success() {
        return Err(Error::new(
            ErrorKind::Other,
            format!(
                "qemu-img convert to qcow2 failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    drop(secret_file);
    if let Ok(f) = File::open(out) {
        let _ = f.sync_all();
    }
    Ok(())
}
