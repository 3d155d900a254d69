//! Snapshot tiers expire with backups alone (no scheduler needed).

use std::process::Command;

use jiff::{SignedDuration, Timestamp};
use kura_engine::{BackupOptions, CreateVault, Home, NoProgress, Secrets};

#[test]
fn a_backup_drops_expired_snapshot_tiers_of_older_points() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(&dir.path().join("home")).unwrap();
    let opts = CreateVault {
        chunk_size: Some(64 << 10),
        no_encryption: true,
        ..Default::default()
    };
    home.create_vault("v", &opts, &Secrets::default()).unwrap();
    let q = dir.path().join("vm.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("4M")
        .status()
        .unwrap();
    assert!(ok.success());
    home.protect_disk(&q, "v", Some("vm"), None, None, &Secrets::default())
        .unwrap();
    let t0 = Timestamp::now();
    let at = |h: i64| BackupOptions {
        now: Some(t0.checked_add(SignedDuration::from_hours(h)).unwrap()),
        ..Default::default()
    };
    let first = home
        .backup("vm", &Secrets::default(), &at(0), &NoProgress)
        .unwrap();
    home.backup("vm", &Secrets::default(), &at(1), &NoProgress)
        .unwrap();
    let count = || {
        String::from_utf8(
            Command::new("qemu-img")
                .args(["snapshot", "-l", "-U"])
                .arg(&q)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .matches("kura-")
        .count()
    };
    assert_eq!(
        count(),
        2,
        "both snapshots live within the 2 instant-restore days"
    );
    home.backup("vm", &Secrets::default(), &at(72), &NoProgress)
        .unwrap();
    let rps = home.list_rps("vm").unwrap();
    let old = rps.iter().find(|r| r.id == first.rp_id).unwrap();
    assert_eq!(old.tier, "vault-standard");
    assert!(old.snapshot.is_none());
    assert_eq!(count(), 1, "only the newest point keeps its snapshot");
}
