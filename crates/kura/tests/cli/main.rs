//! End-to-end tests of the `kura` binary against real files, qemu-img and qemu-nbd.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod audit;
mod cancel;
mod export;
mod files;
mod guest;
mod jobs;
mod libvirt;
mod mount;
mod object_storage;
mod policies;
mod protection;
mod remote;
mod service;
mod snapshots;
mod tour;
mod trees;
mod usability;
mod vm;

struct Env {
    dir: tempfile::TempDir,
    /// `KURA_TEST_CLOCK` for every command (builds with the test-hooks feature).
    clock: Option<String>,
    /// With `KURA_TEST_TRANSPORT=server`, the server API commands go through.
    server: std::sync::OnceLock<remote::ServerProcess>,
    /// Commands run on the host from now on, whatever the transport (see [`Env::on_host`]).
    on_host: std::sync::atomic::AtomicBool,
    /// Variables every command (and a server) gets: an object store's endpoint and keys.
    storage: std::sync::Mutex<Vec<(&'static str, String)>>,
}

/// Whether this run sends the commands of the tests through a `kura server`
/// (`KURA_TEST_TRANSPORT=server`, read by the tests, never by kura) instead of the home.
fn via_server() -> bool {
    std::env::var("KURA_TEST_TRANSPORT").is_ok_and(|t| t == "server")
}

/// Whether `args` is a command that goes to the API under `KURA_TEST_TRANSPORT=server`:
/// every command but those that run on the host only (services, key handling, options the
/// API has no field for) and those given secrets or another home, which a server does not
/// take from its clients.
fn api_command(args: &[&str]) -> bool {
    let mut words = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            "--passphrase-file"
            | "--key-file"
            | "--vault-passphrase-file"
            | "--home"
            | "--server"
            | "--cipher"
            | "--compression-level"
            | "--recovery-kit"
            | "--kit-passphrase-file"
            | "--fail-after-chunks" => return false,
            "--output" | "--tz" => i += 2,
            w => {
                words.push(w);
                i += 1;
            }
        }
    }
    match words.as_slice() {
        ["vault", "detach" | "key", ..]
        | [
            "scheduler" | "server" | "quickstart" | "export" | "mount",
            ..,
        ] => false,
        [_, ..] => true,
        [] => false,
    }
}

