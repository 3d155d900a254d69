//! The scheduler: fires each item's backups per its policy, once per tick.
//!
//! Each item remembers the last slot it handled (`last_slot` in the catalog). A tick at
//! instant `now` looks at the slots of the item's policy in `(last_slot, now]`, shifted by the
//! item's spread offset; if there are any, it runs **one** backup for the latest of them (so
//! after downtime a missed backup runs once, not once per missed slot). Every tick then
//! applies retention to every item. The clock is the caller's: the server passes the system time,
//! tests pass any instant they like and drive years of schedule in seconds.

use jiff::{SignedDuration, Timestamp};
use kura_catalog::ItemRow;
use serde::Serialize;

use crate::backup::{BackupOptions, ScheduledRun};
use crate::{Home, NoProgress, Result, Secrets};

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
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            spread: SignedDuration::from_mins(10),
            secrets: Secrets::default(),
            gc_every: Some(SignedDuration::from_hours(24)),
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
    /// The backup's recovery point, when it succeeded.
    pub rp_id: Option<String>,
    /// The error, when it failed.
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

/// What a tick did.
#[derive(Debug, Clone, Serialize)]
pub struct TickReport {
    /// The instant of the tick.
    pub at: String,
    /// One entry per item that had a due slot.
    pub backups: Vec<ScheduledBackup>,
    /// Recovery points whose time was up (retention runs for every item at every tick).
    pub expired: Vec<Expired>,
    /// Items retention could not be applied to, with the reason.
    pub retention_errors: Vec<String>,
    /// Soft-deleted items purged because their soft-delete period ended.
    pub purged: Vec<String>,
    /// Garbage-collection jobs started by this tick.
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
    /// Runs every backup due at `now` and applies retention to the items it backed up.
    pub fn scheduler_tick(&self, now: Timestamp, opts: &SchedulerOptions) -> Result<TickReport> {
        let mut report = TickReport {
            at: kura_catalog::stamp(now),
            backups: Vec::new(),
            expired: Vec::new(),
            retention_errors: Vec::new(),
            purged: Vec::new(),
            gc_jobs: Vec::new(),
        };
        // Jobs whose process died (a CLI killed while the server runs) end as Failed.
        self.catalog.fail_orphaned_jobs()?;
        for v in self.catalog.list_vaults()? {
            match self.purge_soft_deleted(&v.id, now, &opts.secrets) {
                Ok(names) => report.purged.extend(names),
                Err(e) => report
                    .retention_errors
                    .push(format!("purge in vault {}: {e}", v.name)),
            }
        }
        for item in self.catalog.list_items(None)? {
            if item.state != "protected" {
                continue;
            }
            if let Some(b) = self.tick_item(&item, now, opts)? {
                report.backups.push(b);
            }
            match self.retention_apply(&item.name, now, &opts.secrets) {
                Ok(plan) => report.expired.extend(plan.deletions().map(|e| Expired {
                    item: item.name.clone(),
                    rp_id: e.rp_id.clone(),
                    reason: e.reason.clone(),
                })),
                Err(e) => report.retention_errors.push(format!("{}: {e}", item.name)),
            }
        }
        if let Some(every) = opts.gc_every {
            for v in self.catalog.list_vaults()? {
                if self.gc_due(&v.id, now, every)? {
                    self.catalog
                        .set_vault_last_gc(&v.id, &kura_catalog::stamp(now))?;
                    match self.gc(
                        &v.name,
                        &crate::GcOptions::default(),
                        &opts.secrets,
                        &NoProgress,
                    ) {
                        Ok(r) => report.gc_jobs.push(r.job_id),
                        Err(e) => report
                            .retention_errors
                            .push(format!("garbage collection in vault {}: {e}", v.name)),
                    }
                }
            }
        }
        Ok(report)
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
    ) -> Result<Option<ScheduledBackup>> {
        let Some(policy_name) = &item.policy else {
            return Ok(None);
        };
        let policy = self.load_policy(&item.vault_id, policy_name)?;
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
        let backup = BackupOptions {
            now: Some(now),
            scheduled: Some(ScheduledRun { slot, vault }),
            ..Default::default()
        };
        let (rp_id, error) = match self.backup(&item.name, &opts.secrets, &backup, &NoProgress) {
            Ok(r) => (Some(r.rp_id), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(Some(ScheduledBackup {
            item: item.name.clone(),
            slot: kura_catalog::stamp(slot),
            skipped_slots: runs.len() - 1,
            rp_id,
            error,
        }))
    }
}
