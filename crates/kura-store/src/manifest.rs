use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Manifest schema version written by this build. Version 3 may list file trees besides
/// disks; version 2 names every disk (unique, safe names, matched by name across points) and
/// may carry the source's definition; version 1 manifests (one disk, `disk0`) are still read.
pub const MANIFEST_VERSION: u32 = 3;

/// The oldest manifest version this build reads.
pub const MANIFEST_VERSION_MIN: u32 = 1;

/// What a recovery point is. Stored (as JSON inside a manifest blob) after all its chunks
/// and indexes are durable, so its presence is what makes the recovery point exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Schema version.
    pub version: u32,
    /// Recovery point id.
    pub rp_id: String,
    /// The vault it belongs to.
    pub vault_id: String,
    /// The protected item.
    pub item: ItemRecord,
    /// When the backup read its source (RFC 3339, UTC).
    pub time: String,
    /// `crash`, `file-system` or `application`.
    pub consistency: String,
    /// `vault-standard` (kept in the vault) or `snapshot`.
    pub tier: String,
    /// Date until which it is kept, if set (YYYY-MM-DD).
    #[serde(default)]
    pub retain_until: Option<String>,
    /// `on-demand` or `scheduled`.
    #[serde(default = "on_demand")]
    pub origin: String,
    /// GFS tags given by the policy (`daily`, `weekly`, `monthly`, `yearly`) or `on-demand`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// When it expires (RFC 3339), if ever.
    #[serde(default)]
    pub expires: Option<String>,
    /// The job that made it.
    pub job_id: String,
    /// The disks, each with a name unique in the point.
    pub disks: Vec<DiskEntry>,
    /// The file trees (a file-tree item's), each with a name unique in the point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<TreeEntry>,
    /// How the source was defined at that instant (a VM's definition: its disks by name,
    /// CPU, memory, devices); absent for disk items and in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<serde_json::Value>,
    /// How the point was taken (a VM's agent, scripts and freeze window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<serde_json::Value>,
    /// Disks that were encrypted at the source (their data is stored as the guest saw it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypted_disks: Vec<String>,
    /// Their passphrases (base64), by disk name: only inside the sealed manifest, never shown.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub disk_secrets: std::collections::BTreeMap<String, String>,
    /// What the backup cost.
    pub stats: RpStats,
}

/// One disk of a recovery point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    /// Disk name inside the item (e.g. `disk0`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Object key of its [`crate::DiskIndex`].
    pub index: String,
    /// Number of chunks.
    pub chunks: u64,
    /// Number of zero chunks (holes).
    pub zero_chunks: u64,
    /// Format of the source (`raw`, `qcow2`, ...).
    pub source_format: String,
}

/// One file tree of a recovery point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Tree name inside the item (`files`), a disk name's rules.
    pub name: String,
    /// Where it was read (the protected directory), for display.
    pub root: String,
    /// Object key of its [`crate::TreeIndex`].
    pub index: String,
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Bytes of file data.
    pub bytes: u64,
    /// Chunks referenced (directories and data).
    pub chunks: u64,
}

/// Costs of one backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpStats {
    /// Bytes read from the source.
    pub read_bytes: u64,
    /// Chunks written to the vault by this backup.
    pub new_chunks: u64,
    /// Stored (compressed, encrypted) bytes written by this backup.
    pub new_stored_bytes: u64,
    /// Plaintext bytes of the chunks written by this backup.
    pub new_plain_bytes: u64,
    /// Bytes of the point's disks that hold data (non-zero chunks): the protected size.
    /// Absent in older manifests, whose backups read every allocated byte (`read_bytes`).
    #[serde(default)]
    pub used_bytes: Option<u64>,
}

/// A protected item as recorded in the vault, so that `vault attach` can rebuild the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Item id.
    pub id: String,
    /// Item name (unique in a home).
    pub name: String,
    /// Kind (`disk`).
    pub kind: String,
    /// Where the source lives (an image path).
    pub source: String,
    /// When it was protected (RFC 3339).
    pub created: String,
    /// The policy it was protected with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Its source as a typed, versioned value (kind, path, pinned format and backing chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// Protection state: `protected`, `stopped` or `soft-deleted` (absent: `protected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// When its data was (soft-)deleted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// Snapshots kura made next to the source (instant-restore tier), so that a rebuilt
    /// catalog still knows them and removes them when they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotRef>,
}

/// A snapshot of an item's source that kura made for a recovery point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    /// The recovery point.
    pub rp_id: String,
    /// Its time (RFC 3339).
    pub time: String,
    /// The snapshot (`qcow2:NAME:IMAGE` or `reflink:CLONE`).
    pub snapshot: String,
    /// When its instant-restore days end (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// Disk names: 1-64 characters of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
pub fn is_disk_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn on_demand() -> String {
    "on-demand".into()
}

impl Manifest {
    /// Parses a manifest's JSON; `object` names it in errors.
    pub fn decode(object: &str, b: &[u8]) -> Result<Self> {
        let m: Manifest = serde_json::from_slice(b)
            .map_err(|e| Error::corrupt(object, format!("manifest JSON: {e}")))?;
        if !(MANIFEST_VERSION_MIN..=MANIFEST_VERSION).contains(&m.version) {
            return Err(Error::corrupt(
                object,
                format!("unknown manifest version {}", m.version),
            ));
        }
        // Disk names become file names on restore: a vault may not choose a path.
        let mut seen = std::collections::HashSet::new();
        for d in m
            .disks
            .iter()
            .map(|d| &d.name)
            .chain(m.trees.iter().map(|t| &t.name))
        {
            if !is_disk_name(d) {
                return Err(Error::corrupt(
                    object,
                    format!("bad disk or tree name {d:?}"),
                ));
            }
            if !seen.insert(d.as_str()) {
                return Err(Error::corrupt(
                    object,
                    format!("disk or tree {d:?} listed twice"),
                ));
            }
        }
        Ok(m)
    }

    /// Serializes to JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest always serializes")
    }
}
