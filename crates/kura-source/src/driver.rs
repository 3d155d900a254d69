//! The seam between the engine and each kind of source.
//!
//! An item's source is a [`SourceSpec`]: a typed, versioned value stored as JSON in the
//! catalog and in the vault's item record. Its [`SourceDriver`] does everything that depends
//! on the kind; the engine only runs the phases:
//!
//! 1. [`SourceDriver::precheck`]: the source is there and as recorded (nothing touched yet);
//! 2. [`SourceDriver::take_point`]: the snapshot phase, one instant for every disk, and the
//!    consistency reached;
//! 3. [`SourceDriver::open_disks`]: one named stream per disk of that instant, with its
//!    allocation map, for the transfer;
//! 4. [`SourceDriver::release`]: undo whatever the point held open (the snapshot tier itself
//!    stays: it is the instant-restore copy, expired by the engine's retention).
//!
//! Disks are the first kind; VMs (QMP, the guest agent) add a variant and a driver here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{DiskReader, Error, PinnedFormat, Result, Snapshot};

/// Schema version of a spec's fields.
pub const SPEC_VERSION: u32 = 1;

fn spec_version() -> u32 {
    SPEC_VERSION
}

/// What an item protects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum SourceSpec {
    /// A disk image or block device.
    Disk {
        /// Schema version of these fields.
        #[serde(default = "spec_version")]
        v: u32,
        /// Absolute path of the image or device.
        path: String,
        /// Its format and backing chain, pinned when it was protected.
        format: PinnedFormat,
    },
    /// A QEMU VM, through its QMP monitor socket or libvirt.
    Vm {
        /// Schema version of these fields.
        #[serde(default = "spec_version")]
        v: u32,
        /// The QMP socket (empty for a libvirt domain).
        qmp: String,
        /// The libvirt domain, when libvirt runs the VM.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        libvirt: Option<crate::libvirt::Domain>,
        /// Its disks when it was protected.
        disks: Vec<crate::vm::VmDisk>,
        /// Disks not backed up (temporary or scratch disks), by name.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
        /// The guest agent and the scripts it runs.
        #[serde(default, skip_serializing_if = "crate::vm::AgentOptions::is_empty")]
        agent: crate::vm::AgentOptions,
    },
    /// A directory tree (a file share).
    Files {
        /// Schema version of these fields.
        #[serde(default = "spec_version")]
        v: u32,
        /// Absolute path of the directory.
        path: String,
        /// Patterns of what is left out (see [`crate::TreeSource`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
        /// A file system snapshot taken first, or none (read live).
        #[serde(default, skip_serializing_if = "crate::TreeSnapshot::is_none")]
        snapshot: crate::TreeSnapshot,
    },
}

impl SourceSpec {
    /// A disk item's spec.
    pub fn disk(path: &Path, format: PinnedFormat) -> Self {
        SourceSpec::Disk {
            v: SPEC_VERSION,
            path: path.display().to_string(),
            format,
        }
    }

    /// Parses a stored spec; refuses versions this build does not know.
    pub fn parse(json: &str) -> Result<Self> {
        let spec: SourceSpec = serde_json::from_str(json)
            .map_err(|e| Error::Invalid(format!("unreadable source spec: {e}")))?;
        match &spec {
            SourceSpec::Disk { v, .. } | SourceSpec::Vm { v, .. } | SourceSpec::Files { v, .. }
                if *v != SPEC_VERSION =>
            {
                Err(Error::Invalid(format!(
                    "{} source spec version {v} is not supported (this kura reads {SPEC_VERSION})",
                    spec.kind()
                )))
            }
            _ => Ok(spec),
        }
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a spec serializes")
    }

