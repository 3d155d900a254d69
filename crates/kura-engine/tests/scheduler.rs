//! The scheduler driven by an injected clock: days of schedule in seconds.

use std::os::unix::fs::FileExt;

use jiff::{SignedDuration, Span, Timestamp, Zoned};
use kura_catalog::{JobOperation, JobStatus};
use kura_engine::{CreateVault, Home, SchedulerOptions, Secrets};

struct Setup {
    _dir: tempfile::TempDir,
    home: Home,
    image: std::path::PathBuf,
}

/// Every test starts here, whatever the date and time it runs at (`scripts/test` also runs
/// this file under faketime at other instants to prove it).
const START: &str = "2026-03-10T10:17:00Z";

fn start() -> Timestamp {
    START.parse().unwrap()
}

/// A clock that stands at one instant.
struct Fixed(Timestamp);

impl kura_engine::scheduler::Clock for Fixed {
    fn now(&self) -> Timestamp {
        self.0
    }
}

fn setup(policy: serde_json::Value) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open_with(
        &dir.path().join("home"),
        std::sync::Arc::new(Fixed(start())),
        jiff::tz::TimeZone::UTC,
    )
    .unwrap();
    let opts = CreateVault {
        chunk_size: Some(64 << 10),
        no_encryption: true,
        ..Default::default()
    };
    home.create_vault("v", &opts, &Secrets::default()).unwrap();
    home.create_policy("v", policy.to_string().as_bytes())
        .unwrap();
    let image = dir.path().join("d.raw");
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(1 << 20).unwrap();
    f.write_all_at(b"some data", 4096).unwrap();
    home.protect_disk(
        &image,
        "v",
        Some("d"),
        Some(policy["name"].as_str().unwrap()),
        None,
        &Secrets::default(),
    )
    .unwrap();
    Setup {
        _dir: dir,
        home,
        image,
    }
}

fn no_spread() -> SchedulerOptions {
    SchedulerOptions {
        spread: SignedDuration::ZERO,
        ..Default::default()
    }
}

/// Ticks every `step` from `start` for `days` days; returns the end instant.
fn drive(s: &Setup, start: Timestamp, days: i64, step: SignedDuration) -> Timestamp {
    let end = start
        .checked_add(SignedDuration::from_hours(24 * days))
        .unwrap();
    let mut t = start;
    while t < end {
        s.home.scheduler_tick(t, &no_spread()).unwrap();
        t = t.checked_add(step).unwrap();
    }
    end
}

fn berlin(t: &str) -> Zoned {
    t.parse::<Timestamp>()
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
}

#[test]
fn daily_backups_fire_once_a_day_and_retention_keeps_exactly_what_the_rules_say() {
    let s = setup(
        serde_json::json!({"name": "p", "schedule": {"frequency": "daily", "times": ["02:30"], "time_zone": "Europe/Berlin"},
        "retention": {"daily": {"days": 7}, "weekly": {"weeks": 2, "days_of_week": ["sunday"]}}}),
    );
    let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    // Tick at each day's 02:30 local time (computed here, independently of the scheduler),
    // plus ticks in between that must do nothing.
    let first = start().to_zoned(tz.clone()).date().tomorrow().unwrap();
    let slots: Vec<Zoned> = (0..40)
        .map(|d| {
            first
                .checked_add(Span::new().days(d))
                .unwrap()
                .at(2, 30, 0, 0)
                .to_zoned(tz.clone())
                .unwrap()
        })
        .collect();
    for slot in &slots {
        let r = s
            .home
            .scheduler_tick(slot.timestamp(), &no_spread())
            .unwrap();
        assert_eq!(r.backups.len(), 1, "one backup at {slot}");
        assert_eq!(r.backups[0].skipped_slots, 0);
        for h in [1, 7, 13, 19] {
            let between = slot
                .timestamp()
                .checked_add(SignedDuration::from_hours(h))
                .unwrap();
            assert!(
                s.home
                    .scheduler_tick(between, &no_spread())
                    .unwrap()
                    .backups
                    .is_empty()
            );
        }
    }
    let backups: Vec<_> = s
        .home
        .list_jobs(1000)
        .unwrap()
        .into_iter()
        .filter(|j| j.operation == JobOperation::Backup)
        .collect();
    assert_eq!(backups.len(), 40);
    assert!(
        backups.iter().all(|j| j.status == JobStatus::Completed),
        "{:?}",
        backups
            .iter()
            .filter(|j| j.status != JobStatus::Completed)
            .map(|j| (&j.status, &j.error, &j.log))
            .collect::<Vec<_>>()
    );

    // What must exist at the last tick: the rules applied by hand.
    let end = slots
        .last()
        .unwrap()
        .checked_add(Span::new().hours(19))
        .unwrap();
    let expected: Vec<String> = slots
        .iter()
        .filter(|t| {
            let daily = end < t.checked_add(Span::new().days(7)).unwrap();
            let weekly = t.weekday() == jiff::civil::Weekday::Sunday
                && end < t.checked_add(Span::new().weeks(2)).unwrap();
            daily || weekly
        })
        .map(|t| kura_catalog::stamp(t.timestamp()))
        .rev()
        .collect();
    let remaining = s.home.list_rps("d").unwrap();
    let got: Vec<String> = remaining.iter().map(|r| r.time.clone()).collect();
    assert_eq!(got, expected);
    for rp in &remaining {
        let t = berlin(&rp.time);
        assert_eq!(rp.origin, "scheduled");
        assert!(rp.tags.contains(&"daily".to_string()));
        assert_eq!(
            rp.tags.contains(&"weekly".to_string()),
            t.weekday() == jiff::civil::Weekday::Sunday
        );
    }
}

