use std::fmt;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::doc::{MonthlyDoc, PolicyDoc, YearlyDoc};

/// One wrong field: its path in the document and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path, e.g. `retention.daily.days`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Every problem found in a policy document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
pub struct PolicyError {
    /// The problems, in document order.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid policy: ")?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

/// When backups run.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Every day at `time`.
    Daily {
        /// Local time of day.
        time: Time,
    },
    /// On `days` at `time`.
    Weekly {
        /// Local time of day.
        time: Time,
        /// Weekdays.
        days: Vec<Weekday>,
    },
    /// Every `interval` hours from `window_start` for `window_hours`, every day; only the last
    /// backup of each day goes to the vault.
    Hourly {
        /// 4, 6, 8 or 12.
        interval: u32,
        /// Local time the window opens.
        window_start: Time,
        /// 4-24.
        window_hours: u32,
    },
}

/// A day of the month in a monthly or yearly rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonthDay {
    /// 1-28.
    Day(i8),
    /// The month's last day.
    Last,
}

/// A week of the month: days 1-7, 8-14, 15-21, 22-28, or the last seven days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeekOfMonth {
    /// Days 1-7.
    First,
    /// Days 8-14.
    Second,
    /// Days 15-21.
    Third,
    /// Days 22-28.
    Fourth,
    /// The last seven days of the month.
    Last,
}

/// Which days of a month a monthly or yearly rule keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum DaySelector {
    /// By day of the month.
    DaysOfMonth(Vec<MonthDay>),
    /// By weekday within weeks of the month.
    WeeksOfMonth {
        /// Weeks.
        weeks: Vec<WeekOfMonth>,
        /// Weekdays.
        days: Vec<Weekday>,
    },
}

/// Validated GFS retention.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Retention {
    /// Days every point is kept.
    pub daily: Option<u32>,
    /// Weeks points on these weekdays are kept.
    pub weekly: Option<(u32, Vec<Weekday>)>,
    /// Months points on these days are kept.
    pub monthly: Option<(u32, DaySelector)>,
    /// Years points on these days of these months (1-12) are kept.
    pub yearly: Option<(u32, Vec<i8>, DaySelector)>,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Name.
    pub name: String,
    /// IANA time zone name.
    pub time_zone: String,
    /// The zone.
    pub tz: TimeZone,
    /// Schedule.
    pub schedule: Schedule,
    /// Days the snapshot tier is kept.
    pub instant_restore_days: u32,
    /// Retention rules.
    pub retention: Retention,
    /// The document with defaults filled in.
    pub doc: PolicyDoc,
}

