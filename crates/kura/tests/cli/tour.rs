//! The README's tour, run as written: every `kura` line of its `sh` block runs, in order,
//! against images and files made in a temporary directory (paths such as `/srv/images/` and
//! `~/` are mapped into it). Lines that need what this test does not make (a running VM, a
//! libvirt domain, a server, a continuously running scheduler, a job that is still running)
//! are listed with the reason; a new line is run unless it is added there.

use super::*;

/// Lines not run, by a fragment they contain, and why.
const NOT_RUN: &[(&str, &str)] = &[
    ("cargo install", "installs kura"),
    ("--qmp", "needs a running QEMU VM (tests/cli/vm.rs)"),
    ("--libvirt", "needs a libvirt domain (tests/cli/libvirt.rs)"),
    ("vm2", "a VM item (tests/cli/guest.rs)"),
    (
        "scheduler run",
        "runs until stopped (scheduler tick is tested)",
    ),
    ("--server", "needs a running server (tests/cli/remote.rs)"),
    ("job cancel", "needs a running job (tests/cli/cancel.rs)"),
    ("vault detach old", "an example name"),
    (
        "export start",
        "serves until it expires or is stopped (tests/cli/export.rs)",
    ),
    (
        "kura mount",
        "stays mounted until Ctrl-C or umount (tests/cli/mount.rs)",
    ),
    (
        "export stop",
        "needs a running export (tests/cli/export.rs)",
    ),
];

/// Where the tour's paths go inside the test directory (each word's leading path, once).
fn map_paths(line: &str, t: &str) -> String {
    let map = [
        ("~/", "/"),
        ("/var/lib/libvirt/images/", "/images/"),
        ("/srv/images/", "/images/"),
        ("/srv/restores/", "/restores/"),
        ("/srv/share", "/share"),
        ("/srv/kura/vaults/", "/kura-home/vaults/"),
        ("/mnt/usb/", "/usb/"),
        ("/tmp/", "/tmp/"),
        ("/new/home-kit", "/new-home-kit"),
        ("/new/home", "/new-home"),
    ];
    line.split(' ')
        .map(|w| match map.iter().find(|(from, _)| w.starts_with(from)) {
            Some((from, to)) => format!("{t}{to}{}", &w[from.len()..]),
            None => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The tour's commands: continuation lines joined, comments dropped, `a; b` split, and the
/// optional part of `[--flag]` taken.
fn tour_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme
        .find("## A short tour")
        .expect("the README has its tour");
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    let joined = block.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None => line,
        };
        for part in code.split(';') {
            let part = part.trim().replace(['[', ']'], "");
            if part.starts_with("kura ") {
                out.push(part);
            }
        }
    }
    out
}

