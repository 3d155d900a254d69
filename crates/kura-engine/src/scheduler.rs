//! The scheduler: queues each item's backups per its policy, and the upkeep jobs (retention,
//! soft-delete purge, garbage collection) when they are due.
//!
//! Each item remembers the last slot it handled (`last_slot` in the catalog). A tick at
//! instant `now` looks at the slots of the item's policy in `(last_slot, now]`, shifted by the
//! item's spread offset; if there are any, it queues **one** backup for the latest of them (so
//! after downtime a missed backup runs once, not once per missed slot). Retention gets a job
//! only for items with a recovery point whose expiry has come (one catalog query per tick,
//! not a plan per item), purge only for vaults with a soft-deleted item whose period is over,
//! GC once per `gc_every`. Everything goes through a [`JobQueue`]: the server's, which runs
//! jobs while later ticks go on, or (`scheduler_tick`) one of the tick's own that runs them
//! all before returning. The clock is the caller's: the server passes the system time,
//! tests pass any instant they like and drive years of schedule in seconds.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use jiff::{SignedDuration, Timestamp};
use kura_catalog::{ItemRow, JobOperation, JobStatus};
use serde::Serialize;

use crate::backup::{BackupOptions, ScheduledRun};
use crate::queue::{JobQueue, JobRequest, QueueLimits};
use crate::{ErrorKind, Home, NoProgress, Result, Secrets};

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Items sharing a schedule start spread over this window (each at a fixed offset
    /// derived from its id). Default 10 minutes.
    pub spread: SignedDuration,
    /// Secrets for vaults that need them.
    pub secrets: Secrets,
    /// Collect garbage in each vault this often (at a tick, after backups). Default daily;
    /// `None` never.
    pub gc_every: Option<SignedDuration>,
    /// The limits of the queue a one-off tick (`scheduler_tick`) runs its jobs in.
    pub limits: QueueLimits,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            spread: SignedDuration::from_mins(10),
            secrets: Secrets::default(),
            gc_every: Some(SignedDuration::from_hours(24)),
            limits: QueueLimits::for_this_machine(),
        }
    }
}

/// What a tick did for one item.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledBackup {
    /// Item name.
    pub item: String,
    /// The slot that was run.
    pub slot: String,
    /// Earlier slots since the last tick that were folded into this one.
    pub skipped_slots: usize,
    /// The backup's job, when it was queued.
    pub job_id: Option<String>,
    /// The backup's recovery point, when it succeeded (known once the job ended).
    pub rp_id: Option<String>,
    /// Why it did not succeed: not queued, failed or cancelled.
    pub error: Option<String>,
}

/// A recovery point retention removed.
#[derive(Debug, Clone, Serialize)]
pub struct Expired {
    /// Item name.
    pub item: String,
    /// The recovery point.
    pub rp_id: String,
    /// Why.
    pub reason: String,
}

/// A job a tick queued.
#[derive(Debug, Clone, Serialize)]
pub struct QueuedJob {
    /// Job id.
    pub job_id: String,
    /// What it does.
    pub operation: JobOperation,
    /// Item or vault name.
    pub target: String,
}

/// What a tick did. When the tick ran its own jobs (`scheduler_tick`), the outcomes are
/// filled in; through the server's queue, only what was queued is known at once.
#[derive(Debug, Clone, Serialize)]
pub struct TickReport {
    /// The instant of the tick.
    pub at: String,
    /// One entry per item that had a due slot.
    pub backups: Vec<ScheduledBackup>,
    /// Every job queued: backups, retention, purges, garbage collections.
    pub jobs: Vec<QueuedJob>,
    /// Recovery points whose time was up and that retention removed.
    pub expired: Vec<Expired>,
    /// Upkeep (retention, purge, GC) that could not be queued or failed, with the reason.
    pub retention_errors: Vec<String>,
    /// Soft-deleted items purged because their soft-delete period ended.
    pub purged: Vec<String>,
    /// Garbage-collection jobs queued by this tick.
    pub gc_jobs: Vec<String>,
}

/// The fixed offset of an item within the spread window.
pub fn spread_offset(item_id: &str, spread: SignedDuration) -> SignedDuration {
    let secs = spread.as_secs();
    if secs <= 0 {
        return SignedDuration::ZERO;
    }
    let h = blake3::hash(item_id.as_bytes());
    let n = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    SignedDuration::from_secs((n % secs as u64) as i64)
}