/// A `KURA_TEST_CLOCK` value: "now" is `instant` at this moment and runs on with real
/// time from there.
fn clock_at(instant: &str) -> String {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("{instant}@{real}")
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
            clock: None,
            server: std::sync::OnceLock::new(),
            on_host: std::sync::atomic::AtomicBool::new(false),
            storage: Default::default(),
        }
    }

    /// Gives every command from now on (and the server, when one runs) these variables.
    fn storage(&self, vars: Vec<(&'static str, String)>) {
        *self.storage.lock().unwrap() = vars;
    }

    /// An environment whose commands' clock starts at the fixed `instant` (RFC 3339) and then
    /// runs with real time: a test of schedules, expiry or purges does not depend on when it
    /// runs.
    fn at(instant: &str) -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
            clock: Some(clock_at(instant)),
            server: std::sync::OnceLock::new(),
            on_host: std::sync::atomic::AtomicBool::new(false),
            storage: Default::default(),
        }
    }

    /// From now on this test's commands run on the host even when the suite runs through a
    /// server: for tests that act on the process running a job (kill it, arm a gate in it
    /// through its environment, give it secrets through its environment), which under a
    /// server is the server, not the command.
    fn on_host(&self) {
        self.on_host
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_HOME", self.path("home"))
            .env("KURA_TEST_FAST_KDF", "1")
            .env("TZ", "UTC")
            .env_remove("KURA_PASSPHRASE")
            .env_remove("KURA_SERVER")
            .env_remove("KURA_TOKEN");
        if let Some(clock) = &self.clock {
            c.env("KURA_TEST_CLOCK", clock);
        }
        c.envs(self.storage.lock().unwrap().iter().map(|(k, v)| (k, v)));
        if via_server()
            && api_command(args)
            && !self.on_host.load(std::sync::atomic::Ordering::SeqCst)
        {
            let server = self.server.get_or_init(|| remote::serve_home(self));
            c.args(["--server", &server.url, "--token", remote::TOKEN]);
        }
        c.args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kura {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs with --output json and expects success; returns the document.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--output", "json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kura {args:?} printed non-JSON ({e}): {out}"))
    }

    /// Runs with --output json and expects failure; returns (exit code, error document).
    fn fails(&self, args: &[&str]) -> (i32, Value) {
        let mut a = vec!["--output", "json"];
        a.extend_from_slice(args);
        let o = self.run(&a);
        assert!(
            !o.status.success(),
            "kura {args:?} should have failed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "error output of {args:?} is not JSON ({e}): {}",
                String::from_utf8_lossy(&o.stdout)
            )
        });
        (o.status.code().unwrap_or(-1), doc)
    }

    fn vault(&self, name: &str, extra: &[&str]) {
        let mut a = vec!["vault", "create", name, "--chunk-size", "64KiB"];
        a.extend_from_slice(extra);
        self.ok(&a);
    }

    /// A geo-redundant vault `name` (in the home) whose replica is a local directory.
    fn geo_vault(&self, name: &str) {
        let replica = self.path(&format!("{name}-replica"));
        self.vault(
            name,
            &[
                "--redundancy",
                "geo",
                "--replica",
                replica.to_str().unwrap(),
            ],
        );
    }

    /// Brings the geo replica of `vault` up to date, then moves the vault's primary
    /// location away (it is unreachable) until the guard is dropped.
    fn primary_gone(&self, vault: &str) -> PrimaryGone {
        self.ok(&["vault", "replicate", vault]);
        let at = self.path("home").join("vaults").join(vault);
        let away = self.path(&format!("{vault}-primary-away"));
        std::fs::rename(&at, &away).unwrap();
        PrimaryGone { at, away }
    }

    /// Protects `image` in `vault` (extra arguments, e.g. `--name`, follow).
    fn protect(&self, image: &Path, vault: &str, extra: &[&str]) {
        let mut a = vec![
            "item",
            "protect",
            "disk",
            image.to_str().unwrap(),
            "--vault",
            vault,
        ];
        a.extend_from_slice(extra);
        self.ok(&a);
    }

    fn backup(&self, item: &str) -> String {
        let r = self.json(&["backup", "now", item]);
        assert!(r["job_id"].as_str().unwrap().len() >= 16);
        r["rp_id"].as_str().unwrap().to_string()
    }

    fn restore(&self, item: &str, rp: &str, to: &Path, format: &str) {
        self.ok(&[
            "restore",
            "disk",
            item,
            "--rp",
            rp,
            "--to",
            to.to_str().unwrap(),
            "--image-format",
            format,
        ]);
    }

    fn vault_files(&self, vault: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.path("home").join("vaults").join(vault)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p)
                } else {
                    out.push(p)
                }
            }
        }
        out
    }

    fn chunk_files(&self, vault: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .vault_files(vault)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("/chunks/"))
            .collect();
        v.sort();
        v
    }
}

/// A pause point of a build with the `test-hooks` feature: a job started with [`Gate::env`]
/// waits there until the test calls [`Gate::release`], so real operations meet on cue.
struct Gate {
    point: &'static str,
    prefix: PathBuf,
}

impl Gate {
    /// A gate; the test's commands run on the host from now on (the gate is armed in the
    /// environment of the process that runs the job).
    fn new(e: &Env, point: &'static str) -> Self {
        e.on_host();
        let prefix = e.path(&format!(
            "gate-{point}-{}",
            e.dir.path().read_dir().unwrap().count()
        ));
        Gate { point, prefix }
    }

    /// The variable that arms this gate in a child process.
    fn env(&self) -> (String, &Path) {
        (
            format!("KURA_TEST_GATE_{}", self.point.to_uppercase()),
            &self.prefix,
        )
    }

    fn file(&self, ext: &str) -> PathBuf {
        let mut p = self.prefix.clone().into_os_string();
        p.push(ext);
        p.into()
    }

