//! Running QEMU VMs, driven through their QMP monitor socket.
//!
//! The point in time is QEMU's own: one QMP `transaction` starts a `blockdev-backup` with
//! `sync: none` from every disk into a fleecing overlay (copy-before-write), so the overlays
//! read as the disks were at that instant while the guest keeps writing; each is exported
//! read-only over NBD on a private Unix socket and read with kura's NBD client. Release
//! removes exports, jobs, overlays and the NBD server, on every path.
//!
//! With a guest agent (qemu-ga on the VM's virtio-serial port) the snapshot phase is:
//! agent check, pre-script, freeze, the QMP transaction, thaw, post-script. The point is then
//! application-consistent (scripts ran and succeeded), file-system-consistent (frozen, without
//! scripts or with a failed one) or crash-consistent (no agent, or the freeze failed). The
//! guest is thawed and the post-script run on every path once the freeze or the pre-script
//! happened.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::qga::{AgentInfo, Qga};
use crate::qmp::Qmp;
use crate::{
    Consistency, DiskReader, Error, Finding, NbdReader, PointInTime, PointRequest, Result,
    SourceDriver,
};

/// How long an agent may take to answer a ping (under TCG emulation, guests are slow).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pre- or post-script may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a freeze or thaw may take.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(60);
/// The scripts run when they exist in the guest and the item names none.
pub const DEFAULT_PRE_SCRIPT: &str = "/etc/kura/pre-backup";
/// See [`DEFAULT_PRE_SCRIPT`].
pub const DEFAULT_POST_SCRIPT: &str = "/etc/kura/post-backup";

/// How a VM item uses its guest agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOptions {
    /// The host side of the agent's channel (a Unix socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qga: Option<String>,
    /// Fail the backup, rather than make it crash-consistent, when the agent is Not Ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require: bool,
    /// The guest path of the pre-backup script (default: [`DEFAULT_PRE_SCRIPT`] if present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_script: Option<String>,
    /// The guest path of the post-backup script (default: [`DEFAULT_POST_SCRIPT`] if present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_script: Option<String>,
}

impl AgentOptions {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self == &AgentOptions::default()
    }

    /// Checks script paths: absolute guest paths without control characters; a plain QEMU VM
    /// needs the agent's socket for the rest (a libvirt domain's agent is libvirt's).
    pub fn validate(&self, libvirt: bool) -> Result<()> {
        for (flag, p) in [
            ("--pre-script", &self.pre_script),
            ("--post-script", &self.post_script),
        ] {
            if let Some(p) = p
                && (!p.starts_with('/') || p.len() > 1024 || p.chars().any(char::is_control))
            {
                return Err(Error::Invalid(format!(
                    "{flag} {p:?}: give an absolute path inside the guest"
                )));
            }
        }
        if libvirt && self.qga.is_some() {
            return Err(Error::Invalid(
                "--qga is for plain QEMU VMs; libvirt reaches a domain's agent itself".into(),
            ));
        }
        if !libvirt
            && self.qga.is_none()
            && (self.require || self.pre_script.is_some() || self.post_script.is_some())
        {
            return Err(Error::Invalid(
                "--require-agent, --pre-script and --post-script need the agent's socket (--qga)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The agent's state as a backup sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status")]
pub enum AgentStatus {
    /// It answered ping and info in time.
    Ready(AgentInfo),
    /// It did not; why.
    NotReady {
        /// What failed.
        reason: String,
    },
    /// The item has no agent socket.
    NotConfigured,
}

/// Where a VM is driven from: its QMP socket, or libvirt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmLink {
    /// A plain QEMU's QMP monitor socket.
    Qmp(PathBuf),
    /// A libvirt domain.
    Libvirt(crate::libvirt::Domain),
}

impl VmLink {
    /// A monitor session.
    pub fn monitor(&self) -> Result<Qmp> {
        match self {
            VmLink::Qmp(p) => Qmp::connect(p, Duration::from_secs(5)),
            VmLink::Libvirt(d) => Qmp::libvirt(d),
        }
    }

    /// The item source this link is (the QMP socket's path, or `libvirt:DOMAIN`).
    pub fn source(&self) -> String {
        match self {
            VmLink::Qmp(p) => p.display().to_string(),
            VmLink::Libvirt(d) => format!("libvirt:{}", d.name),
        }
    }

    /// The user and group the VM's QEMU runs as: it must be able to open what kura gives it
    /// (fleecing overlays) and to create its NBD socket.
    pub fn qemu_ids(&self, q: &Qmp) -> Option<(u32, u32)> {
        match self {
            VmLink::Qmp(_) => q.peer_ids(),
            VmLink::Libvirt(d) => d.qemu_ids(),
        }
    }

    /// Whether the VM is shut off: its QMP socket is gone or refuses connections, or libvirt
    /// says so. Any other failure to reach it is an error, not "off".
    pub fn is_off(&self) -> Result<bool> {
        match self {
            VmLink::Qmp(p) => match std::os::unix::net::UnixStream::connect(p) {
                Ok(_) => Ok(false),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    Ok(true)
                }
                Err(e) => Err(Error::Qmp(format!(
                    "cannot reach the VM's QMP socket {}: {e}",
                    p.display()
                ))),
            },
            VmLink::Libvirt(d) => Ok(d.state()? == "shut off"),
        }
    }

    /// Where the guest agent answers, if the VM has one: the socket the item names, or, for
    /// libvirt, the domain's agent channel.
    pub fn agent(&self, opts: &AgentOptions) -> Option<AgentLink> {
        match self {
            VmLink::Qmp(_) => opts
                .qga
                .as_ref()
                .map(|p| AgentLink::Socket(PathBuf::from(p))),
            VmLink::Libvirt(d) => d
                .xml()
                .ok()
                .filter(|x| crate::libvirt::has_agent_channel(x))
                .map(|_| AgentLink::Libvirt(d.clone())),
        }
    }
}

/// Where a guest agent answers.
#[derive(Debug, Clone)]
pub enum AgentLink {
    /// The host side of its channel.
    Socket(PathBuf),
    /// Through libvirt.
    Libvirt(crate::libvirt::Domain),
}

impl AgentLink {
    /// A session, when the agent answers.
    pub fn connect(&self) -> Result<Qga> {
        match self {
            AgentLink::Socket(p) => Qga::connect(p, AGENT_TIMEOUT),
            AgentLink::Libvirt(d) => Qga::libvirt(d, AGENT_TIMEOUT),
        }
    }
}

/// Checks the agent at `qga`, giving the session when it is Ready.
pub fn agent_status(qga: &Path) -> (AgentStatus, Option<Qga>) {
    link_status(&AgentLink::Socket(qga.to_path_buf()))
}

/// Checks an agent, giving the session when it is Ready.
pub fn link_status(link: &AgentLink) -> (AgentStatus, Option<Qga>) {
    match link.connect().and_then(|mut q| {
        let info = q.info()?;
        Ok((q, info))
    }) {
        Ok((q, info)) => (AgentStatus::Ready(info), Some(q)),
        Err(e) => (
            AgentStatus::NotReady {
                reason: e.to_string(),
            },
            None,
        ),
    }
}

const AGENT_ADVICE: &str = "start the guest agent in the VM (install qemu-guest-agent; `systemctl start qemu-guest-agent`) and check that the VM has a virtio-serial port named org.qemu.guest_agent.0";

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
    /// Whether the guest device lets other VMs write the image too (`share-rw=on`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Whether the image is encrypted (qcow2 with LUKS): backed up as the guest sees it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// Safe disk names: 1-64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The disks of the VM (`query-block`), in QEMU's order. A libvirt domain's disks are named
/// after their targets in the domain XML (`vda`), not QEMU's device aliases.
pub fn discover(link: &VmLink) -> Result<Vec<VmDisk>> {
    discover_with(&mut link.monitor()?, link)
}