#[test]
fn after_downtime_a_missed_backup_runs_once() {
    let s = setup(
        serde_json::json!({"name": "p", "schedule": {"frequency": "daily", "times": ["02:30"], "time_zone": "UTC"},
        "retention": {"daily": {"days": 30}}}),
    );
    let start = start();
    let t = drive(&s, start, 2, SignedDuration::from_hours(1));
    let before = s.home.list_rps("d").unwrap().len();
    // The server was down for five days.
    let back = t.checked_add(SignedDuration::from_hours(24 * 5)).unwrap();
    let r = s.home.scheduler_tick(back, &no_spread()).unwrap();
    assert_eq!(r.backups.len(), 1);
    assert_eq!(r.backups[0].skipped_slots, 4, "{:?}", r.backups);
    assert_eq!(s.home.list_rps("d").unwrap().len(), before + 1);
    // The same instant again: nothing more is due.
    assert!(
        s.home
            .scheduler_tick(back, &no_spread())
            .unwrap()
            .backups
            .is_empty()
    );
}

#[test]
fn a_missing_source_fails_its_backups_and_the_last_point_is_kept() {
    let s = setup(
        serde_json::json!({"name": "p", "schedule": {"frequency": "daily", "times": ["02:30"], "time_zone": "UTC"},
        "retention": {"daily": {"days": 7}}}),
    );
    let start = start();
    let t = drive(&s, start, 3, SignedDuration::from_hours(12));
    std::fs::remove_file(&s.image).unwrap();
    let t2 = drive(&s, t, 20, SignedDuration::from_hours(12));
    let rps = s.home.list_rps("d").unwrap();
    assert_eq!(
        rps.len(),
        1,
        "only the newest point survives, long after it expired"
    );
    let failed = s
        .home
        .list_jobs(1000)
        .unwrap()
        .into_iter()
        .filter(|j| j.status == JobStatus::Failed)
        .count();
    assert!(failed >= 19, "{failed}");
    let r = s
        .home
        .scheduler_tick(
            t2.checked_add(SignedDuration::from_hours(24)).unwrap(),
            &no_spread(),
        )
        .unwrap();
    assert!(
        r.backups[0].error.as_deref().unwrap().contains("missing"),
        "{:?}",
        r.backups
    );
}

#[test]
fn spread_offsets_are_deterministic_and_inside_the_window() {
    let w = SignedDuration::from_mins(10);
    let a = kura_engine::scheduler::spread_offset("item-a", w);
    assert_eq!(a, kura_engine::scheduler::spread_offset("item-a", w));
    let offsets: std::collections::BTreeSet<i64> = (0..50)
        .map(|i| kura_engine::scheduler::spread_offset(&format!("item-{i}"), w).as_secs())
        .collect();
    assert!(offsets.iter().all(|&o| (0..600).contains(&o)));
    assert!(offsets.len() > 40, "items spread out: {offsets:?}");
}

#[test]
fn hourly_policies_send_the_last_backup_of_the_day_to_the_vault_or_the_next_one_if_it_failed() {
    let s = setup(
        serde_json::json!({"name": "h", "schedule": {"frequency": "hourly", "interval_hours": 12, "window_start": "00:00", "window_hours": 24, "time_zone": "UTC"},
        "retention": {"daily": {"days": 30}}}),
    );
    let day = start()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .tomorrow()
        .unwrap();
    let at = |d: i64, h: i8| {
        day.checked_add(Span::new().days(d))
            .unwrap()
            .at(h, 0, 0, 0)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
    };
    let tags = |s: &Setup| -> Vec<Vec<String>> {
        s.home
            .list_rps("d")
            .unwrap()
            .into_iter()
            .map(|r| r.tags)
            .collect()
    };
    // The very first backup has no vault copy to lean on: it goes to the vault.
    s.home.scheduler_tick(at(0, 0), &no_spread()).unwrap();
    s.home.scheduler_tick(at(0, 12), &no_spread()).unwrap();
    s.home.scheduler_tick(at(1, 0), &no_spread()).unwrap();
    // Newest first: 00:00 of day 1 is kept only for instant restore; 12:00 went to the vault.
    assert_eq!(
        tags(&s)[..2],
        [
            vec!["instant-restore".to_string()],
            vec!["daily".to_string()]
        ]
    );
    // The last backup of day 1 fails (its source is gone for a moment)...
    let saved = std::fs::read(&s.image).unwrap();
    std::fs::remove_file(&s.image).unwrap();
    let r = s.home.scheduler_tick(at(1, 12), &no_spread()).unwrap();
    assert!(r.backups[0].error.is_some());
    std::fs::write(&s.image, saved).unwrap();
    // ...so the first backup of day 2 goes to the vault.
    s.home.scheduler_tick(at(2, 0), &no_spread()).unwrap();
    assert_eq!(tags(&s)[0], vec!["daily".to_string()], "{:?}", tags(&s));
    s.home.scheduler_tick(at(2, 12), &no_spread()).unwrap();
    assert_eq!(tags(&s)[0], vec!["daily".to_string()]);
}

