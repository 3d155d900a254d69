//! Where engine and catalog structures become API types. Each field is named here on
//! purpose: a new catalog column reaches clients only when it is added to the contract.

use crate::response::*;

impl From<kura_engine::VaultInfo> for Vault {
    fn from(v: kura_engine::VaultInfo) -> Self {
        let r = v.row;
        Vault {
            id: r.id,
            name: r.name,
            path: r.path,
            redundancy: r.redundancy,
            replica: r.replica,
            replication: v.replication.map(|l| Replication {
                replica: l.replica,
                replicated_at: l.replicated_at,
                points_behind: l.points_behind,
                bytes_behind: l.bytes_behind,
            }),
            chunk_size: r.chunk_size,
            encryption: r.encryption,
            cipher: r.cipher,
            key_file: r.key_file,
            created: r.created,
            items: v.items,
            soft_delete: v.soft_delete,
            soft_delete_days: v.soft_delete_days,
            kit_exported: v.kit_exported,
            note: v.note,
        }
    }
}

impl From<kura_catalog::PolicyRow> for Policy {
    fn from(p: kura_catalog::PolicyRow) -> Self {
        Policy {
            vault_id: p.vault_id,
            name: p.name,
            doc: p.doc,
            created: p.created,
            updated: p.updated,
            items: p.items,
        }
    }
}

impl From<kura_policy::Simulation> for Simulation {
    fn from(s: kura_policy::Simulation) -> Self {
        Simulation {
            time_zone: s.time_zone,
            from: s.from,
            until: s.until,
            runs: s
                .runs
                .into_iter()
                .map(|r| SimulatedRun {
                    time: r.time,
                    tier: r.tier.to_string(),
                })
                .collect(),
            surviving: s
                .surviving
                .into_iter()
                .map(|p| Survivor {
                    time: p.time,
                    tags: p.tags.into_iter().map(str::to_string).collect(),
                    expires: p.expires,
                })
                .collect(),
        }
    }
}

impl From<kura_engine::ItemStatus> for Item {
    fn from(s: kura_engine::ItemStatus) -> Self {
        let i = s.item;
        Item {
            id: i.id,
            name: i.name,
            vault_id: i.vault_id,
            vault: s.vault,
            kind: i.kind,
            source: i.source,
            created: i.created,
            policy: i.policy,
            last_slot: i.last_slot,
            state: i.state,
            deleted_at: i.deleted_at,
            spec: i.spec.as_deref().map(|t| {
                serde_json::from_str(t).unwrap_or_else(|_| serde_json::Value::String(t.into()))
            }),
            damaged_points: i.damaged_points,
            protection_state: s.protection_state,
            last_backup_status: s.last_backup_status,
            health_status: s.health_status,
            health_details: s.health_details,
            source_present: s.source_present,
            recovery_points: s.recovery_points,
            latest_recovery_point: s.latest_recovery_point.map(Into::into),
            purge_at: s.purge_at,
            next_backup: s.next_backup,
            last_backup: s.last_backup,
            agent_status: s.agent_status,
        }
    }
}

impl From<kura_engine::PrecheckReport> for Precheck {
    fn from(p: kura_engine::PrecheckReport) -> Self {
        Precheck {
            item: p.item,
            kind: p.kind,
            ready: p.ready,
            checks: p
                .checks
                .into_iter()
                .map(|c| PrecheckCheck {
                    name: c.name,
                    ok: c.ok,
                    detail: c.detail,
                })
                .collect(),
        }
    }
}

impl From<kura_catalog::RpRow> for RecoveryPoint {
    fn from(r: kura_catalog::RpRow) -> Self {
        RecoveryPoint {
            id: r.id,
            item_id: r.item_id,
            time: r.time,
            logical_size: r.logical_size,
            stored_size: r.stored_size,
            consistency: r.consistency,
            tier: r.tier,
            retain_until: r.retain_until,
            job_id: r.job_id,
            tags: r.tags,
            expires: r.expires,
            origin: r.origin,
            used_bytes: r.used_bytes,
            snapshot: r.snapshot,
            snapshot_expires: r.snapshot_expires,
        }
    }
}