/// [`discover`] on an open session (a QMP socket serves one client at a time).
fn discover_with(q: &mut Qmp, link: &VmLink) -> Result<Vec<VmDisk>> {
    let mut disks = disks_of(&q.execute("query-block", None)?)?;
    // While a backup job runs, its copy-before-write filter stands in front of the disk's
    // node: the disk is the image node under it (same file, an image format).
    if disks.iter().any(|d| is_filter(&d.format)) {
        let nodes = q.execute("query-named-block-nodes", Some(json!({"flat": true})))?;
        for d in disks.iter_mut().filter(|d| is_filter(&d.format)) {
            let under = nodes.as_array().into_iter().flatten().find(|n| {
                let get = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or_default();
                real_file(get("file")) == d.file
                    && !is_filter(get("drv"))
                    && !matches!(get("drv"), "file" | "host_device" | "nbd")
                    && !get("node-name").starts_with("kura-")
            });
            if let Some(n) = under {
                d.node = n["node-name"].as_str().unwrap_or_default().to_string();
                d.format = n["drv"].as_str().unwrap_or_default().to_string();
            }
        }
    }
    let mut devices: Vec<String> = disks.iter().map(|d| d.name.clone()).collect();
    if let VmLink::Libvirt(dom) = link {
        let xml = crate::libvirt::xml_disks(&dom.xml()?)?;
        for d in &mut disks {
            if let Some(x) = xml
                .iter()
                .find(|x| x.alias.as_deref() == Some(d.name.as_str()))
                && safe_name(&x.target)
            {
                d.name = x.target.clone();
            }
        }
    }
    for (d, device) in disks.iter_mut().zip(devices.drain(..)) {
        // The guest device's share-rw property; devices without one are not shared.
        d.shared = q
            .execute(
                "qom-get",
                Some(json!({"path": format!("/machine/peripheral/{device}"), "property": "share-rw"})),
            )
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
    }
    Ok(disks)
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
            file: real_file(&s(ins.get("file"))),
            format: s(ins.get("drv")),
            size: ins
                .get("image")
                .and_then(|i| i.get("virtual-size"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            shared: false,
            encrypted: ins
                .get("encrypted")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        });
    }
    if out.is_empty() {
        return Err(Error::Invalid("the VM has no disk".into()));
    }
    Ok(out)
}

/// Block drivers that filter another node rather than hold an image.
fn is_filter(drv: &str) -> bool {
    matches!(
        drv,
        "copy-before-write" | "throttle" | "compress" | "preallocate" | "snapshot-access"
    )
}

