//! kura's catalog: an index of vaults, items, recovery points and jobs, kept in SQLite.
//!
//! The catalog is never the only copy of anything needed to restore: every recovery point
//! is described by a manifest in its vault, and `kura vault attach` rebuilds the catalog rows
//! from there. The catalog makes listing fast and holds what only the home knows (where each
//! vault lives, how its key is supplied, job history).
//!
//! Main type: [`Catalog`]. Rows: [`VaultRow`], [`ItemRow`], [`RpRow`], [`JobRow`].
//!
//! This crate must never read or write vault storage.
//!
//! ```
//! let cat = kura_catalog::Catalog::open_in_memory().unwrap();
//! assert!(cat.list_vaults().unwrap().is_empty());
//! ```

mod gc;
mod owner;
mod policies;
mod schema;
mod stats;
mod tokens;
mod vocab;

pub use gc::{Doomed, Lease, Rescue};
pub use policies::PolicyRow;
pub use stats::{ItemHealth, JobCount};
pub use tokens::{SessionRow, TokenRow};
pub use vocab::{
    HealthStatus, JobOperation, JobStatus, LastBackupStatus, ProtectionState, TaskStatus,
};

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

/// What went wrong in the catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such object.
    #[error("{kind} {name:?} not found{}", near.as_ref().map(|n| format!("; did you mean {n:?}?")).unwrap_or_default())]
    NotFound {
        /// `vault`, `item`, `recovery point`, `job`.
        kind: &'static str,
        /// The name or id asked for.
        name: String,
        /// The existing name nearest to it, when one is close (a typo).
        near: Option<String>,
    },
    /// The name is already taken.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// Object kind.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A short id matched several objects.
    #[error("{kind} id {prefix:?} is ambiguous; give more characters, or the full id")]
    Ambiguous {
        /// Object kind.
        kind: &'static str,
        /// The prefix.
        prefix: String,
    },
    /// The owner lock beside the catalog could not be made.
    #[error("cannot create the owner lock in {dir}: {source}")]
    Locks {
        /// The `locks/` directory.
        dir: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Refused because of the object's state.
    #[error("{0}")]
    Conflict(String),
    /// SQLite failed.
    #[error("catalog database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A vault registered in the home.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VaultRow {
    /// Catalog id (same as the vault's own id).
    pub id: String,
    /// Name.
    pub name: String,
    /// Storage directory.
    pub path: String,
    /// Chunk size.
    pub chunk_size: u32,
    /// `none`, `passphrase` or `key-file`.
    pub encryption: String,
    /// Cipher name when encrypted.
    pub cipher: Option<String>,
    /// For `key-file` vaults whose key file kura generated or was told about.
    pub key_file: Option<String>,
    /// When it was created or attached.
    pub created: String,
    /// `local` (one location) or `zone` (every write also goes to `replica`).
    pub redundancy: String,
    /// The second location of a `zone` vault.
    pub replica: Option<String>,
}

/// A protected item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemRow {
    /// Id.
    pub id: String,
    /// Name (unique in the home).
    pub name: String,
    /// Vault id.
    pub vault_id: String,
    /// `disk`.
    pub kind: String,
    /// Source path.
    pub source: String,
    /// When protected.
    pub created: String,
    /// The policy (in the item's vault) that schedules it, if any.
    pub policy: Option<String>,
    /// The last schedule slot the scheduler handled (RFC 3339).
    pub last_slot: Option<String>,
    /// `protected`, `stopped` (data retained) or `soft-deleted`.
    pub state: String,
    /// When its data was (soft-)deleted.
    pub deleted_at: Option<String>,
    /// Its source as a typed, versioned value (JSON of `kura_source::SourceSpec`: kind,
    /// path, pinned format); `None` only for items protected before specs existed. Shown to
    /// clients as that JSON object, not as a string.
    #[serde(serialize_with = "json_text")]
    pub spec: Option<String>,
    /// Recovery points that reference chunks the last verify found missing or corrupt
    /// (derived; not stored with the item).
    pub damaged_points: u64,
}

/// Serializes JSON kept as text as the JSON value itself.
fn json_text<S: serde::Serializer>(
    v: &Option<String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::Serialize as _;
    match v.as_deref().map(serde_json::from_str::<serde_json::Value>) {
        Some(Ok(value)) => value.serialize(s),
        Some(Err(_)) => v.serialize(s),
        None => s.serialize_none(),
    }
}

/// A recovery point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RpRow {
    /// Id.
    pub id: String,
    /// Item id.
    pub item_id: String,
    /// Backup time (RFC 3339).
    pub time: String,
    /// Sum of disk sizes.
    pub logical_size: u64,
    /// Stored bytes this backup added to the vault.
    pub stored_size: u64,
    /// `crash`, `file-system`, `application`.
    pub consistency: String,
    /// `vault-standard` or `snapshot`.
    pub tier: String,
    /// Kept until (YYYY-MM-DD), if set.
    pub retain_until: Option<String>,
    /// Job that made it.
    pub job_id: Option<String>,
    /// GFS tags (`daily`, `weekly`, ...), or `on-demand`.
    pub tags: Vec<String>,
    /// When it expires (RFC 3339); `None` for never.
    pub expires: Option<String>,
    /// `on-demand` or `scheduled`.
    pub origin: String,
    /// Allocated (used) bytes of its disks.
    pub used_bytes: u64,
    /// Its snapshot-tier copy (a provider reference), while it exists.
    pub snapshot: Option<String>,
    /// When the snapshot tier expires.
    pub snapshot_expires: Option<String>,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    /// Id.
    pub id: String,
    /// What it does.
    pub operation: JobOperation,
    /// Item name or other target.
    pub target: String,
    /// Where it is in its life.
    pub status: JobStatus,
    /// When it entered the queue (jobs run by the server's queue only).
    pub queued: Option<String>,
    /// Start time (while Queued: the time it was queued).
    pub started: String,
    /// End time.
    pub ended: Option<String>,
    /// Bytes processed.
    pub bytes_done: u64,
    /// Bytes to process.
    pub bytes_total: u64,
    /// Resulting recovery point, if any.
    pub rp_id: Option<String>,
    /// Error message, if it failed.
    pub error: Option<String>,
    /// The failure as a stable code (`not_found`, `conflict`, ...), when it failed.
    pub error_code: Option<String>,
    /// Log lines.
    pub log: Vec<String>,
    /// Sub-tasks (a backup's `snapshot` and `transfer`), in order.
    pub tasks: Vec<SubTask>,
    /// The operation's report (JSON), once it ended.
    pub result: Option<serde_json::Value>,
    /// Average rate so far, bytes per second.
    pub rate_bytes_per_sec: Option<u64>,
    /// Estimated seconds to completion, while in progress.
    pub eta_seconds: Option<u64>,
    /// Process that runs it (to detect jobs orphaned by a crash).
    #[serde(skip)]
    pub pid: u32,
}

