//! Snapshot providers: the instant-restore tier, a point-in-time copy next to the source.
//!
//! - qcow2 images: an internal snapshot (`qemu-img snapshot -c`), read through `qemu-nbd
//!   --load-snapshot`, restored with `qemu-img convert -l`, removed with `qemu-img snapshot -d`;
//! - raw image files on filesystems with reflinks (XFS, btrfs): a reflink clone in
//!   `.kura-snapshots/` beside the image (it shares blocks until either side changes);
//! - anything else (block devices, ext4, other formats): no snapshot tier; the backup says so
//!   and goes straight to its transfer.
//!
//! A snapshot is recorded in the catalog as a reference string: `qcow2:NAME:IMAGE` or
//! `reflink:CLONE_PATH`.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{DiskReader, Error, NbdReader, PinnedFormat, RawReader, Result};

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A taken snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// An internal snapshot of a qcow2 image.
    Qcow2 {
        /// The image.
        image: PathBuf,
        /// Snapshot name inside it.
        name: String,
    },
    /// A reflink clone of a raw image.
    Reflink {
        /// The clone.
        clone: PathBuf,
    },
    /// Internal snapshots of a running VM's qcow2 disks, all taken in the QMP transaction
    /// of the point's instant.
    Vm {
        /// The item's source: the VM's QMP socket, or `libvirt:DOMAIN`.
        source: String,
        /// Snapshot name inside every image.
        name: String,
        /// (disk name, image) of each disk.
        disks: Vec<(String, PathBuf)>,
    },
}