    /// Waits until a job stands at the gate.
    fn wait_reached(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.file(".reached").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "no job reached the {} gate",
                self.point
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn release(&self) {
        std::fs::write(self.file(".release"), b"").unwrap();
    }
}

/// Unmounts a [`loop_mount`] when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A new 512 MiB file system, made by `mkfs` (the program and its options; scripts/test
/// installs it) in an image and loop-mounted under the test's directory. Needs root and a
/// loop device, as scripts/test runs; fails loudly without them, never skips.
fn loop_mount(e: &Env, name: &str, mkfs: &[&str]) -> (PathBuf, Unmount) {
    let img = e.path(&format!("{name}.img"));
    File::create(&img).unwrap().set_len(512 << 20).unwrap();
    let o = Command::new(mkfs[0])
        .args(&mkfs[1..])
        .arg(&img)
        .output()
        .unwrap_or_else(|err| panic!("{} (installed by scripts/test): {err}", mkfs[0]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mnt = e.path(&format!("{name}-mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let o = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "this test needs root and a loop device: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (mnt.clone(), Unmount(mnt))
}

/// Deterministic test data.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|i| {
            if (i / 4096) % 3 == 0 {
                b"compressible text line\n"[i % 23]
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

fn make_image(path: &Path, size: u64, writes: &[(u64, usize, u64)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(off, len, seed) in writes {
        f.write_all_at(&pattern(seed, len), off).unwrap();
    }
}

/// Writes `len` bytes of pattern `seed` at `off` into an existing image, keeping the rest.
fn make_image_part(path: &Path, off: u64, len: usize, seed: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&pattern(seed, len), off).unwrap();
}

/// A vault's primary location moved away; put back when dropped.
struct PrimaryGone {
    at: PathBuf,
    away: PathBuf,
}

impl Drop for PrimaryGone {
    fn drop(&mut self) {
        let _ = std::fs::rename(&self.away, &self.at);
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    let (fa, fb) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    fa.len() == fb.len() && fa == fb
}

fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

fn qemu_img(args: &[&str]) {
    let o = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed by the README's test command");
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn sparse_raw_round_trip_is_bit_exact_and_sparse() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("disk.raw");
    // 20 MiB + 12345 bytes: not a multiple of the chunk size; data scattered, holes between.
    make_image(
        &img,
        (20 << 20) + 12345,
        &[
            (0, 100_000, 1),
            (5 << 20, 300_000, 2),
            ((20 << 20) + 12000, 345, 3),
        ],
    );
    e.protect(&img, "v", &[]);
    let r = e.json(&["backup", "now", "disk"]);
    assert!(
        r["read_bytes"].as_u64().unwrap() < 2 << 20,
        "holes are not read: {r}"
    );
    assert!(r["zero_chunks"].as_u64().unwrap() > 250, "{r}");
    let out = e.path("out.raw");
    e.restore("disk", "latest", &out, "raw");
    assert!(same_file(&img, &out));
    assert!(
        allocated(&out) <= allocated(&img) * 105 / 100 + 8192,
        "restored {} vs source {}",
        allocated(&out),
        allocated(&img)
    );
}

#[test]
fn qcow2_source_and_qcow2_restore() {
    let e = Env::new();
    e.vault("v", &[]);
    let q = e.path("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "30M"]);
    let o = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x61 1M 3M",
            "-c",
            "write -P 0x62 17M 64k",
            "-c",
            "write -P 0x63 30719k 1k",
        ])
        .arg(&q)
        .output()
        .unwrap();
    assert!(o.status.success());
    e.protect(&q, "v", &[]);
    let r = e.json(&["backup", "now", "vm"]);
    assert!(
        r["read_bytes"].as_u64().unwrap() <= (4 << 20),
        "unallocated qcow2 clusters are not read: {r}"
    );
    let expected = e.path("expected.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        q.to_str().unwrap(),
        expected.to_str().unwrap(),
    ]);
    let raw = e.path("r.raw");
    e.restore("vm", "latest", &raw, "raw");
    assert!(same_file(&expected, &raw));
    let rq = e.path("r.qcow2");
    e.restore("vm", "latest", &rq, "qcow2");
    let back = e.path("back.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        rq.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    assert!(same_file(&expected, &back));
    assert_eq!(image_format(&rq), "qcow2");
    // Without a format, the target's name says it; a contradicting one is refused.
    let inferred = e.path("inferred.qcow2");
    e.ok(&[
        "restore",
        "disk",
        "vm",
        "--rp",
        "latest",
        "--to",
        inferred.to_str().unwrap(),
    ]);
    assert_eq!(image_format(&inferred), "qcow2", "inferred from .qcow2");
    let wrong = e.path("wrong.qcow2");
    let (_, err) = e.fails(&[
        "restore",
        "disk",
        "vm",
        "--rp",
        "latest",
        "--to",
        wrong.to_str().unwrap(),
        "--image-format",
        "raw",
    ]);
    assert_eq!(err["error"]["code"], "invalid", "{err}");
    assert!(!wrong.exists(), "nothing was written");
}

/// The format `qemu-img info` finds in an image.
fn image_format(path: &Path) -> String {
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", path.to_str().unwrap()])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    info["format"].as_str().unwrap_or_default().to_string()
}

#[test]
fn empty_and_tiny_images() {
    let e = Env::new();
    e.vault("v", &["--no-encryption"]);
    for (name, size, writes) in [
        ("empty", 0u64, vec![]),
        ("one", 1, vec![(0u64, 1usize, 9u64)]),
        ("small", 4097, vec![(0, 4097, 8)]),
    ] {
        let img = e.path(&format!("{name}.img"));
        make_image(&img, size, &writes);
        e.protect(&img, "v", &[]);
        e.backup(name);
        let out = e.path(&format!("{name}.out"));
        e.restore(name, "latest", &out, "raw");
        assert!(same_file(&img, &out), "{name}");
    }
}

#[test]
fn offsets_past_4_gib() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("big.raw");
    let at = (4u64 << 30) + (1 << 20) + 777;
    make_image(
        &img,
        (5u64 << 30) + 3,
        &[
            (4096, 5000, 1),
            (at, 200_000, 2),
            ((5u64 << 30) - 10, 13, 3),
        ],
    );
    e.protect(&img, "v", &[]);
    e.backup("big");
    let out = e.path("big.out");
    e.restore("big", "latest", &out, "raw");
    let (a, b) = (File::open(&img).unwrap(), File::open(&out).unwrap());
    assert_eq!(b.metadata().unwrap().len(), (5u64 << 30) + 3);
    for off in [0, 4096, at - 10, at + 199_990, (5u64 << 30) - 10] {
        let (mut x, mut y) = (
            vec![0; 300_000.min(((5u64 << 30) + 3 - off) as usize)],
            vec![0; 0],
        );
        y.resize(x.len(), 1);
        a.read_exact_at(&mut x, off).unwrap();
        b.read_exact_at(&mut y, off).unwrap();
        assert_eq!(x, y, "bytes at {off}");
    }
    assert!(
        allocated(&out) < 4 << 20,
        "a 5 GiB sparse disk restores sparse: {}",
        allocated(&out)
    );
}

#[test]
fn incremental_restore_equals_full_and_only_new_chunks_upload() {
    let e = Env::new();
    e.vault("v", &[]);
    e.vault("w", &[]);
    let img = e.path("d.raw");
    make_image(&img, 8 << 20, &[(0, 8 << 20, 1)]);
    e.protect(&img, "v", &[]);
    let first = e.backup("d");
    let v1 = e.path("v1.raw");
    std::fs::copy(&img, &v1).unwrap();
    // Change two 4 KiB blocks in different chunks.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0xee; 4096], 1 << 20).unwrap();
    f.write_all_at(&[0xdd; 4096], 6 << 20).unwrap();
    drop(f);
    let r = e.json(&["backup", "now", "d"]);
    assert_eq!(r["incremental"], true);
    assert_eq!(
        r["new_chunks"], 2,
        "only the two changed chunks upload: {r}"
    );
    assert_eq!(r["chunks"], 128, "the index is full: {r}");
    // A full backup of the same state in another vault restores to the same bytes.
    let img2 = e.path("d2.raw");
    std::fs::copy(&img, &img2).unwrap();
    e.protect(&img2, "w", &[]);
    e.backup("d2");
    let (inc, full, old) = (e.path("inc.raw"), e.path("full.raw"), e.path("old.raw"));
    e.restore("d", "latest", &inc, "raw");
    e.restore("d2", "latest", &full, "raw");
    e.restore("d", &first[..12], &old, "raw");
    assert!(same_file(&inc, &full));
    assert!(same_file(&inc, &img));
    assert!(
        same_file(&old, &v1),
        "the older recovery point still restores its own state"
    );
}

#[test]
fn disk_grows_and_shrinks_between_backups() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 3 << 20, &[(0, 3 << 20, 4)]);
    e.protect(&img, "v", &[]);
    e.backup("d");
    for (size, seed) in [((5 << 20) + 100, 5u64), ((1 << 20) + 1, 6)] {
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&pattern(seed, 1000), size - 1000).unwrap();
        drop(f);
        e.backup("d");
        let out = e.path(&format!("out-{size}"));
        e.restore("d", "latest", &out, "raw");
        assert!(same_file(&img, &out), "size {size}");
    }
}

#[test]
fn no_plaintext_marker_reaches_vault_storage() {
    let e = Env::new();
    std::fs::write(e.path("pass"), "a passphrase for tests\n").unwrap();
    e.vault(
        "v",
        &["--passphrase-file", e.path("pass").to_str().unwrap()],
    );
    let marker = b"KURA-SECRET-MARKER-7f3a9c";
    let mut data = Vec::new();
    while data.len() < 1 << 20 {
        data.extend_from_slice(marker);
        data.extend_from_slice(&pattern(data.len() as u64, 40));
    }
    let img = e.path("m.raw");
    std::fs::write(&img, &data).unwrap();
    let pf = e.path("pass");
    let p = pf.to_str().unwrap();
    e.ok(&[
        "--passphrase-file",
        p,
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "v",
    ]);
    e.ok(&["--passphrase-file", p, "backup", "now", "m"]);
    let files = e.vault_files("v");
    assert!(files.len() > 5);
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for needle in [&marker[..], b"a passphrase for tests", b"m.raw"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{:?} found in {}",
                String::from_utf8_lossy(needle),
                f.display()
            );
        }
    }
}

