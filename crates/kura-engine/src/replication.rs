//! Geo redundancy (Azure's GRS, on storage the user owns): a vault with an asynchronous
//! replica at a second location. Backups write the primary only; a replication job (after
//! each backup, at scheduler ticks, `kura vault replicate`) copies what the replica lacks,
//! chunks first and manifests last, so a point appears there only once everything it uses
//! is there, and removes what the primary no longer holds (expired, purged, collected), so
//! retention and soft delete are mirrored. The replica is a whole vault: `vault attach
//! --location REPLICA` reads it alone, and `restore --from-replica` reads from it.
//! Replication copies stored objects as they are: it needs no key.

use std::collections::{HashMap, HashSet};

use kura_backend::{Backend, Location};
use kura_catalog::{JobOperation, VaultRow};
use serde::Serialize;

use crate::home::location_of;
use crate::{Error, ErrorKind, Home, Progress, Result};

/// What a replication did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicationReport {
    /// The job.
    pub job_id: String,
    /// The replica's location.
    pub replica: String,
    /// Objects copied to the replica.
    pub copied_objects: u64,
    /// Their bytes.
    pub copied_bytes: u64,
    /// Objects removed from the replica (the primary no longer holds them).
    pub deleted_objects: u64,
}

/// How far a geo replica is behind.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationLag {
    /// The replica's location.
    pub replica: String,
    /// When it last caught up (the start of that replication); `None`: never.
    pub replicated_at: Option<String>,
    /// Recovery points made since, which the replica may lack.
    pub points_behind: usize,
    /// Their stored bytes.
    pub bytes_behind: u64,
}

