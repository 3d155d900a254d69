//! Retention: every recovery point gets tags and an expiry when it is made; a plan shows
//! which points have expired and why, and applying it removes them (plan, then apply).

use jiff::{Span, Timestamp};
use kura_catalog::{ItemRow, JobOperation, RpRow};
use serde::Serialize;

use crate::progress::Progress;
use crate::{Error, ErrorKind, Home, Result, Secrets};

/// Days an on-demand recovery point is kept without `--retain-until`.
pub const ON_DEMAND_DAYS: i64 = 30;

/// What retention decides for one recovery point.
#[derive(Debug, Clone, Serialize)]
pub struct PlanEntry {
    /// Recovery point.
    pub rp_id: String,
    /// When it was taken.
    pub time: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its expiry.
    pub expires: Option<String>,
    /// `keep` or `delete`.
    pub action: &'static str,
    /// Why.
    pub reason: String,
}

/// Retention's plan for an item at an instant.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionPlan {
    /// Item name.
    pub item: String,
    /// The instant judged.
    pub at: String,
    /// One entry per recovery point, newest first.
    pub entries: Vec<PlanEntry>,
}

impl RetentionPlan {
    /// The recovery points to delete.
    pub fn deletions(&self) -> impl Iterator<Item = &PlanEntry> {
        self.entries.iter().filter(|e| e.action == "delete")
    }
}

/// Decides keep or delete for each point (newest first): a point exists while `at` is before
/// its expiry, and the newest point is kept until a newer backup succeeds.
pub(crate) fn plan_points(rps: &[RpRow], at: Timestamp) -> Vec<PlanEntry> {
    rps.iter()
        .enumerate()
        .map(|(i, rp)| {
            let expires: Option<Timestamp> = rp.expires.as_deref().and_then(|e| e.parse().ok());
            let (action, reason) = match expires {
                _ if i == 0 => (
                    "keep",
                    "newest recovery point: kept until a newer backup succeeds".to_string(),
                ),
                None => ("keep", "no expiry".to_string()),
                Some(e) if at < e => ("keep", format!("kept until {e} ({})", rp.tags.join(", "))),
                Some(e) => ("delete", format!("expired at {e} ({})", rp.tags.join(", "))),
            };
            PlanEntry {
                rp_id: rp.id.clone(),
                time: rp.time.clone(),
                tags: rp.tags.clone(),
                expires: rp.expires.clone(),
                action,
                reason,
            }
        })
        .collect()
}

impl Home {
    /// Tags and expiry of an on-demand point taken at `t`: `--retain-until` (kept through
    /// that day, UTC) or 30 days.
    pub(crate) fn on_demand_retention(
        &self,
        retain_until: Option<&str>,
        t: Timestamp,
    ) -> Result<(Vec<String>, String)> {
        let expires = match retain_until {
            Some(d) => retain_until_end(d, t, self.zone())?,
            None => t
                .to_zoned(jiff::tz::TimeZone::UTC)
                .checked_add(Span::new().days(ON_DEMAND_DAYS))
                .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?
                .timestamp(),
        };
        Ok((vec!["on-demand".into()], kura_catalog::stamp(expires)))
    }

    /// Tags and expiry of a scheduled point taken at `t`, from the item's policy.
    pub(crate) fn scheduled_retention(
        &self,
        item: &ItemRow,
        run: &crate::backup::ScheduledRun,
        t: Timestamp,
    ) -> Result<(Vec<String>, String)> {
        let name = item.policy.as_deref().ok_or_else(|| {
            Error::new(
                ErrorKind::Invalid,
                format!("item {:?} has no policy to schedule it", item.name),
            )
        })?;
        let policy = self.load_policy(&item.vault_id, name)?;
        let kept = policy.retain(&t.to_zoned(policy.tz.clone()), run.vault);
        let tags = if run.vault {
            kept.tags.iter().map(|s| s.to_string()).collect()
        } else {
            vec!["instant-restore".into()]
        };
        Ok((tags, kura_catalog::stamp(kept.expires().timestamp())))
    }

    /// Drops the snapshot tiers of an item's points whose instant-restore days are over at
    /// `at`, except the newest point's. Points left with no tier are removed by the plan.
    pub(crate) fn expire_snapshots(&self, item_id: &str, at: Timestamp) -> Result<()> {
        for (i, rp) in self.catalog.list_rps(item_id)?.iter().enumerate() {
            let expired = rp
                .snapshot_expires
                .as_deref()
                .and_then(|e| e.parse::<Timestamp>().ok())
                .is_some_and(|e| e <= at);
            if i > 0 && expired && rp.tier != "snapshot" {
                if let Some(s) = rp
                    .snapshot
                    .as_deref()
                    .and_then(kura_source::Snapshot::decode)
                {
                    s.delete()?;
                }
                self.catalog.drop_rp_snapshot(&rp.id)?;
            }
        }
        Ok(())
    }

