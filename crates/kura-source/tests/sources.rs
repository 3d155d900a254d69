//! Readers against real files, real qemu-nbd and real nbdkit.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use kura_source::{DiskReader, ExtentKind, NbdReader, PinnedFormat, RawReader};

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
    let e = PinnedFormat::new("raw")
        .unwrap()
        .open(Path::new("/nonexistent/disk.img"))
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

    let pinned = PinnedFormat::inspect(&q, None).unwrap();
    assert_eq!(pinned, PinnedFormat::new("qcow2").unwrap());
    let mut d = pinned.open(&q).unwrap();
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

/// A guest that writes a qcow2 header (backing file: a host file) into its raw disk changes
/// nothing: the pinned raw format reads the guest's own bytes, never the host file.
#[test]
fn a_raw_disk_holding_a_qcow2_header_is_read_as_raw() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("host-secret");
    std::fs::write(&secret, vec![0x5a; 64 << 10]).unwrap();
    let guest = dir.path().join("guest.raw");
    std::fs::write(&guest, vec![0x11; 1 << 20]).unwrap();
    assert_eq!(
        PinnedFormat::inspect(&guest, None).unwrap(),
        PinnedFormat::new("raw").unwrap()
    );
    let hdr = dir.path().join("hdr.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&hdr)
        .arg("1M"));
    let header = std::fs::read(&hdr).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&guest)
        .unwrap()
        .write_all_at(&header, 0)
        .unwrap();
    let expected = std::fs::read(&guest).unwrap();
    // A fresh probe would be fooled; the pinned format is not.
    assert_eq!(PinnedFormat::inspect(&guest, None).unwrap().format, "qcow2");
    let pinned = PinnedFormat::new("raw").unwrap();
    pinned.check(&guest).unwrap();
    let mut d = pinned.open(&guest).unwrap();
    assert_eq!(d.format(), "raw");
    assert_eq!(read_all(d.as_mut()), expected);
}

/// A qcow2 image whose backing chain is not the one recorded is refused before it is read.
#[test]
fn a_qcow2_whose_backing_chain_changed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![1u8; 1 << 20]).unwrap();
    let other = dir.path().join("other.raw");
    std::fs::write(&other, vec![2u8; 1 << 20]).unwrap();
    let top = dir.path().join("top.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&top)
        .arg("1M"));
    let pinned = PinnedFormat::inspect(&top, Some("qcow2")).unwrap();
    assert_eq!(pinned.backing.len(), 1, "{pinned:?}");
    assert_eq!(pinned.backing[0].format, "raw");
    pinned.check(&top).unwrap();
    let mut d = pinned.open(&top).unwrap();
    assert_eq!(read_all(d.as_mut()), vec![1u8; 1 << 20]);
    drop(d);
    run(Command::new("qemu-img")
        .args(["rebase", "-u", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&other)
        .arg(&top));
    let e = pinned.open(&top).err().expect("a changed chain is refused");
    assert!(e.to_string().contains("backing chain changed"), "{e}");
    assert!(e.to_string().contains("other.raw"), "{e}");
    // An image that was standalone when pinned may not grow a backing file either.
    let alone = PinnedFormat::new("qcow2").unwrap();
    assert!(alone.check(&top).is_err());
}

#[test]
fn unknown_formats_are_refused_by_name() {
    let e = PinnedFormat::new("json:{}").unwrap_err();
    assert!(e.to_string().contains("unknown disk format"), "{e}");
}

/// SEEK_DATA past a new end looks like a hole; the size check after the last read does not.
#[test]
fn a_raw_source_that_shrinks_or_is_replaced_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.raw");
    std::fs::write(&img, vec![3u8; 2 << 20]).unwrap();
    let mut r = RawReader::open(&img).unwrap();
    r.check_unchanged().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let e = r.check_unchanged().unwrap_err();
    assert!(
        e.to_string().contains("size went from 2097152 to 1048576"),
        "{e}"
    );

    std::fs::write(&img, vec![3u8; 2 << 20]).unwrap();
    let mut r = RawReader::open(&img).unwrap();
    let tmp = dir.path().join("d.new");
    std::fs::write(&tmp, vec![4u8; 2 << 20]).unwrap();
    std::fs::rename(&tmp, &img).unwrap();
    let e = r.check_unchanged().unwrap_err();
    assert!(
        e.to_string().contains("another file now has its name"),
        "{e}"
    );
}