/// The image file behind QEMU's name for it: options QEMU cannot express as a file name
/// (an encrypted qcow2's key secret) make it report a `json:{...}` pseudo-name whose
/// innermost `filename` is the file.
fn real_file(reported: &str) -> String {
    fn find(v: &Value) -> Option<String> {
        if let Some(f) = v.get("filename").and_then(Value::as_str) {
            return Some(f.to_string());
        }
        v.get("file").and_then(find).or_else(|| {
            v.get("file.filename")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    }
    match reported.strip_prefix("json:") {
        Some(j) => serde_json::from_str::<Value>(j)
            .ok()
            .and_then(|v| find(&v))
            .unwrap_or_else(|| reported.to_string()),
        None => reported.to_string(),
    }
}

/// Replaces the passphrases of `-object secret` arguments by a marker; returns the command
/// line to keep in the point's (shown) definition and the passphrases by object id (kept
/// sealed, never shown).
pub fn redact_secrets(argv: &[String]) -> (Vec<String>, Vec<(String, Vec<u8>)>) {
    let mut found = Vec::new();
    let out = argv
        .iter()
        .map(|a| {
            let parts = split_opts(a);
            if parts.first().map(String::as_str) != Some("secret") {
                return a.clone();
            }
            let id = parts
                .iter()
                .find_map(|p| p.strip_prefix("id="))
                .unwrap_or_default()
                .to_string();
            let base64 = parts.iter().any(|p| p == "format=base64");
            let value = parts.iter().find_map(|p| {
                p.strip_prefix("data=")
                    .map(|d| d.as_bytes().to_vec())
                    .or_else(|| p.strip_prefix("file=").and_then(|f| std::fs::read(f).ok()))
            });
            let Some(mut value) = value else {
                return a.clone();
            };
            if base64 {
                match base64::engine::general_purpose::STANDARD.decode(value.trim_ascii()) {
                    Ok(v) => value = v,
                    Err(_) => return a.clone(),
                }
            }
            found.push((id.clone(), value));
            format!("secret,id={},data={SECRET_MARKER}", id.replace(',', ",,"))
        })
        .collect();
    (out, found)
}

/// The `-object secret` values on the command line of the VM whose QMP socket is `qmp`, now
/// (`object:ID` → base64, as a point's manifest keeps them); empty when it cannot be read.
pub fn object_secrets_now(qmp: &Path) -> std::collections::BTreeMap<String, String> {
    let argv = Qmp::connect(qmp, Duration::from_secs(5))
        .ok()
        .and_then(|q| q.peer_cmdline());
    let Some(argv) = argv else {
        return Default::default();
    };
    sealed_object_secrets(redact_secrets(&argv).1)
}

fn sealed_object_secrets(
    found: Vec<(String, Vec<u8>)>,
) -> std::collections::BTreeMap<String, String> {
    found
        .into_iter()
        .map(|(id, value)| {
            (
                format!("object:{id}"),
                base64::engine::general_purpose::STANDARD.encode(value),
            )
        })
        .collect()
}

/// What to do about a Windows guest with the Cluster Shared Volume VSS Writer.
const CSV_ADVICE: &str = "the guest lists the Cluster Shared Volume VSS Writer (`vssadmin list writers`), so VSS cannot make its applications consistent: points are at most file-system consistent. If the guest uses no Cluster Shared Volume, disable that writer; otherwise stop the cluster's VMs and back up all their disks as disk items on one schedule";

/// What stands for a passphrase in a kept command line.
pub const SECRET_MARKER: &str = "@kura-sealed";

/// A VM item's driver.
pub(crate) struct VmDriver {
    pub(crate) link: VmLink,
    pub(crate) disks: Vec<VmDisk>,
    pub(crate) exclude: Vec<String>,
    pub(crate) agent: AgentOptions,
    /// What the precheck found about the disks: (is a warning, message).
    notes: Vec<(bool, String)>,
    /// Whether the precheck found the VM shut off.
    off: bool,
    /// The internal snapshot the current point takes in its transaction, when every disk is
    /// unencrypted qcow2 (the instant-restore tier). The transfer then reads these snapshots
    /// (no copy-before-write job holds the disks); otherwise it reads fleecing exports.
    snapshot: Option<crate::Snapshot>,
    /// Another job is transferring this VM: the point is its snapshot only (no bitmaps, no
    /// exports), kept in the snapshot tier.
    snapshot_only: bool,
    /// What an offline point holds (a shut-off VM's disk files).
    offline: Option<crate::vm_off::Offline>,
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
    /// The overlays' file nodes.
    files: Vec<String>,
    exports: Vec<String>,
    /// Each disk's bitmaps, once the transaction made the new ones.
    bitmaps: Vec<BitmapPlan>,
    /// Whether the point was published (the base bitmaps may go).
    committed: bool,
}

/// Changed-block tracking of one disk for one point.
#[derive(Debug, Clone)]
struct BitmapPlan {
    node: String,
    /// The bitmap this point starts (it records every write after the instant).
    new: String,
    persistent: bool,
    /// The bitmap of the previous point, frozen at the instant and read as the changes, when
    /// it can be trusted; with that point's id.
    base: Option<(String, String)>,
}

impl VmDriver {
    pub(crate) fn new(
        link: VmLink,
        disks: Vec<VmDisk>,
        exclude: Vec<String>,
        agent: AgentOptions,
    ) -> Self {
        VmDriver {
            link,
            disks,
            exclude,
            agent,
            notes: Vec::new(),
            off: false,
            snapshot: None,
            snapshot_only: false,
            offline: None,
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

    /// Decides, per disk, whether the previous point's dirty bitmap can be trusted; removes
    /// this item's stale or inconsistent bitmaps. Runs before any freeze.
    fn plan_bitmaps(
        &self,
        q: &mut Qmp,
        request: &PointRequest,
        phase: &mut Phase,
    ) -> Result<Vec<BitmapPlan>> {
        let prefix = format!("kura.{}.", request.item_id);
        let nodes = q.execute("query-named-block-nodes", Some(json!({"flat": true})))?;
        let mut plans = Vec::new();
        for d in self.included() {
            let node = nodes
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n.get("node-name").and_then(Value::as_str) == Some(&d.node));
            let bitmaps: Vec<&Value> = node
                .and_then(|n| n.get("dirty-bitmaps"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .collect();
            let wanted = request
                .previous
                .as_ref()
                .map(|p| (format!("{prefix}{p}"), p.clone()));
            let mut base = None;
            let mut reason = match &request.previous {
                None => "no previous recovery point".to_string(),
                Some(p) if d.format == "qcow2" => format!(
                    "no dirty bitmap for point {p} (the VM was restarted after an unclean stop, the image was replaced, or that point was made elsewhere)"
                ),
                Some(p) => format!(
                    "no dirty bitmap for point {p}: {} images keep bitmaps only while the VM runs, and it was restarted",
                    d.format
                ),
            };
            for b in bitmaps {
                let Some(name) = b.get("name").and_then(Value::as_str) else {
                    continue;
                };
                if !name.starts_with(&prefix) {
                    continue; // someone else's bitmap
                }
                let flag = |k: &str| b.get(k).and_then(Value::as_bool).unwrap_or(false);
                let usable = flag("recording") && !flag("inconsistent") && !flag("busy");
                match &wanted {
                    Some((w, p)) if w == name && usable => {
                        base = Some((w.clone(), p.clone()));
                        continue;
                    }
                    Some((w, _)) if w == name => {
                        reason = if flag("inconsistent") {
                            "its dirty bitmap is inconsistent (QEMU stopped without saving it, e.g. it was killed)".into()
                        } else {
                            "its dirty bitmap is not recording".into()
                        };
                    }
                    _ => {}
                }
                // Stale (an older point, an unpublished one) or untrustworthy: it goes.
                let _ = q.execute(
                    "block-dirty-bitmap-remove",
                    Some(json!({"node": d.node, "name": name})),
                );
            }
            match &base {
                Some((_, p)) => phase.log.push(format!(
                    "{}: changed-block tracking since point {p}",
                    d.name
                )),
                None => phase.log.push(format!(
                    "{}: {reason}; every allocated block is read and compared",
                    d.name
                )),
            }
            plans.push(BitmapPlan {
                node: d.node.clone(),
                new: format!("{prefix}{}", request.rp_id),
                persistent: d.format == "qcow2",
                base,
            });
        }
        Ok(plans)
    }

    /// The whole point without an agent: prepare, the instant, the exports.
    fn setup(&mut self, q: &mut Qmp, tag: &str, plans: &[BitmapPlan]) -> Result<()> {
        self.prepare(q, tag, plans)?;
        self.instant(q, tag, plans)?;
        self.export(q, tag, plans)
    }

    /// What can be made before the instant (and so outside a guest's freeze): the NBD
    /// server (for fleecing exports, or only for the dirty bitmaps when the transfer reads
    /// the point's internal snapshots) and a fleecing overlay per disk.
    fn prepare(&mut self, q: &mut Qmp, tag: &str, plans: &[BitmapPlan]) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let disks = self.included();
        // A name nobody else holds: a killed kura leaves its directory behind, and a later
        // process may get the same process id (containers count from 1).
        let dir = tempfile::Builder::new()
            .prefix(&format!("kura-vm-{}-", std::process::id()))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| Error::Io {
                path: std::env::temp_dir(),
                source: e,
            })?
            .keep();
        // A QEMU that does not run as root gets the directory (still private to it and
        // root): it opens the overlays kura makes there and creates its NBD socket there.
        let owner = self.link.qemu_ids(q).filter(|(uid, _)| *uid != 0);
        let give = |path: &Path| -> Result<()> {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| Error::Io {
                    path: path.to_path_buf(),
                    source: e,
                })?;
            }
            Ok(())
        };
        give(&dir)?;
        let sock = dir.join("nbd.sock");
        self.held = Some(Held {
            dir: dir.clone(),
            sock: sock.clone(),
            disks: disks.clone(),
            server_started: false,
            jobs: Vec::new(),
            overlays: Vec::new(),
            files: Vec::new(),
            exports: Vec::new(),
            bitmaps: Vec::new(),
            committed: false,
        });
        let held = self.held.as_mut().expect("just set");
        let fleecing = self.snapshot.is_none();
        let bitmaps = plans.iter().any(|p| p.base.is_some());
        if !self.snapshot_only && (fleecing || bitmaps) {
            q.execute(
                "nbd-server-start",
                Some(json!({"addr": {"type": "unix", "data": {"path": sock}}})),
            )?;
            held.server_started = true;
        }
        if !fleecing {
            return Ok(());
        }
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
            give(&file)?;
            // The overlay gets its backing (the disk) only after the instant: a disk with a
            // parent other than its device is no root node, and QEMU takes internal
            // snapshots of root nodes only.
            let fnode = format!("kura-f-{tag}-{i}");
            q.execute(
                "blockdev-add",
                Some(json!({"driver": "file", "node-name": fnode, "filename": file})),
            )?;
            held.files.push(fnode.clone());
            let node = format!("kura-o-{tag}-{i}");
            q.execute(
                "blockdev-add",
                Some(json!({"driver": "qcow2", "node-name": node, "file": fnode,
                    "backing": null})),
            )?;
            held.overlays.push(node);
        }
        Ok(())
    }

    /// The instant: one transaction over every disk. New bitmaps start and previous ones
    /// stop in the same instant as the fleecing.
    fn instant(&mut self, q: &mut Qmp, tag: &str, plans: &[BitmapPlan]) -> Result<()> {
        let disks = self.included();
        let mut actions: Vec<Value> = Vec::new();
        if let Some(crate::Snapshot::Vm { name, .. }) = &self.snapshot {
            for d in &disks {
                actions.push(json!({"type": "blockdev-snapshot-internal-sync", "data": {
                    "device": d.node, "name": name}}));
            }
        }
        let held = self
            .held
            .as_mut()
            .ok_or_else(|| Error::Invalid("nothing was prepared".into()))?;
        let fleecing = self.snapshot.is_none();
        let mut jobs = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            actions.push(json!({"type": "block-dirty-bitmap-add", "data": {
                "node": plan.node, "name": plan.new, "persistent": plan.persistent}}));
            if let Some((base, _)) = &plan.base {
                actions.push(json!({"type": "block-dirty-bitmap-disable", "data": {
                    "node": plan.node, "name": base}}));
            }
            if fleecing {
                let job = format!("kura-j-{tag}-{i}");
                actions.push(json!({"type": "blockdev-backup", "data": {
                    "job-id": job, "device": disks[i].node,
                    "target": held.overlays[i], "sync": "none"}}));
                jobs.push(job);
            }
        }
        q.execute("transaction", Some(json!({ "actions": actions })))?;
        held.bitmaps = plans.to_vec();
        held.jobs = jobs;
        Ok(())
    }

    /// Read-only NBD exports of the instant (after the guest was thawed).
    fn export(&mut self, q: &mut Qmp, tag: &str, plans: &[BitmapPlan]) -> Result<()> {
        let disks = self.included();
        let held = self
            .held
            .as_mut()
            .ok_or_else(|| Error::Invalid("nothing was prepared".into()))?;
        if self.snapshot_only {
            return Ok(());
        }
        for (i, d) in disks.iter().enumerate() {
            if self.snapshot.is_some() {
                // The data comes from the internal snapshot; only the changes, frozen in the
                // previous point's bitmap at the instant, are read from the live disk.
                if let Some((base, _)) = &plans[i].base {
                    let id = format!("kura-e-{tag}-{i}");
                    q.execute(
                        "block-export-add",
                        Some(json!({"type": "nbd", "id": id, "node-name": d.node,
                            "name": d.name, "writable": false, "bitmaps": [base]})),
                    )?;
                    held.exports.push(id);
                }
                continue;
            }
            // What the copy-before-write job did not copy reads through from the disk.
            q.execute(
                "blockdev-reopen",
                Some(
                    json!({"options": [{"driver": "qcow2", "node-name": held.overlays[i],
                    "file": held.files[i], "backing": d.node}]}),
                ),
            )?;
            let id = format!("kura-e-{tag}-{i}");
            let mut export = json!({"type": "nbd", "id": id, "node-name": held.overlays[i],
                "name": d.name, "writable": false});
            if let Some((base, _)) = &plans[i].base {
                // QEMU 7.2 takes plain names, looked up along the export's backing chain.
                export["bitmaps"] = json!([base]);
            }
            q.execute("block-export-add", Some(export))?;
            held.exports.push(id);
        }
        Ok(())
    }
}