#[test]
fn wrong_or_missing_passphrase_is_refused_and_changes_nothing() {
    let e = Env::new();
    e.on_host(); // secrets given to the command, in files and the environment
    std::fs::write(e.path("good"), "right one").unwrap();
    std::fs::write(e.path("bad"), "wrong one").unwrap();
    e.vault(
        "v",
        &["--passphrase-file", e.path("good").to_str().unwrap()],
    );
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1000, 1)]);
    let good = e.path("good");
    let bad = e.path("bad");
    let (code, err) = e.fails(&[
        "--passphrase-file",
        bad.to_str().unwrap(),
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "v",
    ]);
    assert_eq!(code, 1);
    assert_eq!(err["error"]["code"], "key");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong passphrase"),
        "{err}"
    );
    assert_eq!(
        e.json(&["item", "list"]).as_array().unwrap().len(),
        0,
        "nothing was registered"
    );
    let (_, err) = e.fails(&[
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "v",
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("KURA_PASSPHRASE"),
        "{err}"
    );
    e.ok(&[
        "--passphrase-file",
        good.to_str().unwrap(),
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "v",
    ]);
    // The environment variable works too.
    let o = e
        .cmd(&["--output", "json", "backup", "now", "d"])
        .env("KURA_PASSPHRASE", "right one")
        .output()
        .unwrap();
    assert!(o.status.success());
    let (_, err) = e.fails(&[
        "--passphrase-file",
        bad.to_str().unwrap(),
        "backup",
        "now",
        "d",
    ]);
    assert_eq!(err["error"]["code"], "key");
    assert_eq!(
        e.json(&["rp", "list", "d"]).as_array().unwrap().len(),
        1,
        "the failed backup made no recovery point"
    );
}

