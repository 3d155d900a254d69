//! Backup: read a disk, chunk it, store the new chunks, publish a recovery point.
//!
//! The pipeline is one reader thread and N workers joined by bounded channels:
//!
//! ```text
//! reader: allocation map → skip zero chunks → read data extents into a pooled buffer ─┐
//! workers: zero check → keyed BLAKE3 → known? skip : zstd → AEAD → put ◄──────────────┘
//! ```
//!
//! Memory is bounded by the buffer pool (`workers + 2` chunks) plus one id per chunk of
//! the disk. A chunk is "known" when the item's previous recovery point has it or the vault
//! already stores it, so an incremental backup reads and hashes every allocated chunk but
//! uploads only new ones, and still produces a full index.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::bounded;
use kura_catalog::{ItemRow, JobOperation, JobStatus, TaskStatus};
use kura_source::{DiskReader, Extent, ExtentKind};
use kura_store::{ChunkId, DiskEntry, DiskIndex, Manifest, RpStats, Vault, is_zero};
use serde::Serialize;

use crate::home::{JobCtx, item_record, rp_row};
use crate::{Error, ErrorKind, Home, Progress, Result, Secrets, io_workers, new_id};

/// Options of `backup now`.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Keep the recovery point until this date (YYYY-MM-DD).
    pub retain_until: Option<String>,
    /// Fault injection for tests: stop with an error after this many chunks were stored
    /// (the CLI offers it only in builds with the `test-hooks` feature).
    pub fail_after_chunks: Option<u64>,
    /// The current time, from the caller's clock (default: the system clock).
    pub now: Option<jiff::Timestamp>,
    /// Set when the scheduler runs the backup: retention then comes from the item's policy.
    pub scheduled: Option<ScheduledRun>,
    /// A job made beforehand with [`Home::begin_job`] (the API answers with its id at once).
    pub job_id: Option<String>,
}

/// A backup the scheduler runs for a policy slot.
#[derive(Debug, Clone)]
pub struct ScheduledRun {
    /// The slot (the policy's time plus the item's spread offset).
    pub slot: jiff::Timestamp,
    /// Whether the slot goes to the vault tier with GFS retention (every slot of a standard
    /// policy, the last of each day of an hourly one) or is kept only the instant-restore days.
    pub vault: bool,
}

/// The outcome of a backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The job.
    pub job_id: String,
    /// The new recovery point.
    pub rp_id: String,
    /// Item name.
    pub item: String,
    /// Disk size.
    pub logical_size: u64,
    /// Bytes read from the source (allocated data only).
    pub read_bytes: u64,
    /// Chunks in the index.
    pub chunks: u64,
    /// Zero chunks (holes).
    pub zero_chunks: u64,
    /// Chunks uploaded by this backup.
    pub new_chunks: u64,
    /// Stored bytes uploaded by this backup.
    pub new_stored_bytes: u64,
    /// Whether a previous recovery point was used to skip known chunks.
    pub incremental: bool,
    /// Tiers the recovery point has: `snapshot`, `snapshot+vault` or `vault-standard`.
    pub tier: String,
    /// Status of the transfer sub-task (`Completed`, `Skipped`, `Failed`).
    pub transfer: String,
    /// Why the transfer was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_detail: Option<String>,
}

impl BackupReport {
    /// The report of a backup that ended without a vault transfer.
    fn without_transfer(
        item: &ItemRow,
        rp_id: String,
        logical_size: u64,
        tier: &str,
        transfer: &str,
        detail: String,
    ) -> Self {
        BackupReport {
            job_id: String::new(),
            rp_id,
            item: item.name.clone(),
            logical_size,
            read_bytes: 0,
            chunks: 0,
            zero_chunks: 0,
            new_chunks: 0,
            new_stored_bytes: 0,
            incremental: false,
            tier: tier.into(),
            transfer: transfer.into(),
            transfer_detail: Some(detail),
        }
    }
}

