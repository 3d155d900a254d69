//! Readers against real files, real qemu-nbd and real nbdkit.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use kura_source::{DiskReader, ExtentKind, NbdReader, RawReader, open_disk};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?} could not start: {e} (the README's test command installs it)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_all(d: &mut dyn DiskReader) -> Vec<u8> {
    let mut buf = vec![0u8; d.size() as usize];
    // Read in odd-sized pieces to exercise offsets.
    let mut off = 0;
    while off < buf.len() {
        let n = (buf.len() - off).min(3 << 20 | 517);
        d.read_at(&mut buf[off..off + n], off as u64).unwrap();
        off += n;
    }
    buf
}

fn data_bytes(d: &mut dyn DiskReader) -> u64 {
    let ex = d.extents(0, d.size()).unwrap();
    let mut pos = 0;
    for e in &ex {
        assert_eq!(e.offset, pos, "extents are contiguous");
        pos += e.len;
    }
    assert_eq!(pos, d.size(), "extents cover the disk");
    ex.iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| e.len)
        .sum()
}

#[test]
fn raw_reader_finds_holes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&[0xab; 1 << 20], 8 << 20).unwrap();
    f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
    drop(f);
    let mut r = RawReader::open(&p).unwrap();
    assert_eq!(r.size(), 64 << 20);
    let data = data_bytes(&mut r);
    assert!(
        ((1 << 20) + 4..=2 << 20).contains(&data),
        "only written blocks are data: {data}"
    );
    let all = read_all(&mut r);
    assert_eq!(&all[8 << 20..(8 << 20) + 4], &[0xab; 4]);
    assert_eq!(&all[all.len() - 4..], b"tail");
    // Sub-range queries are clamped and contiguous.
    let ex = r.extents(7 << 20, 2 << 20).unwrap();
    assert_eq!(ex.first().unwrap().offset, 7 << 20);
    assert_eq!(ex.iter().map(|e| e.len).sum::<u64>(), 2 << 20);
}

#[test]
fn missing_source_is_named() {
    let e = open_disk(Path::new("/nonexistent/disk.img"))
        .err()
        .expect("must fail");
    assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
}

#[test]
fn qcow2_through_qemu_nbd_matches_qemu_img_convert() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("d.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("80M"));
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 1M",
            "-c",
            "write -P 0x22 40M 64k",
            "-c",
            "write -z 50M 1M",
            "-c",
            "write -P 0x33 79M 1M",
        ])
        .arg(&q));
    let raw = dir.path().join("d.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&q)
        .arg(&raw));

    let mut d = open_disk(&q).unwrap();
    assert_eq!(d.format(), "qcow2");
    assert_eq!(d.size(), 80 << 20);
    let data = data_bytes(d.as_mut());
    assert!(
        ((2 << 20) + (64 << 10)..=4 << 20).contains(&data),
        "allocation comes from block status: {data}"
    );
    assert_eq!(read_all(d.as_mut()), std::fs::read(&raw).unwrap());
}

#[test]
fn nbd_client_reads_from_nbdkit() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.raw");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(16 << 20).unwrap();
    f.write_all_at(&[7u8; 70_000], 5_000_000).unwrap();
    drop(f);
    let sock = dir.path().join("kit.sock");
    let pid = dir.path().join("kit.pid");
    run(Command::new("nbdkit")
        .arg("-U")
        .arg(&sock)
        .arg("-P")
        .arg(&pid)
        .args(["-r", "file"])
        .arg(&img));
    let mut c = kura_source::nbd::Client::connect_unix(&sock, "", &["base:allocation"]).unwrap();
    assert!(c.structured());
    assert_eq!(c.size(), 16 << 20);
    let mut buf = vec![1u8; 100_000];
    c.read(&mut buf, 4_990_000).unwrap();
    assert!(buf[..10_000].iter().all(|&b| b == 0));
    assert!(buf[10_000..80_000].iter().all(|&b| b == 7));
    let st = c.block_status("base:allocation", 0, 16 << 20).unwrap();
    assert!(
        st.iter()
            .any(|d| d.flags & kura_source::nbd::STATE_ZERO != 0),
        "{st:?}"
    );
    c.disconnect().unwrap();
    let pid: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

#[test]
fn nbd_reader_stops_its_server() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("d.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("1M"));
    let r = NbdReader::open(&q, "qcow2").unwrap();
    drop(r);
    // The image is no longer locked by a server: a writer can open it.
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write 0 4k"])
        .arg(&q));
}
