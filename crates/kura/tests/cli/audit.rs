//! Regression tests for what an audit of kura found (issue 6): each fails without its fix.

use std::os::unix::fs::FileExt;

use super::*;

fn sha(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// A guest writes a qcow2 header whose backing file is a host file into its raw disk. The
/// next backup must neither write a snapshot into that disk nor back up the host file.
#[test]
fn a_guest_cannot_choose_its_disk_format() {
    let e = Env::new();
    e.vault("v1", &[]);
    let secret = e.path("host-secret");
    std::fs::write(&secret, pattern(99, 1 << 20)).unwrap();
    let guest = e.path("guest.raw");
    make_image(&guest, 64 << 20, &[(0, 8 << 20, 5)]);
    let item = e.json(&[
        "item",
        "protect",
        "disk",
        guest.to_str().unwrap(),
        "--vault",
        "v1",
    ]);
    assert_eq!(item["spec"]["kind"], "disk", "{item}");
    assert_eq!(item["spec"]["format"]["format"], "raw", "{item}");
    assert!(
        e.ok(&["item", "list"]).contains("guest"),
        "the item is listed"
    );
    e.backup("guest");

    let hdr = e.path("hdr.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        secret.to_str().unwrap(),
        hdr.to_str().unwrap(),
        "64M",
    ]);
    let header = std::fs::read(&hdr).unwrap();
    File::options()
        .write(true)
        .open(&guest)
        .unwrap()
        .write_all_at(&header, 0)
        .unwrap();
    let before = sha(&guest);
    let rp = e.backup("guest");
    assert_eq!(sha(&guest), before, "the backup changed the guest's disk");
    let out = e.path("out.raw");
    e.restore("guest", &rp, &out, "raw");
    assert_eq!(
        sha(&out),
        before,
        "the point holds the guest's disk, not a host file"
    );
}

/// `--format` pins the format explicitly, and an unknown one is refused by name.
#[test]
fn protect_takes_an_explicit_format() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.img");
    make_image(&img, 1 << 20, &[(0, 4096, 1)]);
    let (code, err) = e.fails(&[
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "v",
        "--format",
        "cow",
    ]);
    assert_eq!(code, 1);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown disk format"),
        "{err}"
    );
    assert!(e.json(&["item", "list"]).as_array().unwrap().is_empty());
    let out = e.ok(&[
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "v",
        "--format",
        "raw",
    ]);
    assert!(out.contains("format raw"), "{out}");
}