impl Home {
    /// Brings a geo-redundant vault's replica up to date, as a job.
    pub fn replicate(
        &self,
        vault: &str,
        job_id: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<ReplicationReport> {
        let row = self.catalog.vault(vault)?;
        let replica = geo_replica(&row)?;
        let started = kura_catalog::stamp(self.now());
        let (job_id, report) = self.run_job(
            JobOperation::Replicate,
            &row.name,
            true,
            job_id,
            progress,
            |job| {
                let primary = self.open_location(&location_of(&row)?)?;
                let second = self.open_location(&replica)?;
                let mut report = copy_vault(primary.as_ref(), second.as_ref(), job)?;
                report.replica = replica.to_string();
                job.message(&format!(
                    "{} objects ({} bytes) copied to {replica}, {} removed there",
                    report.copied_objects, report.copied_bytes, report.deleted_objects
                ));
                Ok((report, None))
            },
        )?;
        self.catalog.set_replicated(&row.id, &started)?;
        Ok(ReplicationReport { job_id, ..report })
    }

    /// Opens a vault at its replica (cross-region restore: `--from-replica`): the geo
    /// replica, or the second location of a zone-redundant vault.
    pub(crate) fn open_vault_replica(
        &self,
        row: &VaultRow,
        secrets: &crate::Secrets,
    ) -> Result<kura_store::Vault> {
        let replica = match (&row.replica, row.redundancy.as_str()) {
            (Some(r), "zone") => Location::parse(r)
                .map_err(|e| Error::new(ErrorKind::Invalid, format!("replica: {e}")))?,
            _ => geo_replica(row)?,
        };
        let backend = self.open_location(&replica)?;
        if backend.stat("config")?.is_none() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "vault {:?}: its replica {replica} holds no vault yet",
                    row.name
                ),
            ));
        }
        self.open_vault_on(row, backend, secrets)
    }

    /// Changes a vault's redundancy, which is possible only until the first item is
    /// protected in it (Azure's rule: the data already stored would have one copy). A new
    /// replica must be empty; it gets the vault's objects (its config and policies) at once.
    pub fn set_redundancy(
        &self,
        vault: &str,
        redundancy: &str,
        replica: Option<&str>,
    ) -> Result<()> {
        let row = self.catalog.vault(vault)?;
        let items = self.catalog.list_items(Some(&row.id))?.len();
        if items > 0 {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "vault {vault:?}: its redundancy is fixed once an item is protected in it (it has {items}); \
                     make a new vault with the redundancy wanted and protect the items there"
                ),
            ));
        }
        let wanted = crate::requested_replica(Some(redundancy), replica)?;
        let (kind, replica) = match wanted {
            None => ("local", None),
            Some((loc, geo)) => {
                let loc = match loc {
                    Location::Fs(p) => Location::Fs(
                        std::path::absolute(&p)
                            .map_err(|e| Error::io(format!("replica {}", p.display()), e))?,
                    ),
                    other => other,
                };
                if loc == location_of(&row)? {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        "replica: a redundant vault needs a second location, not the same one",
                    ));
                }
                let second = match (self.check_new_location(&loc)?, loc.as_path()) {
                    (Some(remote), _) => remote,
                    (None, Some(dir)) => crate::home::open_new_vault_dir(dir)?.0,
                    (None, None) => unreachable!("only a directory is checked without opening"),
                };
                let primary = self.open_location(&location_of(&row)?)?;
                copy_vault(primary.as_ref(), second.as_ref(), &crate::NoProgress)?;
                (if geo { "geo" } else { "zone" }, Some(loc.to_string()))
            }
        };
        self.catalog
            .set_redundancy(&row.id, kind, replica.as_deref())?;
        if kind == "geo" {
            self.catalog
                .set_replicated(&row.id, &kura_catalog::stamp(self.now()))?;
        }
        Ok(())
    }

    /// Opens a vault at its location, or at its replica when `from_replica`.
    pub(crate) fn open_vault_for(
        &self,
        row: &VaultRow,
        secrets: &crate::Secrets,
        from_replica: bool,
    ) -> Result<kura_store::Vault> {
        if from_replica {
            self.open_vault_replica(row, secrets)
        } else {
            self.open_vault_row(row, secrets)
        }
    }

    /// What the API checks before it hands out a replication job id: the vault exists and
    /// has a geo replica.
    pub fn check_replicate(&self, vault: &str) -> Result<()> {
        geo_replica(&self.catalog.vault(vault)?).map(drop)
    }

    /// A geo-redundant vault's lag, from the catalog (no request to either location).
    pub(crate) fn replication_lag(&self, row: &VaultRow) -> Result<Option<ReplicationLag>> {
        let Ok(replica) = geo_replica(row) else {
            return Ok(None);
        };
        let replicated_at = self.catalog.replicated_at(&row.id)?;
        let mut points_behind = 0;
        let mut bytes_behind = 0;
        for item in self.catalog.list_items(Some(&row.id))? {
            for rp in self.catalog.list_rps(&item.id)? {
                let newer = replicated_at
                    .as_deref()
                    .is_none_or(|at| rp.time.as_str() > at);
                if newer && rp.tier != "snapshot" {
                    points_behind += 1;
                    bytes_behind += rp.stored_size;
                }
            }
        }
        Ok(Some(ReplicationLag {
            replica: replica.to_string(),
            replicated_at,
            points_behind,
            bytes_behind,
        }))
    }

    /// After a backup or a deletion in a geo-redundant vault: replicate now. A replica that
    /// cannot be reached fails its own job (the lag shows it); the work that led here stands.
    pub(crate) fn replicate_after(&self, row: &VaultRow, progress: &dyn Progress) {
        if row.redundancy == "geo" {
            let _ = self.replicate(&row.name, None, progress);
        }
    }
}

/// The replica of a geo-redundant vault.
pub(crate) fn geo_replica(row: &VaultRow) -> Result<Location> {
    match (&row.replica, row.redundancy.as_str()) {
        (Some(r), "geo") => Location::parse(r).map_err(|e| {
            Error::new(
                ErrorKind::Invalid,
                format!("vault {:?} replica: {e}", row.name),
            )
        }),
        _ => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "vault {:?} is not geo-redundant (it has no asynchronous replica)",
                row.name
            ),
        )),
    }
}

/// The order objects reach the replica in: chunks and packs, then indexes, then records,
/// manifests last.
fn rank(key: &str) -> u8 {
    if key.starts_with("chunks/") || key.starts_with("packs/") {
        0
    } else if key.starts_with("rps/") && !key.ends_with("/manifest") {
        1
    } else if !key.starts_with("rps/") {
        2
    } else {
        3
    }
}