impl JobRow {
    /// Fills in the rate and ETA from the start time and bytes done.
    fn with_rate(mut self) -> Self {
        let start: Option<jiff::Timestamp> = self.started.parse().ok();
        let end = self
            .ended
            .as_deref()
            .and_then(|e| e.parse::<jiff::Timestamp>().ok())
            .unwrap_or_else(jiff::Timestamp::now);
        if let Some(start) = start {
            let secs = end.duration_since(start).as_secs_f64();
            if secs > 0.0 && self.bytes_done > 0 {
                let rate = self.bytes_done as f64 / secs;
                self.rate_bytes_per_sec = Some(rate as u64);
                if self.status == JobStatus::InProgress && self.bytes_total >= self.bytes_done {
                    self.eta_seconds =
                        Some(((self.bytes_total - self.bytes_done) as f64 / rate).ceil() as u64);
                }
            }
        }
        self
    }
}

/// A phase of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SubTask {
    /// `snapshot` or `transfer`.
    pub name: String,
    /// Where it is.
    pub status: TaskStatus,
    /// Why, when it was skipped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The catalog. Cheap to share behind an `Arc`; calls are serialized on one connection.
#[derive(Debug)]
pub struct Catalog {
    conn: Mutex<Connection>,
    /// This process's owner lock (`None` for an in-memory catalog: then PIDs are used).
    owner: Option<owner::Owner>,
    locks: Option<std::path::PathBuf>,
}

pub(crate) fn now() -> String {
    stamp(jiff::Timestamp::now())
}

/// The catalog's form of an instant: RFC 3339 in UTC with milliseconds, so that text order is
/// time order.
pub fn stamp(t: jiff::Timestamp) -> String {
    format!("{t:.3}")
}

/// The name nearest to `asked` among `names`, when it is close enough to be a typo.
pub fn nearest_name(asked: &str, names: impl IntoIterator<Item = String>) -> Option<String> {
    let a = asked.to_lowercase();
    let limit = (a.chars().count() / 3).max(1);
    names
        .into_iter()
        .filter(|n| n != asked)
        .map(|n| (strsim::osa_distance(&a, &n.to_lowercase()), n))
        .filter(|(d, _)| *d <= limit)
        .min_by(|x, y| x.0.cmp(&y.0).then_with(|| x.1.cmp(&y.1)))
        .map(|(_, n)| n)
}

pub(crate) fn constraint(e: rusqlite::Error, kind: &'static str, name: &str) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Error::AlreadyExists {
                kind,
                name: name.to_string(),
            }
        }
        e => e.into(),
    }
}

