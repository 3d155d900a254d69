//! File-level restore: single files of a disk point, from its ext4 partition, through the
//! CLI (and, under KURA_TEST_TRANSPORT=server, the API), reading only the chunks they need.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test installs e2fsprogs and fdisk)"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// A 48 MiB GPT disk whose partition 1 (at 1 MiB, 40 MiB) is an ext4 file system holding a
/// small text file, a 24 MiB file of random bytes and a link.
pub(super) fn disk_with_files(e: &Env) -> (PathBuf, PathBuf) {
    let src = e.path("src");
    std::fs::create_dir_all(src.join("srv/www")).unwrap();
    std::fs::write(src.join("srv/www/index.html"), b"<h1>hello</h1>\n").unwrap();
    std::fs::set_permissions(
        src.join("srv/www/index.html"),
        std::fs::Permissions::from_mode(0o604),
    )
    .unwrap();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let big: Vec<u8> = (0..24 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(src.join("srv/big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("www/index.html", src.join("srv/home")).unwrap();
    let img = e.path("disk.raw");
    File::create(&img).unwrap().set_len(48 << 20).unwrap();
    let mut sf = Command::new("sfdisk");
    sf.arg("--quiet")
        .arg(&img)
        .stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().expect("sfdisk (scripts/test installs fdisk)");
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"label: gpt\nstart=2048, size=81920, name=data\n",
    )
    .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "offset=1048576", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("40M"));
    (img, src)
}

#[test]
fn single_files_come_back_from_a_disk_point_fetching_only_their_chunks() {
    let e = Env::new();
    e.vault("v", &[]);
    let (img, src) = disk_with_files(&e);
    e.protect(&img, "v", &["--name", "web"]);
    e.backup("web");
    // The source is gone: everything below comes from the vault.
    std::fs::remove_file(&img).unwrap();

    let v = e.json(&["files", "volumes", "web"]);
    assert_eq!(v["volumes"].as_array().unwrap().len(), 1, "{v}");
    let vol = &v["volumes"][0];
    assert_eq!(
        (&vol["number"], &vol["table"], &vol["fs"], &vol["name"]),
        (
            &Value::from(1),
            &Value::from("gpt"),
            &Value::from("ext"),
            &Value::from("data")
        ),
        "{v}"
    );

    let ls = e.json(&["files", "ls", "web", "/srv"]);
    let names: Vec<&str> = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["big.bin", "home", "www"], "{ls}");
    assert_eq!(ls["entries"][0]["size"], 24 << 20);
    assert_eq!(ls["entries"][1]["target"], "www/index.html");
    let text = e.ok(&["files", "ls", "web", "/srv/www"]);
    assert!(text.starts_with("-rw----r-- "), "{text}");
    assert!(text.contains(" index.html\n"), "{text}");

    // One small file: a handful of the disk's 768 chunks (its block and the metadata).
    let out = e.path("out");
    std::fs::create_dir(&out).unwrap();
    let r = e.json(&[
        "files",
        "get",
        "web",
        "/srv/www/index.html",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r["files"], 1, "{r}");
    let fetched = r["fetched"]["chunks"].as_u64().unwrap();
    assert!(
        fetched > 0 && fetched < 40,
        "{fetched} chunks fetched for one small file: {r}"
    );
    assert_eq!(
        std::fs::read(out.join("index.html")).unwrap(),
        b"<h1>hello</h1>\n"
    );
    let mode = std::fs::metadata(out.join("index.html"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o604);

    // A directory, bit-exact, with its link; existing files are skipped, then overwritten.
    let r = e.json(&["files", "get", "web", "/srv", "--to", out.to_str().unwrap()]);
    assert_eq!(
        (r["files"].as_u64(), r["links"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    assert!(r["fetched"]["bytes"].as_u64().unwrap() >= 24 << 20, "{r}");
    assert_eq!(
        std::fs::read(out.join("srv/big.bin")).unwrap(),
        std::fs::read(src.join("srv/big.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read_link(out.join("srv/home")).unwrap(),
        Path::new("www/index.html")
    );
    std::fs::write(out.join("srv/www/index.html"), b"mine").unwrap();
    let r = e.json(&[
        "files",
        "get",
        "web",
        "/srv/www",
        "--to",
        out.join("srv").to_str().unwrap(),
    ]);
    assert_eq!(r["skipped"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(
        std::fs::read(out.join("srv/www/index.html")).unwrap(),
        b"mine"
    );
    e.json(&[
        "files",
        "get",
        "web",
        "/srv/www",
        "--to",
        out.join("srv").to_str().unwrap(),
        "--overwrite",
    ]);
    assert_eq!(
        std::fs::read(out.join("srv/www/index.html")).unwrap(),
        b"<h1>hello</h1>\n"
    );
    let jobs = e.json(&["job", "list", "--operation", "RestoreFiles"]);
    assert_eq!(jobs.as_array().unwrap().len(), 4, "{jobs}");

    // Bad requests change nothing and start no job.
    let (_, err) = e.fails(&[
        "files",
        "get",
        "web",
        "/srv/nope",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(err["error"]["code"], "not_found", "{err}");
    let (_, err) = e.fails(&["files", "ls", "web", "/srv/../etc"]);
    assert_eq!(err["error"]["code"], "invalid", "{err}");
    let (_, err) = e.fails(&["files", "ls", "web", "/", "--volume", "7"]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no volume 7"),
        "{err}"
    );
    // A disk's files have no original location to go back to (only a file item's do).
    let (_, err) = e.fails(&["restore", "files", "web", "--rp", "latest", "--original"]);
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("original") && message.contains("--to"),
        "{err}"
    );
    let jobs = e.json(&["job", "list", "--operation", "RestoreFiles"]);
    assert_eq!(
        jobs.as_array().unwrap().len(),
        4,
        "no job for a refused request"
    );
}

#[test]
fn a_disk_without_a_readable_file_system_says_so() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 7)]);
    e.protect(&img, "v", &[]);
    e.backup("d");
    let v = e.json(&["files", "volumes", "d"]);
    assert_eq!(
        (&v["volumes"][0]["table"], &v["volumes"][0]["fs"]),
        (&Value::from("none"), &Value::from("unknown"))
    );
    let (_, err) = e.fails(&["files", "ls", "d"]);
    assert_eq!(err["error"]["code"], "invalid");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no file system kura can read"),
        "{err}"
    );
}

/// `curl` (a client kura did not write) against the server over the test's home.
fn curl(e: &Env, path: &str, out: &Path) -> (u16, String) {
    let server = e.server.get_or_init(|| remote::serve_home(e));
    let o = Command::new("curl")
        .args(["-sS", "-D", "-", "-o"])
        .arg(out)
        .args(["-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {}", remote::TOKEN))
        .arg(format!("{}/api/v1{path}", server.url))
        .output()
        .expect("curl (scripts/test installs it)");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let code = text[text.len() - 3..].parse().unwrap_or(0);
    (code, text)
}

#[test]
fn a_file_downloads_as_itself_and_a_directory_as_a_tar_or_zip_archive() {
    let e = Env::new();
    e.vault("v", &[]);
    let (img, src) = disk_with_files(&e);
    e.protect(&img, "v", &["--name", "web"]);
    e.backup("web");
    let base = "/items/web/recovery-points/latest/download";

    let got = e.path("big.bin");
    let (code, head) = curl(&e, &format!("{base}?path=/srv/big.bin"), &got);
    assert_eq!(code, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-disposition: attachment; filename*=utf-8''big.bin"),
        "{head}"
    );
    assert!(
        head.contains(&format!("content-length: {}", 24 << 20)),
        "{head}"
    );
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(src.join("srv/big.bin")).unwrap()
    );

    let tar = e.path("srv.tar");
    let (code, head) = curl(&e, &format!("{base}?path=/srv"), &tar);
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-tar"),
        "{head}"
    );
    let unpacked = e.path("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let o = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    // What a folder's archive unpacks to: its files and its link.
    let unpacked_as_srv = |dir: &Path| {
        assert_eq!(
            std::fs::read(dir.join("srv/big.bin")).unwrap(),
            std::fs::read(src.join("srv/big.bin")).unwrap()
        );
        assert_eq!(
            std::fs::read(dir.join("srv/www/index.html")).unwrap(),
            b"<h1>hello</h1>\n"
        );
        assert_eq!(
            std::fs::read_link(dir.join("srv/home")).unwrap(),
            Path::new("www/index.html")
        );
    };
    unpacked_as_srv(&unpacked);

    // The same folder as a zip, opened by Info-ZIP's unzip: same contents, modes, link.
    let zip = e.path("srv.zip");
    let (code, head) = curl(&e, &format!("{base}?path=/srv&archive=zip"), &zip);
    assert_eq!(code, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/zip") && head.contains("filename*=utf-8''srv.zip"),
        "{head}"
    );
    let unzipped = e.path("unzipped");
    let o = Command::new("unzip")
        .arg("-q")
        .arg(&zip)
        .arg("-d")
        .arg(&unzipped)
        .output()
        .expect("unzip (scripts/test installs it)");
    assert!(o.status.success(), "{o:?}");
    unpacked_as_srv(&unzipped);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode(&unzipped.join("srv/www/index.html")),
        mode(&unpacked.join("srv/www/index.html")),
        "zip and tar keep the same mode"
    );
    let (code, _) = curl(&e, &format!("{base}?path=/srv&archive=rar"), &e.path("rar"));
    assert_eq!(code, 400, "an unknown archive format is refused");

    // Refusals come as JSON errors before any byte: an unknown path, a climb out.
    let err = e.path("err.json");
    let (code, _) = curl(&e, &format!("{base}?path=/srv/nope"), &err);
    assert_eq!(code, 404);
    let v: Value = serde_json::from_slice(&std::fs::read(&err).unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "not_found", "{v}");
    let (code, _) = curl(&e, &format!("{base}?path=/srv/../etc"), &err);
    assert_eq!(code, 400);
}

/// A whole disk that is one XFS (no partition table, as many cloud images have), filled by
/// the kernel through a loop mount: its files come back from the point with owners, a hard
/// link as a hard link, and a link.
#[test]
fn files_come_back_from_an_xfs_disk_point_with_hard_links() {
    use std::os::unix::fs::MetadataExt;
    let e = Env::new();
    e.vault("v", &[]);
    let (mnt, guard) = loop_mount(&e, "xfs", &["mkfs.xfs", "-q"]);
    std::fs::create_dir(mnt.join("srv")).unwrap();
    let data = pattern(11, 3 << 20);
    std::fs::write(mnt.join("srv/data.bin"), &data).unwrap();
    std::os::unix::fs::chown(mnt.join("srv/data.bin"), Some(4242), Some(4343)).unwrap();
    std::fs::hard_link(mnt.join("srv/data.bin"), mnt.join("srv/same.bin")).unwrap();
    std::os::unix::fs::symlink("data.bin", mnt.join("srv/link")).unwrap();
    drop(guard);
    let img = e.path("xfs.img");
    e.protect(&img, "v", &["--name", "xfs"]);
    e.backup("xfs");
    std::fs::remove_file(&img).unwrap();

    let v = e.json(&["files", "volumes", "xfs"]);
    assert_eq!(
        (&v["volumes"][0]["table"], &v["volumes"][0]["fs"]),
        (&Value::from("none"), &Value::from("xfs")),
        "{v}"
    );
    let ls = e.json(&["files", "ls", "xfs", "/srv"]);
    let names: Vec<&str> = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["data.bin", "link", "same.bin"], "{ls}");
    assert_eq!(ls["entries"][0]["uid"], 4242, "{ls}");

    let out = e.path("out");
    std::fs::create_dir(&out).unwrap();
    let r = e.json(&["files", "get", "xfs", "/srv", "--to", out.to_str().unwrap()]);
    assert_eq!(
        (
            r["files"].as_u64(),
            r["hard_links"].as_u64(),
            r["links"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(std::fs::read(out.join("srv/data.bin")).unwrap(), data);
    let (a, b) = (
        std::fs::metadata(out.join("srv/data.bin")).unwrap(),
        std::fs::metadata(out.join("srv/same.bin")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink(), a.uid()), (b.ino(), 2, 4242));
}