impl Home {
    /// Backs an item up now, as a job.
    pub fn backup(
        &self,
        item: &str,
        secrets: &Secrets,
        opts: &BackupOptions,
        progress: &dyn Progress,
    ) -> Result<BackupReport> {
        let item = self.catalog.item(item)?;
        Self::check_can_backup(&item)?;
        if let Some(d) = &opts.retain_until {
            let now = opts.now.unwrap_or_else(|| self.now());
            crate::retention::retain_until_end(d, now, self.zone())
                .map_err(|e| Error::new(ErrorKind::Invalid, format!("--retain-until {e}")))?;
        }
        let (job_id, report) = self.run_job(
            JobOperation::Backup,
            &item.name,
            false,
            opts.job_id.as_deref(),
            progress,
            |job| {
                let report = self.two_phase_backup(&item, secrets, opts, job)?;
                let rp = (!report.rp_id.is_empty()).then(|| report.rp_id.clone());
                Ok((report, rp))
            },
        )?;
        if report.transfer != "Failed"
            && let Ok(vault) = self.catalog.vault_by_id(&item.vault_id)
        {
            self.replicate_after(&vault, progress);
        }
        if report.transfer == "Failed" {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "the transfer to the vault failed: {}; recovery point {} exists in the snapshot tier only (job {job_id}, CompletedWithWarnings)",
                    report.transfer_detail.clone().unwrap_or_default(),
                    report.rp_id
                ),
            ));
        }
        Ok(BackupReport { job_id, ..report })
    }

    /// What the API checks before it hands out a job id: the item exists and may be backed
    /// up, the options are valid, and no other backup of the item is in its snapshot phase
    /// (that would be refused). The claim inside the job stays the rule; this only lets most
    /// overlapping requests get their 409 at once.
    pub fn check_backup_can_start(&self, item: &str, opts: &BackupOptions) -> Result<()> {
        let item = self.catalog.item(item)?;
        Self::check_can_backup(&item)?;
        if let Some(d) = &opts.retain_until {
            let now = opts.now.unwrap_or_else(|| self.now());
            crate::retention::retain_until_end(d, now, self.zone())
                .map_err(|e| Error::new(ErrorKind::Invalid, format!("retain_until: {e}")))?;
        }
        for j in self
            .catalog
            .jobs_for(JobOperation::Backup, &item.name, 100)?
        {
            if j.status == JobStatus::InProgress
                && j.tasks
                    .first()
                    .is_some_and(|t| t.status == TaskStatus::InProgress)
                && !self.catalog.job_orphaned(&j.id)?
            {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("job {} is taking a snapshot of item {:?}", j.id, item.name),
                ));
            }
        }
        Ok(())
    }

    /// Snapshot, then transfer (see `jobs::backup_status` for the resulting job status).
    fn two_phase_backup(
        &self,
        item: &ItemRow,
        secrets: &Secrets,
        opts: &BackupOptions,
        job: &JobCtx<'_>,
    ) -> Result<BackupReport> {
        use crate::jobs::task;
        // Only one snapshot per item at a time; claiming the phase is one transaction, so
        // two jobs that start together cannot both get it.
        let mut tasks = vec![
            task("snapshot", TaskStatus::InProgress, None),
            task("transfer", TaskStatus::Pending, None),
        ];
        if let Some(other) =
            self.catalog
                .claim_task(&job.id, JobOperation::Backup, &item.name, 0, &tasks)?
        {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("job {other} is taking a snapshot of item {:?}", item.name),
            ));
        }
        // Another job still transferring this item: a VM's point can then only be kept in
        // its snapshot tier, so its driver takes no more than that (or refuses, untouched).
        let mut transfer_busy = false;
        if item.kind == "vm" {
            for j in self
                .catalog
                .jobs_for(JobOperation::Backup, &item.name, 100)?
            {
                if j.id != job.id
                    && j.status == JobStatus::InProgress
                    && j.tasks
                        .get(1)
                        .is_some_and(|t| t.status == TaskStatus::InProgress)
                    && !self.catalog.job_orphaned(&j.id)?
                {
                    transfer_busy = true;
                }
            }
        }
        let rp_id = new_id();
        let now = opts.now.unwrap_or_else(|| self.now());
        let source = std::path::Path::new(&item.source);
        // A VM's driver finds out itself whether it runs, is shut off, or is gone.
        if item.kind == "disk" && !source.exists() {
            let e = Error::new(
                ErrorKind::NotFound,
                format!(
                    "the source of item {:?} is missing: {} does not exist",
                    item.name,
                    source.display()
                ),
            );
            tasks[0] = task("snapshot", TaskStatus::Failed, Some(e.to_string()));
            tasks[1] = task("transfer", TaskStatus::Failed, Some("no source".into()));
            self.catalog.set_job_tasks(&job.id, &tasks)?;
            return Err(e);
        }
        // Every precondition before the source is touched: the vault opens with the secrets
        // given, and the driver's precheck passes (for disks: the image still has the format
        // and backing chain pinned at protect time).
        type Prepared = (kura_store::Vault, Box<dyn kura_source::SourceDriver>);
        let prepared = (|| -> Result<Prepared> {
            let vrow = self.catalog.vault_by_id(&item.vault_id)?;
            let vault = self.open_vault_row(&vrow, secrets)?;
            let mut driver = crate::home::source_spec(self, item, Some(&vault))?.driver();
            driver.precheck()?;
            Ok((vault, driver))
        })();
        let (vault, mut driver) = match prepared {
            Ok(v) => v,
            Err(e) => {
                tasks[0] = task(
                    "snapshot",
                    TaskStatus::Failed,
                    Some(format!("not started: {e}")),
                );
                tasks[1] = task("transfer", TaskStatus::Failed, Some("not started".into()));
                self.catalog.set_job_tasks(&job.id, &tasks)?;
                return Err(e);
            }
        };
        let request = kura_source::PointRequest {
            rp_id: rp_id.clone(),
            item_id: item.id.clone(),
            previous: self
                .catalog
                .list_rps(&item.id)?
                .into_iter()
                .find(|r| r.tier != "snapshot")
                .map(|r| r.id),
            transfer_busy,
        };
        let point = match driver.take_point(&request) {
            Ok(p) => p,
            Err(e) => {
                tasks[0] = task("snapshot", TaskStatus::Failed, Some(e.to_string()));
                tasks[1] = task("transfer", TaskStatus::Failed, Some("no snapshot".into()));
                self.catalog.set_job_tasks(&job.id, &tasks)?;
                return Err(e.into());
            }
        };
        for line in &point.log {
            job.message(line);
        }
        for w in &point.warnings {
            job.warn(w);
        }
        if let Some(reason) = &point.no_snapshot {
            job.message(&format!(
                "snapshot tier unavailable: {reason}; going straight to transfer"
            ));
            tasks[0] = task(
                "snapshot",
                TaskStatus::Skipped,
                Some(format!("the snapshot tier is unavailable: {reason}")),
            );
        }
        let snapshot = point.snapshot.clone();
        let snapshot_only = point.snapshot_only.clone();
        let definition = point.definition.clone();
        let consistency = point.consistency.as_str();
        // Whatever happens from here, the driver releases what the point holds open.
        let mut held = Release {
            driver: driver.as_mut(),
            point,
            job,
        };
        crate::hooks::gate("snapshot");
        // Cancel is accepted during the snapshot phase: honour it before anything is published.
        if job.cancelled() {
            if let Some(s) = &snapshot {
                s.delete()?;
            }
            tasks[0] = task("snapshot", TaskStatus::Cancelled, None);
            tasks[1] = task(
                "transfer",
                TaskStatus::Skipped,
                Some("the job was cancelled".into()),
            );
            self.catalog.set_job_tasks(&job.id, &tasks)?;
            job.message("cancelled during the snapshot phase; nothing was kept");
            return Err(Error::cancelled());
        }
        let mut snap_row = None;
        if let Some(snap) = &snapshot {
            let days = item
                .policy
                .as_deref()
                .and_then(|p| self.load_policy(&item.vault_id, p).ok())
                .map_or(2, |p| p.instant_restore_days);
            let expires = now
                .to_zoned(jiff::tz::TimeZone::UTC)
                .checked_add(jiff::Span::new().days(i64::from(days)))
                .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?
                .timestamp();
            let row = kura_catalog::RpRow {
                id: rp_id.clone(),
                item_id: item.id.clone(),
                time: kura_catalog::stamp(now),
                logical_size: match item.kind.as_str() {
                    // A VM's disks as the point holds them.
                    "vm" => match crate::home::source_spec(self, item, None) {
                        Ok(kura_source::SourceSpec::Vm { disks, exclude, .. }) => disks
                            .iter()
                            .filter(|d| !exclude.contains(&d.name))
                            .map(|d| d.size)
                            .sum(),
                        _ => 0,
                    },
                    _ => std::fs::metadata(source).map(|m| m.len()).unwrap_or(0),
                },
                stored_size: 0,
                consistency: consistency.into(),
                tier: "snapshot".into(),
                retain_until: None,
                job_id: Some(job.id.clone()),
                tags: vec!["instant-restore".into()],
                expires: Some(kura_catalog::stamp(expires)),
                origin: if opts.scheduled.is_some() {
                    "scheduled"
                } else {
                    "on-demand"
                }
                .into(),
                used_bytes: 0,
                snapshot: Some(snap.encode()),
                snapshot_expires: Some(kura_catalog::stamp(expires)),
            };
            self.catalog.insert_rp(&row)?;
            // Until the point has a vault copy, its definition lives here: the snapshot tier
            // can be restored as a whole VM.
            if let Some(d) = &definition {
                self.catalog.set_rp_definition(&rp_id, &d.to_string())?;
            }
            // The vault remembers the snapshot too (a rebuilt catalog must still expire it).
            if let Err(e) = self.record_item_with_snapshots(item, &vault) {
                job.message(&format!("could not record the snapshot in the vault: {e}"));
            }
            job.message(&format!(
                "snapshot taken ({}); recovery point {rp_id} can be restored now",
                snap.encode()
            ));
            tasks[0] = task("snapshot", TaskStatus::Completed, None);
            snap_row = Some(row);
        }
        // Ends the job with its snapshot only.
        let skip_transfer =
            |tasks: &mut Vec<kura_catalog::SubTask>, rp_id: String, size: u64, detail: String| {
                job.message(&format!("transfer skipped: {detail}"));
                tasks[1] = task("transfer", TaskStatus::Skipped, Some(detail.clone()));
                self.catalog.set_job_tasks(&job.id, tasks)?;
                Ok(BackupReport::without_transfer(
                    item, rp_id, size, "snapshot", "Skipped", detail,
                ))
            };
        // The driver kept this point in the snapshot tier only (a VM whose other backup was
        // transferring when the snapshot was taken).
        if let (Some(detail), Some(row)) = (&snapshot_only, &snap_row) {
            return skip_transfer(&mut tasks, rp_id, row.logical_size, detail.clone());
        }
        // Hourly policies send only the last backup of each day to the vault; the others
        // stay snapshots (when there is no snapshot tier, they are transferred and kept for
        // the instant-restore days instead).
        if let (Some(run), Some(row)) = (&opts.scheduled, &snap_row)
            && !run.vault
        {
            let detail = "hourly policy: only the last backup of the day goes to the vault";
            return skip_transfer(&mut tasks, rp_id, row.logical_size, detail.into());
        }
        // One transfer per item at a time: a later job keeps its snapshot and skips its
        // transfer; the next transfer carries every change since the last vault point.
        tasks[1] = task("transfer", TaskStatus::InProgress, None);
        if let Some(other) =
            self.catalog
                .claim_task(&job.id, JobOperation::Backup, &item.name, 1, &tasks)?
        {
            let Some(row) = snap_row else {
                tasks[1] = task(
                    "transfer",
                    TaskStatus::Failed,
                    Some(format!("job {other} is transferring this item")),
                );
                self.catalog.set_job_tasks(&job.id, &tasks)?;
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("a backup of item {:?} is running (job {other})", item.name),
                ));
            };
            let detail = format!(
                "job {other} is still transferring this item; the next transfer carries these changes"
            );
            return skip_transfer(&mut tasks, rp_id, row.logical_size, detail);
        }
        crate::hooks::gate("transfer");
        let result = self.backup_job(
            item,
            &vault,
            &mut held,
            opts,
            job,
            &rp_id,
            snap_row.as_ref(),
        );
        match result {
            Ok(report) => {
                tasks[1] = task("transfer", TaskStatus::Completed, None);
                self.catalog.set_job_tasks(&job.id, &tasks)?;
                // Without a scheduler running, old snapshots must not pile up in the image.
                if let Err(e) = self.expire_snapshots(&item.id, now) {
                    job.message(&format!("could not remove expired snapshots: {e}"));
                }
                if snapshot.is_some()
                    && let Err(e) = self.record_item_with_snapshots(item, &vault)
                {
                    job.message(&format!("could not record snapshots in the vault: {e}"));
                }
                Ok(report)
            }
            // A cancelled backup keeps nothing: not its snapshot either, which would be a
            // recovery point of a job that ends Cancelled. The chunks it wrote are referenced
            // by no manifest and garbage collection removes them.
            Err(e) if e.kind() == ErrorKind::Cancelled => {
                tasks[1] = task("transfer", TaskStatus::Cancelled, None);
                if snap_row.is_some() {
                    tasks[0] = task(
                        "snapshot",
                        TaskStatus::Cancelled,
                        Some("removed: the job was cancelled".into()),
                    );
                    if let Some(s) = &snapshot {
                        s.delete()?;
                    }
                    self.catalog.delete_rp(&rp_id)?;
                    if let Err(e) = self.record_item_with_snapshots(item, &vault) {
                        job.message(&format!("could not record the snapshots in the vault: {e}"));
                    }
                }
                self.catalog.set_job_tasks(&job.id, &tasks)?;
                job.message("cancelled during the transfer; no recovery point was kept");
                Err(e)
            }
            Err(e) if snap_row.is_some() => {
                tasks[1] = task("transfer", TaskStatus::Failed, Some(e.to_string()));
                self.catalog.set_job_tasks(&job.id, &tasks)?;
                job.warn(&format!("transfer failed: {e}"));
                let row = snap_row.expect("checked");
                Ok(BackupReport::without_transfer(
                    item,
                    rp_id,
                    row.logical_size,
                    "snapshot",
                    "Failed",
                    e.to_string(),
                ))
            }
            Err(e) => {
                tasks[1] = task("transfer", TaskStatus::Failed, Some(e.to_string()));
                self.catalog.set_job_tasks(&job.id, &tasks)?;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn backup_job(
        &self,
        item: &ItemRow,
        vault: &Vault,
        held: &mut Release<'_, '_>,
        opts: &BackupOptions,
        job: &JobCtx<'_>,
        rp_id: &str,
        snap_row: Option<&kura_catalog::RpRow>,
    ) -> Result<BackupReport> {
        let vrow = self.catalog.vault_by_id(&item.vault_id)?;
        // The item's disks at the point in time, each a named stream.
        let mut disks = held.driver.open_disks(&held.point)?;
        let consistency = held.point.consistency.as_str();
        crate::hooks::gate("read");

        // The lease tells garbage collection a writer is active, before anything is chosen
        // for reuse; it ends however this function ends.
        let _lease = self.lease(&vrow.id, "backup")?;
        let (previous, previous_trees) = match self.previous_indexes(item, vault, job) {
            Some((rp, (disks, trees))) => (Some((rp, disks)), trees),
            None => (None, Default::default()),
        };
        let incremental = previous.is_some();
        job.message(&match &previous {
            Some((rp, _)) => {
                format!("incremental: chunks known from recovery point {rp} are not uploaded again")
            }
            None => "full backup: no previous recovery point".into(),
        });
        let previous_ids = previous.clone();
        let mut previous = previous.map(|(_, p)| p).unwrap_or_default();
        // Chunks verify found bad (and no backup has healed since) are never reused: they
        // are read from the source and written again, which repairs every older point too.
        let unhealthy = unhealthy_chunks(vault, job);
        let cheap_stat = vault.backend().cheap_stat();
        if !cheap_stat {
            let last = vault
                .bad_chunks()
                .ok()
                .and_then(|b| b.verified_at)
                .unwrap_or_else(|| "never".into());
            job.message(&format!(
                "chunks reused from the previous point are not re-checked on this storage (one request each); the last verify of this vault: {last}"
            ));
        }

        let rp_id = rp_id.to_string();
        let now = match snap_row {
            Some(r) => r.time.parse().unwrap_or_else(|_| self.now()),
            None => opts.now.unwrap_or_else(|| self.now()),
        };
        let time = kura_catalog::stamp(now);
        let (origin, tags, expires) = match &opts.scheduled {
            Some(run) => {
                let (tags, expires) = self.scheduled_retention(item, run, now)?;
                ("scheduled", tags, expires)
            }
            None => {
                let (tags, expires) =
                    self.on_demand_retention(opts.retain_until.as_deref(), now)?;
                ("on-demand", tags, expires)
            }
        };
        // Each disk is matched with the previous point's disk of the same name (a disk that
        // is new since then is read in full); all share the pipeline's memory bound.
        let mut entries = Vec::new();
        let mut indexes = Vec::new();
        let mut totals = RpStats::default();
        let mut healed = Vec::new();
        let known: Vec<HashSet<ChunkId>> = disks
            .iter()
            .map(|(name, _)| {
                let mut k: HashSet<ChunkId> = previous
                    .remove(name.as_str())
                    .map(|idx| idx.chunks.into_iter().collect())
                    .unwrap_or_default();
                k.retain(|id| !unhealthy.contains(id));
                k
            })
            .collect();
        // Changed-block tracking: a disk whose source knows what changed since the previous
        // point reads only that, and takes every other chunk from the previous index.
        let mut bases: Vec<Option<(Vec<ChunkId>, kura_source::Changes)>> = Vec::new();
        for (name, disk) in disks.iter_mut() {
            let changes = disk.changes()?;
            let prev = previous_ids
                .as_ref()
                .and_then(|(rp, m)| Some((rp, m.get(name.as_str())?)));
            bases.push(match (changes, prev) {
                (None, _) => None,
                (Some(ch), Some((rp, idx)))
                    if &ch.since == rp
                        && idx.size == disk.size()
                        && idx.chunk_size == vault.config().chunk_size =>
                {
                    job.message(&format!(
                        "{name}: {} bytes changed since recovery point {rp}; only those are read",
                        ch.dirty_bytes()
                    ));
                    Some((idx.chunks.clone(), ch))
                }
                (Some(ch), _) => {
                    job.message(&format!(
                        "{name}: the changes tracked since point {} do not match the previous point here (or the disk changed size); every allocated block is read",
                        ch.since
                    ));
                    None
                }
            });
        }
        // Chunks garbage collection had marked when this writer's lease was already held:
        // only those need rescuing before reuse (a mark made later is younger than the
        // lease, and GC keeps it), so the catalog is asked once, not once per chunk.
        let doomed: HashSet<String> = self
            .catalog
            .doomed(&vrow.id)?
            .into_iter()
            .map(|d| d.chunk)
            .collect();
        let stored = |id: &ChunkId| {
            if doomed.contains(&id.to_hex()) {
                self.reusable(&vrow.id, vault, id)
            } else if cheap_stat {
                Ok(vault.has_chunk(id)?)
            } else {
                // On object storage a chunk the previous point lacks is written without
                // asking first: one PUT, where asking costs a HEAD (and a GET) before it. A
                // chunk other items already stored is sent again, and stays one object.
                Ok(false)
            }
        };
        let reuses: Vec<Reuse<'_>> = known
            .iter()
            .zip(&bases)
            .map(|(k, b)| Reuse {
                known: k,
                unhealthy: &unhealthy,
                cheap_stat,
                stored: &stored,
                tree: None,
                base: b.as_ref().map(|(ids, ch)| (ids.as_slice(), ch)),
            })
            .collect();
        // A running VM shares the host's CPUs with its backup: the pipeline runs at a lower
        // priority (its threads inherit the niceness of the thread that starts them), so the
        // guest keeps more of its speed and the backup takes what is left.
        let background = item.kind == "vm";
        if background {
            job.message("the transfer runs at lower CPU priority (nice 10) beside the running VM");
        }
        let results = std::thread::scope(|s| {
            s.spawn(|| {
                if background {
                    let _ = rustix::process::nice(10);
                }
                run_pipeline(vault, &mut disks, &reuses, job, opts.fail_after_chunks)
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })?;
        // File trees: each compared with the previous point's tree of the same name, whose
        // directories are the files cache.
        let trees = held.driver.open_trees(&held.point)?;
        let mut tree_entries = Vec::new();
        for (name, src) in &trees {
            let prev = previous_trees.get(name.as_str());
            let mut known: HashSet<ChunkId> = prev
                .map(|t| t.chunks.iter().copied().collect())
                .unwrap_or_default();
            known.retain(|id| !unhealthy.contains(id));
            let places = prev.map(|index| TreePlaces {
                index,
                seen: Mutex::new(HashMap::new()),
            });
            // A tree's new chunks go into packs, whether or not another item stored the
            // same chunk as an object: no stat and no request per chunk to find out.
            let in_packs = |_: &ChunkId| Ok(false);
            let reuse = Reuse {
                known: &known,
                unhealthy: &unhealthy,
                cheap_stat,
                stored: &in_packs,
                base: None,
                tree: places.as_ref(),
            };
            let out = crate::tree_backup::backup_tree(
                vault,
                src,
                prev,
                &reuse,
                job,
                prev.map_or(0, |t| t.bytes),
            )?;
            for w in out.warnings.iter().take(20) {
                job.warn(w);
            }
            if out.warnings.len() > 20 {
                job.warn(&format!(
                    "{} more warnings about entries (the first 20 are listed above)",
                    out.warnings.len() - 20
                ));
            }
            job.message(&format!(
                "{name}: {} files ({} unchanged, not read; {} read), {} directories, {} bytes",
                out.index.files,
                out.unchanged_files,
                out.read_files,
                out.index.dirs,
                out.index.bytes
            ));
            totals.read_bytes += out.stats.read_bytes;
            *totals.used_bytes.get_or_insert(0) += out.index.bytes;
            totals.new_chunks += out.stats.new_chunks;
            totals.new_stored_bytes += out.stats.new_stored_bytes;
            totals.new_plain_bytes += out.stats.new_plain_bytes;
            healed.extend(out.healed);
            tree_entries.push((name.clone(), src.root().display().to_string(), out.index));
        }
        for ((name, disk), (index, stats)) in disks.iter_mut().zip(results) {
            // A source that shrank or was replaced while it was read would give a wrong point.
            disk.check_unchanged()?;
            totals.read_bytes += stats.rp.read_bytes;
            // What holds data, however little of it this backup had to read.
            let used: u64 = (0..index.chunks.len())
                .filter(|&i| !index.chunks[i].is_zero())
                .map(|i| index.chunk_range(i).end - index.chunk_range(i).start)
                .sum();
            *totals.used_bytes.get_or_insert(0) += used;
            totals.new_chunks += stats.rp.new_chunks;
            totals.new_stored_bytes += stats.rp.new_stored_bytes;
            totals.new_plain_bytes += stats.rp.new_plain_bytes;
            healed.extend(stats.healed);
            entries.push((name.clone(), stats.format));
            indexes.push(index);
        }
        drop(disks);
        // Invariant: chunks durable, then indexes durable, then the manifest.
        vault.sync()?;
        let mut disk_entries = Vec::new();
        for ((name, format), index) in entries.into_iter().zip(&indexes) {
            let key = vault.put_index(&rp_id, &name, index)?;
            disk_entries.push(DiskEntry {
                name,
                size: index.size,
                index: key,
                chunks: index.chunks.len() as u64,
                zero_chunks: index.chunks.iter().filter(|c| c.is_zero()).count() as u64,
                source_format: format,
            });
        }
        let mut trees = Vec::new();
        for (name, root, index) in tree_entries {
            let key = vault.put_tree_index(&rp_id, &name, &index)?;
            trees.push(kura_store::TreeEntry {
                name,
                root,
                index: key,
                files: index.files,
                dirs: index.dirs,
                bytes: index.bytes,
                chunks: index.chunks.len() as u64,
            });
        }
        vault.sync()?;
        let manifest = Manifest {
            version: kura_store::manifest_version(),
            rp_id: rp_id.clone(),
            vault_id: vault.config().vault_id.clone(),
            item: item_record(item),
            time,
            consistency: consistency.into(),
            tier: "vault-standard".into(),
            retain_until: opts.retain_until.clone(),
            origin: origin.into(),
            tags,
            expires: Some(expires),
            job_id: job.id.clone(),
            disks: disk_entries,
            trees,
            definition: held.point.definition.clone(),
            capture: held.point.capture.clone(),
            encrypted_disks: held
                .point
                .secrets
                .keys()
                .filter(|k| !k.starts_with("object:"))
                .cloned()
                .collect(),
            // A passphrase is kept only where it is sealed: in an encrypted vault.
            disk_secrets: if vault.config().encryption.is_some() {
                held.point.secrets.clone()
            } else {
                if !held.point.secrets.is_empty() {
                    job.warn(
                        "this vault is not encrypted, so the VM's secrets (its encrypted disks' passphrases) are not kept with the point; restores of those disks will be decrypted",
                    );
                }
                Default::default()
            },
            stats: totals.clone(),
        };
        // The last moment a cancel is honoured: after this the point exists.
        crate::progress::check_cancel(job)?;
        vault.put_manifest(&manifest)?;
        // Published: the source may drop what tracked changes up to the previous point.
        held.driver.commit(&held.point);
        if !healed.is_empty() {
            let mut chunks: Vec<String> = healed.iter().map(ChunkId::to_hex).collect();
            chunks.sort();
            chunks.dedup();
            vault.put_healed(&kura_store::Healed {
                rp_id: rp_id.clone(),
                time: manifest.time.clone(),
                chunks: chunks.clone(),
            })?;
            self.catalog.clear_damage(&vrow.id, &chunks)?;
            job.message(&format!(
                "healed {} bad or missing chunk(s) by writing them again; older recovery points that use them are readable again",
                chunks.len()
            ));
        }
        let mut row = rp_row(&manifest);
        if let Some(s) = snap_row {
            row.tier = "snapshot+vault".into();
            row.snapshot = s.snapshot.clone();
            row.snapshot_expires = s.snapshot_expires.clone();
            self.catalog.replace_rp(&row)?;
        } else {
            self.catalog.insert_rp(&row)?;
        }
        if let Err(e) = self.note_vault_usage(&vrow, Some(totals.new_stored_bytes)) {
            job.message(&format!("the vault's storage trend was not updated: {e}"));
        }
        let tier = row.tier.clone();
        let chunks: u64 = manifest.disks.iter().map(|d| d.chunks).sum::<u64>()
            + manifest.trees.iter().map(|t| t.chunks).sum::<u64>();
        let zero_chunks: u64 = manifest.disks.iter().map(|d| d.zero_chunks).sum();
        job.message(&format!(
            "recovery point {rp_id}: {} disk(s), {} tree(s), {chunks} chunks, {} new ({} bytes stored), {} bytes read",
            manifest.disks.len(),
            manifest.trees.len(),
            totals.new_chunks,
            totals.new_stored_bytes,
            totals.read_bytes
        ));
        Ok(BackupReport {
            job_id: String::new(),
            rp_id,
            item: item.name.clone(),
            logical_size: manifest.disks.iter().map(|d| d.size).sum::<u64>()
                + manifest.trees.iter().map(|t| t.bytes).sum::<u64>(),
            read_bytes: totals.read_bytes,
            chunks,
            zero_chunks,
            new_chunks: totals.new_chunks,
            new_stored_bytes: totals.new_stored_bytes,
            incremental,
            tier,
            transfer: "Completed".into(),
            transfer_detail: None,
        })
    }

    /// The indexes of the item's latest recovery point with a vault copy, by disk name, and
    /// its tree indexes by tree name (a file item's files cache), when they can be read. A
    /// damaged one only costs dedup against it, so it is logged and skipped rather than
    /// failing the backup.
    fn previous_indexes(
        &self,
        item: &ItemRow,
        vault: &Vault,
        job: &JobCtx<'_>,
    ) -> Option<(String, PreviousIndexes)> {
        // The latest point with a vault copy (snapshot-only points have no index).
        let latest = self
            .catalog
            .list_rps(&item.id)
            .ok()?
            .into_iter()
            .find(|r| r.tier != "snapshot")?;
        let load = || -> Result<PreviousIndexes> {
            let m = vault.get_manifest(&latest.id)?;
            let mut out = PreviousIndexes::default();
            for d in &m.disks {
                out.0.insert(d.name.clone(), vault.get_index(&d.index)?);
            }
            for t in &m.trees {
                out.1
                    .insert(t.name.clone(), vault.get_tree_index(&t.index)?);
            }
            Ok(out)
        };
        match load() {
            Ok(idx) => Some((latest.id, idx)),
            Err(e) => {
                job.message(&format!(
                    "previous recovery point {} unusable for dedup: {e}",
                    latest.id
                ));
                None
            }
        }
    }
}

/// A previous point's disk indexes and tree indexes, by name.
type PreviousIndexes = (
    std::collections::HashMap<String, DiskIndex>,
    std::collections::HashMap<String, kura_store::TreeIndex>,
);

/// A taken point and its driver: the driver releases the point when this is dropped, on
/// every path.
struct Release<'d, 'j> {
    driver: &'d mut dyn kura_source::SourceDriver,
    point: kura_source::PointInTime,
    /// Where what could not be released is reported, as warnings.
    job: &'d JobCtx<'j>,
}

impl Drop for Release<'_, '_> {
    fn drop(&mut self) {
        for w in self.driver.release(&self.point) {
            self.job.warn(&w);
        }
    }
}

/// Chunks on the vault's bad list that no backup has written again since.
fn unhealthy_chunks(vault: &Vault, job: &JobCtx<'_>) -> HashSet<ChunkId> {
    let bad = match vault.bad_chunks() {
        Ok(b) => b,
        Err(e) => {
            job.message(&format!("the vault's bad-chunk list is unreadable: {e}"));
            return HashSet::new();
        }
    };
    let mut set: HashSet<ChunkId> = bad
        .chunks
        .keys()
        .filter_map(|h| ChunkId::from_hex(h).ok())
        .collect();
    if let Ok(healed) = vault.list_healed() {
        for (_, h) in healed {
            for c in h.chunks {
                if let Ok(id) = ChunkId::from_hex(&c) {
                    set.remove(&id);
                }
            }
        }
    }
    set
}

/// What a backup may reuse instead of writing.
#[derive(Clone, Copy)]
pub(crate) struct Reuse<'a> {
    /// Ids of the previous point (minus unhealthy ones).
    pub(crate) known: &'a HashSet<ChunkId>,
    /// Ids on the bad list: always written again.
    pub(crate) unhealthy: &'a HashSet<ChunkId>,
    /// Whether a known chunk's existence is confirmed with a stat before reuse.
    pub(crate) cheap_stat: bool,
    /// Whether the vault holds an intact copy (and GC lets it be reused).
    pub(crate) stored: &'a (dyn Fn(&ChunkId) -> Result<bool> + Sync),
    /// The previous point's chunk ids and what changed since: unchanged chunks are taken
    /// from it without reading.
    pub(crate) base: Option<(&'a [ChunkId], &'a kura_source::Changes)>,
    /// A tree's previous index, which says where its known chunks are (packs or objects).
    pub(crate) tree: Option<&'a TreePlaces<'a>>,
}

/// Where the chunks of a tree's previous point are, with the packs already found present.
pub(crate) struct TreePlaces<'a> {
    pub(crate) index: &'a kura_store::TreeIndex,
    pub(crate) seen: Mutex<HashMap<kura_store::PackId, bool>>,
}

impl Reuse<'_> {
    /// Whether a chunk of the previous point may be reused without reading its data again:
    /// not on the bad list, and (where a stat is cheap) still stored.
    pub(crate) fn still_there(&self, vault: &Vault, id: &ChunkId) -> Result<bool> {
        Ok(self.known.contains(id)
            && !self.unhealthy.contains(id)
            && (!self.cheap_stat || self.exists_cheaply(vault, id)? != Some(false)))
    }

    /// Whether a known chunk's stored copy exists (its pack, for a packed one), where a
    /// stat is cheap; each pack is asked once.
    fn exists_cheaply(&self, vault: &Vault, id: &ChunkId) -> Result<Option<bool>> {
        if let Some(t) = self.tree
            && let Some(Some(at)) = t.index.place(id)
        {
            let mut seen = t.seen.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(&there) = seen.get(&at.pack) {
                return Ok(Some(there));
            }
            let there = vault.pack_exists_cheaply(&at.pack)?;
            if let Some(b) = there {
                seen.insert(at.pack, b);
            }
            return Ok(there);
        }
        Ok(vault.chunk_exists_cheaply(id)?)
    }
}

