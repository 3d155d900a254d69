//! Garbage collection: remove chunks and packs no recovery point references, without ever
//! blocking a backup or deleting a chunk a running backup is about to reference.
//!
//! The unit collected is an object: a chunk stored as its own object, or a pack (which goes
//! when no point references any chunk in it; a pack some point still uses is kept whole, and
//! the report says how many of its bytes no point uses). "Chunk" below means either.
//!
//! Protocol (state in the catalog, see `kura_catalog::gc`):
//!
//! 1. **Mark**: read every manifest and index in the vault; the chunks they list are
//!    referenced. Any unreadable manifest or index stops GC before it deletes anything.
//! 2. **Doom**: every stored chunk that is not referenced and not yet doomed is doomed now;
//!    doomed chunks found referenced again are released.
//! 3. **Sweep**: a doomed chunk is deleted when it was doomed by an earlier run (before this
//!    run's mark started, so every recovery point published since is in this mark), longer ago
//!    than the grace period, and before the start of every writer lease active at this run's
//!    mark or at its sweep. Each deletion is claimed in the catalog first
//!    (`doomed` → `deleting`).
//!
//! Writers take a lease before choosing what to reuse. A writer reusing a stored chunk first
//! *rescues* it: a doomed mark is removed (GC then cannot claim it), a chunk being deleted is
//! waited for and written again. A chunk a writer relies on is therefore either not doomed,
//! rescued, or doomed after the writer started — and GC deletes none of those while the writer
//! runs. Once the writer publishes, the chunk is referenced and the next mark releases it.

use std::collections::HashSet;

use jiff::{SignedDuration, Timestamp};
use kura_catalog::JobOperation;
use kura_store::{ChunkId, PackId, Packed, Vault};
use serde::Serialize;

use crate::{Error, ErrorKind, Home, Progress, Result, Secrets};

/// GC settings.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// A doomed chunk is deleted only after this long. Default 1 hour.
    pub grace: SignedDuration,
    /// Report what would happen; delete and doom nothing.
    pub dry_run: bool,
    /// A job made beforehand with [`Home::begin_job`].
    pub job_id: Option<String>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: SignedDuration::from_hours(1),
            dry_run: false,
            job_id: None,
        }
    }
}

/// What a GC run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// The job.
    pub job_id: String,
    /// Recovery points read.
    pub recovery_points: usize,
    /// Distinct chunks they reference (stored as objects or in packs).
    pub referenced_chunks: usize,
    /// Chunks stored as objects of their own in the vault.
    pub stored_chunks: usize,
    /// Packs they reference.
    pub referenced_packs: usize,
    /// Packs stored in the vault.
    pub stored_packs: usize,
    /// Bytes of the packs kept that no recovery point uses (freed when the rest of their
    /// pack is).
    pub unused_packed_bytes: u64,
    /// Objects (chunks and packs) doomed by this run.
    pub newly_doomed: usize,
    /// Doomed objects released because they are referenced again.
    pub released: usize,
    /// Objects deleted (chunks and packs).
    pub deleted: usize,
    /// Stored bytes freed.
    pub freed_bytes: u64,
    /// Doomed chunks kept for now (grace period, or a writer older than their mark).
    pub waiting: usize,
    /// Incomplete recovery point directories (no manifest) removed.
    pub orphan_indexes_removed: usize,
    /// Partial uploads (an hour old or more) that killed or failed writers left, removed.
    pub stale_uploads_removed: u64,
}

/// Ends a lease when dropped.
pub(crate) struct LeaseGuard<'a> {
    home: &'a Home,
    id: String,
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        let _ = self.home.catalog.end_lease(&self.id);
    }
}

/// What GC collects: a chunk stored as its own object, or a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Collectable {
    Chunk(ChunkId),
    Pack(PackId),
}

impl Collectable {
    /// Its name in the catalog's list of doomed objects: a chunk's id in hex (what writers
    /// rescue by), a pack's key.
    fn name(&self) -> String {
        match self {
            Collectable::Chunk(c) => c.to_hex(),
            Collectable::Pack(p) => p.key(),
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match PackId::from_key(name) {
            Some(p) => Some(Collectable::Pack(p)),
            None => ChunkId::from_hex(name).ok().map(Collectable::Chunk),
        }
    }

    fn key(&self) -> String {
        match self {
            Collectable::Chunk(c) => c.key(),
            Collectable::Pack(p) => p.key(),
        }
    }
}

impl Home {
    pub(crate) fn lease(&self, vault_id: &str, purpose: &str) -> Result<LeaseGuard<'_>> {
        let id = crate::new_id();
        self.catalog.start_lease(&id, vault_id, purpose)?;
        Ok(LeaseGuard { home: self, id })
    }

    /// Whether a writer may reuse the stored copy of `id` (see the module doc).
    pub(crate) fn reusable(&self, vault_id: &str, vault: &Vault, id: &ChunkId) -> Result<bool> {
        let hex = id.to_hex();
        loop {
            match self.catalog.rescue(vault_id, &hex)? {
                kura_catalog::Rescue::Deleting => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => return Ok(vault.has_chunk(id)?),
            }
        }
    }