const WEEKDAYS: [(&str, Weekday); 7] = [
    ("monday", Weekday::Monday),
    ("tuesday", Weekday::Tuesday),
    ("wednesday", Weekday::Wednesday),
    ("thursday", Weekday::Thursday),
    ("friday", Weekday::Friday),
    ("saturday", Weekday::Saturday),
    ("sunday", Weekday::Sunday),
];
const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// Collects field errors while a document is checked.
struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn range(&mut self, field: &str, v: u32, lo: u32, hi: u32) -> u32 {
        if !(lo..=hi).contains(&v) {
            self.err(field, format!("{v} is out of range; allowed {lo}-{hi}"));
        }
        v
    }

    fn time(&mut self, field: &str, s: &str) -> Time {
        let parsed = s
            .split_once(':')
            .filter(|(h, m)| h.len() == 2 && m.len() == 2)
            .and_then(|(h, m)| Some((h.parse::<i8>().ok()?, m.parse::<i8>().ok()?)))
            .and_then(|(h, m)| Time::new(h, m, 0, 0).ok());
        parsed.unwrap_or_else(|| {
            self.err(
                field,
                format!("{s:?} is not a time of day; use HH:MM from 00:00 to 23:59"),
            );
            Time::midnight()
        })
    }

    fn weekdays(&mut self, field: &str, names: &[String]) -> Vec<Weekday> {
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate() {
            match WEEKDAYS.iter().find(|(w, _)| w.eq_ignore_ascii_case(n)) {
                Some((_, d)) if out.contains(d) => {
                    self.err(format!("{field}[{i}]"), format!("{n:?} is listed twice"))
                }
                Some((_, d)) => out.push(*d),
                None => self.err(
                    format!("{field}[{i}]"),
                    format!("{n:?} is not a weekday; use monday ... sunday"),
                ),
            }
        }
        out
    }

    fn weeks_of_month(&mut self, field: &str, names: &[String]) -> Vec<WeekOfMonth> {
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let w = match n.to_ascii_lowercase().as_str() {
                "first" => WeekOfMonth::First,
                "second" => WeekOfMonth::Second,
                "third" => WeekOfMonth::Third,
                "fourth" => WeekOfMonth::Fourth,
                "last" => WeekOfMonth::Last,
                _ => {
                    self.err(format!("{field}[{i}]"), format!("{n:?} is not a week of the month; use first, second, third, fourth or last"));
                    continue;
                }
            };
            if !out.contains(&w) {
                out.push(w);
            }
        }
        out
    }

    fn days_of_month(&mut self, field: &str, values: &[serde_json::Value]) -> Vec<MonthDay> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let d = match v {
                serde_json::Value::Number(n) => match n.as_u64() {
                    Some(d @ 1..=28) => MonthDay::Day(d as i8),
                    _ => {
                        self.err(
                            format!("{field}[{i}]"),
                            format!("{n} is out of range; allowed 1-28 or \"last\""),
                        );
                        continue;
                    }
                },
                serde_json::Value::String(s) if s.eq_ignore_ascii_case("last") => MonthDay::Last,
                other => {
                    self.err(
                        format!("{field}[{i}]"),
                        format!("{other} is not a day of the month; allowed 1-28 or \"last\""),
                    );
                    continue;
                }
            };
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    /// Day selection of a monthly or yearly rule.
    fn selector(
        &mut self,
        field: &str,
        days_of_month: &[serde_json::Value],
        weeks_of_month: &[String],
        days_of_week: &[String],
        schedule: &Schedule,
    ) -> DaySelector {
        let by_day = !days_of_month.is_empty();
        let by_week = !weeks_of_month.is_empty() || !days_of_week.is_empty();
        if by_day && by_week {
            self.err(
                field,
                "give either days_of_month, or weeks_of_month with days_of_week, not both",
            );
        }
        if !by_day && !by_week {
            self.err(
                field,
                "give days_of_month, or weeks_of_month with days_of_week",
            );
            return DaySelector::DaysOfMonth(Vec::new());
        }
        if by_day {
            if let Schedule::Weekly { .. } = schedule {
                self.err(
                    format!("{field}.days_of_month"),
                    "a weekly schedule keeps monthly and yearly points by weeks_of_month and days_of_week",
                );
            }
            return DaySelector::DaysOfMonth(
                self.days_of_month(&format!("{field}.days_of_month"), days_of_month),
            );
        }
        let weeks = self.weeks_of_month(&format!("{field}.weeks_of_month"), weeks_of_month);
        let days = self.weekdays(&format!("{field}.days_of_week"), days_of_week);
        if weeks_of_month.is_empty() {
            self.err(
                format!("{field}.weeks_of_month"),
                "at least one week of the month is needed with days_of_week",
            );
        }
        if days_of_week.is_empty() {
            self.err(
                format!("{field}.days_of_week"),
                "at least one weekday is needed with weeks_of_month",
            );
        }
        if let Schedule::Weekly { days: sched, .. } = schedule
            && let Some(d) = days.iter().find(|d| !sched.contains(d))
        {
            self.err(
                format!("{field}.days_of_week"),
                format!("{} is not a day the schedule runs on", weekday_name(*d)),
            );
        }
        DaySelector::WeeksOfMonth { weeks, days }
    }
}

/// Lower-case English weekday name.
pub(crate) fn weekday_name(d: Weekday) -> &'static str {
    WEEKDAYS
        .iter()
        .find(|(_, w)| *w == d)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

fn check_name(c: &mut Check, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
    if !ok {
        c.err(
            "name",
            format!("{name:?} is not a valid name; use 1-64 characters from A-Z a-z 0-9 . _ -"),
        );
    }
}

