//! Response bodies. Times are RFC 3339 in UTC unless a field says otherwise; sizes are
//! bytes.

pub use kura_catalog::{
    HealthStatus, JobOperation, JobStatus, LastBackupStatus, ProtectionState, TaskStatus,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every error: a stable code and a message that names the field, item or file concerned.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Error {
    /// The error.
    pub error: ErrorBody,
}

/// The body of an [`Error`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// Stable code (`invalid`, `not_found`, `conflict`, `unauthorized`, ...).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The fields of the request that are wrong, each with its path in the body (e.g.
    /// `retention.daily.days`) and what is allowed; for forms that show each message next to
    /// its field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

/// One wrong field of a request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FieldError {
    /// Its path in the request body, e.g. `schedule.times[0]`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// A vault.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Vault {
    /// Id (the vault's own id, kept in its storage).
    pub id: String,
    /// Name.
    pub name: String,
    /// Where it lives: a directory, or an `s3://` or `azblob://` location.
    pub path: String,
    /// `local` (one location) or `zone` (every write also goes to `replica`).
    pub redundancy: String,
    /// The second location of a zone- or geo-redundant vault.
    pub replica: Option<String>,
    /// A geo-redundant vault's replication lag.
    pub replication: Option<Replication>,
    /// Chunk size.
    pub chunk_size: u32,
    /// `none`, `passphrase` or `key-file`.
    pub encryption: String,
    /// Cipher name when encrypted.
    pub cipher: Option<String>,
    /// For key-file vaults whose key file kura generated or was told about.
    pub key_file: Option<String>,
    /// When it was created or attached.
    pub created: String,
    /// Number of items.
    pub items: usize,
    /// Soft delete: `enabled`, `disabled` or `always-on`.
    pub soft_delete: String,
    /// Days soft-deleted data is kept.
    pub soft_delete_days: u32,
    /// When a recovery kit was last exported (null: never).
    pub kit_exported: Option<String>,
    /// A note for the user (e.g. where a generated key file went).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How far a geo-redundant vault's replica is behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Replication {
    /// The replica's location.
    pub replica: String,
    /// When it last caught up (null: never).
    pub replicated_at: Option<String>,
    /// Recovery points made since, which the replica may lack.
    pub points_behind: usize,
    /// Their stored bytes.
    pub bytes_behind: u64,
}

/// What `POST /vaults/attach` registered.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Attached {
    /// The vault.
    pub vault: Vault,
    /// Items registered.
    pub items: Vec<String>,
    /// Recovery points registered.
    pub recovery_points: usize,
    /// Problems met, each naming the object.
    pub warnings: Vec<String>,
}

/// A vault's wrapped data key, for escrow.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WrappedKey {
    /// Document version (1).
    pub kura_wrapped_key: u32,
    /// The vault's id.
    pub vault_id: String,
    /// Its name.
    pub vault_name: String,
    /// Blob cipher.
    pub cipher: String,
    /// The data key wrapped by the vault's passphrase or key file (KDF parameters, salt,
    /// nonce, ciphertext).
    pub key: Value,
    /// What this is.
    pub note: String,
}

/// A backup policy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Policy {
    /// The id of its vault.
    pub vault_id: String,
    /// Name, unique in the vault.
    pub name: String,
    /// The document, as validated (defaults filled in).
    #[schemars(with = "kura_policy::PolicyDoc")]
    pub doc: Value,
    /// Created.
    pub created: String,
    /// Last changed.
    pub updated: String,
    /// Items that use it.
    pub items: usize,
}

/// `PUT /vaults/{vault}/policies/{policy}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PolicyUpdated {
    /// The policy now.
    pub policy: Policy,
    /// Recovery points whose expiry the new retention changed.
    pub recovery_points_updated: usize,
}

/// `DELETE /vaults/{vault}/policies/{policy}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PolicyDeleted {
    /// `VAULT/POLICY`.
    pub deleted: String,
}