impl Home {
    /// When the scheduler next backs `item` up under `policy`: the first slot after the one
    /// it handled last (or after protect, resume or a policy change), moved by the item's
    /// spread offset. In the past when no tick has run since that slot was due.
    pub(crate) fn next_backup(
        &self,
        item: &ItemRow,
        policy: &kura_policy::Policy,
    ) -> Option<Timestamp> {
        let since: Timestamp = item
            .last_slot
            .as_deref()
            .unwrap_or(&item.created)
            .parse()
            .ok()?;
        let offset = spread_offset(&item.id, self.schedule_spread());
        // The same window edges as a tick: a slot at `since - offset` was handled already.
        let from = since
            .checked_sub(offset)
            .and_then(|t| t.checked_add(SignedDuration::from_nanos(1)))
            .ok()?;
        // Short windows first: an hourly policy has thousands of slots in a year.
        [2, 16, 400].into_iter().find_map(|days| {
            let to = from
                .checked_add(SignedDuration::from_hours(24 * days))
                .ok()?;
            let first = policy.runs(from, to).into_iter().next()?;
            first.time.timestamp().checked_add(offset).ok()
        })
    }

    /// Runs a whole tick here: queues what is due at `now` in a queue of the tick's own
    /// (limits from `opts`), runs it, then retention for points the new backups made
    /// removable, and reports every outcome.
    pub fn scheduler_tick(&self, now: Timestamp, opts: &SchedulerOptions) -> Result<TickReport> {
        let queue = JobQueue::new(opts.limits);
        let mut report = self.schedule(now, opts, &queue)?;
        queue.drain(self);
        // A backup that just succeeded lets the point before it go, if its time is up.
        self.queue_retention(now, opts, &queue, &mut report)?;
        queue.drain(self);
        self.fill_outcomes(&mut report)?;
        Ok(report)
    }

    /// Queues in `queue` every job due at `now` and returns at once (the server's ticks).
    pub fn schedule(
        &self,
        now: Timestamp,
        opts: &SchedulerOptions,
        queue: &JobQueue,
    ) -> Result<TickReport> {
        self.set_schedule_spread(opts.spread);
        let mut report = TickReport {
            at: kura_catalog::stamp(now),
            backups: Vec::new(),
            jobs: Vec::new(),
            expired: Vec::new(),
            retention_errors: Vec::new(),
            purged: Vec::new(),
            gc_jobs: Vec::new(),
        };
        // Jobs whose process died (a CLI killed while the server runs) end as Failed.
        self.catalog.fail_orphaned_jobs()?;
        let vaults = self.catalog.list_vaults()?;
        for v in &vaults {
            match self.soft_deleted_due(&v.id, now) {
                Ok(due) if due.is_empty() => {}
                Ok(_) => {
                    let (name, secrets) = (v.name.clone(), opts.secrets.clone());
                    self.submit_upkeep(
                        queue,
                        &mut report,
                        JobRequest {
                            operation: JobOperation::PurgeSoftDeleted,
                            target: v.name.clone(),
                            exclusive: true,
                            work: Box::new(move |home, id| {
                                home.purge_job(&name, now, &secrets, id).map(|_| ())
                            }),
                        },
                    );
                }
                Err(e) => report
                    .retention_errors
                    .push(format!("purge in vault {}: {e}", v.name)),
            }
            // A geo replica that missed points (it was unreachable after a backup) catches
            // up.
            match self.replication_lag(v) {
                Ok(Some(lag)) if lag.points_behind > 0 || lag.replicated_at.is_none() => {
                    let name = v.name.clone();
                    self.submit_upkeep(
                        queue,
                        &mut report,
                        JobRequest {
                            operation: JobOperation::Replicate,
                            target: v.name.clone(),
                            exclusive: true,
                            work: Box::new(move |home, id| {
                                home.replicate(&name, Some(id), &crate::NoProgress)
                                    .map(|_| ())
                            }),
                        },
                    );
                }
                Ok(_) => {}
                Err(e) => report
                    .retention_errors
                    .push(format!("replication of vault {}: {e}", v.name)),
            }
        }
        // Each policy is read once per tick, however many items share it.
        let mut policies = HashMap::new();
        for item in self.catalog.list_items(None)? {
            if item.state != "protected" {
                continue;
            }
            if let Some(b) = self.tick_item(&item, now, opts, queue, &mut policies)? {
                if let Some(id) = &b.job_id {
                    report.jobs.push(QueuedJob {
                        job_id: id.clone(),
                        operation: JobOperation::Backup,
                        target: item.name.clone(),
                    });
                }
                report.backups.push(b);
            }
        }
        self.queue_retention(now, opts, queue, &mut report)?;
        if let Some(every) = opts.gc_every {
            for v in &vaults {
                if self.gc_due(&v.id, now, every)? {
                    self.catalog
                        .set_vault_last_gc(&v.id, &kura_catalog::stamp(now))?;
                    let (name, secrets) = (v.name.clone(), opts.secrets.clone());
                    if let Some(id) = self.submit_upkeep(
                        queue,
                        &mut report,
                        JobRequest {
                            operation: JobOperation::GarbageCollect,
                            target: v.name.clone(),
                            exclusive: true,
                            work: Box::new(move |home, id| {
                                let opts = crate::GcOptions {
                                    job_id: Some(id.to_string()),
                                    ..Default::default()
                                };
                                home.gc(&name, &opts, &secrets, &NoProgress).map(|_| ())
                            }),
                        },
                    ) {
                        report.gc_jobs.push(id);
                    }
                }
            }
        }
        Ok(report)
    }

