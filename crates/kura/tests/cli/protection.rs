//! Stop protection, resume, soft delete, undelete and purge through the CLI.

use super::*;

fn protected_item(e: &Env) -> PathBuf {
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 3)]);
    e.protect(&img, "v", &[]);
    e.backup("d");
    img
}

#[test]
fn item_show_reports_protection_state_and_health() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1000, 3)]);
    e.protect(&img, "v", &[]);
    let st = e.json(&["item", "show", "d"]);
    assert_eq!(st["protection_state"], "IRPending");
    assert_eq!(st["last_backup_status"], "IRPending");
    assert_eq!(st["policy"], "DefaultPolicy");
    e.backup("d");
    let st = e.json(&["item", "show", "d"]);
    assert_eq!(
        (
            st["protection_state"].as_str(),
            st["health_status"].as_str()
        ),
        (Some("Protected"), Some("Passed"))
    );
    std::fs::remove_file(&img).unwrap();
    e.fails(&["backup", "now", "d"]);
    let st = e.json(&["item", "show", "d"]);
    assert_eq!(st["protection_state"], "ProtectionError");
    assert_eq!(st["last_backup_status"], "Unhealthy");
    assert_eq!(st["health_status"], "ActionRequired");
    assert!(st["health_details"].to_string().contains("missing"), "{st}");
    assert_eq!(st["recovery_points"], 1, "the last point is kept");
}