    /// The item kind (`disk`, later `vm`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Disk { .. } => "disk",
            SourceSpec::Vm { .. } => "vm",
            SourceSpec::Files { .. } => "files",
        }
    }

    /// Where the source lives, as the catalog shows it (an image or directory path, a QMP
    /// socket, `libvirt:DOMAIN`).
    pub fn source(&self) -> String {
        match self {
            SourceSpec::Disk { path, .. } | SourceSpec::Files { path, .. } => path.clone(),
            SourceSpec::Vm {
                libvirt: Some(d), ..
            } => format!("libvirt:{}", d.name),
            SourceSpec::Vm { qmp, .. } => qmp.clone(),
        }
    }

    /// Whether the source is there now: a disk's image or a VM's QMP socket exists, a
    /// libvirt domain is defined.
    pub fn present(&self) -> bool {
        match self {
            SourceSpec::Disk { path, .. } => Path::new(path).exists(),
            SourceSpec::Files { path, .. } => Path::new(path).is_dir(),
            SourceSpec::Vm {
                libvirt: Some(d), ..
            } => d.state().is_ok(),
            // A shut-off VM has no socket but still has its disks.
            SourceSpec::Vm { qmp, disks, .. } => {
                Path::new(qmp).exists() || disks.iter().all(|d| Path::new(&d.file).is_file())
            }
        }
    }

    /// The driver of this source.
    pub fn driver(&self) -> Box<dyn SourceDriver> {
        match self {
            SourceSpec::Disk { path, format, .. } => Box::new(DiskDriver {
                path: PathBuf::from(path),
                format: format.clone(),
            }),
            SourceSpec::Vm {
                qmp,
                libvirt,
                disks,
                exclude,
                agent,
                ..
            } => Box::new(crate::vm::VmDriver::new(
                match libvirt {
                    Some(d) => crate::vm::VmLink::Libvirt(d.clone()),
                    None => crate::vm::VmLink::Qmp(PathBuf::from(qmp)),
                },
                disks.clone(),
                exclude.clone(),
                agent.clone(),
            )),
            SourceSpec::Files {
                path,
                exclude,
                snapshot,
                ..
            } => Box::new(FilesDriver {
                path: PathBuf::from(path),
                exclude: exclude.clone(),
                snapshot: *snapshot,
                taken: None,
            }),
        }
    }
}

/// How consistent a point is (Azure's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Agent ready, freeze and pre/post scripts succeeded.
    Application,
    /// Agent ready and the file systems frozen, without (successful) scripts.
    FileSystem,
    /// As if the power had been cut: a disk item, a VM that is off or has no agent.
    Crash,
}

impl Consistency {
    /// The name recorded on points.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Application => "application",
            Consistency::FileSystem => "file-system",
            Consistency::Crash => "crash",
        }
    }
}

/// What the engine asks of a snapshot phase.
#[derive(Debug, Clone)]
pub struct PointRequest {
    /// The new recovery point.
    pub rp_id: String,
    /// The item (its id scopes what the driver leaves in the source, e.g. dirty bitmaps).
    pub item_id: String,
    /// The item's latest point with a vault copy, which an incremental compares with.
    pub previous: Option<String>,
    /// Another job of the item is still transferring: this point can only be kept in the
    /// snapshot tier (the driver takes no more than the snapshot, or refuses).
    pub transfer_busy: bool,
}

/// What the snapshot phase produced.
#[derive(Debug)]
pub struct PointInTime {
    /// The instant-restore copy, when a provider applied.
    pub snapshot: Option<Snapshot>,
    /// Why there is no snapshot tier, when there is none.
    pub no_snapshot: Option<String>,
    /// Why this point is its snapshot only and must not be transferred (another job is
    /// still transferring the item), when it is.
    pub snapshot_only: Option<String>,
    /// The consistency reached.
    pub consistency: Consistency,
    /// How the source was defined at that instant (a VM's disks and identity), kept with
    /// the point; `None` for a disk.
    pub definition: Option<serde_json::Value>,
    /// How the point was taken (agent, scripts, freeze window), kept with the point.
    pub capture: Option<serde_json::Value>,
    /// What the snapshot phase did, step by step, for the job log.
    pub log: Vec<String>,
    /// What the user must know: each makes the job CompletedWithWarnings.
    pub warnings: Vec<String>,
    /// Encrypted disks' passphrases (base64), by disk name, kept sealed with the point.
    pub secrets: std::collections::BTreeMap<String, String>,
}

