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
    assert!(
        item["format"].as_str().unwrap().contains("\"raw\""),
        "{item}"
    );
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
    assert!(list.contains("2 point(s)"), "{list}");
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
