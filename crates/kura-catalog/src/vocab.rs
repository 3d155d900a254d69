//! The status words kura shows everywhere (CLI, API, web UI) as enums, defined once. Each
//! serializes as its variant's name, which is also how the catalog stores it.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// Defines a word enum: its variants, their names (as stored and sent), `as_str`, `ALL`,
/// `Display`, `FromStr` and SQLite conversions.
macro_rules! words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in the order shown.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word as stored and sent.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| {
                        let all: Vec<_> = $name::ALL.iter().map(|v| v.as_str()).collect();
                        format!("{s:?} is not one of {}", all.join(", "))
                    })
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: String| FromSqlError::Other(e.into()))
            }
        }
    };
}

words! {
    /// Where a job is in its life.
    JobStatus {
        /// Waiting in the server's queue for a slot.
        Queued,
        /// Running.
        InProgress,
        /// Asked to stop; still running until it reaches a safe point.
        Cancelling,
        /// Done.
        Completed,
        /// Done, with warnings in its log (a backup whose vault transfer failed but left a
        /// snapshot-tier point, say).
        CompletedWithWarnings,
        /// Ended with an error.
        Failed,
        /// Stopped on request; kept nothing half-done.
        Cancelled,
    }
}

impl JobStatus {
    /// Not ended yet: queued, running or stopping.
    pub const fn is_running(self) -> bool {
        matches!(
            self,
            JobStatus::Queued | JobStatus::InProgress | JobStatus::Cancelling
        )
    }

    /// Ended without success.
    pub const fn is_unsuccessful(self) -> bool {
        matches!(self, JobStatus::Failed | JobStatus::Cancelled)
    }
}

words! {
    /// What a job does.
    JobOperation {
        /// Back up an item (snapshot, then transfer to the vault).
        Backup,
        /// Restore a disk to a file.
        Restore,
        /// Restore every disk of a point into a directory.
        RestoreDisks,
        /// Restore a VM: as a new VM or over the existing one.
        RestoreVm,
        /// Restore files and directories of a point into a directory.
        RestoreFiles,
        /// Check that chunks are present and intact.
        Verify,
        /// Remove chunks no point uses.
        GarbageCollect,
        /// Delete the points retention no longer keeps.
        DeleteExpiredPoints,
        /// Purge soft-deleted items whose period is over.
        PurgeSoftDeleted,
        /// Copy a geo-redundant vault's new points to its replica (and mirror deletions).
        Replicate,
        /// Protect an item, or change its policy or settings.
        ConfigureBackup,
        /// Stop protection, keeping the data.
        DisableBackup,
        /// Stop protection and delete the data (soft delete keeps it for a while).
        DeleteBackupData,
        /// Bring a soft-deleted item back.
        Undelete,
    }
}

words! {
    /// Where a phase of a job (a backup's snapshot or transfer) is.
    TaskStatus {
        /// Not started yet.
        Pending,
        /// Running.
        InProgress,
        /// Done.
        Completed,
        /// Not run, and why is in its detail (a transfer the policy leaves for later).
        Skipped,
        /// Ended with an error.
        Failed,
        /// Stopped on request.
        Cancelled,
    }
}

words! {
    /// An item's protection state (Azure's protectionState).
    ProtectionState {
        /// Protected, no backup yet.
        IRPending,
        /// Protected, its last backup succeeded.
        Protected,
        /// Protected, its last backup failed.
        ProtectionError,
        /// Protection stopped, its data kept.
        ProtectionStopped,
        /// Its data deleted, recoverable until the soft-delete period ends.
        SoftDeleted,
        /// Gone with its data (what a deletion answers when soft delete is off).
        Deleted,
    }
}

words! {
    /// The outcome of an item's last backup (Azure's lastBackupStatus).
    LastBackupStatus {
        /// It succeeded.
        Healthy,
        /// It failed.
        Unhealthy,
        /// There has been none yet.
        IRPending,
    }
}

words! {
    /// Whether an item needs attention (Azure's healthStatus).
    HealthStatus {
        /// Nothing to do.
        Passed,
        /// Something needs the operator: see the item's health details.
        ActionRequired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_text_json_and_sql() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(*s));
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!("inprogress".parse(), Ok(JobStatus::InProgress));
        let e = "Done".parse::<JobStatus>().unwrap_err();
        assert!(
            e.contains("\"Done\" is not one of Queued, InProgress"),
            "{e}"
        );
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let back: JobStatus = conn
            .query_row("SELECT ?1", [JobStatus::Cancelling], |r| r.get(0))
            .unwrap();
        assert_eq!(back, JobStatus::Cancelling);
        let bad = conn.query_row("SELECT 'Nope'", [], |r| r.get::<_, JobStatus>(0));
        assert!(bad.is_err());
    }
}