/// A lost chunk is never silently reused: the next backup writes it again (healing every
/// point that shares it), verify records damage in the vault and the catalog, `item show`
/// and `item list` say so, and the next verify reports what was healed.
#[test]
fn a_lost_chunk_heals_instead_of_being_reused() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 21)]);
    e.protect(&img, "v", &[]);
    let first = e.backup("d");
    let victim = e.chunk_files("v")[3].clone();
    std::fs::remove_file(&victim).unwrap();

    // Without verify, the backup's stat of each reused chunk finds the hole.
    let r = e.json(&["backup", "now", "d"]);
    assert_eq!(
        r["new_chunks"], 1,
        "the missing chunk is written again: {r}"
    );
    assert!(victim.exists());
    let v = e.json(&["verify"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["healed"].as_array().unwrap().len(), 1, "{v}");
    let out = e.path("first.raw");
    e.restore("d", &first, &out, "raw");
    assert!(same_file(&out, &img), "the older point is readable again");

    // A corrupt chunk passes a stat: verify's list is what keeps it from being reused.
    let victim = e.chunk_files("v")[5].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    assert_eq!(e.run(&["verify", "--item", "d"]).status.code(), Some(3));
    let show = e.json(&["item", "show", "d"]);
    assert_eq!(show["health_status"], "ActionRequired", "{show}");
    assert!(
        show["health_details"]
            .to_string()
            .contains("missing or corrupt"),
        "{show}"
    );
    let list = e.ok(&["item", "list"]);
    assert!(list.contains("2 damaged point(s)"), "{list}");
    // The vault keeps the list: a new home attached to it heals too.
    let r = e.json(&["backup", "now", "d"]);
    assert_eq!(
        r["new_chunks"], 1,
        "the corrupt chunk is written again: {r}"
    );
    assert_eq!(e.json(&["item", "show", "d"])["health_status"], "Passed");
    let v = e.json(&["verify"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["healed"].as_array().unwrap().len(), 1, "{v}");
    let v = e.json(&["verify"]);
    assert!(
        v["healed"].as_array().unwrap().is_empty(),
        "reported once: {v}"
    );
}

/// A point that exists only in the snapshot tier has no vault copy to verify: it is reported
/// as such, not as damage.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn verify_reports_snapshot_only_points_without_calling_them_damaged() {
    let e = Env::new();
    e.vault("v", &[]);
    let q = e.path("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "4M"]);
    let io = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 7 0 1M"])
        .arg(&q)
        .output()
        .unwrap();
    assert!(io.status.success());
    e.protect(&q, "v", &[]);
    let o = e.run(&["backup", "now", "vm", "--fail-after-chunks", "1"]);
    assert!(!o.status.success());
    let rps = e.json(&["rp", "list", "vm"]);
    assert_eq!(rps[0]["tier"], "snapshot", "{rps}");
    let v = e.json(&["verify"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["snapshot_only"][0], rps[0]["id"], "{v}");
    assert!(
        e.ok(&["verify"])
            .contains("exist only in the snapshot tier")
    );
}

/// A backup killed with `kill -9` while kura runs as PID 1 (as in a container) must not
/// block its item: liveness is a lock the dead process cannot keep, not a PID.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_backup_killed_as_pid_1_does_not_block_its_item() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 3)]);
    e.protect(&img, "v", &[]);
    let gate = Gate::new(&e, "snapshot");
    let (var, val) = gate.env();
    let mut c = e.cmd(&["backup", "now", "d"]);
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--"])
        .arg(c.get_program())
        .args(c.get_args())
        .envs(c.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .env(var, val)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _ = &mut c;
    let mut child = cmd
        .spawn()
        .expect("unshare (util-linux) runs kura in a new PID namespace; needs root, as in CI");
    gate.wait_reached();
    let pid_inside = std::fs::read_to_string(gate.file(".reached")).unwrap();
    assert_eq!(pid_inside, "1", "kura runs as PID 1 in its namespace");
    let stuck = &e.json(&["job", "list"])[0];
    assert_eq!(stuck["status"], "InProgress");
    // kura's process as the host sees it: unshare's forked child.
    let inner: u32 = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("unshare has forked kura")
        .parse()
        .unwrap();
    child.kill().unwrap(); // SIGKILL to unshare; --kill-child sends SIGKILL to kura
    child.wait().unwrap();
    // That SIGKILL is delivered on its own time: wait until kura has exited (gone, or a
    // zombie nobody reaped), which is when its locks are released.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(format!("/proc/{inner}/status"))
        .is_ok_and(|s| !s.contains("State:\tZ"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "kura outlived its kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let stuck_id = stuck["id"].as_str().unwrap().to_string();
    // The next run sees that the owner is gone: the item is free, the job is Failed.
    e.backup("d");
    let j = e.json(&["job", "show", &stuck_id]);
    assert_eq!(j["status"], "Failed", "{j}");
    let (_, err) = e.fails(&["job", "cancel", &stuck_id]);
    assert_eq!(
        err["error"]["code"], "conflict",
        "an ended job is not cancelled again"
    );
}

/// Four backups of one item started together: claiming a phase is atomic, so exactly one of
/// them transfers while the others are refused or skip their transfer.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn parallel_backups_of_one_item_never_overlap_their_transfers() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 4)]);
    e.protect(&img, "v", &[]);
    for round in 0..5 {
        let gate = Gate::new(&e, "transfer");
        let (var, val) = gate.env();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let mut c = e.cmd(&["--output", "json", "backup", "now", "d"]);
                c.env(&var, val);
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    c.output().unwrap()
                })
            })
            .collect();
        gate.wait_reached();
        // Three of the four end by themselves; the gated one holds its transfer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let jobs = e.json(&["job", "list"]);
            let running = jobs
                .as_array()
                .unwrap()
                .iter()
                .filter(|j| j["status"] == "InProgress")
                .count();
            if running <= 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {jobs}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let jobs = e.json(&["job", "list"]);
        let transferring = jobs
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["tasks"][1]["status"] == "InProgress")
            .count();
        assert_eq!(transferring, 1, "round {round}: {jobs}");
        gate.release();
        let outputs: Vec<Output> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let ok = outputs.iter().filter(|o| o.status.success()).count();
        assert_eq!(ok, 1, "round {round}: exactly one backup made a point");
        for o in outputs.iter().filter(|o| !o.status.success()) {
            let err: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(err["error"]["code"], "conflict", "round {round}: {err}");
        }
    }
}

