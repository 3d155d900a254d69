//! The web UI's pages at scale: the API calls the dashboard and the item list make, timed on
//! a real server socket with a catalog of N items and P recovery points per item.
//!
//!   cargo run --release -p kura-server --example ui_bench -- [ITEMS] [POINTS_PER_ITEM]
//!
//! Default 1,000 items with 100 points each (100,000 points). Items are protected for real
//! (1 MiB sparse raw images, format given); their points are catalog rows inserted in bulk,
//! as attach or years of backups would leave them. Each call is made 5 times after one
//! warm-up; the table gives the median and the slowest, and the answer's size.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kura_engine::{CreateVault, Home, Secrets};
use kura_server::AppState;

const TOKEN: &str = "bench-token-0123456789abcdef";

fn main() {
    let mut args = std::env::args().skip(1);
    let items: usize = args.next().map_or(1000, |a| a.parse().expect("ITEMS"));
    let per_item: usize = args
        .next()
        .map_or(100, |a| a.parse().expect("POINTS_PER_ITEM"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let home = Home::open(&dir.path().join("home")).expect("home");
    kura_server::first_start(&home, Some(TOKEN)).expect("admin token");
    home.create_vault(
        "v",
        &CreateVault {
            no_encryption: true,
            ..Default::default()
        },
        &Secrets::default(),
    )
    .expect("vault");
    let made = Instant::now();
    let image = dir.path().join("d.raw");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    let now = jiff::Timestamp::now();
    let mut rows = Vec::with_capacity(per_item);
    for i in 0..items {
        let img = dir.path().join(format!("d{i}.raw"));
        std::fs::hard_link(&image, &img).expect("image link");
        let item = home
            .protect_disk(
                &img,
                "v",
                Some(&format!("item{i:05}")),
                None,
                Some("raw"),
                &Secrets::default(),
            )
            .expect("protect");
        rows.clear();
        for p in 0..per_item {
            let t = now - jiff::SignedDuration::from_hours(24 * p as i64);
            rows.push(kura_catalog::RpRow {
                id: format!("{:016x}{:016x}", i, p),
                item_id: item.id.clone(),
                time: kura_catalog::stamp(t),
                logical_size: 1 << 20,
                stored_size: 4096,
                consistency: "crash".into(),
                tier: "vault-standard".into(),
                retain_until: None,
                job_id: None,
                tags: vec!["daily".into()],
                expires: Some(kura_catalog::stamp(
                    t + jiff::SignedDuration::from_hours(24 * 365),
                )),
                origin: "scheduled".into(),
                used_bytes: 1 << 20,
                snapshot: None,
                snapshot_expires: None,
            });
        }
        home.catalog().insert_rps(&rows).expect("points");
    }
    eprintln!(
        "made {items} items and {} points in {:.1} s",
        items * per_item,
        made.elapsed().as_secs_f64()
    );

    let home = Arc::new(home);
    let queue = Arc::new(kura_engine::JobQueue::new(kura_engine::QueueLimits {
        jobs: 2,
        per_vault: 2,
    }));
    let state = Arc::new(AppState {
        home,
        queue,
        secrets: Secrets::default(),
        roots: kura_server::Roots::defaults(dir.path()),
        stopping: Default::default(),
        scheduler: Default::default(),
        secure_cookies: false,
        exports: Default::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("listen");
    let addr = listener.local_addr().expect("address");
    rt.spawn(async move { axum::serve(listener, kura_server::app(state)).await });

    let since = kura_catalog::stamp(now - jiff::SignedDuration::from_hours(24));
    println!("| page | call | median | slowest | answer |");
    println!("|---|---|---|---|---|");
    for (page, path) in [
        (
            "dashboard",
            format!("/api/v1/jobs?limit=10000&since={since}"),
        ),
        ("dashboard", "/api/v1/items".to_string()),
        ("dashboard", "/api/v1/usage".to_string()),
        ("dashboard", "/api/v1/vaults".to_string()),
        ("dashboard", "/api/v1/vaults/v/trend".to_string()),
        ("item list", "/api/v1/items".to_string()),
        (
            "item page",
            "/api/v1/items/item00500/recovery-points".to_string(),
        ),
    ] {
        get(addr, &path); // warm-up
        let mut times: Vec<Duration> = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let t = Instant::now();
            bytes = get(addr, &path);
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "| {page} | `GET {}` | {:.0} ms | {:.0} ms | {:.1} MiB |",
            path.split('?').next().unwrap_or(&path),
            times[2].as_secs_f64() * 1000.0,
            times[4].as_secs_f64() * 1000.0,
            bytes as f64 / (1 << 20) as f64
        );
    }
}

/// One GET with the token; returns the answer's length (panics on a non-200 answer).
fn get(addr: SocketAddr, path: &str) -> usize {
    let mut c = TcpStream::connect(addr).expect("connect");
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).expect("answer");
    let head = String::from_utf8_lossy(&raw[..raw.len().min(64)]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    raw.len()
}
