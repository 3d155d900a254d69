//! Catalog benchmark: 10,000 items, 1,000,000 recovery points and 100,000 jobs; then the
//! median time of listing one item's recovery points and of the latest 100 jobs.
//!
//! Run: `cargo run --release -p kura-catalog --example catalog_bench [DIR]`

use std::time::Instant;

use kura_catalog::{Catalog, ItemRow, JobOperation, JobStatus, RpRow, VaultRow};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("kura-catalog-bench-{}.db", std::process::id()));
    let cat = Catalog::open(&path).expect("open catalog");
    let t = Instant::now();
    cat.insert_vault(&VaultRow {
        id: "v".into(),
        name: "v".into(),
        path: "/v".into(),
        chunk_size: 4 << 20,
        encryption: "none".into(),
        cipher: None,
        key_file: None,
        created: "2026-01-01T00:00:00.000Z".into(),
        redundancy: "local".into(),
        replica: None,
    })
    .unwrap();
    let items = 10_000;
    let per_item = 100;
    for i in 0..items {
        cat.insert_item(&ItemRow {
            id: format!("item{i:05}"),
            name: format!("item{i:05}"),
            vault_id: "v".into(),
            kind: "disk".into(),
            source: format!("/images/{i}.raw"),
            created: "2026-01-01T00:00:00.000Z".into(),
            policy: Some("DefaultPolicy".into()),
            last_slot: None,
            state: "protected".into(),
            deleted_at: None,
            spec: None,
            damaged_points: 0,
        })
        .unwrap();
    }
    let rows: Vec<RpRow> = (0..items * per_item)
        .map(|n| {
            let (i, k) = (n / per_item, n % per_item);
            RpRow {
                id: format!("rp{k:03}-{i:05}"),
                item_id: format!("item{i:05}"),
                time: format!(
                    "2026-{:02}-{:02}T02:00:00.000Z",
                    1 + k / 28 % 12,
                    1 + k % 28
                ),
                logical_size: 1 << 30,
                stored_size: 1 << 20,
                consistency: "crash".into(),
                tier: "vault-standard".into(),
                retain_until: None,
                job_id: None,
                tags: vec!["daily".into()],
                expires: Some("2027-01-01T00:00:00.000Z".into()),
                origin: "scheduled".into(),
                used_bytes: 1 << 29,
                snapshot: None,
                snapshot_expires: None,
            }
        })
        .collect();
    cat.insert_rps(&rows).unwrap();
    for j in 0..100_000 {
        let id = format!("job{j:06}");
        cat.start_job(
            &id,
            JobOperation::Backup,
            &format!("item{:05}", j % items),
            false,
        )
        .unwrap();
        cat.finish_job(&id, JobStatus::Completed, None, None)
            .unwrap();
    }
    println!(
        "populated {items} items, {} recovery points, 100000 jobs in {:.1} s",
        rows.len(),
        t.elapsed().as_secs_f64()
    );

    let mut rp_times = Vec::new();
    for n in 0..200 {
        let item = format!("item{:05}", (n * 7919) % items);
        let t = Instant::now();
        let rps = cat.list_rps(&item).unwrap();
        rp_times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(rps.len(), per_item);
    }
    let mut job_times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let jobs = cat.list_jobs(100).unwrap();
        job_times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(jobs.len(), 100);
    }
    println!(
        "list one item's recovery points: median {:.3} ms",
        median(rp_times)
    );
    println!(
        "list the latest 100 jobs:        median {:.3} ms",
        median(job_times)
    );
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let _ = std::fs::remove_file(path.with_extension("db-shm"));
}