/// A build without the `test-hooks` feature (a release build) reads no test switch: scripts/test
/// runs this test against such a build.
#[test]
#[cfg_attr(
    feature = "test-hooks",
    ignore = "checks a build without test-hooks; scripts/test runs it in one"
)]
fn release_build_reads_no_test_switches() {
    let e = Env::new();
    std::fs::write(e.path("pass"), "correct horse").unwrap();
    let p = e.path("pass");
    // No test switch is even named in this binary (gates, clock, fast KDF, storage faults).
    let bin = std::fs::read(env!("CARGO_BIN_EXE_kura")).unwrap();
    assert!(
        !bin.windows(10).any(|w| w == b"KURA_TEST_"),
        "a release build names a KURA_TEST_ variable"
    );
    // KURA_TEST_FAST_KDF (set by Env, even as "0") must not weaken the stored parameters.
    let o = e
        .cmd(&[
            "--passphrase-file",
            p.to_str().unwrap(),
            "vault",
            "create",
            "v",
        ])
        .env("KURA_TEST_FAST_KDF", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config: Value =
        serde_json::from_slice(&std::fs::read(e.path("home/vaults/v/config")).unwrap()).unwrap();
    assert_eq!(
        config["encryption"]["key"]["kek"]["m_cost"], 65536,
        "{config}"
    );
    assert_eq!(config["encryption"]["key"]["kek"]["t_cost"], 3, "{config}");

    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 8)]);
    e.ok(&[
        "--passphrase-file",
        p.to_str().unwrap(),
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "v",
    ]);
    let o = e.run(&[
        "--passphrase-file",
        p.to_str().unwrap(),
        "backup",
        "now",
        "d",
        "--fail-after-chunks",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2), "the hidden flag does not exist");
    let gate = Gate::new(&e, "snapshot");
    let (var, val) = gate.env();
    let o = e
        .cmd(&[
            "--passphrase-file",
            p.to_str().unwrap(),
            "backup",
            "now",
            "d",
        ])
        .env(var, val)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !gate.file(".reached").exists(),
        "no pause point in this build"
    );
    // Nor a test clock: a point made with KURA_TEST_CLOCK set has today's time.
    let o = e
        .cmd(&[
            "--output",
            "json",
            "--passphrase-file",
            p.to_str().unwrap(),
            "rp",
            "list",
            "d",
        ])
        .env("KURA_TEST_CLOCK", "2001-01-01T00:00:00Z@0")
        .output()
        .unwrap();
    let rps: Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = e
        .cmd(&[
            "--passphrase-file",
            p.to_str().unwrap(),
            "backup",
            "now",
            "d",
        ])
        .env("KURA_TEST_CLOCK", "2001-01-01T00:00:00Z@0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = e.json(&["--passphrase-file", p.to_str().unwrap(), "rp", "list", "d"]);
    assert_eq!(
        after.as_array().unwrap().len(),
        rps.as_array().unwrap().len() + 1
    );
    assert!(
        !after[0]["time"].as_str().unwrap().starts_with("2001"),
        "{after}"
    );
}

