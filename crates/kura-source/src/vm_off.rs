//! A VM that is shut off is backed up from its disk files, crash-consistent (as Azure backs
//! up offline VMs), with the files locked against a start of the VM while they are read.
//!
//! qcow2 disks are read through `qemu-nbd`, which holds QEMU's image lock (a VM that starts
//! meanwhile fails with "Failed to get write lock"); their persistent dirty bitmaps, which a
//! clean shutdown saved, give the changes since the previous point, and a new bitmap is added
//! for the next one before reading. Raw disks are read directly under the same lock QEMU
//! takes for them (an OFD lock on the byte that says "no writer may share this image").

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::vm::VmDisk;
use crate::{DiskReader, Error, NbdReader, RawReader, Result};

/// QEMU's lock byte for "unshare the write permission" (RAW_LOCK_SHARED_BASE + the write
/// permission's bit): a writer that opens the image finds it held and refuses to start.
const QEMU_NO_WRITERS_BYTE: i64 = 201;

/// Holds `file` locked against writers the way QEMU checks it.
fn lock_against_writers(file: &File) -> std::io::Result<()> {
    let fl = libc::flock {
        l_type: libc::F_RDLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: QEMU_NO_WRITERS_BYTE,
        l_len: 1,
        l_pid: 0,
    };
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl))
        .map(|_| ())
        .map_err(std::io::Error::from)
}

