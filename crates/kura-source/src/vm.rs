//! Running QEMU VMs, driven through their QMP monitor socket.
//!
//! The point in time is QEMU's own: one QMP `transaction` starts a `blockdev-backup` with
//! `sync: none` from every disk into a fleecing overlay (copy-before-write), so the overlays
//! read as the disks were at that instant while the guest keeps writing; each is exported
//! read-only over NBD on a private Unix socket and read with kura's NBD client. Release
//! removes exports, jobs, overlays and the NBD server, on every path.
//!
//! Without a guest agent the point is crash-consistent (freezing through qemu-ga, scripts,
//! the snapshot tier and dirty bitmaps for changed-block incrementals are the next steps).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::qmp::Qmp;
use crate::{Consistency, DiskReader, Error, NbdReader, PointInTime, Result, SourceDriver};

/// One disk of a VM, as QEMU knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisk {
    /// The disk's name in kura: the guest device id (`vda`), else QEMU's device or node name.
    pub name: String,
    /// The block node the guest device uses.
    pub node: String,
    /// The image file QEMU reports.
    pub file: String,
    /// Its format (`qcow2`, `raw`, ...).
    pub format: String,
    /// Size in bytes.
    pub size: u64,
}

/// Safe disk names: 1-64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn connect(qmp: &Path) -> Result<Qmp> {
    Qmp::connect(qmp, Duration::from_secs(5))
}

/// The disks of the VM behind `qmp` (`query-block`), in QEMU's order.
pub fn discover(qmp: &Path) -> Result<Vec<VmDisk>> {
    let mut q = connect(qmp)?;
    disks_of(&q.execute("query-block", None)?)
}