    /// Queues a retention job for each protected item with a point whose time is up.
    fn queue_retention(
        &self,
        now: Timestamp,
        opts: &SchedulerOptions,
        queue: &JobQueue,
        report: &mut TickReport,
    ) -> Result<()> {
        for item in self
            .catalog
            .items_with_expiry_due(&kura_catalog::stamp(now))?
        {
            let (name, secrets) = (item.clone(), opts.secrets.clone());
            self.submit_upkeep(
                queue,
                report,
                JobRequest {
                    operation: JobOperation::DeleteExpiredPoints,
                    target: item,
                    exclusive: true,
                    work: Box::new(move |home, id| {
                        home.apply_retention(&name, now, &secrets, Some(id))
                            .map(|_| ())
                    }),
                },
            );
        }
        Ok(())
    }

    /// Queues an upkeep job; one of the same kind already queued or running is fine (it
    /// does the same work), any other refusal is reported.
    fn submit_upkeep(
        &self,
        queue: &JobQueue,
        report: &mut TickReport,
        req: JobRequest,
    ) -> Option<String> {
        let (operation, target) = (req.operation, req.target.clone());
        match queue.submit(self, req) {
            Ok(id) => {
                report.jobs.push(QueuedJob {
                    job_id: id.clone(),
                    operation,
                    target,
                });
                Some(id)
            }
            Err(e) if e.kind() == ErrorKind::Conflict => None,
            Err(e) => {
                report
                    .retention_errors
                    .push(format!("{operation} of {target}: {e}"));
                None
            }
        }
    }

    /// Fills a report's outcomes from its jobs, once they ended.
    fn fill_outcomes(&self, report: &mut TickReport) -> Result<()> {
        let ended = |j: &kura_catalog::JobRow| !j.status.is_running();
        for b in &mut report.backups {
            let Some(id) = &b.job_id else { continue };
            let job = self.catalog.job(id)?;
            if !ended(&job) {
                continue;
            }
            b.rp_id = job.rp_id.clone();
            if matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
                b.error = job.error.clone().or(Some(job.status.to_string()));
            }
        }
        for q in &report.jobs {
            let job = self.catalog.job(&q.job_id)?;
            if !ended(&job) || q.operation == JobOperation::Backup {
                continue;
            }
            if matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
                report.retention_errors.push(format!(
                    "{} of {}: {}",
                    q.operation,
                    q.target,
                    job.error.as_deref().unwrap_or(job.status.as_str())
                ));
                continue;
            }
            match q.operation {
                JobOperation::DeleteExpiredPoints => {
                    let entries = job
                        .result
                        .as_ref()
                        .and_then(|r| r["entries"].as_array().cloned())
                        .unwrap_or_default();
                    report
                        .expired
                        .extend(entries.iter().filter(|e| e["action"] == "delete").map(|e| {
                            Expired {
                                item: q.target.clone(),
                                rp_id: e["rp_id"].as_str().unwrap_or_default().to_string(),
                                reason: e["reason"].as_str().unwrap_or_default().to_string(),
                            }
                        }));
                }
                JobOperation::PurgeSoftDeleted => report.purged.extend(
                    job.result
                        .as_ref()
                        .and_then(|r| r.as_array().cloned())
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|n| n.as_str().map(str::to_string)),
                ),
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the last garbage collection of a vault started more than `every` before `now`.
    /// Judged on the scheduler's clock (the instant of the tick that started it), never on
    /// job rows stamped with the system time.
    fn gc_due(&self, vault_id: &str, now: Timestamp, every: SignedDuration) -> Result<bool> {
        let last = self
            .catalog
            .vault_last_gc(vault_id)?
            .and_then(|t| t.parse::<Timestamp>().ok());
        Ok(last.is_none_or(|t| t.checked_add(every).is_ok_and(|due| due <= now)))
    }

