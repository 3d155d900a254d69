//! Real file systems, ext4 (mkfs.ext4, e2fsprogs), XFS (mkfs.xfs and the kernel's XFS through a
//! loop mount) and FAT (mkfs.fat, mtools), inside GPT and
//! MBR disks made by sfdisk (fdisk), read back through the crate.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use kura_files::{EntryKind, ExtractOptions, FileSystem, FsKind, ReadAt, extract, volumes};

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test installs e2fsprogs and fdisk)"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// A tree with a file, a nested file with a fixed mode and time, and two links.
fn tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc/conf.d")).unwrap();
    std::fs::write(src.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("etc/conf.d/big.bin"), &big).unwrap();
    std::fs::set_permissions(
        src.join("etc/conf.d/big.bin"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    run(Command::new("touch")
        .args(["-d", "2024-02-29 12:34:56.5 UTC"])
        .arg(src.join("etc/hosts")));
    symlink("/etc/passwd", src.join("etc/abs-link")).unwrap();
    symlink("../../outside", src.join("etc/rel-link")).unwrap();
    src
}

/// A 24 MiB disk: a partition table from `table` (sfdisk script) and an ext4 file system of
/// `src` at 1 MiB.
fn disk(dir: &Path, src: &Path, table: &str) -> PathBuf {
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(24 << 20)
        .unwrap();
    let mut sf = Command::new("sfdisk");
    sf.arg("--quiet")
        .arg(&img)
        .stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().expect("sfdisk (scripts/test installs fdisk)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), table.as_bytes()).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "offset=1048576", "-d"])
        .arg(src)
        .arg(&img)
        .arg("16M"));
    // mkfs.ext4 -d keeps whole seconds; give one file nanoseconds (mtime_extra holds them << 2).
    let mut at = img.clone().into_os_string();
    at.push("?offset=1048576");
    run(Command::new("debugfs")
        .args(["-w", "-R", "sif /etc/hosts mtime_extra 2000000000"])
        .arg(at));
    img
}

fn open(img: &Path) -> Box<dyn ReadAt> {
    Box::new(std::fs::File::open(img).unwrap())
}

#[test]
fn files_are_listed_and_extracted_from_an_ext4_partition_of_a_gpt_disk() {
    let dir = tempfile::tempdir().unwrap();
    let src = tree(dir.path());
    let img = disk(
        dir.path(),
        &src,
        "label: gpt\nstart=2048, size=32768, name=data\n",
    );
    let vols = volumes(open(&img).as_mut()).unwrap();
    assert_eq!(vols.len(), 1, "{vols:?}");
    let v = &vols[0];
    assert_eq!(
        (v.number, v.table, v.start, v.fs),
        (1, "gpt", 1 << 20, FsKind::Ext)
    );
    assert_eq!(v.name, "data");

    let fs = FileSystem::open(open(&img), v).unwrap();
    let names: Vec<String> = fs
        .list("/etc")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["abs-link", "conf.d", "hosts", "rel-link"]);
    let hosts = fs.entry("/etc/hosts").unwrap();
    assert_eq!((hosts.kind, hosts.size), (EntryKind::File, 20));
    assert_eq!(hosts.mtime, 1709210096, "2024-02-29 12:34:56 UTC");
    assert_eq!(hosts.mtime_nsec, 500_000_000);
    assert_eq!(
        fs.entry("etc/abs-link").unwrap().target.as_deref(),
        Some("/etc/passwd")
    );
    assert!(fs.entry("/etc/../etc/hosts").is_err(), "`..` is refused");
    assert!(matches!(
        fs.entry("/nope"),
        Err(kura_files::Error::NotFound(_))
    ));

    // Extract /etc: contents, modes, times, links as links.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let r = extract(&fs, &["/etc".into()], &out, ExtractOptions::default()).unwrap();
    assert_eq!((r.files, r.dirs, r.links), (2, 2, 2), "{r:?}");
    assert_eq!(
        std::fs::read(out.join("etc/hosts")).unwrap(),
        std::fs::read(src.join("etc/hosts")).unwrap()
    );
    assert_eq!(
        std::fs::read(out.join("etc/conf.d/big.bin")).unwrap(),
        std::fs::read(src.join("etc/conf.d/big.bin")).unwrap()
    );
    let m = std::fs::metadata(out.join("etc/conf.d/big.bin")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    let m = std::fs::metadata(out.join("etc/hosts")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1709210096, 500_000_000));
    assert_eq!(
        std::fs::read_link(out.join("etc/abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::read_link(out.join("etc/rel-link")).unwrap(),
        Path::new("../../outside")
    );

    // The same directory as a tar stream, unpacked by GNU tar.
    let mut archive = Vec::new();
    let bytes =
        kura_files::write_archive(&fs, "/etc", kura_files::Archive::Tar, &mut archive).unwrap();
    assert_eq!(bytes, 20 + 300_000);
    let untar = dir.path().join("untar");
    std::fs::create_dir(&untar).unwrap();
    std::fs::write(dir.path().join("etc.tar"), &archive).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(dir.path().join("etc.tar"))
        .arg("-C")
        .arg(&untar));
    assert_eq!(
        std::fs::read(untar.join("etc/conf.d/big.bin")).unwrap(),
        std::fs::read(src.join("etc/conf.d/big.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read_link(untar.join("etc/abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::metadata(untar.join("etc/hosts")).unwrap().mtime(),
        1709210096
    );

    // Again: existing files are skipped unless overwrite, which replaces them.
    std::fs::write(out.join("etc/hosts"), b"changed").unwrap();
    let r = extract(
        &fs,
        &["/etc/hosts".into()],
        &out.join("etc"),
        ExtractOptions::default(),
    )
    .unwrap();
    assert_eq!((r.files, r.skipped.len()), (0, 1), "{r:?}");
    assert_eq!(std::fs::read(out.join("etc/hosts")).unwrap(), b"changed");
    let o = ExtractOptions {
        overwrite: true,
        ..Default::default()
    };
    extract(&fs, &["/etc/hosts".into()], &out.join("etc"), o).unwrap();
    assert_eq!(
        std::fs::read(out.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
}

#[test]
fn extraction_never_follows_a_link_in_the_target_or_one_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let src = tree(dir.path());
    let img = disk(
        dir.path(),
        &src,
        "label: dos\nstart=2048, size=32768, type=83\n",
    );
    let vols = volumes(open(&img).as_mut()).unwrap();
    assert_eq!(
        (vols[0].table, vols[0].fs),
        ("mbr", FsKind::Ext),
        "{vols:?}"
    );
    let fs = FileSystem::open(open(&img), &vols[0]).unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();

    // A link planted where a directory of the point goes: refused, nothing written through it.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    symlink(&outside, out.join("etc")).unwrap();
    let r = extract(&fs, &["/etc".into()], &out, ExtractOptions::default()).unwrap();
    assert!(r.skipped.iter().any(|s| s.contains("/etc")), "{r:?}");
    let o = ExtractOptions {
        overwrite: true,
        ..Default::default()
    };
    extract(&fs, &["/etc".into()], &out, o).unwrap();
    assert!(
        std::fs::symlink_metadata(out.join("etc")).unwrap().is_dir(),
        "the link was replaced"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );

    // A link planted where a file goes: overwrite replaces the link, never writes through it.
    let out2 = dir.path().join("out2");
    std::fs::create_dir(&out2).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    symlink(&victim, out2.join("hosts")).unwrap();
    extract(&fs, &["/etc/hosts".into()], &out2, o).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert!(
        std::fs::symlink_metadata(out2.join("hosts"))
            .unwrap()
            .is_file()
    );
}

#[test]
fn a_disk_without_a_table_is_one_volume_and_garbage_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let src = tree(dir.path());
    let img = dir.path().join("fs.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("8M"));
    let vols = volumes(open(&img).as_mut()).unwrap();
    assert_eq!(
        (vols.len(), vols[0].number, vols[0].table, vols[0].fs),
        (1, 0, "none", FsKind::Ext)
    );
    let fs = FileSystem::open(open(&img), &vols[0]).unwrap();
    assert_eq!(fs.entry("/etc/hosts").unwrap().size, 20);

    // The superblock kept, everything after it overwritten with noise: errors, no panic.
    let mut bytes = std::fs::read(&img).unwrap();
    let mut x = 0x9E37_79B9u32;
    for b in bytes[4096..].iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(&img, &bytes).unwrap();
    let vols = volumes(open(&img).as_mut()).unwrap();
    match FileSystem::open(open(&img), &vols[0]) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(fs) => assert!(fs.list("/etc").is_err() || fs.entry("/etc/hosts").is_err()),
    }

    // A GPT header claiming a million entries is refused before anything allocates them.
    let mut disk = vec![0u8; 1 << 20];
    disk[446 + 4] = 0xEE;
    disk[446 + 8] = 1;
    disk[446 + 12..446 + 16].copy_from_slice(&2047u32.to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[512..520].copy_from_slice(b"EFI PART");
    disk[512 + 80..512 + 84].copy_from_slice(&1_000_000u32.to_le_bytes());
    disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
    let p = dir.path().join("evil.img");
    std::fs::write(&p, &disk).unwrap();
    let e = volumes(open(&p).as_mut()).unwrap_err();
    assert!(e.to_string().contains("1000000 entries"), "{e}");
}

/// An EFI system partition: FAT32 made by mkfs.fat and filled by mtools, in a GPT disk.
#[test]
fn a_fat_partition_is_listed_and_extracted_too() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("esp.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut sf = Command::new("sfdisk");
    sf.arg("--quiet")
        .arg(&img)
        .stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().expect("sfdisk (scripts/test installs fdisk)");
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"label: gpt\nstart=2048, size=100000, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=EFI\n",
    )
    .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let part = dir.path().join("part.img");
    run(Command::new("mkfs.fat")
        .args(["-F", "32", "-C"])
        .arg(&part)
        .arg("50000"));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(dir.path().join("grubx64.efi"), &big).unwrap();
    std::fs::write(dir.path().join("grub.cfg"), b"set timeout=5\n").unwrap();
    let at = format!("{}", part.display());
    run(Command::new("mmd").args(["-i", &at, "::/EFI", "::/EFI/debian"]));
    run(Command::new("mcopy")
        .args(["-i", &at])
        .arg(dir.path().join("grubx64.efi"))
        .arg(dir.path().join("grub.cfg"))
        .arg("::/EFI/debian/"));
    // Put the file system at 1 MiB in the disk.
    let bytes = std::fs::read(&part).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&img).unwrap(),
        &bytes,
        1 << 20,
    )
    .unwrap();

    let vols = volumes(open(&img).as_mut()).unwrap();
    assert_eq!(
        (vols[0].fs, vols[0].name.as_str()),
        (FsKind::Vfat, "EFI"),
        "{vols:?}"
    );
    let fs = FileSystem::open(open(&img), &vols[0]).unwrap();
    let names: Vec<String> = fs
        .list("/EFI/debian")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["grub.cfg", "grubx64.efi"]);
    assert_eq!(
        fs.entry("/efi/DEBIAN/grub.cfg").unwrap().size,
        14,
        "FAT names ignore case"
    );
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let r = extract(&fs, &["/EFI".into()], &out, ExtractOptions::default()).unwrap();
    assert_eq!((r.files, r.dirs), (2, 2), "{r:?}");
    assert_eq!(
        std::fs::read(out.join("EFI/debian/grubx64.efi")).unwrap(),
        big
    );
    assert!(matches!(
        fs.entry("/EFI/nope"),
        Err(kura_files::Error::NotFound(_))
    ));
}