impl Reuse<'_> {
    /// The previous point's id of chunk `slot` (`start..end`), when nothing there changed
    /// and the chunk can be reused as it is.
    fn unchanged(
        &self,
        vault: &Vault,
        slot: usize,
        start: u64,
        end: u64,
    ) -> Result<Option<ChunkId>> {
        let Some((ids, changes)) = self.base else {
            return Ok(None);
        };
        if changes.touches(start, end) {
            return Ok(None);
        }
        let Some(&id) = ids.get(slot) else {
            return Ok(None);
        };
        if id.is_zero() {
            return Ok(Some(id));
        }
        if self.unhealthy.contains(&id)
            || (self.cheap_stat && self.exists_cheaply(vault, &id)? == Some(false))
        {
            return Ok(None); // read it again: that heals it
        }
        Ok(Some(id))
    }
}

impl Reuse<'_> {
    /// `Ok(None)` to reuse; `Ok(Some(healing))` to write, `healing` when a bad or missing
    /// chunk is being replaced.
    pub(crate) fn decide(&self, vault: &Vault, id: &ChunkId) -> Result<Option<bool>> {
        if self.unhealthy.contains(id) {
            return Ok(Some(true));
        }
        if self.known.contains(id) {
            if !self.cheap_stat || self.exists_cheaply(vault, id)? != Some(false) {
                return Ok(None);
            }
            // Referenced by the previous point, yet gone: heal it if it cannot be reused.
            return Ok((!(self.stored)(id)?).then_some(true));
        }
        Ok((!(self.stored)(id)?).then_some(false))
    }
}