    /// Collects garbage in a vault, as a job.
    pub fn gc(
        &self,
        vault: &str,
        opts: &GcOptions,
        secrets: &Secrets,
        progress: &dyn Progress,
    ) -> Result<GcReport> {
        let vrow = self.catalog.vault(vault)?;
        let v = self.open_vault_row(&vrow, secrets)?;
        let (job_id, report) = self.run_job(JobOperation::GarbageCollect, vault, true, opts.job_id.as_deref(), progress, |job| {
            if !opts.dry_run {
                for name in self.purge_soft_deleted(&vrow.id, self.now(), secrets)? {
                    job.message(&format!("purged soft-deleted item {name}: its soft-delete period is over"));
                }
            }
            let r = self.gc_vault(&vrow.id, &v, opts, job)?;
            if !opts.dry_run && let Err(e) = self.note_vault_usage(&vrow, None) {
                job.message(&format!("the vault's storage trend was not updated: {e}"));
            }
            job.message(&format!(
                "{} referenced of {} stored chunks; {} doomed, {} released, {} deleted ({} bytes), {} waiting",
                r.referenced_chunks, r.stored_chunks, r.newly_doomed, r.released, r.deleted, r.freed_bytes, r.waiting
            ));
            Ok((r, None))
        })?;
        Ok(GcReport { job_id, ..report })
    }