impl SourceDriver for VmDriver {
    fn precheck(&mut self) -> Result<()> {
        // The VM's disks now: a disk attached since the item was protected is backed up too
        // (read in full the first time), one that was detached is missing from the point with
        // a warning, and node names may change between runs of the VM.
        self.notes.clear();
        self.off = self.link.is_off()?;
        if self.off {
            // Its disks as last seen (a libvirt domain's files from its definition now).
            if let VmLink::Libvirt(d) = &self.link {
                let xml = crate::libvirt::xml_disks(&d.inactive_xml()?)?;
                for disk in &mut self.disks {
                    if let Some(f) = xml
                        .iter()
                        .find(|x| x.target == disk.name)
                        .and_then(|x| x.file.clone())
                    {
                        disk.file = f;
                    }
                }
            }
            for d in self.included() {
                if !Path::new(&d.file).is_file() {
                    return Err(Error::NotFound {
                        path: PathBuf::from(&d.file),
                    });
                }
            }
            return Ok(());
        }
        let now = discover(&self.link)?;
        for d in self.included() {
            if !now.iter().any(|n| n.name == d.name) {
                self.notes.push((
                    true,
                    format!(
                        "VM disk {} is no longer attached (the VM has: {}); it is not in this point",
                        d.name,
                        now.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        for n in &now {
            if !self.exclude.contains(&n.name) && !self.disks.iter().any(|d| d.name == n.name) {
                self.notes.push((
                    false,
                    format!(
                        "VM disk {} was attached since the item was protected; it is backed up too",
                        n.name
                    ),
                ));
            }
        }
        self.disks = now;
        if self.included().is_empty() {
            return Err(Error::Invalid(
                "every disk the VM has now is excluded: nothing would be backed up".into(),
            ));
        }
        Ok(())
    }

    fn take_point(&mut self, request: &PointRequest) -> Result<PointInTime> {
        if self.off {
            if request.transfer_busy {
                return Err(Error::Invalid(
                    "another job is still reading this shut-off VM's disk files, and a VM that is off has no snapshot tier to keep a second point in: the VM was not touched; back up again when that transfer ends".into(),
                ));
            }
            return self.take_offline(request);
        }
        // Names of what this point adds to the VM: the item's and the point's last 8 hex
        // digits (QEMU names are at most 31 characters).
        let short = |id: &str| id[id.len().saturating_sub(8)..].to_string();
        let item_tag = short(&request.item_id);
        let tag = format!("{item_tag}-{}", short(&request.rp_id));
        let rp_id = tag.as_str();
        let mut q = self.link.monitor()?;
        // The VM's definition at the instant: its identity and its disks as QEMU has them.
        let full_cmdline = q.peer_cmdline();
        let (cmdline, object_secrets) = match &full_cmdline {
            Some(c) => {
                let (c, s) = redact_secrets(c);
                (Some(c), s)
            }
            None => (None, Vec::new()),
        };
        let definition = json!({
            "qemu": q.execute("query-version", None).ok(),
            "name": q.execute("query-name", None).ok(),
            "uuid": q.execute("query-uuid", None).ok(),
            "disks": self.disks,
            "exclude": self.exclude,
            "cmdline": cmdline,
            "domain_xml": match &self.link {
                VmLink::Libvirt(d) => d.inactive_xml().ok(),
                VmLink::Qmp(_) => None,
            },
        });
        let mut phase = Phase::default();
        // The instant-restore tier: an internal snapshot of every disk in the same instant.
        let included = self.included();
        // (Encrypted images are left out: reading their snapshots would need the key.)
        self.snapshot = included
            .iter()
            .all(|d| d.format == "qcow2" && !d.encrypted)
            .then(|| crate::Snapshot::Vm {
                source: self.link.source(),
                name: crate::Snapshot::tag(&request.rp_id),
                disks: included
                    .iter()
                    .map(|d| (d.name.clone(), PathBuf::from(&d.file)))
                    .collect(),
            });
        // Another job still transfers this VM: this point can live only in the snapshot tier
        // (Azure's overlap rule), so without one it is refused before the VM is touched.
        self.snapshot_only = request.transfer_busy;
        if self.snapshot_only && self.snapshot.is_none() {
            return Err(Error::Invalid(
                "another job is still transferring this VM, and its disks are not all unencrypted qcow2, so there is no snapshot tier to keep this point in: the VM was not touched; back up again when that transfer ends".into(),
            ));
        }
        // A backup of this item whose process died (the engine lets only one transfer run)
        // may have left its exports, jobs and overlays in the VM; a running transfer's are
        // its own, so nothing is swept while one runs.
        if !self.snapshot_only && sweep(&mut q, &item_tag) {
            phase
                .log
                .push("removed what an interrupted backup of this item left in the VM".into());
            // Its copy-before-write filters stood in front of the disks' nodes: look again.
            self.disks = discover_with(&mut q, &self.link)?;
        }
        for (warn, note) in self.notes.clone() {
            if warn {
                phase.warn(note);
            } else {
                phase.log.push(note);
            }
        }
        // An encrypted disk's passphrase goes with the point (sealed in the vault like all of
        // it), so a restore can write the disk encrypted again.
        let mut secrets = std::collections::BTreeMap::new();
        let live_xml = match &self.link {
            VmLink::Libvirt(dom) => dom.xml().ok(),
            VmLink::Qmp(_) => None,
        };
        for d in self.included().iter().filter(|d| d.encrypted) {
            let found = match (&self.link, &live_xml) {
                // libvirt keeps the passphrase in its secret store (readable unless private).
                (VmLink::Libvirt(dom), Some(x)) => crate::libvirt::disk_secret_uuid(x, &d.name)
                    .and_then(|u| dom.secret_value(&u).ok())
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()),
                _ => full_cmdline
                    .as_deref()
                    .and_then(|c| luks_secret(c, &d.node)),
            };
            match found {
                Some(s) => {
                    secrets.insert(
                        d.name.clone(),
                        base64::engine::general_purpose::STANDARD.encode(s),
                    );
                }
                None => phase.warn(format!(
                    "VM disk {} is encrypted, but kura cannot read its passphrase (not on the VM's command line as -object secret with data or file, or a private libvirt secret); it is backed up as the guest sees it and restores will be decrypted",
                    d.name
                )),
            }
        }
        secrets.extend(sealed_object_secrets(object_secrets));
        // A snapshot-only point leaves the bitmaps alone: the next transfer reads every change
        // since the last point in the vault from the bitmap that point started.
        let shared: Vec<String> = self
            .included()
            .into_iter()
            .filter(|d| d.shared)
            .map(|d| d.name)
            .collect();
        if !shared.is_empty() {
            phase.capped.push(format!(
                "disks {} are shared with other VMs (share-rw)",
                shared.join(", ")
            ));
        }
        let plans = if self.snapshot_only {
            phase.log.push(
                "another job is transferring this VM: this point is kept in the snapshot tier only, and the next transfer carries its changes".into(),
            );
            Vec::new()
        } else {
            self.plan_bitmaps(&mut q, request, &mut phase)?
        };
        let agent_link = self.link.agent(&self.agent);
        let agent = match &agent_link {
            Some(link) => {
                let t = Instant::now();
                let (status, mut session) = link_status(link);
                match &status {
                    AgentStatus::Ready(i) => {
                        phase.step(
                            t,
                            &format!("agent Ready: qemu-ga {} on {}", i.version, i.os),
                        );
                        if let Some(qga) = session.as_mut() {
                            phase.windows(qga, i);
                        }
                    }
                    AgentStatus::NotReady { reason } if self.agent.require => {
                        return Err(Error::Invalid(format!(
                            "the guest agent is Not Ready ({reason}) and the item requires it (--require-agent); {AGENT_ADVICE}"
                        )));
                    }
                    AgentStatus::NotReady { reason } => phase.warn(format!(
                        "the guest agent is Not Ready ({reason}); this point is crash-consistent. To get consistent points, {AGENT_ADVICE}"
                    )),
                    AgentStatus::NotConfigured => {}
                }
                phase.agent = Some(status);
                session
            }
            None => {
                phase.log.push(
                    "no guest agent configured (protect with --qga SOCKET for file-system or application consistency): crash-consistent".into(),
                );
                phase.agent = Some(AgentStatus::NotConfigured);
                None
            }
        };
        let result = match agent {
            Some(mut qga) => self.quiesced(
                &mut q,
                &mut qga,
                agent_link.as_ref().expect("a session has a link"),
                rp_id,
                &plans,
                &mut phase,
            ),
            None => self.setup(&mut q, rp_id, &plans),
        };
        if let Err(e) = result {
            self.teardown(&mut q);
            return Err(e);
        }
        let consistency = phase.consistency();
        let cap = if phase.capped.is_empty() {
            String::new()
        } else {
            format!(
                " (at most file-system consistent: {})",
                phase.capped.join("; ")
            )
        };
        phase.log.push(format!(
            "point taken: {}-consistent{cap}",
            consistency.as_str()
        ));
        let no_snapshot = self.snapshot.is_none().then(|| {
            "the VM has disks that are not qcow2, or encrypted ones (internal snapshots of qcow2 disks are the VM's instant-restore tier)".to_string()
        });
        Ok(PointInTime {
            snapshot: self.snapshot.clone(),
            no_snapshot,
            snapshot_only: self.snapshot_only.then(|| {
                "another job is still transferring this VM; the next transfer carries these changes".to_string()
            }),
            consistency,
            definition: Some(definition),
            capture: Some(phase.record()),
            log: phase.log,
            warnings: phase.warnings,
            secrets,
        })
    }

    fn open_disks(&mut self, _point: &PointInTime) -> Result<Vec<(String, Box<dyn DiskReader>)>> {
        if let Some(o) = self.offline.as_mut() {
            return o.readers();
        }
        let held = self
            .held
            .as_ref()
            .ok_or_else(|| Error::Invalid("no point in time was taken".into()))?;
        if self.snapshot_only {
            return Err(Error::Invalid(
                "this point is kept in the snapshot tier only: there is nothing to transfer".into(),
            ));
        }
        held.disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let base = held.bitmaps.get(i).and_then(|b| b.base.clone());
                let r: Box<dyn DiskReader> = match &self.snapshot {
                    // The point's internal snapshot, which never changes (the VM writes
                    // elsewhere in the image), with the changes from the VM's export.
                    Some(crate::Snapshot::Vm { name, .. }) => Box::new(SnapshotRead {
                        data: NbdReader::open_snapshot(Path::new(&d.file), "qcow2", name)?,
                        changes: match base {
                            Some(b) => Some(NbdReader::connect_export_with_bitmap(
                                &held.sock,
                                &d.name,
                                "raw",
                                Some(b),
                            )?),
                            None => None,
                        },
                    }),
                    _ => Box::new(NbdReader::connect_export_with_bitmap(
                        &held.sock, &d.name, "raw", base,
                    )?),
                };
                Ok((d.name.clone(), r))
            })
            .collect()
    }

    fn forget(&mut self, item_id: &str) {
        let prefix = format!("kura.{item_id}.");
        if let Ok(mut q) = self.link.monitor() {
            let nodes = q
                .execute("query-named-block-nodes", Some(json!({"flat": true})))
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            for n in nodes {
                let node = n["node-name"].as_str().unwrap_or_default().to_string();
                for b in n["dirty-bitmaps"].as_array().cloned().unwrap_or_default() {
                    if let Some(name) = b["name"].as_str().filter(|b| b.starts_with(&prefix)) {
                        let _ = q.execute(
                            "block-dirty-bitmap-remove",
                            Some(json!({"node": node, "name": name})),
                        );
                    }
                }
            }
            return;
        }
        // Shut off: the persistent bitmaps are in the qcow2 files.
        for d in self.included().iter().filter(|d| d.format == "qcow2") {
            crate::vm_off::remove_bitmaps(Path::new(&d.file), &prefix);
        }
    }

    fn findings(&mut self) -> Vec<Finding> {
        let mut out = Vec::new();
        if self.link.is_off().unwrap_or(false) {
            out.push(Finding {
                name: "state".into(),
                ok: true,
                detail: "shut off: backups read its disk files, locked against a start of the VM (crash-consistent)".into(),
            });
            return out;
        }
        match self.link.agent(&self.agent) {
            None => out.push(Finding {
                name: "agent".into(),
                ok: true,
                detail: "no guest agent configured: points are crash-consistent (protect with --qga SOCKET for file-system or application consistency)".into(),
            }),
            Some(link) => match link_status(&link) {
                (AgentStatus::Ready(i), session) => {
                    out.push(Finding {
                        name: "agent".into(),
                        ok: true,
                        detail: format!("Ready: qemu-ga {} on {}{}", i.version, i.os,
                            if i.commands.iter().any(|c| c == "guest-fsfreeze-freeze") { "" }
                            else { "; it does not offer guest-fsfreeze-freeze, so points will be crash-consistent" }),
                    });
                    let csv = session.and_then(|mut q| q.csv_writer(&i).transpose());
                    match csv {
                        Some(Ok(true)) => out.push(Finding {
                            name: "csv-writer".into(),
                            ok: true,
                            detail: CSV_ADVICE.into(),
                        }),
                        Some(Err(e)) => out.push(Finding {
                            name: "csv-writer".into(),
                            ok: true,
                            detail: format!("could not list the guest's VSS writers: {e}"),
                        }),
                        Some(Ok(false)) | None => {}
                    }
                }
                (AgentStatus::NotReady { reason }, _) => out.push(Finding {
                    name: "agent".into(),
                    ok: !self.agent.require,
                    detail: format!(
                        "Not Ready ({reason}); backups will be {}. To fix it, {AGENT_ADVICE}. If the guest cannot run an agent (a network appliance, a custom OS), protect each of its disks as a disk item instead:\n{}",
                        if self.agent.require { "refused (--require-agent)" } else { "crash-consistent and end with a warning" },
                        self.included()
                            .iter()
                            .map(|d| format!("  kura item protect disk {} --name NAME-{} --vault VAULT", d.file, d.name))
                            .collect::<Vec<_>>()
                            .join("\n")
                    ),
                }),
                (AgentStatus::NotConfigured, _) => {}
            },
        }
        if let VmLink::Libvirt(d) = &self.link
            && let Ok(models) = d.security_models()
            && !models.is_empty()
        {
            out.push(Finding {
                name: "confinement".into(),
                ok: true,
                detail: format!(
                    "libvirt confines QEMU with {}: kura gives the VM fleecing overlays and an NBD socket in {} through QMP, which the confinement may deny; if backups fail with \"Permission denied\", this host needs libvirt's own backup API, which kura does not use yet",
                    models.join(", "),
                    std::env::temp_dir().display()
                ),
            });
        }
        let shared: Vec<String> = self
            .included()
            .into_iter()
            .filter(|d| d.shared)
            .map(|d| d.name)
            .collect();
        if !shared.is_empty() {
            out.push(Finding {
                name: "shared-disks".into(),
                ok: true,
                detail: format!(
                    "disks {} are shared with other VMs (share-rw): points are at most file-system consistent; for consistent points of every VM using them, stop the VMs and back up all their disks as disk items on one schedule",
                    shared.join(", ")
                ),
            });
        }
        out
    }

    fn commit(&mut self, _point: &PointInTime) {
        if let Some(o) = self.offline.as_mut() {
            o.commit();
        }
        // The previous points' bitmaps go once the exports that read them are gone (release).
        if let Some(h) = self.held.as_mut() {
            h.committed = true;
        }
    }

    fn release(&mut self, _point: &PointInTime) -> Vec<String> {
        if let Some(o) = self.offline.take() {
            o.release();
            return Vec::new();
        }
        if let Ok(mut q) = self.link.monitor() {
            self.teardown(&mut q);
        }
        if let Some(h) = self.held.take() {
            let _ = std::fs::remove_dir_all(&h.dir);
        }
        Vec::new()
    }
}

impl VmDriver {
    /// A shut-off VM's point: its disk files, locked against a start, crash-consistent.
    fn take_offline(&mut self, request: &PointRequest) -> Result<PointInTime> {
        let prefix = format!("kura.{}.", request.item_id);
        let mut log = vec![
            "the VM is shut off: its disk files are read, locked against a start of the VM (crash-consistent, as for an offline VM in Azure)".to_string(),
        ];
        let offline = crate::vm_off::Offline::take(
            &self.included(),
            &prefix,
            &request.rp_id,
            request.previous.as_deref(),
            &mut log,
        )?;
        self.offline = Some(offline);
        let definition = json!({
            "disks": self.disks,
            "exclude": self.exclude,
            "domain_xml": match &self.link {
                VmLink::Libvirt(d) => d.inactive_xml().ok(),
                VmLink::Qmp(_) => None,
            },
            "state": "shut off",
        });
        log.push("point taken: crash-consistent".into());
        Ok(PointInTime {
            snapshot: None,
            no_snapshot: Some(
                "a shut-off VM is read from its disk files, without a snapshot tier".into(),
            ),
            snapshot_only: None,
            consistency: Consistency::Crash,
            definition: Some(definition),
            capture: Some(json!({"offline": true})),
            log,
            warnings: Vec::new(),
            secrets: Default::default(),
        })
    }
}

/// Removes this item's exports, block jobs and overlays left in the VM by a backup that did
/// not end (its process was killed); stops the NBD server when no kura export is left.
/// Returns whether there was anything.
fn sweep(q: &mut Qmp, item_tag: &str) -> bool {
    let mine = |name: &str, kind: &str| name.starts_with(&format!("kura-{kind}-{item_tag}-"));
    let names = |v: Option<Value>, key: &str| -> Vec<String> {
        v.and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x.get(key).and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let exports = names(q.execute("query-block-exports", None).ok(), "id");
    let jobs = names(q.execute("query-block-jobs", None).ok(), "device");
    let nodes = names(
        q.execute("query-named-block-nodes", Some(json!({"flat": true})))
            .ok(),
        "node-name",
    );
    let mut found = false;
    for e in exports.iter().filter(|e| mine(e, "e")) {
        found = true;
        let _ = q.execute("block-export-del", Some(json!({"id": e, "mode": "hard"})));
    }
    for j in jobs.iter().filter(|j| mine(j, "j")) {
        found = true;
        let _ = q.execute(
            "block-job-cancel",
            Some(json!({"device": j, "force": true})),
        );
    }
    for _ in 0..500 {
        let left = names(q.execute("query-block-jobs", None).ok(), "device");
        if !left.iter().any(|j| mine(j, "j")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for kind in ["o", "f"] {
        for n in nodes.iter().filter(|n| mine(n, kind)) {
            found = true;
            let _ = q.execute("blockdev-del", Some(json!({ "node-name": n })));
        }
    }
    if found
        && !exports
            .iter()
            .any(|e| e.starts_with("kura-e-") && !mine(e, "e"))
    {
        let _ = q.execute("nbd-server-stop", None);
    }
    found
}

/// What the snapshot phase did, step by step.
#[derive(Default)]
struct Phase {
    log: Vec<String>,
    warnings: Vec<String>,
    agent: Option<AgentStatus>,
    /// Scripts that ran: (which, path, succeeded).
    scripts: Vec<(&'static str, String, bool)>,
    frozen: Option<u64>,
    freeze_window: Option<Duration>,
    /// A Windows guest, whose agent freezes through VSS (application-consistent).
    windows: bool,
    /// Why the point can be at most file-system consistent (shared disks, the CSV writer).
    capped: Vec<String>,
}

impl Phase {
    fn step(&mut self, started: Instant, what: &str) {
        self.log
            .push(format!("{what} ({} ms)", started.elapsed().as_millis()));
    }

    fn warn(&mut self, message: String) {
        self.log.push(format!("warning: {message}"));
        self.warnings.push(message);
    }

    fn consistency(&self) -> Consistency {
        let scripts_ok = self.scripts.iter().all(|s| s.2);
        match self.frozen {
            None => Consistency::Crash,
            Some(_) if !self.capped.is_empty() => Consistency::FileSystem,
            // On Windows the freeze is a VSS snapshot: the writers made the applications
            // consistent.
            Some(_) if self.windows && scripts_ok => Consistency::Application,
            Some(_) if !self.scripts.is_empty() && scripts_ok => Consistency::Application,
            Some(_) => Consistency::FileSystem,
        }
    }

    /// A Windows guest: its freeze goes through VSS, unless the Cluster Shared Volume VSS
    /// Writer is there (then at most file-system consistent, as in Azure).
    fn windows(&mut self, qga: &mut Qga, info: &AgentInfo) {
        self.windows = info.is_windows();
        match qga.csv_writer(info) {
            Ok(None | Some(false)) => {}
            Ok(Some(true)) => {
                self.capped
                    .push(format!("the guest has the {}", crate::qga::CSV_WRITER));
                self.warn(CSV_ADVICE.to_string());
            }
            Err(e) => self.warn(format!(
                "could not list the guest's VSS writers ({e}); if it has the {}, this point is at most file-system consistent",
                crate::qga::CSV_WRITER
            )),
        }
    }

    /// What is kept on the point.
    fn record(&self) -> Value {
        json!({
            "agent": self.agent,
            "frozen_filesystems": self.frozen,
            "freeze_ms": self.freeze_window.map(|d| d.as_millis() as u64),
            "scripts": self.scripts.iter().map(|(k, p, ok)| json!({"script": k, "path": p, "ok": ok})).collect::<Vec<_>>(),
            "vss": self.windows,
            "at_most_file_system": self.capped,
        })
    }
}

impl VmDriver {
    /// The snapshot phase with a Ready agent: pre-script, freeze, the transaction, thaw,
    /// post-script. Thaw and the post-script run whatever happened after the pre-script.
    fn quiesced(
        &mut self,
        q: &mut Qmp,
        qga: &mut Qga,
        link: &AgentLink,
        rp_id: &str,
        plans: &[BitmapPlan],
        phase: &mut Phase,
    ) -> Result<()> {
        // Everything that can happen before the instant does, so the freeze lasts only as
        // long as the transaction.
        self.prepare(q, rp_id, plans)?;
        let (pre, post) = self.scripts(qga, phase);
        if let Some(pre) = &pre {
            run_script(qga, "pre-script", pre, phase);
        }
        let t = Instant::now();
        match qga.freeze(FREEZE_TIMEOUT) {
            Ok(n) => {
                phase.frozen = Some(n);
                phase.step(t, &format!("froze {n} file systems"));
            }
            Err(e) => phase.warn(format!(
                "the guest's file systems could not be frozen ({e}); this point is crash-consistent"
            )),
        }
        let taken = self.instant(q, rp_id, plans);
        if phase.frozen.is_some() {
            let t2 = Instant::now();
            match thaw(qga, link) {
                Ok(()) => {
                    let window = t.elapsed();
                    phase.freeze_window = Some(window);
                    phase.step(t2, &format!("thawed; the guest was frozen {} ms", window.as_millis()));
                }
                Err(e) => phase.warn(format!(
                    "the guest could not be thawed ({e}); run `guest-fsfreeze-thaw` through its agent or restart the VM"
                )),
            }
        }
        if let Some(post) = &post {
            run_script(qga, "post-script", post, phase);
        }
        taken?;
        self.export(q, rp_id, plans)
    }

    /// The scripts to run: the item's, else the defaults that exist in the guest.
    fn scripts(&self, qga: &mut Qga, phase: &mut Phase) -> (Option<String>, Option<String>) {
        let mut pick = |own: &Option<String>, default: &str| match own {
            Some(p) => Some(p.clone()),
            None => match qga.file_exists(default) {
                Ok(true) => Some(default.to_string()),
                Ok(false) => None,
                Err(e) => {
                    phase.warn(format!("could not look for {default} in the guest: {e}"));
                    None
                }
            },
        };
        let pre = pick(&self.agent.pre_script, DEFAULT_PRE_SCRIPT);
        let post = pick(&self.agent.post_script, DEFAULT_POST_SCRIPT);
        if pre.is_none() && post.is_none() {
            phase.log.push(format!(
                "no pre- or post-script ({DEFAULT_PRE_SCRIPT} and {DEFAULT_POST_SCRIPT} are not in the guest): file-system consistency at best"
            ));
        }
        (pre, post)
    }
}

fn run_script(qga: &mut Qga, which: &'static str, path: &str, phase: &mut Phase) {
    let t = Instant::now();
    let ok = match qga.exec(path, &[], SCRIPT_TIMEOUT) {
        Ok(r) if r.ended && r.exit_code == Some(0) => {
            phase.step(
                t,
                &format!("{which} {path} succeeded: {}", one_line(&r.output)),
            );
            true
        }
        Ok(r) if !r.ended => {
            phase.warn(format!(
                "{which} {path} did not end within {} s",
                SCRIPT_TIMEOUT.as_secs()
            ));
            false
        }
        Ok(r) => {
            phase.warn(format!(
                "{which} {path} failed with exit code {}: {}",
                r.exit_code
                    .map_or("none (killed)".to_string(), |c| c.to_string()),
                one_line(&r.output)
            ));
            false
        }
        Err(e) => {
            phase.warn(format!("{which} {path} could not run: {e}"));
            false
        }
    };
    phase.scripts.push((which, path.to_string(), ok));
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.is_empty() {
        "no output".into()
    } else {
        format!("output: {s}")
    }
}

/// Thaws; when that fails, tries again on fresh sessions: a guest must not stay frozen.
fn thaw(qga: &mut Qga, link: &AgentLink) -> Result<()> {
    let mut last = match qga.thaw(FREEZE_TIMEOUT) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        let again = link.connect().and_then(|mut q| {
            if q.freeze_status()? == "thawed" {
                return Ok(());
            }
            q.thaw(FREEZE_TIMEOUT).map(|_| ())
        });
        match again {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A disk read from the point's internal snapshot, with the changes since the previous
/// point from the dirty bitmap the VM's QEMU exports for the live disk.
struct SnapshotRead {
    data: NbdReader,
    changes: Option<NbdReader>,
}

impl DiskReader for SnapshotRead {
    fn size(&self) -> u64 {
        self.data.size()
    }

    fn format(&self) -> &str {
        self.data.format()
    }

    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<crate::Extent>> {
        self.data.extents(offset, len)
    }

    fn changes(&mut self) -> Result<Option<crate::Changes>> {
        let size = self.data.size();
        let Some(live) = self.changes.as_mut() else {
            return Ok(None);
        };
        // The live disk may have grown since the instant: only the point's size counts.
        Ok(live.changes()?.map(|mut c| {
            c.dirty.retain(|(o, _)| *o < size);
            if let Some(last) = c.dirty.last_mut() {
                last.1 = last.1.min(size - last.0);
            }
            c
        }))
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.data.read_at(buf, offset)
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
                            .is_some_and(|d| d.starts_with("kura-j-"))
                    })
                });
            if !running {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for node in h.overlays.drain(..).chain(h.files.drain(..)) {
            let _ = q.execute("blockdev-del", Some(json!({ "node-name": node })));
        }
        if h.server_started {
            let _ = q.execute("nbd-server-stop", None);
            h.server_started = false;
        }
        // A point that was not published: its new bitmap goes, and the previous one (frozen
        // at the instant) takes back the writes made since, so the next backup misses none.
        if h.committed {
            // Published: the new bitmaps take over from the previous points' ones.
            for b in h.bitmaps.drain(..) {
                if let Some((base, _)) = &b.base {
                    let _ = q.execute(
                        "block-dirty-bitmap-remove",
                        Some(json!({"node": b.node, "name": base})),
                    );
                }
            }
        } else {
            for b in h.bitmaps.drain(..) {
                if let Some((base, _)) = &b.base {
                    let _ = q.execute(
                        "transaction",
                        Some(json!({"actions": [
                            {"type": "block-dirty-bitmap-merge", "data": {
                                "node": b.node, "target": base, "bitmaps": [b.new]}},
                            {"type": "block-dirty-bitmap-enable", "data": {
                                "node": b.node, "name": base}}]})),
                    );
                }
                let _ = q.execute(
                    "block-dirty-bitmap-remove",
                    Some(json!({"node": b.node, "name": b.new})),
                );
            }
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

/// What a restored copy of a VM is made of: the new name, where its files go, and each
/// original disk file's restored replacement.
#[derive(Debug, Clone)]
pub struct CloneSpec<'a> {
    /// The new VM's name.
    pub name: &'a str,
    /// The directory that holds its disks, sockets and logs.
    pub dir: &'a Path,
    /// (original image file, restored image file).
    pub disks: &'a [(String, PathBuf)],
    /// A fresh UUID (`xxxxxxxx-xxxx-...`).
    pub uuid: &'a str,
    /// Random bytes that make the new MAC addresses.
    pub seed: u64,
}

/// Paths a copy's command line moved: (original, new).
pub type Moved = Vec<(String, String)>;

/// The command line that runs a copy of a VM whose original command line was `argv`: the
/// restored disks instead of the originals, every socket, pidfile and log inside the new
/// directory (named after the new VM), a new name, UUID and MAC addresses. Returns the
/// command line and the (original, new) paths it moved.
pub fn clone_command(argv: &[String], c: &CloneSpec<'_>) -> Result<(Vec<String>, Moved)> {
    let Some((bin, args)) = argv.split_first() else {
        return Err(Error::Invalid(
            "the point keeps no QEMU command line".into(),
        ));
    };
    let mut moved: Vec<(String, String)> = Vec::new();
    let mut macs = 0u64;
    let mut out = vec![bin.clone()];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let flag = a.trim_start_matches('-');
        out.push(a.clone());
        if !a.starts_with('-') {
            continue;
        }
        let takes_value = !matches!(
            flag,
            "daemonize"
                | "nodefaults"
                | "no-reboot"
                | "no-shutdown"
                | "S"
                | "enable-kvm"
                | "no-user-config"
                | "nographic"
                | "snapshot"
                | "no-hpet"
                | "no-acpi"
                | "full-screen"
                | "sandbox-off"
        );
        if !takes_value {
            continue;
        }
        let Some(v) = it.next() else { break };
        let new = match flag {
            "name" => c.name.to_string(),
            "uuid" => c.uuid.to_string(),
            "pidfile" | "D" => move_path(v, c, &mut moved),
            "vnc" | "spice" => "none".to_string(),
            _ if v.starts_with('{') => {
                let mut j: Value = serde_json::from_str(v)
                    .map_err(|e| Error::Invalid(format!("unreadable -{flag} argument: {e}")))?;
                rewrite_json(&mut j, c, &mut moved, &mut macs);
                j.to_string()
            }
            _ => rewrite_opts(v, c, &mut moved, &mut macs),
        };
        *out.last_mut().expect("pushed") = a.clone();
        out.push(new);
    }
    // The copy is named and identified as asked even when the original was not.
    for (flag, value) in [("name", c.name), ("uuid", c.uuid)] {
        if !args.iter().any(|a| a.trim_start_matches('-') == flag) {
            out.push(format!("-{flag}"));
            out.push(value.to_string());
        }
    }
    // Every disk must have been replaced: a copy must never open the original's images.
    for (orig, _) in c.disks {
        if argv.iter().any(|a| a.contains(orig.as_str()))
            && out.iter().skip(1).any(|a| a.contains(orig.as_str()))
        {
            return Err(Error::Invalid(format!(
                "the VM's command line names {orig} in a way kura cannot rewrite; restore its disks with `kura restore disks` and start the copy by hand"
            )));
        }
    }
    Ok((out, moved))
}

fn move_path(orig: &str, c: &CloneSpec<'_>, moved: &mut Vec<(String, String)>) -> String {
    if let Some((_, new)) = moved.iter().find(|(o, _)| o == orig) {
        return new.clone();
    }
    let base = Path::new(orig)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let new = c
        .dir
        .join(format!("{}.{base}", c.name))
        .display()
        .to_string();
    moved.push((orig.to_string(), new.clone()));
    new
}

fn new_mac(c: &CloneSpec<'_>, n: &mut u64) -> String {
    *n += 1;
    let x = c.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(*n);
    // 52:54:00 is QEMU's locally administered prefix.
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (x >> 16) as u8,
        (x >> 8) as u8,
        x as u8
    )
}

/// Rewrites one `key=value,key=value` option string (`,,` is a literal comma).
fn rewrite_opts(
    v: &str,
    c: &CloneSpec<'_>,
    moved: &mut Vec<(String, String)>,
    macs: &mut u64,
) -> String {
    let parts = split_opts(v);
    let rewritten: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (key, val) = match p.split_once('=') {
                Some((k, v)) => (Some(k), v.to_string()),
                None => (None, p.clone()),
            };
            if let Some((_, new)) = c.disks.iter().find(|(o, _)| *o == val) {
                return join_opt(key, &new.display().to_string());
            }
            match key {
                Some("path") | Some("logfile") => join_opt(key, &move_path(&val, c, moved)),
                Some("mac") | Some("macaddr") => join_opt(key, &new_mac(c, macs)),
                // -qmp unix:PATH,server=on / -serial file:PATH
                None if i == 0 => match val.split_once(':') {
                    Some((kind @ ("unix" | "file"), path)) => {
                        format!("{kind}:{}", move_path(path, c, moved))
                    }
                    _ => val,
                },
                _ => join_opt(key, &val),
            }
        })
        .collect();
    rewritten
        .iter()
        .map(|p| p.replace(',', ",,"))
        .collect::<Vec<_>>()
        .join(",")
}

fn join_opt(key: Option<&str>, val: &str) -> String {
    match key {
        Some(k) => format!("{k}={val}"),
        None => val.to_string(),
    }
}

fn split_opts(v: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = v.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                parts.last_mut().expect("one").push(',');
            } else {
                parts.push(String::new());
            }
        } else {
            parts.last_mut().expect("one").push(ch);
        }
    }
    parts
}