#[test]
fn stop_retain_resume_and_refusals() {
    let e = Env::at("2026-03-10T09:00:00Z");
    let _img = protected_item(&e);
    let st = e.json(&["item", "stop", "d"]);
    assert_eq!(st["protection_state"], "ProtectionStopped");
    assert_eq!(st["policy"], Value::Null);
    let (_, err) = e.fails(&["backup", "now", "d"]);
    assert_eq!(err["error"]["code"], "conflict");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("resume"),
        "{err}"
    );
    // Data is retained: retention keeps everything, restores work.
    // The home's clock started at 2026-03-10 09:00 UTC: 400 days later.
    let far = "2027-04-14T09:00:00Z";
    let plan = e.json(&["retention", "plan", "d", "--at", far]);
    assert!(
        plan["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["action"] == "keep")
    );
    e.restore("d", "latest", &e.path("r.raw"), "raw");
    let (_, err) = e.fails(&["item", "stop", "d"]);
    assert_eq!(err["error"]["code"], "conflict");
    let (_, err) = e.fails(&["item", "resume", "d", "--policy", "nope"]);
    assert_eq!(err["error"]["code"], "not_found");
    let st = e.json(&["item", "resume", "d", "--policy", "DefaultPolicy"]);
    assert_eq!(st["protection_state"], "Protected");
    e.backup("d");
    let (_, err) = e.fails(&["item", "undelete", "d"]);
    assert_eq!(err["error"]["code"], "conflict");
    let ops: Vec<String> = e
        .json(&["job", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["operation"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ops.contains(&"DisableBackup".to_string()) && ops.contains(&"ConfigureBackup".to_string()),
        "{ops:?}"
    );
}

#[test]
fn soft_delete_undelete_and_purge_after_the_period() {
    let e = Env::at("2026-03-10T09:00:00Z");
    let img = protected_item(&e);
    let st = e.json(&["item", "stop", "d", "--delete-data"]);
    assert_eq!(st["protection_state"], "SoftDeleted");
    assert!(st["purge_at"].as_str().is_some());
    let (_, err) = e.fails(&[
        "restore",
        "disk",
        "d",
        "--rp",
        "latest",
        "--to",
        e.path("x.raw").to_str().unwrap(),
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("undelete"),
        "{err}"
    );
    // GC keeps the chunks of soft-deleted points.
    let chunks = e.chunk_files("v").len();
    e.json(&["gc", "--vault", "v", "--grace", "0"]);
    e.json(&["gc", "--vault", "v", "--grace", "0"]);
    assert_eq!(e.chunk_files("v").len(), chunks);
    let st = e.json(&["item", "undelete", "d"]);
    assert_eq!(st["protection_state"], "ProtectionStopped");
    e.restore("d", "latest", &e.path("back.raw"), "raw");
    assert!(same_file(&img, &e.path("back.raw")));

    // Soft-delete again; 14 days later the scheduler purges it and GC frees the chunks.
    e.json(&["item", "stop", "d", "--delete-data"]);
    // The home's clock started at 2026-03-10 09:00 UTC: 13 days and 15 days later.
    let tick = e.json(&["scheduler", "tick", "--now", "2026-03-23T12:00:00Z"]);
    assert_eq!(tick["purged"], serde_json::json!([]));
    let tick = e.json(&["scheduler", "tick", "--now", "2026-03-25T12:00:00Z"]);
    assert_eq!(tick["purged"], serde_json::json!(["d"]));
    assert_eq!(e.json(&["item", "list"]).as_array().unwrap().len(), 0);
    e.json(&["gc", "--vault", "v", "--grace", "0"]);
    e.json(&["gc", "--vault", "v", "--grace", "0"]);
    assert_eq!(e.chunk_files("v").len(), 0, "purged data is collected");
    // The image can be protected again.
    e.protect(&img, "v", &[]);
}

#[test]
fn soft_delete_settings() {
    let e = Env::new();
    let _img = protected_item(&e);
    let (_, err) = e.fails(&["vault", "set", "v", "--soft-delete-days", "13"]);
    assert!(err["error"]["message"].as_str().unwrap().contains("14-180"));
    let (_, err) = e.fails(&["vault", "set", "v", "--soft-delete", "maybe"]);
    assert_eq!(err["error"]["code"], "invalid");
    e.json(&["vault", "set", "v", "--soft-delete", "disabled"]);
    assert_eq!(e.json(&["vault", "show", "v"])["soft_delete"], "disabled");
    // With soft delete disabled, deleting data deletes it at once.
    let st = e.json(&["item", "stop", "d", "--delete-data"]);
    assert_eq!(st["protection_state"], "Deleted");
    assert_eq!(e.json(&["item", "list"]).as_array().unwrap().len(), 0);
    assert!(
        e.json(&["verify", "--vault", "v"])["problems"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    e.json(&[
        "vault",
        "set",
        "v",
        "--soft-delete",
        "always-on",
        "--soft-delete-days",
        "30",
    ]);
    let (_, err) = e.fails(&["vault", "set", "v", "--soft-delete", "enabled"]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be undone")
    );
    let show = e.json(&["vault", "show", "v"]);
    assert_eq!(
        (
            show["soft_delete"].as_str(),
            show["soft_delete_days"].as_u64()
        ),
        (Some("always-on"), Some(30))
    );
}

#[test]
fn usage_report() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    // 2 MiB allocated of a 64 MiB sparse disk, compressible half of it.
    make_image(&img, 64 << 20, &[(0, 2 << 20, 9)]);
    e.protect(&img, "v", &[]);
    e.backup("d");
    e.backup("d"); // nothing changed: dedup doubles the logical size, not the stored one
    let u = e.json(&["usage"]);
    let item = &u[0]["items"][0];
    assert_eq!(item["protected_bytes"], 2 << 20);
    assert_eq!(item["instance_tier"], "small");
    assert_eq!(item["protected_instances"], 1);
    assert_eq!(item["recovery_points"], 2);
    assert_eq!(item["logical_bytes"], 4 << 20);
    let stored = item["stored_bytes"].as_u64().unwrap();
    assert!(
        stored > 0 && stored < 2 << 20,
        "compressed and deduplicated: {stored}"
    );
    assert!(item["ratio"].as_f64().unwrap() > 2.0, "{item}");
    assert!(u[0]["stored_bytes"].as_u64().unwrap() >= stored);
    let (_, err) = e.fails(&["usage", "--vault", "nope"]);
    assert_eq!(err["error"]["code"], "not_found");
}

#[test]
fn backup_jobs_report_their_snapshot_and_transfer_sub_tasks() {
    let e = Env::new();
    let img = protected_item(&e);
    let job = &e.json(&["job", "list"])[0];
    let tasks = &job["tasks"];
    assert_eq!(tasks[0]["name"], "snapshot");
    assert_eq!(tasks[0]["status"], "Skipped");
    assert!(tasks[0]["detail"].as_str().unwrap().contains("unavailable"));
    assert_eq!(
        (tasks[1]["name"].as_str(), tasks[1]["status"].as_str()),
        (Some("transfer"), Some("Completed"))
    );
    std::fs::remove_file(&img).unwrap();
    e.fails(&["backup", "now", "d"]);
    let job = &e.json(&["job", "list"])[0];
    assert_eq!(job["status"], "Failed");
    assert_eq!(job["tasks"][1]["status"], "Failed");
}

#[test]
fn the_cli_prints_the_job_id_as_the_job_starts() {
    let e = Env::new();
    let _img = protected_item(&e);
    let o = e.run(&["backup", "now", "d"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let out = String::from_utf8_lossy(&o.stdout);
    let id = e.json(&["job", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&format!("job {id} started: Backup of d")),
        "stderr: {err}"
    );
    assert!(out.contains(&id), "stdout: {out}");
}

#[test]
fn the_vault_trend_follows_backups_and_gc_and_estimates_when_the_disk_is_full() {
    // Each day is its own fixed clock, so this test runs on the host: a server keeps the
    // clock it started with.
    let e = Env::at("2026-03-01T00:00:00Z");
    e.on_host();
    let day = |d: u32, args: &[&str]| {
        let mut c = e.cmd(args);
        c.env(
            "KURA_TEST_CLOCK",
            clock_at(&format!("2026-03-{d:02}T06:00:00Z")),
        );
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 4 << 20, &[]);
    e.protect(&img, "v", &[]);
    let empty = e.json(&["vault", "trend", "v"]);
    assert_eq!(empty["samples"], serde_json::json!([]));
    assert!(empty["growth_bytes_per_day"].is_null() && empty["estimated_full"].is_null());
    // Every day the disk gets 512 KiB of new data, and the vault grows with it.
    for d in 1..=4u32 {
        make_image_part(&img, u64::from(d) << 19, 1 << 19, u64::from(d) + 100);
        day(d, &["backup", "now", "d"]);
    }
    let t: Value =
        serde_json::from_str(&day(4, &["--output", "json", "vault", "trend", "v"])).unwrap();
    let samples = t["samples"].as_array().unwrap();
    let days: Vec<&str> = samples
        .iter()
        .map(|s| &s["at"].as_str().unwrap()[..10])
        .collect();
    assert_eq!(
        days,
        ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"],
        "{t}"
    );
    let sizes: Vec<u64> = samples
        .iter()
        .map(|s| s["stored_bytes"].as_u64().unwrap())
        .collect();
    assert!(
        sizes.windows(2).all(|w| w[1] > w[0]),
        "grows every day: {sizes:?}"
    );
    let growth = t["growth_bytes_per_day"].as_f64().unwrap();
    let step = (sizes[3] - sizes[0]) as f64 / 3.0;
    assert!(
        (growth - step).abs() < step * 0.2,
        "{growth} per day, steps of about {step}"
    );
    let fs = &t["filesystem"];
    assert!(fs["available_bytes"].as_u64().unwrap() <= fs["total_bytes"].as_u64().unwrap());
    let full: jiff::Timestamp = t["estimated_full"].as_str().unwrap().parse().unwrap();
    assert!(full > "2026-03-04T06:00:00Z".parse().unwrap(), "{t}");
    let text = day(4, &["vault", "trend", "v"]);
    assert!(
        text.contains("growth") && text.contains("full         about"),
        "{text}"
    );

    // A garbage collection measures the vault: the day's sample is what `usage` counts.
    day(5, &["gc", "--vault", "v"]);
    let t: Value =
        serde_json::from_str(&day(5, &["--output", "json", "vault", "trend", "v"])).unwrap();
    let u = e.json(&["usage", "--vault", "v"]);
    let last = t["samples"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(&last["at"].as_str().unwrap()[..10], "2026-03-05");
    assert_eq!(last["stored_bytes"], u[0]["stored_bytes"], "{t} {u}");
    let (_, err) = e.fails(&["vault", "trend", "nope"]);
    assert_eq!(err["error"]["code"], "not_found", "{err}");
}