/// Copies to `to` what it lacks of `from` and removes from it what `from` no longer holds.
fn copy_vault(
    from: &dyn Backend,
    to: &dyn Backend,
    progress: &dyn Progress,
) -> Result<ReplicationReport> {
    let here = from.list_sizes("")?;
    let there: HashMap<String, u64> = to.list_sizes("")?.into_iter().collect();
    // Chunks, packs and a point's objects never change once written: copied when missing. Item
    // records, health records, policies and the config can: copied every time (small).
    let mut todo: Vec<&(String, u64)> = here
        .iter()
        .filter(|(k, size)| {
            let immutable =
                k.starts_with("chunks/") || k.starts_with("packs/") || k.starts_with("rps/");
            !immutable || there.get(k) != Some(size)
        })
        .collect();
    todo.sort_by_key(|(k, _)| rank(k));
    let mut report = ReplicationReport::default();
    progress.start("replicate", todo.iter().map(|(_, s)| s).sum());
    let mut last_rank = 0;
    for (key, size) in todo {
        crate::progress::check_cancel(progress)?;
        if rank(key) != last_rank {
            // What the next kind of object refers to is durable first.
            to.sync()?;
            last_rank = rank(key);
        }
        let data = match from.get(key) {
            Ok(d) => d,
            // Removed since the listing (GC, retention): the next replication removes it.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        to.put(key, data)?;
        report.copied_objects += 1;
        report.copied_bytes += size;
        progress.advance(*size);
    }
    to.sync()?;
    // What the primary no longer holds: manifests first, so a point disappears whole.
    let held: HashSet<&str> = here.iter().map(|(k, _)| k.as_str()).collect();
    let mut gone: Vec<&String> = there
        .keys()
        .filter(|k| !held.contains(k.as_str()))
        .collect();
    gone.sort_by_key(|k| std::cmp::Reverse(rank(k)));
    for key in gone {
        crate::progress::check_cancel(progress)?;
        to.delete(key)?;
        report.deleted_objects += 1;
    }
    to.sync()?;
    progress.finish();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_backend::MemoryBackend;

    #[test]
    fn a_replica_gets_what_it_lacks_and_loses_what_the_vault_no_longer_holds() {
        let (vault, replica) = (MemoryBackend::default(), MemoryBackend::default());
        for (k, v) in [
            ("config", "c"),
            ("chunks/aa/1", "one"),
            ("chunks/bb/2", "two"),
            ("rps/r1/disk0.index", "i1"),
            ("rps/r1/manifest", "m1"),
            ("items/x", "protected"),
        ] {
            vault.put(k, v.into()).unwrap();
        }
        let r = copy_vault(&vault, &replica, &crate::NoProgress).unwrap();
        assert_eq!((r.copied_objects, r.deleted_objects), (6, 0));
        assert_eq!(replica.list("").unwrap(), vault.list("").unwrap());

        // Unchanged immutable objects are not sent again; a changed record is.
        vault.put("items/x", b"stopped".to_vec()).unwrap();
        let r = copy_vault(&vault, &replica, &crate::NoProgress).unwrap();
        assert_eq!(
            r.copied_objects, 2,
            "the item record and the config, small and mutable"
        );
        assert_eq!(replica.get("items/x").unwrap(), b"stopped");

        // Retention deleted the point and GC its chunk: the replica follows.
        vault.delete("rps/r1/manifest").unwrap();
        vault.delete("rps/r1/disk0.index").unwrap();
        vault.delete("chunks/bb/2").unwrap();
        let r = copy_vault(&vault, &replica, &crate::NoProgress).unwrap();
        assert_eq!(r.deleted_objects, 3);
        assert_eq!(replica.list("").unwrap(), vault.list("").unwrap());
    }

    #[test]
    fn manifests_go_last_and_leave_first() {
        assert!(rank("chunks/aa/1") < rank("rps/r/disk0.index"));
        assert!(rank("packs/aa/1") < rank("rps/r/files.tree"));
        assert!(rank("rps/r/disk0.index") < rank("items/x"));
        assert!(rank("items/x") < rank("rps/r/manifest"));
    }
}