/// Everything kura writes holds backup data or secrets: the home, the catalog, vault
/// directories, keys and restored disks are private to their owner.
#[test]
fn homes_vaults_keys_and_restores_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new();
    e.vault("v", &[]);
    e.vault("plain", &["--no-encryption"]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 2)]);
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o600)).unwrap();
    e.protect(&img, "plain", &[]);
    e.backup("d");
    let raw = e.path("out.raw");
    let q = e.path("out.qcow2");
    e.restore("d", "latest", &raw, "raw");
    e.restore("d", "latest", &q, "qcow2");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let home = e.path("home");
    assert_eq!(mode(&home), 0o700, "home");
    assert_eq!(mode(&home.join("catalog.db")), 0o600, "catalog");
    assert_eq!(mode(&home.join("keys")), 0o700, "keys directory");
    assert_eq!(mode(&home.join("keys/v.key")), 0o600, "key file");
    assert_eq!(mode(&home.join("vaults/plain")), 0o700, "unencrypted vault");
    for f in e.vault_files("plain") {
        assert_eq!(mode(&f) & 0o077, 0, "{} is readable by others", f.display());
    }
    assert_eq!(mode(&raw), 0o600, "restored raw");
    assert_eq!(mode(&q), 0o600, "restored qcow2");
    // A restore keeps its source's mode (a group-readable disk stays group-readable), and is
    // 0600 once the source is gone.
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o640)).unwrap();
    let grp = e.path("grp.raw");
    e.restore("d", "latest", &grp, "raw");
    assert_eq!(mode(&grp), 0o640, "restored like its source");
    std::fs::remove_file(&img).unwrap();
    let gone = e.path("gone.qcow2");
    e.restore("d", "latest", &gone, "qcow2");
    assert_eq!(mode(&gone), 0o600, "source gone: private");
}

/// A restore interrupted before its end leaves a hidden temporary beside the target; the
/// next restore to that target removes it.
#[test]
fn leftovers_of_an_interrupted_restore_are_removed() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 2)]);
    e.protect(&img, "v", &[]);
    e.backup("d");
    let left = e.path(".out.raw.kura-restore-0123456789ab.raw");
    std::fs::write(&left, vec![1u8; 4096]).unwrap();
    let out = e.path("out.raw");
    e.restore("d", "latest", &out, "raw");
    assert!(same_file(&out, &img));
    assert!(!left.exists(), "the leftover of an earlier restore is gone");
}

