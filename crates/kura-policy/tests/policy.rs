//! Policy validation, DST behaviour, retention expiry and a three-year GFS simulation.

use jiff::civil::{Date, date};
use jiff::{Timestamp, Zoned};
use kura_policy::{Policy, rfc3339, simulate};
use serde_json::{Value, json};

fn base_daily(tz: &str, time: &str) -> Value {
    json!({"name": "p1", "schedule": {"frequency": "daily", "times": [time], "time_zone": tz},
           "retention": {"daily": {"days": 30}}})
}

fn policy(v: &Value) -> Policy {
    Policy::parse(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn fields(v: &Value) -> Vec<String> {
    match Policy::parse(v.to_string().as_bytes()) {
        Ok(_) => panic!("{v} should be refused"),
        Err(e) => e.errors.into_iter().map(|f| f.field).collect(),
    }
}

fn with(mut v: Value, path: &[&str], new: Value) -> Value {
    let mut cur = &mut v;
    for p in &path[..path.len() - 1] {
        cur = &mut cur[*p];
    }
    cur[path[path.len() - 1]] = new;
    v
}

#[test]
fn valid_policies_get_their_defaults() {
    let p = policy(&base_daily("Europe/Berlin", "02:30"));
    assert_eq!(p.instant_restore_days, 2);
    let weekly = json!({"name": "w", "schedule": {"frequency": "weekly", "times": ["22:00"], "days_of_week": ["sunday", "wednesday"]},
                        "retention": {"weekly": {"weeks": 12}}});
    let p = policy(&weekly);
    assert_eq!(
        p.instant_restore_days, 5,
        "weekly schedules keep snapshots 5 days"
    );
    assert_eq!(
        p.doc.retention.weekly.as_ref().unwrap().days_of_week,
        ["sunday", "wednesday"]
    );
    assert_eq!(p.time_zone, "UTC");
    let hourly = json!({"name": "h", "schedule": {"frequency": "hourly", "interval_hours": 4, "window_start": "08:00", "window_hours": 24, "time_zone": "America/New_York"},
                        "retention": {"daily": {"days": 180}, "weekly": {"weeks": 12, "days_of_week": ["sunday"]},
                                      "monthly": {"months": 60, "weeks_of_month": ["first"], "days_of_week": ["sunday"]},
                                      "yearly": {"years": 10, "months_of_year": ["january"], "days_of_month": ["last"]}}});
    assert_eq!(policy(&hourly).instant_restore_days, 7);
    assert_eq!(Policy::default_policy().name, "DefaultPolicy");
}

#[test]
fn validation_names_every_wrong_field_and_the_allowed_range() {
    let d = base_daily("UTC", "02:30");
    let cases: Vec<(Value, &[&str])> = vec![
        (
            with(d.clone(), &["retention", "daily", "days"], json!(6)),
            &["retention.daily.days"],
        ),
        (
            with(d.clone(), &["retention", "daily", "days"], json!(10000)),
            &["retention.daily.days"],
        ),
        (
            with(d.clone(), &["instant_restore_days"], json!(6)),
            &["instant_restore_days"],
        ),
        (
            with(d.clone(), &["instant_restore_days"], json!(0)),
            &["instant_restore_days"],
        ),
        (
            with(d.clone(), &["schedule", "times"], json!(["25:00"])),
            &["schedule.times[0]"],
        ),
        (
            with(d.clone(), &["schedule", "times"], json!(["02:30", "04:00"])),
            &["schedule.times"],
        ),
        (
            with(d.clone(), &["schedule", "times"], json!([])),
            &["schedule.times"],
        ),
        (
            with(d.clone(), &["schedule", "time_zone"], json!("Mars/Olympus")),
            &["schedule.time_zone"],
        ),
        (
            with(d.clone(), &["schedule", "frequency"], json!("monthly")),
            &["schedule.frequency"],
        ),
        (
            with(d.clone(), &["schedule", "days_of_week"], json!(["sunday"])),
            &["schedule.days_of_week"],
        ),
        (with(d.clone(), &["name"], json!("bad name")), &["name"]),
        (
            with(d.clone(), &["retention"], json!({})),
            &["retention.daily"],
        ),
        (
            with(
                d.clone(),
                &["retention", "weekly"],
                json!({"weeks": 0, "days_of_week": ["sunday"]}),
            ),
            &["retention.weekly.weeks"],
        ),
        (
            with(
                d.clone(),
                &["retention", "weekly"],
                json!({"weeks": 5164, "days_of_week": ["funday"]}),
            ),
            &["retention.weekly.weeks", "retention.weekly.days_of_week[0]"],
        ),
        (
            with(d.clone(), &["retention", "weekly"], json!({"weeks": 4})),
            &["retention.weekly.days_of_week"],
        ),
        (
            with(
                d.clone(),
                &["retention", "monthly"],
                json!({"months": 1189, "days_of_month": [1]}),
            ),
            &["retention.monthly.months"],
        ),
        (
            with(
                d.clone(),
                &["retention", "monthly"],
                json!({"months": 12, "days_of_month": [29]}),
            ),
            &["retention.monthly.days_of_month[0]"],
        ),
        (
            with(d.clone(), &["retention", "monthly"], json!({"months": 12})),
            &["retention.monthly"],
        ),
        (
            with(
                d.clone(),
                &["retention", "monthly"],
                json!({"months": 12, "days_of_month": [1], "weeks_of_month": ["first"], "days_of_week": ["sunday"]}),
            ),
            &["retention.monthly"],
        ),
        (
            with(
                d.clone(),
                &["retention", "monthly"],
                json!({"months": 12, "weeks_of_month": ["fifth"], "days_of_week": ["sunday"]}),
            ),
            &["retention.monthly.weeks_of_month[0]"],
        ),
        (
            with(
                d.clone(),
                &["retention", "yearly"],
                json!({"years": 100, "months_of_year": ["january"], "days_of_month": [1]}),
            ),
            &["retention.yearly.years"],
        ),
        (
            with(
                d.clone(),
                &["retention", "yearly"],
                json!({"years": 2, "months_of_year": ["smarch"], "days_of_month": ["last"]}),
            ),
            &["retention.yearly.months_of_year[0]"],
        ),
        (
            with(
                d.clone(),
                &["retention", "yearly"],
                json!({"years": 2, "months_of_year": [], "days_of_month": [1]}),
            ),
            &["retention.yearly.months_of_year"],
        ),
        // Type errors are named by path too.
        (
            with(d.clone(), &["retention", "daily", "days"], json!("thirty")),
            &["retention.daily.days"],
        ),
        (
            with(d.clone(), &["schedule", "bogus"], json!(1)),
            &["schedule.bogus"],
        ),
    ];
    for (doc, expected) in cases {
        let got = fields(&doc);
        assert_eq!(
            got,
            expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "for {doc}"
        );
    }
    // Ranges are in the messages.
    let e = Policy::parse(
        with(d.clone(), &["retention", "daily", "days"], json!(6))
            .to_string()
            .as_bytes(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("7-9999"), "{e}");

    let weekly = json!({"name": "w", "schedule": {"frequency": "weekly", "times": ["22:00"], "days_of_week": ["sunday"]},
                        "retention": {"weekly": {"weeks": 12}}});
    assert_eq!(
        fields(&with(weekly.clone(), &["instant_restore_days"], json!(2))),
        ["instant_restore_days"]
    );
    assert_eq!(
        fields(&with(
            weekly.clone(),
            &["retention", "daily"],
            json!({"days": 30})
        )),
        ["retention.daily"]
    );
    assert_eq!(
        fields(&with(
            weekly.clone(),
            &["retention", "weekly", "days_of_week"],
            json!(["monday"])
        )),
        ["retention.weekly.days_of_week"]
    );
    assert_eq!(
        fields(&with(
            weekly.clone(),
            &["retention", "monthly"],
            json!({"months": 3, "days_of_month": [1]})
        )),
        ["retention.monthly.days_of_month"]
    );
    assert_eq!(
        fields(&with(
            weekly.clone(),
            &["schedule", "days_of_week"],
            json!([])
        )),
        ["schedule.days_of_week"]
    );

    let hourly = json!({"name": "h", "schedule": {"frequency": "hourly", "interval_hours": 4, "window_start": "08:00", "window_hours": 24},
                        "retention": {"daily": {"days": 30}}});
    assert_eq!(
        fields(&with(
            hourly.clone(),
            &["schedule", "interval_hours"],
            json!(5)
        )),
        ["schedule.interval_hours"]
    );
    assert_eq!(
        fields(&with(
            hourly.clone(),
            &["schedule", "window_hours"],
            json!(3)
        )),
        ["schedule.window_hours"]
    );
    assert_eq!(
        fields(&with(
            hourly.clone(),
            &["schedule", "window_hours"],
            json!(25)
        )),
        ["schedule.window_hours"]
    );
    assert_eq!(
        fields(&with(hourly.clone(), &["instant_restore_days"], json!(31))),
        ["instant_restore_days"]
    );
    assert_eq!(
        fields(&with(
            hourly.clone(),
            &["schedule", "times"],
            json!(["01:00"])
        )),
        ["schedule.times"]
    );
    // An hourly policy keeps snapshots 7 days: 7 days of daily retention is enough, 8 too.
    policy(&with(
        hourly.clone(),
        &["retention", "daily", "days"],
        json!(8),
    ));
    // Several problems are all reported at once.
    let many = json!({"name": "", "schedule": {"frequency": "hourly", "interval_hours": 3, "window_hours": 2},
                      "instant_restore_days": 40, "retention": {"daily": {"days": 1}}});
    assert_eq!(
        fields(&many),
        [
            "name",
            "schedule.interval_hours",
            "schedule.window_start",
            "schedule.window_hours",
            "instant_restore_days",
            "retention.daily.days"
        ]
    );
}

fn runs_on(p: &Policy, from: Date, days: i64) -> Vec<String> {
    let start = from.to_zoned(p.tz.clone()).unwrap();
    let end = from
        .checked_add(jiff::Span::new().days(days))
        .unwrap()
        .to_zoned(p.tz.clone())
        .unwrap();
    p.runs(start.timestamp(), end.timestamp())
        .iter()
        .map(|r| rfc3339(&r.time))
        .collect()
}

#[test]
fn berlin_gap_shifts_forward_and_overlap_runs_once_early() {
    let p = policy(&base_daily("Europe/Berlin", "02:30"));
    assert_eq!(
        runs_on(&p, date(2026, 3, 28), 3),
        [
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:30:00+02:00",
            "2026-03-30T02:30:00+02:00"
        ]
    );
    assert_eq!(
        runs_on(&p, date(2026, 10, 24), 3),
        [
            "2026-10-24T02:30:00+02:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-26T02:30:00+01:00"
        ]
    );
}

#[test]
fn new_york_transitions() {
    let p = policy(&base_daily("America/New_York", "02:30"));
    assert_eq!(
        runs_on(&p, date(2026, 3, 8), 1),
        ["2026-03-08T03:30:00-04:00"]
    );
    let p = policy(&base_daily("America/New_York", "01:30"));
    assert_eq!(
        runs_on(&p, date(2026, 10, 31), 3),
        [
            "2026-10-31T01:30:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-02T01:30:00-05:00"
        ]
    );
}

#[test]
fn lord_howe_half_hour_shift() {
    // DST starts 2026-10-04 at 02:00 (clocks go to 02:30); it ends 2026-04-05 at 02:00
    // (clocks go back to 01:30).
    let p = policy(&base_daily("Australia/Lord_Howe", "02:15"));
    assert_eq!(
        runs_on(&p, date(2026, 10, 4), 1),
        ["2026-10-04T02:45:00+11:00"]
    );
    let p = policy(&base_daily("Australia/Lord_Howe", "01:45"));
    assert_eq!(
        runs_on(&p, date(2026, 4, 5), 2),
        ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]
    );
}

#[test]
fn hourly_windows_and_last_of_day_to_vault() {
    let p = policy(
        &json!({"name": "h", "schedule": {"frequency": "hourly", "interval_hours": 6, "window_start": "02:00", "window_hours": 14, "time_zone": "Europe/Berlin"},
                          "retention": {"daily": {"days": 30}}}),
    );
    let start = date(2026, 3, 29).to_zoned(p.tz.clone()).unwrap();
    let end = date(2026, 3, 31).to_zoned(p.tz.clone()).unwrap();
    let runs = p.runs(start.timestamp(), end.timestamp());
    let got: Vec<(String, bool)> = runs.iter().map(|r| (rfc3339(&r.time), r.vault)).collect();
    assert_eq!(
        got,
        [
            ("2026-03-29T03:00:00+02:00".into(), false), // 02:00 does not exist: shifted by the gap
            ("2026-03-29T08:00:00+02:00".into(), false),
            ("2026-03-29T14:00:00+02:00".into(), true),
            ("2026-03-30T02:00:00+02:00".into(), false),
            ("2026-03-30T08:00:00+02:00".into(), false),
            ("2026-03-30T14:00:00+02:00".into(), true),
        ]
    );
    let snap = p.retain(&runs[0].time, false);
    assert!(snap.tags.is_empty() && snap.vault_expires.is_none());
    assert_eq!(
        rfc3339(snap.expires()),
        "2026-04-05T03:00:00+02:00",
        "7 instant-restore days"
    );
}

#[test]
fn expiry_is_calendar_arithmetic_in_the_policy_zone() {
    let p = policy(&with(
        base_daily("Europe/Berlin", "02:30"),
        &["retention", "daily", "days"],
        json!(7),
    ));
    let t: Zoned = "2026-03-28T02:30:00+01:00[Europe/Berlin]".parse().unwrap();
    let kept = p.retain(&t, true);
    assert_eq!(kept.tags, ["daily"]);
    // Wall-clock time is kept across the DST change: 167 hours, not 168.
    assert_eq!(rfc3339(kept.expires()), "2026-04-04T02:30:00+02:00");
    let just_before: Zoned = "2026-04-04T02:29:59+02:00[Europe/Berlin]".parse().unwrap();
    assert!(kept.exists_at(&just_before));
    assert!(
        !kept.exists_at(kept.expires()),
        "a point does not exist at its expiry"
    );
}

#[test]
fn monthly_and_yearly_by_weekday_of_week_including_last() {
    let p = policy(
        &json!({"name": "m", "schedule": {"frequency": "daily", "times": ["23:00"], "time_zone": "UTC"},
        "retention": {"daily": {"days": 7},
                      "monthly": {"months": 6, "weeks_of_month": ["last"], "days_of_week": ["friday"]},
                      "yearly": {"years": 2, "months_of_year": ["february"], "days_of_month": ["last"]}}}),
    );
    let at = |s: &str| -> Zoned { format!("{s}T23:00:00+00:00[UTC]").parse().unwrap() };
    assert_eq!(p.retain(&at("2026-01-30"), true).tags, ["daily", "monthly"]); // last Friday of January
    assert_eq!(p.retain(&at("2026-01-23"), true).tags, ["daily"]);
    assert_eq!(p.retain(&at("2026-02-28"), true).tags, ["daily", "yearly"]);
    assert_eq!(
        p.retain(&at("2028-02-29"), true).tags,
        ["daily", "yearly"],
        "leap years too"
    );
    assert_eq!(p.retain(&at("2028-02-28"), true).tags, ["daily"]);
    let kept = p.retain(&at("2026-02-27"), true); // last Friday of February
    assert_eq!(kept.tags, ["daily", "monthly"]);
    assert_eq!(rfc3339(kept.expires()), "2026-08-27T23:00:00+00:00");
}

#[test]
fn three_years_of_daily_backups_under_gfs() {
    let p = policy(
        &json!({"name": "gfs", "schedule": {"frequency": "daily", "times": ["02:30"], "time_zone": "Europe/Berlin"},
        "retention": {"daily": {"days": 7}, "weekly": {"weeks": 4, "days_of_week": ["sunday"]},
                      "monthly": {"months": 12, "days_of_month": [1]},
                      "yearly": {"years": 3, "months_of_year": ["january"], "days_of_month": [1]}}}),
    );
    let sim = simulate(&p, date(2024, 1, 1), 1096).unwrap();
    assert_eq!(sim.runs.len(), 1096);
    assert_eq!(sim.until, "2027-01-01T00:00:00+01:00");
    // Built by hand from the rules: the last 7 days, the Sundays of the last 4 weeks, the
    // 1st of the last 12 months, and the 1st of January of the last 3 years.
    let mut expected: Vec<Date> = Vec::new();
    expected.extend([date(2024, 1, 1), date(2025, 1, 1)]);
    expected.extend((1..=12).map(|m| date(2026, m, 1)));
    expected.extend([date(2026, 12, 6), date(2026, 12, 13), date(2026, 12, 20)]);
    expected.extend((25..=31).map(|d| date(2026, 12, d)));
    expected.sort();
    let got: Vec<Date> = sim
        .surviving
        .iter()
        .map(|s| {
            s.time
                .parse::<Timestamp>()
                .unwrap()
                .to_zoned(p.tz.clone())
                .date()
        })
        .collect();
    assert_eq!(got, expected);
    let jan1 = sim
        .surviving
        .iter()
        .find(|s| s.time.starts_with("2026-01-01"))
        .unwrap();
    assert_eq!(jan1.tags, ["daily", "monthly", "yearly"]);
    assert_eq!(jan1.expires, "2029-01-01T02:30:00+01:00");
    let dec27 = sim
        .surviving
        .iter()
        .find(|s| s.time.starts_with("2026-12-27"))
        .unwrap();
    assert_eq!(dec27.tags, ["daily", "weekly"]);
    assert_eq!(dec27.expires, "2027-01-24T02:30:00+01:00");
}

#[test]
fn the_newest_point_survives_even_when_expired() {
    let p = Policy::default_policy();
    let sim = simulate(&p, date(2026, 1, 1), 1).unwrap();
    assert_eq!(sim.surviving.len(), 1);
}
