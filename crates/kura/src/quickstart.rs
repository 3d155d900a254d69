//! `kura quickstart`: a guided tour on a demo disk, in a demo home.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kura_engine::{
    BackupOptions, CreateVault, Home, RestoreFormat, RestoreOptions, Secrets, VerifyScope,
};
use serde::Serialize;

use crate::output::{Bar, Out, size};

const MARKER: &str = ".kura-quickstart";
const MIB: u64 = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the demo (home, disk, restores). Default: ./kura-quickstart, or --home.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Step {
    step: String,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    dir: String,
    home: String,
    disk: String,
    item: String,
    steps: Vec<Step>,
    recovery_points: Vec<String>,
    restored_bit_exact: bool,
    verified: bool,
}

pub fn run(args: &Args, home: Option<&Path>, out: &Out) -> anyhow::Result<u8> {
    let dir = args
        .dir
        .clone()
        .or_else(|| home.map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("kura-quickstart"));
    let dir = std::path::absolute(&dir)?;
    prepare_dir(&dir)?;
    let home_dir = dir.join("home");
    let disk = dir.join("demo-disk.raw");
    let bar = Bar::new(out);
    let mut steps = Vec::new();
    let mut say = |step: &str, detail: String| {
        if !out.json() {
            println!("==> {step}\n    {detail}");
        }
        steps.push(Step {
            step: step.into(),
            detail,
        });
    };

    make_demo_disk(&disk, 256 * MIB)?;
    say(
        "made a demo disk",
        format!(
            "{}: 256 MiB sparse raw image with 32 MiB of log-like text, 32 MiB of random data and a few scattered blocks",
            disk.display()
        ),
    );

    let home = Home::open(&home_dir)?;
    let secrets = Secrets::default();
    let v = home.create_vault("demo", &CreateVault::default(), &secrets)?;
    say(
        "created vault demo",
        format!(
            "encrypted (AES-256-GCM) with a key file kura generated at {}; for real vaults, export a recovery kit and keep it elsewhere: kura vault key export NAME --to FILE",
            v.row.key_file.clone().unwrap_or_default()
        ),
    );

    let item = home.protect_disk(&disk, "demo", Some("demo-disk"), None, None, &secrets)?;
    say(
        "protected the disk",
        format!("item {} in vault demo", item.name),
    );

    let first_hash = file_hash(&disk)?;
    let r1 = home.backup(&item.name, &secrets, &BackupOptions::default(), &bar)?;
    say(
        "full backup",
        format!(
            "job {} made recovery point {}: read {} of a {} disk (holes are never read), stored {}",
            r1.job_id,
            r1.rp_id,
            size(r1.read_bytes),
            size(r1.logical_size),
            size(r1.new_stored_bytes)
        ),
    );

    let changed = change_disk(&disk)?;
    say(
        "changed the disk",
        format!(
            "wrote {changed} scattered 4 KiB blocks (about 1% of its data) and grew it by 16 MiB"
        ),
    );
    let second_hash = file_hash(&disk)?;

    let r2 = home.backup(&item.name, &secrets, &BackupOptions::default(), &bar)?;
    say(
        "incremental backup",
        format!(
            "job {} made recovery point {}: uploaded the {} chunks holding a change ({}); its index still lists the whole disk",
            r2.job_id,
            r2.rp_id,
            r2.new_chunks,
            size(r2.new_stored_bytes)
        ),
    );

    let restore = |rp: &str, to: &Path, format| {
        let opts = RestoreOptions {
            rp: rp.to_string(),
            to: to.to_path_buf(),
            format,
            force: false,
            job_id: None,
            disk: None,
            decrypt: false,
            from_replica: false,
        };
        home.restore_disk(&item.name, &opts, &secrets, &bar)
    };
    let restored_latest = dir.join("restored-latest.raw");
    let rr = restore("latest", &restored_latest, RestoreFormat::Raw)?;
    let restored_first = dir.join("restored-first.raw");
    restore(&r1.rp_id, &restored_first, RestoreFormat::Raw)?;
    let exact =
        file_hash(&restored_latest)? == second_hash && file_hash(&restored_first)? == first_hash;
    say(
        "restored both recovery points",
        format!(
            "{} and {}: {} (sparse: {} allocated for a {} disk)",
            restored_latest.display(),
            restored_first.display(),
            if exact {
                "bit-exact with the disk at each backup"
            } else {
                "MISMATCH"
            },
            size(allocated(&restored_latest)),
            size(rr.size)
        ),
    );
    if restore(
        "latest",
        &dir.join("restored-latest.qcow2"),
        RestoreFormat::Qcow2,
    )
    .is_ok()
    {
        say(
            "restored as qcow2",
            format!("{}", dir.join("restored-latest.qcow2").display()),
        );
    }

    let vr = home.verify(&VerifyScope::Vault("demo".into()), &secrets, &bar)?;
    say(
        "verified the vault",
        format!(
            "job {}: {} chunks of {} recovery points re-read and checked: {}",
            vr.job_id,
            vr.chunks_checked,
            vr.recovery_points,
            if vr.ok() {
                "all good"
            } else {
                "PROBLEMS FOUND"
            }
        ),
    );

    let summary = Summary {
        dir: dir.display().to_string(),
        home: home_dir.display().to_string(),
        disk: disk.display().to_string(),
        item: item.name.clone(),
        steps,
        recovery_points: vec![r1.rp_id.clone(), r2.rp_id.clone()],
        restored_bit_exact: exact,
        verified: vr.ok(),
    };
    if out.json() {
        out.print(&summary, String::new);
    } else {
        let h = home_dir.display();
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("kura"));
        let k = exe.display();
        println!(
            "\nkura works on this machine. Look around with:\n  {k} --home {h} rp list demo-disk\n  {k} --home {h} job list\n  {k} --home {h} verify --item demo-disk\n  {k} --home {h} restore disk demo-disk --rp latest --to /tmp/demo.qcow2 --format qcow2\nRemove {} when you are done.",
            dir.display()
        );
    }
    if !exact || !vr.ok() {
        bail!(
            "the quickstart found a problem: restored bit-exact = {exact}, verified = {}",
            vr.ok()
        );
    }
    Ok(0)
}

fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        if dir.join(MARKER).exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear the previous demo in {}", dir.display()))?;
        } else if std::fs::read_dir(dir)?.next().is_some() {
            bail!(
                "{} exists and is not a kura quickstart directory; pass --dir with a new or empty directory",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "made by kura quickstart; safe to delete\n",
    )?;
    Ok(())
}

/// A deterministic pseudo-random generator (xorshift64*), for demo data only.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn make_demo_disk(path: &Path, len: u64) -> anyhow::Result<()> {
    let f = File::create(path)?;
    f.set_len(len)?;
    let mut rng = Rng(0x6b75_7261);
    let mut text = String::new();
    let words = [
        "backup", "vault", "chunk", "restore", "policy", "snapshot", "disk", "verify", "item",
        "job",
    ];
    let mut n = 0u64;
    while text.len() < (32 * MIB) as usize {
        n += 1;
        let w1 = words[(rng.next() % 10) as usize];
        let w2 = words[(rng.next() % 10) as usize];
        text += &format!(
            "2026-11-22T10:{:02}:{:02}Z INFO {w1} {w2} id={} took {}ms\n",
            (n / 60) % 60,
            n % 60,
            rng.next() % 100_000,
            rng.next() % 900
        );
    }
    f.write_all_at(&text.as_bytes()[..(32 * MIB) as usize], 0)?;
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..32 {
        rng.fill(&mut buf);
        f.write_all_at(&buf, 64 * MIB + i * MIB)?;
    }
    for i in 0..8u64 {
        f.write_all_at(&[0x5a; 4096], 128 * MIB + i * 9 * MIB + 4096 * i)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Writes scattered 4 KiB blocks over the data regions and grows the disk; returns how many.
fn change_disk(path: &Path) -> anyhow::Result<usize> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut rng = Rng(42);
    let mut block = [0u8; 4096];
    let blocks = (64 * MIB / 4096 / 100) as usize; // 1% of the 64 MiB of data
    for _ in 0..blocks {
        rng.fill(&mut block);
        let region = if rng.next().is_multiple_of(2) {
            0
        } else {
            64 * MIB
        };
        let off = region + (rng.next() % (32 * MIB / 4096)) * 4096;
        f.write_all_at(&block, off)?;
    }
    let len = f.metadata()?.len();
    f.set_len(len + 16 * MIB)?;
    f.write_all_at(b"grown", len + 8 * MIB)?;
    f.sync_all()?;
    Ok(blocks)
}

fn file_hash(path: &Path) -> anyhow::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(path)?)?;
    Ok(h.finalize())
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}