/// Sets up one item with two recovery points; returns the env.
fn two_points() -> (Env, PathBuf, String, String) {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 2 << 20, &[(0, 2 << 20, 1)]);
    e.protect(&img, "v", &[]);
    let a = e.backup("d");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&[1; 10], 0)
        .unwrap();
    let b = e.backup("d");
    (e, img, a, b)
}

#[test]
fn verify_and_restore_detect_a_corrupt_chunk() {
    let (e, _img, a, b) = two_points();
    e.json(&["verify", "--item", "d"]);
    // Flip a byte in the middle of a chunk that both recovery points use.
    let chunks = e.chunk_files("v");
    let victim = chunks
        .iter()
        .max_by_key(|p| p.to_string_lossy().to_string())
        .unwrap()
        .clone();
    let id = victim.file_name().unwrap().to_string_lossy().to_string();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();

    let o = e.run(&["--output", "json", "verify", "--vault", "v"]);
    assert_eq!(o.status.code(), Some(3), "verify exits 3 on damage");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems = r["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{r}");
    assert_eq!(problems[0]["object"], format!("chunk {id}"));
    assert_eq!(problems[0]["problem"], "corrupt");
    let users: Vec<&str> = problems[0]["recovery_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        users.contains(&a.as_str()) || users.contains(&b.as_str()),
        "{r}"
    );
    let table = String::from_utf8(e.run(&["verify", "--rp", &b]).stdout).unwrap();
    if users.contains(&b.as_str()) {
        assert!(table.contains(&id) && table.contains("CORRUPT"), "{table}");
    }

    let out = e.path("out.raw");
    let rp = users[0];
    let (_, err) = e.fails(&[
        "restore",
        "disk",
        "d",
        "--rp",
        rp,
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(
        err["error"]["message"].as_str().unwrap().contains(&id),
        "the error names the chunk: {err}"
    );
    assert!(!out.exists(), "a failed restore leaves no target");
    let leftovers: Vec<_> = std::fs::read_dir(e.dir.path())
        .unwrap()
        .filter_map(|x| x.ok())
        .filter(|x| x.file_name().to_string_lossy().contains("kura-restore"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files are left behind");
}

#[test]
fn verify_reports_truncated_and_missing_chunks_and_damaged_metadata() {
    let (e, _img, _a, b) = two_points();
    let chunks = e.chunk_files("v");
    let truncated = chunks[0].clone();
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    let missing = chunks[1].clone();
    std::fs::remove_file(&missing).unwrap();
    let o = e.run(&["--output", "json", "verify"]);
    assert_eq!(o.status.code(), Some(3));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = r.to_string();
    assert!(text.contains(&truncated.file_name().unwrap().to_string_lossy().to_string()));
    assert!(text.contains(&missing.file_name().unwrap().to_string_lossy().to_string()));
    assert!(
        text.contains("\"missing\"") && text.contains("truncated"),
        "{text}"
    );

    // Damage the index and then the manifest of the newest recovery point.
    let rp_dir = e.path("home").join("vaults/v/rps").join(&b);
    let index = rp_dir.join("disk0.index");
    let mut ib = std::fs::read(&index).unwrap();
    ib[50] ^= 1;
    std::fs::write(&index, &ib).unwrap();
    let o = e.run(&["--output", "json", "verify", "--rp", &b]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).contains("disk0.index"));
    let out = e.path("x.raw");
    let (_, err) = e.fails(&[
        "restore",
        "disk",
        "d",
        "--rp",
        &b,
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk0.index"),
        "{err}"
    );
    std::fs::write(rp_dir.join("manifest"), b"garbage").unwrap();
    let o = e.run(&["--output", "json", "verify", "--rp", &b]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).contains("manifest of recovery point"));
    assert!(!out.exists());
}

#[test]
fn kill_during_backup_leaves_no_recovery_point_and_next_backup_succeeds() {
    let e = Env::new();
    e.on_host(); // kills the process that runs the backup
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 48 << 20, &[(0, 48 << 20, 7)]);
    e.protect(&img, "v", &[]);
    let mut interrupted = 0;
    for delay_ms in [30u64, 150, 400] {
        let mut child = e.cmd(&["backup", "now", "d"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        let rps = e.json(&["rp", "list", "d"]).as_array().unwrap().len();
        if status.success() {
            continue; // finished before the kill: fine, and consistent
        }
        interrupted += 1;
        let r = e.json(&["verify", "--vault", "v"]);
        assert!(r["problems"].as_array().unwrap().is_empty(), "{r}");
        let jobs = e.json(&["job", "list"]);
        assert!(
            jobs.as_array()
                .unwrap()
                .iter()
                .all(|j| j["status"] != "InProgress"),
            "orphaned jobs are marked failed: {jobs}"
        );
        assert_eq!(e.json(&["rp", "list", "d"]).as_array().unwrap().len(), rps);
    }
    assert!(
        interrupted > 0,
        "at least one backup must have been killed mid-way"
    );
    let before = e.json(&["rp", "list", "d"]).as_array().unwrap().len();
    e.backup("d");
    assert_eq!(
        e.json(&["rp", "list", "d"]).as_array().unwrap().len(),
        before + 1
    );
    let out = e.path("out.raw");
    e.restore("d", "latest", &out, "raw");
    assert!(same_file(&img, &out));
    e.json(&["verify"]);
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn injected_failure_mid_backup_publishes_nothing() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 4 << 20, &[(0, 4 << 20, 3)]);
    e.protect(&img, "v", &[]);
    let (_, err) = e.fails(&["backup", "now", "d", "--fail-after-chunks", "5"]);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("injected") && msg.contains("job "), "{msg}");
    assert!(e.json(&["rp", "list", "d"]).as_array().unwrap().is_empty());
    let jobs = e.json(&["job", "list"]);
    assert_eq!(jobs[0]["status"], "Failed");
    assert!(
        e.path("home")
            .join("vaults/v/rps")
            .read_dir()
            .map(|d| d.count())
            .unwrap_or(0)
            <= 1
    );
    e.backup("d");
    e.json(&["verify"]);
}

#[test]
fn attach_rebuilds_the_catalog_in_a_new_home() {
    let (e, img, a, b) = two_points();
    let key = e.path("home/keys/v.key");
    let vault_dir = e.path("home/vaults/v");
    let other = Env::new();
    let (_, err) = other.fails(&[
        "vault",
        "attach",
        "x",
        "--path",
        vault_dir.to_str().unwrap(),
    ]);
    assert_eq!(err["error"]["code"], "key", "{err}");
    let (_, err) = other.fails(&[
        "vault",
        "attach",
        "x",
        "--path",
        other.dir.path().to_str().unwrap(),
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a kura vault"),
        "{err}"
    );
    let r = other.json(&[
        "--key-file",
        key.to_str().unwrap(),
        "vault",
        "attach",
        "x",
        "--path",
        vault_dir.to_str().unwrap(),
    ]);
    assert_eq!(r["recovery_points"], 2, "{r}");
    let rps = other.json(&["rp", "list", "d"]);
    let ids: Vec<&str> = rps
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![b.as_str(), a.as_str()]);
    let out = other.path("out.raw");
    other.restore("d", "latest", &out, "raw");
    assert!(same_file(&img, &out));
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 100, 1)]);
    let (_, err) = e.fails(&[
        "item",
        "protect",
        "disk",
        "/no/such/image.raw",
        "--vault",
        "v",
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/image.raw")
    );
    assert_eq!(err["error"]["code"], "not_found");
    let (_, err) = e.fails(&[
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "nope",
    ]);
    assert!(err["error"]["message"].as_str().unwrap().contains("nope"));
    let (_, err) = e.fails(&["vault", "create", "v"]);
    assert_eq!(err["error"]["code"], "already_exists");
    let (_, err) = e.fails(&["vault", "create", "bad name"]);
    assert_eq!(err["error"]["code"], "invalid");
    let (_, err) = e.fails(&["vault", "create", "w", "--chunk-size", "1KiB"]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chunk size")
    );
    assert!(
        !e.path("home/vaults/w").exists(),
        "a refused vault leaves no directory"
    );
    assert!(
        !e.path("home/keys/w.key").exists(),
        "a refused vault leaves no key file"
    );
    e.protect(&img, "v", &[]);
    let (_, err) = e.fails(&[
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "other",
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already protected")
    );
    let (_, err) = e.fails(&["backup", "now", "ghost"]);
    assert_eq!(err["error"]["code"], "not_found");
    let (_, err) = e.fails(&["backup", "now", "d", "--retain-until", "tomorrow"]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retain-until")
    );
    let (_, err) = e.fails(&[
        "restore",
        "disk",
        "d",
        "--rp",
        "latest",
        "--to",
        e.path("x").to_str().unwrap(),
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no recovery point")
    );
    e.backup("d");
    let existing = e.path("existing.raw");
    std::fs::write(&existing, b"precious").unwrap();
    let (_, err) = e.fails(&[
        "restore",
        "disk",
        "d",
        "--rp",
        "latest",
        "--to",
        existing.to_str().unwrap(),
    ]);
    assert_eq!(err["error"]["code"], "already_exists");
    assert_eq!(
        std::fs::read(&existing).unwrap(),
        b"precious",
        "the existing target is untouched"
    );
    e.ok(&[
        "restore",
        "disk",
        "d",
        "--rp",
        "latest",
        "--to",
        existing.to_str().unwrap(),
        "--force",
    ]);
    assert!(same_file(&img, &existing));
    let (_, err) = e.fails(&["job", "show", "nosuchjob"]);
    assert_eq!(err["error"]["code"], "not_found");
    // A missing source fails its backup clearly and keeps the last recovery point.
    std::fs::remove_file(&img).unwrap();
    let (_, err) = e.fails(&["backup", "now", "d"]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{err}"
    );
    assert_eq!(e.json(&["rp", "list", "d"]).as_array().unwrap().len(), 1);
    let show = e.json(&["item", "show", "d"]);
    assert_eq!(show["source_present"], false);
}

#[test]
fn every_command_prints_one_json_document() {
    let (e, _img, a, _b) = two_points();
    let job = e.json(&["job", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for args in [
        vec!["vault", "list"],
        vec!["vault", "show", "v"],
        vec!["item", "list"],
        vec!["item", "show", "d"],
        vec!["rp", "list", "d"],
        vec!["job", "list"],
        vec!["job", "show", job.as_str()],
        vec!["verify", "--rp", a.as_str()],
    ] {
        e.json(&args);
    }
    let shown = e.json(&["job", "show", &job]);
    assert!(
        !shown["log"].as_array().unwrap().is_empty(),
        "jobs keep a log: {shown}"
    );
}

#[test]
fn quickstart_runs_and_reports_success() {
    let e = Env::new();
    let dir = e.path("qs");
    let doc = e.json(&["quickstart", "--dir", dir.to_str().unwrap()]);
    assert_eq!(doc["restored_bit_exact"], true);
    assert_eq!(doc["verified"], true);
    // Re-running replaces its own demo but refuses a foreign directory.
    e.json(&["quickstart", "--dir", dir.to_str().unwrap()]);
    let foreign = e.path("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("keep"), b"x").unwrap();
    e.fails(&["quickstart", "--dir", foreign.to_str().unwrap()]);
    assert!(foreign.join("keep").exists());
}

#[test]
fn block_device_round_trip() {
    // Needs root and a loop device (both present on the CI machines); fails loudly otherwise.
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("backing.raw");
    make_image(
        &img,
        (6 << 20) + 4096,
        &[(0, 300_000, 1), (4 << 20, 100_000, 2)],
    );
    let o = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .expect("losetup (util-linux) must exist");
    assert!(
        o.status.success(),
        "this test needs root and a free loop device: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dev = String::from_utf8(o.stdout).unwrap().trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _guard = Detach(dev.clone());
    e.ok(&[
        "item", "protect", "disk", &dev, "--vault", "v", "--name", "blk",
    ]);
    let r = e.json(&["backup", "now", "blk"]);
    assert_eq!(r["logical_size"], (6 << 20) + 4096);
    let out = e.path("blk.out");
    e.restore("blk", "latest", &out, "raw");
    assert!(same_file(&img, &out));
    assert!(
        allocated(&out) < 2 << 20,
        "zero chunks of a device restore as holes"
    );
}

#[test]
fn a_later_backup_repairs_a_damaged_chunk_it_meets_again() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("a.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 11)]);
    e.protect(&img, "v", &[]);
    e.backup("a");
    let victim = e.chunk_files("v")[0].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&victim, &bytes).unwrap();
    assert_eq!(e.run(&["verify"]).status.code(), Some(3));
    // Another item with the same content has no previous recovery point: every chunk it
    // meets in the vault is checked, and the damaged one is written again.
    let copy = e.path("b.raw");
    std::fs::copy(&img, &copy).unwrap();
    e.protect(&copy, "v", &[]);
    let r = e.json(&["backup", "now", "b"]);
    assert_eq!(r["new_chunks"], 1, "{r}");
    let v = e.json(&["verify"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn restore_disks_writes_one_file_per_disk_into_a_directory() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 2 << 20, &[(0, 1 << 20, 5)]);
    e.protect(&img, "v", &[]);
    e.backup("d");
    let dir = e.path("out");
    std::fs::create_dir(&dir).unwrap();
    let r = e.json(&[
        "restore",
        "disks",
        "d",
        "--rp",
        "latest",
        "--to",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(r.as_array().unwrap().len(), 1, "{r}");
    assert!(same_file(&dir.join("disk0.raw"), &img));
    let (_, err) = e.fails(&[
        "restore",
        "disks",
        "d",
        "--rp",
        "latest",
        "--to",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(err["error"]["code"], "already_exists", "{err}");
    let (_, err) = e.fails(&[
        "restore",
        "disks",
        "d",
        "--rp",
        "latest",
        "--to",
        dir.to_str().unwrap(),
        "--disk",
        "nope",
        "--force",
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has no disk \"nope\""),
        "{err}"
    );
    e.ok(&[
        "restore",
        "disks",
        "d",
        "--rp",
        "latest",
        "--to",
        dir.to_str().unwrap(),
        "--disk",
        "disk0",
        "--format",
        "qcow2",
    ]);
    assert!(dir.join("disk0.qcow2").exists());
}

#[test]
fn precheck_says_whether_a_backup_could_run_and_touches_nothing() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 4096, 1)]);
    e.protect(&img, "v", &[]);
    let r = e.json(&["item", "precheck", "d"]);
    assert_eq!(r["ready"], true, "{r}");
    assert_eq!(r["checks"].as_array().unwrap().len(), 3, "{r}");
    let before = std::fs::read(&img).unwrap();
    std::fs::rename(&img, e.path("moved.raw")).unwrap();
    let o = e.run(&["item", "precheck", "d"]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("NOT READY") && text.contains("FAIL source"),
        "{text}"
    );
    std::fs::rename(e.path("moved.raw"), &img).unwrap();
    assert_eq!(std::fs::read(&img).unwrap(), before);
    assert!(
        e.json(&["job", "list"])
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["operation"] != "Backup")
    );
}

#[test]
fn rp_show_lists_a_points_disks() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 4096, 1)]);
    e.protect(&img, "v", &[]);
    let rp = e.backup("d");
    let m = e.json(&["rp", "show", "d", "--rp", &rp[..8]]);
    assert_eq!(m["rp_id"], rp.as_str());
    assert_eq!(m["disks"][0]["name"], "disk0");
    assert_eq!(m["consistency"], "crash");
    assert!(m["definition"].is_null(), "disks have no definition: {m}");
    let text = e.ok(&["rp", "show", "d"]);
    assert!(
        text.contains("disk0") && text.contains("consistency     crash"),
        "{text}"
    );
}
