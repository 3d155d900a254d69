//! Garbage collection: what it removes, what it keeps, and a stress test against concurrent
//! backups.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use kura_engine::{
    BackupOptions, CreateVault, GcOptions, Home, NoProgress, RestoreFormat, RestoreOptions,
    Secrets, VerifyScope,
};

const BLOCK: usize = 64 << 10;

fn home(dir: &Path) -> Home {
    let home = Home::open(&dir.join("home")).unwrap();
    let opts = CreateVault {
        chunk_size: Some(BLOCK as u32),
        no_encryption: true,
        ..Default::default()
    };
    home.create_vault("v", &opts, &Secrets::default()).unwrap();
    home
}

/// Block `b` of variant `v`: recognisable, deterministic content.
fn block(b: usize, v: u8) -> Vec<u8> {
    let mut x = ((b as u64) << 8 | u64::from(v)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write_image(path: &Path, variants: &[u8]) -> Vec<u8> {
    let mut all = Vec::new();
    for (b, v) in variants.iter().enumerate() {
        all.extend(block(b, *v));
    }
    let f = std::fs::File::create(path).unwrap();
    f.write_all_at(&all, 0).unwrap();
    all
}

fn no_grace() -> GcOptions {
    GcOptions {
        grace: SignedDuration::ZERO,
        dry_run: false,
        job_id: None,
    }
}

fn far_future() -> Timestamp {
    Timestamp::now()
        .checked_add(SignedDuration::from_hours(24 * 3650))
        .unwrap()
}

fn chunks(dir: &Path) -> usize {
    let mut n = 0;
    let root = dir.join("home/vaults/v/chunks");
    for d in std::fs::read_dir(root).unwrap() {
        n += std::fs::read_dir(d.unwrap().path()).unwrap().count();
    }
    n
}

#[test]
fn gc_removes_only_unreferenced_chunks_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let h = home(dir.path());
    let img = dir.path().join("d.raw");
    write_image(&img, &[0; 8]);
    h.protect_disk(&img, "v", Some("d"), None, None, &Secrets::default())
        .unwrap();
    h.backup(
        "d",
        &Secrets::default(),
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let expected = write_image(&img, &[1, 1, 0, 0, 0, 0, 0, 0]);
    h.backup(
        "d",
        &Secrets::default(),
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(chunks(dir.path()), 10);
    // Nothing is garbage while both points exist.
    let r = h
        .gc("v", &no_grace(), &Secrets::default(), &NoProgress)
        .unwrap();
    assert_eq!((r.newly_doomed, r.deleted), (0, 0));
    // Drop the first point: its two own chunks become garbage, but only after the grace.
    let plan = h
        .retention_apply("d", far_future(), &Secrets::default())
        .unwrap();
    assert_eq!(plan.deletions().count(), 1);
    let r = h
        .gc("v", &GcOptions::default(), &Secrets::default(), &NoProgress)
        .unwrap();
    assert_eq!((r.newly_doomed, r.deleted, r.waiting), (2, 0, 2));
    let r = h
        .gc("v", &no_grace(), &Secrets::default(), &NoProgress)
        .unwrap();
    assert_eq!((r.deleted, r.waiting), (2, 0), "{r:?}");
    assert!(r.freed_bytes > 0);
    assert_eq!(chunks(dir.path()), 8);
    let v = h
        .verify(
            &VerifyScope::Vault("v".into()),
            &Secrets::default(),
            &NoProgress,
        )
        .unwrap();
    assert!(v.ok());
    let out = dir.path().join("out.raw");
    h.restore_disk(
        "d",
        &RestoreOptions {
            rp: "latest".into(),
            to: out.clone(),
            format: RestoreFormat::Raw,
            force: false,
            job_id: None,
            disk: None,
            decrypt: false,
            from_replica: false,
        },
        &Secrets::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), expected);
}

#[test]
fn a_writer_older_than_a_mark_keeps_the_marked_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let h = home(dir.path());
    let img = dir.path().join("d.raw");
    write_image(&img, &[0; 4]);
    h.protect_disk(&img, "v", Some("d"), None, None, &Secrets::default())
        .unwrap();
    h.backup(
        "d",
        &Secrets::default(),
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    write_image(&img, &[1; 4]);
    h.backup(
        "d",
        &Secrets::default(),
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    h.retention_apply("d", far_future(), &Secrets::default())
        .unwrap();
    // A writer starts (as a backup would) before GC marks the old chunks.
    let vault_id = h.catalog().vault("v").unwrap().id;
    h.catalog()
        .start_lease("writer", &vault_id, "backup")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let r = h
        .gc("v", &no_grace(), &Secrets::default(), &NoProgress)
        .unwrap();
    assert_eq!((r.newly_doomed, r.deleted, r.waiting), (4, 0, 4));
    // The writer reuses one of them: it rescues it.
    assert_eq!(
        h.catalog()
            .rescue(&vault_id, &h.catalog().doomed(&vault_id).unwrap()[0].chunk)
            .unwrap(),
        kura_catalog::Rescue::Rescued
    );
    h.catalog().end_lease("writer").unwrap();
    let r = h
        .gc("v", &no_grace(), &Secrets::default(), &NoProgress)
        .unwrap();
    // The rescued chunk is doomed again (still unreferenced), with a new mark; the three
    // others go.
    assert_eq!((r.deleted, r.newly_doomed, r.waiting), (3, 1, 1), "{r:?}");
}

#[test]
fn gc_refuses_to_run_on_a_damaged_index() {
    let dir = tempfile::tempdir().unwrap();
    let h = home(dir.path());
    let img = dir.path().join("d.raw");
    write_image(&img, &[0; 2]);
    h.protect_disk(&img, "v", Some("d"), None, None, &Secrets::default())
        .unwrap();
    let rp = h
        .backup(
            "d",
            &Secrets::default(),
            &BackupOptions::default(),
            &NoProgress,
        )
        .unwrap()
        .rp_id;
    std::fs::write(
        dir.path()
            .join(format!("home/vaults/v/rps/{rp}/disk0.index")),
        b"junk",
    )
    .unwrap();
    let e = h
        .gc("v", &no_grace(), &Secrets::default(), &NoProgress)
        .unwrap_err();
    assert!(e.to_string().contains("nothing deleted"), "{e}");
    assert_eq!(chunks(dir.path()), 2);
}

#[test]
fn stress_backups_and_gc_run_concurrently_without_losing_a_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let h = home(dir.path());
    let items: Vec<(String, PathBuf)> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("d{i}.raw"));
            write_image(&p, &[0; 16]);
            let name = format!("d{i}");
            h.protect_disk(&p, "v", Some(&name), None, None, &Secrets::default())
                .unwrap();
            (name, p)
        })
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let gc_runs = std::sync::atomic::AtomicUsize::new(0);
    let deleted = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        // Reaper: drop every point but the newest, collect garbage with no grace, repeat.
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for (name, _) in &items {
                    h.retention_apply(name, far_future(), &Secrets::default())
                        .unwrap();
                }
                let r = h
                    .gc("v", &no_grace(), &Secrets::default(), &NoProgress)
                    .unwrap();
                gc_runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                deleted.fetch_add(r.deleted, std::sync::atomic::Ordering::SeqCst);
            }
        });
        // Writer: contents flip between a few variants per block, so chunks keep becoming
        // garbage and being reused; every new point is verified at once. The guard stops the
        // reaper even if an assertion fails.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _stop = Stop(&done);
        let mut seed = 7u64;
        for round in 0..40 {
            let (name, path) = &items[round % 2];
            let variants: Vec<u8> = (0..16)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 62) as u8
                })
                .collect();
            let expected = write_image(path, &variants);
            let r = h
                .backup(
                    name,
                    &Secrets::default(),
                    &BackupOptions::default(),
                    &NoProgress,
                )
                .unwrap();
            let v = h
                .verify(
                    &VerifyScope::Rp(r.rp_id.clone()),
                    &Secrets::default(),
                    &NoProgress,
                )
                .unwrap();
            assert!(v.ok(), "round {round}: {:?}", v.problems);
            let out = dir.path().join(format!("r{round}.raw"));
            let opts = RestoreOptions {
                rp: r.rp_id.clone(),
                to: out.clone(),
                format: RestoreFormat::Raw,
                force: false,
                job_id: None,
                disk: None,
                decrypt: false,
                from_replica: false,
            };
            h.restore_disk(name, &opts, &Secrets::default(), &NoProgress)
                .unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), expected, "round {round}");
            std::fs::remove_file(&out).unwrap();
        }
    });
    assert!(
        gc_runs.load(std::sync::atomic::Ordering::SeqCst) > 5,
        "GC really ran alongside"
    );
    assert!(
        deleted.load(std::sync::atomic::Ordering::SeqCst) > 20,
        "GC really deleted chunks meanwhile"
    );
    h.gc("v", &no_grace(), &Secrets::default(), &NoProgress)
        .unwrap();
    let v = h
        .verify(
            &VerifyScope::Vault("v".into()),
            &Secrets::default(),
            &NoProgress,
        )
        .unwrap();
    assert!(v.ok(), "{:?}", v.problems);
}
