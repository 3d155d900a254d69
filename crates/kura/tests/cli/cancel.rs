//! Cancel in every phase: each job is held at a gate in the middle of its work (after its
//! first chunk or point), cancelled there through `kura job cancel` from another process, and
//! released; it must end Cancelled and leave nothing half-done.

use std::process::Stdio;

use super::*;

/// The id of the running job of `operation`.
fn running(e: &Env, operation: &str) -> String {
    let jobs = e.json(&["job", "list"]);
    jobs.as_array()
        .unwrap()
        .iter()
        .find(|j| j["operation"] == operation && j["status"] == "InProgress")
        .unwrap_or_else(|| panic!("no running {operation} job: {jobs}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs `args` held at `gate`; once `ready` holds, cancels the `operation` job there and
/// releases it. Returns the job as `job show` gives it and the command's error document.
fn cancel_at(
    e: &Env,
    gate: &'static str,
    operation: &str,
    args: &[&str],
    ready: impl Fn() -> bool,
) -> (Value, Value) {
    let g = Gate::new(e, gate);
    let (var, val) = g.env();
    let mut a = vec!["--output", "json"];
    a.extend_from_slice(args);
    let child = e
        .cmd(&a)
        .env(var, val)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    g.wait_reached();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "{operation} made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let job = running(e, operation);
    let c = e.json(&["job", "cancel", &job]);
    assert_eq!(c["status"], "Cancelling", "{c}");
    g.release();
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "a cancelled {operation} exits non-zero: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(err["error"]["code"], "cancelled", "{err}");
    let j = e.json(&["job", "show", &job]);
    assert_eq!(j["status"], "Cancelled", "{j}");
    (j, err)
}

fn item(e: &Env) -> (PathBuf, Vec<u8>) {
    e.vault("v", &[]);
    let img = e.path("d.raw");
    // 64 chunks of 64 KiB, all data.
    make_image(&img, 4 << 20, &[(0, 4 << 20, 7)]);
    e.protect(&img, "v", &[]);
    let data = std::fs::read(&img).unwrap();
    (img, data)
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_backup_cancelled_in_its_transfer_keeps_no_point_and_gc_collects_what_it_wrote() {
    let e = Env::new();
    let (_img, data) = item(&e);
    let (j, _) = cancel_at(
        &e,
        "transfer_chunk",
        "Backup",
        &["backup", "now", "d"],
        || !e.chunk_files("v").is_empty(),
    );
    assert_eq!(j["tasks"][1]["status"], "Cancelled", "{j}");
    assert_eq!(j["rp_id"], Value::Null);
    assert!(
        (j["bytes_done"].as_u64().unwrap()) < 4 << 20,
        "stopped part way: {j}"
    );
    assert_eq!(e.json(&["rp", "list", "d"]), serde_json::json!([]));
    let written = e.chunk_files("v").len();
    assert!((1..64).contains(&written), "{written} chunks written");
    // What the cancelled backup wrote is garbage: doomed by one run, deleted by the next.
    e.json(&["gc", "--vault", "v", "--grace", "0"]);
    e.json(&["gc", "--vault", "v", "--grace", "0"]);
    assert_eq!(e.chunk_files("v").len(), 0, "orphans collected");
    // The next backup is whole.
    e.backup("d");
    let out = e.path("out.raw");
    e.restore("d", "latest", &out, "raw");
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_cancelled_restore_leaves_no_target_and_no_temporary() {
    let e = Env::new();
    let (_img, _) = item(&e);
    e.backup("d");
    let dir = e.path("restores");
    std::fs::create_dir(&dir).unwrap();
    let out = dir.join("out.raw");
    let (j, _) = cancel_at(
        &e,
        "restore_chunk",
        "Restore",
        &[
            "restore",
            "disk",
            "d",
            "--rp",
            "latest",
            "--to",
            out.to_str().unwrap(),
        ],
        || true,
    );
    assert!(j["bytes_done"].as_u64().unwrap() < 4 << 20, "{j}");
    assert!(!out.exists(), "no partial restore target");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_cancelled_verify_records_no_verdict() {
    let e = Env::new();
    let (_img, _) = item(&e);
    e.backup("d");
    let (j, _) = cancel_at(&e, "verify_chunk", "Verify", &["verify"], || true);
    assert_eq!(j["result"], Value::Null, "no report: {j}");
    // A verify that runs to its end afterwards is not confused by the cancelled one.
    let v = e.json(&["verify"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    assert_eq!(v["chunks_checked"], 64, "{v}");
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_cancelled_gc_stops_between_chunks_and_the_next_run_finishes() {
    let e = Env::new();
    let (_img, _) = item(&e);
    e.backup("d");
    e.json(&["vault", "set", "v", "--soft-delete", "disabled"]);
    e.json(&["item", "stop", "d", "--delete-data"]);
    e.json(&["gc", "--vault", "v", "--grace", "0"]);
    let before = e.chunk_files("v").len();
    assert_eq!(before, 64);
    let (_, _) = cancel_at(
        &e,
        "gc_delete",
        "GarbageCollect",
        &["gc", "--vault", "v", "--grace", "0"],
        || true,
    );
    let after = e.chunk_files("v").len();
    assert!(
        after > 0 && after < before,
        "stopped part way: {after} of {before} chunks left"
    );
    e.json(&["gc", "--vault", "v", "--grace", "0"]);
    assert_eq!(e.chunk_files("v").len(), 0);
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn cancelled_retention_deletes_whole_points_only() {
    let e = Env::at("2026-03-10T09:00:00Z");
    let (img, _) = item(&e);
    for seed in 1..=3 {
        make_image(&img, 4 << 20, &[(0, 64 << 10, seed)]);
        e.backup("d");
    }
    let far = "2027-04-14T09:00:00Z";
    let plan = e.json(&["retention", "plan", "d", "--at", far]);
    let doomed = plan["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["action"] == "delete")
        .count();
    assert!(doomed >= 2, "{plan}");
    let (j, _) = cancel_at(
        &e,
        "retention_delete",
        "DeleteExpiredPoints",
        &["retention", "apply", "d", "--at", far],
        || true,
    );
    let left = e.json(&["rp", "list", "d"]).as_array().unwrap().len();
    assert_eq!(left, 3 - 1, "one point deleted before the cancel: {j}");
    // Every point left is whole: it restores.
    let rps = e.json(&["rp", "list", "d"]);
    for rp in rps.as_array().unwrap() {
        let out = e.path("out.raw");
        e.restore("d", rp["id"].as_str().unwrap(), &out, "raw");
        std::fs::remove_file(&out).unwrap();
    }
    e.json(&["retention", "apply", "d", "--at", far]);
    assert_eq!(
        e.json(&["rp", "list", "d"]).as_array().unwrap().len(),
        3 - doomed
    );
}