/// Records what a real qemu-nbd answers to the fuzz harness's requests and replays it
/// through the harness: the transcript is the seed that lets the NBD fuzz target get past
/// the handshake (fuzz/seeds/nbd). Every truncation of it must fail cleanly too.
#[cfg(feature = "fuzzing")]
#[test]
fn nbd_fuzz_harness_replays_a_real_server_transcript() {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("d.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("2M"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 64k"])
        .arg(&q));
    let server = dir.path().join("s.sock");
    let mut qnbd = Command::new("qemu-nbd")
        .args(["--read-only", "--format=qcow2", "--shared=2", "--socket"])
        .arg(&server)
        .arg(&q)
        .spawn()
        .unwrap();
    let proxy = dir.path().join("p.sock");
    let listener = UnixListener::bind(&proxy).unwrap();
    let recorder = std::thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let mut upstream = loop {
            if let Ok(s) = UnixStream::connect(&server) {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let mut up2 = upstream.try_clone().unwrap();
        let mut client2 = client.try_clone().unwrap();
        std::thread::spawn(move || std::io::copy(&mut client2, &mut up2));
        let mut transcript = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match upstream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    transcript.extend_from_slice(&buf[..n]);
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        transcript
    });
    {
        let mut c =
            kura_source::nbd::Client::connect_unix(&proxy, "", &["base:allocation"]).unwrap();
        let mut buf = vec![0u8; 4096];
        c.read(&mut buf, 0).unwrap();
        assert_eq!(buf[0], 0x5a);
        c.block_status("base:allocation", 0, 1 << 20).unwrap();
        c.block_status("base:allocation", 0, 4096).unwrap();
        c.disconnect().unwrap();
    }
    let transcript = recorder.join().unwrap();
    let _ = qnbd.kill();
    let _ = qnbd.wait();
    assert!(transcript.len() > 100, "{} bytes", transcript.len());
    kura_source::nbd::fuzz_replies(&transcript);
    for cut in 0..transcript.len() {
        kura_source::nbd::fuzz_replies(&transcript[..cut]);
    }
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds/nbd/qemu-nbd-transcript");
    if let Ok(stored) = std::fs::read(&seed) {
        kura_source::nbd::fuzz_replies(&stored);
    } else {
        // The committed seed is made by this test: write it once, then commit it.
        std::fs::create_dir_all(seed.parent().unwrap()).unwrap();
        std::fs::write(&seed, &transcript).unwrap();
    }
}

/// Inputs fuzzing found (fuzz/regressions/nbd) stay fixed: each must fail cleanly.
#[cfg(feature = "fuzzing")]
#[test]
fn nbd_fuzz_regressions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/nbd");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        kura_source::nbd::fuzz_replies(&std::fs::read(e.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}