/// What a policy does over a span of days.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Simulation {
    /// The policy's time zone.
    pub time_zone: String,
    /// Start of the first simulated day (RFC 3339 with the zone's offset).
    pub from: String,
    /// Start of the day after the last one: when survival is judged.
    pub until: String,
    /// Every backup, in order.
    pub runs: Vec<SimulatedRun>,
    /// The recovery points that exist at `until`, oldest first.
    pub surviving: Vec<Survivor>,
}

/// A backup the simulated schedule took.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SimulatedRun {
    /// When (RFC 3339 with offset).
    pub time: String,
    /// `snapshot` or `snapshot+vault`.
    pub tier: String,
}

/// A recovery point that exists at the end of a simulation.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Survivor {
    /// When it was taken (RFC 3339 with offset).
    pub time: String,
    /// Its GFS tags; `snapshot` for a snapshot-only point.
    pub tags: Vec<String>,
    /// When it expires (RFC 3339 with offset).
    pub expires: String,
}

/// A protected item with its protection state and health (Azure's terms).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Item {
    /// Id.
    pub id: String,
    /// Name, unique in the home.
    pub name: String,
    /// The id of its vault.
    pub vault_id: String,
    /// Its vault's name.
    pub vault: String,
    /// `disk` or `vm`.
    pub kind: String,
    /// Where the source is: an image path, a QMP socket, a libvirt domain.
    pub source: String,
    /// When protected.
    pub created: String,
    /// The policy that schedules it, if any.
    pub policy: Option<String>,
    /// The last schedule slot the scheduler handled.
    pub last_slot: Option<String>,
    /// `protected`, `stopped` (data retained) or `soft-deleted`.
    pub state: String,
    /// When its data was (soft-)deleted.
    pub deleted_at: Option<String>,
    /// The source as kura pinned it (a versioned object: kind, path, format, a VM's
    /// disks and exclusions).
    pub spec: Option<Value>,
    /// Recovery points that reference chunks the last verify found missing or corrupt.
    pub damaged_points: u64,
    /// Where its protection stands.
    pub protection_state: ProtectionState,
    /// How its last backup went (`IRPending`: none yet).
    pub last_backup_status: LastBackupStatus,
    /// When its last backup job ended, whatever its outcome.
    #[serde(default)]
    pub last_backup: Option<String>,
    /// Whether it needs attention (the details say why).
    pub health_status: HealthStatus,
    /// What needs attention, if anything.
    pub health_details: Vec<String>,
    /// Whether the source exists.
    pub source_present: bool,
    /// Number of recovery points.
    pub recovery_points: usize,
    /// The newest one.
    pub latest_recovery_point: Option<RecoveryPoint>,
    /// For soft-deleted items: when the data will be purged.
    pub purge_at: Option<String>,
    /// When the scheduler backs it up next; in the past when that slot is overdue (no
    /// scheduler has run since). Absent without a policy or when not protected.
    #[serde(default)]
    pub next_backup: Option<String>,
    /// VM items, when checked: `Ready (...)`, `Not Ready: ...` or `not configured`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_status: Option<String>,
}

/// Whether a backup could start now.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Precheck {
    /// Item name.
    pub item: String,
    /// Its kind.
    pub kind: String,
    /// Whether every check passed.
    pub ready: bool,
    /// Each check, in order.
    pub checks: Vec<PrecheckCheck>,
}

/// One check of a [`Precheck`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PrecheckCheck {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, or what is wrong and what to do.
    pub detail: String,
}

/// A recovery point as listed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RecoveryPoint {
    /// Id.
    pub id: String,
    /// The id of its item.
    pub item_id: String,
    /// When the backup read the source.
    pub time: String,
    /// Sum of its disks' sizes.
    pub logical_size: u64,
    /// Stored bytes this backup added to the vault.
    pub stored_size: u64,
    /// `crash`, `file-system` or `application`.
    pub consistency: String,
    /// `vault-standard` or `snapshot`.
    pub tier: String,
    /// Kept until this date, if set.
    pub retain_until: Option<String>,
    /// The job that made it.
    pub job_id: Option<String>,
    /// GFS tags (`daily`, `weekly`, ...) or `on-demand`.
    pub tags: Vec<String>,
    /// When it expires; null for never.
    pub expires: Option<String>,
    /// `on-demand` or `scheduled`.
    pub origin: String,
    /// Bytes of its disks that hold data.
    pub used_bytes: u64,
    /// Its instant-restore snapshot, while it exists.
    pub snapshot: Option<String>,
    /// When the snapshot tier expires.
    pub snapshot_expires: Option<String>,
}