/// Walks everything reachable (bounded), reading each file: whatever the bytes, this
/// returns errors, never panics and never runs away.
fn walk(fs: &FileSystem, path: &str, depth: usize, budget: &mut usize) {
    let Ok(list) = fs.list(path) else { return };
    for e in list {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        match e.kind {
            EntryKind::Dir if depth < 6 => walk(fs, &e.path, depth + 1, budget),
            EntryKind::File => {
                if let Ok(mut r) = fs.reader(&e.path) {
                    let mut sink = vec![0u8; 64 << 10];
                    let mut left = 1usize << 20;
                    while left > 0 {
                        match std::io::Read::read(&mut r, &mut sink) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => left = left.saturating_sub(n),
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// A disk image whose first bytes are replaced (by damaged ones).
struct Patched {
    head: Vec<u8>,
    rest: std::fs::File,
}

impl ReadAt for Patched {
    fn size(&self) -> u64 {
        self.rest.size()
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.rest.read_at(buf, offset)?;
        let head = self.head.len() as u64;
        if offset < head {
            let n = (head - offset).min(buf.len() as u64) as usize;
            buf[..n].copy_from_slice(&self.head[offset as usize..offset as usize + n]);
        }
        Ok(())
    }
}

/// Damaged file systems (bytes of their metadata overwritten, deterministic seeds): every
/// call answers, with data or an error.
#[test]
fn damaged_file_systems_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let src = tree(dir.path());
    let ext = dir.path().join("ext.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&ext)
        .arg("4M"));
    let fat = dir.path().join("fat.img");
    run(Command::new("mkfs.fat")
        .args(["-F", "16", "-C"])
        .arg(&fat)
        .arg("16384"));
    let at = fat.display().to_string();
    run(Command::new("mmd").args(["-i", &at, "::/etc", "::/etc/conf.d"]));
    run(Command::new("mcopy")
        .args(["-i", &at])
        .arg(src.join("etc/hosts"))
        .arg("::/etc/"));
    run(Command::new("mcopy")
        .args(["-i", &at])
        .arg(src.join("etc/conf.d/big.bin"))
        .arg("::/etc/conf.d/"));
    // XFS, v4 (no checksums, so damage reaches the parsers) and v5, from a prototype file.
    let proto = dir.path().join("proto");
    std::fs::write(
        &proto,
        format!(
            "boot\n0 0\nd--755 0 0\netc d--755 0 0\nhosts ---644 0 0 {}\nconf.d d--755 0 0\nbig.bin ---640 0 0 {}\n$\nlink l--777 0 0 hosts\n$\n$\n",
            src.join("etc/hosts").display(),
            src.join("etc/conf.d/big.bin").display()
        ),
    )
    .unwrap();
    let mut images = vec![(ext, 256 << 10), (fat, 64 << 10)];
    for crc in ["crc=0", "crc=1"] {
        let img = dir.path().join(format!("xfs-{crc}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        run(Command::new("mkfs.xfs")
            .args(["-q", "-f", "-m", crc, "-p"])
            .arg(&proto)
            .arg(&img));
        images.push((img, 256 << 10));
    }
    for (img, meta) in &images {
        let meta = *meta;
        let mut walked = 0;
        let clean = std::fs::read(img).unwrap();
        for seed in 1..=150u64 {
            let mut b = clean[..meta].to_vec();
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for _ in 0..(1 + seed % 24) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Anywhere in the metadata, sparing the first superblock/boot sector bytes
                // half of the time so the parsers get past their first checks.
                let lo = if seed % 2 == 0 { 1536 } else { 0 };
                let at = lo + (x as usize) % (meta - lo);
                b[at] = (x >> 32) as u8;
            }
            let damaged = || -> Box<dyn ReadAt> {
                Box::new(Patched {
                    head: b.clone(),
                    rest: std::fs::File::open(img).unwrap(),
                })
            };
            let Ok(vols) = volumes(damaged().as_mut()) else {
                continue;
            };
            for v in vols {
                if let Ok(fs) = FileSystem::open(damaged(), &v) {
                    let mut budget = 2000;
                    walk(&fs, "/", 0, &mut budget);
                    walked += usize::from(budget < 2000);
                }
            }
        }
        // Not vacuous: many damaged images still open and list something.
        assert!(
            walked > 30,
            "only {walked} damaged copies of {} could be walked at all",
            img.display()
        );
    }
}

/// A walk stops at 256 levels of directories (what a directory containing itself would
/// give), with an error naming it.
#[test]
fn directories_nested_too_deep_end_the_walk_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("deep");
    let mut p = src.clone();
    for _ in 0..260 {
        p.push("d");
    }
    std::fs::create_dir_all(&p).unwrap();
    let img = dir.path().join("deep.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("8M"));
    let vols = volumes(open(&img).as_mut()).unwrap();
    let fs = FileSystem::open(open(&img), &vols[0]).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let e = extract(&fs, &["/d".into()], &out, ExtractOptions::default()).unwrap_err();
    assert!(e.to_string().contains("deeper than 256 levels"), "{e}");
    let e =
        kura_files::write_archive(&fs, "/", kura_files::Archive::Tar, std::io::sink()).unwrap_err();
    assert!(e.to_string().contains("deeper than 256 levels"), "{e}");
}

/// Detaches a loop device when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        // Quiet: after a clean run the device is unmounted already.
        let quiet = || std::process::Stdio::null();
        let _ = Command::new("umount").arg(&self.0).stderr(quiet()).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A 330 MiB GPT disk whose partition 1 (at 1 MiB, 320 MiB) is an XFS made by mkfs.xfs with
/// `mkfs` options, filled through a loop mount by the kernel's own XFS: nested files with
/// owners, modes and times, a hard link, links, a FIFO, a device node, a sparse file of 300
/// extents (its extent list is a B+tree) and a directory of 400 entries (a leaf/node
/// directory). Needs root and a loop device, as scripts/test runs; fails loudly without.
fn xfs_disk(dir: &Path, mkfs: &[&str]) -> PathBuf {
    let img = dir.join("xfs-disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(330 << 20)
        .unwrap();
    let mut sf = Command::new("sfdisk");
    sf.arg("--quiet")
        .arg(&img)
        .stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().expect("sfdisk (scripts/test installs fdisk)");
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"label: gpt\nstart=2048, size=655360, name=root\n",
    )
    .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let o = Command::new("losetup")
        .args(["-f", "--show", "-o", "1048576", "--sizelimit", "335544320"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "this test needs root and a loop device: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dev = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let guard = Loop(dev.clone());
    run(Command::new("mkfs.xfs")
        .args(["-q", "-f"])
        .args(mkfs)
        .arg(&dev));
    let mnt = dir.join("xfs-mnt");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount").arg(&dev).arg(&mnt));
    let etc = mnt.join("etc");
    std::fs::create_dir_all(etc.join("conf.d")).unwrap();
    std::fs::write(etc.join("hosts"), b"127.0.0.1 localhost\n").unwrap();
    run(Command::new("touch")
        .args(["-d", "2024-02-29 12:34:56.5 UTC"])
        .arg(etc.join("hosts")));
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(etc.join("conf.d/big.bin"), &big).unwrap();
    std::fs::set_permissions(
        etc.join("conf.d/big.bin"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::chown(etc.join("conf.d/big.bin"), Some(1234), Some(5678)).unwrap();
    std::fs::hard_link(etc.join("conf.d/big.bin"), etc.join("big-again")).unwrap();
    symlink("/etc/passwd", etc.join("abs-link")).unwrap();
    // Longer than fits in the inode: a remote symlink block.
    symlink("x/".repeat(200), etc.join("long-link")).unwrap();
    run(Command::new("mkfifo").arg(etc.join("fifo")));
    run(Command::new("mknod")
        .arg(etc.join("null"))
        .args(["c", "1", "3"]));
    let sparse = std::fs::File::create(mnt.join("sparse.bin")).unwrap();
    for i in 0..300u64 {
        std::os::unix::fs::FileExt::write_all_at(&sparse, &i.to_le_bytes().repeat(512), i << 16)
            .unwrap();
    }
    sparse.sync_all().unwrap();
    drop(sparse);
    std::fs::create_dir(mnt.join("many")).unwrap();
    for i in 0..400 {
        std::fs::write(mnt.join(format!("many/file-{i:04}")), i.to_string()).unwrap();
    }
    run(Command::new("umount").arg(&mnt));
    drop(guard);
    img
}

/// The bytes of the sparse file [`xfs_disk`] writes.
fn sparse_contents() -> Vec<u8> {
    let mut want = vec![0u8; (299 << 16) + 4096];
    for i in 0..300u64 {
        let at = (i << 16) as usize;
        want[at..at + 4096].copy_from_slice(&i.to_le_bytes().repeat(512));
    }
    want
}

#[test]
fn files_are_listed_and_extracted_from_an_xfs_partition() {
    // The kernel fills it, so only what it mounts: v4 (crc=0) is deprecated and left out of
    // kernels built without CONFIG_XFS_SUPPORT_V4 (the next test covers v4 without a mount).
    for (mkfs, label) in [
        (&[][..], "mkfs.xfs defaults (v5, bigtime)"),
        (
            &["-m", "bigtime=0", "-i", "size=512"][..],
            "v5 without bigtime, 512-byte inodes",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let img = xfs_disk(dir.path(), mkfs);
        let vols = volumes(open(&img).as_mut()).unwrap();
        assert_eq!(
            (vols.len(), vols[0].fs, vols[0].name.as_str()),
            (1, FsKind::Xfs, "root"),
            "{label}: {vols:?}"
        );
        let fs = FileSystem::open(open(&img), &vols[0]).unwrap();
        let names: Vec<String> = fs
            .list("/etc")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names,
            [
                "abs-link",
                "big-again",
                "conf.d",
                "fifo",
                "hosts",
                "long-link",
                "null"
            ],
            "{label}"
        );
        let hosts = fs.entry("/etc/hosts").unwrap();
        assert_eq!((hosts.kind, hosts.size), (EntryKind::File, 20), "{label}");
        assert_eq!(
            (hosts.mtime, hosts.mtime_nsec),
            (1709210096, 500_000_000),
            "{label}: 2024-02-29 12:34:56.5 UTC"
        );
        let big = fs.entry("/etc/conf.d/big.bin").unwrap();
        assert_eq!(
            (big.mode, big.uid, big.gid, big.size),
            (0o640, 1234, 5678, 300_000),
            "{label}"
        );
        assert!(big.link_group.is_some(), "{label}: a hard link");
        assert_eq!(
            fs.entry("/etc/big-again").unwrap().link_group,
            big.link_group,
            "{label}"
        );
        assert_eq!(fs.entry("/etc/hosts").unwrap().link_group, None);
        assert_eq!(
            fs.entry("/etc/long-link").unwrap().target.unwrap(),
            "x/".repeat(200),
            "{label}"
        );
        assert_eq!(fs.entry("/etc/null").unwrap().kind, EntryKind::CharDevice);
        assert_eq!(fs.list("/many").unwrap().len(), 400, "{label}");
        assert!(matches!(
            fs.entry("/etc/nope"),
            Err(kura_files::Error::NotFound(_))
        ));
        assert!(fs.entry("/etc/../etc").is_err(), "`..` is refused");

        // Extract: contents (the sparse file through its B+tree), modes, owners, times, the
        // hard link as one file, links, the FIFO and the device node.
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let o = ExtractOptions {
            owners: true,
            ..Default::default()
        };
        let r = extract(&fs, &["/".into()], &out, o).unwrap();
        assert_eq!(
            (r.files, r.hard_links, r.links, r.specials),
            (404, 1, 2, 2),
            "{label}: {r:?}"
        );
        assert_eq!(
            std::fs::read(out.join("sparse.bin")).unwrap(),
            sparse_contents(),
            "{label}"
        );
        let m = std::fs::metadata(out.join("etc/conf.d/big.bin")).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid(), m.nlink()),
            (0o640, 1234, 5678, 2),
            "{label}"
        );
        assert_eq!(
            m.ino(),
            std::fs::metadata(out.join("etc/big-again")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read(out.join("etc/big-again")).unwrap(),
            (0..300_000u32)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>()
        );
        let m = std::fs::metadata(out.join("etc/hosts")).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec()), (1709210096, 500_000_000));
        assert_eq!(std::fs::read(out.join("many/file-0399")).unwrap(), b"399");
        let null = std::fs::symlink_metadata(out.join("etc/null")).unwrap();
        assert_eq!(
            null.rdev(),
            std::fs::metadata("/dev/null").unwrap().rdev(),
            "{label}"
        );
        assert_eq!(
            std::fs::read_link(out.join("etc/abs-link")).unwrap(),
            Path::new("/etc/passwd")
        );
    }
}

/// A v4 XFS (crc=0, what RHEL 7 guests have), filled by mkfs.xfs from a prototype file.
#[test]
fn a_v4_xfs_is_read_too() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(dir.path().join("body"), &body).unwrap();
    let proto = dir.path().join("proto");
    std::fs::write(
        &proto,
        format!(
            "boot\n0 0\nd--755 0 0\netc d--750 10 20\nbody ---604 1234 5678 {}\nlink l--777 0 0 body\ntty c--620 0 5 4 1\n$\n$\n",
            dir.path().join("body").display()
        ),
    )
    .unwrap();
    let img = dir.path().join("v4.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(320 << 20)
        .unwrap();
    run(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-m", "crc=0", "-p"])
        .arg(&proto)
        .arg(&img));
    let vols = volumes(open(&img).as_mut()).unwrap();
    assert_eq!(
        (vols[0].table, vols[0].fs),
        ("none", FsKind::Xfs),
        "{vols:?}"
    );
    let fs = FileSystem::open(open(&img), &vols[0]).unwrap();
    let etc = fs.entry("/etc").unwrap();
    assert_eq!(
        (etc.kind, etc.mode, etc.uid, etc.gid),
        (EntryKind::Dir, 0o750, 10, 20)
    );
    let e = fs.entry("/etc/body").unwrap();
    assert_eq!((e.mode, e.uid, e.gid, e.size), (0o604, 1234, 5678, 100_000));
    assert_eq!(
        fs.entry("/etc/link").unwrap().target.as_deref(),
        Some("body")
    );
    assert_eq!(fs.entry("/etc/tty").unwrap().kind, EntryKind::CharDevice);
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut fs.reader("/etc/body").unwrap(), &mut got).unwrap();
    assert_eq!(got, body);
}

/// The fuzz target `disk`'s inputs replayed (feature `fuzzing`): its seeds (real ext4, XFS v4
/// and v5, FAT and GPT disks) are read whole, and what fuzzing found reads without a panic.
/// With KURA_WRITE_SEEDS=1 it writes the seeds again from images made here.
#[cfg(feature = "fuzzing")]
#[test]
fn the_disk_fuzz_seeds_are_real_file_systems_read_whole() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let seeds = fuzz.join("seeds/disk");
    if std::env::var_os("KURA_WRITE_SEEDS").is_some() {
        write_disk_seeds(&seeds);
    }
    let mut n = 0;
    for e in std::fs::read_dir(&seeds).expect("fuzz/seeds/disk") {
        let p = e.unwrap().path();
        let bytes = kura_files::fuzz::disk(&std::fs::read(&p).unwrap());
        // Each seed's file system holds files of 20 and 20,000 bytes: a tar of more.
        assert!(
            bytes > 20_000,
            "{} gives an archive of {bytes} bytes",
            p.display()
        );
        n += 1;
    }
    assert_eq!(n, 5, "five seeds in {}", seeds.display());
    if let Ok(d) = std::fs::read_dir(fuzz.join("regressions/disk")) {
        for e in d {
            kura_files::fuzz::disk(&std::fs::read(e.unwrap().path()).unwrap());
        }
    }
}

#[cfg(feature = "fuzzing")]
fn write_disk_seeds(to: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("t/etc/conf.d")).unwrap();
    std::fs::write(d.join("t/etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    let big: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(d.join("t/etc/conf.d/big.bin"), &big).unwrap();
    symlink("hosts", d.join("t/etc/link")).unwrap();
    std::fs::hard_link(d.join("t/etc/hosts"), d.join("t/etc/hosts2")).unwrap();
    let make = |name: &str, size: u64| {
        let p = d.join(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    };
    let ext = make("ext.img", 1 << 20);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "1024", "-N", "32", "-d"])
        .arg(d.join("t"))
        .arg(&ext));
    std::fs::write(
        d.join("proto"),
        format!(
            "boot\n0 0\nd--755 0 0\netc d--755 0 0\nhosts ---644 0 0 {}\nconf.d d--755 0 0\nbig.bin ---640 7 8 {}\n$\nlink l--777 0 0 hosts\nnull c--666 0 0 1 3\n$\n$\n",
            d.join("t/etc/hosts").display(),
            d.join("t/etc/conf.d/big.bin").display()
        ),
    )
    .unwrap();
    let mut images = vec![("ext4", ext)];
    for (name, crc) in [("xfs-v4", "crc=0"), ("xfs-v5", "crc=1")] {
        let img = make(&format!("{name}.img"), 320 << 20);
        run(Command::new("mkfs.xfs")
            .args(["-q", "-f", "-m", crc, "-p"])
            .arg(d.join("proto"))
            .arg(&img));
        images.push((name, img));
    }
    let fat = make("fat.img", 1 << 20);
    run(Command::new("mkfs.fat").arg(&fat));
    let at = fat.display().to_string();
    run(Command::new("mmd").args(["-i", &at, "::/etc"]));
    run(Command::new("mcopy")
        .args(["-i", &at])
        .arg(d.join("t/etc/hosts"))
        .arg(d.join("t/etc/conf.d/big.bin"))
        .arg("::/etc/"));
    // A GPT disk with the FAT at 1 MiB.
    let gpt = make("gpt.img", 3 << 20);
    let mut sf = Command::new("sfdisk");
    sf.arg("--quiet")
        .arg(&gpt)
        .stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().expect("sfdisk (scripts/test installs fdisk)");
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"label: gpt\nstart=2048, size=2048, name=esp\n",
    )
    .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&gpt).unwrap(),
        &std::fs::read(&fat).unwrap(),
        1 << 20,
    )
    .unwrap();
    images.push(("fat", fat));
    images.push(("gpt-fat", gpt));
    std::fs::create_dir_all(to).unwrap();
    for (name, img) in images {
        let seed = kura_files::fuzz::seed(&std::fs::read(img).unwrap());
        std::fs::write(to.join(name), seed).unwrap();
    }
}

