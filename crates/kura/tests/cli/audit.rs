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