/// A recovery point in full, as its vault records it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RecoveryPointDetail {
    /// Id.
    pub rp_id: String,
    /// The vault's id.
    pub vault_id: String,
    /// The item as it was at the backup.
    pub item: PointItem,
    /// When the backup read its source.
    pub time: String,
    /// `crash`, `file-system` or `application`.
    pub consistency: String,
    /// `vault-standard` or `snapshot`.
    pub tier: String,
    /// Kept until this date, if set.
    pub retain_until: Option<String>,
    /// `on-demand` or `scheduled`.
    pub origin: String,
    /// GFS tags or `on-demand`.
    pub tags: Vec<String>,
    /// When it expires; null for never.
    pub expires: Option<String>,
    /// The job that made it.
    pub job_id: String,
    /// Its disks.
    pub disks: Vec<PointDisk>,
    /// How the source was defined at that instant (a VM's disks, CPU, memory, devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<Value>,
    /// How the point was taken (a VM's agent, scripts and freeze window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<Value>,
    /// Disks that were encrypted at the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypted_disks: Vec<String>,
    /// What the backup cost.
    pub stats: PointStats,
}

/// The item a recovery point belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PointItem {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Where the source lived.
    pub source: String,
    /// When it was protected.
    pub created: String,
    /// Its policy then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// One disk of a recovery point.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PointDisk {
    /// Name, unique in the point.
    pub name: String,
    /// Size.
    pub size: u64,
    /// Chunks.
    pub chunks: u64,
    /// Chunks that are holes or zeros.
    pub zero_chunks: u64,
    /// The source's format (`raw`, `qcow2`, ...).
    pub source_format: String,
}

/// Costs of one backup.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PointStats {
    /// Bytes read from the source.
    pub read_bytes: u64,
    /// Chunks written to the vault.
    pub new_chunks: u64,
    /// Stored (compressed, encrypted) bytes written.
    pub new_stored_bytes: u64,
    /// Plaintext bytes of the chunks written.
    pub new_plain_bytes: u64,
    /// Bytes of the disks that hold data (absent for old points).
    pub used_bytes: Option<u64>,
}

/// Retention's plan for an item at an instant.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RetentionPlan {
    /// Item name.
    pub item: String,
    /// The instant judged.
    pub at: String,
    /// One entry per recovery point, newest first.
    pub entries: Vec<PlanEntry>,
}

/// One recovery point in a [`RetentionPlan`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PlanEntry {
    /// Recovery point.
    pub rp_id: String,
    /// When it was taken.
    pub time: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its expiry.
    pub expires: Option<String>,
    /// `keep` or `delete`.
    pub action: String,
    /// Why.
    pub reason: String,
}

/// A job accepted into the queue (`202`); follow it at `/jobs/{job_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct JobAccepted {
    /// The job.
    pub job_id: String,
    /// `Queued`.
    pub status: JobStatus,
}

/// A job.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Job {
    /// Id.
    pub id: String,
    /// What it does.
    pub operation: JobOperation,
    /// Item name or other target.
    pub target: String,
    /// Where it is in its life.
    pub status: JobStatus,
    /// When it entered the server's queue.
    pub queued: Option<String>,
    /// When it started (while queued: when it was queued).
    pub started: String,
    /// When it ended.
    pub ended: Option<String>,
    /// Bytes processed.
    pub bytes_done: u64,
    /// Bytes to process.
    pub bytes_total: u64,
    /// The recovery point it made, if any.
    pub rp_id: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// How it failed, as a stable code (`not_found`, `already_exists`, `invalid`,
    /// `conflict`, `corrupt`, `key`, `cancelled` or `error`): the code the same command run
    /// on the server's host exits with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Log lines.
    pub log: Vec<String>,
    /// Sub-tasks (a backup's `snapshot` and `transfer`), in order.
    pub tasks: Vec<SubTask>,
    /// The operation's report once it ended (a backup's, restore's, verify's or GC's).
    pub result: Option<Value>,
    /// Average rate so far, bytes per second.
    pub rate_bytes_per_sec: Option<u64>,
    /// Estimated seconds to completion, while in progress.
    pub eta_seconds: Option<u64>,
}