    /// What retention would do to an item's recovery points at `at`.
    pub fn retention_plan(&self, item: &str, at: Timestamp) -> Result<RetentionPlan> {
        let item = self.catalog.item(item)?;
        let rps = self.catalog.list_rps(&item.id)?;
        let mut entries = plan_points(&rps, at);
        if item.state != "protected" {
            // Stopped and soft-deleted items keep their data until resumed or purged.
            for e in &mut entries {
                e.action = "keep";
                e.reason = format!("protection {}: data retained", item.state);
            }
        }
        Ok(RetentionPlan {
            item: item.name.clone(),
            at: kura_catalog::stamp(at),
            entries,
        })
    }

    /// Applies the plan at `at`: removes each expired recovery point from the vault
    /// (manifest first, so it disappears at once) and from the catalog. Chunks stay until
    /// garbage collection. The deletions run as a job (DeleteExpiredPoints) when there are
    /// any.
    pub fn retention_apply(
        &self,
        item: &str,
        at: Timestamp,
        secrets: &Secrets,
    ) -> Result<RetentionPlan> {
        self.apply_retention(item, at, secrets, None)
    }

    /// As [`Home::retention_apply`]; with `job_id` (a queued DeleteExpiredPoints job) all of
    /// it, snapshot tiers included, runs as that job, even when nothing has expired.
    pub(crate) fn apply_retention(
        &self,
        item: &str,
        at: Timestamp,
        secrets: &Secrets,
        job_id: Option<&str>,
    ) -> Result<RetentionPlan> {
        let item: ItemRow = self.catalog.item(item)?;
        // Snapshot tiers whose days are over go first; the plan then judges what is left.
        let plan_now = || -> Result<RetentionPlan> {
            if item.state == "protected" {
                self.expire_snapshots(&item.id, at)?;
            }
            self.retention_plan(&item.name, at)
        };
        // Called directly, nothing becomes a job unless points are to go, and the vault (its
        // secret) is opened before the job exists; a queued job does all of it.
        let ready = match job_id {
            Some(_) => None,
            None => {
                let plan = plan_now()?;
                if plan.deletions().next().is_none() {
                    return Ok(plan);
                }
                let vrow = self.catalog.vault_by_id(&item.vault_id)?;
                Some((plan, self.open_vault_row(&vrow, secrets)?))
            }
        };
        // Deletions run as a job (listed, logged, cancellable between points: each point
        // goes at once, manifest first).
        let (_, plan) = self.run_job(
            JobOperation::DeleteExpiredPoints,
            &item.name,
            false,
            job_id,
            &crate::NoProgress,
            |job| {
                let (plan, vault) = match ready {
                    Some((plan, vault)) => (plan, Some(vault)),
                    None => (plan_now()?, None),
                };
                let n = plan.deletions().count();
                job.message(&format!(
                    "{n} recovery point(s) expired under the item's retention"
                ));
                if n == 0 {
                    return Ok((plan, None));
                }
                let vault = match vault {
                    Some(v) => v,
                    None => {
                        let vrow = self.catalog.vault_by_id(&item.vault_id)?;
                        self.open_vault_row(&vrow, secrets)?
                    }
                };
                let rps = self.catalog.list_rps(&item.id)?;
                let snapshot_of = |id: &str| {
                    rps.iter()
                        .find(|r| r.id == id)
                        .and_then(|r| r.snapshot.as_deref())
                        .and_then(kura_source::Snapshot::decode)
                };
                for e in plan.deletions() {
                    crate::progress::check_cancel(job)?;
                    if let Some(s) = snapshot_of(&e.rp_id) {
                        s.delete()?;
                    }
                    vault.delete_rp(&e.rp_id)?;
                    self.catalog.delete_rp(&e.rp_id)?;
                    job.message(&format!(
                        "deleted recovery point {} ({})",
                        e.rp_id, e.reason
                    ));
                    crate::hooks::gate("retention_delete");
                }
                Ok((plan, None))
            },
        )?;
        Ok(plan)
    }
}

/// The instant a `--retain-until DATE` point expires: the end of `DATE` in `zone` (the
/// local zone of the machine running kura), so a date means the same day the user sees on
/// their calendar. A date whose end is not after `now` is refused: the point would be
/// removed at once.
pub(crate) fn retain_until_end(
    d: &str,
    now: Timestamp,
    zone: &jiff::tz::TimeZone,
) -> Result<Timestamp> {
    let date: jiff::civil::Date = d.parse().map_err(|e| {
        Error::new(
            ErrorKind::Invalid,
            format!("{d:?} is not a date in YYYY-MM-DD form: {e}"),
        )
    })?;
    let end = date
        .tomorrow()
        .and_then(|next| next.to_zoned(zone.clone()))
        .map_err(|e| Error::new(ErrorKind::Invalid, format!("{d}: {e}")))?
        .timestamp();
    if end <= now {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{d} is in the past (it is {} in time zone {})",
                now.to_zoned(zone.clone()).date(),
                zone.iana_name().unwrap_or("local")
            ),
        ));
    }
    Ok(end)
}