    fn gc_vault(
        &self,
        vault_id: &str,
        vault: &Vault,
        opts: &GcOptions,
        progress: &dyn Progress,
    ) -> Result<GcReport> {
        let mut report = GcReport::default();
        // Writers active when the mark starts may publish recovery points this mark does not
        // see; they count until the end of the run, like the writers active at the sweep.
        // (These stamps order GC against other processes' leases, which the catalog stamps
        // on the system clock; they are no calendar decision, so not the home's clock.)
        let mark_start = kura_catalog::stamp(Timestamp::now());
        let leases_at_mark = self.catalog.active_leases(vault_id)?;

        // 1. Mark, from the vault itself (a superset of what the catalog knows).
        let mut referenced: HashSet<Collectable> = HashSet::new();
        let mut chunk_ids: HashSet<ChunkId> = HashSet::new();
        let mut live_places: HashSet<Packed> = HashSet::new();
        let rp_ids = vault.list_rp_ids()?;
        for rp in &rp_ids {
            crate::progress::check_cancel(progress)?;
            let m = vault.get_manifest(rp).map_err(|e| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("garbage collection stopped, nothing deleted: {e}"),
                )
            })?;
            for (_, chunks) in vault.point_chunks(&m) {
                let chunks = chunks.map_err(|e| {
                    Error::new(
                        ErrorKind::Corrupt,
                        format!("garbage collection stopped, nothing deleted: {e}"),
                    )
                })?;
                for r in chunks {
                    chunk_ids.insert(r.id);
                    match r.packed {
                        Some(at) => {
                            referenced.insert(Collectable::Pack(at.pack));
                            live_places.insert(at);
                            // A packed chunk's own object, if a backup wrote one to heal
                            // it, is what reads fall back to: kept as well.
                            referenced.insert(Collectable::Chunk(r.id));
                        }
                        None => {
                            referenced.insert(Collectable::Chunk(r.id));
                        }
                    }
                }
            }
        }
        report.recovery_points = rp_ids.len();
        report.referenced_chunks = chunk_ids.len();
        drop(chunk_ids);

        // 2. Doom the unreferenced, release the referenced.
        let chunk_sizes = vault.list_chunk_sizes()?;
        let pack_sizes = vault.list_pack_sizes()?;
        report.stored_chunks = chunk_sizes.len();
        report.stored_packs = pack_sizes.len();
        let sizes: std::collections::HashMap<Collectable, u64> = chunk_sizes
            .into_iter()
            .map(|(id, n)| (Collectable::Chunk(id), n))
            .chain(
                pack_sizes
                    .into_iter()
                    .map(|(id, n)| (Collectable::Pack(id), n)),
            )
            .collect();
        let mut live_bytes: std::collections::HashMap<PackId, u64> = Default::default();
        for at in &live_places {
            *live_bytes.entry(at.pack).or_default() += u64::from(at.len);
        }
        report.referenced_packs = live_bytes.len();
        report.unused_packed_bytes = live_bytes
            .iter()
            .map(|(p, live)| {
                sizes
                    .get(&Collectable::Pack(*p))
                    .map_or(0, |n| n.saturating_sub(*live))
            })
            .sum();
        let doomed = self.catalog.doomed(vault_id)?;
        let doomed_set: HashSet<&str> = doomed.iter().map(|d| d.chunk.as_str()).collect();
        let release: Vec<String> = doomed
            .iter()
            .filter(|d| d.state == "doomed")
            .filter(|d| Collectable::parse(&d.chunk).is_some_and(|c| referenced.contains(&c)))
            .map(|d| d.chunk.clone())
            .collect();
        let fresh: Vec<String> = sizes
            .keys()
            .filter(|c| !referenced.contains(c))
            .map(Collectable::name)
            .filter(|h| !doomed_set.contains(h.as_str()))
            .collect();
        report.released = release.len();
        report.newly_doomed = fresh.len();
        if opts.dry_run {
            return Ok(report);
        }
        self.catalog.undoom(vault_id, &release)?;
        self.catalog
            .doom(vault_id, &fresh, &kura_catalog::stamp(Timestamp::now()))?;

        // 3. Sweep.
        let oldest_writer = leases_at_mark
            .iter()
            .chain(self.catalog.active_leases(vault_id)?.iter())
            .map(|l| l.started.clone())
            .min();
        let grace_cutoff = kura_catalog::stamp(
            Timestamp::now()
                .checked_sub(opts.grace)
                .unwrap_or(Timestamp::MIN),
        );
        let candidates = self.catalog.doomed(vault_id)?;
        progress.start("garbage collection", candidates.len() as u64);
        // Claimed chunks are deleted together: one request per thousand on object storage
        // (S3's DeleteObjects), one at a time on a local disk.
        let batch_size = if vault.backend().cheap_stat() {
            1
        } else {
            1000
        };
        let mut batch: Vec<(String, String)> = Vec::new();
        let flush = |batch: &mut Vec<(String, String)>| -> Result<()> {
            if batch.is_empty() {
                return Ok(());
            }
            let keys: Vec<String> = batch.iter().map(|(key, _)| key.clone()).collect();
            vault.backend().delete_many(&keys)?;
            let hexes: Vec<String> = batch.drain(..).map(|(_, hex)| hex).collect();
            self.catalog.undoom(vault_id, &hexes)?;
            crate::hooks::gate("gc_delete");
            Ok(())
        };
        for d in candidates {
            // Stopping between chunks is safe: a chunk is claimed, deleted, then released,
            // and a claim left by a stop is finished by the next run.
            if progress.cancelled() {
                vault.sync()?;
                return Err(Error::cancelled());
            }
            progress.advance(1);
            // Only marks from an earlier run: a recovery point published after that run's mark
            // is seen by this run's mark, which released its chunks above.
            let old_enough = d.doomed_at < grace_cutoff && d.doomed_at < mark_start;
            let before_writers = oldest_writer.as_ref().is_none_or(|w| d.doomed_at < *w);
            let Some(id) = Collectable::parse(&d.chunk) else {
                self.catalog
                    .undoom(vault_id, std::slice::from_ref(&d.chunk))?;
                continue;
            };
            if d.state == "deleting"
                || (d.state == "doomed"
                    && old_enough
                    && before_writers
                    && !referenced.contains(&id))
            {
                if d.state == "doomed" && !self.catalog.claim_doomed(vault_id, &d.chunk)? {
                    continue; // a writer rescued it
                }
                // The size from the listing: no stat per chunk (a request each on S3).
                let size = sizes.get(&id).copied().unwrap_or(0);
                batch.push((id.key(), d.chunk.clone()));
                report.deleted += 1;
                report.freed_bytes += size;
                if batch.len() >= batch_size {
                    flush(&mut batch)?;
                }
            } else {
                report.waiting += 1;
            }
        }
        flush(&mut batch)?;
        vault.sync()?;
        progress.finish();

        // Directories of recovery points that never got a manifest (interrupted backups).
        // A running backup writes its index before its manifest, so: list first, then go on
        // only if no writer is active (a writer that starts later has nothing in the list),
        // and skip any directory whose manifest exists by now.
        let keys = vault.backend().list("rps/")?;
        if self.catalog.active_leases(vault_id)?.is_empty() {
            let mut dirs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for key in keys {
                if let Some(rp) = key.strip_prefix("rps/").and_then(|k| k.split('/').next()) {
                    dirs.entry(rp.to_string()).or_default().push(key.clone());
                }
            }
            for (rp, keys) in dirs {
                if vault
                    .backend()
                    .stat(&format!("rps/{rp}/manifest"))?
                    .is_some()
                {
                    continue;
                }
                for key in keys {
                    vault.backend().delete(&key)?;
                }
                report.orphan_indexes_removed += 1;
            }
            vault.sync()?;
        }
        // Partial uploads never become objects; an hour-old one has no writer left. Only
        // while no writer is active: the age is judged by the file's time against this
        // machine's clock, and a clock that jumps (or a writer slower than an hour) must not
        // cost a running backup its upload.
        if !opts.dry_run && self.catalog.active_leases(vault_id)?.is_empty() {
            report.stale_uploads_removed = vault
                .backend()
                .remove_stale_uploads(std::time::Duration::from_secs(3600))?;
        }
        Ok(report)
    }
}