/// The manifest's disk secrets and object keys stay inside the vault.
impl From<kura_store::Manifest> for RecoveryPointDetail {
    fn from(m: kura_store::Manifest) -> Self {
        RecoveryPointDetail {
            rp_id: m.rp_id,
            vault_id: m.vault_id,
            item: PointItem {
                id: m.item.id,
                name: m.item.name,
                kind: m.item.kind,
                source: m.item.source,
                created: m.item.created,
                policy: m.item.policy,
            },
            time: m.time,
            consistency: m.consistency,
            tier: m.tier,
            retain_until: m.retain_until,
            origin: m.origin,
            tags: m.tags,
            expires: m.expires,
            job_id: m.job_id,
            disks: m
                .disks
                .into_iter()
                .map(|d| PointDisk {
                    name: d.name,
                    size: d.size,
                    chunks: d.chunks,
                    zero_chunks: d.zero_chunks,
                    source_format: d.source_format,
                })
                .collect(),
            definition: m.definition,
            capture: m.capture,
            encrypted_disks: m.encrypted_disks,
            stats: PointStats {
                read_bytes: m.stats.read_bytes,
                new_chunks: m.stats.new_chunks,
                new_stored_bytes: m.stats.new_stored_bytes,
                new_plain_bytes: m.stats.new_plain_bytes,
                used_bytes: m.stats.used_bytes,
            },
        }
    }
}

impl From<kura_engine::RetentionPlan> for RetentionPlan {
    fn from(p: kura_engine::RetentionPlan) -> Self {
        RetentionPlan {
            item: p.item,
            at: p.at,
            entries: p
                .entries
                .into_iter()
                .map(|e| PlanEntry {
                    rp_id: e.rp_id,
                    time: e.time,
                    tags: e.tags,
                    expires: e.expires,
                    action: e.action.to_string(),
                    reason: e.reason,
                })
                .collect(),
        }
    }
}

impl From<kura_catalog::JobRow> for Job {
    fn from(j: kura_catalog::JobRow) -> Self {
        Job {
            id: j.id,
            operation: j.operation,
            target: j.target,
            status: j.status,
            queued: j.queued,
            started: j.started,
            ended: j.ended,
            bytes_done: j.bytes_done,
            bytes_total: j.bytes_total,
            rp_id: j.rp_id,
            error: j.error,
            error_code: j.error_code,
            log: j.log,
            tasks: j
                .tasks
                .into_iter()
                .map(|t| SubTask {
                    name: t.name,
                    status: t.status,
                    detail: t.detail,
                })
                .collect(),
            result: j.result,
            rate_bytes_per_sec: j.rate_bytes_per_sec,
            eta_seconds: j.eta_seconds,
        }
    }
}

impl From<kura_catalog::TokenRow> for Token {
    fn from(t: kura_catalog::TokenRow) -> Self {
        Token {
            name: t.name,
            created: t.created,
            expires: t.expires,
            last_used: t.last_used,
            role: t.role,
        }
    }
}

impl From<kura_engine::tokens::NewToken> for NewToken {
    fn from(t: kura_engine::tokens::NewToken) -> Self {
        NewToken {
            name: t.name,
            token: t.token,
            expires: t.expires,
        }
    }
}

impl From<kura_engine::usage::VaultUsage> for VaultUsage {
    fn from(v: kura_engine::usage::VaultUsage) -> Self {
        VaultUsage {
            vault: v.vault,
            logical_bytes: v.logical_bytes,
            stored_bytes: v.stored_bytes,
            ratio: v.ratio,
            unreachable: v.unreachable,
            items: v
                .items
                .into_iter()
                .map(|i| ItemUsage {
                    item: i.item,
                    state: i.state,
                    protected_bytes: i.protected_bytes,
                    instance_tier: i.instance_tier.to_string(),
                    protected_instances: i.protected_instances,
                    recovery_points: i.recovery_points,
                    logical_bytes: i.logical_bytes,
                    stored_bytes: i.stored_bytes,
                    ratio: i.ratio,
                })
                .collect(),
        }
    }
}

impl From<kura_engine::usage::VaultTrend> for VaultTrend {
    fn from(t: kura_engine::usage::VaultTrend) -> Self {
        VaultTrend {
            vault: t.vault,
            samples: t
                .samples
                .into_iter()
                .map(|s| UsageSample {
                    at: s.at,
                    stored_bytes: s.stored_bytes,
                })
                .collect(),
            filesystem: t.filesystem.map(|f| FsSpace {
                total_bytes: f.total_bytes,
                available_bytes: f.available_bytes,
            }),
            growth_bytes_per_day: t.growth_bytes_per_day,
            estimated_full: t.estimated_full,
        }
    }
}

impl From<kura_engine::WrappedKeyDocument> for WrappedKey {
    fn from(d: kura_engine::WrappedKeyDocument) -> Self {
        WrappedKey {
            kura_wrapped_key: d.kura_wrapped_key,
            vault_id: d.vault_id,
            vault_name: d.vault_name,
            cipher: d.cipher,
            // Plain fields (KDF parameters, salt, nonce, ciphertext): serializing cannot fail.
            key: serde_json::to_value(&d.key).unwrap_or_default(),
            note: d.note.to_string(),
        }
    }
}

/// Converts each element.
pub fn list<T, U: From<T>>(v: Vec<T>) -> Vec<U> {
    v.into_iter().map(Into::into).collect()
}

