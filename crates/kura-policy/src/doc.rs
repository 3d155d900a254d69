use serde::{Deserialize, Serialize};

/// A policy as users write it (JSON). Optional fields get their defaults at validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// Policy name, unique in its vault.
    pub name: String,
    /// When backups run.
    pub schedule: ScheduleDoc,
    /// Days the snapshot tier is kept (standard: 1-5, default 2, fixed 5 for weekly;
    /// hourly: 1-30, default 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instant_restore_days: Option<u32>,
    /// How long recovery points are kept.
    #[serde(default)]
    pub retention: RetentionDoc,
}

/// The schedule part of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ScheduleDoc {
    /// `daily`, `weekly` or `hourly` (the enhanced policy).
    pub frequency: String,
    /// For daily and weekly: one time of day, `HH:MM`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub times: Vec<String>,
    /// For weekly: the weekdays (`monday` ... `sunday`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days_of_week: Vec<String>,
    /// For hourly: 4, 6, 8 or 12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_hours: Option<u32>,
    /// For hourly: when the window opens, `HH:MM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<String>,
    /// For hourly: how long the window stays open, 4-24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_hours: Option<u32>,
    /// IANA time zone; default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// GFS retention rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RetentionDoc {
    /// Keep every point this many days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<DailyDoc>,
    /// Keep points taken on some weekdays this many weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<WeeklyDoc>,
    /// Keep points on some days of each month this many months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<MonthlyDoc>,
    /// Keep points on some days of some months this many years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yearly: Option<YearlyDoc>,
}

/// Daily rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DailyDoc {
    /// 7-9999.
    pub days: u32,
}

/// Weekly rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct WeeklyDoc {
    /// 1-5163.
    pub weeks: u32,
    /// Weekdays whose points are kept; for weekly schedules, default the schedule's days.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days_of_week: Vec<String>,
}

/// Monthly rule: by days of the month, or by weekdays of weeks of the month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MonthlyDoc {
    /// 1-1188.
    pub months: u32,
    /// 1-28 or `"last"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days_of_month: Vec<serde_json::Value>,
    /// `first`, `second`, `third`, `fourth`, `last`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weeks_of_month: Vec<String>,
    /// With `weeks_of_month`: the weekdays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days_of_week: Vec<String>,
}

/// Yearly rule: like monthly, in some months of the year.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct YearlyDoc {
    /// 1-99.
    pub years: u32,
    /// `january` ... `december`.
    pub months_of_year: Vec<String>,
    /// 1-28 or `"last"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days_of_month: Vec<serde_json::Value>,
    /// `first`, `second`, `third`, `fourth`, `last`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weeks_of_month: Vec<String>,
    /// With `weeks_of_month`: the weekdays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days_of_week: Vec<String>,
}
