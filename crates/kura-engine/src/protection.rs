//! Protection states of items (Azure's stop protection, resume, undelete) and soft delete.
//!
//! ```text
//!  protected ──stop──► stopped (data retained) ──resume --policy P──► protected
//!      │                  │  ▲
//!      └──stop --delete-data──► soft-deleted ──undelete──┘
//!                             │ (soft delete disabled: data deleted at once)
//!                             └── after the vault's soft-delete days: purged
//! ```
//!
//! A protected item moves to another policy of its vault with `set-policy` (the schedule
//! starts again from that moment).
//!
//! Stopped and soft-deleted items get no scheduled backups and no retention; their recovery
//! points stay in the vault (so garbage collection keeps their chunks) until a purge.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};
use kura_catalog::{
    HealthStatus, ItemRow, JobOperation, JobStatus, LastBackupStatus, ProtectionState, RpRow,
};
use serde::Serialize;

use crate::{Error, ErrorKind, Home, NoProgress, Progress, Result, Secrets};

/// Soft-delete days allowed.
pub const SOFT_DELETE_DAYS: std::ops::RangeInclusive<u32> = 14..=180;

/// An item's protection and health, in Azure's terms.
#[derive(Debug, Clone, Serialize)]
pub struct ItemStatus {
    /// The item.
    #[serde(flatten)]
    pub item: ItemRow,
    /// Vault name.
    pub vault: String,
    /// Where its protection stands.
    pub protection_state: ProtectionState,
    /// How its last backup went.
    pub last_backup_status: LastBackupStatus,
    /// When its last backup job ended, whatever its outcome.
    pub last_backup: Option<String>,
    /// Whether it needs attention.
    pub health_status: HealthStatus,
    /// What needs attention, if anything.
    pub health_details: Vec<String>,
    /// Whether the source exists.
    pub source_present: bool,
    /// Recovery points.
    pub recovery_points: usize,
    /// The newest one.
    pub latest_recovery_point: Option<RpRow>,
    /// For soft-deleted items: when the data will be purged.
    pub purge_at: Option<String>,
    /// When the scheduler backs it up next (its policy's next slot plus the item's spread
    /// offset); in the past when that slot is overdue. None without a policy.
    pub next_backup: Option<String>,
    /// For VM items, as `item show` checks it: `Ready (...)`, `Not Ready: ...` or
    /// `not configured`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_status: Option<String>,
}

/// What `item precheck` found.
#[derive(Debug, Clone, Serialize)]
pub struct PrecheckReport {
    /// Item name.
    pub item: String,
    /// Its kind.
    pub kind: String,
    /// Whether every check passed.
    pub ready: bool,
    /// Each check, in order.
    pub checks: Vec<PrecheckCheck>,
}

/// One precheck.
#[derive(Debug, Clone, Serialize)]
pub struct PrecheckCheck {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, or what is wrong and what to do.
    pub detail: String,
}

/// Removes a recovery point's snapshot tier, if it has one (its data is being deleted).
fn drop_snapshot(rp: &RpRow) -> Result<()> {
    match rp
        .snapshot
        .as_deref()
        .and_then(kura_source::Snapshot::decode)
    {
        Some(s) => Ok(s.delete()?),
        None => Ok(()),
    }
}

