//! Verify: re-read and fully check every chunk of a recovery point, an item or a vault, and
//! name every bad chunk with the recovery points that use it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use kura_catalog::{ItemRow, JobOperation, RpRow};
use kura_store::{ChunkId, ChunkRef, PackId, Vault};
use serde::Serialize;

use crate::{Error, ErrorKind, Home, Progress, Result, Secrets, io_workers};

/// What to verify.
#[derive(Debug, Clone)]
pub enum VerifyScope {
    /// Every recovery point of every vault.
    All,
    /// Every recovery point in a vault.
    Vault(String),
    /// Every recovery point of an item.
    Item(String),
    /// One recovery point (id or unique prefix).
    Rp(String),
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyProblem {
    /// The object: `chunk <id>`, `manifest of …`, `index …`.
    pub object: String,
    /// `missing` or `corrupt`.
    pub problem: String,
    /// Details.
    pub detail: String,
    /// Recovery points affected.
    pub recovery_points: Vec<String>,
}

/// The outcome of a verify.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The job.
    pub job_id: String,
    /// Recovery points checked.
    pub recovery_points: usize,
    /// Distinct chunks checked.
    pub chunks_checked: usize,
    /// Problems; empty when all is well.
    pub problems: Vec<VerifyProblem>,
    /// Recovery points that exist only in the snapshot tier: they have no vault copy to
    /// verify, which is not damage.
    pub snapshot_only: Vec<String>,
    /// Chunks backups wrote again since the last verify, as `CHUNK (recovery point RP)`.
    pub healed: Vec<String>,
    /// Vaults that could not be opened (no secret given for them), with the reason.
    pub not_verified: Vec<String>,
    /// Copies of a zone-redundant vault written again from the other location, because they
    /// were missing or damaged there: `OBJECT at LOCATION`.
    pub repaired: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Home {
    /// Verifies `scope`. Problems are reported in the result, not as an error; an error means
    /// verification itself could not run (unknown name, wrong key).
    pub fn verify(
        &self,
        scope: &VerifyScope,
        secrets: &Secrets,
        progress: &dyn Progress,
    ) -> Result<VerifyReport> {
        self.verify_in_job(scope, None, secrets, progress)
    }

    /// The job target name of a scope (as [`Home::begin_job`] needs it).
    pub fn verify_target(scope: &VerifyScope) -> String {
        match scope {
            VerifyScope::All => "all vaults".to_string(),
            VerifyScope::Vault(n) => format!("vault {n}"),
            VerifyScope::Item(n) => format!("item {n}"),
            VerifyScope::Rp(id) => format!("recovery point {id}"),
        }
    }

    /// [`Home::verify`] in a job made beforehand with [`Home::begin_job`].
    pub fn verify_in_job(
        &self,
        scope: &VerifyScope,
        job_id: Option<&str>,
        secrets: &Secrets,
        progress: &dyn Progress,
    ) -> Result<VerifyReport> {
        // Resolve the scope to (vault, recovery points) groups first: unknown names fail here.
        let mut groups: BTreeMap<String, Vec<RpRow>> = BTreeMap::new();
        let add_item = |item: &ItemRow, groups: &mut BTreeMap<String, Vec<RpRow>>| -> Result<()> {
            let rps = self.catalog.list_rps(&item.id)?;
            groups.entry(item.vault_id.clone()).or_default().extend(rps);
            Ok(())
        };
        let target = match scope {
            VerifyScope::All => {
                for v in self.catalog.list_vaults()? {
                    groups.entry(v.id.clone()).or_default();
                    for item in self.catalog.list_items(Some(&v.id))? {
                        add_item(&item, &mut groups)?;
                    }
                }
                "all vaults".to_string()
            }
            VerifyScope::Vault(name) => {
                let v = self.catalog.vault(name)?;
                groups.entry(v.id.clone()).or_default();
                for item in self.catalog.list_items(Some(&v.id))? {
                    add_item(&item, &mut groups)?;
                }
                format!("vault {name}")
            }
            VerifyScope::Item(name) => {
                let item = self.catalog.item(name)?;
                add_item(&item, &mut groups)?;
                format!("item {name}")
            }
            VerifyScope::Rp(id) => {
                let rp = self.catalog.rp(id)?;
                let item = self.catalog.item(&rp.item_id)?;
                let id = rp.id.clone();
                groups.entry(item.vault_id.clone()).or_default().push(rp);
                format!("recovery point {id}")
            }
        };
        // Verifying everything goes on past a vault it cannot open (its secret was not
        // given) and says so; a named scope fails instead.
        let mut vaults = Vec::new();
        let mut not_opened = Vec::new();
        for (vault_id, rps) in groups {
            let row = self.catalog.vault_by_id(&vault_id)?;
            match self.open_vault_row(&row, secrets) {
                Ok(v) => vaults.push((v, rps)),
                Err(e) if matches!(scope, VerifyScope::All) => {
                    not_opened.push(format!("vault {}: {e}", row.name))
                }
                Err(e) => return Err(e),
            }
        }
        let (job_id, report) = self.run_job(JobOperation::Verify, &target, false, job_id, progress, |job| {
            let mut report = VerifyReport {
                job_id: String::new(),
                recovery_points: 0,
                chunks_checked: 0,
                problems: Vec::new(),
                snapshot_only: Vec::new(),
                healed: Vec::new(),
                not_verified: not_opened.clone(),
                repaired: Vec::new(),
            };
            for v in &not_opened {
                job.warn(&format!("not verified: {v}"));
            }
            for (vault, rps) in &vaults {
                let (vault_rps, snapshot_only): (Vec<RpRow>, Vec<RpRow>) =
                    rps.iter().cloned().partition(|r| r.tier != "snapshot");
                report
                    .snapshot_only
                    .extend(snapshot_only.into_iter().map(|r| r.id));
                let healed = vault.list_healed().unwrap_or_else(|e| {
                    job.message(&format!("healed-chunk records unreadable: {e}"));
                    Vec::new()
                });
                let first = report.problems.len();
                let checked = verify_vault(vault, &vault_rps, &mut report, job)?;
                report
                    .repaired
                    .extend(repair_copies(vault, &vault_rps, &checked.objects, job)?);
                self.remember_bad_chunks(vault, &vault_rps, &checked.chunks, &report.problems[first..])?;
                for (key, h) in healed {
                    report.healed.extend(
                        h.chunks
                            .iter()
                            .map(|c| format!("{c} (recovery point {})", h.rp_id)),
                    );
                    vault.delete_healed(&key)?;
                }
            }
            if !report.snapshot_only.is_empty() {
                job.message(&format!(
                    "{} recovery point(s) exist only in the snapshot tier and have no vault copy to verify: {}",
                    report.snapshot_only.len(),
                    report.snapshot_only.join(", ")
                ));
            }
            if !report.repaired.is_empty() {
                job.message(&format!(
                    "repaired from the other location: {}",
                    report.repaired.join(", ")
                ));
            }
            if !report.healed.is_empty() {
                job.message(&format!(
                    "healed by backups since the last verify: {}",
                    report.healed.join(", ")
                ));
            }
            for p in &report.problems {
                job.message(&format!(
                    "{} {}: {} (recovery points: {})",
                    p.object,
                    p.problem,
                    p.detail,
                    p.recovery_points.join(", ")
                ));
            }
            if !report.ok() {
                job.message(&format!("{} problem(s) found", report.problems.len()));
            }
            Ok((report, None))
        })?;
        Ok(VerifyReport { job_id, ..report })
    }
}

impl Home {
    /// Keeps what a verify found in the vault (the bad-chunk list every backup honours) and in
    /// the catalog (which points are damaged). Chunks this run did not check keep their entry.
    fn remember_bad_chunks(
        &self,
        vault: &Vault,
        rps: &[RpRow],
        checked: &HashSet<ChunkId>,
        problems: &[VerifyProblem],
    ) -> Result<()> {
        let now = kura_catalog::stamp(self.now());
        let old = vault.bad_chunks().unwrap_or_default();
        let mut list = old.clone();
        list.chunks
            .retain(|hex, _| ChunkId::from_hex(hex).is_ok_and(|id| !checked.contains(&id)));
        let item_of: HashMap<&str, &str> = rps
            .iter()
            .map(|r| (r.id.as_str(), r.item_id.as_str()))
            .collect();
        let mut found = Vec::new();
        for p in problems {
            let Some(hex) = p.object.strip_prefix("chunk ") else {
                continue;
            };
            let first_found = old
                .chunks
                .get(hex)
                .map_or_else(|| now.clone(), |b| b.found.clone());
            list.chunks.insert(
                hex.to_string(),
                kura_store::BadChunk {
                    problem: p.problem.clone(),
                    found: first_found,
                },
            );
            for rp in &p.recovery_points {
                if let Some(item) = item_of.get(rp.as_str()) {
                    found.push((item.to_string(), rp.clone(), hex.to_string()));
                }
            }
        }
        list.verified_at = Some(now);
        vault.put_bad_chunks(&list)?;
        let ids: Vec<String> = rps.iter().map(|r| r.id.clone()).collect();
        self.catalog
            .record_damage(&vault.config().vault_id, &ids, &found)?;
        Ok(())
    }
}

/// Checks the recovery points `rps` of one vault; returns the chunks it checked.
/// A zone-redundant vault's copies, compared: every checked chunk and each point's manifest
/// and indexes is read at each location, and a copy that is missing or fails the keyless
/// check there is written again from one that passes it. Returns what was repaired.
fn repair_copies(
    vault: &Vault,
    rps: &[RpRow],
    objects: &[String],
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let copies = vault.backend().copies();
    if copies.len() < 2 {
        return Ok(Vec::new());
    }
    let mut keys: Vec<String> = objects.to_vec();
    for rp in rps {
        keys.extend(vault.backend().list(&format!("rps/{}/", rp.id))?);
    }
    progress.start("compare the locations", keys.len() as u64);
    let mut repaired = Vec::new();
    for key in &keys {
        crate::progress::check_cancel(progress)?;
        let mut good = None;
        let mut lacking = Vec::new();
        for c in &copies {
            match c.get(key) {
                Ok(b) if kura_store::blob::check_stored(key, &b).is_ok() => {
                    good.get_or_insert(b);
                }
                Ok(_) => lacking.push(c),
                Err(e) if e.is_not_found() => lacking.push(c),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(bytes) = good {
            for c in lacking {
                c.put(key, bytes.clone())?;
                repaired.push(format!("{key} at {}", c.location()));
            }
        }
        progress.advance(1);
    }
    for c in &copies {
        c.sync()?;
    }
    progress.finish();
    Ok(repaired)
}

/// What one vault's verify checked.
struct Checked {
    /// Every chunk id checked, wherever it is stored.
    chunks: HashSet<ChunkId>,
    /// The keys of the objects read: chunks of their own and packs.
    objects: Vec<String>,
}

/// One unit of a verify's work: a chunk of its own object, or a pack read once for all of
/// its chunks the points use.
enum Unit {
    Chunk(ChunkId, Vec<u32>),
    Pack(PackId, Vec<(ChunkRef, Vec<u32>)>),
}

fn verify_vault(
    vault: &Vault,
    rps: &[RpRow],
    report: &mut VerifyReport,
    progress: &dyn Progress,
) -> Result<Checked> {
    // chunk -> indexes of the recovery points that use it
    let mut users: HashMap<ChunkRef, Vec<u32>> = HashMap::new();
    for (n, rp) in rps.iter().enumerate() {
        report.recovery_points += 1;
        let problem = |object: String, e: &kura_store::Error| VerifyProblem {
            object,
            problem: if matches!(e, kura_store::Error::Missing { .. }) {
                "missing"
            } else {
                "corrupt"
            }
            .into(),
            detail: e.to_string(),
            recovery_points: vec![rp.id.clone()],
        };
        let manifest = match vault.get_manifest(&rp.id) {
            Ok(m) => m,
            Err(e) => {
                report
                    .problems
                    .push(problem(format!("manifest of recovery point {}", rp.id), &e));
                continue;
            }
        };
        // Each disk's and tree's index on its own, so one damaged index is one problem.
        let lists = vault.point_chunks(&manifest);
        for (key, list) in lists {
            match list {
                Ok(chunks) => {
                    for r in chunks {
                        let list = users.entry(r).or_default();
                        if list.last() != Some(&(n as u32)) {
                            list.push(n as u32);
                        }
                    }
                }
                Err(e) => report.problems.push(problem(format!("index {key}"), &e)),
            }
        }
    }
    report.chunks_checked += users.len();
    let mut checked = Checked {
        chunks: users.keys().map(|r| r.id).collect(),
        objects: Vec::new(),
    };
    let mut units = Vec::new();
    let mut packs: HashMap<PackId, Vec<(ChunkRef, Vec<u32>)>> = HashMap::new();
    for (r, used_by) in users {
        match r.packed {
            Some(at) => packs.entry(at.pack).or_default().push((r, used_by)),
            None => units.push(Unit::Chunk(r.id, used_by)),
        }
    }
    checked.objects = units
        .iter()
        .filter_map(|u| match u {
            Unit::Chunk(id, _) => Some(id.key()),
            Unit::Pack(..) => None,
        })
        .chain(packs.keys().map(PackId::key))
        .collect();
    units.extend(packs.into_iter().map(|(p, refs)| Unit::Pack(p, refs)));
    let total: usize = units
        .iter()
        .map(|u| match u {
            Unit::Chunk(..) => 1,
            Unit::Pack(_, refs) => refs.len(),
        })
        .sum();
    let bad: Mutex<Vec<VerifyProblem>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    let names = |used_by: &[u32]| -> Vec<String> {
        used_by
            .iter()
            .map(|&i| rps[i as usize].id.clone())
            .collect()
    };
    let verdict = |outcome: kura_store::Result<Vec<u8>>| -> std::result::Result<Option<(&'static str, String)>, kura_store::Error> {
        match outcome {
            Ok(_) => Ok(None),
            Err(kura_store::Error::Missing { .. }) => {
                Ok(Some(("missing", "not found in the vault".to_string())))
            }
            Err(kura_store::Error::Corrupt { reason, .. }) => Ok(Some(("corrupt", reason))),
            Err(e) => Err(e),
        }
    };
    progress.start(
        "verify chunks",
        total as u64 * u64::from(vault.config().chunk_size),
    );
    std::thread::scope(|s| {
        for _ in 0..io_workers(vault.backend().as_ref()) {
            s.spawn(|| {
                let mut codec = vault.codec();
                let found = |object: String, (problem, detail): (&str, String), used_by: &[u32]| {
                    bad.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(VerifyProblem {
                            object,
                            problem: problem.into(),
                            detail,
                            recovery_points: names(used_by),
                        });
                };
                // Storage failures are not verdicts about a chunk: they stop the verify.
                let stop = |e: kura_store::Error| {
                    fatal
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e.into());
                };
                loop {
                    if fatal.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        break;
                    }
                    if let Err(e) = crate::progress::check_cancel(progress) {
                        fatal
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let Some(unit) = units.get(n) else {
                        break;
                    };
                    match unit {
                        Unit::Chunk(id, used_by) => {
                            let outcome = vault.get_chunk(id, &mut codec);
                            progress.advance(u64::from(vault.config().chunk_size));
                            crate::hooks::gate("verify_chunk");
                            match verdict(outcome) {
                                Ok(None) => {}
                                Ok(Some(v)) => found(format!("chunk {id}"), v, used_by),
                                Err(e) => {
                                    stop(e);
                                    break;
                                }
                            }
                        }
                        Unit::Pack(pack, refs) => {
                            // One read for the whole pack, then each chunk checked in it.
                            let stored = match vault.get_pack(pack) {
                                Ok(b) => Some(b),
                                Err(kura_store::Error::Missing { .. }) => None,
                                Err(e) => {
                                    stop(e);
                                    break;
                                }
                            };
                            if let Some(b) = &stored
                                && let Err(e) = kura_store::pack::pack_entries(&mut codec, pack, b)
                            {
                                let mut all: Vec<u32> =
                                    refs.iter().flat_map(|(_, u)| u.clone()).collect();
                                all.sort_unstable();
                                all.dedup();
                                found(
                                    format!("pack {pack}"),
                                    ("corrupt", format!("its header: {e}")),
                                    &all,
                                );
                            }
                            for (r, used_by) in refs {
                                let at = r.packed.expect("a packed chunk");
                                let outcome = match &stored {
                                    None => Err(kura_store::Error::Missing {
                                        object: format!("pack {pack}"),
                                    }),
                                    Some(b) => match b.get(
                                        at.offset as usize
                                            ..(at.offset as usize).saturating_add(at.len as usize),
                                    ) {
                                        Some(blob) => codec.decode_chunk(&r.id, blob.to_vec()),
                                        None => Err(kura_store::Error::corrupt(
                                            format!("chunk {}", r.id),
                                            format!("pack {pack} is shorter than its index says"),
                                        )),
                                    },
                                };
                                // A damaged packed copy that a backup healed reads from
                                // the chunk's own object: the point is whole again.
                                let outcome =
                                    vault.get_packed_or_healed(&r.id, outcome, &mut codec);
                                progress.advance(u64::from(vault.config().chunk_size));
                                match verdict(outcome) {
                                    Ok(None) => {}
                                    Ok(Some((problem, detail))) => {
                                        let detail = if stored.is_none() {
                                            format!("its pack {pack} is not found in the vault")
                                        } else {
                                            format!("in pack {pack}: {detail}")
                                        };
                                        found(format!("chunk {}", r.id), (problem, detail), used_by)
                                    }
                                    Err(e) => {
                                        stop(e);
                                        break;
                                    }
                                }
                            }
                            crate::hooks::gate("verify_chunk");
                        }
                    }
                }
            });
        }
    });
    progress.finish();
    if let Some(e) = fatal.into_inner().unwrap_or_else(|e| e.into_inner()) {
        if e.kind() == ErrorKind::Cancelled {
            return Err(e);
        }
        return Err(Error::new(
            ErrorKind::Other,
            format!("verification stopped: {e}"),
        ));
    }
    let mut bad = bad.into_inner().unwrap_or_else(|e| e.into_inner());
    bad.sort_by(|a, b| a.object.cmp(&b.object));
    report.problems.extend(bad);
    Ok(checked)
}