#[test]
fn the_readme_tour_runs_as_written() {
    // A fixed clock: the tour's dates (--retain-until 2027-01-31, a token expiring
    // 2027-06-30) stay in the future whenever the test runs.
    let e = Env::at("2026-06-01T09:00:00Z");
    e.on_host(); // the tour sets its own KURA_HOME
    let t = e.dir.path().to_str().unwrap().to_string();
    for d in ["images", "restores", "usb", "tmp", "kura-home"] {
        std::fs::create_dir_all(e.path(d)).unwrap();
    }
    let web = e.path("images/web.qcow2");
    // The web server's disk holds an ext4 file system (`kura files` browses it).
    let tree = e.path("web-tree");
    std::fs::create_dir_all(tree.join("etc/nginx")).unwrap();
    std::fs::write(tree.join("etc/hosts"), "127.0.0.1 localhost web\n").unwrap();
    std::fs::write(tree.join("etc/nginx/nginx.conf"), "events {}\n").unwrap();
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(e.path("web.raw"))
        .arg("8M")
        .output()
        .expect("mkfs.ext4 (scripts/test installs e2fsprogs)");
    assert!(o.status.success(), "{o:?}");
    std::fs::create_dir_all(e.path("tmp/back")).unwrap();
    // The file share of `kura item protect files`.
    std::fs::create_dir_all(e.path("share/docs")).unwrap();
    std::fs::write(e.path("share/docs/q3.xlsx"), b"quarterly numbers").unwrap();
    std::fs::write(e.path("share/docs/draft.tmp"), b"left out").unwrap();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        e.path("web.raw").to_str().unwrap(),
        web.to_str().unwrap(),
    ]);
    make_image(&e.path("images/db.img"), 4 << 20, &[(0, 1 << 20, 3)]);
    make_image(
        &e.path("images/logs.raw"),
        4 << 20,
        &[(1 << 20, 1 << 20, 4)],
    );
    for (f, text) in [
        (".kura-pass", "offsite passphrase\n"),
        (".kit-pass", "kit passphrase\n"),
        (".new-pass", "new offsite passphrase\n"),
    ] {
        std::fs::write(e.path(f), text).unwrap();
    }
    std::fs::write(
        e.path("gfs.json"),
        r#"{"name": "gfs", "schedule": {"frequency": "daily", "times": ["02:30"]},
            "retention": {"daily": {"days": 30}, "weekly": {"weeks": 12, "days_of_week": ["sunday"]}}}"#,
    )
    .unwrap();

    // The object stores the tour's off-host vaults go to.
    let s3 = kura_backend::test_servers::TestStore::start(kura_backend::test_servers::Kind::Moto);
    let azure =
        kura_backend::test_servers::TestStore::start(kura_backend::test_servers::Kind::Azurite);
    e.storage(s3.env().into_iter().chain(azure.env()).collect());

    let commands = tour_commands();
    assert!(
        commands.len() > 30,
        "the tour has its commands: {commands:?}"
    );
    let mut ran = 0;
    for line in &commands {
        if let Some((_, why)) = NOT_RUN.iter().find(|(frag, _)| line.contains(frag)) {
            eprintln!("not run ({why}): {line}");
            continue;
        }
        // The attach with the recovery kit is the alternative to the one before it: it gets
        // a new home of its own.
        let line = if line.contains("--recovery-kit") {
            line.replace("/new/home", "/new/home-kit")
        } else {
            line.clone()
        };
        // The tour's example ids stand for ids the user has: use real ones.
        let mut line = map_paths(&line, &t)
            .replace("s3://kura-backups/", &s3.location(""))
            .replace("azblob://myaccount/backups/", &azure.location(""));
        if line.contains("cloud.key") && !e.path("cloud.key").exists() {
            // The generated key of the vault made in the tour's first home, copied beside.
            std::fs::copy(e.path("kura-home/keys/cloud.key"), e.path("cloud.key")).unwrap();
        }
        if line.contains("7c3e91a0") {
            let rps = e.json_in_tour(&["rp", "list", "web"], &t);
            line = line.replace("7c3e91a0", short(&rps[0]["id"]));
        }
        if line.contains("5d20b4e1") {
            let jobs = e.json_in_tour(&["job", "list", "--limit", "1"], &t);
            line = line.replace("5d20b4e1", short(&jobs[0]["id"]));
        }
        if line.contains("main.key") && !e.path("main.key").exists() {
            // "--key-file main.key": the key file the user copied beside them.
            std::fs::copy(e.path("kura-home/keys/main.key"), e.path("main.key")).unwrap();
        }
        let args = shlex::split(&line).unwrap();
        let args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        let o = e.tour_cmd(&args, &t).output().unwrap();
        assert!(
            o.status.success(),
            "README tour: `{line}` failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 25, "only {ran} of the tour's lines ran");
    // What the tour did is there: the restores are the image, the attached home sees the
    // vault's points.
    let restored = e.path("tmp/web.raw");
    qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        restored.to_str().unwrap(),
        web.to_str().unwrap(),
    ]);
    // The share's tree came back whole, without what it excludes.
    assert_eq!(
        std::fs::read(e.path("restores/docs/q3.xlsx")).unwrap(),
        b"quarterly numbers"
    );
    assert!(!e.path("restores/docs/draft.tmp").exists());
    for home in ["new-home", "new-home-kit"] {
        let attached = e.json_in_tour(&["--home", &format!("{t}/{home}"), "rp", "list", "web"], &t);
        assert!(
            !attached.as_array().unwrap().is_empty(),
            "{home}: {attached}"
        );
    }
}

/// The short form of an id that tables show: its last 8 hex digits.
fn short(id: &Value) -> &str {
    let id = id.as_str().unwrap();
    &id[id.len() - 8..]
}

impl Env {
    /// A tour command: the tour's home, run from the test directory (for relative paths).
    fn tour_cmd(&self, args: &[&str], t: &str) -> Command {
        let mut c = self.cmd(args);
        c.env("KURA_HOME", format!("{t}/kura-home")).current_dir(t);
        c
    }

    fn json_in_tour(&self, args: &[&str], t: &str) -> Value {
        let mut a = vec!["--output", "json"];
        a.extend_from_slice(args);
        let o = self.tour_cmd(&a, t).output().unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
        serde_json::from_slice(&o.stdout).unwrap()
    }
}
