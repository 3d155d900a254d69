//! The usage report: protected size and Azure-style protected-instance count per item;
//! logical size, stored size and the dedup/compression ratio per item and vault.

use serde::Serialize;

use crate::{Home, Result};

const GB: u64 = 1_000_000_000;

/// Usage of one item.
#[derive(Debug, Clone, Serialize)]
pub struct ItemUsage {
    /// Item name.
    pub item: String,
    /// Protection state.
    pub state: String,
    /// Used (allocated) bytes of its disks at the latest backup.
    pub protected_bytes: u64,
    /// Azure's protected-instance tier: `small` (up to 50 GB), then instances of 500 GB.
    pub instance_tier: &'static str,
    /// Billable protected instances (`small` counts as one small instance).
    pub protected_instances: u64,
    /// Recovery points.
    pub recovery_points: usize,
    /// Used bytes summed over its recovery points (what they would take without dedup).
    pub logical_bytes: u64,
    /// Stored bytes its backups added to the vault (after dedup, compression, encryption).
    pub stored_bytes: u64,
    /// logical / stored.
    pub ratio: f64,
}

/// Usage of one vault.
#[derive(Debug, Clone, Serialize)]
pub struct VaultUsage {
    /// Vault name.
    pub vault: String,
    /// Sum of the items' logical bytes.
    pub logical_bytes: u64,
    /// Bytes of all chunk objects in the vault storage now.
    pub stored_bytes: u64,
    /// logical / stored.
    pub ratio: f64,
    /// Per item.
    pub items: Vec<ItemUsage>,
}

/// `small` up to 50 GB, one instance up to 500 GB, one more per started 500 GB above.
pub fn protected_instances(bytes: u64) -> (&'static str, u64) {
    if bytes <= 50 * GB {
        ("small", 1)
    } else {
        ("standard", bytes.div_ceil(500 * GB))
    }
}

fn ratio(logical: u64, stored: u64) -> f64 {
    if stored == 0 {
        0.0
    } else {
        (logical as f64 / stored as f64 * 100.0).round() / 100.0
    }
}

impl Home {
    /// Usage of every vault, or of one.
    pub fn usage(&self, vault: Option<&str>) -> Result<Vec<VaultUsage>> {
        let vaults = match vault {
            Some(v) => vec![self.catalog.vault(v)?],
            None => self.catalog.list_vaults()?,
        };
        let mut out = Vec::new();
        for v in vaults {
            let backend = kura_backend::FsBackend::open(std::path::Path::new(&v.path))?;
            let mut stored_bytes = 0;
            for key in kura_backend::Backend::list(&backend, "chunks/")? {
                stored_bytes += kura_backend::Backend::stat(&backend, &key)?.unwrap_or(0);
            }
            let mut items = Vec::new();
            let totals = self.catalog.rp_totals(&v.id)?;
            for item in self.catalog.list_items(Some(&v.id))? {
                let t = totals.get(&item.id).copied().unwrap_or_default();
                let protected_bytes = t.newest_used_bytes;
                let (logical, stored) = (t.used_bytes, t.stored_bytes);
                let (tier, instances) = protected_instances(protected_bytes);
                items.push(ItemUsage {
                    item: item.name,
                    state: item.state,
                    protected_bytes,
                    instance_tier: tier,
                    protected_instances: instances,
                    recovery_points: t.points,
                    logical_bytes: logical,
                    stored_bytes: stored,
                    ratio: ratio(logical, stored),
                });
            }
            let logical_bytes = items.iter().map(|i| i.logical_bytes).sum();
            out.push(VaultUsage {
                vault: v.name,
                logical_bytes,
                stored_bytes,
                ratio: ratio(logical_bytes, stored_bytes),
                items,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_tiers_follow_azure() {
        assert_eq!(protected_instances(0), ("small", 1));
        assert_eq!(protected_instances(50 * GB), ("small", 1));
        assert_eq!(protected_instances(50 * GB + 1), ("standard", 1));
        assert_eq!(protected_instances(500 * GB), ("standard", 1));
        assert_eq!(protected_instances(500 * GB + 1), ("standard", 2));
        assert_eq!(protected_instances(1200 * GB), ("standard", 3));
    }
}
