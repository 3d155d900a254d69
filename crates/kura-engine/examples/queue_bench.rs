//! The scheduler and job queue under load: N items with small images, all due at one slot.
//!
//!   cargo run --release -p kura-engine --example queue_bench -- [N ...] [--jobs J]
//!
//! For each N (default 100 and 1000): protects N items (1 MiB sparse raw images with 64 KiB
//! of distinct data each) in one vault under a daily policy, then at the slot's instant runs
//! one scheduler tick into a queue served like the server's, and reports the tick's time,
//! each backup's delay from the slot to its start (p50, p99, max), the wall time until the
//! last one ended, and the time of a tick with nothing due (every later tick of the day).
//! `--jobs J` sets the host limit (default: as the server, the number of cores); `--jobs 1`
//! is the one-after-another scheduler kura had before the queue.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use kura_engine::scheduler::Clock;
use kura_engine::{CreateVault, Home, JobQueue, QueueLimits, SchedulerOptions, Secrets};

struct Fixed(Timestamp);

impl Clock for Fixed {
    fn now(&self) -> Timestamp {
        self.0
    }
}

fn main() {
    let mut sizes = Vec::new();
    let mut limits = QueueLimits::for_this_machine();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--jobs" {
            let j: usize = args.next().and_then(|v| v.parse().ok()).expect("--jobs N");
            limits = QueueLimits {
                jobs: j,
                per_vault: j,
            };
        } else {
            sizes.push(a.parse::<usize>().expect("N is a number of items"));
        }
    }
    if sizes.is_empty() {
        sizes = vec![100, 1000];
    }
    println!(
        "| items | max_jobs | tick (queue all) | slot→start p50 | p99 | max | all done | idle tick |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        run(n, limits);
    }
}

fn run(n: usize, limits: QueueLimits) {
    let dir = tempfile::tempdir().expect("temporary directory");
    // Items are protected at 01:00 UTC; the policy's slot is 02:00.
    let t0: Timestamp = "2026-03-10T01:00:00Z".parse().unwrap();
    let slot: Timestamp = "2026-03-10T02:00:00Z".parse().unwrap();
    let home = Arc::new(
        Home::open_with(
            &dir.path().join("home"),
            Arc::new(Fixed(t0)),
            jiff::tz::TimeZone::UTC,
        )
        .expect("home"),
    );
    home.create_vault("v", &CreateVault::default(), &Secrets::default())
        .expect("vault");
    let policy = serde_json::json!({
        "name": "nightly",
        "schedule": {"frequency": "daily", "times": ["02:00"], "time_zone": "UTC"},
        "retention": {"daily": {"days": 7}}
    });
    home.create_policy("v", policy.to_string().as_bytes())
        .expect("policy");
    for i in 0..n {
        let image = dir.path().join(format!("d{i}.raw"));
        let f = std::fs::File::create(&image).expect("image");
        f.set_len(1 << 20).expect("image size");
        let data: Vec<u8> = (0..65536u32)
            .map(|k| (k.wrapping_mul(2654435761).wrapping_add(i as u32 * 7919) >> 13) as u8)
            .collect();
        f.write_all_at(&data, 4096).expect("image data");
        home.protect_disk(
            &image,
            "v",
            Some(&format!("d{i}")),
            Some("nightly"),
            None,
            &Secrets::default(),
        )
        .expect("protect");
    }
    let opts = SchedulerOptions {
        spread: SignedDuration::ZERO,
        limits,
        ..Default::default()
    };
    let queue = Arc::new(JobQueue::new(limits));
    let workers: Vec<_> = (0..limits.jobs)
        .map(|_| {
            let (home, queue) = (home.clone(), queue.clone());
            std::thread::spawn(move || queue.serve(&home))
        })
        .collect();

    let begin = Timestamp::now();
    let t = Instant::now();
    let report = home.schedule(slot, &opts, &queue).expect("tick");
    let tick = t.elapsed();
    let ids: Vec<String> = report
        .backups
        .iter()
        .filter_map(|b| b.job_id.clone())
        .collect();
    assert_eq!(
        ids.len(),
        n,
        "every item was due: {:?}",
        report.retention_errors
    );
    while queue.counts() != (0, 0) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut waits = Vec::new();
    let mut last_end = begin;
    for id in &ids {
        let j = home.job(id).expect("job");
        assert_eq!(j.status, kura_catalog::JobStatus::Completed, "{j:?}");
        let started: Timestamp = j.started.parse().unwrap();
        let ended: Timestamp = j.ended.as_deref().unwrap().parse().unwrap();
        waits.push(started.duration_since(begin).as_secs_f64());
        last_end = last_end.max(ended);
    }
    waits.sort_by(f64::total_cmp);
    let pct = |p: f64| waits[((waits.len() as f64 * p).ceil() as usize).clamp(1, waits.len()) - 1];
    // Every later tick of the day finds nothing due.
    let t = Instant::now();
    let idle = home
        .schedule(
            slot.checked_add(SignedDuration::from_mins(1)).unwrap(),
            &opts,
            &queue,
        )
        .expect("idle tick");
    let idle_tick = t.elapsed();
    assert!(idle.jobs.is_empty(), "{:?}", idle.jobs);
    queue.close(&home);
    for w in workers {
        let _ = w.join();
    }
    println!(
        "| {n} | {} | {:.0} ms | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.1} ms |",
        limits.jobs,
        tick.as_secs_f64() * 1000.0,
        pct(0.50),
        pct(0.99),
        waits.last().copied().unwrap_or(0.0),
        last_end.duration_since(begin).as_secs_f64(),
        idle_tick.as_secs_f64() * 1000.0,
    );
}