fn parse_ts(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

impl Home {
    fn require_state(item: &ItemRow, allowed: &[&str], what: &str) -> Result<()> {
        if allowed.contains(&item.state.as_str()) {
            return Ok(());
        }
        let hint = match item.state.as_str() {
            "soft-deleted" => "; run `kura item undelete` first",
            "stopped" => "; run `kura item resume --policy P` first",
            _ => "",
        };
        Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "item {:?} is {}: cannot {what}{hint}",
                item.name, item.state
            ),
        ))
    }

    /// Refuses backups and restores for items whose state forbids them.
    pub(crate) fn check_can_backup(item: &ItemRow) -> Result<()> {
        Self::require_state(item, &["protected"], "back it up")
    }

    pub(crate) fn check_can_restore(item: &ItemRow) -> Result<()> {
        Self::require_state(item, &["protected", "stopped"], "restore from it")
    }

    /// Protection state and health of an item.
    pub fn item_status(&self, item: &str) -> Result<ItemStatus> {
        let item = self.catalog.item(item)?;
        self.status_of(item, &mut HashMap::new())
    }

    /// [`Home::item_status`] of a row; `policies` caches the policies read so far.
    fn status_of(
        &self,
        item: ItemRow,
        policies: &mut HashMap<(String, String), Option<kura_policy::Policy>>,
    ) -> Result<ItemStatus> {
        let vault = self.catalog.vault_by_id(&item.vault_id)?;
        let (points, latest) = self.catalog.rp_summary(&item.id)?;
        let last_backup = self
            .catalog
            .last_ended_job(JobOperation::Backup, &item.name)?;
        let last_backup_status = match last_backup.as_ref().map(|j| j.status) {
            None => LastBackupStatus::IRPending,
            Some(JobStatus::Completed) => LastBackupStatus::Healthy,
            Some(_) => LastBackupStatus::Unhealthy,
        };
        let source_present = match crate::home::source_spec(self, &item, None) {
            Ok(spec) => spec.present(),
            Err(_) => std::path::Path::new(&item.source).exists(),
        };
        let protection_state = match item.state.as_str() {
            "soft-deleted" => ProtectionState::SoftDeleted,
            "stopped" => ProtectionState::ProtectionStopped,
            _ if points == 0 && last_backup.is_none() => ProtectionState::IRPending,
            _ if last_backup_status == LastBackupStatus::Unhealthy => {
                ProtectionState::ProtectionError
            }
            _ => ProtectionState::Protected,
        };
        let mut health_details = Vec::new();
        if !source_present {
            health_details.push(format!("the source {} is missing", item.source));
        }
        if let Some(j) = last_backup
            .as_ref()
            .filter(|j| j.status != JobStatus::Completed)
        {
            health_details.push(format!(
                "the last backup (job {}) failed: {}",
                j.id,
                j.error.clone().unwrap_or_default()
            ));
        }
        if item.damaged_points > 0 {
            let chunks = self.catalog.damaged_chunks(&item.id)?;
            health_details.push(format!(
                "{} recovery point(s) reference {chunks} chunk(s) verify found missing or corrupt; the next backup writes them again if the source still has their data",
                item.damaged_points
            ));
        }
        let purge_at = match (
            item.state.as_str(),
            item.deleted_at.as_deref().and_then(parse_ts),
        ) {
            ("soft-deleted", Some(t)) => {
                let (_, days) = self.catalog.soft_delete(&item.vault_id)?;
                t.checked_add(SignedDuration::from_hours(24 * i64::from(days)))
                    .ok()
                    .map(kura_catalog::stamp)
            }
            _ => None,
        };
        let next_backup = match (&item.policy, item.state.as_str()) {
            (Some(name), "protected") => policies
                .entry((item.vault_id.clone(), name.clone()))
                .or_insert_with(|| self.load_policy(&item.vault_id, name).ok())
                .as_ref()
                .and_then(|p| self.next_backup(&item, p))
                .map(kura_catalog::stamp),
            _ => None,
        };
        Ok(ItemStatus {
            vault: vault.name,
            protection_state,
            last_backup: last_backup.as_ref().and_then(|j| j.ended.clone()),
            next_backup,
            last_backup_status,
            health_status: if health_details.is_empty() {
                HealthStatus::Passed
            } else {
                HealthStatus::ActionRequired
            },
            health_details,
            source_present,
            recovery_points: points,
            latest_recovery_point: latest,
            purge_at,
            agent_status: None,
            item,
        })
    }

    /// Every item's protection state and health, by name (`item list`).
    pub fn list_item_status(&self) -> Result<Vec<ItemStatus>> {
        let mut policies = HashMap::new();
        self.catalog
            .list_items(None)?
            .into_iter()
            .map(|i| self.status_of(i, &mut policies))
            .collect()
    }

    /// [`Home::item_status`] plus what only a live check tells: a VM's agent status (asked
    /// now, within the agent timeout).
    pub fn item_show(&self, item: &str) -> Result<ItemStatus> {
        let mut st = self.item_status(item)?;
        if st.item.kind == "vm"
            && let Ok(spec) = crate::home::source_spec(self, &st.item, None)
        {
            let agent = spec
                .driver()
                .findings()
                .into_iter()
                .find(|f| f.name == "agent");
            st.agent_status =
                agent.map(|f| f.detail.lines().next().unwrap_or_default().to_string());
        }
        Ok(st)
    }

    /// Writes an item's new protection state to its record in the vault, before the catalog
    /// changes: the vault must remember what the catalog knew (`vault attach` reads it back).
    fn record_state(
        &self,
        row: &kura_catalog::ItemRow,
        policy: Option<&str>,
        state: &str,
        deleted_at: Option<&str>,
        secrets: &Secrets,
    ) -> Result<()> {
        let vrow = self.catalog.vault_by_id(&row.vault_id)?;
        let vault = self.open_vault_row(&vrow, secrets)?;
        let mut updated = row.clone();
        updated.policy = policy.map(str::to_string);
        updated.state = state.to_string();
        updated.deleted_at = deleted_at.map(str::to_string);
        self.record_item_with_snapshots(&updated, &vault)
    }

    /// Checks, without touching anything, whether a backup of the item could run now: the
    /// vault opens with the secrets given and the source passes its driver's precheck (for
    /// disks: it exists, with the format and backing chain pinned at protect time).
    pub fn precheck(&self, item: &str, secrets: &Secrets) -> Result<PrecheckReport> {
        let row = self.catalog.item(item)?;
        let mut checks = Vec::new();
        let mut check = |name: &str, r: Result<String>| {
            checks.push(match r {
                Ok(detail) => PrecheckCheck {
                    name: name.into(),
                    ok: true,
                    detail,
                },
                Err(e) => PrecheckCheck {
                    name: name.into(),
                    ok: false,
                    detail: e.to_string(),
                },
            })
        };
        check(
            "protection",
            Self::check_can_backup(&row).map(|()| format!("state {}", row.state)),
        );
        let vrow = self.catalog.vault_by_id(&row.vault_id)?;
        let vault = self.open_vault_row(&vrow, secrets);
        check(
            "vault",
            vault
                .as_ref()
                .map(|_| format!("vault {} opens with the secrets given", vrow.name))
                .map_err(|e| Error::new(e.kind(), e.to_string())),
        );
        let spec = crate::home::source_spec(self, &row, vault.as_ref().ok());
        let source = spec.and_then(|spec| {
            let mut driver = spec.driver();
            driver.precheck()?;
            Ok(match &spec {
                kura_source::SourceSpec::Disk { path, format, .. } => {
                    format!("{path} is there, {}", format.describe())
                }
                kura_source::SourceSpec::Vm { disks, exclude, .. } => format!(
                    "the VM is there, with its disks: {}",
                    disks
                        .iter()
                        .filter(|d| !exclude.contains(&d.name))
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                kura_source::SourceSpec::Files { path, .. } => {
                    format!("directory {path} is there and can be read")
                }
                _ => "ready".to_string(),
            })
        });
        let findings = source.as_ref().ok().map(|_| ());
        check("source", source);
        if findings.is_some()
            && let Ok(spec) = crate::home::source_spec(self, &row, None)
        {
            for f in spec.driver().findings() {
                checks.push(PrecheckCheck {
                    name: f.name,
                    ok: f.ok,
                    detail: f.detail,
                });
            }
        }
        let ready = checks.iter().all(|c| c.ok);
        Ok(PrecheckReport {
            item: row.name,
            kind: row.kind,
            ready,
            checks,
        })
    }

    /// Pins an item's format anew (`format`, or probed now): the explicit action that
    /// accepts a changed format or backing chain. Recorded in the catalog and the vault.
    pub fn set_item_format(
        &self,
        item: &str,
        format: Option<&str>,
        secrets: &Secrets,
    ) -> Result<kura_catalog::ItemRow> {
        let row = self.catalog.item(item)?;
        if row.kind != "disk" {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "item {:?} is a {} item: only disk items have a pinned format",
                    row.name, row.kind
                ),
            ));
        }
        let source = std::path::Path::new(&row.source);
        let pinned = kura_source::PinnedFormat::inspect(source, format)?;
        let vrow = self.catalog.vault_by_id(&row.vault_id)?;
        let vault = self.open_vault_row(&vrow, secrets)?;
        let text = kura_source::SourceSpec::disk(source, pinned.clone()).to_json();
        self.run_job(
            JobOperation::ConfigureBackup,
            &row.name,
            false,
            None,
            &NoProgress,
            |job| {
                let mut updated = row.clone();
                updated.spec = Some(text.clone());
                self.record_item_with_snapshots(&updated, &vault)?;
                self.catalog.set_item_spec(&row.id, &text)?;
                job.message(&format!(
                    "format of {} pinned as {}",
                    row.source,
                    pinned.describe()
                ));
                Ok(((), None))
            },
        )?;
        Ok(self.catalog.item(&row.id)?)
    }

    /// Removes what an item's backups left in its source (a VM's dirty bitmaps) once the
    /// item is gone; best effort.
    fn forget_source(&self, row: &kura_catalog::ItemRow) {
        if let Ok(spec) = crate::home::source_spec(self, row, None) {
            spec.driver().forget(&row.id);
        }
    }

    /// Changes how a VM item uses its guest agent (socket, `--require-agent`, scripts), as a
    /// ConfigureBackup job recorded in the catalog and the vault.
    pub fn set_vm_agent(
        &self,
        item: &str,
        agent: &kura_source::vm::AgentOptions,
        secrets: &Secrets,
    ) -> Result<kura_catalog::ItemRow> {
        let row = self.catalog.item(item)?;
        let mut spec = crate::home::source_spec(self, &row, None)?;
        let kura_source::SourceSpec::Vm {
            agent: current,
            libvirt,
            ..
        } = &mut spec
        else {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "item {:?} is a {} item: only VM items have a guest agent",
                    row.name, row.kind
                ),
            ));
        };
        agent.validate(libvirt.is_some())?;
        let mut agent = agent.clone();
        if let Some(q) = &agent.qga {
            agent.qga = Some(
                crate::home::absolute(std::path::Path::new(q))?
                    .display()
                    .to_string(),
            );
        }
        *current = agent;
        let text = spec.to_json();
        let vrow = self.catalog.vault_by_id(&row.vault_id)?;
        let vault = self.open_vault_row(&vrow, secrets)?;
        self.run_job(
            JobOperation::ConfigureBackup,
            &row.name,
            false,
            None,
            &NoProgress,
            |job| {
                let mut updated = row.clone();
                updated.spec = Some(text.clone());
                self.record_item_with_snapshots(&updated, &vault)?;
                self.catalog.set_item_spec(&row.id, &text)?;
                job.message("guest agent settings changed");
                Ok(((), None))
            },
        )?;
        Ok(self.catalog.item(&row.id)?)
    }

    /// Stops protection. Without `delete_data` the recovery points are retained
    /// indefinitely; with it they are soft-deleted (or, with soft delete disabled, deleted).
    pub fn stop_protection(
        &self,
        item: &str,
        delete_data: bool,
        secrets: &Secrets,
        now: Timestamp,
    ) -> Result<ItemStatus> {
        let row = self.catalog.item(item)?;
        if !delete_data {
            Self::require_state(&row, &["protected"], "stop its protection")?;
            self.run_job(
                JobOperation::DisableBackup,
                &row.name,
                false,
                None,
                &NoProgress,
                |_| {
                    self.record_state(&row, None, "stopped", None, secrets)?;
                    self.catalog.set_item_policy(&row.id, None)?;
                    self.catalog.set_item_state(&row.id, "stopped", None)?;
                    Ok(((), None))
                },
            )?;
            return self.item_status(&row.name);
        }
        Self::require_state(&row, &["protected", "stopped"], "delete its backup data")?;
        let (mode, _) = self.catalog.soft_delete(&row.vault_id)?;
        if mode == "disabled" {
            let vrow = self.catalog.vault_by_id(&row.vault_id)?;
            let vault = self.open_vault_row(&vrow, secrets)?;
            let name = row.name.clone();
            self.run_job(
                JobOperation::DeleteBackupData,
                &name,
                false,
                None,
                &NoProgress,
                |job| {
                    let rps = self.catalog.list_rps(&row.id)?;
                    for rp in &rps {
                        drop_snapshot(rp)?;
                        vault.delete_rp(&rp.id)?;
                    }
                    vault.delete_item(&row.id)?;
                    self.forget_source(&row);
                    self.catalog.purge_item(&row.id)?;
                    job.message(&format!(
                        "soft delete is disabled: {} recovery point(s) deleted",
                        rps.len()
                    ));
                    Ok(((), None))
                },
            )?;
            // The item is gone: report its last state.
            return Ok(ItemStatus {
                item: row.clone(),
                vault: vrow.name.clone(),
                protection_state: ProtectionState::Deleted,
                last_backup_status: LastBackupStatus::IRPending,
                last_backup: None,
                health_status: HealthStatus::Passed,
                health_details: vec![format!(
                    "item {name:?} and its backup data were deleted (soft delete is disabled in its vault)"
                )],
                source_present: std::path::Path::new(&row.source).exists(),
                recovery_points: 0,
                latest_recovery_point: None,
                purge_at: None,
                next_backup: None,
                agent_status: None,
            });
        }
        self.run_job(
            JobOperation::DeleteBackupData,
            &row.name,
            false,
            None,
            &NoProgress,
            |job| {
                let at = kura_catalog::stamp(now);
                self.record_state(&row, None, "soft-deleted", Some(&at), secrets)?;
                self.catalog.set_item_policy(&row.id, None)?;
                self.catalog
                    .set_item_state(&row.id, "soft-deleted", Some(&at))?;
                job.message(
                    "backup data soft-deleted; `kura item undelete` restores it until the purge",
                );
                Ok(((), None))
            },
        )?;
        self.item_status(&row.name)
    }

    /// Returns a soft-deleted item to "stopped, data retained".
    pub fn undelete(&self, item: &str, secrets: &Secrets) -> Result<ItemStatus> {
        let row = self.catalog.item(item)?;
        Self::require_state(
            &row,
            &["soft-deleted"],
            "undelete it (it is not soft-deleted)",
        )?;
        self.run_job(
            JobOperation::Undelete,
            &row.name,
            false,
            None,
            &NoProgress,
            |_| {
                self.record_state(&row, row.policy.as_deref(), "stopped", None, secrets)?;
                self.catalog.set_item_state(&row.id, "stopped", None)?;
                Ok(((), None))
            },
        )?;
        self.item_status(&row.name)
    }

    /// Resumes protection of a stopped item with a policy of its vault (see
    /// [`Home::change_policy`]: the same, from the stopped state).
    pub fn resume_protection(
        &self,
        item: &str,
        policy: &str,
        secrets: &Secrets,
    ) -> Result<ItemStatus> {
        let row = self.catalog.item(item)?;
        Self::require_state(&row, &["stopped"], "resume its protection")?;
        self.protect_under(&row, policy, secrets)
    }

    /// Moves a protected item to another policy of its vault (Azure's "modify protection").
    /// The new schedule starts from now: a slot the old policy had not reached does not run
    /// at once. Its scheduled recovery points take the new policy's retention (tags and
    /// expiry), as after a policy update; on-demand points keep theirs.
    pub fn change_policy(&self, item: &str, policy: &str, secrets: &Secrets) -> Result<ItemStatus> {
        let row = self.catalog.item(item)?;
        Self::require_state(&row, &["protected"], "change its policy")?;
        self.protect_under(&row, policy, secrets)
    }

    /// Resume and change policy alike: the item is protected under `policy` (of its vault)
    /// from now on. Its schedule starts now, not at a slot the item missed while stopped or
    /// under another policy, and its scheduled points take the policy's retention.
    fn protect_under(&self, row: &ItemRow, policy: &str, secrets: &Secrets) -> Result<ItemStatus> {
        if !self.catalog.has_policy(&row.vault_id, policy)? {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("the item's vault has no policy {policy:?}"),
            ));
        }
        let rules = self.load_policy(&row.vault_id, policy)?;
        let before = row.policy.clone().unwrap_or_else(|| "none".into());
        self.run_job(
            JobOperation::ConfigureBackup,
            &row.name,
            false,
            None,
            &NoProgress,
            |job| {
                self.record_state(row, Some(policy), "protected", None, secrets)?;
                self.catalog.set_item_policy(&row.id, Some(policy))?;
                self.catalog.set_item_state(&row.id, "protected", None)?;
                self.catalog
                    .set_item_last_slot(&row.id, &kura_catalog::stamp(self.now()))?;
                let changed = self.reapply_retention(row, &rules)?;
                job.message(&format!(
                    "policy changed from {before} to {policy}; {changed} scheduled recovery point(s) take its retention"
                ));
                Ok(((), None))
            },
        )?;
        self.item_status(&row.name)
    }

    /// Purges soft-deleted items of a vault whose soft-delete period is over at `now`;
    /// returns their names.
    pub fn purge_soft_deleted(
        &self,
        vault_id: &str,
        now: Timestamp,
        secrets: &Secrets,
    ) -> Result<Vec<String>> {
        let due = self.soft_deleted_due(vault_id, now)?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let vrow = self.catalog.vault_by_id(vault_id)?;
        let vault = self.open_vault_row(&vrow, secrets)?;
        let mut purged = Vec::new();
        for item in due {
            for rp in self.catalog.list_rps(&item.id)? {
                vault.delete_rp(&rp.id)?;
            }
            vault.delete_item(&item.id)?;
            self.forget_source(&item);
            self.catalog.purge_item(&item.id)?;
            purged.push(item.name);
        }
        Ok(purged)
    }

    /// The soft-deleted items of a vault whose soft-delete period is over at `now`.
    pub(crate) fn soft_deleted_due(&self, vault_id: &str, now: Timestamp) -> Result<Vec<ItemRow>> {
        let (_, days) = self.catalog.soft_delete(vault_id)?;
        let period = SignedDuration::from_hours(24 * i64::from(days));
        Ok(self
            .catalog
            .list_items(Some(vault_id))?
            .into_iter()
            .filter(|i| i.state == "soft-deleted")
            .filter(|i| {
                i.deleted_at
                    .as_deref()
                    .and_then(parse_ts)
                    .and_then(|t| t.checked_add(period).ok())
                    .is_some_and(|end| end <= now)
            })
            .collect())
    }

    /// Purges a vault's soft-deleted items whose period is over at `now`, as the queued
    /// job `job_id` (PurgeSoftDeleted); the job's result lists their names.
    pub(crate) fn purge_job(
        &self,
        vault: &str,
        now: Timestamp,
        secrets: &Secrets,
        job_id: &str,
    ) -> Result<Vec<String>> {
        let vrow = self.catalog.vault(vault)?;
        let (_, names) = self.run_job(
            JobOperation::PurgeSoftDeleted,
            vault,
            true,
            Some(job_id),
            &crate::NoProgress,
            |job| {
                let names = self.purge_soft_deleted(&vrow.id, now, secrets)?;
                for n in &names {
                    job.message(&format!(
                        "purged soft-deleted item {n}: its soft-delete period is over"
                    ));
                }
                Ok((names, None))
            },
        )?;
        Ok(names)
    }

    /// Changes a vault's settings (`vault set`, PATCH /vaults/{vault}): its soft delete, or
    /// its redundancy. A redundancy change is not combined with other settings, so that a
    /// refusal of either leaves both as they were.
    pub fn update_vault(
        &self,
        vault: &str,
        soft_delete: Option<&str>,
        soft_delete_days: Option<u32>,
        redundancy: Option<&str>,
        replica: Option<&str>,
    ) -> Result<()> {
        match (redundancy, replica) {
            (None, Some(_)) => Err(Error::new(
                ErrorKind::Invalid,
                "replica: give it with redundancy (zone or geo)",
            )),
            (Some(_), _) if soft_delete.is_some() || soft_delete_days.is_some() => Err(Error::new(
                ErrorKind::Invalid,
                "redundancy: change it on its own, not with the soft delete settings",
            )),
            (Some(r), replica) => self.set_redundancy(vault, r, replica),
            (None, None) => self
                .set_soft_delete(vault, soft_delete, soft_delete_days)
                .map(drop),
        }
    }

    /// Changes a vault's soft delete: `enabled`, `disabled` or `always-on` (irreversible),
    /// kept 14-180 days.
    pub fn set_soft_delete(
        &self,
        vault: &str,
        mode: Option<&str>,
        days: Option<u32>,
    ) -> Result<(String, u32)> {
        let v = self.catalog.vault(vault)?;
        let (current, current_days) = self.catalog.soft_delete(&v.id)?;
        let mode = mode.unwrap_or(&current);
        if !["enabled", "disabled", "always-on"].contains(&mode) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("--soft-delete {mode:?}: use enabled, disabled or always-on"),
            ));
        }
        if current == "always-on" && mode != "always-on" {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("vault {vault:?} has soft delete always on; that cannot be undone"),
            ));
        }
        let days = days.unwrap_or(current_days);
        if !SOFT_DELETE_DAYS.contains(&days) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("--soft-delete-days {days} is out of range; allowed 14-180"),
            ));
        }
        self.catalog.set_soft_delete(&v.id, mode, days)?;
        Ok((mode.to_string(), days))
    }
}
