//! The usage report: protected size and Azure-style protected-instance count per item;
//! logical size, stored size and the dedup/compression ratio per item and vault.

use jiff::{SignedDuration, Timestamp};
use kura_catalog::VaultRow;
use serde::Serialize;

use crate::{Home, Result};

/// How far back the storage trend goes.
const TREND_DAYS: i64 = 90;
/// How far back the growth rate (and so the "estimated full" date) is fitted.
const GROWTH_DAYS: i64 = 30;

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
    /// Bytes of all chunk objects and packs in the vault's storage now (the last
    /// measurement when its storage cannot be reached).
    pub stored_bytes: u64,
    /// logical / stored.
    pub ratio: f64,
    /// Per item.
    pub items: Vec<ItemUsage>,
    /// Why the storage could not be measured now, in a listing of every vault (one
    /// unreachable vault does not hide the others).
    pub unreachable: Option<String>,
}

/// A vault's storage over time, and when its file system would fill up.
#[derive(Debug, Clone, Serialize)]
pub struct VaultTrend {
    /// Vault name.
    pub vault: String,
    /// The vault's stored size over the last 90 days, one measurement per day (the day's
    /// last), oldest first: measured after each garbage collection, and grown by what each
    /// backup added.
    pub samples: Vec<UsageSample>,
    /// The file system the vault lives on, when it is a local directory.
    pub filesystem: Option<FsSpace>,
    /// Growth of the stored size, bytes per day, fitted over the last 30 days' measurements
    /// (at least two, a day or more apart).
    pub growth_bytes_per_day: Option<f64>,
    /// When the file system would be full if the vault keeps growing at that rate (only
    /// when it grows and the file system is known).
    pub estimated_full: Option<String>,
}

/// The stored size of a vault at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageSample {
    /// When it was measured.
    pub at: String,
    /// Bytes of chunk objects then.
    pub stored_bytes: u64,
}

/// Size and free space of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FsSpace {
    /// Its size.
    pub total_bytes: u64,
    /// Bytes an unprivileged writer can still use.
    pub available_bytes: u64,
}

