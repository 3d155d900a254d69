//! Job queries as users give them, and how a backup's status follows its sub-tasks (the
//! words themselves are kura-catalog's [`JobStatus`] and [`JobOperation`]).

use kura_catalog::{JobOperation, JobStatus, TaskStatus};

use crate::{Error, ErrorKind, Result};

/// Job list filters as a user gives them: `status` and `operation` are matched without
/// regard to case and must name a known value.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Item (or vault, for GC) name.
    pub item: Option<String>,
    /// A [`JobStatus`], in any case.
    pub status: Option<String>,
    /// A [`JobOperation`], in any case.
    pub operation: Option<String>,
    /// Only jobs started (or queued) at or after this instant: an RFC 3339 instant.
    pub since: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl JobQuery {
    pub(crate) fn to_filter(&self) -> Result<kura_catalog::JobFilter> {
        fn pick<T: std::str::FromStr<Err = String>>(
            field: &str,
            value: &Option<String>,
        ) -> Result<Option<T>> {
            value
                .as_deref()
                .map(|v| {
                    v.parse()
                        .map_err(|e| Error::new(ErrorKind::Invalid, format!("{field} {e}")))
                })
                .transpose()
        }
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
            status: pick::<JobStatus>("status", &self.status)?,
            operation: pick::<JobOperation>("operation", &self.operation)?,
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
pub fn backup_status(snapshot: TaskStatus, transfer: TaskStatus) -> JobStatus {
    use TaskStatus as T;
    match (snapshot, transfer) {
        (T::Cancelled, _) => JobStatus::Cancelled,
        (T::Failed, _) => JobStatus::Failed,
        (T::InProgress | T::Pending, _) => JobStatus::InProgress,
        (T::Completed | T::Skipped, T::InProgress | T::Pending) => JobStatus::InProgress,
        (T::Completed, T::Skipped | T::Completed) => JobStatus::Completed,
        (T::Completed, T::Failed) => JobStatus::CompletedWithWarnings,
        (T::Skipped, T::Completed) => JobStatus::Completed,
        (T::Skipped, _) => JobStatus::Failed,
        (T::Completed, T::Cancelled) => JobStatus::Cancelled,
    }
}

pub(crate) fn task(
    name: &str,
    status: TaskStatus,
    detail: Option<String>,
) -> kura_catalog::SubTask {
    kura_catalog::SubTask {
        name: name.into(),
        status,
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
            let (ss, ts) = (s.parse().unwrap(), t.parse().unwrap());
            assert_eq!(
                backup_status(ss, ts).as_str(),
                expected,
                "snapshot {s}, transfer {t}"
            );
        }
    }
}
