//! The job queue: host and vault limits, Queued jobs, cancel while waiting, close.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use kura_catalog::{JobOperation, JobStatus};
use kura_engine::{CreateVault, Home, JobQueue, JobRequest, QueueLimits, Secrets};

fn home_with_items(dir: &std::path::Path, items: &[(&str, &str)]) -> Home {
    let home = Home::open(&dir.join("home")).unwrap();
    let opts = CreateVault {
        chunk_size: Some(64 << 10),
        no_encryption: true,
        ..Default::default()
    };
    for (vault, item) in items {
        if home.vault_info(vault).is_err() {
            home.create_vault(vault, &opts, &Secrets::default())
                .unwrap();
        }
        let image = dir.join(format!("{item}.raw"));
        std::fs::File::create(&image)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        home.protect_disk(&image, vault, Some(item), None, None, &Secrets::default())
            .unwrap();
    }
    home
}

/// Waits (up to 20 s) until the job has `status`.
fn wait_status(home: &Home, id: &str, status: JobStatus) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = home.job(id).unwrap().status;
        if now == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} is {now}, expected {status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A job whose work reports its start on `started` and then waits for the test to let it go.
fn held(item: &str, started: &mpsc::Sender<String>) -> (JobRequest, mpsc::Sender<()>) {
    let (release, hold) = mpsc::channel::<()>();
    let started = started.clone();
    let name = item.to_string();
    let req = JobRequest {
        operation: JobOperation::Verify,
        target: item.to_string(),
        exclusive: false,
        work: Box::new(move |home: &Home, id: &str| {
            assert_eq!(home.job(id).unwrap().status, JobStatus::InProgress);
            started.send(name).unwrap();
            let _ = hold.recv();
            home.catalog()
                .finish_job(id, JobStatus::Completed, None, None)
                .unwrap();
            Ok(())
        }),
    };
    (req, release)
}

#[test]
fn jobs_wait_queued_within_the_host_and_vault_limits_and_a_full_vault_lets_others_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let home = home_with_items(
        dir.path(),
        &[
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b1"),
            ("b", "b2"),
        ],
    );
    let queue = JobQueue::new(QueueLimits {
        jobs: 3,
        per_vault: 2,
    });
    let (started_tx, started) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| queue.serve(&home));
        }
        let mut ids = std::collections::HashMap::new();
        let mut releases = std::collections::HashMap::new();
        for item in ["a1", "a2", "a3", "b1", "b2"] {
            let (req, release) = held(item, &started_tx);
            ids.insert(item, queue.submit(&home, req).unwrap());
            releases.insert(item, release);
        }
        let recv = || started.recv_timeout(Duration::from_secs(20)).unwrap();
        // Vault a takes its two slots; a3 waits for its vault, so b1 goes before it.
        let mut first: Vec<String> = (0..3).map(|_| recv()).collect();
        first.sort();
        assert_eq!(first, ["a1", "a2", "b1"]);
        for item in ["a3", "b2"] {
            assert_eq!(home.job(&ids[item]).unwrap().status, JobStatus::Queued);
            assert!(home.job(&ids[item]).unwrap().queued.is_some());
        }
        assert_eq!(queue.counts(), (2, 3));
        assert!(
            started.recv_timeout(Duration::from_millis(300)).is_err(),
            "nothing more starts while the host is full"
        );
        // A job cancelled while it waits ends Cancelled and never runs.
        let cancelled = home.cancel_job(&ids["b2"]).unwrap();
        assert_eq!(cancelled.status, JobStatus::Cancelled);
        // One of vault a's jobs ends: a3 gets the slot (b2 is gone).
        releases["a1"].send(()).unwrap();
        assert_eq!(recv(), "a3");
        wait_status(&home, &ids["a3"], JobStatus::InProgress);
        for item in ["a2", "a3", "b1"] {
            releases[item].send(()).unwrap();
        }
        for item in ["a1", "a2", "a3", "b1"] {
            wait_status(&home, &ids[item], JobStatus::Completed);
        }
        assert!(
            started.recv_timeout(Duration::from_millis(300)).is_err(),
            "the cancelled job never started"
        );
        assert_eq!(home.job(&ids["b2"]).unwrap().status, JobStatus::Cancelled);
        queue.close(&home);
    });
}

#[test]
fn a_closed_queue_cancels_what_waits_and_takes_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let home = home_with_items(dir.path(), &[("a", "a1"), ("a", "a2")]);
    let queue = JobQueue::new(QueueLimits {
        jobs: 1,
        per_vault: 1,
    });
    let (started_tx, started) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| queue.serve(&home));
        let (req, release) = held("a1", &started_tx);
        let running = queue.submit(&home, req).unwrap();
        assert_eq!(started.recv_timeout(Duration::from_secs(20)).unwrap(), "a1");
        let (req, _keep) = held("a2", &started_tx);
        let waiting = queue.submit(&home, req).unwrap();
        assert_eq!(home.job(&waiting).unwrap().status, JobStatus::Queued);
        assert_eq!(queue.close(&home), vec![waiting.clone()]);
        assert_eq!(home.job(&waiting).unwrap().status, JobStatus::Cancelled);
        let (req, _) = held("a2", &started_tx);
        let err = queue.submit(&home, req).unwrap_err();
        assert!(err.to_string().contains("stopping"), "{err}");
        // The running job finishes; the worker then stops.
        release.send(()).unwrap();
        wait_status(&home, &running, JobStatus::Completed);
    });
    assert!(started.try_recv().is_err(), "a2 never ran");
}

#[test]
fn an_exclusive_job_is_refused_while_one_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let home = home_with_items(dir.path(), &[("a", "a1")]);
    let queue = JobQueue::new(QueueLimits {
        jobs: 1,
        per_vault: 1,
    });
    let gc = || JobRequest {
        operation: JobOperation::GarbageCollect,
        target: "a".into(),
        exclusive: true,
        work: Box::new(|home: &Home, id: &str| {
            home.catalog()
                .finish_job(id, JobStatus::Completed, None, None)?;
            Ok(())
        }),
    };
    let first = queue.submit(&home, gc()).unwrap();
    let err = queue.submit(&home, gc()).unwrap_err();
    assert!(
        err.to_string().contains(&format!("job {first}")) && err.to_string().contains("queued"),
        "{err}"
    );
    // Nothing serves this queue: drain runs it here.
    queue.drain(&home);
    assert_eq!(home.job(&first).unwrap().status, JobStatus::Completed);
    // Once it ended, the next one is accepted.
    queue.submit(&home, gc()).unwrap();
    queue.drain(&home);
}