/// Runs an LVM command without device-mapper (which this kernel may lack): it only writes
/// the physical volume's metadata. Returns its standard output.
fn lvm(args: &[&str]) -> String {
    let o = Command::new(args[0])
        .args(&args[1..])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .unwrap_or_else(|e| panic!("{} (scripts/test installs lvm2): {e}", args[0]));
    assert!(o.status.success(), "{args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// An LVM physical volume in partition 1 of a GPT disk, made by the real LVM tools, with a
/// logical volume of two segments (ext4) and one of one (FAT): both are listed after the
/// partition and read through their extents.
#[test]
fn logical_volumes_of_an_lvm_partition_are_volumes_too() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lvm.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut sf = Command::new("sfdisk");
    sf.arg("--quiet")
        .arg(&img)
        .stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().expect("sfdisk (scripts/test installs fdisk)");
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"label: gpt\nstart=2048, size=126976, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
    )
    .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let o = Command::new("losetup")
        .args([
            "-f",
            "--show",
            "-o",
            "1048576",
            "--sizelimit",
            &(126976u64 * 512).to_string(),
        ])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "this test needs root and a loop device: {o:?}"
    );
    let dev = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let guard = Loop(dev.clone());
    let vg = format!("kuratest{}", std::process::id());
    let no_dm = "--driverloaded";
    lvm(&["pvcreate", "-ff", "-y", &dev]);
    lvm(&["vgcreate", &vg, &dev]);
    for (name, size) in [("root", "8M"), ("esp", "12M")] {
        lvm(&[
            "lvcreate", no_dm, "n", "-an", "-Zn", "-L", size, "-n", name, &vg,
        ]);
    }
    // root grows after esp: its second segment lies past esp's.
    lvm(&["lvextend", no_dm, "n", "-L", "+4M", &format!("{vg}/root")]);
    let pe_start: u64 = lvm(&[
        "pvs",
        "--noheadings",
        "--nosuffix",
        "--units",
        "b",
        "-o",
        "pe_start",
        &dev,
    ])
    .trim()
    .parse()
    .unwrap();
    let segs = lvm(&[
        "lvs",
        "--noheadings",
        "-o",
        "lv_name,seg_start_pe,seg_pe_ranges",
        &vg,
    ]);
    drop(guard);
    // Where each LV's extents (4 MiB) lie on the disk, from LVM's own report.
    let extent = 4u64 << 20;
    let mut runs: Vec<(String, u64, u64, u64)> = Vec::new();
    for l in segs.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        let range = w[2].rsplit(':').next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        let lv_at: u64 = w[1].parse().unwrap();
        runs.push((
            w[0].to_string(),
            lv_at * extent,
            (1 << 20) + pe_start + a * extent,
            (b - a + 1) * extent,
        ));
    }
    assert_eq!(runs.iter().filter(|r| r.0 == "root").count(), 2, "{segs}");
    // Put a file system into each LV, through its runs.
    let src = tree(dir.path());
    let ext = dir.path().join("root.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&ext)
        .arg("12M"));
    let fat = dir.path().join("esp.fat");
    run(Command::new("mkfs.fat").args(["-C"]).arg(&fat).arg("12288"));
    let at = fat.display().to_string();
    run(Command::new("mcopy")
        .args(["-i", &at])
        .arg(src.join("etc/hosts"))
        .arg("::/"));
    let disk = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    for (name, fs) in [("root", &ext), ("esp", &fat)] {
        let bytes = std::fs::read(fs).unwrap();
        for (_, lv_at, disk_at, len) in runs.iter().filter(|r| r.0 == name) {
            let end = ((lv_at + len) as usize).min(bytes.len());
            std::os::unix::fs::FileExt::write_all_at(&disk, &bytes[*lv_at as usize..end], *disk_at)
                .unwrap();
        }
    }
    drop(disk);

    let vols = volumes(open(&img).as_mut()).unwrap();
    let summary: Vec<(u32, &str, String, FsKind, u64)> = vols
        .iter()
        .map(|v| (v.number, v.table, v.name.clone(), v.fs, v.size))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "gpt", String::new(), FsKind::Lvm, 126976 * 512),
            (2, "lvm", format!("{vg}/root"), FsKind::Ext, 12 << 20),
            (3, "lvm", format!("{vg}/esp"), FsKind::Vfat, 12 << 20),
        ]
    );
    let root = FileSystem::open(open(&img), &vols[1]).unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut root.reader("/etc/conf.d/big.bin").unwrap(), &mut got).unwrap();
    assert_eq!(got, std::fs::read(src.join("etc/conf.d/big.bin")).unwrap());
    let esp = FileSystem::open(open(&img), &vols[2]).unwrap();
    assert_eq!(esp.entry("/hosts").unwrap().size, 20);
    assert!(
        FileSystem::open(open(&img), &vols[0]).is_err(),
        "the PV itself is not a file system"
    );
}