fn rewrite_json(
    v: &mut Value,
    c: &CloneSpec<'_>,
    moved: &mut Vec<(String, String)>,
    macs: &mut u64,
) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if let Value::String(s) = x {
                    if let Some((_, new)) = c.disks.iter().find(|(o, _)| o == s) {
                        *s = new.display().to_string();
                    } else if k == "path" {
                        *s = move_path(s, c, moved);
                    } else if k == "mac" {
                        *s = new_mac(c, macs);
                    }
                } else {
                    rewrite_json(x, c, moved, macs);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_json(x, c, moved, macs)),
        _ => {}
    }
}

/// Quotes a command line for `/bin/sh`.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod clone_tests {
    use super::*;

    #[test]
    fn a_copy_uses_its_own_disks_sockets_name_uuid_and_macs() {
        let argv: Vec<String> = [
            "/usr/bin/qemu-system-x86_64",
            "-name",
            "web",
            "-uuid",
            "11111111-2222-3333-4444-555555555555",
            "-nodefaults",
            "-qmp",
            "unix:/run/web.qmp,server=on,wait=off",
            "-chardev",
            "socket,id=qga0,path=/run/web.qga,server=on,wait=off",
            "-blockdev",
            "driver=file,node-name=f0,filename=/srv/web,,a.qcow2",
            "-blockdev",
            r#"{"driver":"file","node-name":"f1","filename":"/srv/b.raw"}"#,
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
            "-serial",
            "file:/var/log/web.console",
            "-vnc",
            ":1",
            "-kernel",
            "/boot/vmlinuz",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let disks = vec![
            (
                "/srv/web,a.qcow2".to_string(),
                PathBuf::from("/r/vda.qcow2"),
            ),
            ("/srv/b.raw".to_string(), PathBuf::from("/r/vdb.raw")),
        ];
        let spec = CloneSpec {
            name: "web2",
            dir: Path::new("/r"),
            disks: &disks,
            uuid: "9-9",
            seed: 7,
        };
        let (out, moved) = clone_command(&argv, &spec).unwrap();
        let line = out.join(" ");
        assert!(line.contains("-name web2 -uuid 9-9"), "{line}");
        assert!(
            line.contains("unix:/r/web2.web.qmp,server=on,wait=off"),
            "{line}"
        );
        assert!(line.contains("path=/r/web2.web.qga"), "{line}");
        assert!(line.contains("filename=/r/vda.qcow2"), "{line}");
        assert!(line.contains(r#""filename":"/r/vdb.raw""#), "{line}");
        assert!(
            !line.contains("52:54:00:12:34:56") && line.contains("mac=52:54:00:"),
            "{line}"
        );
        assert!(
            line.contains("file:/r/web2.web.console") && line.contains("-vnc none"),
            "{line}"
        );
        assert!(line.contains("-kernel /boot/vmlinuz"), "{line}");
        assert!(!line.contains("/srv/"), "{line}");
        assert_eq!(moved.len(), 3);
        assert_eq!(shell_line(&["it's".into()]), r"'it'\''s'");
    }
}

/// The LUKS passphrase of the encrypted qcow2 disk on block node `node`, as the VM's QEMU
/// command line gives it: the node's `encrypt.key-secret` names a `-object secret` whose
/// `data` (raw or base64) or `file` holds the passphrase. `None` when the command line does
/// not say (the disk is then backed up as the guest sees it, and restored decrypted).
pub fn luks_secret(argv: &[String], node: &str) -> Option<Vec<u8>> {
    // The secret's id, from the node's -blockdev (key=value or JSON) or a -drive.
    let mut secret_id = None;
    for a in argv {
        if a.starts_with('{') {
            if let Ok(v) = serde_json::from_str::<Value>(a)
                && v.get("node-name").and_then(Value::as_str) == Some(node)
            {
                secret_id = v
                    .get("encrypt")
                    .and_then(|e| e.get("key-secret"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            continue;
        }
        let parts = split_opts(a);
        let has_node = parts
            .iter()
            .any(|p| p == &format!("node-name={node}") || p == &format!("id={node}"));
        if has_node
            && let Some(id) = parts
                .iter()
                .find_map(|p| p.strip_prefix("encrypt.key-secret="))
        {
            secret_id = Some(id.to_string());
        }
    }
    let id = secret_id?;
    for a in argv {
        let obj: Vec<(String, String)> = if a.starts_with('{') {
            match serde_json::from_str::<Value>(a) {
                Ok(Value::Object(m)) => m
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect(),
                _ => continue,
            }
        } else {
            let parts = split_opts(a);
            if parts.first().map(String::as_str) != Some("secret") {
                continue;
            }
            parts
                .iter()
                .filter_map(|p| {
                    p.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect()
        };
        let get = |k: &str| obj.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        if get("id").as_deref() != Some(id.as_str())
            || get("qom-type").is_some_and(|t| t != "secret")
        {
            continue;
        }
        let raw = match (get("data"), get("file")) {
            (Some(d), _) => d.into_bytes(),
            (None, Some(f)) => std::fs::read(f).ok()?,
            _ => return None,
        };
        return if get("format").as_deref() == Some("base64") {
            base64::engine::general_purpose::STANDARD
                .decode(raw.trim_ascii())
                .ok()
        } else {
            Some(raw)
        };
    }
    None
}

#[cfg(test)]
mod luks_tests {
    use super::*;

    #[test]
    fn the_passphrase_is_found_through_the_nodes_key_secret() {
        let argv: Vec<String> = [
            "qemu",
            "-object",
            "secret,id=sec0,data=pass,,word",
            "-object",
            r#"{"qom-type":"secret","id":"s1","data":"c2VjcmV0","format":"base64"}"#,
            "-blockdev",
            "driver=qcow2,node-name=n0,file=f0,encrypt.key-secret=sec0",
            "-blockdev",
            r#"{"driver":"qcow2","node-name":"n1","file":"f1","encrypt":{"key-secret":"s1"}}"#,
            "-blockdev",
            "driver=qcow2,node-name=n2,file=f2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(luks_secret(&argv, "n0").as_deref(), Some(&b"pass,word"[..]));
        assert_eq!(luks_secret(&argv, "n1").as_deref(), Some(&b"secret"[..]));
        assert_eq!(luks_secret(&argv, "n2"), None);
    }
}

/// Deletes internal snapshot `name` of `image` in the running VM behind `link` (its QEMU holds
/// the image, so qemu-img cannot).
pub fn delete_internal_snapshot(link: &VmLink, image: &Path, name: &str) -> Result<()> {
    let mut q = link.monitor()?;
    let blocks = q.execute("query-block", None)?;
    let node = blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("inserted"))
        .find(|i| {
            i.get("file")
                .and_then(Value::as_str)
                .is_some_and(|f| Path::new(&real_file(f)) == image)
        })
        .and_then(|i| i.get("node-name").and_then(Value::as_str))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the running VM no longer uses {}; its snapshot {name} stays until it is off",
                image.display()
            ))
        })?
        .to_string();
    q.execute(
        "blockdev-snapshot-delete-internal-sync",
        Some(json!({"device": node, "name": name})),
    )?;
    Ok(())
}