/// The contract of a recovery kit: back up, export the kit, lose the whole home, attach from
/// the vault's storage and the kit alone in a fresh home, restore bit-exactly.
#[test]
fn a_recovery_kit_and_the_vault_alone_restore_everything() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 2 << 20, &[(0, 2 << 20, 31)]);
    e.protect(&img, "v", &[]);
    let rp = e.backup("d");
    // Until a kit is exported, vault show says so.
    assert!(e.ok(&["vault", "show", "v"]).contains("NEVER EXPORTED"));
    std::fs::write(e.path("kitpass"), "kit secret\n").unwrap();
    let kit = e.path("v.kit");
    let r = e.json(&[
        "vault",
        "key",
        "export",
        "v",
        "--to",
        kit.to_str().unwrap(),
        "--kit-passphrase-file",
        e.path("kitpass").to_str().unwrap(),
    ]);
    assert_eq!(r["protection"], "passphrase", "{r}");
    assert_eq!(std::fs::metadata(&kit).unwrap().mode() & 0o777, 0o600);
    assert!(e.json(&["vault", "show", "v"])["kit_exported"].is_string());
    let keyfile = std::fs::read_to_string(e.path("home/keys/v.key")).unwrap();
    assert!(
        !std::fs::read_to_string(&kit)
            .unwrap()
            .contains(keyfile.trim())
    );

    // The vault moves; the home is lost (with it, any server that ran over it).
    e.on_host();
    let storage = e.path("moved-vault");
    std::fs::rename(e.path("home/vaults/v"), &storage).unwrap();
    std::fs::remove_dir_all(e.path("home")).unwrap();
    let (code, err) = e.fails(&[
        "vault",
        "attach",
        "v",
        "--path",
        storage.to_str().unwrap(),
        "--recovery-kit",
        kit.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("sealed"),
        "{err}"
    );
    std::fs::write(e.path("wrong"), "not it\n").unwrap();
    let (_, err) = e.fails(&[
        "vault",
        "attach",
        "v",
        "--path",
        storage.to_str().unwrap(),
        "--recovery-kit",
        kit.to_str().unwrap(),
        "--kit-passphrase-file",
        e.path("wrong").to_str().unwrap(),
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong kit passphrase"),
        "{err}"
    );
    assert!(
        e.json(&["vault", "list"]).as_array().unwrap().is_empty(),
        "nothing attached"
    );
    let a = e.json(&[
        "vault",
        "attach",
        "v",
        "--path",
        storage.to_str().unwrap(),
        "--recovery-kit",
        kit.to_str().unwrap(),
        "--kit-passphrase-file",
        e.path("kitpass").to_str().unwrap(),
    ]);
    assert_eq!(a["items"][0], "d", "{a}");
    let out = e.path("out.raw");
    e.restore("d", &rp, &out, "raw");
    assert!(same_file(&out, &img));
    // The new home keeps backing up into the vault.
    e.backup("d");
    assert!(
        e.json(&["verify"])["problems"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A passphrase of the user's choosing can replace the kit-held key; only the config
    // changes, and the old points still restore with it.
    std::fs::write(e.path("newpass"), "a new passphrase\n").unwrap();
    let before: Vec<PathBuf> = e_files(&storage);
    e.ok(&[
        "vault",
        "key",
        "change",
        "v",
        "--new-passphrase-file",
        e.path("newpass").to_str().unwrap(),
    ]);
    let after: Vec<PathBuf> = e_files(&storage);
    assert_eq!(before, after, "no object but the config was rewritten");
    let out2 = e.path("out2.raw");
    e.ok(&[
        "--passphrase-file",
        e.path("newpass").to_str().unwrap(),
        "restore",
        "disk",
        "d",
        "--rp",
        &rp,
        "--to",
        out2.to_str().unwrap(),
    ]);
    assert!(same_file(&out2, &img));
}

fn e_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != "config" {
                let m = std::fs::metadata(&p).unwrap();
                out.push(p.with_extension(format!("{}", m.mtime())));
            }
        }
    }
    out.sort();
    out
}

/// A plain kit copied by hand: its printable line alone opens the vault, and a mistyped
/// digit is caught by the checksum.
#[test]
fn a_printable_kit_with_a_typo_is_refused() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 9)]);
    e.protect(&img, "v", &[]);
    e.backup("d");
    let kit = e.path("v.kit");
    let r = e.json(&[
        "vault",
        "key",
        "export",
        "v",
        "--to",
        kit.to_str().unwrap(),
        "--plain",
    ]);
    let printable = r["printable"].as_str().unwrap().to_string();
    let storage = e.path("home/vaults/v").to_str().unwrap().to_string();
    let other = Env::new();
    let typo = e.path("typo.txt");
    let mut bad = printable.clone().into_bytes();
    let at = 15;
    bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&typo, &bad).unwrap();
    let (_, err) = other.fails(&[
        "vault",
        "attach",
        "v",
        "--path",
        &storage,
        "--recovery-kit",
        typo.to_str().unwrap(),
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("checksum"),
        "{err}"
    );
    let paper = e.path("paper.txt");
    std::fs::write(&paper, format!("{printable}\n")).unwrap();
    other.ok(&[
        "vault",
        "attach",
        "v",
        "--path",
        &storage,
        "--recovery-kit",
        paper.to_str().unwrap(),
    ]);
    let out = other.path("out.raw");
    other.restore("d", "latest", &out, "raw");
    assert!(same_file(&out, &img));
}