fn qemu_img(args: &[&str], image: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(image)
        .output()
        .map_err(|e| Error::Tool {
            tool: "qemu-img",
            path: image.to_path_buf(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: "qemu-img",
            path: image.to_path_buf(),
            message: format!(
                "{} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

impl Snapshot {
    /// Takes a snapshot of `source` for recovery point `rp_id`. `Ok(Err(reason))` when no
    /// provider applies to this source.
    /// The image is taken as `format` (pinned when the item was protected), never probed.
    pub fn take(
        source: &Path,
        format: &PinnedFormat,
        rp_id: &str,
    ) -> Result<std::result::Result<Snapshot, String>> {
        let meta = std::fs::metadata(source).map_err(|e| io(source, e))?;
        if !meta.is_file() {
            return Ok(Err(
                "the source is not a regular file (block devices have no snapshot provider yet)"
                    .into(),
            ));
        }
        let tag = format!("kura-{}", &rp_id[..rp_id.len().min(16)]);
        match format.format.as_str() {
            "qcow2" => {
                qemu_img(&["snapshot", "-f", "qcow2", "-c", &tag], source)?;
                Ok(Ok(Snapshot::Qcow2 {
                    image: source.to_path_buf(),
                    name: tag,
                }))
            }
            "raw" => {
                let dir = source
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(".kura-snapshots");
                let file = source
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let clone = dir.join(format!("{file}.{tag}"));
                let src = std::fs::File::open(source).map_err(|e| io(source, e))?;
                // The clone is as private as its source, and never more open than 0600 while
                // it is made. Where clones fail, the directory is removed again when empty;
                // a job of another image in the same directory may do so between this one's
                // mkdir and create, so a vanished directory is made again.
                let mut attempts = 0;
                let dst = loop {
                    // Only the owner may enter: the clones hold the guest's data. "Exists"
                    // with no directory there: it was removed between mkdir and its check.
                    match std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&dir)
                    {
                        Ok(()) => {}
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 100 =>
                        {
                            attempts += 1;
                            continue;
                        }
                        Err(e) => return Err(io(&dir, e)),
                    }
                    match std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&clone)
                    {
                        Ok(f) => break f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 100 => {
                            attempts += 1;
                        }
                        Err(e) => return Err(io(&clone, e)),
                    }
                };
                match rustix::fs::ioctl_ficlone(&dst, &src) {
                    Ok(()) => {
                        let mode = meta.permissions().mode() & 0o777;
                        dst.set_permissions(std::fs::Permissions::from_mode(mode))
                            .map_err(|e| io(&clone, e))?;
                        dst.sync_all().map_err(|e| io(&clone, e))?;
                        Ok(Ok(Snapshot::Reflink { clone }))
                    }
                    Err(e) => {
                        drop(dst);
                        let _ = std::fs::remove_file(&clone);
                        let _ = std::fs::remove_dir(&dir);
                        Ok(Err(format!(
                            "the filesystem of {} cannot make reflink clones ({e})",
                            source.display()
                        )))
                    }
                }
            }
            other => Ok(Err(format!("no snapshot provider for {other} images"))),
        }
    }

    /// The catalog reference.
    pub fn encode(&self) -> String {
        match self {
            Snapshot::Qcow2 { image, name } => format!("qcow2:{name}:{}", image.display()),
            Snapshot::Reflink { clone } => format!("reflink:{}", clone.display()),
            Snapshot::Vm {
                source,
                name,
                disks,
            } => format!(
                "vm:{}",
                serde_json::json!({"source": source, "name": name, "disks": disks})
            ),
        }
    }

    /// The snapshot name kura gives the snapshots of recovery point `rp_id`.
    pub fn tag(rp_id: &str) -> String {
        format!("kura-{}", &rp_id[..rp_id.len().min(16)])
    }

    /// The names of the disks it holds (`disk0` for a disk item's).
    pub fn disk_names(&self) -> Vec<String> {
        match self {
            Snapshot::Vm { disks, .. } => disks.iter().map(|(d, _)| d.clone()).collect(),
            _ => vec!["disk0".into()],
        }
    }

    /// Parses a catalog reference.
    pub fn decode(s: &str) -> Option<Snapshot> {
        if let Some(rest) = s.strip_prefix("vm:") {
            let v: serde_json::Value = serde_json::from_str(rest).ok()?;
            let disks: Vec<(String, PathBuf)> = serde_json::from_value(v["disks"].clone()).ok()?;
            return Some(Snapshot::Vm {
                source: v["source"].as_str()?.to_string(),
                name: v["name"].as_str()?.to_string(),
                disks,
            });
        }
        if let Some(rest) = s.strip_prefix("qcow2:") {
            let (name, image) = rest.split_once(':')?;
            return Some(Snapshot::Qcow2 {
                image: image.into(),
                name: name.into(),
            });
        }
        s.strip_prefix("reflink:")
            .map(|p| Snapshot::Reflink { clone: p.into() })
    }

    /// Whether this reference can only be one kura made of `source`: an internal snapshot
    /// named `kura-…` of that very image, or a clone `.kura-snapshots/NAME.kura-…` beside
    /// it. References read back from a vault are untrusted: anything else (a path elsewhere
    /// on the host) is never read or deleted.
    pub fn belongs_to(&self, source: &Path) -> bool {
        let tag_ok = |t: &str| {
            t.strip_prefix("kura-").is_some_and(|rest| {
                !rest.is_empty()
                    && rest.len() <= 16
                    && rest.chars().all(|c| c.is_ascii_alphanumeric())
            })
        };
        match self {
            Snapshot::Qcow2 { image, name } => image == source && tag_ok(name),
            // The VM's own source; its images are checked against the item's disks by
            // [`Snapshot::belongs_to_vm`].
            Snapshot::Vm {
                source: s,
                name,
                disks,
            } => Path::new(s) == source && tag_ok(name) && !disks.is_empty(),
            Snapshot::Reflink { clone } => {
                let (Some(dir), Some(file)) = (source.parent(), source.file_name()) else {
                    return false;
                };
                let Some(clone_name) = clone.file_name().map(|n| n.to_string_lossy().into_owned())
                else {
                    return false;
                };
                let prefix = format!("{}.", file.to_string_lossy());
                clone.parent() == Some(&dir.join(".kura-snapshots"))
                    && clone_name.strip_prefix(&prefix).is_some_and(tag_ok)
            }
        }
    }

    /// [`Snapshot::belongs_to`] for a VM item: also every image is one of `images`, the
    /// item's disks.
    pub fn belongs_to_vm(&self, source: &Path, images: &[String]) -> bool {
        match self {
            Snapshot::Vm { disks, .. } => {
                self.belongs_to(source)
                    && disks
                        .iter()
                        .all(|(_, i)| images.iter().any(|x| Path::new(x) == i))
            }
            _ => false,
        }
    }

    /// Whether the snapshot is still there.
    pub fn exists(&self) -> bool {
        match self {
            Snapshot::Vm { name, disks, .. } => disks.iter().all(|(_, image)| {
                Snapshot::Qcow2 {
                    image: image.clone(),
                    name: name.clone(),
                }
                .exists()
            }),
            Snapshot::Reflink { clone } => clone.is_file(),
            Snapshot::Qcow2 { image, name } => Command::new("qemu-img")
                .args(["snapshot", "-f", "qcow2", "-l", "-U"])
                .arg(image)
                .output()
                .is_ok_and(|o| {
                    o.status.success()
                        && String::from_utf8_lossy(&o.stdout)
                            .split_whitespace()
                            .any(|w| w == name)
                }),
        }
    }

    /// A reader of the snapshot's contents (of its disk `disk`, for a VM's; the only one
    /// when `None`).
    pub fn reader_of(&self, disk: Option<&str>) -> Result<Box<dyn DiskReader>> {
        let Snapshot::Vm { name, disks, .. } = self else {
            return self.reader();
        };
        let (_, image) = match disk {
            Some(d) => disks.iter().find(|(n, _)| n == d),
            None if disks.len() == 1 => disks.first(),
            None => None,
        }
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the snapshot holds disks {}: name one",
                disks
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        Ok(Box::new(NbdReader::open_snapshot(image, "qcow2", name)?))
    }

    /// A reader of the snapshot's contents.
    pub fn reader(&self) -> Result<Box<dyn DiskReader>> {
        Ok(match self {
            Snapshot::Vm { .. } => return self.reader_of(None),
            Snapshot::Qcow2 { image, name } => {
                Box::new(NbdReader::open_snapshot(image, "qcow2", name)?)
            }
            Snapshot::Reflink { clone } => Box::new(RawReader::open(clone)?),
        })
    }

    /// Removes the snapshot.
    pub fn delete(&self) -> Result<()> {
        match self {
            Snapshot::Vm {
                source,
                name,
                disks,
            } => {
                // A running VM holds its images: its QEMU deletes the snapshots. A VM that is
                // off lets qemu-img do it.
                let link = match source.strip_prefix("libvirt:") {
                    Some(d) => crate::vm::VmLink::Libvirt(crate::libvirt::Domain::new(d, None)?),
                    None => crate::vm::VmLink::Qmp(PathBuf::from(source)),
                };
                let running = !link.is_off().unwrap_or(true);
                for (_, image) in disks {
                    let one = Snapshot::Qcow2 {
                        image: image.clone(),
                        name: name.clone(),
                    };
                    if !one.exists() {
                        continue;
                    }
                    if running {
                        crate::vm::delete_internal_snapshot(&link, image, name)?;
                    } else {
                        one.delete()?;
                    }
                }
            }
            Snapshot::Qcow2 { image, name } => {
                if self.exists() {
                    qemu_img(&["snapshot", "-f", "qcow2", "-d", name], image)?;
                }
            }
            Snapshot::Reflink { clone } => match std::fs::remove_file(clone) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io(clone, e));
                }
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshot references read back from a vault are untrusted: only ones kura could have
    /// made of the item's own source are accepted, never a path elsewhere on the host.
    #[test]
    fn only_snapshots_of_the_items_own_source_are_accepted() {
        let src = Path::new("/var/lib/libvirt/images/web.raw");
        let ok = |s: &str| Snapshot::decode(s).is_some_and(|x| x.belongs_to(src));
        assert!(ok(
            "reflink:/var/lib/libvirt/images/.kura-snapshots/web.raw.kura-01a2b3c4d5e6f708"
        ));
        assert!(!ok("reflink:/etc/shadow"));
        assert!(!ok(
            "reflink:/var/lib/libvirt/images/.kura-snapshots/other.raw.kura-01a2"
        ));
        assert!(!ok(
            "reflink:/var/lib/libvirt/images/.kura-snapshots/web.raw.kura-../../x"
        ));
        assert!(!ok(
            "reflink:/var/lib/libvirt/images/.kura-snapshots/web.raw.notkura"
        ));
        let q = Path::new("/srv/vm.qcow2");
        let okq = |s: &str| Snapshot::decode(s).is_some_and(|x| x.belongs_to(q));
        assert!(okq("qcow2:kura-01a2b3c4:/srv/vm.qcow2"));
        assert!(!okq("qcow2:kura-01a2b3c4:/etc/passwd"));
        assert!(!okq("qcow2:important-user-snapshot:/srv/vm.qcow2"));
    }

    /// Jobs of different raw images in one directory take their snapshots at the same time
    /// (the job queue runs them side by side). Where the filesystem cannot clone (ext4,
    /// tmpfs), each one's attempt makes `.kura-snapshots/` and removes it again; none may
    /// fail because another removed the directory under it. (Where it can clone, every
    /// snapshot must be made.)
    #[test]
    fn raw_snapshots_of_neighbouring_images_taken_at_once_never_fail() {
        let dir = tempfile::tempdir().unwrap();
        let raw = PinnedFormat::new("raw").unwrap();
        let images: Vec<std::path::PathBuf> = (0..8)
            .map(|i| {
                let p = dir.path().join(format!("d{i}.raw"));
                std::fs::write(&p, vec![i as u8; 4096]).unwrap();
                p
            })
            .collect();
        std::thread::scope(|s| {
            for (i, image) in images.iter().enumerate() {
                let raw = &raw;
                s.spawn(move || {
                    for n in 0..200 {
                        let rp = format!("{i:04x}{n:012x}");
                        match Snapshot::take(image, raw, &rp).unwrap_or_else(|e| {
                            panic!("snapshot {n} of {} failed: {e}", image.display())
                        }) {
                            Ok(snap) => snap.delete().unwrap(),
                            Err(reason) => assert!(reason.contains("reflink"), "{reason}"),
                        }
                    }
                });
            }
        });
    }
}
