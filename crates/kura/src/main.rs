//! The `kura` command line: the product's verbs over an embedded home.

#[cfg(test)]
mod doc_examples;
mod export;
mod output;
mod policy_cmd;
mod quickstart;
mod remote;
mod server;
mod transport;
mod views;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kura_api as api;
use kura_engine::{Home, RestoreFormat, Secrets};
use output::Out;
use transport::{HostOptions, Transport};
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
    /// Time zone for the times tables show (an IANA name such as Europe/Berlin, or UTC)
    /// [default: this machine's zone]. JSON output is always UTC.
    #[arg(long, global = true, env = "KURA_TZ", value_name = "ZONE")]
    tz: Option<String>,
    /// File holding the vault passphrase (or set KURA_PASSPHRASE).
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// The passphrase of one vault, as NAME=FILE (repeatable), when vaults have different
    /// passphrases (verify, the scheduler and the server then open each with its own).
    #[arg(long, global = true, value_name = "NAME=FILE")]
    vault_passphrase_file: Vec<String>,
    /// Key file that unlocks the vault.
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Send the command to a running `kura server` instead of using the home directly.
    #[arg(long, global = true, env = "KURA_SERVER", value_name = "URL")]
    server: Option<String>,
    /// API token for --server. Other local users can read a command line (ps): prefer
    /// --token-file or the KURA_TOKEN environment variable.
    #[arg(
        long,
        global = true,
        env = "KURA_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// File holding the API token for --server (first line), kept out of the process list.
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed an https --server's certificate, for a private CA
    /// (default: the system's trusted roots).
    #[arg(long, global = true, env = "KURA_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
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
    /// Browse and get back single files of a recovery point (ext2/3/4, XFS and FAT file
    /// systems, on GPT or MBR partitions or a whole disk), fetching only the chunks they need.
    #[command(subcommand)]
    Files(FilesCmd),
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
    /// Serve a recovery point's disk read-only over NBD for a limited time (qemu-img,
    /// nbdcopy, qemu-nbd --connect, a VM booting from it through an overlay).
    #[command(subcommand)]
    Export(export::ExportCmd),
    /// Mount a recovery point's files read-only (FUSE), in the foreground until Ctrl-C or
    /// `umount MOUNTPOINT`: a disk point's file system (ext2/3/4, XFS, FAT) or a file item's
    /// tree, fetched from the vault as it is read. Mounted nosuid, nodev, noexec.
    Mount {
        /// Item name.
        item: String,
        /// An existing, empty directory.
        mountpoint: PathBuf,
        /// Recovery point (default: the latest).
        #[arg(long, default_value = "latest")]
        rp: String,
        /// Which disk (or tree), when the point has several.
        #[arg(long)]
        disk: Option<String>,
        /// Which volume (partition number; 0 for a disk without a table), when the disk
        /// has several readable ones.
        #[arg(long)]
        volume: Option<u32>,
        /// Read the point from the vault's replica (cross-region, when its primary
        /// location is down).
        #[arg(long)]
        from_replica: bool,
    },
    /// Run the service: the HTTP API and the scheduler over the home.
    Server(server::ServerArgs),
    /// API tokens of `kura server`: create, list, revoke, reset (on the server's host, or
    /// through --server).
    #[command(subcommand)]
    Token(TokenCmd),
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
        #[arg(long, conflicts_with = "location")]
        path: Option<PathBuf>,
        /// Where the vault lives instead: a directory, file:///DIR, s3://BUCKET/PREFIX
        /// (credentials and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
        /// AWS_REGION, AWS_ENDPOINT_URL or ~/.aws) or azblob://ACCOUNT/CONTAINER/PREFIX
        /// (AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_ENDPOINT). The bucket or
        /// container must exist.
        #[arg(long, value_name = "URL")]
        location: Option<String>,
        /// local: one location. zone: every write also goes to --replica, a point is
        /// visible only once both locations hold it, and reads fall back to the other one
        /// (Azure's zone-redundant storage, on storage you own).
        #[arg(long, value_name = "local|zone")]
        redundancy: Option<String>,
        /// The second location of a zone-redundant vault (a directory or a URL).
        #[arg(long, value_name = "URL")]
        replica: Option<String>,
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
    /// Copy a geo-redundant vault's new recovery points to its replica now (backups do it
    /// after they end, scheduler ticks catch up), and remove there what the vault no longer
    /// holds.
    Replicate {
        /// Vault name.
        name: String,
    },
    /// A vault's stored size over the last 90 days, its growth, and when its file system
    /// would be full at that growth.
    Trend {
        /// Vault name.
        name: String,
    },
    /// Register an existing vault directory and rebuild its items and recovery points.
    Attach {
        /// Name to give it in this home.
        name: String,
        /// The vault's directory.
        #[arg(
            long,
            required_unless_present = "location",
            conflicts_with = "location"
        )]
        path: Option<PathBuf>,
        /// Where the vault lives instead: a directory, file:///DIR, s3://BUCKET/PREFIX or
        /// azblob://ACCOUNT/CONTAINER/PREFIX (see `vault create --help` for credentials).
        #[arg(long, value_name = "URL")]
        location: Option<String>,
        /// Open the vault with a recovery kit (`vault key export`) instead of its passphrase
        /// or key file: the vault's storage and the kit alone rebuild a home.
        #[arg(long, value_name = "FILE")]
        recovery_kit: Option<PathBuf>,
        /// The passphrase sealing the kit (default: --passphrase-file / KURA_PASSPHRASE).
        #[arg(long, value_name = "FILE")]
        kit_passphrase_file: Option<PathBuf>,
    },
    /// Forget a vault in this home (its items and recovery points leave the catalog); its
    /// storage is untouched and can be attached again.
    Detach {
        /// Vault name.
        name: String,
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
        /// local, zone or geo (with --replica): only until the first item is protected.
        #[arg(long, value_name = "local|zone|geo")]
        redundancy: Option<String>,
        /// The second location for zone or geo; it must be empty.
        #[arg(long, value_name = "URL", requires = "redundancy")]
        replica: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCmd {
    /// Write a recovery kit: the vault's key, sealed under a passphrase you choose (or in the
    /// clear with --plain), with a printable form. Keep it away from this machine: with the
    /// vault's storage it restores everything (`vault attach --recovery-kit`).
    Export {
        /// Vault name.
        name: String,
        /// Output file (written with mode 0600).
        #[arg(long)]
        to: PathBuf,
        /// The passphrase that seals the kit (default: --passphrase-file / KURA_PASSPHRASE).
        #[arg(long, value_name = "FILE")]
        kit_passphrase_file: Option<PathBuf>,
        /// Write the key in the clear (anyone with the file can read every backup).
        #[arg(long, conflicts_with = "kit_passphrase_file")]
        plain: bool,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Re-wrap the vault's key under a new passphrase or key file; nothing else is rewritten.
    Change {
        /// Vault name.
        name: String,
        /// File holding the new passphrase.
        #[arg(long, value_name = "FILE", conflicts_with = "new_key_file")]
        new_passphrase_file: Option<PathBuf>,
        /// The new key file (32 bytes or more, e.g. made by another vault create).
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
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
    /// Move a protected item to another policy of its vault; its schedule starts again from
    /// now and retention applies the new policy's rules from its next run.
    SetPolicy {
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
    /// Check, touching nothing, whether a backup of the item could run now.
    Precheck {
        /// Item name.
        item: String,
    },
    /// Change how an item's image is opened: pin a new format, or accept its current backing
    /// chain (after a block commit or rebase). Backups never change it by themselves.
    SetFormat {
        /// Item name.
        item: String,
        /// The format (raw, qcow2, ...); without it, probed now and shown.
        #[arg(long)]
        format: Option<String>,
    },
    /// Set how a VM item uses its guest agent: the settings become exactly the ones given
    /// (an option left out is cleared).
    SetAgent {
        /// Item name.
        item: String,
        /// The guest agent's socket (plain QEMU VMs; libvirt reaches a domain's agent itself).
        #[arg(long, value_name = "SOCKET")]
        qga: Option<PathBuf>,
        /// Fail backups while the agent is Not Ready.
        #[arg(long)]
        require_agent: bool,
        /// Script run inside the guest before the freeze.
        #[arg(long, value_name = "GUEST_PATH")]
        pre_script: Option<String>,
        /// Script run inside the guest after the thaw.
        #[arg(long, value_name = "GUEST_PATH")]
        post_script: Option<String>,
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
        /// The image's format (raw, qcow2, vmdk, vdi, vhdx, vpc, qed). Without it, the format
        /// is probed once now and shown; backups never probe again, so bytes a guest writes
        /// into its disk cannot change how kura opens it.
        #[arg(long)]
        format: Option<String>,
    },
    /// Protect a directory tree (a file share): incrementals read only files whose size,
    /// times or inode changed; modes, owners, times, links, hard links, xattrs and ACLs
    /// are kept.
    Files {
        /// The directory.
        dir: PathBuf,
        /// Vault to back up into.
        #[arg(long)]
        vault: String,
        /// Item name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
        /// Policy of the vault that schedules its backups (default DefaultPolicy).
        #[arg(long)]
        policy: Option<String>,
        /// Leave out what this pattern matches (repeatable): a pattern without `/` matches
        /// a name anywhere (`*.tmp`, `.cache`), one with `/` a path from the directory
        /// (`/scratch`, `home/*/Downloads`).
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
        /// How each backup captures the tree: `none` reads it live (crash-consistent, each
        /// file as it is when read); `btrfs` reads a read-only snapshot of it taken first
        /// and deleted after (the directory must be a btrfs subvolume; file-system
        /// consistent).
        #[arg(long, value_name = "none|btrfs", default_value = "none")]
        snapshot: String,
    },
    /// Protect a running QEMU VM through its QMP monitor socket: all disks at one instant,
    /// read while the VM runs; with its guest agent (--qga), frozen for file-system or
    /// application consistency.
    #[command(group(clap::ArgGroup::new("how").required(true).args(["qmp", "libvirt"])))]
    Vm {
        /// The VM's QMP socket (`-qmp unix:PATH,server=on,wait=off`).
        #[arg(long)]
        qmp: Option<PathBuf>,
        /// A libvirt domain (its disks from the domain XML, QMP and the agent through
        /// libvirt).
        #[arg(long, value_name = "DOMAIN")]
        libvirt: Option<String>,
        /// The libvirt connection URI (default qemu:///system).
        #[arg(long, value_name = "URI", requires = "libvirt")]
        connect: Option<String>,
        /// Vault to back up into.
        #[arg(long)]
        vault: String,
        /// Item name (default: the socket's file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// Policy of the vault that schedules its backups (default DefaultPolicy).
        #[arg(long)]
        policy: Option<String>,
        /// A disk not to back up, by name (repeatable), e.g. a scratch disk.
        #[arg(long = "exclude-disk", value_name = "NAME")]
        exclude_disk: Vec<String>,
        /// The guest agent's socket (`-chardev socket,path=PATH,server=on,wait=off` on a
        /// virtserialport named org.qemu.guest_agent.0).
        #[arg(long, value_name = "SOCKET")]
        qga: Option<PathBuf>,
        /// Fail backups while the agent is Not Ready, instead of taking crash-consistent
        /// points with a warning.
        #[arg(long)]
        require_agent: bool,
        /// Script run inside the guest before the freeze (default /etc/kura/pre-backup when
        /// the guest has it).
        #[arg(long, value_name = "GUEST_PATH")]
        pre_script: Option<String>,
        /// Script run inside the guest after the thaw (default /etc/kura/post-backup when the
        /// guest has it).
        #[arg(long, value_name = "GUEST_PATH")]
        post_script: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BackupCmd {
    /// Back an item up now.
    Now {
        /// Item name.
        item: String,
        /// Keep the recovery point until this date (YYYY-MM-DD).
        #[arg(long, value_name = "YYYY-MM-DD")]
        retain_until: Option<String>,
        /// Testing only: fail after storing this many chunks.
        #[cfg(feature = "test-hooks")]
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
    /// Show a recovery point: its disks, consistency, retention and (VMs) definition.
    Show {
        /// Item name.
        item: String,
        /// Recovery point: its id, the short id `rp list` shows, a unique prefix, or `latest`.
        #[arg(long, default_value = "latest")]
        rp: String,
    },
}

/// Which disk and volume of a point to read files from.
#[derive(Debug, clap::Args)]
struct PointFs {
    /// Recovery point: its id, the short id `rp list` shows, a unique prefix, or `latest`.
    #[arg(long, default_value = "latest")]
    rp: String,
    /// Which disk, when the point has several.
    #[arg(long)]
    disk: Option<String>,
    /// Which volume (partition number from `files volumes`; 0 for a disk without a
    /// partition table), when the disk has several readable ones.
    #[arg(long)]
    volume: Option<u32>,
    /// Read the point from the vault's replica (cross-region restore, when its primary
    /// location is down).
    #[arg(long)]
    from_replica: bool,
}

#[derive(Debug, Subcommand)]
enum FilesCmd {
    /// The partitions of a point's disk and the file system each holds.
    Volumes {
        /// Item name.
        item: String,
        /// Recovery point (default: the latest).
        #[arg(long, default_value = "latest")]
        rp: String,
        /// Which disk, when the point has several.
        #[arg(long)]
        disk: Option<String>,
    },
    /// List a directory of a point (or show one file).
    Ls {
        /// Item name.
        item: String,
        /// Path inside the file system.
        #[arg(default_value = "/")]
        path: String,
        #[command(flatten)]
        point: PointFs,
    },
    /// Restore files and directories of a point into an existing directory, each under its
    /// own name; existing files are skipped unless --overwrite.
    Get {
        /// Item name.
        item: String,
        /// Paths inside the file system (`/` for everything).
        #[arg(required = true)]
        paths: Vec<String>,
        /// An existing directory.
        #[arg(long)]
        to: PathBuf,
        /// Replace files and links that exist.
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        point: PointFs,
    },
}

#[derive(Debug, Subcommand)]
enum RestoreCmd {
    /// Restore a file item's tree, or chosen files and folders of it, into a directory or
    /// where they were (Azure's file share restore); existing files are skipped unless
    /// --overwrite.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["to", "original"])))]
    Files {
        /// Item name.
        item: String,
        /// Recovery point: its id, the short id `rp list` shows, a unique prefix, or `latest`.
        #[arg(long)]
        rp: String,
        /// A file or folder of the tree, as `/sub/dir` from its root (repeatable; default:
        /// the whole tree).
        #[arg(long = "path", value_name = "P")]
        paths: Vec<String>,
        /// An existing directory to restore into, each path under its own name.
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// Back where they were in the protected directory.
        #[arg(long)]
        original: bool,
        /// Replace files and links that exist.
        #[arg(long)]
        overwrite: bool,
        /// Read the point from the vault's replica (cross-region restore, when its primary
        /// location is down).
        #[arg(long)]
        from_replica: bool,
    },
    /// Restore a disk to a new image file.
    Disk {
        /// Item name.
        item: String,
        /// Recovery point: its id, the short id `rp list` shows, a unique prefix, or `latest`.
        #[arg(long)]
        rp: String,
        /// Target file.
        #[arg(long)]
        to: PathBuf,
        /// Image format of the target; by default the one its name says (.qcow2: qcow2,
        /// anything else: raw).
        #[arg(long = "image-format", alias = "format", value_enum)]
        format: Option<FormatArg>,
        /// Replace an existing target.
        #[arg(long)]
        force: bool,
        /// Which disk, when the recovery point has several.
        #[arg(long)]
        disk: Option<String>,
        /// Write a disk that was encrypted at the source (a VM's LUKS qcow2) decrypted;
        /// by default it is written as qcow2 with LUKS and the same passphrase.
        #[arg(long)]
        decrypt: bool,
        /// Read the point from the vault's replica (cross-region restore, when its primary
        /// location is down).
        #[arg(long)]
        from_replica: bool,
    },
    /// Restore all (or some) disks of a recovery point into a directory, one file per disk
    /// named after it (DIR/NAME.raw or .qcow2).
    Disks {
        /// Item name.
        item: String,
        /// Recovery point: its id, the short id `rp list` shows, a unique prefix, or `latest`.
        #[arg(long)]
        rp: String,
        /// An existing directory.
        #[arg(long)]
        to: PathBuf,
        /// Only this disk (repeatable).
        #[arg(long = "disk", value_name = "NAME")]
        disks: Vec<String>,
        /// Image format of the files (NAME.raw or NAME.qcow2).
        #[arg(long = "image-format", alias = "format", value_enum, default_value_t = FormatArg::Raw)]
        format: FormatArg,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        /// Write disks that were encrypted at the source decrypted.
        #[arg(long)]
        decrypt: bool,
        /// Read the point from the vault's replica (cross-region restore, when its primary
        /// location is down).
        #[arg(long)]
        from_replica: bool,
    },
    /// Restore a VM point as a new VM (its disks and a start script with a new name, UUID
    /// and MAC addresses) or over the existing VM's disks (kept as safety copies).
    #[command(group(clap::ArgGroup::new("mode").required(true).args(["as_new", "replace"])))]
    Vm {
        /// Item name.
        item: String,
        /// Recovery point: its id, the short id `rp list` shows, a unique prefix, or `latest`.
        #[arg(long)]
        rp: String,
        /// Make a new VM of this name.
        #[arg(long, value_name = "NEWNAME", requires = "to")]
        as_new: Option<String>,
        /// Directory for the new VM's disks, start script, sockets and logs.
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// Start the new VM once restored.
        #[arg(long, requires = "as_new")]
        start: bool,
        /// Replace the disks of the existing VM in place (it must be shut off).
        #[arg(long)]
        replace: bool,
        /// With --replace: shut the VM down first (through its agent, else ACPI) and wait.
        #[arg(long, requires = "replace")]
        stop: bool,
        /// Read the point from the vault's replica (cross-region restore, when its primary
        /// location is down).
        #[arg(long)]
        from_replica: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Raw,
    Qcow2,
}

impl FormatArg {
    fn restore_format(self) -> RestoreFormat {
        match self {
            FormatArg::Raw => RestoreFormat::Raw,
            FormatArg::Qcow2 => RestoreFormat::Qcow2,
        }
    }
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
        /// Only jobs of this item (or vault, for gc).
        #[arg(long)]
        item: Option<String>,
        /// Only jobs with this status (Queued, InProgress, Completed, CompletedWithWarnings,
        /// Failed, Cancelling, Cancelled; any case).
        #[arg(long)]
        status: Option<String>,
        /// Only jobs of this operation (Backup, Restore, RestoreDisks, RestoreVm, Verify,
        /// GarbageCollect, DeleteExpiredPoints, ...; any case).
        #[arg(long)]
        operation: Option<String>,
        /// Only jobs started at or after this instant (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long, value_name = "INSTANT")]
        since: Option<String>,
    },
    /// One job, with its log.
    Show {
        /// Job: its id, the short id `job list` shows, or a unique prefix.
        id: String,
        /// Show live progress and new log lines until the job ends, then the job.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Cancel a running job, in any phase; it ends Cancelled and keeps nothing incomplete.
    Cancel {
        /// Job: its id, the short id `job list` shows, or a unique prefix.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Make a named token; its secret is printed this once (only a hash is kept).
    Create {
        /// Token name (letters, digits, '-', '_', '.').
        name: String,
        /// When it stops being accepted: a date (2027-01-31, start of that day, local
        /// time) or an instant (2027-01-31T12:00:00Z).
        #[arg(long, value_name = "DATE")]
        expires: Option<String>,
    },
    /// Tokens with their creation, expiry and last use.
    List,
    /// Revoke a token: requests with it are refused from now on.
    Revoke {
        /// Token name.
        name: String,
    },
    /// Give a token a new secret (made if missing); the old secret stops working. `kura
    /// token reset admin` on the server's host is how to recover a lost admin token.
    Reset {
        /// Token name.
        name: String,
        /// New expiry (default: none).
        #[arg(long, value_name = "DATE")]
        expires: Option<String>,
    },
}

/// Exit codes: 0 success, 1 error, 2 usage error, 3 verify found damaged data.
const EXIT_ERROR: u8 = 1;
pub(crate) const EXIT_DAMAGED: u8 = 3;

fn main() -> ExitCode {
    // Everything kura creates (home, catalog, vault objects, keys, snapshots, restored
    // disks) holds backup data or secrets: private to the user running kura.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = parse_cli();
    let out = Out::new(cli.output == Format::Json);
    if let Err(e) = views::set_zone(cli.tz.as_deref()) {
        out.error(&e);
        return ExitCode::from(EXIT_ERROR);
    }
    match run(&cli, &out) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            out.error(&e);
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Parses the command line. `kura server --help` lists only what applies to the server:
/// the global options about output and the remote transport are hidden there.
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command();
    // Built first, so the global options have reached the subcommands; edited in place,
    // so the built lookup tables stay valid.
    cmd.build();
    let cmd = cmd.mut_subcommand("server", |sc| {
        sc.mut_args(|a| {
            let client_only = ["output", "tz", "server", "token", "token_file", "ca_file"]
                .contains(&a.get_id().as_str());
            if client_only { a.hide(true) } else { a }
        })
    });
    let matches = cmd.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
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
    secrets_from(
        cli.passphrase_file.as_deref(),
        cli.key_file.clone(),
        &vault_passphrase_files(cli)?,
    )
}

/// The `--vault-passphrase-file NAME=FILE` options as a map.
fn vault_passphrase_files(
    cli: &Cli,
) -> anyhow::Result<std::collections::BTreeMap<String, PathBuf>> {
    let mut files = std::collections::BTreeMap::new();
    for spec in &cli.vault_passphrase_file {
        let (name, file) = spec
            .split_once('=')
            .filter(|(n, f)| !n.is_empty() && !f.is_empty())
            .with_context(|| format!("--vault-passphrase-file {spec:?}: give it as NAME=FILE"))?;
        files.insert(name.to_string(), PathBuf::from(file));
    }
    Ok(files)
}

/// Reads the secrets: the passphrase file (else `KURA_PASSPHRASE`), the key file, and one
/// passphrase file per vault.
fn secrets_from(
    passphrase_file: Option<&Path>,
    key_file: Option<PathBuf>,
    vault_files: &std::collections::BTreeMap<String, PathBuf>,
) -> anyhow::Result<Secrets> {
    let passphrase = match (passphrase_file, std::env::var("KURA_PASSPHRASE")) {
        (Some(f), _) => Some(read_passphrase_file(f)?),
        (None, Ok(p)) if !p.is_empty() => Some(Zeroizing::new(p)),
        _ => None,
    };
    let mut vault_passphrases = std::collections::BTreeMap::new();
    for (name, file) in vault_files {
        vault_passphrases.insert(name.clone(), read_passphrase_file(file)?);
    }
    Ok(Secrets {
        passphrase,
        key_file,
        vault_passphrases,
        ..Default::default()
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
    if let Command::Server(args) = &cli.command {
        return server::start(cli, args);
    }
    let mut host = HostOptions {
        fast_kdf: kura_engine::fast_kdf_for_tests(),
        ..Default::default()
    };
    let request = request(&cli.command, &mut host)?;
    if let Some(url) = &cli.server {
        let Some(request) = request else {
            anyhow::bail!(
                "this command runs on the server's host only (quickstart, server, scheduler, export, vault key export/change, vault detach); run it there without --server"
            );
        };
        let given = host.given();
        if !given.is_empty() {
            anyhow::bail!(
                "{} only work(s) on the server's host; run the command there without --server",
                given.join(", ")
            );
        }
        let client = remote::Client::new(url, &token(cli)?, cli.ca_file.as_deref(), *out)?;
        return execute(&client, &request, out);
    }
    let home_dir = cli.home.clone().unwrap_or_else(default_home);
    let home = match test_clock()? {
        Some(clock) => Home::open_with(&home_dir, clock, jiff::tz::TimeZone::system())?,
        None => Home::open(&home_dir)?,
    };
    let secrets = secrets(cli)?;
    match request {
        Some(request) => {
            let local = transport::Local {
                home: &home,
                secrets: &secrets,
                out,
                host: &host,
            };
            execute(&local, &request, out)
        }
        None => host_only(&home, &cli.command, secrets, out),
    }
}

/// The API token for `--server`: `--token-file`, else `--token` / `KURA_TOKEN`.
fn token(cli: &Cli) -> anyhow::Result<String> {
    let from_file = match &cli.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("--token-file {}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        None => None,
    };
    from_file
        .or_else(|| cli.token.clone())
        .filter(|t| !t.is_empty())
        .context("--server needs a token: --token-file FILE or KURA_TOKEN (or --token)")
}

/// What a command asks for, and how its answer is shown.
struct Request {
    call: api::Call,
    view: views::View,
    /// The exit code for a successful answer.
    exit: fn(&serde_json::Value) -> u8,
    /// `job show --follow`: poll the job until it ends.
    follow: bool,
}

/// Sends the command's call through `t` and prints the answer.
fn execute(t: &dyn Transport, r: &Request, out: &Out) -> anyhow::Result<u8> {
    let mut answer = t.send(&r.call)?;
    if r.follow {
        let id = answer["id"]
            .as_str()
            .context("the job has no id")?
            .to_string();
        answer = output::follow(out, true, || t.send(&api::Call::GetJob { job: id.clone() }))?;
    }
    out.view(&answer, r.view);
    Ok((r.exit)(&answer))
}

/// A location as given, with a relative directory made absolute here (it is this
/// command's directory, not a server's).
fn abs_location(l: &str) -> String {
    if l.contains("://") {
        return l.to_string();
    }
    std::path::absolute(l).map_or(l.to_string(), |p| p.display().to_string())
}

/// A path given on the command line, absolute (a server does not share the CLI's working
/// directory), as the API's UTF-8 text.
fn abs(p: impl AsRef<Path>) -> anyhow::Result<String> {
    let p = std::path::absolute(p.as_ref())?;
    p.to_str()
        .map(str::to_string)
        .with_context(|| format!("{}: the API takes UTF-8 paths", p.display()))
}

fn zero(_: &serde_json::Value) -> u8 {
    0
}

/// The API call a command makes (`None`: it runs on the home's host only), with the host-only
/// options it carries put in `host`.
#[allow(clippy::too_many_lines)]
fn request(cmd: &Command, host: &mut HostOptions) -> anyhow::Result<Option<Request>> {
    use api::Call as C;
    let opt_abs = |p: &Option<PathBuf>| p.as_deref().map(abs).transpose();
    // A vault's --path is a directory: a URL there would become a folder named "s3:".
    let dir_abs = |p: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
        if let Some(url) = p
            .as_deref()
            .and_then(Path::to_str)
            .filter(|s| s.contains("://"))
        {
            return Err(transport::invalid(format!(
                "--path {url:?} is a URL, not a directory: give it with --location"
            )));
        }
        opt_abs(p)
    };
    // Checked here so that the message names the flag, not the API's field.
    let at = |at: &Option<String>| -> anyhow::Result<api::At> {
        if let Some(a) = at {
            a.parse::<jiff::Timestamp>().map_err(|e| {
                transport::invalid(format!("--at {a:?} is not an RFC 3339 instant: {e}"))
            })?;
        }
        Ok(api::At { at: at.clone() })
    };
    let (call, view): (C, views::View) = match cmd {
        Command::Vault(VaultCmd::List) => (C::ListVaults, views::vault_list),
        Command::Vault(VaultCmd::Show { name }) => (
            C::GetVault {
                vault: name.clone(),
            },
            views::vault_show,
        ),
        Command::Vault(VaultCmd::Replicate { name }) => (
            C::Replicate {
                vault: name.clone(),
            },
            views::replicated,
        ),
        Command::Vault(VaultCmd::Trend { name }) => (
            C::VaultTrend {
                vault: name.clone(),
            },
            views::vault_trend,
        ),
        Command::Vault(VaultCmd::Create {
            name,
            path,
            location,
            redundancy,
            replica,
            chunk_size,
            no_encryption,
            cipher,
            compression_level,
        }) => {
            host.cipher = cipher.map(|c| match c {
                CipherArg::Aes256Gcm => kura_store::Cipher::Aes256Gcm,
                CipherArg::Chacha20Poly1305 => kura_store::Cipher::Chacha20Poly1305,
            });
            host.compression_level = *compression_level;
            (
                C::CreateVault(api::NewVault {
                    name: name.clone(),
                    path: dir_abs(path)?,
                    location: location.as_deref().map(abs_location),
                    redundancy: redundancy.clone(),
                    replica: replica.as_deref().map(abs_location),
                    chunk_size: chunk_size.as_deref().map(parse_size).transpose()?,
                    no_encryption: *no_encryption,
                }),
                views::vault_show,
            )
        }
        Command::Vault(VaultCmd::Set {
            name,
            soft_delete,
            soft_delete_days,
            redundancy,
            replica,
        }) => (
            C::UpdateVault {
                vault: name.clone(),
                body: api::VaultSettings {
                    soft_delete: soft_delete.clone(),
                    soft_delete_days: *soft_delete_days,
                    redundancy: redundancy.clone(),
                    replica: replica.as_deref().map(abs_location),
                },
            },
            views::vault_show,
        ),
        Command::Vault(VaultCmd::Attach {
            name,
            path,
            location,
            recovery_kit,
            kit_passphrase_file,
        }) => {
            host.recovery_kit.clone_from(recovery_kit);
            host.kit_passphrase = kit_passphrase_file
                .as_deref()
                .map(read_passphrase_file)
                .transpose()?;
            (
                C::AttachVault(api::Attach {
                    name: name.clone(),
                    path: dir_abs(path)?,
                    location: location.as_deref().map(abs_location),
                    key_file: None,
                }),
                views::attached,
            )
        }
        Command::Vault(VaultCmd::Detach { .. } | VaultCmd::Key(_))
        | Command::Scheduler(_)
        | Command::Export(_)
        | Command::Mount { .. }
        | Command::Server(_)
        | Command::Quickstart(_) => return Ok(None),
        Command::Item(ItemCmd::Protect(ProtectCmd::Disk {
            image,
            vault,
            name,
            policy,
            format,
        })) => (
            C::Protect(Box::new(api::Protect {
                kind: "disk".into(),
                source: Some(abs(image)?),
                vault: vault.clone(),
                name: name.clone(),
                policy: policy.clone(),
                format: format.clone(),
                ..Default::default()
            })),
            views::protected,
        ),
        Command::Item(ItemCmd::Protect(ProtectCmd::Files {
            dir,
            vault,
            name,
            policy,
            exclude,
            snapshot,
        })) => (
            C::Protect(Box::new(api::Protect {
                kind: "files".into(),
                source: Some(abs(dir)?),
                vault: vault.clone(),
                name: name.clone(),
                policy: policy.clone(),
                exclude: exclude.clone(),
                snapshot: (snapshot != "none").then(|| snapshot.clone()),
                ..Default::default()
            })),
            views::protected,
        ),
        Command::Item(ItemCmd::Protect(ProtectCmd::Vm {
            qmp,
            libvirt,
            connect,
            vault,
            name,
            policy,
            exclude_disk,
            qga,
            require_agent,
            pre_script,
            post_script,
        })) => (
            C::Protect(Box::new(api::Protect {
                kind: "vm".into(),
                source: opt_abs(qmp)?,
                libvirt: libvirt.as_ref().map(|d| api::LibvirtDomain {
                    name: d.clone(),
                    uri: connect.clone(),
                }),
                vault: vault.clone(),
                name: name.clone(),
                policy: policy.clone(),
                format: None,
                exclude_disks: exclude_disk.clone(),
                qga: opt_abs(qga)?,
                require_agent: *require_agent,
                pre_script: pre_script.clone(),
                post_script: post_script.clone(),
                exclude: Vec::new(),
                snapshot: None,
            })),
            views::protected,
        ),
        Command::Item(ItemCmd::List) => (C::ListItems, views::item_list),
        Command::Item(ItemCmd::Show { item }) => {
            (C::GetItem { item: item.clone() }, views::item_status)
        }
        Command::Item(ItemCmd::Stop { item, delete_data }) => (
            C::StopProtection {
                item: item.clone(),
                body: api::Stop {
                    delete_data: *delete_data,
                },
            },
            views::item_status,
        ),
        Command::Item(ItemCmd::Resume { item, policy }) => (
            C::ResumeProtection {
                item: item.clone(),
                body: api::Resume {
                    policy: policy.clone(),
                },
            },
            views::item_status,
        ),
        Command::Item(ItemCmd::SetPolicy { item, policy }) => (
            C::SetPolicy {
                item: item.clone(),
                body: api::SetPolicy {
                    policy: policy.clone(),
                },
            },
            views::item_status,
        ),
        Command::Item(ItemCmd::Undelete { item }) => {
            (C::Undelete { item: item.clone() }, views::item_status)
        }
        Command::Item(ItemCmd::Precheck { item }) => {
            return Ok(Some(Request {
                call: C::Precheck { item: item.clone() },
                view: views::precheck,
                exit: |r| if r["ready"] == true { 0 } else { EXIT_ERROR },
                follow: false,
            }));
        }
        Command::Item(ItemCmd::SetFormat { item, format }) => (
            C::SetFormat {
                item: item.clone(),
                body: api::SetFormat {
                    format: format.clone(),
                },
            },
            views::item_status,
        ),
        Command::Item(ItemCmd::SetAgent {
            item,
            qga,
            require_agent,
            pre_script,
            post_script,
        }) => (
            C::SetAgent {
                item: item.clone(),
                body: api::SetAgent {
                    qga: opt_abs(qga)?,
                    require_agent: *require_agent,
                    pre_script: pre_script.clone(),
                    post_script: post_script.clone(),
                },
            },
            views::item_status,
        ),
        Command::Backup(
            now @ BackupCmd::Now {
                item, retain_until, ..
            },
        ) => {
            host.fail_after_chunks = now.fail_after_chunks();
            if let Some(d) = retain_until {
                d.parse::<jiff::civil::Date>().map_err(|e| {
                    transport::invalid(format!(
                        "--retain-until {d:?} is not a date in YYYY-MM-DD form: {e}"
                    ))
                })?;
            }
            (
                C::BackupNow {
                    item: item.clone(),
                    body: api::BackupNow {
                        retain_until: retain_until.clone(),
                    },
                },
                views::backup,
            )
        }
        Command::Files(FilesCmd::Volumes { item, rp, disk }) => (
            C::ListVolumes {
                item: item.clone(),
                rp: rp.clone(),
                query: api::DiskQuery { disk: disk.clone() },
            },
            views::volumes,
        ),
        Command::Files(FilesCmd::Ls { item, path, point }) => (
            C::ListFiles {
                item: item.clone(),
                rp: point.rp.clone(),
                query: api::FilesQuery {
                    path: Some(path.clone()),
                    disk: point.disk.clone(),
                    volume: point.volume,
                    archive: None,
                    from_replica: point.from_replica.then_some(true),
                },
            },
            views::file_listing,
        ),
        Command::Files(FilesCmd::Get {
            item,
            paths,
            to,
            overwrite,
            point,
        }) => (
            C::RestoreFiles {
                item: item.clone(),
                body: api::RestoreFiles {
                    rp: point.rp.clone(),
                    paths: paths.clone(),
                    to: abs(to)?,
                    original: false,
                    disk: point.disk.clone(),
                    volume: point.volume,
                    overwrite: *overwrite,
                    from_replica: point.from_replica,
                },
            },
            views::restore_files,
        ),
        Command::Rp(RpCmd::List { item }) => {
            (C::ListRecoveryPoints { item: item.clone() }, views::rp_list)
        }
        Command::Rp(RpCmd::Show { item, rp }) => (
            C::GetRecoveryPoint {
                item: item.clone(),
                rp: rp.clone(),
            },
            views::rp_show,
        ),
        Command::Restore(RestoreCmd::Files {
            item,
            rp,
            paths,
            to,
            original,
            overwrite,
            from_replica,
        }) => (
            C::RestoreFiles {
                item: item.clone(),
                body: api::RestoreFiles {
                    rp: rp.clone(),
                    paths: if paths.is_empty() {
                        vec!["/".into()]
                    } else {
                        paths.clone()
                    },
                    to: to.as_deref().map(abs).transpose()?.unwrap_or_default(),
                    original: *original,
                    disk: None,
                    volume: None,
                    overwrite: *overwrite,
                    from_replica: *from_replica,
                },
            },
            views::restore_files,
        ),
        Command::Restore(RestoreCmd::Disk {
            item,
            rp,
            to,
            format,
            force,
            disk,
            decrypt,
            from_replica,
        }) => (
            C::Restore {
                item: item.clone(),
                body: api::Restore {
                    rp: rp.clone(),
                    to: abs(to)?,
                    format: format.map(|f| f.restore_format().name().to_string()),
                    force: *force,
                    disk: disk.clone(),
                    decrypt: *decrypt,
                    from_replica: *from_replica,
                },
            },
            views::restore,
        ),
        Command::Restore(RestoreCmd::Disks {
            item,
            rp,
            to,
            disks,
            format,
            force,
            decrypt,
            from_replica,
        }) => (
            C::RestoreDisks {
                item: item.clone(),
                body: api::RestoreDisks {
                    rp: rp.clone(),
                    to: abs(to)?,
                    disks: disks.clone(),
                    format: Some(format.restore_format().name().to_string()),
                    force: *force,
                    decrypt: *decrypt,
                    from_replica: *from_replica,
                },
            },
            views::restore_disks,
        ),
        Command::Restore(RestoreCmd::Vm {
            item,
            rp,
            as_new,
            to,
            start,
            replace,
            stop,
            from_replica,
        }) => (
            C::RestoreVm {
                item: item.clone(),
                body: api::RestoreVm {
                    rp: rp.clone(),
                    as_new: as_new.clone(),
                    to: opt_abs(to)?,
                    start: *start,
                    replace: *replace,
                    stop: *stop,
                    from_replica: *from_replica,
                },
            },
            views::restore_vm,
        ),
        Command::Verify(v) => {
            return Ok(Some(Request {
                call: C::Verify(api::Verify {
                    vault: v.vault.clone(),
                    item: v.item.clone(),
                    rp: v.rp.clone(),
                }),
                view: views::verify,
                exit: |r| {
                    let damaged = r["problems"].as_array().is_some_and(|p| !p.is_empty());
                    if damaged { EXIT_DAMAGED } else { 0 }
                },
                follow: false,
            }));
        }
        Command::Job(JobCmd::List {
            limit,
            item,
            status,
            operation,
            since,
        }) => (
            C::ListJobs(api::JobFilter {
                limit: Some(*limit),
                item: item.clone(),
                status: status.clone(),
                operation: operation.clone(),
                since: since.clone(),
            }),
            views::job_list,
        ),
        Command::Job(JobCmd::Show { id, follow }) => {
            return Ok(Some(Request {
                call: C::GetJob { job: id.clone() },
                view: views::job_show,
                exit: zero,
                follow: *follow,
            }));
        }
        Command::Job(JobCmd::Cancel { id }) => {
            (C::CancelJob { job: id.clone() }, views::job_status)
        }
        Command::Policy(p) => policy_cmd::call(p)?,
        Command::Retention(policy_cmd::RetentionCmd::Plan { item, at: at_given }) => (
            C::RetentionPlan {
                item: item.clone(),
                query: at(at_given)?,
            },
            |v| views::retention(v, false),
        ),
        Command::Retention(policy_cmd::RetentionCmd::Apply { item, at: at_given }) => (
            C::ApplyRetention {
                item: item.clone(),
                body: at(at_given)?,
            },
            |v| views::retention(v, true),
        ),
        Command::Usage { vault } => (
            C::Usage(api::UsageFilter {
                vault: vault.clone(),
            }),
            views::usage,
        ),
        Command::Gc {
            vault,
            grace,
            dry_run,
        } => (
            C::Gc {
                vault: vault.clone(),
                body: api::Gc {
                    grace_seconds: Some(*grace),
                    dry_run: *dry_run,
                },
            },
            views::gc,
        ),
        Command::Token(cmd) => match cmd {
            TokenCmd::Create { name, expires } => (
                C::CreateToken(api::NewTokenRequest {
                    name: name.clone(),
                    expires: expires.clone(),
                }),
                views::new_token,
            ),
            TokenCmd::List => (C::ListTokens, views::token_list),
            TokenCmd::Revoke { name } => {
                (C::RevokeToken { name: name.clone() }, views::token_revoked)
            }
            TokenCmd::Reset { name, expires } => (
                C::ResetToken {
                    name: name.clone(),
                    body: api::ResetToken {
                        expires: expires.clone(),
                    },
                },
                views::new_token,
            ),
        },
    };
    Ok(Some(Request {
        call,
        view,
        exit: zero,
        follow: false,
    }))
}

/// The commands that work on the home's host only: they handle secrets or the service itself.
fn host_only(home: &Home, cmd: &Command, secrets: Secrets, out: &Out) -> anyhow::Result<u8> {
    match cmd {
        Command::Vault(VaultCmd::Detach { name }) => {
            home.detach_vault(name)?;
            let doc = serde_json::json!({"vault": name, "detached": true});
            out.print(&doc, || {
                format!("detached vault {name}; its storage is untouched (attach it again with `kura vault attach`)\n")
            });
            Ok(0)
        }
        Command::Vault(VaultCmd::Key(KeyCmd::Export {
            name,
            to,
            kit_passphrase_file,
            plain,
            force,
        })) => {
            let mut secrets = secrets;
            if let Some(f) = kit_passphrase_file {
                secrets.kit_passphrase = Some(read_passphrase_file(f)?);
            }
            let r = home.export_recovery_kit(name, to, *plain, *force, &secrets)?;
            out.view(&r, views::kit_exported);
            Ok(0)
        }
        Command::Vault(VaultCmd::Key(KeyCmd::Change {
            name,
            new_passphrase_file,
            new_key_file,
        })) => {
            let new = kura_engine::NewKey {
                passphrase: new_passphrase_file
                    .as_deref()
                    .map(read_passphrase_file)
                    .transpose()?,
                key_file: new_key_file.clone(),
            };
            let v = api::Vault::from(home.change_vault_key(name, &new, &secrets)?);
            out.view(&v, views::vault_show);
            Ok(0)
        }
        Command::Scheduler(cmd) => policy_cmd::run_scheduler(home, cmd, secrets, out),
        Command::Export(cmd) => export::run(home, cmd, &secrets, out),
        Command::Mount {
            item,
            mountpoint,
            rp,
            disk,
            volume,
            from_replica,
        } => export::mount(
            home,
            item,
            mountpoint,
            &kura_engine::FilesTarget {
                rp: rp.clone(),
                disk: disk.clone(),
                volume: *volume,
                from_replica: *from_replica,
            },
            &secrets,
            out,
        ),
        _ => unreachable!("every other command is an API call"),
    }
}

/// The wrong fields an error names (path, message), as the API reports them.
fn error_fields(e: &anyhow::Error) -> Vec<(String, String)> {
    if let Some(f) = e.downcast_ref::<remote::ApiFailure>() {
        return f.fields.clone();
    }
    e.downcast_ref::<kura_engine::Error>()
        .map(kura_engine::Error::fields)
        .unwrap_or_default()
}

/// Maps an error to a stable snake_case code.
fn error_code(e: &anyhow::Error) -> &str {
    if let Some(f) = e.downcast_ref::<remote::ApiFailure>() {
        return &f.code;
    }
    if let Some(kura_catalog::Error::NotFound { .. }) = e.downcast_ref::<kura_catalog::Error>() {
        return "not_found";
    }
    e.downcast_ref::<kura_engine::Error>()
        .map_or("error", |e| e.kind().code())
}

impl BackupCmd {
    /// The injected failure point (builds with the `test-hooks` feature only).
    pub(crate) fn fail_after_chunks(&self) -> Option<u64> {
        #[cfg(feature = "test-hooks")]
        {
            let BackupCmd::Now {
                fail_after_chunks, ..
            } = self;
            *fail_after_chunks
        }
        #[cfg(not(feature = "test-hooks"))]
        {
            let _ = self;
            None
        }
    }
}

/// A clock for tests that must not depend on when they run: only builds with the
/// `test-hooks` feature read `KURA_TEST_CLOCK=INSTANT@UNIX_SECONDS`, which makes "now" the
/// RFC 3339 `INSTANT` plus the real time elapsed since `UNIX_SECONDS` (so successive commands
/// still see time pass). A release binary always uses the system clock.
#[allow(clippy::unnecessary_wraps)]
fn test_clock() -> anyhow::Result<Option<std::sync::Arc<dyn kura_engine::Clock>>> {
    #[cfg(feature = "test-hooks")]
    if let Some(v) = std::env::var_os("KURA_TEST_CLOCK") {
        struct Shifted(jiff::SignedDuration);
        impl kura_engine::Clock for Shifted {
            fn now(&self) -> jiff::Timestamp {
                jiff::Timestamp::now() + self.0
            }
        }
        let v = v.to_string_lossy().into_owned();
        let (at, since) = v
            .split_once('@')
            .context("KURA_TEST_CLOCK: INSTANT@UNIX_SECONDS")?;
        let at: jiff::Timestamp = at.parse().context("KURA_TEST_CLOCK: the instant")?;
        let since =
            jiff::Timestamp::from_second(since.parse().context("KURA_TEST_CLOCK: the seconds")?)?;
        return Ok(Some(std::sync::Arc::new(Shifted(at.duration_since(since)))));
    }
    Ok(None)
}