/// Attaching a vault whose item names are taken in this home refuses instead of silently
/// dropping the item; after `vault detach` of the other vault it works.
#[test]
fn attach_refuses_to_drop_colliding_items_and_detach_frees_them() {
    let e = Env::new();
    e.vault("a", &["--no-encryption"]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 1)]);
    e.protect(&img, "a", &[]);
    e.backup("d");
    let copy = e.path("copy-of-a");
    let status = Command::new("cp")
        .args(["-a"])
        .arg(e.path("home/vaults/a"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    // The copy has the same vault id; make it a distinct vault by attaching in another home
    // is not needed: a second home shows the collision with an item of the same name.
    let other = Env::new();
    other.vault("mine", &["--no-encryption"]);
    let img2 = other.path("d.raw");
    make_image(&img2, 1 << 20, &[(0, 1 << 20, 2)]);
    other.protect(&img2, "mine", &[]);
    let (_, err) = other.fails(&["vault", "attach", "a", "--path", copy.to_str().unwrap()]);
    assert_eq!(err["error"]["code"], "conflict", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("item \"d\""),
        "{err}"
    );
    assert_eq!(
        other.json(&["vault", "list"]).as_array().unwrap().len(),
        1,
        "nothing attached"
    );
    other.ok(&["vault", "detach", "mine"]);
    assert!(other.json(&["item", "list"]).as_array().unwrap().is_empty());
    let r = other.json(&["vault", "attach", "a", "--path", copy.to_str().unwrap()]);
    assert_eq!(r["items"][0], "d", "{r}");
}

/// One process holds the secrets of several vaults with different passphrases; verifying
/// everything goes on past a vault it cannot open and says so.
#[test]
fn verify_opens_each_vault_with_its_own_passphrase() {
    let e = Env::new();
    std::fs::write(e.path("pa"), "first\n").unwrap();
    std::fs::write(e.path("pb"), "second\n").unwrap();
    let pa = e.path("pa").to_str().unwrap().to_string();
    let pb = e.path("pb").to_str().unwrap().to_string();
    e.ok(&[
        "--passphrase-file",
        &pa,
        "vault",
        "create",
        "a",
        "--chunk-size",
        "64KiB",
    ]);
    e.ok(&[
        "--passphrase-file",
        &pb,
        "vault",
        "create",
        "b",
        "--chunk-size",
        "64KiB",
    ]);
    for (v, p) in [("a", &pa), ("b", &pb)] {
        let img = e.path(&format!("{v}.raw"));
        make_image(&img, 1 << 20, &[(0, 1 << 20, 3)]);
        e.ok(&[
            "--passphrase-file",
            p,
            "item",
            "protect",
            "disk",
            img.to_str().unwrap(),
            "--vault",
            v,
        ]);
        e.ok(&["--passphrase-file", p, "backup", "now", v]);
    }
    let r = e.json(&["--passphrase-file", &pa, "verify"]);
    assert_eq!(r["recovery_points"], 1, "{r}");
    assert!(
        r["not_verified"][0].as_str().unwrap().contains("vault b"),
        "{r}"
    );
    let both = [format!("a={pa}"), format!("b={pb}")];
    let r = e.json(&[
        "--vault-passphrase-file",
        &both[0],
        "--vault-passphrase-file",
        &both[1],
        "verify",
    ]);
    assert_eq!(r["recovery_points"], 2, "{r}");
    assert!(r["not_verified"].as_array().unwrap().is_empty(), "{r}");
}

/// What kura itself left is cleaned up at the next run: a `vault create` killed before its
/// config was written leaves only `.staging/`, and creating the vault again works; partial
/// uploads an hour old are removed by GC; a corrupt config is named by its path.
#[test]
fn leftovers_of_killed_writers_are_cleaned_and_a_bad_config_is_named() {
    let e = Env::new();
    let dir = e.path("v-dir");
    std::fs::create_dir_all(dir.join(".staging")).unwrap();
    std::fs::write(dir.join(".staging/partial"), b"half a config").unwrap();
    e.ok(&[
        "vault",
        "create",
        "v",
        "--path",
        dir.to_str().unwrap(),
        "--chunk-size",
        "64KiB",
    ]);
    assert!(dir.join("config").exists());

    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 4)]);
    e.protect(&img, "v", &[]);
    e.backup("d");
    let stale = dir.join(".staging/stale-upload");
    let fresh = dir.join(".staging/fresh-upload");
    std::fs::write(&stale, vec![0u8; 1000]).unwrap();
    std::fs::write(&fresh, vec![0u8; 1000]).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    let r = e.json(&["gc", "--vault", "v"]);
    assert_eq!(r["stale_uploads_removed"], 1, "{r}");
    assert!(!stale.exists() && fresh.exists());

    std::fs::write(dir.join("config"), b"{ not json").unwrap();
    let other = Env::new();
    let (_, err) = other.fails(&["vault", "attach", "w", "--path", dir.to_str().unwrap()]);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(dir.to_str().unwrap()) && msg.contains("config"),
        "{msg}"
    );
    assert!(
        !msg.contains("Operator") && !msg.contains("FsBackend"),
        "{msg}"
    );
}

