//! What garbage collection needs from the catalog: writer leases and the chunks it has
//! marked for deletion ("doomed").
//!
//! The protocol (see `kura-engine`'s `gc` module): GC dooms unreferenced chunks with a time;
//! it deletes a doomed chunk only when it was doomed before every active writer started; a
//! writer that wants to reuse a doomed chunk rescues it first (removes the mark); a chunk
//! being deleted is never reused.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::{Catalog, Result, now};

/// An active writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Id.
    pub id: String,
    /// What holds it (`backup`).
    pub purpose: String,
    /// When it started.
    pub started: String,
    /// The holding process.
    pub pid: u32,
}

/// A chunk GC marked for deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    /// Chunk id (hex).
    pub chunk: String,
    /// When it was marked.
    pub doomed_at: String,
    /// `doomed` or `deleting`.
    pub state: String,
    /// The GC process that marked or is deleting it.
    pub pid: u32,
}

/// What a writer's rescue attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescue {
    /// The chunk was not marked.
    NotDoomed,
    /// The chunk was marked and the mark is now removed: it may be reused.
    Rescued,
    /// The chunk is being deleted right now: write it again once the deletion is done.
    Deleting,
}

impl Catalog {
    /// Registers a writer on a vault.
    pub fn start_lease(&self, id: &str, vault_id: &str, purpose: &str) -> Result<Lease> {
        let lease = Lease {
            id: id.into(),
            purpose: purpose.into(),
            started: now(),
            pid: std::process::id(),
        };
        self.conn().execute(
            "INSERT INTO leases (id, vault_id, purpose, started, pid, owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![lease.id, vault_id, lease.purpose, lease.started, lease.pid, self.owner_id()],
        )?;
        Ok(lease)
    }

    /// Ends a lease.
    pub fn end_lease(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM leases WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Active leases on a vault, oldest first; leases of dead processes are dropped.
    pub fn active_leases(&self, vault_id: &str) -> Result<Vec<Lease>> {
        let conn = self.conn();
        let all: Vec<(Lease, Option<String>)> = conn
            .prepare(
                "SELECT id, purpose, started, pid, owner FROM leases WHERE vault_id = ?1 ORDER BY started",
            )?
            .query_map([vault_id], |r| {
                Ok((
                    Lease {
                        id: r.get(0)?,
                        purpose: r.get(1)?,
                        started: r.get(2)?,
                        pid: r.get(3)?,
                    },
                    r.get(4)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut live = Vec::new();
        for (l, owner) in all {
            if self.alive(owner.as_deref(), l.pid) {
                live.push(l);
            } else {
                conn.execute("DELETE FROM leases WHERE id = ?1", [&l.id])?;
            }
        }
        Ok(live)
    }

    /// Chunks marked on a vault.
    pub fn doomed(&self, vault_id: &str) -> Result<Vec<Doomed>> {
        let conn = self.conn();
        let rows = conn
            .prepare("SELECT chunk, doomed_at, state, pid FROM gc_doomed WHERE vault_id = ?1 ORDER BY chunk")?
            .query_map([vault_id], |r| {
                Ok(Doomed {
                    chunk: r.get(0)?,
                    doomed_at: r.get(1)?,
                    state: r.get(2)?,
                    pid: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Marks chunks for deletion at `at` (ignores chunks already marked).
    pub fn doom(&self, vault_id: &str, chunks: &[String], at: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare(
                "INSERT OR IGNORE INTO gc_doomed (vault_id, chunk, doomed_at, state, pid, owner) VALUES (?1, ?2, ?3, 'doomed', ?4, ?5)",
            )?;
            for c in chunks {
                st.execute(params![
                    vault_id,
                    c,
                    at,
                    std::process::id(),
                    self.owner_id()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes marks (chunks found referenced again, or deleted).
    pub fn undoom(&self, vault_id: &str, chunks: &[String]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare("DELETE FROM gc_doomed WHERE vault_id = ?1 AND chunk = ?2")?;
            for c in chunks {
                st.execute(params![vault_id, c])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// GC claims a doomed chunk for deletion; false if a writer rescued it meanwhile.
    pub fn claim_doomed(&self, vault_id: &str, chunk: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE gc_doomed SET state = 'deleting', pid = ?3, owner = ?4 WHERE vault_id = ?1 AND chunk = ?2 AND state = 'doomed'",
            params![vault_id, chunk, std::process::id(), self.owner_id()],
        )?;
        Ok(n == 1)
    }

    /// A writer's attempt to reuse a chunk. A `deleting` mark left by a GC process that died
    /// is cleared (the chunk is then written again).
    pub fn rescue(&self, vault_id: &str, chunk: &str) -> Result<Rescue> {
        // The common case, no mark, needs no write transaction: a mark made after this
        // check is younger than the caller's lease, and GC keeps such chunks.
        if !self.is_doomed(vault_id, chunk)? {
            return Ok(Rescue::NotDoomed);
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, u32, Option<String>)> = tx
            .query_row(
                "SELECT state, pid, owner FROM gc_doomed WHERE vault_id = ?1 AND chunk = ?2",
                params![vault_id, chunk],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let outcome = match row {
            None => Rescue::NotDoomed,
            Some((state, _, _)) if state == "doomed" => {
                tx.execute(
                    "DELETE FROM gc_doomed WHERE vault_id = ?1 AND chunk = ?2",
                    params![vault_id, chunk],
                )?;
                Rescue::Rescued
            }
            Some((_, pid, owner)) if !self.alive(owner.as_deref(), pid) => {
                tx.execute(
                    "DELETE FROM gc_doomed WHERE vault_id = ?1 AND chunk = ?2",
                    params![vault_id, chunk],
                )?;
                Rescue::Deleting
            }
            Some(_) => Rescue::Deleting,
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Whether a chunk is marked (any state).
    pub fn is_doomed(&self, vault_id: &str, chunk: &str) -> Result<bool> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM gc_doomed WHERE vault_id = ?1 AND chunk = ?2",
                params![vault_id, chunk],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}
