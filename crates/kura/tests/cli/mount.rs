//! `kura mount`: a point's files through FUSE, read by ordinary programs (std::fs here,
//! `cmp` would do the same), read-only, ended by a signal or by `umount`.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use super::*;

/// Whether `dir` is a mount point now (from the kernel's table).
fn mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let dir = dir.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(dir))
}

/// Starts `kura mount ARGS MNT` and waits until the kernel shows the mount (or the process
/// ends, which fails the test with its output).
fn mount(e: &Env, args: &[&str], mnt: &Path) -> std::process::Child {
    std::fs::create_dir_all(mnt).unwrap();
    let mut a = vec!["mount"];
    a.extend_from_slice(args);
    a.push(mnt.to_str().unwrap());
    let mut child = e
        .cmd(&a)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if mounted(mnt) {
            return child;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("kura mount ended ({status}): {out:?} (scripts/test installs fuse3)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{} was not mounted within 30 s", mnt.display());
}

/// Ends `child` with `signal` and checks it unmounted and exited cleanly.
fn end(child: std::process::Child, signal: rustix::process::Signal, mnt: &Path) {
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, signal).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!mounted(mnt), "still mounted after the process ended");
}

#[test]
fn a_disk_point_is_mounted_read_only_and_unmounted_on_a_signal() {
    let e = Env::new();
    e.vault("v", &[]);
    let (img, src) = super::files::disk_with_files(&e);
    e.protect(&img, "v", &["--name", "web"]);
    e.backup("web");
    std::fs::remove_file(&img).unwrap();

    let mnt = e.path("mnt");
    let child = mount(&e, &["web", "--rp", "latest"], &mnt);
    let mut names: Vec<String> = std::fs::read_dir(mnt.join("srv"))
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["big.bin", "home", "www"]);
    assert_eq!(
        std::fs::read(mnt.join("srv/big.bin")).unwrap(),
        std::fs::read(src.join("srv/big.bin")).unwrap(),
        "24 MiB read through the mount, bit-exact"
    );
    let m = std::fs::metadata(mnt.join("srv/www/index.html")).unwrap();
    assert_eq!((m.len(), m.permissions().mode() & 0o7777), (15, 0o604));
    assert_eq!(
        std::fs::read_link(mnt.join("srv/home")).unwrap(),
        Path::new("www/index.html")
    );
    // Reads at any offset, backwards too.
    let f = File::open(mnt.join("srv/big.bin")).unwrap();
    let mut tail = [0u8; 100];
    f.read_exact_at(&mut tail, (24 << 20) - 100).unwrap();
    let mut head = [0u8; 100];
    f.read_exact_at(&mut head, 5).unwrap();
    let want = std::fs::read(src.join("srv/big.bin")).unwrap();
    assert_eq!(
        (&tail[..], &head[..]),
        (&want[want.len() - 100..], &want[5..105])
    );
    // Read-only.
    let err = std::fs::write(mnt.join("srv/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS: {err}");
    drop(f);
    end(child, rustix::process::Signal::INT, &mnt);
}

#[test]
fn a_file_item_point_is_mounted_and_an_unmount_ends_the_process() {
    let e = Env::new();
    e.geo_vault("v");
    let src = super::trees::share(&e);
    e.ok(&[
        "item",
        "protect",
        "files",
        src.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "share",
    ]);
    e.backup("share");
    let mnt = e.path("mnt");
    let child = mount(&e, &["share"], &mnt);
    assert_eq!(
        std::fs::read(mnt.join("data.bin")).unwrap(),
        std::fs::read(src.join("data.bin")).unwrap()
    );
    let m = std::fs::metadata(mnt.join("docs/readme.txt")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    assert_eq!(
        m.mtime(),
        std::fs::metadata(src.join("docs/readme.txt"))
            .unwrap()
            .mtime()
    );
    assert_eq!(
        std::fs::read_link(mnt.join("docs/abs")).unwrap(),
        Path::new("/etc/passwd"),
        "a link is shown as stored, never followed"
    );
    let sparse = std::fs::read(mnt.join("sparse.img")).unwrap();
    assert_eq!(
        (sparse.len(), &sparse[sparse.len() - 3..]),
        (32 << 20, &b"end"[..])
    );
    assert!(
        std::fs::symlink_metadata(mnt.join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo(),
        "the FIFO is listed as one"
    );
    let o = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!mounted(&mnt));

    // Refused before anything is mounted: no such directory, no such point.
    let (_, err) = e.fails(&["mount", "share", e.path("nope").to_str().unwrap()]);
    assert!(err.to_string().contains("nope"), "{err}");
    let (_, err) = e.fails(&["mount", "share", mnt.to_str().unwrap(), "--rp", "0123abcd"]);
    assert!(err.to_string().contains("0123abcd"), "{err}");

    // With the vault's primary location gone, the point is mounted from its geo replica.
    let gone = e.primary_gone("v");
    let (_, err) = e.fails(&["mount", "share", mnt.to_str().unwrap()]);
    assert!(!mounted(&mnt), "{err}");
    let child = mount(&e, &["share", "--from-replica"], &mnt);
    assert_eq!(
        std::fs::read(mnt.join("data.bin")).unwrap(),
        std::fs::read(src.join("data.bin")).unwrap()
    );
    let o = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(child.wait_with_output().unwrap().status.success());
    drop(gone);
}