/// The growth rate (bytes per day, least squares) of `samples` and, with the space still
/// available at `now`, when it runs out. `None` for the rate with fewer than two samples
/// or less than a day between the first and the last; no date unless the vault grows.
pub fn estimate_full(
    samples: &[(Timestamp, u64)],
    available: Option<u64>,
    now: Timestamp,
) -> (Option<f64>, Option<Timestamp>) {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return (None, None);
    };
    if last.0.duration_since(first.0) < SignedDuration::from_hours(24) {
        return (None, None);
    }
    let days = |t: Timestamp| t.duration_since(first.0).as_secs_f64() / 86_400.0;
    let n = samples.len() as f64;
    let mean_x = samples.iter().map(|s| days(s.0)).sum::<f64>() / n;
    let mean_y = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for s in samples {
        let dx = days(s.0) - mean_x;
        sxy += dx * (s.1 as f64 - mean_y);
        sxx += dx * dx;
    }
    let slope = sxy / sxx;
    let full = match available {
        Some(free) if slope > 0.0 => {
            let secs = (free as f64 / slope * 86_400.0).min(100.0 * 365.0 * 86_400.0);
            now.checked_add(SignedDuration::from_secs(secs as i64)).ok()
        }
        _ => None,
    };
    (Some((slope * 10.0).round() / 10.0), full)
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
            let (stored_bytes, unreachable) = match self.measure_stored(&v) {
                Ok(b) => (b, None),
                Err(e) if vault.is_none() => {
                    let last = self
                        .catalog
                        .vault_usage_since(&v.id, "")?
                        .last()
                        .map(|s| s.1);
                    (last.unwrap_or(0), Some(e.to_string()))
                }
                Err(e) => return Err(e),
            };
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
                unreachable,
            });
        }
        Ok(out)
    }

    /// Bytes of all chunk objects and packs in a vault's storage now.
    fn measure_stored(&self, v: &VaultRow) -> Result<u64> {
        let backend = self.backend_of(v)?;
        let mut total = 0;
        for prefix in ["chunks/", "packs/"] {
            total += backend
                .list_sizes(prefix)?
                .iter()
                .map(|(_, size)| size)
                .sum::<u64>();
        }
        Ok(total)
    }

    /// A vault's storage trend, its file system, growth and estimated full date.
    pub fn vault_trend(&self, vault: &str) -> Result<VaultTrend> {
        let v = self.catalog.vault(vault)?;
        let now = self.now();
        let since = |days: i64| {
            now.checked_sub(SignedDuration::from_hours(24 * days))
                .map(kura_catalog::stamp)
                .unwrap_or_default()
        };
        let all = self.catalog.vault_usage_since(&v.id, &since(TREND_DAYS))?;
        // The last measurement of each day.
        let mut samples: Vec<UsageSample> = Vec::new();
        for (at, stored_bytes) in all {
            let sample = UsageSample { at, stored_bytes };
            match samples.last_mut() {
                Some(l) if l.at.get(..10) == sample.at.get(..10) => *l = sample,
                _ => samples.push(sample),
            }
        }
        // A directory's file system; an object store has no size to fill.
        let filesystem = crate::home::location_of(&v)?
            .as_path()
            .and_then(|dir| rustix::fs::statvfs(dir).ok())
            .map(|st| FsSpace {
                total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
                available_bytes: st.f_bavail.saturating_mul(st.f_frsize),
            });
        let recent: Vec<(Timestamp, u64)> = self
            .catalog
            .vault_usage_since(&v.id, &since(GROWTH_DAYS))?
            .into_iter()
            .filter_map(|(at, b)| Some((at.parse().ok()?, b)))
            .collect();
        let (growth, full) = estimate_full(&recent, filesystem.map(|f| f.available_bytes), now);
        Ok(VaultTrend {
            vault: v.name,
            samples,
            filesystem,
            growth_bytes_per_day: growth,
            estimated_full: full.map(kura_catalog::stamp),
        })
    }

    /// Records a vault's stored size for its trend: measured when `added` is `None` (after a
    /// garbage collection), else the last measurement grown by `added` bytes (after a
    /// backup; measured when there is none yet). A failure is the caller's to log: the
    /// trend never fails the job.
    pub(crate) fn note_vault_usage(&self, v: &VaultRow, added: Option<u64>) -> Result<()> {
        let stored = match (added, self.catalog.last_vault_usage(&v.id)?) {
            (Some(a), Some((_, last))) => last.saturating_add(a),
            _ => self.measure_stored(v)?,
        };
        self.catalog
            .record_vault_usage(&v.id, &kura_catalog::stamp(self.now()), stored)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_full_date_follows_the_fitted_growth() {
        let now = at("2026-03-10T00:00:00Z");
        // 1 GiB a day for ten days, with 20 GiB left: full in 20 days.
        let gib = 1u64 << 30;
        let days: Vec<_> = (0..10)
            .map(|d| {
                (
                    at("2026-03-01T00:00:00Z") + SignedDuration::from_hours(24 * d),
                    (d as u64 + 5) * gib,
                )
            })
            .collect();
        let (rate, full) = estimate_full(&days, Some(20 * gib), now);
        assert_eq!(rate, Some(gib as f64));
        assert_eq!(full, Some(at("2026-03-30T00:00:00Z")));
        // Shrinking or flat: a rate, no date; no file system known: no date.
        let flat: Vec<_> = days.iter().map(|(t, _)| (*t, 7 * gib)).collect();
        assert_eq!(estimate_full(&flat, Some(gib), now), (Some(0.0), None));
        assert_eq!(estimate_full(&days, None, now).1, None);
        // Less than a day of measurements is not a trend.
        let short = [
            (at("2026-03-01T00:00:00Z"), 1),
            (at("2026-03-01T12:00:00Z"), 9),
        ];
        assert_eq!(estimate_full(&short, Some(gib), now), (None, None));
        assert_eq!(estimate_full(&[], Some(gib), now), (None, None));
    }

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