impl Catalog {
    /// Opens (creating and migrating if needed) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        let locks = path.parent().unwrap_or(Path::new(".")).join("locks");
        let owner = owner::Owner::create(&locks).map_err(|e| Error::Locks {
            dir: locks.clone(),
            source: e,
        })?;
        owner.sweep();
        let mut cat = Self::init(conn)?;
        cat.owner = Some(owner);
        cat.locks = Some(locks);
        Ok(cat)
    }

    /// An in-memory catalog (tests).
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    /// The owner id rows made by this catalog carry.
    pub(crate) fn owner_id(&self) -> Option<&str> {
        self.owner.as_ref().map(|o| o.id.as_str())
    }

    /// Whether the process that made a row (owner id, or PID for rows without one) lives.
    pub(crate) fn alive(&self, owner: Option<&str>, pid: u32) -> bool {
        match (owner, &self.locks) {
            (Some(o), _) if Some(o) == self.owner_id() => true,
            (Some(o), Some(dir)) => owner::alive_in(dir, o),
            _ => process_alive(pid),
        }
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&conn)?;
        Ok(Catalog {
            conn: Mutex::new(conn),
            owner: None,
            locks: None,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- vaults

    /// Registers a vault.
    pub fn insert_vault(&self, v: &VaultRow) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO vaults (id, name, path, chunk_size, encryption, cipher, key_file, created, redundancy, replica)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![v.id, v.name, v.path, v.chunk_size, v.encryption, v.cipher, v.key_file, v.created, v.redundancy, v.replica],
            )
            .map_err(|e| constraint(e, "vault", &v.name))?;
        Ok(())
    }

    fn vault_from(r: &Row<'_>) -> rusqlite::Result<VaultRow> {
        Ok(VaultRow {
            id: r.get(0)?,
            name: r.get(1)?,
            path: r.get(2)?,
            chunk_size: r.get(3)?,
            encryption: r.get(4)?,
            cipher: r.get(5)?,
            key_file: r.get(6)?,
            created: r.get(7)?,
            redundancy: r.get(8)?,
            replica: r.get(9)?,
        })
    }

    /// Changes a vault's redundancy (`local`, `zone`, `geo`) and replica.
    pub fn set_redundancy(
        &self,
        vault_id: &str,
        redundancy: &str,
        replica: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE vaults SET redundancy = ?2, replica = ?3, replicated_at = NULL WHERE id = ?1",
            params![vault_id, redundancy, replica],
        )?;
        Ok(())
    }

    /// Records that a vault's replica holds everything the vault held at `at`.
    pub fn set_replicated(&self, vault_id: &str, at: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE vaults SET replicated_at = ?2 WHERE id = ?1",
            params![vault_id, at],
        )?;
        Ok(())
    }

    /// When a vault's replica last caught up (`None`: never, or not geo-redundant).
    pub fn replicated_at(&self, vault_id: &str) -> Result<Option<String>> {
        Ok(self.conn().query_row(
            "SELECT replicated_at FROM vaults WHERE id = ?1",
            [vault_id],
            |r| r.get(0),
        )?)
    }

    /// A vault by name.
    pub fn vault(&self, name: &str) -> Result<VaultRow> {
        // The connection is released before a miss looks for the nearest name.
        let row = self
            .conn()
            .query_row(
                "SELECT id, name, path, chunk_size, encryption, cipher, key_file, created, redundancy, replica FROM vaults WHERE name = ?1",
                [name],
                Self::vault_from,
            )
            .optional()?;
        row.ok_or_else(|| Error::NotFound {
            kind: "vault",
            name: name.into(),
            near: self.nearest("SELECT name FROM vaults", &[], name),
        })
    }

    /// Of the names `sql` selects, the one nearest to `asked` when it is close enough to be a
    /// typo: the same but for case, or at most one edit (a transposition counts as one) in
    /// three characters away.
    pub(crate) fn nearest(
        &self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
        asked: &str,
    ) -> Option<String> {
        let names: Vec<String> = {
            let conn = self.conn();
            let mut st = conn.prepare_cached(sql).ok()?;
            st.query_map(args, |r| r.get(0))
                .ok()?
                .filter_map(|r| r.ok())
                .collect()
        };
        nearest_name(asked, names)
    }

    /// A vault by id.
    pub fn vault_by_id(&self, id: &str) -> Result<VaultRow> {
        self.conn()
            .query_row(
                "SELECT id, name, path, chunk_size, encryption, cipher, key_file, created, redundancy, replica FROM vaults WHERE id = ?1",
                [id],
                Self::vault_from,
            )
            .optional()?
            .ok_or_else(|| Error::NotFound {
                kind: "vault",
                name: id.into(),
                near: None,
            })
    }

    /// Every vault, by name.
    pub fn list_vaults(&self) -> Result<Vec<VaultRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT id, name, path, chunk_size, encryption, cipher, key_file, created, redundancy, replica FROM vaults ORDER BY name",
        )?;
        let rows = st
            .query_map([], Self::vault_from)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    // ---- items

    /// Registers an item.
    pub fn insert_item(&self, i: &ItemRow) -> Result<()> {
        let conn = self.conn();
        let taken: Option<String> = conn
            .query_row(
                "SELECT name FROM items WHERE kind = ?1 AND source = ?2",
                params![i.kind, i.source],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = taken {
            return Err(Error::Conflict(format!(
                "{} is already protected as item {other:?}",
                i.source
            )));
        }
        conn.execute(
            "INSERT INTO items (id, name, vault_id, kind, source, created, policy, state, deleted_at, spec)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                i.id,
                i.name,
                i.vault_id,
                i.kind,
                i.source,
                i.created,
                i.policy,
                i.state,
                i.deleted_at,
                i.spec
            ],
        )
        .map_err(|e| constraint(e, "item", &i.name))?;
        Ok(())
    }

    fn item_from(r: &Row<'_>) -> rusqlite::Result<ItemRow> {
        Ok(ItemRow {
            id: r.get(0)?,
            name: r.get(1)?,
            vault_id: r.get(2)?,
            kind: r.get(3)?,
            source: r.get(4)?,
            created: r.get(5)?,
            policy: r.get(6)?,
            last_slot: r.get(7)?,
            state: r.get(8)?,
            deleted_at: r.get(9)?,
            spec: r.get(10)?,
            damaged_points: r.get(11)?,
        })
    }

    /// Records an item's source spec.
    pub fn set_item_spec(&self, item_id: &str, spec: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE items SET spec = ?2 WHERE id = ?1",
            params![item_id, spec],
        )?;
        Ok(())
    }

    /// Sets an item's protection state (and when its data was deleted).
    pub fn set_item_state(
        &self,
        item_id: &str,
        state: &str,
        deleted_at: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE items SET state = ?2, deleted_at = ?3 WHERE id = ?1",
            params![item_id, state, deleted_at],
        )?;
        Ok(())
    }

    /// Removes an item and its recovery point rows (after its data left the vault).
    pub fn purge_item(&self, item_id: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM damage WHERE item_id = ?1", [item_id])?;
        tx.execute("DELETE FROM recovery_points WHERE item_id = ?1", [item_id])?;
        tx.execute("DELETE FROM items WHERE id = ?1", [item_id])?;
        tx.commit()?;
        Ok(())
    }

    /// A vault's soft-delete setting: (`enabled` | `disabled` | `always-on`, days).
    pub fn soft_delete(&self, vault_id: &str) -> Result<(String, u32)> {
        Ok(self.conn().query_row(
            "SELECT soft_delete, soft_delete_days FROM vaults WHERE id = ?1",
            [vault_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// When a recovery kit of the vault was last exported.
    pub fn kit_exported(&self, vault_id: &str) -> Result<Option<String>> {
        Ok(self.conn().query_row(
            "SELECT kit_exported FROM vaults WHERE id = ?1",
            [vault_id],
            |r| r.get(0),
        )?)
    }

    /// Records that a recovery kit was exported now.
    pub fn set_kit_exported(&self, vault_id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE vaults SET kit_exported = ?2 WHERE id = ?1",
            params![vault_id, now()],
        )?;
        Ok(())
    }

    /// Changes how a vault's key is supplied (after its key was re-wrapped).
    pub fn set_vault_key(
        &self,
        vault_id: &str,
        encryption: &str,
        key_file: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE vaults SET encryption = ?2, key_file = ?3 WHERE id = ?1",
            params![vault_id, encryption, key_file],
        )?;
        Ok(())
    }

    /// Forgets a vault and everything the catalog knows of it (items, recovery points,
    /// policies, damage, GC state), in one transaction. Its storage is not touched.
    pub fn detach_vault(&self, vault_id: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM damage WHERE vault_id = ?1", [vault_id])?;
        tx.execute(
            "DELETE FROM recovery_points WHERE item_id IN (SELECT id FROM items WHERE vault_id = ?1)",
            [vault_id],
        )?;
        tx.execute("DELETE FROM items WHERE vault_id = ?1", [vault_id])?;
        tx.execute("DELETE FROM policies WHERE vault_id = ?1", [vault_id])?;
        tx.execute("DELETE FROM leases WHERE vault_id = ?1", [vault_id])?;
        tx.execute("DELETE FROM gc_doomed WHERE vault_id = ?1", [vault_id])?;
        tx.execute("DELETE FROM vaults WHERE id = ?1", [vault_id])?;
        tx.commit()?;
        Ok(())
    }

    /// When the scheduler last started garbage collection in a vault (its clock's time).
    pub fn vault_last_gc(&self, vault_id: &str) -> Result<Option<String>> {
        Ok(self.conn().query_row(
            "SELECT last_gc FROM vaults WHERE id = ?1",
            [vault_id],
            |r| r.get(0),
        )?)
    }

    /// Records when the scheduler started garbage collection in a vault.
    pub fn set_vault_last_gc(&self, vault_id: &str, at: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE vaults SET last_gc = ?2 WHERE id = ?1",
            params![vault_id, at],
        )?;
        Ok(())
    }

    /// Changes a vault's soft-delete setting.
    pub fn set_soft_delete(&self, vault_id: &str, mode: &str, days: u32) -> Result<()> {
        self.conn().execute(
            "UPDATE vaults SET soft_delete = ?2, soft_delete_days = ?3 WHERE id = ?1",
            params![vault_id, mode, days],
        )?;
        Ok(())
    }

    /// Records the last schedule slot handled for an item.
    pub fn set_item_last_slot(&self, item_id: &str, slot: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE items SET last_slot = ?2 WHERE id = ?1",
            params![item_id, slot],
        )?;
        Ok(())
    }

    /// Sets (or clears) an item's policy.
    pub fn set_item_policy(&self, item_id: &str, policy: Option<&str>) -> Result<()> {
        self.conn().execute(
            "UPDATE items SET policy = ?2 WHERE id = ?1",
            params![item_id, policy],
        )?;
        Ok(())
    }

    /// Removes an item that has no recovery points (undoing a failed protect).
    pub fn delete_item(&self, id: &str) -> Result<()> {
        let conn = self.conn();
        let rps: i64 = conn.query_row(
            "SELECT count(*) FROM recovery_points WHERE item_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        if rps > 0 {
            return Err(Error::Conflict(format!(
                "item {id} has {rps} recovery points"
            )));
        }
        conn.execute("DELETE FROM items WHERE id = ?1", [id])?;
        Ok(())
    }

    /// An item by name or id.
    pub fn item(&self, name_or_id: &str) -> Result<ItemRow> {
        let row = self
            .conn()
            .query_row(
                "SELECT id, name, vault_id, kind, source, created, policy, last_slot, state, deleted_at, spec, (SELECT count(DISTINCT rp_id) FROM damage WHERE damage.item_id = items.id) FROM items WHERE name = ?1 OR id = ?1",
                [name_or_id],
                Self::item_from,
            )
            .optional()?;
        row.ok_or_else(|| Error::NotFound {
            kind: "item",
            name: name_or_id.into(),
            near: self.nearest("SELECT name FROM items", &[], name_or_id),
        })
    }

    /// Items, all or of one vault, by name.
    pub fn list_items(&self, vault_id: Option<&str>) -> Result<Vec<ItemRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT id, name, vault_id, kind, source, created, policy, last_slot, state, deleted_at, spec, (SELECT count(DISTINCT rp_id) FROM damage WHERE damage.item_id = items.id) FROM items
             WHERE ?1 IS NULL OR vault_id = ?1 ORDER BY name",
        )?;
        let rows = st
            .query_map([vault_id], Self::item_from)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    // ---- recovery points

    /// Records a recovery point (ignored if already present, so attach can re-run).
    pub fn insert_rp(&self, rp: &RpRow) -> Result<()> {
        self.insert_rps(std::slice::from_ref(rp))
    }

    /// Keeps the source's definition (a VM's disks and command line, as JSON) with a point
    /// that has no vault copy yet, so the snapshot tier can be restored as a whole VM.
    pub fn set_rp_definition(&self, rp_id: &str, definition: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO rp_definitions (rp_id, definition) VALUES (?1, ?2)",
            params![rp_id, definition],
        )?;
        Ok(())
    }

    /// See [`Catalog::set_rp_definition`].
    pub fn rp_definition(&self, rp_id: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT definition FROM rp_definitions WHERE rp_id = ?1",
                [rp_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records many recovery points in one transaction (attach, benchmarks).
    pub fn insert_rps(&self, rps: &[RpRow]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare(
                "INSERT OR IGNORE INTO recovery_points
                 (id, item_id, time, logical_size, stored_size, consistency, tier, retain_until, job_id,
                  tags, expires, origin, used_bytes, snapshot, snapshot_expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            for rp in rps {
                st.execute(params![
                    rp.id,
                    rp.item_id,
                    rp.time,
                    rp.logical_size as i64,
                    rp.stored_size as i64,
                    rp.consistency,
                    rp.tier,
                    rp.retain_until,
                    rp.job_id,
                    serde_json::to_string(&rp.tags).expect("tags serialize"),
                    rp.expires,
                    rp.origin,
                    rp.used_bytes as i64,
                    rp.snapshot,
                    rp.snapshot_expires
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn rp_from(r: &Row<'_>) -> rusqlite::Result<RpRow> {
        Ok(RpRow {
            id: r.get(0)?,
            item_id: r.get(1)?,
            time: r.get(2)?,
            logical_size: r.get::<_, i64>(3)? as u64,
            stored_size: r.get::<_, i64>(4)? as u64,
            consistency: r.get(5)?,
            tier: r.get(6)?,
            retain_until: r.get(7)?,
            job_id: r.get(8)?,
            tags: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default(),
            expires: r.get(10)?,
            origin: r.get(11)?,
            used_bytes: r.get::<_, i64>(12)? as u64,
            snapshot: r.get(13)?,
            snapshot_expires: r.get(14)?,
        })
    }

    const RP_COLS: &str = "id, item_id, time, logical_size, stored_size, consistency, tier, \
                           retain_until, job_id, tags, expires, origin, used_bytes, snapshot, snapshot_expires";

    /// Replaces a recovery point's row (e.g. when its transfer adds the vault tier).
    pub fn replace_rp(&self, rp: &RpRow) -> Result<()> {
        self.delete_rp(&rp.id)?;
        self.insert_rp(rp)
    }

    /// Drops a recovery point's snapshot tier: the row keeps its vault tier.
    pub fn drop_rp_snapshot(&self, id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE recovery_points SET snapshot = NULL, snapshot_expires = NULL, tier = 'vault-standard' WHERE id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// Changes a recovery point's retention.
    pub fn set_rp_retention(&self, id: &str, tags: &[String], expires: Option<&str>) -> Result<()> {
        self.conn().execute(
            "UPDATE recovery_points SET tags = ?2, expires = ?3 WHERE id = ?1",
            params![
                id,
                serde_json::to_string(tags).expect("tags serialize"),
                expires
            ],
        )?;
        Ok(())
    }

    /// Forgets a recovery point (after its manifest left the vault).
    pub fn delete_rp(&self, id: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM damage WHERE rp_id = ?1", [id])?;
        tx.execute("DELETE FROM recovery_points WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    // ---- damage found by verify

    /// Records what a verify found: the damage rows of every recovery point in `checked`
    /// are replaced by `found` (`(item_id, rp_id, chunk)`), in one transaction.
    pub fn record_damage(
        &self,
        vault_id: &str,
        checked: &[String],
        found: &[(String, String, String)],
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for rp in checked {
            tx.execute("DELETE FROM damage WHERE rp_id = ?1", [rp])?;
        }
        for (item, rp, chunk) in found {
            tx.execute(
                "INSERT OR IGNORE INTO damage (vault_id, item_id, rp_id, chunk) VALUES (?1, ?2, ?3, ?4)",
                params![vault_id, item, rp, chunk],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets damage a backup repaired by writing `chunks` again.
    pub fn clear_damage(&self, vault_id: &str, chunks: &[String]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for c in chunks {
            tx.execute(
                "DELETE FROM damage WHERE vault_id = ?1 AND chunk = ?2",
                params![vault_id, c],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Distinct bad chunks the recovery points of an item reference.
    pub fn damaged_chunks(&self, item_id: &str) -> Result<u64> {
        Ok(self.conn().query_row(
            "SELECT count(DISTINCT chunk) FROM damage WHERE item_id = ?1",
            [item_id],
            |r| r.get(0),
        )?)
    }

    /// Recovery points of an item, newest first.
    pub fn list_rps(&self, item_id: &str) -> Result<Vec<RpRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {} FROM recovery_points WHERE item_id = ?1 ORDER BY time DESC, id DESC",
            Self::RP_COLS
        ))?;
        let rows = st
            .query_map([item_id], Self::rp_from)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// How many recovery points an item has, and its newest (what a status shows, without
    /// reading every point).
    pub fn rp_summary(&self, item_id: &str) -> Result<(usize, Option<RpRow>)> {
        let conn = self.conn();
        let count: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM recovery_points WHERE item_id = ?1")?
            .query_row([item_id], |r| r.get(0))?;
        let latest = conn
            .prepare_cached(&format!(
                "SELECT {} FROM recovery_points WHERE item_id = ?1 ORDER BY time DESC, id DESC LIMIT 1",
                Self::RP_COLS
            ))?
            .query_row([item_id], Self::rp_from)
            .optional()?;
        Ok((count as usize, latest))
    }

    /// Per item of a vault: its number of points, the sums of their used and stored bytes,
    /// and the newest point's used bytes (the usage report, in one query).
    pub fn rp_totals(&self, vault_id: &str) -> Result<std::collections::HashMap<String, RpTotals>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT r.item_id, COUNT(*), SUM(r.used_bytes), SUM(r.stored_size),
                    (SELECT n.used_bytes FROM recovery_points n WHERE n.item_id = r.item_id
                     ORDER BY n.time DESC, n.id DESC LIMIT 1)
             FROM recovery_points r JOIN items i ON i.id = r.item_id
             WHERE i.vault_id = ?1 GROUP BY r.item_id",
        )?;
        let rows = st
            .query_map([vault_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    RpTotals {
                        points: r.get::<_, i64>(1)? as usize,
                        used_bytes: r.get::<_, i64>(2)? as u64,
                        stored_bytes: r.get::<_, i64>(3)? as u64,
                        newest_used_bytes: r.get::<_, i64>(4)? as u64,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// A recovery point by id or unique id prefix (at least 4 characters).
    pub fn rp(&self, id_or_prefix: &str) -> Result<RpRow> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {} FROM recovery_points WHERE id >= ?1 AND id < ?1 || '~' ORDER BY id LIMIT 2",
            Self::RP_COLS
        ))?;
        let mut rows: Vec<RpRow> = st
            .query_map([id_or_prefix], Self::rp_from)?
            .collect::<rusqlite::Result<_>>()?;
        if is_short_id(id_or_prefix) {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {} FROM recovery_points WHERE substr(id, 25) = ?1 LIMIT 2",
                Self::RP_COLS
            ))?;
            rows.extend(
                st.query_map([id_or_prefix], Self::rp_from)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            );
        }
        pick_unique("recovery point", id_or_prefix, rows, |r| &r.id)
    }

    // ---- storage trend

    /// Records a vault's stored size measured at `at` (an RFC 3339 stamp); the last
    /// measurement of each hour is kept.
    pub fn record_vault_usage(&self, vault_id: &str, at: &str, stored_bytes: u64) -> Result<()> {
        let hour = at.get(..13).unwrap_or(at);
        self.conn().execute(
            "INSERT INTO vault_usage (vault_id, hour, at, stored_bytes) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (vault_id, hour) DO UPDATE SET at = excluded.at,
                 stored_bytes = excluded.stored_bytes
             WHERE excluded.at >= vault_usage.at",
            params![vault_id, hour, at, stored_bytes as i64],
        )?;
        Ok(())
    }

    /// A vault's stored size measured since `since`, oldest first: `(at, stored_bytes)`.
    pub fn vault_usage_since(&self, vault_id: &str, since: &str) -> Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT at, stored_bytes FROM vault_usage WHERE vault_id = ?1 AND at >= ?2 ORDER BY at",
        )?;
        let rows = st
            .query_map(params![vault_id, since], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The latest stored size measured for a vault: `(at, stored_bytes)`.
    pub fn last_vault_usage(&self, vault_id: &str) -> Result<Option<(String, u64)>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT at, stored_bytes FROM vault_usage WHERE vault_id = ?1 ORDER BY at DESC LIMIT 1",
        )?;
        Ok(st
            .query_row([vault_id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .optional()?)
    }

    // ---- jobs

    /// Starts a job row. With `exclusive_target`, refuses when a job on the same target is
    /// still in progress in a live process.
    pub fn start_job(
        &self,
        id: &str,
        operation: JobOperation,
        target: &str,
        exclusive_target: bool,
    ) -> Result<JobRow> {
        self.insert_job(
            id,
            operation,
            target,
            exclusive_target,
            JobStatus::InProgress,
        )
    }

    /// Registers a job that waits in a queue (status `Queued`) until [`Catalog::activate_job`];
    /// refused like [`Catalog::start_job`] when `exclusive_target` and a job of the same
    /// operation on the same target is queued or running.
    pub fn queue_job(
        &self,
        id: &str,
        operation: JobOperation,
        target: &str,
        exclusive_target: bool,
    ) -> Result<JobRow> {
        self.insert_job(id, operation, target, exclusive_target, JobStatus::Queued)
    }

    fn insert_job(
        &self,
        id: &str,
        operation: JobOperation,
        target: &str,
        exclusive_target: bool,
        status: JobStatus,
    ) -> Result<JobRow> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if exclusive_target {
            let running: Vec<(String, JobStatus, u32, Option<String>)> = tx
                .prepare(
                    "SELECT id, status, pid, owner FROM jobs WHERE target = ?1 AND operation = ?2
                     AND status IN ('Queued', 'InProgress')",
                )?
                .query_map(params![target, operation], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            if let Some((other, st, _, _)) = running
                .into_iter()
                .find(|(_, _, pid, owner)| self.alive(owner.as_deref(), *pid))
            {
                let what = if st == JobStatus::Queued {
                    "queued"
                } else {
                    "still running"
                };
                return Err(Error::Conflict(format!(
                    "job {other} ({operation} of {target}) is {what}"
                )));
            }
        }
        let t = now();
        let job = JobRow {
            id: id.into(),
            operation,
            target: target.into(),
            status,
            queued: (status == JobStatus::Queued).then(|| t.clone()),
            started: t,
            ended: None,
            bytes_done: 0,
            bytes_total: 0,
            rp_id: None,
            error: None,
            error_code: None,
            log: Vec::new(),
            pid: std::process::id(),
            tasks: Vec::new(),
            result: None,
            rate_bytes_per_sec: None,
            eta_seconds: None,
        };
        tx.execute(
            "INSERT INTO jobs (id, operation, target, status, started, pid, bytes_done, bytes_total, log, owner, queued)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 0, '[]', ?7, ?8)",
            params![job.id, job.operation, job.target, job.status, job.started, job.pid, self.owner_id(), job.queued],
        )?;
        tx.commit()?;
        Ok(job)
    }

    /// Starts a queued job: Queued → InProgress, its start time now. False when it is no
    /// longer queued (cancelled while it waited).
    pub fn activate_job(&self, id: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET status = 'InProgress', started = ?2 WHERE id = ?1 AND status = 'Queued'",
            params![id, now()],
        )?;
        Ok(n == 1)
    }

    /// Ends a queued job Cancelled before it started. False when it is no longer queued.
    pub fn cancel_queued(&self, id: &str, why: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET status = 'Cancelled', ended = ?2, error = ?3 WHERE id = ?1 AND status = 'Queued'",
            params![id, now(), why],
        )?;
        Ok(n == 1)
    }

    /// The names of protected items with a recovery point (not their newest) whose expiry
    /// or snapshot-tier expiry is at or before `at`: the items retention has work for.
    pub fn items_with_expiry_due(&self, at: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT DISTINCT i.name FROM recovery_points r JOIN items i ON i.id = r.item_id
             WHERE i.state = 'protected'
               AND ((r.expires IS NOT NULL AND r.expires <= ?1)
                    OR (r.snapshot_expires IS NOT NULL AND r.snapshot_expires <= ?1
                        AND r.tier != 'snapshot'))
               AND r.id != (SELECT n.id FROM recovery_points n WHERE n.item_id = r.item_id
                            ORDER BY n.time DESC, n.id DESC LIMIT 1)",
        )?;
        let rows = st
            .query_map([at], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Updates progress.
    pub fn job_progress(&self, id: &str, done: u64, total: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET bytes_done = ?2, bytes_total = ?3 WHERE id = ?1",
            params![id, done as i64, total as i64],
        )?;
        Ok(())
    }

    /// Appends a log line.
    pub fn job_log(&self, id: &str, line: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET log = json_insert(log, '$[#]', ?2) WHERE id = ?1",
            params![id, format!("{} {line}", now())],
        )?;
        Ok(())
    }

    /// Ends a job.
    pub fn finish_job(
        &self,
        id: &str,
        status: JobStatus,
        rp_id: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET status = ?2, ended = ?3, rp_id = ?4, error = ?5 WHERE id = ?1",
            params![id, status, now(), rp_id, error],
        )?;
        Ok(())
    }

    /// Changes the process recorded for a job (tests: simulates a job whose process died).
    #[doc(hidden)]
    pub fn debug_set_job_pid(&self, id: &str, pid: u32) -> Result<()> {
        self.conn()
            .execute("UPDATE jobs SET pid = ?2 WHERE id = ?1", params![id, pid])?;
        Ok(())
    }

    /// Marks queued and running jobs whose process is gone as Failed; returns how many.
    pub fn fail_orphaned_jobs(&self) -> Result<usize> {
        let conn = self.conn();
        let orphans: Vec<(String, u32, Option<String>)> = conn
            .prepare(
                "SELECT id, pid, owner FROM jobs WHERE status IN ('Queued', 'InProgress', 'Cancelling')",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<(String, u32, Option<String>)>>>()?
            .into_iter()
            .filter(|(_, pid, owner)| !self.alive(owner.as_deref(), *pid))
            .collect();
        for (id, _, _) in &orphans {
            conn.execute(
                "UPDATE jobs SET status = 'Failed', ended = ?2,
                 error = 'the process running this job ended before it finished' WHERE id = ?1",
                params![id, now()],
            )?;
        }
        Ok(orphans.len())
    }

    fn job_from(r: &Row<'_>) -> rusqlite::Result<JobRow> {
        let log: String = r.get(10)?;
        Ok(JobRow {
            id: r.get(0)?,
            operation: r.get(1)?,
            target: r.get(2)?,
            status: r.get(3)?,
            started: r.get(4)?,
            ended: r.get(5)?,
            bytes_done: r.get::<_, i64>(6)? as u64,
            bytes_total: r.get::<_, i64>(7)? as u64,
            rp_id: r.get(8)?,
            error: r.get(9)?,
            log: serde_json::from_str(&log).unwrap_or_default(),
            pid: r.get(11)?,
            tasks: serde_json::from_str(&r.get::<_, String>(12)?).unwrap_or_default(),
            result: r
                .get::<_, Option<String>>(13)?
                .and_then(|t| serde_json::from_str(&t).ok()),
            queued: r.get(14)?,
            error_code: r.get(15)?,
            rate_bytes_per_sec: None,
            eta_seconds: None,
        }
        .with_rate())
    }

    const JOB_COLS: &str = "id, operation, target, status, started, ended, bytes_done, bytes_total, rp_id, error, log, pid, tasks, result, queued, error_code";

    /// Records the stable code of a job's failure.
    pub fn set_job_error_code(&self, id: &str, code: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET error_code = ?2 WHERE id = ?1",
            params![id, code],
        )?;
        Ok(())
    }

    /// Stores a job's report.
    pub fn set_job_result(&self, id: &str, result: &serde_json::Value) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET result = ?2 WHERE id = ?1",
            params![id, result.to_string()],
        )?;
        Ok(())
    }

    /// Asks a running job to stop: InProgress → Cancelling. False if it was not in progress.
    pub fn request_cancel(&self, id: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET status = 'Cancelling' WHERE id = ?1 AND status = 'InProgress'",
            [id],
        )?;
        Ok(n == 1)
    }

    /// Claims sub-task `phase` of job `job_id` and records `tasks`, atomically: refused, with
    /// the other job's id and nothing written, when another live job of the same operation
    /// on the same target has that sub-task in progress. Jobs whose process died do not count.
    pub fn claim_task(
        &self,
        job_id: &str,
        operation: JobOperation,
        target: &str,
        phase: usize,
        tasks: &[SubTask],
    ) -> Result<Option<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let holders: Vec<(String, u32, Option<String>)> = tx
            .prepare(
                "SELECT id, pid, owner FROM jobs
                 WHERE target = ?1 AND operation = ?2 AND id != ?3
                   AND status IN ('InProgress', 'Cancelling')
                   AND json_extract(tasks, '$[' || ?4 || '].status') = 'InProgress'",
            )?
            .query_map(params![target, operation, job_id, phase as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        if let Some((other, _, _)) = holders
            .into_iter()
            .find(|(_, pid, owner)| self.alive(owner.as_deref(), *pid))
        {
            return Ok(Some(other));
        }
        tx.execute(
            "UPDATE jobs SET tasks = ?2 WHERE id = ?1",
            params![
                job_id,
                serde_json::to_string(tasks).expect("tasks serialize")
            ],
        )?;
        tx.commit()?;
        Ok(None)
    }

    /// Whether the process running a job is gone (the job can never end by itself).
    pub fn job_orphaned(&self, id: &str) -> Result<bool> {
        let (pid, owner): (u32, Option<String>) =
            self.conn()
                .query_row("SELECT pid, owner FROM jobs WHERE id = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        Ok(!self.alive(owner.as_deref(), pid))
    }

    /// The jobs this catalog handle's process runs that have not ended.
    pub fn own_running_jobs(&self) -> Result<Vec<String>> {
        let rows: Vec<(String, u32, Option<String>)> = self
            .conn()
            .prepare(
                "SELECT id, pid, owner FROM jobs WHERE status IN ('Queued', 'InProgress', 'Cancelling')",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let me = std::process::id();
        Ok(rows
            .into_iter()
            .filter(
                |(_, pid, owner)| match (owner.as_deref(), self.owner_id()) {
                    (Some(o), Some(mine)) => o == mine,
                    _ => *pid == me,
                },
            )
            .map(|(id, _, _)| id)
            .collect())
    }

    /// Records a job's sub-tasks.
    pub fn set_job_tasks(&self, id: &str, tasks: &[SubTask]) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET tasks = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(tasks).expect("tasks serialize")],
        )?;
        Ok(())
    }

    /// A job by id or unique prefix (at least 4 characters).
    pub fn job(&self, id_or_prefix: &str) -> Result<JobRow> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {} FROM jobs WHERE id >= ?1 AND id < ?1 || '~' ORDER BY id LIMIT 2",
            Self::JOB_COLS
        ))?;
        let mut rows: Vec<JobRow> = st
            .query_map([id_or_prefix], Self::job_from)?
            .collect::<rusqlite::Result<_>>()?;
        if is_short_id(id_or_prefix) {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {} FROM jobs WHERE substr(id, 25) = ?1 LIMIT 2",
                Self::JOB_COLS
            ))?;
            rows.extend(
                st.query_map([id_or_prefix], Self::job_from)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            );
        }
        pick_unique("job", id_or_prefix, rows, |r| &r.id)
    }

    /// The latest `limit` jobs of one operation on one target, newest first.
    pub fn jobs_for(
        &self,
        operation: JobOperation,
        target: &str,
        limit: usize,
    ) -> Result<Vec<JobRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {} FROM jobs WHERE target = ?1 AND operation = ?2 ORDER BY started DESC, id DESC LIMIT ?3",
            Self::JOB_COLS
        ))?;
        let rows = st
            .query_map(params![target, operation, limit as i64], Self::job_from)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The newest job of `operation` on `target` that has ended (not queued, running or
    /// being cancelled): one row, whatever the history's length.
    pub fn last_ended_job(&self, operation: JobOperation, target: &str) -> Result<Option<JobRow>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {} FROM jobs WHERE target = ?1 AND operation = ?2
               AND status NOT IN ('Queued', 'InProgress', 'Cancelling')
             ORDER BY started DESC, id DESC LIMIT 1",
            Self::JOB_COLS
        ))?;
        Ok(st
            .query_row(params![target, operation], Self::job_from)
            .optional()?)
    }

    /// The latest `limit` jobs, newest first.
    pub fn list_jobs(&self, limit: usize) -> Result<Vec<JobRow>> {
        self.find_jobs(&JobFilter {
            limit,
            ..JobFilter::default()
        })
    }

    /// The latest jobs that pass `f`, newest first.
    pub fn find_jobs(&self, f: &JobFilter) -> Result<Vec<JobRow>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {} FROM jobs
             WHERE (?1 IS NULL OR target = ?1) AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR operation = ?3) AND (?5 IS NULL OR started >= ?5)
             ORDER BY started DESC, id DESC LIMIT ?4",
            Self::JOB_COLS
        ))?;
        let rows = st
            .query_map(
                params![f.target, f.status, f.operation, f.limit as i64, f.since],
                Self::job_from,
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

/// An item's recovery points in sum ([`Catalog::rp_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RpTotals {
    /// How many.
    pub points: usize,
    /// Sum of their used (logical) bytes.
    pub used_bytes: u64,
    /// Sum of their stored bytes.
    pub stored_bytes: u64,
    /// The newest point's used bytes (the item's protected size).
    pub newest_used_bytes: u64,
}