#[test]
fn the_scheduler_collects_garbage_once_a_day() {
    let s = setup(
        serde_json::json!({"name": "p", "schedule": {"frequency": "daily", "times": ["02:30"], "time_zone": "UTC"},
        "retention": {"daily": {"days": 7}}}),
    );
    let opts = SchedulerOptions {
        spread: SignedDuration::ZERO,
        gc_every: Some(SignedDuration::from_hours(24)),
        ..Default::default()
    };
    let start = start();
    let gc_jobs = |s: &Setup| {
        s.home
            .list_jobs(1000)
            .unwrap()
            .into_iter()
            .filter(|j| j.operation == JobOperation::GarbageCollect)
            .count()
    };
    assert_eq!(
        s.home.scheduler_tick(start, &opts).unwrap().gc_jobs.len(),
        1
    );
    let later = start.checked_add(SignedDuration::from_hours(6)).unwrap();
    assert!(
        s.home
            .scheduler_tick(later, &opts)
            .unwrap()
            .gc_jobs
            .is_empty(),
        "not again the same day"
    );
    let next_day = start.checked_add(SignedDuration::from_hours(25)).unwrap();
    assert_eq!(
        s.home
            .scheduler_tick(next_day, &opts)
            .unwrap()
            .gc_jobs
            .len(),
        1
    );
    assert_eq!(gc_jobs(&s), 2);
    let never = SchedulerOptions {
        gc_every: None,
        ..opts
    };
    let far = start
        .checked_add(SignedDuration::from_hours(24 * 10))
        .unwrap();
    assert!(
        s.home
            .scheduler_tick(far, &never)
            .unwrap()
            .gc_jobs
            .is_empty()
    );
}

/// `--retain-until 2026-12-01` typed at 20:00 in Los Angeles (04:00 UTC the next day) means
/// the end of that Los Angeles day, not a UTC midnight already past; a date whose end has
/// passed is refused before anything runs.
#[test]
fn retain_until_dates_are_read_in_the_local_zone() {
    let dir = tempfile::tempdir().unwrap();
    let la = jiff::tz::TimeZone::get("America/Los_Angeles").unwrap();
    let typed_at: Timestamp = "2026-12-02T04:00:00Z".parse().unwrap();
    let home = Home::open_with(
        &dir.path().join("home"),
        std::sync::Arc::new(Fixed(typed_at)),
        la,
    )
    .unwrap();
    let opts = CreateVault {
        chunk_size: Some(64 << 10),
        no_encryption: true,
        ..Default::default()
    };
    home.create_vault("v", &opts, &Secrets::default()).unwrap();
    let image = dir.path().join("d.raw");
    std::fs::write(&image, vec![1u8; 1 << 16]).unwrap();
    home.protect_disk(&image, "v", Some("d"), None, None, &Secrets::default())
        .unwrap();
    let backup = |d: &str| {
        let o = kura_engine::BackupOptions {
            retain_until: Some(d.into()),
            ..Default::default()
        };
        home.backup("d", &Secrets::default(), &o, &kura_engine::NoProgress)
    };
    let r = backup("2026-12-01").unwrap();
    let rp = home
        .list_rps("d")
        .unwrap()
        .into_iter()
        .find(|p| p.id == r.rp_id)
        .unwrap();
    assert_eq!(
        rp.expires.as_deref(),
        Some("2026-12-02T08:00:00.000Z"),
        "the end of December 1 in Los Angeles"
    );
    let e = backup("2026-11-30").unwrap_err();
    assert!(e.to_string().contains("in the past"), "{e}");
    assert!(e.to_string().contains("America/Los_Angeles"), "{e}");
    assert_eq!(home.list_rps("d").unwrap().len(), 1, "nothing ran");
    // Retention at that moment keeps the point.
    let plan = home.retention_plan("d", typed_at).unwrap();
    assert!(plan.entries.iter().all(|x| x.action == "keep"), "{plan:?}");
}
