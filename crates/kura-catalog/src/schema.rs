//! Catalog schema and its migrations, tracked with `PRAGMA user_version`.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the foundation.
    "CREATE TABLE vaults (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL,
        chunk_size INTEGER NOT NULL,
        encryption TEXT NOT NULL,
        cipher TEXT,
        key_file TEXT,
        created TEXT NOT NULL
    );
    CREATE TABLE items (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        vault_id TEXT NOT NULL REFERENCES vaults(id),
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE UNIQUE INDEX items_by_source ON items(kind, source);
    CREATE TABLE recovery_points (
        id TEXT PRIMARY KEY,
        item_id TEXT NOT NULL REFERENCES items(id),
        time TEXT NOT NULL,
        logical_size INTEGER NOT NULL,
        stored_size INTEGER NOT NULL,
        consistency TEXT NOT NULL,
        tier TEXT NOT NULL,
        retain_until TEXT,
        job_id TEXT
    );
    CREATE INDEX rps_by_item_time ON recovery_points(item_id, time);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        operation TEXT NOT NULL,
        target TEXT NOT NULL,
        status TEXT NOT NULL,
        started TEXT NOT NULL,
        ended TEXT,
        pid INTEGER NOT NULL,
        bytes_done INTEGER NOT NULL,
        bytes_total INTEGER NOT NULL,
        rp_id TEXT,
        error TEXT,
        log TEXT NOT NULL
    );
    CREATE INDEX jobs_by_start ON jobs(started);
    CREATE INDEX jobs_by_status ON jobs(status);",
    // 2: policies, an item's policy, retention of recovery points.
    "CREATE TABLE policies (
        vault_id TEXT NOT NULL REFERENCES vaults(id),
        name TEXT NOT NULL,
        doc TEXT NOT NULL,
        created TEXT NOT NULL,
        updated TEXT NOT NULL,
        PRIMARY KEY (vault_id, name)
    );
    ALTER TABLE items ADD COLUMN policy TEXT;
    ALTER TABLE recovery_points ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE recovery_points ADD COLUMN expires TEXT;
    ALTER TABLE recovery_points ADD COLUMN origin TEXT NOT NULL DEFAULT 'on-demand';",
    // 3: the scheduler's memory of the last slot it handled per item.
    "ALTER TABLE items ADD COLUMN last_slot TEXT;",
    // 4: garbage collection: writer leases and chunks marked for deletion.
    "CREATE TABLE leases (
        id TEXT PRIMARY KEY,
        vault_id TEXT NOT NULL,
        purpose TEXT NOT NULL,
        started TEXT NOT NULL,
        pid INTEGER NOT NULL
    );
    CREATE TABLE gc_doomed (
        vault_id TEXT NOT NULL,
        chunk TEXT NOT NULL,
        doomed_at TEXT NOT NULL,
        state TEXT NOT NULL,
        pid INTEGER NOT NULL,
        PRIMARY KEY (vault_id, chunk)
    );",
    // 5: protection state of items and soft delete per vault.
    "ALTER TABLE items ADD COLUMN state TEXT NOT NULL DEFAULT 'protected';
    ALTER TABLE items ADD COLUMN deleted_at TEXT;
    ALTER TABLE vaults ADD COLUMN soft_delete TEXT NOT NULL DEFAULT 'enabled';
    ALTER TABLE vaults ADD COLUMN soft_delete_days INTEGER NOT NULL DEFAULT 14;",
    // 6: the used (allocated) bytes a backup read, for the usage report.
    "ALTER TABLE recovery_points ADD COLUMN used_bytes INTEGER NOT NULL DEFAULT 0;",
    // 7: sub-tasks of jobs (a backup's snapshot and transfer).
    "ALTER TABLE jobs ADD COLUMN tasks TEXT NOT NULL DEFAULT '[]';",
    // 8: the snapshot tier of recovery points.
    "ALTER TABLE recovery_points ADD COLUMN snapshot TEXT;
    ALTER TABLE recovery_points ADD COLUMN snapshot_expires TEXT;",
    // 9: what a job produced (its report), for clients that were not attached to it.
    "ALTER TABLE jobs ADD COLUMN result TEXT;",
    // 10: one item's or vault's jobs without scanning them all.
    "CREATE INDEX jobs_by_target ON jobs(target, operation, started);",
    // 11: an item's source format, pinned when it is protected.
    "ALTER TABLE items ADD COLUMN format TEXT;",
    // 12: which recovery points reference chunks verify found bad.
    "CREATE TABLE damage (
        vault_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        rp_id TEXT NOT NULL,
        chunk TEXT NOT NULL,
        PRIMARY KEY (rp_id, chunk)
    );
    CREATE INDEX damage_by_chunk ON damage(vault_id, chunk);
    CREATE INDEX damage_by_item ON damage(item_id);",
    // 13: owners judged by a lock a dead process cannot keep (see owner.rs), not by PID.
    "ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE leases ADD COLUMN owner TEXT;
    ALTER TABLE gc_doomed ADD COLUMN owner TEXT;",
    // 14: when the scheduler last started a vault's GC, on the scheduler's own clock.
    "ALTER TABLE vaults ADD COLUMN last_gc TEXT;",
    // 15: when a recovery kit of the vault was last exported.
    "ALTER TABLE vaults ADD COLUMN kit_exported TEXT;",
    // 16: an item's source as a typed, versioned value (kind, path, pinned format).
    "ALTER TABLE items RENAME COLUMN format TO spec;
    UPDATE items SET spec = json_object('kind', kind, 'v', 1, 'path', source, 'format', json(spec))
        WHERE spec IS NOT NULL;",
    // 17: a VM point's definition while it has no vault copy (its manifest keeps it then).
    "CREATE TABLE rp_definitions (
        rp_id TEXT PRIMARY KEY REFERENCES recovery_points(id) ON DELETE CASCADE,
        definition TEXT NOT NULL
    );",
    // 18: named API tokens, stored as hashes; `role` is for per-token roles to come.
    "CREATE TABLE api_tokens (
        name TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        created TEXT NOT NULL,
        expires TEXT,
        last_used TEXT,
        role TEXT
    );",
    // 19: short ids: the last 8 hex digits of a time-ordered id (its random part) find it.
    "CREATE INDEX jobs_by_short_id ON jobs(substr(id, 25));
    CREATE INDEX rps_by_short_id ON recovery_points(substr(id, 25));",
    // 20: jobs wait in the server's queue (status Queued) from `queued` until `started`.
    "ALTER TABLE jobs ADD COLUMN queued TEXT;",
    // 21: why a job failed as a stable code (not_found, conflict, ...), as a command run
    // directly would exit with.
    "ALTER TABLE jobs ADD COLUMN error_code TEXT;",
    // 22: web UI sessions: a cookie's hash, the token it was opened with (by name and the
    // token's hash, so revoking or resetting the token ends it), its CSRF value and expiry.
    "CREATE TABLE sessions (
        hash TEXT PRIMARY KEY,
        token_name TEXT NOT NULL,
        token_hash TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created TEXT NOT NULL,
        expires TEXT NOT NULL
    );",
    // 23: a vault's stored size over time (the storage trend): one row per vault and hour,
    // the last measurement of that hour.
    "CREATE TABLE vault_usage (
        vault_id TEXT NOT NULL REFERENCES vaults(id) ON DELETE CASCADE,
        hour TEXT NOT NULL,
        at TEXT NOT NULL,
        stored_bytes INTEGER NOT NULL,
        PRIMARY KEY (vault_id, hour)
    );",
    // 24: storage redundancy (Azure's LRS/ZRS): `local`, or `zone` with a second location
    // every write also goes to.
    "ALTER TABLE vaults ADD COLUMN redundancy TEXT NOT NULL DEFAULT 'local';
     ALTER TABLE vaults ADD COLUMN replica TEXT;",
    // 25: when a geo-redundant vault's replica last caught up (start of that replication).
    "ALTER TABLE vaults ADD COLUMN replicated_at TEXT;",
];

pub(crate) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}
