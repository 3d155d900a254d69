use jiff::civil::{Date, DateTime};
use jiff::{Span, Timestamp, Zoned};

use crate::validate::{Policy, Schedule};

/// One backup a schedule takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// When, in the policy's time zone.
    pub time: Zoned,
    /// Whether this run is transferred to the vault (every run of a standard policy; the
    /// last run of each local day of an hourly policy). Every run takes a snapshot.
    pub vault: bool,
}

impl Policy {
    /// The backups the schedule takes at instants in `from..to`, in order.
    ///
    /// Times are wall-clock times in the policy's zone. A local time that does not exist (a
    /// DST gap) runs shifted forward by the gap's length (02:30 becomes 03:30); a local time
    /// that happens twice (a DST overlap) runs once, at the earlier instant. Two local times
    /// that land on the same instant run once.
    pub fn runs(&self, from: Timestamp, to: Timestamp) -> Vec<Run> {
        if from >= to {
            return Vec::new();
        }
        let first = from
            .to_zoned(self.tz.clone())
            .date()
            .yesterday()
            .unwrap_or(Date::MIN);
        let last = to
            .to_zoned(self.tz.clone())
            .date()
            .tomorrow()
            .unwrap_or(Date::MAX);
        let mut times: Vec<Zoned> = Vec::new();
        let mut day = first;
        while day <= last {
            for dt in self.local_times(day) {
                if let Ok(z) = self.tz.to_ambiguous_zoned(dt).compatible() {
                    times.push(z);
                }
            }
            match day.tomorrow() {
                Ok(d) => day = d,
                Err(_) => break,
            }
        }
        times.sort_by_key(|z| z.timestamp());
        times.dedup_by_key(|z| z.timestamp());
        let hourly = matches!(self.schedule, Schedule::Hourly { .. });
        let mut runs: Vec<Run> = Vec::with_capacity(times.len());
        for (i, time) in times.iter().enumerate() {
            // Hourly: the last run of each local calendar day goes to the vault.
            let vault = !hourly
                || times
                    .get(i + 1)
                    .is_none_or(|next| next.date() != time.date());
            if time.timestamp() >= from && time.timestamp() < to {
                runs.push(Run {
                    time: time.clone(),
                    vault,
                });
            }
        }
        runs
    }

    /// The wall-clock times the schedule fires for the day (or window) starting on `day`.
    fn local_times(&self, day: Date) -> Vec<DateTime> {
        match &self.schedule {
            Schedule::Daily { time } => vec![day.to_datetime(*time)],
            Schedule::Weekly { time, days } if days.contains(&day.weekday()) => {
                vec![day.to_datetime(*time)]
            }
            Schedule::Weekly { .. } => Vec::new(),
            Schedule::Hourly {
                interval,
                window_start,
                window_hours,
            } => {
                let start = day.to_datetime(*window_start);
                (0..)
                    .map(|k| k * interval)
                    .take_while(|h| h < window_hours)
                    .filter_map(|h| start.checked_add(Span::new().hours(i64::from(h))).ok())
                    .collect()
            }
        }
    }
}
