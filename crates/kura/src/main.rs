//! The `kura` command line: the product's verbs over an embedded home.

mod output;
mod policy_cmd;
mod quickstart;
mod remote;
mod server;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kura_engine::{
    BackupOptions, CreateVault, ErrorKind, Home, RestoreFormat, RestoreOptions, Secrets,
    VerifyScope,
};
use output::{Bar, Out, Table};
use zeroize::Zeroizing;

/// kura: self-hosted, policy-driven backup for disk images and virtual machines.
#[derive(Debug, Parser)]
#[command(name = "kura", version, about, propagate_version = true)]
struct Cli {
    /// Home directory (catalog, generated keys, default vault storage).
    #[arg(long, global = true, env = "KURA_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Output format: a table for people, or one JSON document on stdout.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// File holding the vault passphrase (or set KURA_PASSPHRASE).
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Key file that unlocks the vault.
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Send the command to a running `kura server` instead of using the home directly.
    #[arg(long, global = true, env = "KURA_SERVER", value_name = "URL")]
    server: Option<String>,
    /// API token for --server.
    #[arg(
        long,
        global = true,
        env = "KURA_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, show and attach vaults; export their keys.
    #[command(subcommand)]
    Vault(VaultCmd),
    /// Protect and list items (what gets backed up).
    #[command(subcommand)]
    Item(ItemCmd),
    /// Run a backup.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// List recovery points.
    #[command(subcommand)]
    Rp(RpCmd),
    /// Restore from a recovery point.
    #[command(subcommand)]
    Restore(RestoreCmd),
    /// Re-read and check every chunk of a recovery point, an item, a vault or everything.
    Verify(VerifyArgs),
    /// List and show jobs.
    #[command(subcommand)]
    Job(JobCmd),
    /// Backup policies: schedules and retention.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCmd),
    /// Plan and apply the removal of expired recovery points.
    #[command(subcommand)]
    Retention(policy_cmd::RetentionCmd),
    /// Protected size, instances and stored size per vault and item.
    Usage {
        /// Only this vault.
        #[arg(long)]
        vault: Option<String>,
    },
    /// Remove chunks no recovery point references (safe while backups run).
    Gc {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Seconds a chunk stays marked before it may be deleted.
        #[arg(long, default_value_t = 3600)]
        grace: i64,
        /// Report only; mark and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run scheduled backups: once (`tick`, e.g. from a timer) or continuously (`run`).
    #[command(subcommand)]
    Scheduler(policy_cmd::SchedulerCmd),
    /// Run the service: the HTTP API and the scheduler over the home.
    Server {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8640")]
        listen: String,
        /// Seconds between scheduler ticks.
        #[arg(long, default_value_t = 30)]
        tick: u64,
        /// Spread window, in seconds, for items that share a schedule.
        #[arg(long, default_value_t = 600)]
        spread: i64,
    },
    /// Try kura end to end on a small demo disk, in a demo home.
    Quickstart(quickstart::Args),
}

#[derive(Debug, Subcommand)]
enum VaultCmd {
    /// Create a vault (encrypted by default).
    Create {
        /// Vault name.
        name: String,
        /// Storage directory (default: HOME/vaults/NAME).
        #[arg(long)]
        path: Option<PathBuf>,
        /// Chunk size for disks, e.g. 4MiB (64KiB to 64MiB).
        #[arg(long, value_name = "SIZE")]
        chunk_size: Option<String>,
        /// Store data unencrypted.
        #[arg(long)]
        no_encryption: bool,
        /// AEAD cipher.
        #[arg(long, value_enum)]
        cipher: Option<CipherArg>,
        /// zstd level, -7 (fastest) to 19 (smallest); default 1.
        #[arg(long, allow_hyphen_values = true, value_name = "LEVEL")]
        compression_level: Option<i32>,
    },
    /// List vaults.
    List,
    /// Show a vault.
    Show {
        /// Vault name.
        name: String,
    },
    /// Register an existing vault directory and rebuild its items and recovery points.
    Attach {
        /// Name to give it in this home.
        name: String,
        /// The vault's directory.
        #[arg(long)]
        path: PathBuf,
    },
    /// Key management.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Change a vault's settings.
    Set {
        /// Vault name.
        name: String,
        /// Soft delete: enabled, disabled or always-on (irreversible).
        #[arg(long)]
        soft_delete: Option<String>,
        /// Days soft-deleted data is kept, 14-180.
        #[arg(long)]
        soft_delete_days: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCmd {
    /// Write the vault's wrapped data key to a file, for escrow.
    Export {
        /// Vault name.
        name: String,
        /// Output file.
        #[arg(long)]
        to: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CipherArg {
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    #[value(name = "chacha20-poly1305")]
    Chacha20Poly1305,
}

#[derive(Debug, Subcommand)]
enum ItemCmd {
    /// Protect something.
    #[command(subcommand)]
    Protect(ProtectCmd),
    /// List items.
    List,
    /// Show an item: protection state, health, latest recovery point.
    Show {
        /// Item name or id.
        item: String,
    },
    /// Stop protection: keep the data (default) or delete it (soft delete applies).
    Stop {
        /// Item name.
        item: String,
        /// Delete the backup data too (recoverable with `undelete` during soft delete).
        #[arg(long)]
        delete_data: bool,
    },
    /// Resume protection of a stopped item with a policy.
    Resume {
        /// Item name.
        item: String,
        /// Policy of the item's vault.
        #[arg(long)]
        policy: String,
    },
    /// Bring back a soft-deleted item (as stopped, data retained).
    Undelete {
        /// Item name.
        item: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProtectCmd {
    /// Protect a disk image (raw, qcow2 or any format qemu reads) or a block device.
    Disk {
        /// Image path.
        image: PathBuf,
        /// Vault to back up into.
        #[arg(long)]
        vault: String,
        /// Item name (default: the image's file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// Policy of the vault that schedules its backups (default DefaultPolicy).
        #[arg(long)]
        policy: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BackupCmd {
    /// Back an item up now.
    Now {
        /// Item name.
        item: String,
        /// Keep the recovery point until this date (YYYY-MM-DD).
        #[arg(long, value_name = "YYYY-MM-DD")]
        retain_until: Option<String>,
        /// Testing only: fail after storing this many chunks.
        #[arg(long, hide = true)]
        fail_after_chunks: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum RpCmd {
    /// List an item's recovery points, newest first.
    List {
        /// Item name.
        item: String,
    },
}

#[derive(Debug, Subcommand)]
enum RestoreCmd {
    /// Restore a disk to a new image file.
    Disk {
        /// Item name.
        item: String,
        /// Recovery point id (or unique prefix), or `latest`.
        #[arg(long)]
        rp: String,
        /// Target file.
        #[arg(long)]
        to: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = FormatArg::Raw)]
        format: FormatArg,
        /// Replace an existing target.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Raw,
    Qcow2,
}

#[derive(Debug, Args)]
#[group(multiple = false)]
struct VerifyArgs {
    /// Verify every recovery point in this vault.
    #[arg(long)]
    vault: Option<String>,
    /// Verify every recovery point of this item.
    #[arg(long)]
    item: Option<String>,
    /// Verify this recovery point.
    #[arg(long)]
    rp: Option<String>,
}

#[derive(Debug, Subcommand)]
enum JobCmd {
    /// The latest jobs, newest first.
    List {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One job, with its log.
    Show {
        /// Job id or unique prefix.
        id: String,
    },
    /// Cancel a backup job (accepted only during its snapshot phase).
    Cancel {
        /// Job id or unique prefix.
        id: String,
    },
}

/// Exit codes: 0 success, 1 error, 2 usage error, 3 verify found damaged data.
const EXIT_ERROR: u8 = 1;
pub(crate) const EXIT_DAMAGED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out::new(cli.output == Format::Json);
    match run(&cli, &out) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            out.error(&e);
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Default home: `$XDG_DATA_HOME/kura`, else `~/.local/share/kura`.
fn default_home() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("kura");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/kura")
}

fn read_passphrase_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read passphrase file {}: {e}", path.display()))?;
    let text = Zeroizing::new(text);
    let p = text.strip_suffix('\n').unwrap_or(&text);
    let p = p.strip_suffix('\r').unwrap_or(p);
    if p.is_empty() {
        anyhow::bail!("passphrase file {} is empty", path.display());
    }
    Ok(Zeroizing::new(p.to_string()))
}

fn secrets(cli: &Cli) -> anyhow::Result<Secrets> {
    let passphrase = match (&cli.passphrase_file, std::env::var("KURA_PASSPHRASE")) {
        (Some(f), _) => Some(read_passphrase_file(f)?),
        (None, Ok(p)) if !p.is_empty() => Some(Zeroizing::new(p)),
        _ => None,
    };
    Ok(Secrets {
        passphrase,
        key_file: cli.key_file.clone(),
    })
}

fn parse_size(s: &str) -> anyhow::Result<u32> {
    let bytes = match s.parse::<u64>() {
        Ok(n) => n,
        Err(_) => s
            .parse::<bytesize::ByteSize>()
            .map_err(|e| anyhow::anyhow!("--chunk-size {s:?} is not a size (e.g. 4MiB): {e}"))?
            .as_u64(),
    };
    u32::try_from(bytes)
        .map_err(|_| anyhow::anyhow!("--chunk-size {s} is too large (at most 64MiB)"))
}

fn run(cli: &Cli, out: &Out) -> anyhow::Result<u8> {
    if let Command::Quickstart(args) = &cli.command {
        return quickstart::run(args, cli.home.as_deref(), out);
    }
    if let Some(url) = &cli.server {
        let token = cli
            .token
            .as_deref()
            .context("--server needs --token (or KURA_TOKEN)")?;
        return remote::run(&cli.command, &remote::Client::new(url, token), out);
    }
    let home_dir = cli.home.clone().unwrap_or_else(default_home);
    let home = Home::open(&home_dir)?;
    let secrets = secrets(cli)?;
    let bar = Bar::new(out);
    match &cli.command {
        Command::Vault(cmd) => vault(&home, cmd, &secrets, out),
        Command::Item(ItemCmd::Protect(ProtectCmd::Disk {
            image,
            vault,
            name,
            policy,
        })) => {
            let item =
                home.protect_disk(image, vault, name.as_deref(), policy.as_deref(), &secrets)?;
            out.print(&item, || {
                format!(
                    "protected {} as item {} in vault {vault}\n",
                    item.source, item.name
                )
            });
            Ok(0)
        }
        Command::Item(ItemCmd::List) => {
            let items = home.list_items()?;
            out.print(&items, || {
                let mut t = Table::new(&["NAME", "KIND", "VAULT", "SOURCE"]);
                for i in &items {
                    let vault = home
                        .catalog()
                        .vault_by_id(&i.vault_id)
                        .map(|v| v.name)
                        .unwrap_or_default();
                    t.row(vec![
                        i.name.clone(),
                        i.kind.clone(),
                        vault,
                        i.source.clone(),
                    ]);
                }
                t.render()
            });
            Ok(0)
        }
        Command::Item(ItemCmd::Show { item }) => {
            let st = home.item_status(item)?;
            out.print(&st, || item_text(&st));
            Ok(0)
        }
        Command::Item(ItemCmd::Stop { item, delete_data }) => {
            let st = home.stop_protection(item, *delete_data, &secrets, jiff::Timestamp::now())?;
            out.print(&st, || item_text(&st));
            Ok(0)
        }
        Command::Item(ItemCmd::Resume { item, policy }) => {
            let st = home.resume_protection(item, policy)?;
            out.print(&st, || item_text(&st));
            Ok(0)
        }
        Command::Item(ItemCmd::Undelete { item }) => {
            let st = home.undelete(item)?;
            out.print(&st, || item_text(&st));
            Ok(0)
        }
        Command::Backup(BackupCmd::Now {
            item,
            retain_until,
            fail_after_chunks,
        }) => {
            let opts = BackupOptions {
                retain_until: retain_until.clone(),
                fail_after_chunks: *fail_after_chunks,
                ..Default::default()
            };
            let r = home.backup(item, &secrets, &opts, &bar)?;
            out.print(&r, || {
                format!(
                    "job {} completed\nrecovery point {}\n  {} of disk, {} read, {} new chunks ({} stored){}\n",
                    r.job_id, r.rp_id, output::size(r.logical_size), output::size(r.read_bytes), r.new_chunks,
                    output::size(r.new_stored_bytes), if r.incremental { ", incremental" } else { ", full" }
                )
            });
            Ok(0)
        }
        Command::Rp(RpCmd::List { item }) => {
            let rps = home.list_rps(item)?;
            out.print(&rps, || {
                let mut t = Table::new(&[
                    "ID",
                    "TIME",
                    "LOGICAL",
                    "STORED",
                    "CONSISTENCY",
                    "TIER",
                    "TAGS",
                    "EXPIRES",
                ]);
                for r in &rps {
                    t.row(vec![
                        r.id.clone(),
                        r.time.clone(),
                        output::size(r.logical_size),
                        output::size(r.stored_size),
                        r.consistency.clone(),
                        r.tier.clone(),
                        r.tags.join(","),
                        r.expires.clone().unwrap_or_else(|| "never".into()),
                    ]);
                }
                t.render()
            });
            Ok(0)
        }
        Command::Restore(RestoreCmd::Disk {
            item,
            rp,
            to,
            format,
            force,
        }) => {
            let format = match format {
                FormatArg::Raw => RestoreFormat::Raw,
                FormatArg::Qcow2 => RestoreFormat::Qcow2,
            };
            let opts = RestoreOptions {
                rp: rp.clone(),
                to: to.clone(),
                format,
                force: *force,
                job_id: None,
            };
            let r = home.restore_disk(item, &opts, &secrets, &bar)?;
            out.print(&r, || {
                format!(
                    "job {} completed\nrestored recovery point {} to {} ({}, {}; {} written)\n",
                    r.job_id,
                    r.rp_id,
                    r.target,
                    serde_json::to_value(r.format)
                        .unwrap_or_default()
                        .as_str()
                        .unwrap_or(""),
                    output::size(r.size),
                    output::size(r.bytes_written)
                )
            });
            Ok(0)
        }
        Command::Verify(args) => {
            let scope = match (&args.vault, &args.item, &args.rp) {
                (Some(v), _, _) => VerifyScope::Vault(v.clone()),
                (_, Some(i), _) => VerifyScope::Item(i.clone()),
                (_, _, Some(r)) => VerifyScope::Rp(r.clone()),
                _ => VerifyScope::All,
            };
            let r = home.verify(&scope, &secrets, &bar)?;
            out.print(&r, || {
                let mut s = format!(
                    "job {}: checked {} recovery point(s), {} chunk(s)\n",
                    r.job_id, r.recovery_points, r.chunks_checked
                );
                if r.ok() {
                    s += "all data verified\n";
                } else {
                    for p in &r.problems {
                        s += &format!(
                            "{} {}: {}\n  used by recovery points: {}\n",
                            p.object,
                            p.problem.to_uppercase(),
                            p.detail,
                            p.recovery_points.join(", ")
                        );
                    }
                    s += &format!("{} problem(s) found\n", r.problems.len());
                }
                s
            });
            Ok(if r.ok() { 0 } else { EXIT_DAMAGED })
        }
        Command::Job(JobCmd::List { limit }) => {
            let jobs = home.list_jobs(*limit)?;
            out.print(&jobs, || {
                let mut t =
                    Table::new(&["ID", "OPERATION", "TARGET", "STATUS", "STARTED", "PROGRESS"]);
                for j in &jobs {
                    t.row(vec![
                        j.id.clone(),
                        j.operation.clone(),
                        j.target.clone(),
                        j.status.clone(),
                        j.started.clone(),
                        format!(
                            "{}/{}",
                            output::size(j.bytes_done),
                            output::size(j.bytes_total)
                        ),
                    ]);
                }
                t.render()
            });
            Ok(0)
        }
        Command::Job(JobCmd::Cancel { id }) => {
            let j = home.cancel_job(id)?;
            out.print(&j, || format!("job {} is {}\n", j.id, j.status));
            Ok(0)
        }
        Command::Job(JobCmd::Show { id }) => {
            let j = home.job(id)?;
            out.print(&j, || {
                let mut s = format!(
                    "job        {}\noperation  {}\ntarget     {}\nstatus     {}\nstarted    {}\nended      {}\nprogress   {} of {}\n",
                    j.id, j.operation, j.target, j.status, j.started, j.ended.clone().unwrap_or_default(),
                    output::size(j.bytes_done), output::size(j.bytes_total)
                );
                if let Some(rp) = &j.rp_id {
                    s += &format!("recovery point  {rp}\n");
                }
                if let Some(e) = &j.error {
                    s += &format!("error      {e}\n");
                }
                s += "log:\n";
                for l in &j.log {
                    s += &format!("  {l}\n");
                }
                s
            });
            Ok(0)
        }
        Command::Policy(cmd) => policy_cmd::run_policy(&home, cmd, out),
        Command::Server {
            listen,
            tick,
            spread,
        } => server::run(home, secrets, listen, *tick, *spread),
        Command::Usage { vault } => {
            let u = home.usage(vault.as_deref())?;
            out.print(&u, || usage_text(&u));
            Ok(0)
        }
        Command::Gc {
            vault,
            grace,
            dry_run,
        } => {
            let opts = kura_engine::GcOptions {
                grace: jiff::SignedDuration::from_secs((*grace).max(0)),
                dry_run: *dry_run,
                job_id: None,
            };
            let r = home.gc(vault, &opts, &secrets, &bar)?;
            out.print(&r, || {
                format!(
                    "job {}: {} recovery point(s) reference {} of {} stored chunks\n{} newly marked, {} released, {} deleted ({}), {} waiting for their grace period or older writers{}\n",
                    r.job_id, r.recovery_points, r.referenced_chunks, r.stored_chunks, r.newly_doomed, r.released, r.deleted,
                    output::size(r.freed_bytes), r.waiting,
                    if *dry_run { " (dry run: nothing changed)" } else { "" }
                )
            });
            Ok(0)
        }
        Command::Retention(cmd) => policy_cmd::run_retention(&home, cmd, &secrets, out),
        Command::Scheduler(cmd) => policy_cmd::run_scheduler(&home, cmd, secrets, out),
        Command::Quickstart(_) => unreachable!("handled above"),
    }
}

fn vault(home: &Home, cmd: &VaultCmd, secrets: &Secrets, out: &Out) -> anyhow::Result<u8> {
    match cmd {
        VaultCmd::Create {
            name,
            path,
            chunk_size,
            no_encryption,
            cipher,
            compression_level,
        } => {
            let opts = CreateVault {
                path: path.clone(),
                chunk_size: chunk_size.as_deref().map(parse_size).transpose()?,
                no_encryption: *no_encryption,
                cipher: cipher.map(|c| match c {
                    CipherArg::Aes256Gcm => kura_store::Cipher::Aes256Gcm,
                    CipherArg::Chacha20Poly1305 => kura_store::Cipher::Chacha20Poly1305,
                }),
                compression_level: *compression_level,
                fast_kdf: std::env::var_os("KURA_TEST_FAST_KDF").is_some(),
            };
            let v = home.create_vault(name, &opts, secrets)?;
            out.print(&v, || {
                let mut s = format!(
                    "created vault {} at {} (chunk size {}, encryption {})\n",
                    v.row.name,
                    v.row.path,
                    output::size(u64::from(v.row.chunk_size)),
                    v.row.encryption
                );
                if let Some(n) = &v.note {
                    s += &format!("note: {n}\n");
                }
                s
            });
            Ok(0)
        }
        VaultCmd::Set {
            name,
            soft_delete,
            soft_delete_days,
        } => {
            let (mode, days) =
                home.set_soft_delete(name, soft_delete.as_deref(), *soft_delete_days)?;
            let doc =
                serde_json::json!({"vault": name, "soft_delete": mode, "soft_delete_days": days});
            out.print(&doc, || {
                format!("vault {name}: soft delete {mode}, {days} days\n")
            });
            Ok(0)
        }
        VaultCmd::List => {
            let vs = home.list_vaults()?;
            out.print(&vs, || {
                let mut t = Table::new(&["NAME", "ITEMS", "ENCRYPTION", "CHUNK", "PATH"]);
                for v in &vs {
                    t.row(vec![
                        v.row.name.clone(),
                        v.items.to_string(),
                        v.row.encryption.clone(),
                        output::size(u64::from(v.row.chunk_size)),
                        v.row.path.clone(),
                    ]);
                }
                t.render()
            });
            Ok(0)
        }
        VaultCmd::Show { name } => {
            let v = home.vault_info(name)?;
            out.print(&v, || {
                format!(
                    "vault       {}\nid          {}\npath        {}\nchunk size  {}\nencryption  {}{}\nkey file    {}\nitems       {}\nsoft delete {} ({} days)\ncreated     {}\n",
                    v.row.name, v.row.id, v.row.path, output::size(u64::from(v.row.chunk_size)), v.row.encryption,
                    v.row.cipher.as_ref().map(|c| format!(" ({c})")).unwrap_or_default(),
                    v.row.key_file.clone().unwrap_or_else(|| "-".into()), v.items, v.soft_delete, v.soft_delete_days, v.row.created
                )
            });
            Ok(0)
        }
        VaultCmd::Attach { name, path } => {
            let r = home.attach_vault(name, path, secrets)?;
            out.print(&r, || {
                let mut s = format!(
                    "attached vault {} from {}: {} item(s), {} recovery point(s)\n",
                    r.vault.name,
                    r.vault.path,
                    r.items.len(),
                    r.recovery_points
                );
                for w in &r.warnings {
                    s += &format!("warning: {w}\n");
                }
                s
            });
            Ok(0)
        }
        VaultCmd::Key(KeyCmd::Export { name, to, force }) => {
            let p = home.export_key(name, to, *force)?;
            let doc = serde_json::json!({"vault": name, "exported_to": p});
            out.print(&doc, || {
                format!("wrote the wrapped key of vault {name} to {}\nit is useless without the passphrase or key file; store it apart from the vault\n", p.display())
            });
            Ok(0)
        }
    }
}

fn usage_text(u: &[kura_engine::usage::VaultUsage]) -> String {
    let mut t = Table::new(&[
        "VAULT/ITEM",
        "STATE",
        "PROTECTED",
        "INSTANCES",
        "RPS",
        "LOGICAL",
        "STORED",
        "RATIO",
    ]);
    for v in u {
        let empty = String::new;
        t.row(vec![
            v.vault.clone(),
            empty(),
            empty(),
            empty(),
            empty(),
            output::size(v.logical_bytes),
            output::size(v.stored_bytes),
            format!("{:.2}", v.ratio),
        ]);
        for i in &v.items {
            t.row(vec![
                format!("  {}", i.item),
                i.state.clone(),
                output::size(i.protected_bytes),
                format!("{} {}", i.protected_instances, i.instance_tier),
                i.recovery_points.to_string(),
                output::size(i.logical_bytes),
                output::size(i.stored_bytes),
                format!("{:.2}", i.ratio),
            ]);
        }
    }
    t.render()
}

fn item_text(st: &kura_engine::ItemStatus) -> String {
    let i = &st.item;
    let mut s = format!(
        "item              {}\nid                {}\nkind              {}\nvault             {}\npolicy            {}\nsource            {}{}\nprotection state  {}\nlast backup       {}\nhealth            {}\nrecovery points   {}\n",
        i.name,
        i.id,
        i.kind,
        st.vault,
        i.policy.as_deref().unwrap_or("-"),
        i.source,
        if st.source_present { "" } else { "  (MISSING)" },
        st.protection_state,
        st.last_backup_status,
        st.health_status,
        st.recovery_points
    );
    for d in &st.health_details {
        s += &format!("  ! {d}\n");
    }
    if let Some(rp) = &st.latest_recovery_point {
        s += &format!("latest            {} at {}\n", rp.id, rp.time);
    }
    if let Some(p) = &st.purge_at {
        s += &format!("purged at         {p} unless undeleted\n");
    }
    s
}

/// Maps an error to a stable snake_case code.
fn error_code(e: &anyhow::Error) -> &str {
    if let Some(f) = e.downcast_ref::<remote::ApiFailure>() {
        return &f.code;
    }
    if let Some(kura_catalog::Error::NotFound { .. }) = e.downcast_ref::<kura_catalog::Error>() {
        return "not_found";
    }
    match e.downcast_ref::<kura_engine::Error>().map(|e| e.kind()) {
        Some(ErrorKind::NotFound) => "not_found",
        Some(ErrorKind::AlreadyExists) => "already_exists",
        Some(ErrorKind::Invalid) => "invalid",
        Some(ErrorKind::Conflict) => "conflict",
        Some(ErrorKind::Corrupt) => "corrupt",
        Some(ErrorKind::Key) => "key",
        _ => "error",
    }
}
