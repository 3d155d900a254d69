use jiff::civil::Date;
use jiff::{Span, Zoned};

use crate::validate::{DaySelector, MonthDay, Policy, WeekOfMonth};

/// How long a recovery point is kept, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// GFS rules the point matches: `daily`, `weekly`, `monthly`, `yearly` (empty for a
    /// snapshot-only point).
    pub tags: Vec<&'static str>,
    /// When the vault copy expires: the creation time plus the longest matching rule, in
    /// calendar units of the policy's zone. `None` for snapshot-only points.
    pub vault_expires: Option<Zoned>,
    /// When the snapshot tier expires: creation plus the instant-restore days.
    pub snapshot_expires: Zoned,
}

impl Retained {
    /// When the point stops existing: the later of its tiers' expiries.
    pub fn expires(&self) -> &Zoned {
        match &self.vault_expires {
            Some(v) if *v > self.snapshot_expires => v,
            _ => &self.snapshot_expires,
        }
    }

    /// A point exists at `t` if and only if `t` is before its expiry.
    pub fn exists_at(&self, t: &Zoned) -> bool {
        t.timestamp() < self.expires().timestamp()
    }
}

fn add(t: &Zoned, span: Span) -> Zoned {
    // Spans are bounded by validation (at most 99 years), so this cannot overflow in
    // practice; saturate rather than panic if it ever did.
    t.checked_add(span).unwrap_or_else(|_| t.clone())
}

fn week_of_month(d: Date) -> [Option<WeekOfMonth>; 2] {
    let nth = match d.day() {
        1..=7 => Some(WeekOfMonth::First),
        8..=14 => Some(WeekOfMonth::Second),
        15..=21 => Some(WeekOfMonth::Third),
        22..=28 => Some(WeekOfMonth::Fourth),
        _ => None,
    };
    let last = (d.day() > d.days_in_month() - 7).then_some(WeekOfMonth::Last);
    [nth, last]
}

impl DaySelector {
    /// Whether `d` is one of the selected days.
    pub fn matches(&self, d: Date) -> bool {
        match self {
            DaySelector::DaysOfMonth(days) => days.iter().any(|m| match m {
                MonthDay::Day(n) => d.day() == *n,
                MonthDay::Last => d == d.last_of_month(),
            }),
            DaySelector::WeeksOfMonth { weeks, days } => {
                days.contains(&d.weekday())
                    && week_of_month(d).iter().flatten().any(|w| weeks.contains(w))
            }
        }
    }
}

impl Policy {
    /// Tags and expiry of a recovery point taken at `t` (in the policy's zone); `vault`
    /// says whether it was transferred to the vault or is a snapshot only.
    pub fn retain(&self, t: &Zoned, vault: bool) -> Retained {
        let t = t.with_time_zone(self.tz.clone());
        let snapshot_expires = add(&t, Span::new().days(i64::from(self.instant_restore_days)));
        if !vault {
            return Retained {
                tags: Vec::new(),
                vault_expires: None,
                snapshot_expires,
            };
        }
        let r = &self.retention;
        let date = t.date();
        let mut tags = Vec::new();
        let mut expiry: Option<Zoned> = None;
        let mut keep = |tag: &'static str, span: Span| {
            tags.push(tag);
            let e = add(&t, span);
            if expiry.as_ref().is_none_or(|x| e > *x) {
                expiry = Some(e);
            }
        };
        if let Some(days) = r.daily {
            keep("daily", Span::new().days(i64::from(days)));
        }
        if let Some((weeks, days)) = &r.weekly
            && days.contains(&date.weekday())
        {
            keep("weekly", Span::new().weeks(i64::from(*weeks)));
        }
        if let Some((months, sel)) = &r.monthly
            && sel.matches(date)
        {
            keep("monthly", Span::new().months(i64::from(*months)));
        }
        if let Some((years, months, sel)) = &r.yearly
            && months.contains(&date.month())
            && sel.matches(date)
        {
            keep("yearly", Span::new().years(i64::from(*years)));
        }
        Retained {
            tags,
            // A vault point matching no rule (not possible after validation) lives as long
            // as its snapshot.
            vault_expires: Some(expiry.unwrap_or_else(|| snapshot_expires.clone())),
            snapshot_expires,
        }
    }
}