impl PointInTime {
    /// A crash-consistent point with nothing else to say (no snapshot tier, definition,
    /// log or warnings): what a driver fills in from.
    pub fn crash() -> Self {
        PointInTime {
            snapshot: None,
            no_snapshot: None,
            snapshot_only: None,
            consistency: Consistency::Crash,
            definition: None,
            capture: None,
            log: Vec::new(),
            warnings: Vec::new(),
            secrets: Default::default(),
        }
    }
}

/// Something a precheck found beyond "the source is there": a VM's agent status, a shared
/// disk. Findings never block a backup; the precheck fails on them only when `ok` is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked (`agent`, `shared-disks`).
    pub name: String,
    /// Whether it is fine.
    pub ok: bool,
    /// What was found, and what to do about it.
    pub detail: String,
}

/// Everything that depends on an item's kind (see the module doc).
pub trait SourceDriver: Send {
    /// Checks that the source exists and is as recorded. Touches nothing.
    fn precheck(&mut self) -> Result<()>;
    /// Takes the point in time the request describes.
    fn take_point(&mut self, request: &PointRequest) -> Result<PointInTime>;
    /// One named stream per disk, reading the point (its snapshot when there is one).
    fn open_disks(&mut self, point: &PointInTime) -> Result<Vec<(String, Box<dyn DiskReader>)>>;
    /// One named tree per directory tree of the point (a file item's); none for disks and
    /// VMs.
    fn open_trees(&mut self, _point: &PointInTime) -> Result<Vec<(String, crate::TreeSource)>> {
        Ok(Vec::new())
    }
    /// Releases what the point held open. Called on every path once the point was taken.
    /// Returns what could not be released, as warnings for the job (a snapshot left
    /// behind, which the item's next backup removes).
    fn release(&mut self, point: &PointInTime) -> Vec<String>;
    /// The point was published in the vault: what tracked changes up to it may go (a VM's
    /// previous dirty bitmap). Without a commit, `release` keeps the changes tracked for the
    /// next backup.
    fn commit(&mut self, _point: &PointInTime) {}
    /// The item `item_id` is gone: remove what its backups left in the source to track
    /// changes (a VM's dirty bitmaps). Best effort: a source that is gone has nothing left.
    fn forget(&mut self, _item_id: &str) {}
    /// What else a precheck reports (a VM's agent status); nothing for a disk.
    fn findings(&mut self) -> Vec<Finding> {
        Vec::new()
    }
}

/// A disk item: one disk, `disk0`, crash-consistent.
struct DiskDriver {
    path: PathBuf,
    format: PinnedFormat,
}

impl SourceDriver for DiskDriver {
    fn precheck(&mut self) -> Result<()> {
        if !self.path.exists() {
            return Err(Error::NotFound {
                path: self.path.clone(),
            });
        }
        self.format.check(&self.path)
    }

    fn take_point(&mut self, request: &PointRequest) -> Result<PointInTime> {
        let (snapshot, no_snapshot) =
            match Snapshot::take(&self.path, &self.format, &request.rp_id)? {
                Ok(s) => (Some(s), None),
                Err(reason) => (None, Some(reason)),
            };
        Ok(PointInTime {
            snapshot,
            no_snapshot,
            ..PointInTime::crash()
        })
    }

    fn open_disks(&mut self, point: &PointInTime) -> Result<Vec<(String, Box<dyn DiskReader>)>> {
        let reader = match &point.snapshot {
            Some(s) => s.reader()?,
            None => self.format.open(&self.path)?,
        };
        Ok(vec![("disk0".to_string(), reader)])
    }

