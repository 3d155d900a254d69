use jiff::civil::Date;
use jiff::{Span, Zoned};
use serde::Serialize;

use crate::{Policy, rfc3339};

/// A backup the simulated schedule took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimulatedRun {
    /// When (RFC 3339 with offset).
    pub time: String,
    /// `snapshot` or `snapshot+vault`.
    pub tier: &'static str,
}

/// A recovery point that still exists at the end of the simulation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Survivor {
    /// When it was taken (RFC 3339 with offset).
    pub time: String,
    /// Its GFS tags; `snapshot` for a snapshot-only point.
    pub tags: Vec<&'static str>,
    /// When it expires (RFC 3339 with offset).
    pub expires: String,
}

/// What a policy does over a span of days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Simulation {
    /// The policy's time zone.
    pub time_zone: String,
    /// Start of the first simulated day.
    pub from: String,
    /// Start of the day after the last simulated day: when survival is judged.
    pub until: String,
    /// Every backup, in order.
    pub runs: Vec<SimulatedRun>,
    /// The recovery points that exist at `until`, oldest first.
    pub surviving: Vec<Survivor>,
}

/// Runs `policy` over `days` days from the start of `from` (in its zone) and reports the
/// backups taken and the recovery points that still exist at the start of the next day.
/// Every backup is assumed to succeed.
pub fn simulate(policy: &Policy, from: Date, days: u32) -> Result<Simulation, jiff::Error> {
    let start = from.to_zoned(policy.tz.clone())?;
    let until = from
        .checked_add(Span::new().days(i64::from(days)))?
        .to_zoned(policy.tz.clone())?;
    let runs = policy.runs(start.timestamp(), until.timestamp());
    let points: Vec<(Zoned, crate::Retained)> = runs
        .iter()
        .map(|r| (r.time.clone(), policy.retain(&r.time, r.vault)))
        .collect();
    let surviving = points
        .iter()
        .enumerate()
        .filter(|(i, (_, kept))| kept.exists_at(&until) || *i + 1 == points.len())
        .map(|(_, (time, kept))| Survivor {
            time: rfc3339(time),
            tags: if kept.vault_expires.is_some() {
                kept.tags.clone()
            } else {
                vec!["snapshot"]
            },
            expires: rfc3339(kept.expires()),
        })
        .collect();
    Ok(Simulation {
        time_zone: policy.time_zone.clone(),
        from: rfc3339(&start),
        until: rfc3339(&until),
        runs: runs
            .iter()
            .map(|r| SimulatedRun {
                time: rfc3339(&r.time),
                tier: if r.vault {
                    "snapshot+vault"
                } else {
                    "snapshot"
                },
            })
            .collect(),
        surviving,
    })
}