/// A step of a [`Job`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SubTask {
    /// `snapshot` or `transfer`.
    pub name: String,
    /// Where it is.
    pub status: TaskStatus,
    /// Why, when it was skipped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An API token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Token {
    /// Name.
    pub name: String,
    /// When it was made or last reset.
    pub created: String,
    /// When it stops being accepted, if ever.
    pub expires: Option<String>,
    /// When it was last accepted (to the minute).
    pub last_used: Option<String>,
    /// Role (reserved: every token is an administrator today).
    pub role: Option<String>,
}

/// A new or reset token with its secret, which this answer alone shows.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NewToken {
    /// Name.
    pub name: String,
    /// The secret for clients; kura keeps only its hash.
    pub token: String,
    /// When it stops being accepted, if ever.
    pub expires: Option<String>,
}

/// `DELETE /tokens/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Revoked {
    /// The token's name.
    pub name: String,
    /// Always true: the token is gone.
    pub revoked: bool,
}

/// A vault's storage over time, and when its file system would fill up at the rate it grows.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VaultTrend {
    /// Vault name.
    pub vault: String,
    /// Its stored size over the last 90 days, one measurement per day (the day's last),
    /// oldest first: measured after each garbage collection, grown by what each backup added.
    pub samples: Vec<UsageSample>,
    /// The file system the vault lives on, when it is a local directory.
    pub filesystem: Option<FsSpace>,
    /// Growth of the stored size in bytes per day, fitted (least squares) over the last 30
    /// days' measurements; absent with less than a day of them.
    pub growth_bytes_per_day: Option<f64>,
    /// When the file system would be full at that growth (only when the vault grows and
    /// the file system is known).
    pub estimated_full: Option<String>,
}

/// A vault's stored size at one instant.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct UsageSample {
    /// When it was measured.
    pub at: String,
    /// Bytes of its chunk objects then.
    pub stored_bytes: u64,
}

/// Size and free space of a file system.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FsSpace {
    /// Its size.
    pub total_bytes: u64,
    /// Bytes still available to kura.
    pub available_bytes: u64,
}

/// Usage of one vault.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VaultUsage {
    /// Vault name.
    pub vault: String,
    /// Used bytes summed over every item's recovery points (what they would take without
    /// dedup and compression).
    pub logical_bytes: u64,
    /// Bytes of all chunk objects and packs in the vault's storage now (its last
    /// measurement when the storage cannot be reached).
    pub stored_bytes: u64,
    /// logical / stored.
    pub ratio: f64,
    /// Per item.
    pub items: Vec<ItemUsage>,
    /// Why the storage could not be measured now; only in the listing of every vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
}

/// Usage of one item.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ItemUsage {
    /// Item name.
    pub item: String,
    /// Protection state.
    pub state: String,
    /// Used bytes of its disks at the latest backup (Azure's protected size).
    pub protected_bytes: u64,
    /// `small` (up to 50 GB) or `standard` (instances of 500 GB).
    pub instance_tier: String,
    /// Billable protected instances.
    pub protected_instances: u64,
    /// Recovery points.
    pub recovery_points: usize,
    /// Used bytes summed over its recovery points.
    pub logical_bytes: u64,
    /// Stored bytes its backups added to the vault.
    pub stored_bytes: u64,
    /// logical / stored.
    pub ratio: f64,
}