/// A backup with a wrong passphrase changes nothing: the secret is checked before the
/// snapshot phase writes into the image.
#[test]
fn a_wrong_passphrase_is_refused_before_the_source_is_touched() {
    let e = Env::new();
    std::fs::write(e.path("right"), "right one\n").unwrap();
    std::fs::write(e.path("wrong"), "wrong one\n").unwrap();
    let right = e.path("right").to_str().unwrap().to_string();
    let wrong = e.path("wrong").to_str().unwrap().to_string();
    e.ok(&[
        "--passphrase-file",
        &right,
        "vault",
        "create",
        "v",
        "--chunk-size",
        "64KiB",
    ]);
    let q = e.path("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "4M"]);
    e.ok(&[
        "--passphrase-file",
        &right,
        "item",
        "protect",
        "disk",
        q.to_str().unwrap(),
        "--vault",
        "v",
    ]);
    let before = std::fs::read(&q).unwrap();
    let (_, err) = e.fails(&["--passphrase-file", &wrong, "backup", "now", "vm"]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong passphrase"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&q).unwrap(),
        before,
        "no snapshot was written into the image"
    );
    assert!(e.json(&["rp", "list", "vm"]).as_array().unwrap().is_empty());
    let job = &e.json(&["job", "list"])[0];
    assert_eq!(job["status"], "Failed", "{job}");
    assert!(
        job["tasks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("not started"),
        "{job}"
    );
}

/// A changed backing chain stops backups until the user accepts it explicitly.
#[test]
fn a_changed_backing_chain_needs_an_explicit_set_format() {
    let e = Env::new();
    e.vault("v", &[]);
    let base = e.path("base.raw");
    make_image(&base, 1 << 20, &[(0, 1 << 20, 1)]);
    let other = e.path("other.raw");
    make_image(&other, 1 << 20, &[(0, 1 << 20, 2)]);
    let top = e.path("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        base.to_str().unwrap(),
        top.to_str().unwrap(),
        "1M",
    ]);
    e.protect(&top, "v", &[]);
    let shown = e.ok(&["item", "show", "top"]);
    assert!(
        shown.contains("qcow2 on ") && shown.contains("base.raw (raw)"),
        "{shown}"
    );
    e.backup("top");
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        other.to_str().unwrap(),
        top.to_str().unwrap(),
    ]);
    let (_, err) = e.fails(&["backup", "now", "top"]);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("backing chain changed") && msg.contains("set-format"),
        "{msg}"
    );
    e.ok(&["item", "set-format", "top"]);
    let rp = e.backup("top");
    let out = e.path("out.raw");
    e.restore("top", &rp, &out, "raw");
    assert!(same_file(&out, &other), "the accepted chain is backed up");
}

/// A source truncated while the backup reads it fails the backup: the missing tail is never
/// stored as zeros in a Completed point.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_source_that_shrinks_while_read_fails_the_backup() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 4 << 20, &[(0, 4 << 20, 12)]);
    e.protect(&img, "v", &[]);
    let gate = Gate::new(&e, "read");
    let (var, val) = gate.env();
    let child = e
        .cmd(&["--output", "json", "backup", "now", "d"])
        .env(var, val)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    gate.wait_reached();
    File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    gate.release();
    let o = child.wait_with_output().unwrap();
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("changed while it was read"),
        "{err}"
    );
    assert!(e.json(&["rp", "list", "d"]).as_array().unwrap().is_empty());
}
