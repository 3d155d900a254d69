//! File-tree items (a file share): backups that read only changed files, restores of the
//! whole tree or chosen paths, to another directory or the original place, with the tree's
//! metadata, and never through a link a user of the tree planted.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::process::Stdio;

use super::*;

/// A small share: nested folders, modes, a relative and an absolute link, two names of one
/// file, a sparse file, a FIFO, a name that is not UTF-8, 3 MB of random data, and a file
/// the item excludes.
pub(super) fn share(e: &Env) -> PathBuf {
    let src = e.path("share");
    std::fs::create_dir_all(src.join("docs/deep/er")).unwrap();
    std::fs::write(src.join("docs/readme.txt"), b"read me\n").unwrap();
    std::fs::set_permissions(
        src.join("docs/readme.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::write(src.join("docs/deep/er/note"), b"deep note").unwrap();
    std::fs::write(src.join("data.bin"), pattern(7, 3_000_000)).unwrap();
    std::fs::hard_link(src.join("data.bin"), src.join("docs/same.bin")).unwrap();
    std::os::unix::fs::symlink("../data.bin", src.join("docs/rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("docs/abs")).unwrap();
    let sparse = File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(32 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (32 << 20) - 3).unwrap();
    let fifo = std::ffi::CString::new(src.join("pipe").as_os_str().as_bytes()).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(OsStr::from_bytes(fifo.as_bytes()))
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(src.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name").unwrap();
    std::fs::write(src.join("docs/scratch.tmp"), b"leave me out").unwrap();
    src
}

/// Runs `backup now ITEM`, which stops at the `point` gate; runs `during` while it waits
/// there, releases it, and returns its result once it has succeeded.
fn backup_held(e: &Env, item: &str, point: &'static str, during: impl FnOnce()) -> Value {
    let g = Gate::new(e, point);
    let (var, val) = g.env();
    let child = e
        .cmd(&["--output", "json", "backup", "now", item])
        .env(var, val)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    g.wait_reached();
    during();
    g.release();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn file_names(v: &Value) -> Vec<String> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_file_tree_round_trips_with_its_metadata_and_incrementals_read_only_what_changed() {
    let e = Env::new();
    e.vault("v", &[]);
    let src = share(&e);
    e.ok(&[
        "item",
        "protect",
        "files",
        src.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "share",
        "--exclude",
        "*.tmp",
    ]);
    let show = e.json(&["item", "show", "share"]);
    assert_eq!(show["kind"], "files", "{show}");

    let first = e.json(&["backup", "now", "share"]);
    let data = 3_000_000 + 8 + 9 + 12 + 3; // what is read: the sparse file's data is 3 bytes
    assert!(
        first["read_bytes"].as_u64().unwrap() >= data,
        "the first backup reads everything: {first}"
    );
    // Nothing changed: nothing is read, nothing is written.
    let same = e.json(&["backup", "now", "share"]);
    assert_eq!(
        (same["read_bytes"].as_u64(), same["new_chunks"].as_u64()),
        (Some(0), Some(0)),
        "a no-change incremental reads and stores nothing: {same}"
    );
    // One file changed, one added, one removed: only the first two are read.
    std::fs::write(src.join("docs/deep/er/note"), b"deep note, edited").unwrap();
    std::fs::write(src.join("docs/new.txt"), b"new!").unwrap();
    std::fs::remove_file(src.join(OsStr::from_bytes(b"caf\xe9"))).unwrap();
    let third = e.json(&["backup", "now", "share"]);
    assert_eq!(third["read_bytes"], 17 + 4, "{third}");
    let rp3 = third["rp_id"].as_str().unwrap().to_string();
    let rp1 = first["rp_id"].as_str().unwrap().to_string();

    // Browsing a point, as for disk points.
    let ls = e.json(&["files", "ls", "share", "--rp", &rp1, "/docs"]);
    assert_eq!(
        file_names(&ls),
        ["abs", "deep", "readme.txt", "rel", "same.bin"],
        "excluded *.tmp is absent: {ls}"
    );
    assert_eq!(ls["entries"][0]["target"], "/etc/passwd");

    // The whole first point into a new directory.
    let out = e.path("out");
    std::fs::create_dir(&out).unwrap();
    let r = e.json(&[
        "restore",
        "files",
        "share",
        "--rp",
        &rp1,
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r["hard_links"], 1, "{r}");
    for (f, want) in [
        ("data.bin", pattern(7, 3_000_000)),
        ("docs/readme.txt", b"read me\n".to_vec()),
        ("docs/deep/er/note", b"deep note".to_vec()),
        ("sparse.img", std::fs::read(src.join("sparse.img")).unwrap()),
    ] {
        assert!(std::fs::read(out.join(f)).unwrap() == want, "{f}");
    }
    assert_eq!(
        std::fs::read(out.join(OsStr::from_bytes(b"caf\xe9"))).unwrap(),
        b"latin-1 name"
    );
    let m = std::fs::metadata(out.join("docs/readme.txt")).unwrap();
    let m0 = std::fs::metadata(src.join("docs/readme.txt")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    assert_eq!((m.mtime(), m.mtime_nsec()), (m0.mtime(), m0.mtime_nsec()));
    assert_eq!(
        std::fs::metadata(out.join("data.bin")).unwrap().ino(),
        std::fs::metadata(out.join("docs/same.bin")).unwrap().ino(),
        "hard links stay one file"
    );
    assert_eq!(
        std::fs::read_link(out.join("docs/abs")).unwrap(),
        Path::new("/etc/passwd"),
        "links are kept as links, never followed"
    );
    assert_eq!(
        std::fs::read_link(out.join("docs/rel")).unwrap(),
        Path::new("../data.bin")
    );
    assert!(
        std::fs::symlink_metadata(out.join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        allocated(&out.join("sparse.img")) < 1 << 20,
        "a sparse file stays sparse"
    );
    assert!(!out.join("docs/scratch.tmp").exists());

    // Chosen paths of the latest point.
    let some = e.path("some");
    std::fs::create_dir(&some).unwrap();
    e.ok(&[
        "restore",
        "files",
        "share",
        "--rp",
        &rp3,
        "--path",
        "/docs/deep",
        "--path",
        "/docs/new.txt",
        "--to",
        some.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(some.join("deep/er/note")).unwrap(),
        b"deep note, edited"
    );
    assert_eq!(std::fs::read(some.join("new.txt")).unwrap(), b"new!");
    assert!(!some.join("data.bin").exists());

    // Back to the original location: existing files are skipped unless --overwrite, a
    // deleted one comes back.
    std::fs::write(src.join("docs/readme.txt"), b"changed since").unwrap();
    std::fs::remove_file(src.join("docs/new.txt")).unwrap();
    let r = e.json(&[
        "restore",
        "files",
        "share",
        "--rp",
        &rp3,
        "--path",
        "/docs/readme.txt",
        "--path",
        "/docs/new.txt",
        "--original",
    ]);
    assert_eq!(r["skipped"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(
        std::fs::read(src.join("docs/readme.txt")).unwrap(),
        b"changed since"
    );
    assert_eq!(std::fs::read(src.join("docs/new.txt")).unwrap(), b"new!");
    e.ok(&[
        "restore",
        "files",
        "share",
        "--rp",
        &rp3,
        "--path",
        "/docs/readme.txt",
        "--original",
        "--overwrite",
    ]);
    assert_eq!(
        std::fs::read(src.join("docs/readme.txt")).unwrap(),
        b"read me\n"
    );

    // A user of the share replaced a folder with a link to somewhere else: an original
    // restore into it writes nothing there.
    let victim = e.path("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::remove_dir_all(src.join("docs/deep")).unwrap();
    std::os::unix::fs::symlink(&victim, src.join("docs/deep")).unwrap();
    let r = e.json(&[
        "restore",
        "files",
        "share",
        "--rp",
        &rp3,
        "--path",
        "/docs/deep/er",
        "--original",
        "--overwrite",
    ]);
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "{r}");
    assert!(
        r["skipped"][0]
            .as_str()
            .unwrap()
            .contains("no longer a directory"),
        "{r}"
    );

    // Verify reads every chunk of every tree; GC keeps them (the points reference them).
    let v = e.json(&["verify", "--item", "share"]);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    e.ok(&["gc", "--vault", "v", "--grace", "0"]);
    e.ok(&["gc", "--vault", "v", "--grace", "0"]);
    let again = e.path("again");
    std::fs::create_dir(&again).unwrap();
    e.ok(&[
        "restore",
        "files",
        "share",
        "--rp",
        &rp1,
        "--to",
        again.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(again.join("data.bin")).unwrap(),
        pattern(7, 3_000_000)
    );

    // Bad requests: clear errors, no job.
    let (_, err) = e.fails(&[
        "restore",
        "files",
        "share",
        "--rp",
        &rp1,
        "--path",
        "/nope",
        "--to",
        again.to_str().unwrap(),
    ]);
    assert_eq!(err["error"]["code"], "not_found", "{err}");
    let (_, err) = e.fails(&["files", "volumes", "share"]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("directory tree"),
        "{err}"
    );
}

fn pack_files(e: &Env, vault: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = e
        .vault_files(vault)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/packs/"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_trees_chunks_go_into_packs_a_damaged_one_is_healed_for_every_point_and_gc_frees_packs() {
    let e = Env::new();
    e.vault("v", &[]);
    e.ok(&["vault", "set", "v", "--soft-delete", "disabled"]);
    // 300 small files in 10 folders, and one of 3 MB (about 12 content-defined chunks at
    // this vault's 64 KiB chunk size).
    let src = e.path("many");
    for i in 0..300 {
        let dir = src.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}.txt")),
            format!("file {i} {}", "x".repeat(i)),
        )
        .unwrap();
    }
    std::fs::write(src.join("big.bin"), pattern(3, 3_000_000)).unwrap();
    let protect = |dir: &Path, name: &str| {
        e.ok(&[
            "item",
            "protect",
            "files",
            dir.to_str().unwrap(),
            "--vault",
            "v",
            "--name",
            name,
        ]);
    };
    protect(&src, "many");
    let first = e.json(&["backup", "now", "many"]);
    let rp1 = first["rp_id"].as_str().unwrap().to_string();
    assert!(first["new_chunks"].as_u64().unwrap() > 300, "{first}");
    // Every chunk, directories and file data, went into a pack: no object per chunk.
    assert!(e.chunk_files("v").is_empty(), "{:?}", e.chunk_files("v"));
    let packs = pack_files(&e, "v");
    assert_eq!(
        packs.len(),
        1,
        "3.4 MB of chunks fit one 16 MiB pack: {packs:?}"
    );

    // One byte of the pack flipped (inside its first blob): verify names that chunk.
    let pack = &packs[0];
    let mut bytes = std::fs::read(pack).unwrap();
    bytes[60] ^= 0x40;
    std::fs::write(pack, &bytes).unwrap();
    let o = e.run(&["--output", "json", "verify", "--item", "many"]);
    assert_eq!(o.status.code(), Some(3), "verify exits 3 on damage");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v}");
    assert!(
        problems[0]["object"]
            .as_str()
            .unwrap()
            .starts_with("chunk "),
        "{v}"
    );
    assert!(
        problems[0]["detail"].as_str().unwrap().contains("in pack"),
        "{v}"
    );
    assert_eq!(
        problems[0]["recovery_points"],
        serde_json::json!([rp1]),
        "{v}"
    );

    // The next backup writes that chunk again, as its own object; the first point reads it
    // there from now on, and verifies whole.
    let second = e.json(&["backup", "now", "many"]);
    assert_eq!(
        second["new_chunks"], 1,
        "only the bad chunk is written: {second}"
    );
    assert_eq!(e.chunk_files("v").len(), 1);
    assert_eq!(pack_files(&e, "v").len(), 1, "packs are never rewritten");
    let v = e.json(&["verify", "--item", "many"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    assert_eq!(v["healed"].as_array().unwrap().len(), 1, "{v}");
    let out = e.path("out");
    std::fs::create_dir(&out).unwrap();
    e.ok(&[
        "restore",
        "files",
        "many",
        "--rp",
        &rp1,
        "--to",
        out.to_str().unwrap(),
    ]);
    for i in [0, 7, 150, 299] {
        let f = format!("d{}/f{i}.txt", i % 10);
        assert_eq!(
            std::fs::read(out.join(&f)).unwrap(),
            std::fs::read(src.join(&f)).unwrap(),
            "{f}"
        );
    }
    assert!(std::fs::read(out.join("big.bin")).unwrap() == pattern(3, 3_000_000));

    // GC keeps what the points use, and frees a tree's packs (and its healed chunk) once
    // no point uses them; another tree's pack stays.
    let other = e.path("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.txt"), b"keep me").unwrap();
    protect(&other, "other");
    e.backup("other");
    let all = pack_files(&e, "v");
    assert_eq!(all.len(), 2);
    let gc = e.json(&["gc", "--vault", "v", "--grace", "0"]);
    assert_eq!(
        (gc["stored_packs"].as_u64(), gc["referenced_packs"].as_u64()),
        (Some(2), Some(2)),
        "{gc}"
    );
    assert_eq!(gc["newly_doomed"], 0, "{gc}");
    let st = e.json(&["item", "stop", "many", "--delete-data"]);
    assert_eq!(st["protection_state"], "Deleted", "{st}");
    e.ok(&["gc", "--vault", "v", "--grace", "0"]);
    let gc = e.json(&["gc", "--vault", "v", "--grace", "0"]);
    assert_eq!(gc["deleted"], 2, "the pack and the healed chunk: {gc}");
    assert_eq!(
        pack_files(&e, "v"),
        all.into_iter()
            .filter(|p| *p != packs[0])
            .collect::<Vec<_>>()
    );
    assert!(e.chunk_files("v").is_empty());
    let back = e.path("back");
    std::fs::create_dir(&back).unwrap();
    e.ok(&[
        "restore",
        "files",
        "other",
        "--rp",
        "latest",
        "--to",
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(back.join("keep.txt")).unwrap(), b"keep me");
}

#[test]
fn protecting_a_tree_checks_it_first() {
    let e = Env::new();
    e.vault("v", &[]);
    // `item protect files DIR --vault v EXTRA...` is refused with a message saying `why`.
    let refused = |dir: &Path, extra: &[&str], why: &str| {
        let mut args = vec![
            "item",
            "protect",
            "files",
            dir.to_str().unwrap(),
            "--vault",
            "v",
        ];
        args.extend_from_slice(extra);
        let (_, err) = e.fails(&args);
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{args:?}: {err}");
    };
    let file = e.path("plain");
    std::fs::write(&file, b"x").unwrap();
    refused(&file, &[], "not a directory");
    // The home lies inside.
    refused(&e.path(""), &[], "into itself");
    let dir = e.path("d");
    std::fs::create_dir(&dir).unwrap();
    refused(&dir, &["--exclude", "a["], "--exclude");
    refused(&dir, &["--snapshot", "lvm"], "expected none or btrfs");
    refused(&dir, &["--snapshot", "btrfs"], "not on a btrfs file system");
    assert_eq!(e.json(&["item", "list"]).as_array().unwrap().len(), 0);
}

#[test]
fn a_tree_on_btrfs_is_read_from_a_snapshot_taken_first() {
    let e = Env::new();
    e.vault("v", &[]);
    let (mnt, _guard) = loop_mount(&e, "btrfs", &["mkfs.btrfs", "-q"]);
    fn protect(dir: &Path) -> Vec<&str> {
        let mut args = vec!["item", "protect", "files", dir.to_str().unwrap()];
        args.extend_from_slice(&["--vault", "v", "--snapshot", "btrfs"]);
        args
    }
    // A plain directory on btrfs cannot be snapshotted alone: refused, saying what to do.
    let plain = mnt.join("plain");
    std::fs::create_dir(&plain).unwrap();
    let (_, err) = e.fails(&protect(&plain));
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a subvolume"),
        "{err}"
    );
    let share = mnt.join("share");
    let o = Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&share)
        .output()
        .expect("btrfs (btrfs-progs) is installed by scripts/test");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::create_dir(share.join("sub")).unwrap();
    std::fs::write(share.join("a.txt"), b"one").unwrap();
    std::fs::write(share.join("sub/b.txt"), b"two").unwrap();
    let mut args = protect(&share);
    args.extend_from_slice(&["--name", "share"]);
    e.ok(&args);
    assert_eq!(
        e.json(&["item", "show", "share"])["spec"]["snapshot"],
        "btrfs"
    );

    // The backup stops once its point is taken, before reading; meanwhile the tree
    // changes. The point is the tree as it was at the snapshot.
    let first = backup_held(&e, "share", "transfer", || {
        let held: Vec<_> = std::fs::read_dir(share.join(".kura-snapshots"))
            .unwrap()
            .collect();
        assert_eq!(held.len(), 1, "one snapshot while the backup runs");
        std::fs::write(share.join("a.txt"), b"one, edited later").unwrap();
        std::fs::write(share.join("c.txt"), b"new").unwrap();
    });
    let job = e.json(&["job", "show", first["job_id"].as_str().unwrap()]);
    assert_eq!(job["status"], "Completed", "{job}");
    let rp = first["rp_id"].as_str().unwrap();
    assert_eq!(
        e.json(&["rp", "show", "share"])["consistency"],
        "file-system"
    );
    let ls = e.json(&["files", "ls", "share", "--rp", rp, "/"]);
    assert_eq!(
        file_names(&ls),
        ["a.txt", "sub"],
        "no file made after the snapshot, no snapshot directory: {ls}"
    );
    let to = e.path("out");
    std::fs::create_dir(&to).unwrap();
    e.ok(&[
        "restore",
        "files",
        "share",
        "--rp",
        rp,
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(to.join("a.txt")).unwrap(), b"one");
    assert!(
        !share.join(".kura-snapshots").exists(),
        "the snapshot is deleted after the backup"
    );
    // The files cache holds across snapshots (a snapshot keeps inode numbers): the next
    // backup reads only what changed.
    let next = e.json(&["backup", "now", "share"]);
    assert_eq!(next["read_bytes"], 17 + 3, "{next}");

    // A snapshot that cannot be deleted at release (its directory made immutable while the
    // backup runs) is a warning of the job, not silence; the next backup deletes it.
    let snapshots = share.join(".kura-snapshots");
    let chattr = |flag: &str| {
        let out = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&snapshots)
            .output()
            .expect("chattr (e2fsprogs, which scripts/test installs)");
        assert!(out.status.success(), "chattr {flag}: {out:?}");
    };
    let stuck = backup_held(&e, "share", "transfer", || chattr("+i"));
    chattr("-i");
    let job = e.json(&["job", "show", stuck["job_id"].as_str().unwrap()]);
    assert_eq!(job["status"], "CompletedWithWarnings", "{job}");
    assert!(
        job["log"].to_string().contains("could not be deleted"),
        "{job}"
    );
    assert_eq!(
        std::fs::read_dir(&snapshots).unwrap().count(),
        1,
        "left behind"
    );
    e.ok(&["backup", "now", "share"]);
    assert!(!snapshots.exists(), "the next backup deleted it");
}

#[test]
fn a_file_written_while_it_is_read_is_kept_as_read_and_reported() {
    let e = Env::new();
    e.vault("v", &[]);
    let src = e.path("live");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("app.log"), b"first line\n").unwrap();
    std::fs::write(src.join("quiet.txt"), b"never written to\n").unwrap();
    e.ok(&[
        "item",
        "protect",
        "files",
        src.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "live",
    ]);
    e.ok(&["backup", "now", "live"]);
    // The log grows, so the next backup reads it (and only it). That backup stops after
    // reading it, before checking it; meanwhile the application appends again.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("app.log"))
        .unwrap();
    log.write_all(b"more\n").unwrap();
    let first = backup_held(&e, "live", "file_read", || {
        log.write_all(b"second line\n").unwrap()
    });
    let job = e.json(&["job", "show", first["job_id"].as_str().unwrap()]);
    assert_eq!(job["status"], "CompletedWithWarnings", "{job}");
    let text = job["log"].to_string();
    assert!(
        text.contains("app.log: changed while it was read") && !text.contains("quiet.txt"),
        "the warning names the file that changed, only it: {text}"
    );
    // The point holds the file as it was read.
    let rp = first["rp_id"].as_str().unwrap();
    let to = e.path("out");
    std::fs::create_dir(&to).unwrap();
    e.ok(&[
        "restore",
        "files",
        "live",
        "--rp",
        rp,
        "--path",
        "/app.log",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(to.join("app.log")).unwrap(),
        b"first line\nmore\n"
    );
    // The next backup reads it again (and only it), and has nothing to warn about.
    let next = e.json(&["backup", "now", "live"]);
    assert_eq!(next["read_bytes"], 11 + 5 + 12, "{next}");
    let job = e.json(&["job", "show", next["job_id"].as_str().unwrap()]);
    assert_eq!(job["status"], "Completed", "{job}");
}
