//! Job vocabulary: operations, statuses, and how a backup's status follows its sub-tasks.

use crate::{Error, ErrorKind, Result};

/// Every job status.
pub const JOB_STATUSES: &[&str] = &[
    "Queued",
    "InProgress",
    "Cancelling",
    "Completed",
    "CompletedWithWarnings",
    "Failed",
    "Cancelled",
];

/// Every job operation.
pub const JOB_OPERATIONS: &[&str] = &[
    "Backup",
    "Restore",
    "RestoreDisks",
    "RestoreVm",
    "Verify",
    "GarbageCollect",
    "DeleteExpiredPoints",
    "PurgeSoftDeleted",
    "ConfigureBackup",
    "DisableBackup",
    "DeleteBackupData",
    "Undelete",
];

/// Job list filters as a user gives them: `status` and `operation` are matched without
/// regard to case and must name a known value.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Item (or vault, for GC) name.
    pub item: Option<String>,
    /// A status of [`JOB_STATUSES`].
    pub status: Option<String>,
    /// An operation of [`JOB_OPERATIONS`].
    pub operation: Option<String>,
    /// Only jobs started (or queued) at or after this instant: an RFC 3339 instant.
    pub since: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl JobQuery {
    pub(crate) fn to_filter(&self) -> Result<kura_catalog::JobFilter> {
        let pick =
            |field: &str, value: &Option<String>, known: &[&str]| -> Result<Option<String>> {
                let Some(v) = value else { return Ok(None) };
                known
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(v))
                    .map(|k| Some(k.to_string()))
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Invalid,
                            format!("{field} {v:?} is not one of: {}", known.join(", ")),
                        )
                    })
            };
        let since = match &self.since {
            Some(t) => Some(t.parse::<jiff::Timestamp>().map_err(|e| {
                Error::new(
                    ErrorKind::Invalid,
                    format!("since {t:?} is not an RFC 3339 instant: {e}"),
                )
            })?),
            None => None,
        };
        Ok(kura_catalog::JobFilter {
            target: self.item.clone(),
            since: since.map(kura_catalog::stamp),
            status: pick("status", &self.status, JOB_STATUSES)?,
            operation: pick("operation", &self.operation, JOB_OPERATIONS)?,
            limit: self.limit,
        })
    }
}

/// A backup job's status from its two sub-tasks, as in Azure Backup:
///
/// | snapshot | transfer | job |
/// |---|---|---|
/// | Completed | InProgress | InProgress |
/// | Completed | Skipped | Completed |
/// | Completed | Completed | Completed |
/// | Completed | Failed | CompletedWithWarnings |
/// | Failed | (any) | Failed |
///
/// kura adds the rows Azure does not need: a snapshot still running (InProgress), a job
/// cancelled during its snapshot (Cancelled), and an item without a snapshot provider
/// (snapshot Skipped), whose job is simply its transfer.
pub fn backup_status(snapshot: &str, transfer: &str) -> &'static str {
    match (snapshot, transfer) {
        ("Cancelled", _) => "Cancelled",
        ("Failed", _) => "Failed",
        ("InProgress", _) => "InProgress",
        ("Completed" | "Skipped", "InProgress") => "InProgress",
        ("Completed", "Skipped" | "Completed") => "Completed",
        ("Completed", "Failed") => "CompletedWithWarnings",
        ("Skipped", "Completed") => "Completed",
        ("Skipped", _) => "Failed",
        _ => "InProgress",
    }
}

pub(crate) fn task(name: &str, status: &str, detail: Option<String>) -> kura_catalog::SubTask {
    kura_catalog::SubTask {
        name: name.into(),
        status: status.into(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::backup_status;

    #[test]
    fn the_azure_matrix() {
        let table = [
            ("Completed", "InProgress", "InProgress"),
            ("Completed", "Skipped", "Completed"),
            ("Completed", "Completed", "Completed"),
            ("Completed", "Failed", "CompletedWithWarnings"),
            ("Failed", "Failed", "Failed"),
            ("Failed", "Skipped", "Failed"),
            ("InProgress", "InProgress", "InProgress"),
            ("Cancelled", "Skipped", "Cancelled"),
            ("Skipped", "InProgress", "InProgress"),
            ("Skipped", "Completed", "Completed"),
            ("Skipped", "Failed", "Failed"),
        ];
        for (s, t, expected) in table {
            assert_eq!(backup_status(s, t), expected, "snapshot {s}, transfer {t}");
        }
    }
}