fn disks_of(answer: &Value) -> Result<Vec<VmDisk>> {
    let mut out: Vec<VmDisk> = Vec::new();
    for b in answer.as_array().into_iter().flatten() {
        let Some(ins) = b.get("inserted") else {
            continue; // an empty drive (a CD-ROM without medium)
        };
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
        let node = s(ins.get("node-name"));
        // "/machine/peripheral/vda/virtio-backend" → "vda"
        let qdev = s(b.get("qdev"));
        let from_qdev = qdev
            .strip_prefix("/machine/peripheral/")
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
            .to_string();
        let name = [from_qdev, s(b.get("device")), node.clone()]
            .into_iter()
            .find(|n| safe_name(n))
            .ok_or_else(|| Error::Invalid(format!("a VM disk without a usable name: {b}")))?;
        if node.is_empty() {
            return Err(Error::Invalid(format!("VM disk {name} has no node name")));
        }
        if out.iter().any(|d| d.name == name) {
            return Err(Error::Invalid(format!("two VM disks are named {name}")));
        }
        out.push(VmDisk {
            name,
            node,
            file: s(ins.get("file")),
            format: s(ins.get("drv")),
            size: ins
                .get("image")
                .and_then(|i| i.get("virtual-size"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
        });
    }
    if out.is_empty() {
        return Err(Error::Invalid("the VM has no disk".into()));
    }
    Ok(out)
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A VM item's driver.
pub(crate) struct VmDriver {
    pub(crate) qmp: PathBuf,
    pub(crate) disks: Vec<VmDisk>,
    pub(crate) exclude: Vec<String>,
    /// What the current point holds open.
    held: Option<Held>,
}

struct Held {
    dir: PathBuf,
    sock: PathBuf,
    disks: Vec<VmDisk>,
    server_started: bool,
    jobs: Vec<String>,
    overlays: Vec<String>,
    exports: Vec<String>,
}

impl VmDriver {
    pub(crate) fn new(qmp: PathBuf, disks: Vec<VmDisk>, exclude: Vec<String>) -> Self {
        VmDriver {
            qmp,
            disks,
            exclude,
            held: None,
        }
    }

    fn included(&self) -> Vec<VmDisk> {
        self.disks
            .iter()
            .filter(|d| !self.exclude.contains(&d.name))
            .cloned()
            .collect()
    }

    fn setup(&mut self, q: &mut Qmp, rp_id: &str) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let disks = self.included();
        let tag = &rp_id[..rp_id.len().min(16)];
        let dir = std::env::temp_dir().join(format!(
            "kura-vm-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::Io {
                path: dir.clone(),
                source: e,
            })?;
        let sock = dir.join("nbd.sock");
        self.held = Some(Held {
            dir: dir.clone(),
            sock: sock.clone(),
            disks: disks.clone(),
            server_started: false,
            jobs: Vec::new(),
            overlays: Vec::new(),
            exports: Vec::new(),
        });
        let held = self.held.as_mut().expect("just set");
        q.execute(
            "nbd-server-start",
            Some(json!({"addr": {"type": "unix", "data": {"path": sock}}})),
        )?;
        held.server_started = true;
        // A fleecing overlay per disk, backed by the live node.
        for (i, d) in disks.iter().enumerate() {
            let file = dir.join(format!("fleece-{i}.qcow2"));
            let out = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&file)
                .arg(d.size.to_string())
                .output()
                .map_err(|e| Error::Tool {
                    tool: "qemu-img",
                    path: file.clone(),
                    message: e.to_string(),
                })?;
            if !out.status.success() {
                return Err(Error::Tool {
                    tool: "qemu-img",
                    path: file,
                    message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            let node = format!("kura-fleece-{tag}-{i}");
            q.execute(
                "blockdev-add",
                Some(json!({"driver": "qcow2", "node-name": node,
                    "file": {"driver": "file", "filename": file}, "backing": d.node})),
            )?;
            held.overlays.push(node);
        }
        // One instant for every disk.
        let actions: Vec<Value> = disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                json!({"type": "blockdev-backup", "data": {
                    "job-id": format!("kura-fl-{tag}-{i}"), "device": d.node,
                    "target": held.overlays[i], "sync": "none"}})
            })
            .collect();
        q.execute("transaction", Some(json!({ "actions": actions })))?;
        held.jobs = (0..disks.len())
            .map(|i| format!("kura-fl-{tag}-{i}"))
            .collect();
        for (i, d) in disks.iter().enumerate() {
            let id = format!("kura-snap-{tag}-{i}");
            q.execute(
                "block-export-add",
                Some(
                    json!({"type": "nbd", "id": id, "node-name": held.overlays[i],
                    "name": d.name, "writable": false}),
                ),
            )?;
            held.exports.push(id);
        }
        Ok(())
    }
}

impl SourceDriver for VmDriver {
    fn precheck(&mut self) -> Result<()> {
        let now = discover(&self.qmp)?;
        for d in self.included() {
            match now.iter().find(|n| n.name == d.name) {
                Some(n) if n.node == d.node => {}
                Some(n) => {
                    return Err(Error::Invalid(format!(
                        "VM disk {} now uses node {} (recorded: {}); protect the VM again to accept its new disks",
                        d.name, n.node, d.node
                    )));
                }
                None => {
                    return Err(Error::Invalid(format!(
                        "VM disk {} is gone from the VM (it has: {})",
                        d.name,
                        now.iter()
                            .map(|n| n.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    fn take_point(&mut self, rp_id: &str) -> Result<PointInTime> {
        let mut q = connect(&self.qmp)?;
        // The VM's definition at the instant: its identity and its disks as QEMU has them.
        let definition = json!({
            "qemu": q.execute("query-version", None).ok(),
            "name": q.execute("query-name", None).ok(),
            "uuid": q.execute("query-uuid", None).ok(),
            "disks": self.disks,
            "exclude": self.exclude,
        });
        if let Err(e) = self.setup(&mut q, rp_id) {
            self.teardown(&mut q);
            return Err(e);
        }
        Ok(PointInTime {
            snapshot: None,
            no_snapshot: Some("VMs have no instant-restore snapshot tier yet".into()),
            consistency: Consistency::Crash,
            definition: Some(definition),
        })
    }

    fn open_disks(&mut self, _point: &PointInTime) -> Result<Vec<(String, Box<dyn DiskReader>)>> {
        let held = self
            .held
            .as_ref()
            .ok_or_else(|| Error::Invalid("no point in time was taken".into()))?;
        held.disks
            .iter()
            .map(|d| {
                let r: Box<dyn DiskReader> =
                    Box::new(NbdReader::connect_export(&held.sock, &d.name, "raw")?);
                Ok((d.name.clone(), r))
            })
            .collect()
    }

    fn release(&mut self, _point: &PointInTime) {
        if let Ok(mut q) = connect(&self.qmp) {
            self.teardown(&mut q);
        }
        if let Some(h) = self.held.take() {
            let _ = std::fs::remove_dir_all(&h.dir);
        }
    }
}

impl VmDriver {
    /// Undoes whatever `setup` did, in reverse; failures are ignored (best effort on a VM
    /// that may have gone away).
    fn teardown(&mut self, q: &mut Qmp) {
        let Some(h) = self.held.as_mut() else {
            return;
        };
        for id in h.exports.drain(..) {
            let _ = q.execute("block-export-del", Some(json!({"id": id, "mode": "hard"})));
        }
        for job in h.jobs.drain(..) {
            let _ = q.execute(
                "block-job-cancel",
                Some(json!({"device": job, "force": true})),
            );
        }
        // A cancelled job lets go of its target asynchronously: wait until it is gone.
        for _ in 0..500 {
            let running = q
                .execute("query-block-jobs", None)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|jobs| {
                    jobs.iter().any(|j| {
                        j.get("device")
                            .and_then(Value::as_str)
                            .is_some_and(|d| d.starts_with("kura-fl-"))
                    })
                });
            if !running {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for node in h.overlays.drain(..) {
            let _ = q.execute("blockdev-del", Some(json!({ "node-name": node })));
        }
        if h.server_started {
            let _ = q.execute("nbd-server-stop", None);
            h.server_started = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_named_after_their_guest_devices_and_checked() {
        let answer = json!([
            {"device": "", "qdev": "/machine/peripheral/vda/virtio-backend",
             "inserted": {"node-name": "disk0", "file": "/srv/a.qcow2", "drv": "qcow2",
                          "image": {"virtual-size": 1048576}}},
            {"device": "ide1-cd0", "qdev": "/machine/unattached/device[2]"},
            {"device": "", "qdev": "/machine/peripheral/../../etc/virtio-backend",
             "inserted": {"node-name": "n1", "file": "/srv/b.raw", "drv": "raw"}}
        ]);
        let d = disks_of(&answer).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].name.as_str(), d[0].size), ("vda", 1 << 20));
        assert_eq!(
            d[1].name, "n1",
            "an unsafe device id falls back to the node name"
        );
        assert!(disks_of(&json!([])).is_err());
    }
}
