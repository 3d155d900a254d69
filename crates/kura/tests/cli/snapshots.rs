//! The snapshot tier and two-phase backup jobs.

use super::*;

fn qcow2_item(e: &Env) -> PathBuf {
    e.vault("v", &[]);
    let q = e.path("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "8M"]);
    qemu_io(&q, "write -P 0x41 0 2M");
    e.protect(&q, "v", &[]);
    q
}

fn qemu_io(q: &Path, cmd: &str) {
    let o = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(q)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn raw_of(e: &Env, q: &Path, name: &str) -> PathBuf {
    let out = e.path(name);
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        q.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    out
}

fn snapshots(q: &Path) -> String {
    String::from_utf8(
        Command::new("qemu-img")
            .args(["snapshot", "-l", "-U"])
            .arg(q)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

#[test]
fn qcow2_backups_take_an_internal_snapshot_that_restores_use_first() {
    let e = Env::at("2026-03-10T09:00:00Z");
    let q = qcow2_item(&e);
    let first_state = raw_of(&e, &q, "first.raw");
    let r = e.json(&["backup", "now", "vm"]);
    assert_eq!(r["tier"], "snapshot+vault");
    let job = &e.json(&["job", "list"])[0];
    assert_eq!(
        (
            job["tasks"][0]["status"].as_str(),
            job["tasks"][1]["status"].as_str()
        ),
        (Some("Completed"), Some("Completed"))
    );
    assert!(snapshots(&q).contains("kura-"), "{}", snapshots(&q));
    let rp = r["rp_id"].as_str().unwrap().to_string();
    let rps = e.json(&["rp", "list", "vm"]);
    assert_eq!(rps[0]["tier"], "snapshot+vault");
    assert!(rps[0]["snapshot_expires"].as_str().is_some());

    // The image changes; the first point restores from its snapshot.
    qemu_io(&q, "write -P 0x42 0 1M");
    e.backup("vm");
    let out = e.path("restored.raw");
    e.restore("vm", &rp, &out, "raw");
    assert!(same_file(&first_state, &out));
    let log = e.json(&["job", "list"])[0]["log"].to_string();
    assert!(log.contains("snapshot tier"), "{log}");

    // Two days later (DefaultPolicy keeps snapshots 2 days) the older snapshot goes; the
    // point keeps its vault copy and still restores, from the vault.
    // 49 hours after the home's clock started (2026-03-10 09:00 UTC).
    e.json(&["retention", "apply", "vm", "--at", "2026-03-12T10:00:00Z"]);
    let rps = e.json(&["rp", "list", "vm"]);
    let old = rps
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == rp.as_str())
        .unwrap();
    assert_eq!(old["tier"], "vault-standard");
    assert_eq!(
        snapshots(&q).matches("kura-").count(),
        1,
        "only the newest point keeps its snapshot"
    );
    let again = e.path("again.raw");
    e.restore("vm", &rp, &again, "raw");
    assert!(same_file(&first_state, &again));
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_failed_transfer_leaves_a_snapshot_point_and_completes_with_warnings() {
    let e = Env::new();
    let q = qcow2_item(&e);
    let state = raw_of(&e, &q, "state.raw");
    let o = e.run(&[
        "--output",
        "json",
        "backup",
        "now",
        "vm",
        "--fail-after-chunks",
        "1",
    ]);
    assert!(
        !o.status.success(),
        "the CLI exits non-zero when the transfer failed"
    );
    let err: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("snapshot tier only"),
        "{err}"
    );
    let job = &e.json(&["job", "list"])[0];
    assert_eq!(job["status"], "CompletedWithWarnings");
    assert_eq!(job["tasks"][1]["status"], "Failed");
    let rps = e.json(&["rp", "list", "vm"]);
    assert_eq!(rps[0]["tier"], "snapshot");
    let out = e.path("out.raw");
    e.restore("vm", "latest", &out, "raw");
    assert!(same_file(&state, &out));
    // The next backup transfers everything since the last vault point (none yet: a full one).
    let r = e.json(&["backup", "now", "vm"]);
    assert_eq!(r["incremental"], false);
    assert_eq!(r["tier"], "snapshot+vault");
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn while_a_transfer_runs_the_next_job_snapshots_and_skips_its_transfer() {
    let e = Env::new();
    let q = qcow2_item(&e);
    let at_first = raw_of(&e, &q, "first.raw");
    // The gate stands after the first job opened its image for reading, so the second job's
    // snapshot meets the first transfer's reader on the real image.
    let gate = Gate::new(&e, "read");
    let (var, val) = gate.env();
    let slow = e
        .cmd(&["--output", "json", "backup", "now", "vm"])
        .env(var, val)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first job holds its transfer phase open while the image changes and the second
    // job runs.
    gate.wait_reached();
    qemu_io(&q, "write -P 0x77 0 1M");
    let quick = e.json(&["backup", "now", "vm"]);
    gate.release();
    assert_eq!(quick["transfer"], "Skipped", "{quick}");
    assert_eq!(quick["tier"], "snapshot");
    let job = e.json(&["job", "show", quick["job_id"].as_str().unwrap()]);
    assert_eq!(job["status"], "Completed");
    assert_eq!(job["tasks"][0]["status"], "Completed");
    assert_eq!(job["tasks"][1]["status"], "Skipped");
    let slow = slow.wait_with_output().unwrap();
    assert!(slow.status.success());
    let first: Value = serde_json::from_slice(&slow.stdout).unwrap();
    // The first point holds the image as it was at its snapshot, read from the vault (its
    // snapshot is removed first), not the writes made while it was transferred.
    let rp = first["rp_id"].as_str().unwrap();
    qemu_img(&[
        "snapshot",
        "-f",
        "qcow2",
        "-d",
        &format!("kura-{}", &rp[..16]),
        q.to_str().unwrap(),
    ]);
    let out = e.path("out.raw");
    e.restore("vm", rp, &out, "raw");
    assert!(
        same_file(&out, &at_first),
        "the point is the image at its snapshot"
    );
    let rps = e.json(&["rp", "list", "vm"]);
    let tiers: Vec<&str> = rps
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tier"].as_str().unwrap())
        .collect();
    assert!(
        tiers.contains(&"snapshot") && tiers.contains(&"snapshot+vault"),
        "{tiers:?}"
    );
}

#[test]
fn raw_images_on_xfs_get_reflink_snapshots() {
    let e = Env::new();
    e.vault("v", &[]);
    let (mnt, _guard) = loop_mount(&e, "xfs", &["mkfs.xfs", "-q", "-m", "reflink=1"]);
    let img = mnt.join("disk.raw");
    make_image(&img, 4 << 20, &[(0, 1 << 20, 1)]);
    let before = std::fs::read(&img).unwrap();
    e.protect(&img, "v", &[]);
    let r = e.json(&["backup", "now", "disk"]);
    assert_eq!(r["tier"], "snapshot+vault", "{r}");
    let clones: Vec<_> = std::fs::read_dir(mnt.join(".kura-snapshots"))
        .unwrap()
        .collect();
    assert_eq!(clones.len(), 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&[9; 4096], 0)
        .unwrap();
    let out = e.path("out.raw");
    e.restore("disk", "latest", &out, "raw");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "restored from the clone, not the changed image"
    );
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_backup_cancelled_in_its_snapshot_or_transfer_phase_keeps_nothing() {
    let e = Env::new();
    let q = qcow2_item(&e);
    // A slow snapshot phase: cancel it.
    let gate = Gate::new(&e, "snapshot");
    let (var, val) = gate.env();
    let mut slow = e
        .cmd(&["--output", "json", "backup", "now", "vm"])
        .env(var, val)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    gate.wait_reached();
    let job = wait_for_task(&e, 0);
    let c = e.json(&["job", "cancel", &job]);
    assert_eq!(c["status"], "Cancelling");
    gate.release();
    assert!(
        !slow.wait().unwrap().success(),
        "a cancelled backup exits non-zero"
    );
    let j = e.json(&["job", "show", &job]);
    assert_eq!(j["status"], "Cancelled");
    assert_eq!(
        (
            j["tasks"][0]["status"].as_str(),
            j["tasks"][1]["status"].as_str()
        ),
        (Some("Cancelled"), Some("Skipped"))
    );
    assert_eq!(
        e.json(&["rp", "list", "vm"]).as_array().unwrap().len(),
        0,
        "nothing was kept"
    );
    assert!(!snapshots(&q).contains("kura-"), "the snapshot was removed");
    let (_, err) = e.fails(&["job", "cancel", &job]);
    assert_eq!(err["error"]["code"], "conflict");

    // During the transfer phase: accepted too; the snapshot taken by the job goes with it.
    let gate = Gate::new(&e, "transfer");
    let (var, val) = gate.env();
    let mut slow = e
        .cmd(&["--output", "json", "backup", "now", "vm"])
        .env(var, val)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    gate.wait_reached();
    let job = wait_for_task(&e, 1);
    assert!(snapshots(&q).contains("kura-"), "the snapshot was taken");
    let c = e.json(&["job", "cancel", &job]);
    assert_eq!(c["status"], "Cancelling");
    gate.release();
    assert!(!slow.wait().unwrap().success());
    let j = e.json(&["job", "show", &job]);
    assert_eq!(j["status"], "Cancelled", "{j}");
    assert_eq!(j["tasks"][1]["status"], "Cancelled", "{j}");
    assert_eq!(
        e.json(&["rp", "list", "vm"]).as_array().unwrap().len(),
        0,
        "no recovery point of a cancelled job"
    );
    assert!(!snapshots(&q).contains("kura-"), "the snapshot was removed");
    // The item is not harmed: the next backup completes.
    e.backup("vm");
}

/// Waits until a running job has sub-task `phase` in progress; returns its id.
fn wait_for_task(e: &Env, phase: usize) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let jobs = e.json(&["job", "list"]);
        if let Some(j) =
            jobs.as_array().unwrap().iter().find(|j| {
                j["status"] == "InProgress" && j["tasks"][phase]["status"] == "InProgress"
            })
        {
            return j["id"].as_str().unwrap().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no job reached phase {phase}"
        );
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
}

#[test]
fn deleting_backup_data_removes_snapshots_from_the_image() {
    let e = Env::new();
    let q = qcow2_item(&e);
    e.backup("vm");
    assert!(snapshots(&q).contains("kura-"));
    e.json(&["vault", "set", "v", "--soft-delete", "disabled"]);
    e.json(&["item", "stop", "vm", "--delete-data"]);
    assert!(!snapshots(&q).contains("kura-"), "{}", snapshots(&q));
}

/// Delete the catalog and attach the vault again: stopped and soft-deleted items keep their
/// state (and purge date), and the qcow2 snapshots kura made are still known, restorable and
/// removed when they expire.
#[test]
fn the_vault_remembers_states_and_snapshots_when_the_catalog_is_lost() {
    let e = Env::new();
    let q = qcow2_item(&e);
    let first = e.backup("vm");
    qemu_io(&q, "write -P 0x42 0 1M");
    let second = e.backup("vm");
    assert_eq!(snapshots(&q).matches("kura-").count(), 2);
    for (name, seed) in [("kept", 1), ("gone", 2)] {
        let img = e.path(&format!("{name}.raw"));
        make_image(&img, 1 << 20, &[(0, 1 << 20, seed)]);
        e.protect(&img, "v", &[]);
        e.backup(name);
    }
    e.ok(&["item", "stop", "kept"]);
    let soft = e.json(&["item", "stop", "gone", "--delete-data"]);
    let purge_at = soft["purge_at"].as_str().unwrap().to_string();

    // The catalog is lost; the key file and the vault survive.
    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(e.path("home").join(f));
    }
    let storage = e.path("home/vaults/v");
    let key = e.path("home/keys/v.key");
    e.ok(&[
        "--key-file",
        key.to_str().unwrap(),
        "vault",
        "attach",
        "v",
        "--path",
        storage.to_str().unwrap(),
    ]);
    let kept = e.json(&["item", "show", "kept"]);
    assert_eq!(kept["protection_state"], "ProtectionStopped", "{kept}");
    assert!(kept["policy"].is_null(), "{kept}");
    let gone = e.json(&["item", "show", "gone"]);
    assert_eq!(gone["protection_state"], "SoftDeleted", "{gone}");
    assert_eq!(gone["purge_at"], purge_at.as_str());
    let rps = e.json(&["rp", "list", "vm"]);
    assert!(
        rps.as_array()
            .unwrap()
            .iter()
            .all(|r| r["tier"] == "snapshot+vault"),
        "{rps}"
    );
    // The snapshot still serves restores, and expires like before.
    let out = e.path("first.raw");
    e.restore("vm", &first, &out, "raw");
    let far = "2099-01-01T00:00:00Z";
    e.ok(&["retention", "apply", "vm", "--at", far]);
    let left = snapshots(&q);
    assert_eq!(
        left.matches("kura-").count(),
        1,
        "the older snapshot was removed: {left}"
    );
    assert!(left.contains(&format!("kura-{}", &second[..16])), "{left}");
}