struct PipelineStats {
    rp: RpStats,
    format: String,
    healed: Vec<ChunkId>,
}

struct Work {
    disk: usize,
    slot: usize,
    buf: Vec<u8>,
    len: usize,
}

/// The running totals of one disk.
#[derive(Default)]
struct DiskCounters {
    read_bytes: AtomicU64,
    new_chunks: AtomicU64,
    new_stored: AtomicU64,
    new_plain: AtomicU64,
}

/// Reads every disk and stores the new chunks; returns each disk's full index and stats, in
/// the order given. One reader thread per disk feeds one shared pool of workers, and all
/// share one pool of `workers + 1 + disks` chunk buffers: the memory bound does not grow with
/// the disks' sizes, and several disks are transferred at once.
fn run_pipeline(
    vault: &Vault,
    disks: &mut [(String, Box<dyn DiskReader>)],
    reuses: &[Reuse<'_>],
    progress: &dyn Progress,
    fail_after: Option<u64>,
) -> Result<Vec<(DiskIndex, PipelineStats)>> {
    let chunk_size = vault.config().chunk_size;
    let ids: Vec<Mutex<Vec<ChunkId>>> = disks
        .iter()
        .map(|(_, d)| {
            let count = DiskIndex::chunk_count(d.size(), chunk_size) as usize;
            Mutex::new(vec![ChunkId::ZERO; count])
        })
        .collect();
    let counters: Vec<DiskCounters> = disks.iter().map(|_| DiskCounters::default()).collect();
    let healed: Vec<Mutex<Vec<ChunkId>>> = disks.iter().map(|_| Mutex::new(Vec::new())).collect();
    let formats: Vec<String> = disks.iter().map(|(_, d)| d.format().to_string()).collect();
    let n_workers = io_workers(vault.backend().as_ref());
    let pool = n_workers + 1 + disks.len();
    let (work_tx, work_rx) = bounded::<Work>(n_workers);
    let (free_tx, free_rx) = bounded::<Vec<u8>>(pool);
    for _ in 0..pool {
        free_tx.send(Vec::new()).expect("pool has room");
    }
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        failed.store(true, Ordering::SeqCst);
        let mut slot = first_error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
    };
    let stored_total = AtomicU64::new(0);

    for (name, d) in disks.iter() {
        progress.start(&format!("backup {name}"), d.size());
    }
    std::thread::scope(|s| {
        for _ in 0..n_workers {
            let work_rx = work_rx.clone();
            let free_tx = free_tx.clone();
            let (ids, counters, healed) = (&ids, &counters, &healed);
            let (failed, fail, stored_total) = (&failed, &fail, &stored_total);
            s.spawn(move || {
                let mut codec = vault.codec();
                for w in work_rx {
                    if failed.load(Ordering::SeqCst) {
                        let _ = free_tx.send(w.buf);
                        continue;
                    }
                    let data = &w.buf[..w.len];
                    let id = if is_zero(data) {
                        ChunkId::ZERO
                    } else {
                        codec.chunk_id(data)
                    };
                    let c = &counters[w.disk];
                    let result = (|| -> Result<()> {
                        if id.is_zero() {
                            return Ok(());
                        }
                        let Some(healing) = reuses[w.disk].decide(vault, &id)? else {
                            return Ok(());
                        };
                        let stored = codec.encode_chunk(&id, data)?;
                        let stored_len = stored.len() as u64;
                        vault.put_chunk(&id, stored)?;
                        if healing {
                            healed[w.disk]
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(id);
                        }
                        c.new_chunks.fetch_add(1, Ordering::SeqCst);
                        c.new_stored.fetch_add(stored_len, Ordering::Relaxed);
                        c.new_plain.fetch_add(data.len() as u64, Ordering::Relaxed);
                        let n = stored_total.fetch_add(1, Ordering::SeqCst) + 1;
                        if fail_after.is_some_and(|limit| n >= limit) {
                            return Err(Error::new(
                                ErrorKind::Other,
                                "injected failure (fail_after_chunks)",
                            ));
                        }
                        Ok(())
                    })();
                    match result {
                        Ok(()) => {
                            ids[w.disk].lock().unwrap_or_else(|e| e.into_inner())[w.slot] = id
                        }
                        Err(e) => fail(e),
                    }
                    progress.advance(w.len as u64);
                    let _ = free_tx.send(w.buf);
                }
            });
        }
        drop(work_rx);

        // One reader per disk.
        for (n, (_, disk)) in disks.iter_mut().enumerate() {
            let work_tx = work_tx.clone();
            let free_rx = free_rx.clone();
            let (failed, fail, counters, ids) = (&failed, &fail, &counters, &ids);
            s.spawn(move || {
                let size = disk.size();
                let count = DiskIndex::chunk_count(size, chunk_size) as usize;
                let mut reader = || -> Result<()> {
                    let mut window: Vec<Extent> = Vec::new();
                    let mut window_end = 0u64;
                    let window_len = 256 * u64::from(chunk_size);
                    for slot in 0..count {
                        if failed.load(Ordering::SeqCst) {
                            break;
                        }
                        crate::progress::check_cancel(progress)?;
                        let start = slot as u64 * u64::from(chunk_size);
                        let end = (start + u64::from(chunk_size)).min(size);
                        if let Some(id) = reuses[n].unchanged(vault, slot, start, end)? {
                            ids[n].lock().unwrap_or_else(|e| e.into_inner())[slot] = id;
                            progress.advance(end - start);
                            continue;
                        }
                        if start >= window_end {
                            window = disk.extents(start, window_len)?;
                            window_end = (start + window_len).min(size);
                        }
                        let parts: Vec<Extent> = window
                            .iter()
                            .filter(|e| e.offset < end && e.offset + e.len > start)
                            .copied()
                            .collect();
                        if parts.iter().all(|e| e.kind == ExtentKind::Zero) {
                            progress.advance(end - start);
                            continue; // a hole: ChunkId::ZERO, never read
                        }
                        let Ok(mut buf) = free_rx.recv() else {
                            break;
                        };
                        let len = (end - start) as usize;
                        buf.resize(len, 0);
                        for e in parts {
                            let a = e.offset.max(start);
                            let b = (e.offset + e.len).min(end);
                            let dst = &mut buf[(a - start) as usize..(b - start) as usize];
                            match e.kind {
                                ExtentKind::Zero => dst.fill(0),
                                ExtentKind::Data => {
                                    disk.read_at(dst, a)?;
                                    counters[n].read_bytes.fetch_add(b - a, Ordering::Relaxed);
                                }
                            }
                        }
                        if work_tx
                            .send(Work {
                                disk: n,
                                slot,
                                buf,
                                len,
                            })
                            .is_err()
                        {
                            break;
                        }
                        crate::hooks::gate("transfer_chunk");
                    }
                    Ok(())
                };
                if let Err(e) = reader() {
                    fail(e);
                }
            });
        }
        drop(work_tx);
    });
    progress.finish();
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut out = Vec::new();
    for (n, (_, disk)) in disks.iter().enumerate() {
        let c = &counters[n];
        out.push((
            DiskIndex {
                size: disk.size(),
                chunk_size,
                chunks: std::mem::take(&mut *ids[n].lock().unwrap_or_else(|e| e.into_inner())),
            },
            PipelineStats {
                rp: RpStats {
                    read_bytes: c.read_bytes.load(Ordering::Relaxed),
                    new_chunks: c.new_chunks.load(Ordering::Relaxed),
                    new_stored_bytes: c.new_stored.load(Ordering::Relaxed),
                    new_plain_bytes: c.new_plain.load(Ordering::Relaxed),
                    used_bytes: None,
                },
                format: formats[n].clone(),
                healed: std::mem::take(&mut *healed[n].lock().unwrap_or_else(|e| e.into_inner())),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kura_backend::MemoryBackend;
    use kura_store::{KeySecret, VaultOptions};

    use super::*;

    fn raw(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Box<dyn DiskReader> {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        Box::new(kura_source::RawReader::open(&p).unwrap())
    }

    fn content(vault: &Vault, idx: &DiskIndex) -> Vec<u8> {
        let mut codec = vault.codec();
        let mut out = Vec::new();
        for (i, id) in idx.chunks.iter().enumerate() {
            let len = (idx.chunk_range(i).end - idx.chunk_range(i).start) as usize;
            if id.is_zero() {
                out.extend(std::iter::repeat_n(0u8, len));
            } else {
                out.extend(vault.get_chunk(id, &mut codec).unwrap());
            }
        }
        out
    }

    /// Several disks go through one pipeline at once: each gets its own full index, the
    /// chunks they share are stored once, and a second run with the previous indexes (matched
    /// by disk) reuses everything.
    #[test]
    fn several_disks_share_one_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::create(
            Arc::new(MemoryBackend::default()),
            &VaultOptions::for_tests(),
            &KeySecret::None,
        )
        .unwrap();
        let cs = vault.config().chunk_size as usize;
        let pattern = |seed: u8, n: usize| -> Vec<u8> {
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect()
        };
        let mut a = pattern(1, cs * 5);
        a.extend(vec![0u8; cs * 2]);
        let mut b = pattern(1, cs * 2); // shares its first chunks with `a`
        b.extend(pattern(9, cs * 3 + 100));
        let mut disks = vec![
            ("os".to_string(), raw(dir.path(), "a.raw", &a)),
            ("data".to_string(), raw(dir.path(), "b.raw", &b)),
        ];
        let nothing = HashSet::new();
        let never = |_: &ChunkId| Ok(false);
        let fresh = Reuse {
            known: &nothing,
            unhealthy: &nothing,
            cheap_stat: true,
            stored: &never,
            tree: None,
            base: None,
        };
        let out = run_pipeline(
            &vault,
            &mut disks,
            &[fresh, fresh],
            &crate::NoProgress,
            None,
        )
        .unwrap();
        assert_eq!(content(&vault, &out[0].0), a);
        assert_eq!(content(&vault, &out[1].0), b);
        let stored: u64 = out.iter().map(|(_, s)| s.rp.new_chunks).sum();
        let distinct: HashSet<ChunkId> = out
            .iter()
            .flat_map(|(i, _)| i.chunks.iter().copied())
            .filter(|c| !c.is_zero())
            .collect();
        assert!(stored >= distinct.len() as u64);
        assert_eq!(
            out[0].0.chunks.iter().filter(|c| c.is_zero()).count(),
            2,
            "holes"
        );

        let known: Vec<HashSet<ChunkId>> = out
            .iter()
            .map(|(i, _)| i.chunks.iter().copied().collect())
            .collect();
        let again: Vec<Reuse<'_>> = known
            .iter()
            .map(|k| Reuse {
                known: k,
                unhealthy: &nothing,
                cheap_stat: true,
                stored: &never,
                tree: None,
                base: None,
            })
            .collect();
        let out2 = run_pipeline(&vault, &mut disks, &again, &crate::NoProgress, None).unwrap();
        assert_eq!(out2.iter().map(|(_, s)| s.rp.new_chunks).sum::<u64>(), 0);

        // With changed-block tracking, only chunks the changes touch are read; the index is
        // the same as a full read of the new content gives.
        let mut a2 = a.clone();
        a2[cs * 3 + 10..cs * 3 + 20].fill(0xEE);
        let mut disk = vec![("os".to_string(), raw(dir.path(), "a2.raw", &a2))];
        let changes = kura_source::Changes {
            since: "prev".into(),
            dirty: vec![(cs as u64 * 3, 4096)],
        };
        let cbt = [Reuse {
            known: &known[0],
            unhealthy: &nothing,
            cheap_stat: true,
            stored: &never,
            tree: None,
            base: Some((out[0].0.chunks.as_slice(), &changes)),
        }];
        let out3 = run_pipeline(&vault, &mut disk, &cbt, &crate::NoProgress, None).unwrap();
        assert_eq!(out3[0].1.rp.read_bytes, cs as u64, "one chunk read");
        assert_eq!(content(&vault, &out3[0].0), a2);
        let full = run_pipeline(&vault, &mut disk, &again[..1], &crate::NoProgress, None).unwrap();
        assert_eq!(full[0].0.chunks, out3[0].0.chunks);
        assert_eq!(out2[0].0, out[0].0);
        assert_eq!(out2[1].0, out[1].0);
    }
}