    fn tick_item(
        &self,
        item: &ItemRow,
        now: Timestamp,
        opts: &SchedulerOptions,
        queue: &JobQueue,
        policies: &mut HashMap<(String, String), kura_policy::Policy>,
    ) -> Result<Option<ScheduledBackup>> {
        let Some(policy_name) = &item.policy else {
            return Ok(None);
        };
        let policy = match policies.entry((item.vault_id.clone(), policy_name.clone())) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(self.load_policy(&item.vault_id, policy_name)?),
        };
        let since: Timestamp = item
            .last_slot
            .as_deref()
            .unwrap_or(&item.created)
            .parse()
            .unwrap_or(now);
        let offset = spread_offset(&item.id, opts.spread);
        let tiny = SignedDuration::from_nanos(1);
        let (Ok(from), Ok(to)) = (
            since.checked_sub(offset).and_then(|t| t.checked_add(tiny)),
            now.checked_sub(offset).and_then(|t| t.checked_add(tiny)),
        ) else {
            return Ok(None);
        };
        let runs = policy.runs(from, to);
        let Some(latest) = runs.last() else {
            return Ok(None);
        };
        let slot = latest.time.timestamp().checked_add(offset).unwrap_or(now);
        // Hourly policies: when the previous day's vault backup is missing (it failed), the
        // first backup of the next day goes to the vault instead.
        let mut vault = latest.vault;
        if !vault {
            let window = latest
                .time
                .timestamp()
                .checked_sub(SignedDuration::from_hours(48))
                .unwrap_or(Timestamp::MIN);
            if let Some(prev) = policy
                .runs(window, latest.time.timestamp())
                .into_iter()
                .rev()
                .find(|r| r.vault)
            {
                let prev_slot = prev
                    .time
                    .timestamp()
                    .checked_add(offset)
                    .unwrap_or(prev.time.timestamp());
                let transferred = self.catalog.list_rps(&item.id)?.iter().any(|r| {
                    r.tier != "snapshot"
                        && r.time.parse::<Timestamp>().is_ok_and(|t| t >= prev_slot)
                });
                vault = !transferred;
            }
        }
        // Remember the slot first: a backup that fails or is interrupted is not retried in a
        // loop; the next slot runs as usual.
        self.catalog
            .set_item_last_slot(&item.id, &kura_catalog::stamp(slot))?;
        let skipped_slots = runs.len() - 1;
        let mut entry = ScheduledBackup {
            item: item.name.clone(),
            slot: kura_catalog::stamp(slot),
            skipped_slots,
            job_id: None,
            rp_id: None,
            error: None,
        };
        // A backup of the item still waiting in the queue stands for this slot too.
        let waiting = self.catalog.find_jobs(&kura_catalog::JobFilter {
            target: Some(item.name.clone()),
            status: Some(JobStatus::Queued),
            operation: Some(JobOperation::Backup),
            limit: 1,
            ..Default::default()
        })?;
        if let Some(w) = waiting.first() {
            entry.error = Some(format!(
                "the backup queued earlier (job {}) has not started yet; it stands for this slot",
                w.id
            ));
            return Ok(Some(entry));
        }
        let (name, secrets) = (item.name.clone(), opts.secrets.clone());
        let submitted = queue.submit(
            self,
            JobRequest {
                operation: JobOperation::Backup,
                target: item.name.clone(),
                exclusive: false,
                work: Box::new(move |home, id| {
                    let backup = BackupOptions {
                        now: Some(now),
                        scheduled: Some(ScheduledRun { slot, vault }),
                        job_id: Some(id.to_string()),
                        ..Default::default()
                    };
                    home.backup(&name, &secrets, &backup, &NoProgress)
                        .map(|_| ())
                }),
            },
        );
        match submitted {
            Ok(id) => entry.job_id = Some(id),
            Err(e) => entry.error = Some(e.to_string()),
        }
        Ok(Some(entry))
    }
}