fn qemu_img(args: &[&str], file: &Path) -> Result<String> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(file)
        .output()
        .map_err(|e| Error::Tool {
            tool: "qemu-img",
            path: file.to_path_buf(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: "qemu-img",
            path: file.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the bitmaps whose names start with `prefix` from a qcow2 image no VM has open.
pub(crate) fn remove_bitmaps(file: &Path, prefix: &str) {
    let Ok(text) = qemu_img(&["info", "--output=json", "-f", "qcow2"], file) else {
        return;
    };
    let info: Value = serde_json::from_str(&text).unwrap_or_default();
    for b in info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if let Some(name) = b["name"].as_str().filter(|n| n.starts_with(prefix)) {
            let _ = Command::new("qemu-img")
                .args(["bitmap", "--remove", "-f", "qcow2"])
                .arg(file)
                .arg(name)
                .output();
        }
    }
}

/// One disk of an offline point.
struct Disk {
    name: String,
    file: PathBuf,
    qcow2: bool,
    /// The bitmap added for the next point (qcow2).
    new: Option<String>,
    /// The previous point's bitmap, read as the changes.
    base: Option<String>,
    reader: Option<Box<dyn DiskReader>>,
    _lock: Option<File>,
}

/// What an offline point holds.
pub(crate) struct Offline {
    disks: Vec<Disk>,
    committed: bool,
}

impl Offline {
    /// Opens every disk (locking it) and plans its bitmaps. `prefix` scopes this item's
    /// bitmaps; `previous` is the point an incremental compares with.
    pub(crate) fn take(
        disks: &[VmDisk],
        prefix: &str,
        rp_id: &str,
        previous: Option<&str>,
        log: &mut Vec<String>,
    ) -> Result<Offline> {
        let mut out = Offline {
            disks: Vec::new(),
            committed: false,
        };
        for d in disks {
            let file = PathBuf::from(&d.file);
            if !file.is_file() {
                return Err(Error::NotFound { path: file });
            }
            match d.format.as_str() {
                "qcow2" => {
                    let info: Value = serde_json::from_str(&qemu_img(
                        &["info", "--output=json", "-f", "qcow2"],
                        &file,
                    )?)
                    .map_err(|e| {
                        Error::Invalid(format!("qemu-img info {}: {e}", file.display()))
                    })?;
                    let wanted = previous.map(|p| format!("{prefix}{p}"));
                    let mut base = None;
                    let mut reason = match previous {
                        None => "no previous recovery point".to_string(),
                        Some(p) => format!("no dirty bitmap for point {p} in the image"),
                    };
                    let bitmaps = info["format-specific"]["data"]["bitmaps"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    for b in bitmaps {
                        let Some(name) = b["name"].as_str() else {
                            continue;
                        };
                        if !name.starts_with(prefix) {
                            continue;
                        }
                        let flags: Vec<&str> = b["flags"]
                            .as_array()
                            .map(|f| f.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default();
                        let good = flags.contains(&"auto") && !flags.contains(&"in-use");
                        if Some(name) == wanted.as_deref() && good {
                            base = Some(name.to_string());
                            continue;
                        }
                        if Some(name) == wanted.as_deref() {
                            reason =
                                "its dirty bitmap is inconsistent (QEMU stopped without saving it)"
                                    .into();
                        }
                        let _ = Command::new("qemu-img")
                            .args(["bitmap", "--remove", "-f", "qcow2"])
                            .arg(&file)
                            .arg(name)
                            .output();
                    }
                    let new = format!("{prefix}{rp_id}");
                    let out_add = Command::new("qemu-img")
                        .args(["bitmap", "--add", "-f", "qcow2"])
                        .arg(&file)
                        .arg(&new)
                        .output()
                        .map_err(|e| Error::Tool {
                            tool: "qemu-img",
                            path: file.clone(),
                            message: e.to_string(),
                        })?;
                    if !out_add.status.success() {
                        return Err(Error::Tool {
                            tool: "qemu-img",
                            path: file.clone(),
                            message: format!(
                                "cannot add a dirty bitmap (is the VM starting?): {}",
                                String::from_utf8_lossy(&out_add.stderr).trim()
                            ),
                        });
                    }
                    match &base {
                        Some(_) => log.push(format!(
                            "{}: changed-block tracking since point {}",
                            d.name,
                            previous.unwrap_or_default()
                        )),
                        None => log.push(format!(
                            "{}: {reason}; every allocated block is read and compared",
                            d.name
                        )),
                    }
                    out.disks.push(Disk {
                        name: d.name.clone(),
                        file: file.clone(),
                        qcow2: true,
                        new: Some(new),
                        base: base.clone(),
                        reader: None,
                        _lock: None,
                    });
                    // qemu-nbd holds QEMU's image lock from here on.
                    let reader = NbdReader::open_with_bitmap(
                        &file,
                        "qcow2",
                        base.map(|b| (b, previous.unwrap_or_default().to_string())),
                    )?;
                    out.disks.last_mut().expect("pushed").reader = Some(Box::new(reader));
                }
                "raw" => {
                    let lock = File::open(&file).map_err(|e| Error::Io {
                        path: file.clone(),
                        source: e,
                    })?;
                    lock_against_writers(&lock).map_err(|e| Error::Io {
                        path: file.clone(),
                        source: e,
                    })?;
                    log.push(format!(
                        "{}: a raw image keeps no dirty bitmap while the VM is off; every allocated block is read and compared",
                        d.name
                    ));
                    out.disks.push(Disk {
                        name: d.name.clone(),
                        file: file.clone(),
                        qcow2: false,
                        new: None,
                        base: None,
                        reader: Some(Box::new(RawReader::open(&file)?)),
                        _lock: Some(lock),
                    });
                }
                f => {
                    return Err(Error::Invalid(format!(
                        "VM disk {} is a {f} image; kura reads shut-off VMs' qcow2 and raw disks",
                        d.name
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The readers, each once.
    pub(crate) fn readers(&mut self) -> Result<Vec<(String, Box<dyn DiskReader>)>> {
        self.disks
            .iter_mut()
            .map(|d| {
                let r = d
                    .reader
                    .take()
                    .ok_or_else(|| Error::Invalid(format!("disk {} was opened already", d.name)))?;
                Ok((d.name.clone(), r))
            })
            .collect()
    }

    pub(crate) fn commit(&mut self) {
        self.committed = true;
    }

    /// Drops the readers and locks; the previous bitmaps go after a published point, the
    /// new ones after one that was not. A VM started meanwhile makes this fail quietly: the
    /// next backup removes what is stale.
    pub(crate) fn release(mut self) {
        for d in &mut self.disks {
            d.reader = None;
        }
        for d in &self.disks {
            if !d.qcow2 {
                continue;
            }
            let gone = if self.committed { &d.base } else { &d.new };
            if let Some(b) = gone {
                let _ = Command::new("qemu-img")
                    .args(["bitmap", "--remove", "-f", "qcow2"])
                    .arg(&d.file)
                    .arg(b)
                    .output();
            }
        }
    }
}