/// A web UI session (the cookie itself is HttpOnly and never in a body).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Session {
    /// The token it was opened with.
    pub token_name: String,
    /// Send it back in an `X-CSRF-Token` header with every request that changes something.
    pub csrf: String,
    /// When it ends.
    pub expires: String,
    /// The API operations (OpenAPI operation ids) it may call; the web UI offers only
    /// those. Every token may call every operation until roles exist.
    #[serde(default)]
    pub operations: Vec<String>,
}

/// `DELETE /session`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SignedOut {
    /// Always true: the session is gone and its cookie cleared.
    pub signed_out: bool,
}

/// `GET /items/{item}/recovery-points/{rp}/volumes`: a point's disk and its partitions.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PointVolumes {
    /// Recovery point id.
    pub rp_id: String,
    /// Disk name.
    pub disk: String,
    /// Disk size in bytes.
    pub size: u64,
    /// Its partitions, or the whole disk as volume 0 when it has no partition table.
    pub volumes: Vec<Volume>,
    /// What reading them fetched from the vault.
    pub fetched: Fetched,
}

/// A partition, or a whole disk.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Volume {
    /// Its number in the partition table (from 1); 0 for a disk without one.
    pub number: u32,
    /// `gpt`, `mbr` or `none`; `lvm` for a logical volume (named `vg/lv`).
    pub table: String,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// GPT partition name.
    pub name: String,
    /// What its signature says: `ext`, `xfs`, `vfat`, `ntfs`, `lvm`, `swap` or `unknown`.
    pub fs: String,
    /// Whether kura can list and restore its files (ext2/3/4, XFS and FAT today).
    pub readable: bool,
}

/// Chunks and bytes fetched from the vault to answer a request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Fetched {
    /// Chunks fetched (zero chunks are not).
    pub chunks: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// `GET /items/{item}/recovery-points/{rp}/files`: an entry and, for a directory, its
/// entries.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FileListing {
    /// Recovery point id.
    pub rp_id: String,
    /// Disk name.
    pub disk: String,
    /// Volume number.
    pub volume: u32,
    /// The entry at the path asked for.
    pub entry: FileEntry,
    /// A directory's entries by name (without `.` and `..`); empty otherwise.
    pub entries: Vec<FileEntry>,
    /// What it fetched from the vault.
    pub fetched: Fetched,
}

/// A file, directory or link in a recovery point.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FileEntry {
    /// Absolute path in its file system (bytes that are not UTF-8 shown as U+FFFD).
    pub path: String,
    /// Last component.
    pub name: String,
    /// `file`, `dir`, `symlink`, `block-device`, `char-device`, `fifo` or `socket`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (octal, as a number).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last modification (RFC 3339).
    pub modified: String,
    /// A link's target, as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A running NBD export of a recovery point's disk.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Export {
    /// Export id.
    pub id: String,
    /// Item name.
    pub item: String,
    /// Recovery point id.
    pub rp_id: String,
    /// Disk name.
    pub disk: String,
    /// Disk size in bytes.
    pub size: u64,
    /// Where NBD clients connect (`nbd+unix:///NAME?socket=PATH`, `nbd://ADDRESS/NAME`, or
    /// with TLS `nbds://ADDRESS/NAME`).
    pub uri: String,
    /// With TLS: the directory on the server's host holding the client's files
    /// (`ca-cert.pem`, `client-cert.pem`, `client-key.pem`), deleted when the export ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<String>,
    /// With TLS, in the answer to the request that started it only: the same files'
    /// contents, for a client on another host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTls>,
    /// The process serving it.
    pub pid: u32,
    /// When it started.
    pub started: String,
    /// When it ends (its clients are then cut off).
    pub expires: String,
}

/// What an NBD client presents to a TLS export: the export's CA certificate, and its client
/// certificate and key (the export's secret), in PEM.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ClientTls {
    /// `ca-cert.pem`.
    pub ca_cert: String,
    /// `client-cert.pem`.
    pub client_cert: String,
    /// `client-key.pem`.
    pub client_key: String,
}

/// `DELETE /exports/{export}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ExportStopped {
    /// Export id.
    pub id: String,
    /// Always true: it has ended and its clients are cut off.
    pub stopped: bool,
}