/// Which jobs [`Catalog::find_jobs`] returns; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// The item (or vault) the job works on.
    pub target: Option<String>,
    /// Jobs with this status.
    pub status: Option<JobStatus>,
    /// Jobs of this operation.
    pub operation: Option<JobOperation>,
    /// Started (or queued) at or after this stamp.
    pub since: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// Chooses the row matching `key` exactly, or the only row it is a prefix of (when at least
/// 4 characters long). `rows` are the first two rows in id order starting at `key`.
/// The short form of a job or recovery point id: its last 8 hex digits. Ids are
/// time-ordered (UUIDv7), so their beginnings are shared by everything made around the same
/// time; their ends are random.
pub fn short_id(id: &str) -> &str {
    match id.len() {
        32 => &id[24..],
        _ => id,
    }
}

fn is_short_id(key: &str) -> bool {
    key.len() == 8 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Chooses the row whose id is `key`, the only row whose short id (see [`short_id`]) is
/// `key`, or the only row `key` is a prefix of (at least 4 characters). `rows` are the
/// candidates: the first two in id order from `key`, and the short-id matches.
fn pick_unique<T>(
    kind: &'static str,
    key: &str,
    rows: Vec<T>,
    id: impl Fn(&T) -> &str,
) -> Result<T> {
    let mut rows: Vec<T> = rows
        .into_iter()
        .filter(|r| id(r).starts_with(key) || (is_short_id(key) && short_id(id(r)) == key))
        .collect();
    if let Some(pos) = rows.iter().position(|r| id(r) == key) {
        return Ok(rows.swap_remove(pos));
    }
    // The same row found both ways counts once.
    let mut seen = std::collections::HashSet::new();
    rows.retain(|r| seen.insert(id(r).to_string()));
    match rows.len() {
        1 if key.len() >= 4 => Ok(rows.pop().expect("one row")),
        n if n >= 2 && key.len() >= 4 => Err(Error::Ambiguous {
            kind,
            prefix: key.into(),
        }),
        _ => Err(Error::NotFound {
            kind,
            name: key.into(),
            near: None,
        }),
    }
}

pub(crate) fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}
