//! Aggregates for monitoring (`GET /metrics`): jobs by operation and status, and each
//! item's last backup.

use serde::Serialize;

use crate::{Catalog, Result};

/// Jobs of one operation and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobCount {
    /// Operation (`Backup`, `Restore`, ...).
    pub operation: String,
    /// Status (`Completed`, `Failed`, ...).
    pub status: String,
    /// How many.
    pub jobs: u64,
    /// Bytes they processed (read for backups, written for restores).
    pub bytes: u64,
}

/// An item's backup health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemHealth {
    /// Item name.
    pub item: String,
    /// Its vault's name.
    pub vault: String,
    /// Status of its latest backup job, if any.
    pub last_status: Option<String>,
    /// When its latest successful backup ended, if any.
    pub last_success: Option<String>,
}

impl Catalog {
    /// Jobs by operation and status, with the bytes they processed.
    pub fn job_counts(&self) -> Result<Vec<JobCount>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT operation, status, COUNT(*), COALESCE(SUM(bytes_done), 0)
             FROM jobs GROUP BY operation, status ORDER BY operation, status",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(JobCount {
                    operation: r.get(0)?,
                    status: r.get(1)?,
                    jobs: r.get::<_, i64>(2)? as u64,
                    bytes: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Every item with the status of its latest backup and the end of its latest success.
    pub fn item_health(&self) -> Result<Vec<ItemHealth>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT i.name, v.name,
                (SELECT status FROM jobs j WHERE j.target = i.name AND j.operation = 'Backup'
                 ORDER BY j.started DESC LIMIT 1),
                (SELECT MAX(ended) FROM jobs j WHERE j.target = i.name AND j.operation = 'Backup'
                 AND j.status IN ('Completed', 'CompletedWithWarnings'))
             FROM items i JOIN vaults v ON v.id = i.vault_id ORDER BY i.name",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(ItemHealth {
                    item: r.get(0)?,
                    vault: r.get(1)?,
                    last_status: r.get(2)?,
                    last_success: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}