// ---- request fields the server and the CLI read the same way

/// A restore's `format` field: `raw`, `qcow2`, or absent (then the target's extension
/// decides).
pub fn restore_format(format: Option<&str>) -> Result<Option<kura_engine::RestoreFormat>, String> {
    match format {
        None => Ok(None),
        Some("raw") => Ok(Some(kura_engine::RestoreFormat::Raw)),
        Some("qcow2") => Ok(Some(kura_engine::RestoreFormat::Qcow2)),
        Some(f) => Err(format!("format: {f:?} is not raw or qcow2")),
    }
}

/// A file restore's destination: `to` (a directory), or with `original` the place the files
/// came from (`None`); exactly one of them.
pub fn files_destination(to: &str, original: bool) -> Result<Option<&str>, String> {
    match (to.is_empty(), original) {
        (false, false) => Ok(Some(to)),
        (true, true) => Ok(None),
        (true, false) => Err("to: name an existing directory (or set original)".into()),
        (false, true) => Err("to: leave it out when original is set".into()),
    }
}

/// An `at` field: an RFC 3339 instant, or `now` when absent.
pub fn instant(at: Option<&str>, now: jiff::Timestamp) -> Result<jiff::Timestamp, String> {
    match at {
        Some(a) => a
            .parse()
            .map_err(|e| format!("at: {a:?} is not an RFC 3339 instant: {e}")),
        None => Ok(now),
    }
}

impl crate::request::Verify {
    /// What to verify: at most one of the scopes; none is everything.
    pub fn scope(&self) -> Result<kura_engine::VerifyScope, String> {
        use kura_engine::VerifyScope as V;
        Ok(match (&self.vault, &self.item, &self.rp) {
            (None, None, None) => V::All,
            (Some(v), None, None) => V::Vault(v.clone()),
            (None, Some(i), None) => V::Item(i.clone()),
            (None, None, Some(r)) => V::Rp(r.clone()),
            _ => return Err("give at most one of vault, item, rp".into()),
        })
    }
}

impl From<kura_catalog::SessionRow> for crate::response::Session {
    fn from(s: kura_catalog::SessionRow) -> Self {
        crate::response::Session {
            token_name: s.token_name,
            csrf: s.csrf,
            expires: s.expires,
            operations: Vec::new(),
        }
    }
}

impl From<kura_engine::Fetched> for Fetched {
    fn from(f: kura_engine::Fetched) -> Self {
        Fetched {
            chunks: f.chunks,
            bytes: f.bytes,
        }
    }
}

impl From<kura_engine::Volume> for Volume {
    fn from(v: kura_engine::Volume) -> Self {
        let fs = serde_json::to_value(v.fs)
            .ok()
            .and_then(|x| x.as_str().map(str::to_string))
            .unwrap_or_default();
        Volume {
            number: v.number,
            table: v.table.to_string(),
            start: v.start,
            size: v.size,
            name: v.name,
            readable: v.fs.readable(),
            fs,
        }
    }
}

impl From<kura_engine::PointVolumes> for PointVolumes {
    fn from(p: kura_engine::PointVolumes) -> Self {
        PointVolumes {
            rp_id: p.rp_id,
            disk: p.disk,
            size: p.size,
            volumes: p.volumes.into_iter().map(Volume::from).collect(),
            fetched: p.fetched.into(),
        }
    }
}

impl From<kura_engine::FileEntry> for FileEntry {
    fn from(e: kura_engine::FileEntry) -> Self {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|x| x.as_str().map(str::to_string))
            .unwrap_or_default();
        let modified = jiff::Timestamp::new(e.mtime, e.mtime_nsec.min(999_999_999) as i32)
            .map(|t| t.to_string())
            .unwrap_or_default();
        FileEntry {
            path: e.path,
            name: e.name,
            kind,
            size: e.size,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            modified,
            target: e.target,
        }
    }
}

impl From<kura_engine::FileListing> for FileListing {
    fn from(l: kura_engine::FileListing) -> Self {
        FileListing {
            rp_id: l.rp_id,
            disk: l.disk,
            volume: l.volume,
            entry: l.entry.into(),
            entries: l.entries.into_iter().map(FileEntry::from).collect(),
            fetched: l.fetched.into(),
        }
    }
}

impl From<kura_engine::ExportInfo> for Export {
    fn from(e: kura_engine::ExportInfo) -> Self {
        Export {
            id: e.id,
            item: e.item,
            rp_id: e.rp_id,
            disk: e.disk,
            size: e.size,
            uri: e.uri,
            tls_dir: e.tls_dir,
            client_tls: None,
            pid: e.pid,
            started: e.started,
            expires: e.expires,
        }
    }
}
