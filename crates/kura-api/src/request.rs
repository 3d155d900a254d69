//! Request bodies and query strings. Unknown fields are refused, so a misspelt option is an
//! error rather than silently ignored.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `POST /vaults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVault {
    /// Vault name, unique in the home.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"))]
    pub name: String,
    /// Storage directory (under a restore root); default: in the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Where the vault's objects live, instead of `path`: a directory (under a restore
    /// root), `file:///DIR`, `s3://BUCKET/PREFIX` or `azblob://ACCOUNT/CONTAINER/PREFIX`.
    /// The object store's credentials are the server's (its environment), never sent here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `local` (default); `zone`: every write also goes to `replica`, a point is visible
    /// only once both locations have it, reads fall back to the other one; `geo`:
    /// replication jobs copy new points to `replica` after each backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy: Option<String>,
    /// The second location of a `zone` or `geo` vault (a directory under a restore root or
    /// a URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Chunk size in bytes (a power of two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
    /// Store data unencrypted.
    #[serde(default)]
    pub no_encryption: bool,
}

/// `PATCH /vaults/{vault}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultSettings {
    /// `enabled`, `disabled` or `always-on` (irreversible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_delete: Option<String>,
    /// Days soft-deleted data is kept (14-180).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_delete_days: Option<u32>,
    /// `local`, `zone` or `geo`: only while no item was ever protected in the vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy: Option<String>,
    /// The second location for `zone` or `geo` (empty; it gets the vault's config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// `POST /vaults/attach`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    /// Name to register the vault under.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"))]
    pub name: String,
    /// The vault's directory (under a restore root); or give `location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Where the vault lives, instead of `path`: a directory, `file:///DIR`,
    /// `s3://BUCKET/PREFIX` or `azblob://ACCOUNT/CONTAINER/PREFIX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Its key file (under a source root), for key-file vaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// `POST /vaults/{vault}/policies/{policy}/simulate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Simulate {
    /// First simulated day, `YYYY-MM-DD`.
    pub from: String,
    /// Number of days.
    pub days: u32,
}

/// `POST /policy-simulations`: preview a policy document that is not stored (e.g. while it
/// is being written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateDocument {
    /// The policy document (docs/policies.md); checked as `POST /vaults/{vault}/policies`
    /// checks it, with the same field errors.
    #[schemars(with = "kura_policy::PolicyDoc")]
    pub policy: serde_json::Value,
    /// First simulated day, `YYYY-MM-DD`.
    pub from: String,
    /// Number of days.
    pub days: u32,
}

/// A libvirt domain: its name and, if not the default, the connection URI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LibvirtDomain {
    /// Domain name.
    pub name: String,
    /// Connection URI (default `qemu:///system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// `POST /items`: protect a disk image or a VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Protect {
    /// `disk`, `vm` or `files`.
    pub kind: String,
    /// A disk image, a VM's QMP socket, or a directory tree (under a source root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// VM items run by libvirt, instead of a QMP socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<LibvirtDomain>,
    /// Vault name.
    pub vault: String,
    /// Item name (default: from the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"))]
    pub name: Option<String>,
    /// Policy in the vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Disk items: the image format to pin (default: detected once, then pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// VM items: disks not to back up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_disks: Vec<String>,
    /// VM items: the guest agent's socket (under a source root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qga: Option<String>,
    /// VM items: fail backups when the agent is not ready.
    #[serde(default)]
    pub require_agent: bool,
    /// VM items: guest path of the pre-backup script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_script: Option<String>,
    /// VM items: guest path of the post-backup script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_script: Option<String>,
    /// File items: patterns of what to leave out (a name anywhere, or with `/` a path from
    /// the tree's root).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// File items: `btrfs` to read each backup from a read-only btrfs snapshot of the tree
    /// (a subvolume), taken first and deleted after: every file from one instant
    /// (file-system consistent); `none` (the default) to read it live (crash-consistent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// `POST /items/{item}/stop`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// Delete the backup data (soft-deleted where the vault says so) instead of keeping it.
    #[serde(default)]
    pub delete_data: bool,
}

/// `POST /items/{item}/resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// Policy to protect the item with from now on.
    pub policy: String,
}

/// `POST /items/{item}/policy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPolicy {
    /// Policy of the item's vault to schedule and retain its backups from now on.
    pub policy: String,
}

/// `POST /items/{item}/format`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetFormat {
    /// The new format to pin; absent: accept the source's changed backing chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// `POST /items/{item}/agent`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAgent {
    /// The guest agent's socket (under a source root); absent: no agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qga: Option<String>,
    /// Fail backups when the agent is not ready.
    #[serde(default)]
    pub require_agent: bool,
    /// Guest path of the pre-backup script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_script: Option<String>,
    /// Guest path of the post-backup script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_script: Option<String>,
}

/// `POST /items/{item}/backups`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupNow {
    /// Keep the point until this date (`YYYY-MM-DD`), instead of the
    /// policy's on-demand retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<String>,
}