/// The building block of VM points and of one QEMU per image: a real qemu-storage-daemon,
/// driven over QMP by kura's client, takes a point in time (fleecing) and rotates a
/// persistent dirty bitmap in one transaction; kura's NBD client reads the point while the
/// live disk keeps changing, and the bitmap names exactly what changed before the point.
#[test]
fn qmp_point_in_time_export_with_a_dirty_bitmap() {
    use kura_source::qmp::Qmp;
    use serde_json::json;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("8M"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x11 0 1M"])
        .arg(&img));
    let qmp_sock = dir.path().join("qmp.sock");
    let nbd_sock = dir.path().join("nbd.sock");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _qsd = Kill(
        Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={}",
                img.display()
            ))
            .args(["--blockdev", "driver=qcow2,node-name=disk0,file=file0"])
            .arg("--chardev")
            .arg(format!(
                "socket,id=qmp0,path={},server=on,wait=off",
                qmp_sock.display()
            ))
            .args(["--monitor", "chardev=qmp0"])
            .spawn()
            .expect("qemu-storage-daemon (qemu-utils) is installed by scripts/test"),
    );
    let mut q = Qmp::connect(&qmp_sock, Duration::from_secs(30)).unwrap();
    q.execute(
        "block-dirty-bitmap-add",
        Some(json!({"node": "disk0", "name": "bm0", "persistent": true})),
    )
    .unwrap();
    q.execute(
        "nbd-server-start",
        Some(json!({"addr": {"type": "unix", "data": {"path": nbd_sock}}})),
    )
    .unwrap();
    q.execute(
        "block-export-add",
        Some(json!({"type": "nbd", "id": "live", "node-name": "disk0", "name": "live", "writable": true})),
    )
    .unwrap();
    let live = format!("nbd+unix:///live?socket={}", nbd_sock.display());
    let qemu_io = |cmd: &str| run(Command::new("qemu-io").args(["-f", "raw", "-c", cmd, &live]));
    qemu_io("write -P 0x22 2M 64k"); // before the point: in bm0

    let fleece = dir.path().join("fleece.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&fleece)
        .arg("8M"));
    q.execute(
        "blockdev-add",
        Some(json!({"driver": "qcow2", "node-name": "fleece",
            "file": {"driver": "file", "filename": fleece}, "backing": "disk0"})),
    )
    .unwrap();
    q.execute(
        "transaction",
        Some(json!({"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "bm1", "persistent": true}},
            {"type": "block-dirty-bitmap-disable", "data": {"node": "disk0", "name": "bm0"}},
            {"type": "blockdev-backup", "data": {"job-id": "fl0", "device": "disk0", "target": "fleece", "sync": "none"}}
        ]})),
    )
    .unwrap();
    q.execute(
        "block-export-add",
        Some(
            json!({"type": "nbd", "id": "snap", "node-name": "fleece", "name": "snap",
            "writable": false, "bitmaps": [{"node": "disk0", "name": "bm0"}]}),
        ),
    )
    .unwrap();
    qemu_io("write -P 0x33 0 64k"); // after the point: not in the point, not in bm0

    let mut c = kura_source::nbd::Client::connect_unix(
        &nbd_sock,
        "snap",
        &["base:allocation", "qemu:dirty-bitmap:bm0"],
    )
    .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    c.read(&mut buf, 0).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0x11),
        "the point holds the data before the freeze"
    );
    c.read(&mut buf, 2 << 20).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0x22),
        "and what was written before it"
    );
    let dirty: Vec<(u64, u64)> = {
        let mut out = Vec::new();
        let mut pos = 0u64;
        for d in c.block_status("qemu:dirty-bitmap:bm0", 0, 8 << 20).unwrap() {
            if d.flags & 1 != 0 {
                out.push((pos, d.len));
            }
            pos += d.len;
        }
        out
    };
    assert_eq!(dirty.len(), 1, "{dirty:?}");
    assert!(
        dirty[0].0 <= 2 << 20 && dirty[0].0 + dirty[0].1 >= (2 << 20) + (64 << 10),
        "{dirty:?}"
    );
    assert!(
        dirty[0].1 <= 1 << 20,
        "only the changed region is dirty: {dirty:?}"
    );
    c.disconnect().unwrap();

    q.execute("block-export-del", Some(json!({"id": "snap"})))
        .unwrap();
    q.execute(
        "block-job-cancel",
        Some(json!({"device": "fl0", "force": true})),
    )
    .unwrap();
    // A command QEMU refuses is an error naming it, with QEMU's description.
    let e = q
        .execute("blockdev-del", Some(json!({"node-name": "no-such-node"})))
        .unwrap_err();
    assert!(e.to_string().contains("blockdev-del failed"), "{e}");
}