    fn release(&mut self, _point: &PointInTime) -> Vec<String> {
        Vec::new()
    }
}

/// A file item: one tree, `files`, read live (crash-consistent) or from a snapshot taken
/// first (file-system consistent).
struct FilesDriver {
    path: PathBuf,
    exclude: Vec<String>,
    snapshot: crate::TreeSnapshot,
    /// The snapshot of the point being backed up.
    taken: Option<PathBuf>,
}

impl SourceDriver for FilesDriver {
    fn precheck(&mut self) -> Result<()> {
        let meta = std::fs::metadata(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                path: self.path.clone(),
            },
            _ => Error::Io {
                path: self.path.clone(),
                source: e,
            },
        })?;
        if !meta.is_dir() {
            return Err(Error::Invalid(format!(
                "{} is not a directory",
                self.path.display()
            )));
        }
        crate::TreeSource::new(&self.path, &self.exclude)?.open_root()?;
        self.snapshot.check(&self.path)
    }

    fn take_point(&mut self, request: &PointRequest) -> Result<PointInTime> {
        match self.snapshot {
            crate::TreeSnapshot::None => Ok(PointInTime {
                no_snapshot: Some(
                    "a directory tree has no snapshot tier: it is read live, crash-consistent"
                        .into(),
                ),
                ..PointInTime::crash()
            }),
            crate::TreeSnapshot::Btrfs => {
                let (at, stale) =
                    crate::tree_snapshot::take_btrfs(&self.path, &request.item_id, &request.rp_id)?;
                let mut log: Vec<String> = stale
                    .into_iter()
                    .map(|s| format!("deleted {s}, which an interrupted backup left"))
                    .collect();
                log.push(format!(
                    "btrfs snapshot {} taken: the tree is read as it was at this instant",
                    at.display()
                ));
                self.taken = Some(at);
                Ok(PointInTime {
                    no_snapshot: Some(
                        "the btrfs snapshot is read, then deleted: it is not kept as a \
                         snapshot tier"
                            .into(),
                    ),
                    consistency: Consistency::FileSystem,
                    log,
                    ..PointInTime::crash()
                })
            }
        }
    }

    fn open_disks(&mut self, _point: &PointInTime) -> Result<Vec<(String, Box<dyn DiskReader>)>> {
        Ok(Vec::new())
    }

    fn open_trees(&mut self, _point: &PointInTime) -> Result<Vec<(String, crate::TreeSource)>> {
        let mut tree = crate::TreeSource::new(&self.path, &self.exclude)?;
        if let Some(at) = &self.taken {
            tree = tree.read_from(at)?;
        }
        Ok(vec![("files".to_string(), tree)])
    }

    fn release(&mut self, _point: &PointInTime) -> Vec<String> {
        let Some(at) = self.taken.take() else {
            return Vec::new();
        };
        match crate::tree_snapshot::release_btrfs(&self.path, &at) {
            Ok(()) => Vec::new(),
            // Left behind, the item's next backup deletes it.
            Err(e) => vec![format!(
                "the snapshot {} could not be deleted ({e}); the item's next backup deletes it",
                at.display()
            )],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_unknown_versions_or_kinds_are_refused() {
        let spec = SourceSpec::disk(
            Path::new("/srv/a.qcow2"),
            PinnedFormat::new("qcow2").unwrap(),
        );
        let text = spec.to_json();
        assert!(
            text.contains(r#""kind":"disk""#) && text.contains(r#""v":1"#),
            "{text}"
        );
        assert_eq!(SourceSpec::parse(&text).unwrap(), spec);
        let newer = text.replace(r#""v":1"#, r#""v":2"#);
        assert!(
            SourceSpec::parse(&newer)
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
        let other = text.replace(r#""kind":"disk""#, r#""kind":"tape""#);
        assert!(SourceSpec::parse(&other).is_err());
        assert_eq!(spec.kind(), "disk");
    }
}