/// `POST /items/{item}/restores`: one disk to a new image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Restore {
    /// Recovery point: an id, a unique short form or `latest`.
    pub rp: String,
    /// The new image (under a restore root).
    pub to: String,
    /// `raw` or `qcow2`; default from the extension of `to`, else raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Replace `to` if it exists.
    #[serde(default)]
    pub force: bool,
    /// Which disk of the point (default: its only one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// Write a disk that was encrypted at the source decrypted.
    #[serde(default)]
    pub decrypt: bool,
    /// Read the point from the vault's replica (cross-region restore).
    #[serde(default)]
    pub from_replica: bool,
}

/// `POST /items/{item}/disk-restores`: disks of a point into a directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreDisks {
    /// Recovery point.
    pub rp: String,
    /// An existing directory under a restore root.
    pub to: String,
    /// Disks to restore (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<String>,
    /// `raw` or `qcow2` (default raw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Replace existing files.
    #[serde(default)]
    pub force: bool,
    /// Write disks that were encrypted at the source decrypted.
    #[serde(default)]
    pub decrypt: bool,
    /// Read the point from the vault's replica (cross-region restore).
    #[serde(default)]
    pub from_replica: bool,
}

/// `POST /items/{item}/vm-restores`: as a new VM (`as_new` and `to`) or over the VM's own
/// disks (`replace`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreVm {
    /// Recovery point.
    pub rp: String,
    /// Name of the new VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_new: Option<String>,
    /// Directory of the new VM (under a restore root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Start the new VM.
    #[serde(default)]
    pub start: bool,
    /// Restore over the VM's disks.
    #[serde(default)]
    pub replace: bool,
    /// With `replace`: stop the running VM first.
    #[serde(default)]
    pub stop: bool,
    /// Read the point from the vault's geo replica (cross-region restore).
    #[serde(default)]
    pub from_replica: bool,
}

/// `GET /items/{item}/retention-plan` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct At {
    /// The instant to judge at (RFC 3339); default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// `POST /items/{item}/retention`.
pub type RetentionApply = At;

/// `GET /jobs` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    /// At most this many jobs (default 100, at most 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only jobs of this item (or other target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// Only jobs with this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Only jobs of this operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Only jobs started (or queued) at or after this RFC 3339 instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// `POST /tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    /// Token name.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub name: String,
    /// When it stops being accepted: an RFC 3339 instant or a date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// `POST /tokens/{name}/reset`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetToken {
    /// New expiry: an RFC 3339 instant or a date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// `POST /verify`: at most one of the scopes; none verifies everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// A vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    /// An item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// A recovery point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rp: Option<String>,
}

/// `POST /vaults/{vault}/gc`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gc {
    /// Chunks younger than this are kept (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_seconds: Option<i64>,
    /// Report what would be removed, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `GET /usage` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageFilter {
    /// Only this vault (404 when there is none by that name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
}

/// `POST /session`: sign in to the web UI with an API token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    /// An API token's secret (`kura token create`); only a session cookie is kept by the
    /// browser.
    pub token: String,
}

/// `POST /items/{item}/file-restores`: files and directories of a point into a directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreFiles {
    /// Recovery point.
    pub rp: String,
    /// Absolute paths inside the point's file system (`/` for all of it).
    pub paths: Vec<String>,
    /// An existing directory (under a restore root); each path lands under its own name.
    /// Leave it out with `original`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to: String,
    /// File items: put the paths back where they were in the protected directory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub original: bool,
    /// The disk, when the point has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// The volume (partition number; 0: a disk without a partition table), when the disk
    /// has several readable ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<u32>,
    /// Replace files and links that exist (default: skip them).
    #[serde(default)]
    pub overwrite: bool,
    /// Read the point from the vault's replica (cross-region restore).
    #[serde(default)]
    pub from_replica: bool,
}

/// `GET /items/{item}/recovery-points/{rp}/volumes` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskQuery {
    /// The disk, when the point has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

/// `GET /items/{item}/recovery-points/{rp}/files` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// Path in the file system (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The disk, when the point has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// The volume, when the disk has several readable ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<u32>,
    /// Downloads of a folder: its archive format (default tar). Ignored by listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveFormat>,
    /// Read the point from the vault's geo replica (cross-region restore). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_replica: Option<bool>,
}

/// The archive a folder downloads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    /// POSIX tar: names as bytes, owners, modes, times, symlinks.
    Tar,
    /// Zip (stored, not compressed): modes, times, symlinks; names that are not UTF-8
    /// get U+FFFD for their bad bytes.
    Zip,
}

/// `POST /items/{item}/exports`: serve a point's disk read-only over NBD for a while.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExport {
    /// Recovery point.
    pub rp: String,
    /// The disk, when the point has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// How long it runs, in minutes (default 60, at most 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes: Option<u32>,
    /// `tcp:ADDRESS:PORT` (port 0 picks one); default: a private Unix socket in the
    /// server's home. Off loopback the export requires TLS with its own client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Require TLS on a loopback TCP export too. The answer then holds the client's
    /// certificate and key (`client_tls`), shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
}