impl PolicyDoc {
    /// Validates the document; fills in defaults.
    pub fn validate(&self) -> Result<Policy, PolicyError> {
        let mut c = Check { errors: Vec::new() };
        let mut doc = self.clone();
        check_name(&mut c, &self.name);
        let s = &self.schedule;
        let tz_name = s.time_zone.clone().unwrap_or_else(|| "UTC".into());
        let tz = match TimeZone::get(&tz_name) {
            Ok(tz) => tz,
            Err(_) => {
                c.err("schedule.time_zone", format!("{tz_name:?} is not an IANA time zone (e.g. Europe/Berlin, America/New_York, UTC)"));
                TimeZone::UTC
            }
        };
        doc.schedule.time_zone = Some(tz_name.clone());
        let one_time = |c: &mut Check| -> Time {
            match s.times.as_slice() {
                [t] => c.time("schedule.times[0]", t),
                [] => {
                    c.err(
                        "schedule.times",
                        "one time of day is needed, e.g. [\"02:30\"]",
                    );
                    Time::midnight()
                }
                _ => {
                    c.err(
                        "schedule.times",
                        format!(
                            "{} times given; daily and weekly schedules run once a day",
                            s.times.len()
                        ),
                    );
                    Time::midnight()
                }
            }
        };
        let not_for = |c: &mut Check, freq: &str, fields: &[(&str, bool)]| {
            for (f, present) in fields {
                if *present {
                    c.err(
                        format!("schedule.{f}"),
                        format!("does not apply to a {freq} schedule"),
                    );
                }
            }
        };
        let schedule = match s.frequency.as_str() {
            "daily" => {
                not_for(
                    &mut c,
                    "daily",
                    &[
                        ("days_of_week", !s.days_of_week.is_empty()),
                        ("interval_hours", s.interval_hours.is_some()),
                        ("window_start", s.window_start.is_some()),
                        ("window_hours", s.window_hours.is_some()),
                    ],
                );
                Schedule::Daily {
                    time: one_time(&mut c),
                }
            }
            "weekly" => {
                not_for(
                    &mut c,
                    "weekly",
                    &[
                        ("interval_hours", s.interval_hours.is_some()),
                        ("window_start", s.window_start.is_some()),
                        ("window_hours", s.window_hours.is_some()),
                    ],
                );
                let days = c.weekdays("schedule.days_of_week", &s.days_of_week);
                if s.days_of_week.is_empty() {
                    c.err(
                        "schedule.days_of_week",
                        "a weekly schedule needs at least one weekday",
                    );
                }
                Schedule::Weekly {
                    time: one_time(&mut c),
                    days,
                }
            }
            "hourly" => {
                not_for(
                    &mut c,
                    "hourly",
                    &[
                        ("times", !s.times.is_empty()),
                        ("days_of_week", !s.days_of_week.is_empty()),
                    ],
                );
                let interval = match s.interval_hours {
                    Some(i @ (4 | 6 | 8 | 12)) => i,
                    Some(i) => {
                        c.err(
                            "schedule.interval_hours",
                            format!("{i} is not allowed; use 4, 6, 8 or 12"),
                        );
                        4
                    }
                    None => {
                        c.err(
                            "schedule.interval_hours",
                            "an hourly schedule needs interval_hours: 4, 6, 8 or 12",
                        );
                        4
                    }
                };
                let window_start = match &s.window_start {
                    Some(t) => c.time("schedule.window_start", t),
                    None => {
                        c.err(
                            "schedule.window_start",
                            "an hourly schedule needs window_start, HH:MM",
                        );
                        Time::midnight()
                    }
                };
                let window_hours = match s.window_hours {
                    Some(h) => c.range("schedule.window_hours", h, 4, 24),
                    None => {
                        c.err(
                            "schedule.window_hours",
                            "an hourly schedule needs window_hours, 4-24",
                        );
                        24
                    }
                };
                Schedule::Hourly {
                    interval,
                    window_start,
                    window_hours,
                }
            }
            other => {
                c.err(
                    "schedule.frequency",
                    format!("{other:?} is not a frequency; use daily, weekly or hourly"),
                );
                Schedule::Daily {
                    time: Time::midnight(),
                }
            }
        };

        let errors_before_ir = c.errors.len();
        let instant_restore_days = match (&schedule, self.instant_restore_days) {
            (Schedule::Weekly { .. }, None | Some(5)) => 5,
            (Schedule::Weekly { .. }, Some(d)) => {
                c.err(
                    "instant_restore_days",
                    format!("{d} is not allowed: weekly schedules keep snapshots a fixed 5 days"),
                );
                5
            }
            (Schedule::Daily { .. }, None) => 2,
            (Schedule::Daily { .. }, Some(d)) => c.range("instant_restore_days", d, 1, 5),
            (Schedule::Hourly { .. }, None) => 7,
            (Schedule::Hourly { .. }, Some(d)) => c.range("instant_restore_days", d, 1, 30),
        };
        doc.instant_restore_days = Some(instant_restore_days);
        let ir_valid = c.errors.len() == errors_before_ir;

        let r = &self.retention;
        let mut retention = Retention::default();
        match (&schedule, &r.daily) {
            (Schedule::Weekly { .. }, Some(_)) => c.err(
                "retention.daily",
                "a weekly schedule has no daily rule; use retention.weekly",
            ),
            (_, Some(d)) => {
                let days = c.range("retention.daily.days", d.days, 7, 9999);
                if ir_valid && days < instant_restore_days {
                    c.err(
                        "retention.daily.days",
                        format!(
                            "{days} is shorter than instant_restore_days ({instant_restore_days})"
                        ),
                    );
                }
                retention.daily = Some(days);
            }
            (Schedule::Weekly { .. }, None) => {}
            (_, None) => c.err(
                "retention.daily",
                "daily and hourly schedules need a daily rule, e.g. {\"days\": 30}",
            ),
        }
        if let Some(w) = &r.weekly {
            let weeks = c.range("retention.weekly.weeks", w.weeks, 1, 5163);
            let mut days = c.weekdays("retention.weekly.days_of_week", &w.days_of_week);
            match &schedule {
                Schedule::Weekly { days: sched, .. } => {
                    if w.days_of_week.is_empty() {
                        days = sched.clone();
                        if let Some(dw) = doc.retention.weekly.as_mut() {
                            dw.days_of_week =
                                sched.iter().map(|d| weekday_name(*d).to_string()).collect();
                        }
                    } else if let Some(d) = days.iter().find(|d| !sched.contains(d)) {
                        c.err(
                            "retention.weekly.days_of_week",
                            format!("{} is not a day the schedule runs on", weekday_name(*d)),
                        );
                    }
                }
                _ if w.days_of_week.is_empty() => c.err(
                    "retention.weekly.days_of_week",
                    "at least one weekday is needed",
                ),
                _ => {}
            }
            retention.weekly = Some((weeks, days));
        } else if let Schedule::Weekly { .. } = schedule {
            c.err(
                "retention.weekly",
                "a weekly schedule needs a weekly rule, e.g. {\"weeks\": 12}",
            );
        }
        if let Some(MonthlyDoc {
            months,
            days_of_month,
            weeks_of_month,
            days_of_week,
        }) = &r.monthly
        {
            let months = c.range("retention.monthly.months", *months, 1, 1188);
            let sel = c.selector(
                "retention.monthly",
                days_of_month,
                weeks_of_month,
                days_of_week,
                &schedule,
            );
            retention.monthly = Some((months, sel));
        }
        if let Some(YearlyDoc {
            years,
            months_of_year,
            days_of_month,
            weeks_of_month,
            days_of_week,
        }) = &r.yearly
        {
            let years = c.range("retention.yearly.years", *years, 1, 99);
            let mut months = Vec::new();
            for (i, m) in months_of_year.iter().enumerate() {
                match MONTHS.iter().position(|n| n.eq_ignore_ascii_case(m)) {
                    Some(p) if !months.contains(&(p as i8 + 1)) => months.push(p as i8 + 1),
                    Some(_) => {}
                    None => c.err(
                        format!("retention.yearly.months_of_year[{i}]"),
                        format!("{m:?} is not a month; use january ... december"),
                    ),
                }
            }
            if months_of_year.is_empty() {
                c.err(
                    "retention.yearly.months_of_year",
                    "at least one month is needed",
                );
            }
            let sel = c.selector(
                "retention.yearly",
                days_of_month,
                weeks_of_month,
                days_of_week,
                &schedule,
            );
            retention.yearly = Some((years, months, sel));
        }
        if c.errors.is_empty() {
            Ok(Policy {
                name: self.name.clone(),
                time_zone: tz_name,
                tz,
                schedule,
                instant_restore_days,
                retention,
                doc,
            })
        } else {
            Err(PolicyError { errors: c.errors })
        }
    }
}

impl Policy {
    /// Parses and validates a policy document; type errors name the field too.
    pub fn parse(json: &[u8]) -> Result<Policy, PolicyError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let doc: PolicyDoc = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            PolicyError {
                errors: vec![FieldError {
                    field: if path == "." {
                        "(document)".into()
                    } else {
                        path
                    },
                    message: e.into_inner().to_string(),
                }],
            }
        })?;
        doc.validate()
    }

    /// `DefaultPolicy`: daily at 02:00 UTC, daily points kept 30 days, snapshots 2 days.
    pub fn default_policy() -> Policy {
        let doc = PolicyDoc {
            name: crate::DEFAULT_POLICY.into(),
            schedule: crate::ScheduleDoc {
                frequency: "daily".into(),
                times: vec!["02:00".into()],
                days_of_week: vec![],
                interval_hours: None,
                window_start: None,
                window_hours: None,
                time_zone: Some("UTC".into()),
            },
            instant_restore_days: Some(2),
            retention: crate::RetentionDoc {
                daily: Some(crate::DailyDoc { days: 30 }),
                ..Default::default()
            },
        };
        doc.validate().expect("the default policy is valid")
    }
}
