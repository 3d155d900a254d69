//! kura's backup policies.
//!
//! A policy says when an item is backed up and how long each recovery point is kept, with
//! Azure Backup's rules (see `docs/policies.md`):
//!
//! - [`PolicyDoc`]: the JSON document users write (the API and `--file` take the same shape);
//! - [`Policy`]: a validated policy. [`Policy::parse`] and [`PolicyDoc::validate`] name every
//!   wrong field and its allowed range;
//! - [`Policy::runs`]: the backups a schedule takes between two instants, evaluated in
//!   wall-clock time in the policy's IANA time zone, with the DST rule: a nonexistent local
//!   time runs shifted forward by the gap, a repeated one runs once, at the earlier instant;
//! - [`Policy::retain`]: the GFS tags and expiry of a recovery point taken at an instant;
//! - [`simulate`]: what a policy would do over a span of days, and what would still exist at
//!   the end. The retention planner uses the same functions.
//!
//! This crate is pure computation: no I/O, no clock (callers pass instants).
//!
//! ```
//! let p = kura_policy::Policy::default_policy();
//! let sim = kura_policy::simulate(&p, "2026-01-01".parse().unwrap(), 60).unwrap();
//! assert_eq!(sim.runs.len(), 60);
//! assert_eq!(sim.surviving.len(), 30); // daily points are kept 30 days
//! ```

mod doc;
mod retention;
mod schedule;
mod simulate;
mod validate;

pub use doc::{DailyDoc, MonthlyDoc, PolicyDoc, RetentionDoc, ScheduleDoc, WeeklyDoc, YearlyDoc};
pub use retention::Retained;
pub use schedule::Run;
pub use simulate::{SimulatedRun, Simulation, Survivor, simulate};
pub use validate::{
    DaySelector, FieldError, MonthDay, Policy, PolicyError, Retention, Schedule, WeekOfMonth,
};

/// The name of the policy every vault has.
pub const DEFAULT_POLICY: &str = "DefaultPolicy";

/// Formats an instant as RFC 3339 with the zone's offset, e.g. `2026-03-29T03:30:00+02:00`.
pub fn rfc3339(z: &jiff::Zoned) -> String {
    z.timestamp().display_with_offset(z.offset()).to_string()
}
