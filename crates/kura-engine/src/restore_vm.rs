//! Azure's VM restore modes on a KVM host: a new VM from a point (its disks and a runnable
//! definition with a new identity), or the disks of the existing VM replaced in place with a
//! safety copy kept.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kura_catalog::JobOperation;
use kura_source::vm::VmDisk;
use serde::Serialize;

use crate::home::absolute;
use crate::restore::{RestoreFormat, RestoreOptions, RestoreReport};
use crate::{Error, ErrorKind, Home, Progress, Result, Secrets};

/// How long `--stop` waits for the VM to power off.
const STOP_TIMEOUT: Duration = Duration::from_secs(300);

/// What `restore vm` does.
#[derive(Debug, Clone)]
pub enum VmRestoreMode {
    /// A new VM: its disks and a start script in `dir`, named `name`.
    AsNew {
        /// The new VM's name.
        name: String,
        /// Where its disks, script, sockets and logs go (created if missing).
        dir: PathBuf,
        /// Start it once restored.
        start: bool,
    },
    /// The existing VM's disks, replaced in place.
    Replace {
        /// Shut the VM down first (through its agent, else ACPI) and wait.
        stop: bool,
    },
}

/// A path check: `Err(message)` refuses to write there (the server's allow-lists).
pub type PathCheck = std::sync::Arc<dyn Fn(&Path) -> std::result::Result<(), String> + Send + Sync>;

/// What `restore vm` restores, how, and where it may write.
#[derive(Clone)]
pub struct VmRestoreOptions {
    /// Recovery point id, unique prefix, or `latest`.
    pub rp: String,
    /// As a new VM, or over the existing one.
    pub mode: VmRestoreMode,
    /// A job made beforehand with [`Home::begin_job`] (the API answers with its id at once).
    pub job_id: Option<String>,
    /// Checked for every directory or image the restore writes, before anything is written.
    pub may_write: Option<PathCheck>,
    /// Read the point from the vault's geo replica (cross-region restore).
    pub from_replica: bool,
}

/// The outcome of `restore vm`.
#[derive(Debug, Clone, Serialize)]
pub struct VmRestoreReport {
    /// The job.
    pub job_id: String,
    /// The recovery point.
    pub rp_id: String,
    /// `as-new` or `replace`.
    pub mode: &'static str,
    /// The VM restored (the new name, or the item's).
    pub name: String,
    /// Each disk restored.
    pub disks: Vec<RestoreReport>,
    /// Disks the point does not hold (excluded), made blank so the copy can start.
    pub blank_disks: Vec<String>,
    /// The script that starts the new VM.
    pub script: Option<String>,
    /// The new VM's QMP and guest-agent sockets, when the original had them.
    pub qmp: Option<String>,
    /// See `qmp`.
    pub qga: Option<String>,
    /// The new VM's process, when it was started.
    pub pid: Option<u32>,
    /// The replaced disks, kept beside them until the user removes them.
    pub safety_copies: Vec<String>,
    /// The new libvirt domain, for a libvirt VM.
    pub libvirt_domain: Option<String>,
    /// Whether the new VM was started.
    pub started: bool,
}

struct VmPoint {
    rp_id: String,
    /// Whether the point has a vault copy (else only its snapshot tier).
    in_vault: bool,
    /// Whether it is read from the vault's geo replica.
    from_replica: bool,
    disks: Vec<VmDisk>,
    cmdline: Option<Vec<String>>,
    /// Names of the disks the point holds.
    held: Vec<String>,
    /// The VM's secrets (`object:ID` → base64), sealed in the manifest.
    secrets: std::collections::BTreeMap<String, String>,
    /// The QMP socket, for a plain QEMU VM.
    qmp: PathBuf,
    qga: Option<PathBuf>,
    /// The libvirt domain, and its definition at the point.
    libvirt: Option<(kura_source::libvirt::Domain, Option<String>)>,
}

/// A new VM's disk files in `dir` (created if missing), one per disk of the point, none of
/// which may exist yet; and each original image's replacement.
#[allow(clippy::type_complexity)]
fn new_vm_targets<'p>(
    p: &'p VmPoint,
    dir: &Path,
) -> Result<(
    PathBuf,
    Vec<(&'p VmDisk, RestoreFormat, PathBuf)>,
    Vec<(String, PathBuf)>,
)> {
    let dir = absolute(dir)?;
    if !dir.exists() {
        crate::home::create_private_dir(&dir)?;
    }
    let mut targets = Vec::new();
    for d in &p.disks {
        let f = format_of(d)?;
        let ext = if f == RestoreFormat::Qcow2 {
            "qcow2"
        } else {
            "raw"
        };
        let to = dir.join(format!("{}.{ext}", d.name));
        if to.exists() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} already exists; nothing was restored", to.display()),
            ));
        }
        targets.push((d, f, to));
    }
    let map = targets
        .iter()
        .map(|(d, _, to)| (d.file.clone(), to.clone()))
        .collect();
    Ok((dir, targets, map))
}

fn format_of(d: &VmDisk) -> Result<RestoreFormat> {
    match d.format.as_str() {
        "qcow2" => Ok(RestoreFormat::Qcow2),
        "raw" => Ok(RestoreFormat::Raw),
        f => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "VM disk {} is a {f} image; kura restores VM disks as raw or qcow2: use `kura restore disks` and convert it",
                d.name
            ),
        )),
    }
}

impl Home {
    fn vm_point(
        &self,
        item: &str,
        rp: &str,
        secrets: &Secrets,
        from_replica: bool,
    ) -> Result<VmPoint> {
        let row = self.catalog.item(item)?;
        Self::check_can_restore(&row)?;
        if row.kind != "vm" {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "item {:?} is a {} item: use `kura restore disk`",
                    row.name, row.kind
                ),
            ));
        }
        let rp_row = self.resolve_rp(&row, rp)?;
        // The definition, the disks the point holds and the VM's sealed secrets: from the
        // manifest as stored, or, for a point only in the snapshot tier, from the catalog,
        // the snapshot and the VM's command line now.
        if from_replica && rp_row.tier == "snapshot" {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "recovery point {} has no vault copy yet, so the replica has none either: restore it without --from-replica",
                    rp_row.id
                ),
            ));
        }
        let (rp_id, def, held, secrets) = if rp_row.tier == "snapshot" {
            let snap = rp_row
                .snapshot
                .as_deref()
                .and_then(kura_source::Snapshot::decode)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "recovery point {} has no vault copy and its snapshot is gone",
                            rp_row.id
                        ),
                    )
                })?;
            let def = self
                .catalog
                .rp_definition(&rp_row.id)?
                .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "recovery point {} has no vault copy yet and kura keeps no VM definition for it; restore its disks with `kura restore disks`",
                            rp_row.id
                        ),
                    )
                })?;
            // A plain QEMU VM's `-object secret` values, from its command line now.
            let secrets = match crate::home::source_spec(self, &row, None)? {
                kura_source::SourceSpec::Vm {
                    qmp, libvirt: None, ..
                } => kura_source::vm::object_secrets_now(Path::new(&qmp)),
                _ => Default::default(),
            };
            (rp_row.id.clone(), def, snap.disk_names(), secrets)
        } else {
            let vrow = self.catalog.vault_by_id(&row.vault_id)?;
            let m = self
                .open_vault_for(&vrow, secrets, from_replica)?
                .get_manifest(&rp_row.id)?;
            let def = m.definition.clone().ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("recovery point {} keeps no VM definition", m.rp_id),
                )
            })?;
            (
                m.rp_id.clone(),
                def,
                m.disks.iter().map(|d| d.name.clone()).collect(),
                m.disk_secrets.clone(),
            )
        };
        let disks: Vec<VmDisk> = serde_json::from_value(def["disks"].clone()).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("the VM definition of point {rp_id}: {e}"),
            )
        })?;
        let cmdline: Option<Vec<String>> = serde_json::from_value(def["cmdline"].clone()).ok();
        let (qmp, qga, libvirt) = match crate::home::source_spec(self, &row, None)? {
            kura_source::SourceSpec::Vm {
                qmp,
                agent,
                libvirt,
                ..
            } => (
                PathBuf::from(qmp),
                agent.qga.map(PathBuf::from),
                libvirt.map(|d| (d, def["domain_xml"].as_str().map(str::to_string))),
            ),
            _ => unreachable!("checked: a vm item"),
        };
        Ok(VmPoint {
            in_vault: rp_row.tier != "snapshot",
            from_replica,
            rp_id,
            held,
            secrets,
            disks,
            cmdline,
            qmp,
            qga,
            libvirt,
        })
    }

    /// Restores a VM point as a new VM or over the existing VM (see [`VmRestoreMode`]), as
    /// one `RestoreVm` job (each disk is also a `Restore` job of its own).
    pub fn restore_vm(
        &self,
        item: &str,
        opts: &VmRestoreOptions,
        secrets: &Secrets,
        progress: &dyn Progress,
    ) -> Result<VmRestoreReport> {
        let p = self.vm_point(item, &opts.rp, secrets, opts.from_replica)?;
        // A point only in the snapshot tier lives inside the very images a replace would
        // set aside.
        if matches!(opts.mode, VmRestoreMode::Replace { .. }) && !p.in_vault {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "recovery point {} has no vault copy yet, and its snapshots live inside the disks --replace would set aside: restore it with --as-new, or replace from a point in the vault; nothing was changed",
                    p.rp_id
                ),
            ));
        }
        let guard = |path: &Path| -> Result<()> {
            match &opts.may_write {
                Some(check) => check(path).map_err(|m| Error::new(ErrorKind::Invalid, m)),
                None => Ok(()),
            }
        };
        let (job_id, report) = self.run_job(
            JobOperation::RestoreVm,
            item,
            false,
            opts.job_id.as_deref(),
            progress,
            |job| {
                let r = match &opts.mode {
                    VmRestoreMode::AsNew { name, dir, start } => {
                        guard(&absolute(dir)?)?;
                        self.restore_vm_as_new(item, &p, name, dir, *start, secrets, job)?
                    }
                    VmRestoreMode::Replace { stop } => {
                        for d in &p.disks {
                            if p.held.contains(&d.name) {
                                guard(Path::new(&d.file))?;
                            }
                        }
                        self.restore_vm_replace(item, &p, *stop, secrets, job)?
                    }
                };
                Ok((r, Some(p.rp_id.clone())))
            },
        )?;
        Ok(VmRestoreReport { job_id, ..report })
    }

    #[allow(clippy::too_many_arguments)]
    fn restore_vm_as_new(
        &self,
        item: &str,
        p: &VmPoint,
        name: &str,
        dir: &Path,
        start: bool,
        secrets: &Secrets,
        progress: &dyn Progress,
    ) -> Result<VmRestoreReport> {
        crate::home::check_name("VM", name)?;
        if p.libvirt.is_some() {
            return self.restore_domain_as_new(item, p, name, dir, start, secrets, progress);
        }
        let argv = p.cmdline.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "recovery point {} keeps no QEMU command line (kura could not read it when the point was made); restore its disks with `kura restore disks` and start a VM on them by hand",
                    p.rp_id
                ),
            )
        })?;
        // Every target is checked, and the command line rewritten, before anything is written.
        let (dir, targets, map) = new_vm_targets(p, dir)?;
        let uuid = uuid::Uuid::now_v7();
        let seed = u64::from_le_bytes(uuid.as_bytes()[8..16].try_into().expect("8 bytes"));
        let uuid_text = uuid.hyphenated().to_string();
        let (command, moved) = kura_source::vm::clone_command(
            &argv,
            &kura_source::vm::CloneSpec {
                name,
                dir: &dir,
                disks: &map,
                uuid: &uuid_text,
                seed,
            },
        )?;
        // Sealed passphrases go into private files beside the script, not into its text.
        let mut command = command;
        let mut secret_files: Vec<PathBuf> = Vec::new();
        for a in command.iter_mut() {
            if !(a.starts_with("secret,") && a.contains(kura_source::vm::SECRET_MARKER)) {
                continue;
            }
            let id = a
                .split(',')
                .find_map(|p| p.strip_prefix("id="))
                .unwrap_or_default()
                .to_string();
            let Some(b64) = p.secrets.get(&format!("object:{id}")) else {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the VM's secret {id:?} is not kept with point {} (an unencrypted vault keeps none); restore its disks with `kura restore disks --decrypt`",
                        p.rp_id
                    ),
                ));
            };
            let file = dir.join(format!("{name}.{id}.secret"));
            crate::home::write_private(&file, b64.as_bytes())?;
            secret_files.push(file.clone());
            *a = format!(
                "secret,id={id},format=base64,file={}",
                file.display().to_string().replace(',', ",,")
            );
        }
        let script = dir.join(format!("{name}.sh"));
        if script.exists() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} already exists; nothing was restored", script.display()),
            ));
        }
        let new_path = |orig: &Path| {
            moved
                .iter()
                .find(|(o, _)| Path::new(o) == orig)
                .map(|(_, n)| n.clone())
        };
        let qmp = new_path(&p.qmp);
        let qga = p.qga.as_deref().and_then(new_path);

        let (reports, blank) = match self.restore_targets(item, p, &targets, secrets, progress) {
            Ok(r) => r,
            Err(e) => {
                for f in &secret_files {
                    let _ = std::fs::remove_file(f);
                }
                return Err(e);
            }
        };
        let text = format!(
            "#!/bin/sh\n# A copy of VM item {item:?} from recovery point {}, restored by kura.\n# New name {name}, UUID {uuid_text}, new MAC addresses; its sockets and logs are in this directory.\nexec {}\n",
            p.rp_id,
            kura_source::vm::shell_line(&command)
        );
        crate::home::write_private(&script, text.as_bytes())?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(format!("cannot chmod {}", script.display()), e))?;
        }
        let pid = if start {
            Some(start_vm(&script, &dir, name, qmp.as_deref())?)
        } else {
            None
        };
        Ok(VmRestoreReport {
            job_id: String::new(),
            rp_id: p.rp_id.clone(),
            mode: "as-new",
            name: name.to_string(),
            disks: reports,
            blank_disks: blank,
            script: Some(script.display().to_string()),
            qmp,
            qga,
            started: pid.is_some(),
            pid,
            safety_copies: Vec::new(),
            libvirt_domain: None,
        })
    }

    /// A new libvirt domain from the point: its disks in `dir`, defined from the domain XML
    /// kept with the point, under the new name, without UUID and MAC addresses (libvirt
    /// makes new ones).
    #[allow(clippy::too_many_arguments)]
    fn restore_domain_as_new(
        &self,
        item: &str,
        p: &VmPoint,
        name: &str,
        dir: &Path,
        start: bool,
        secrets: &Secrets,
        progress: &dyn Progress,
    ) -> Result<VmRestoreReport> {
        let (dom, xml) = p.libvirt.as_ref().expect("a libvirt point");
        let xml = xml.as_deref().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "recovery point {} keeps no domain XML; restore its disks with `kura restore disks`",
                    p.rp_id
                ),
            )
        })?;
        let new = kura_source::libvirt::Domain::new(name, dom.uri.as_deref())?;
        if new.state().is_ok() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("libvirt already has a domain {name:?}; nothing was restored"),
            ));
        }
        let (dir, targets, map) = new_vm_targets(p, dir)?;
        // Disks whose passphrase the point does not keep are restored decrypted.
        let plain: Vec<String> = p
            .disks
            .iter()
            .filter(|d| d.encrypted && !p.secrets.contains_key(&d.name))
            .map(|d| d.file.clone())
            .collect();
        let new_xml = kura_source::libvirt::clone_xml(xml, name, &map, &plain, &dir)?;
        let (reports, blank) = self.restore_targets(item, p, &targets, secrets, progress)?;
        let file = dir.join(format!("{name}.xml"));
        crate::home::write_private(&file, new_xml.as_bytes())?;
        new.virsh(&["define", &file.display().to_string()])?;
        if start {
            new.virsh(&["start", name])?;
        }
        Ok(VmRestoreReport {
            job_id: String::new(),
            rp_id: p.rp_id.clone(),
            mode: "as-new",
            name: name.to_string(),
            disks: reports,
            blank_disks: blank,
            script: None,
            qmp: None,
            qga: None,
            pid: None,
            safety_copies: Vec::new(),
            libvirt_domain: Some(name.to_string()),
            started: start,
        })
    }

    /// Restores each target disk of the point (or makes it blank when the point does not
    /// hold it: an excluded disk).
    fn restore_targets(
        &self,
        item: &str,
        p: &VmPoint,
        targets: &[(&VmDisk, RestoreFormat, PathBuf)],
        secrets: &Secrets,
        progress: &dyn Progress,
    ) -> Result<(Vec<RestoreReport>, Vec<String>)> {
        let mut made: Vec<PathBuf> = Vec::new();
        let r = self.restore_targets_into(item, p, targets, secrets, progress, &mut made);
        if r.is_err() {
            // A restore that fails or is cancelled part way leaves none of the new disks.
            for f in &made {
                let _ = std::fs::remove_file(f);
            }
        }
        r
    }

    fn restore_targets_into(
        &self,
        item: &str,
        p: &VmPoint,
        targets: &[(&VmDisk, RestoreFormat, PathBuf)],
        secrets: &Secrets,
        progress: &dyn Progress,
        made: &mut Vec<PathBuf>,
    ) -> Result<(Vec<RestoreReport>, Vec<String>)> {
        let mut reports = Vec::new();
        let mut blank = Vec::new();
        for (d, format, to) in targets {
            crate::progress::check_cancel(progress)?;
            if p.held.contains(&d.name) {
                let one = RestoreOptions {
                    rp: p.rp_id.clone(),
                    to: to.clone(),
                    format: *format,
                    force: false,
                    job_id: None,
                    disk: Some(d.name.clone()),
                    decrypt: false,
                    from_replica: p.from_replica,
                };
                reports.push(self.restore_disk(item, &one, secrets, progress)?);
                made.push(to.clone());
            } else {
                let out = std::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", &d.format])
                    .arg(to)
                    .arg(d.size.to_string())
                    .output()
                    .map_err(|e| Error::io("cannot run qemu-img", e))?;
                if !out.status.success() {
                    return Err(Error::new(
                        ErrorKind::Other,
                        format!(
                            "qemu-img create {}: {}",
                            to.display(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    ));
                }
                made.push(to.clone());
                blank.push(to.display().to_string());
            }
        }
        Ok((reports, blank))
    }

    fn restore_vm_replace(
        &self,
        item: &str,
        p: &VmPoint,
        stop: bool,
        secrets: &Secrets,
        progress: &dyn Progress,
    ) -> Result<VmRestoreReport> {
        let chosen: Vec<&VmDisk> = p
            .disks
            .iter()
            .filter(|d| p.held.contains(&d.name))
            .collect();
        let mut plan = Vec::new();
        for d in &chosen {
            let f = format_of(d)?;
            let file = PathBuf::from(&d.file);
            if !file.is_absolute() {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!(
                        "VM disk {} has no image file kura can replace ({:?})",
                        d.name, d.file
                    ),
                ));
            }
            let safety = PathBuf::from(format!("{}.kura-before-{}", d.file, &p.rp_id));
            if safety.exists() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{} already exists; remove it first", safety.display()),
                ));
            }
            plan.push((d, f, file, safety));
        }
        // Room for the restored data beside the safety copies, per file system.
        let vrow = self
            .catalog
            .vault_by_id(&self.catalog.item(item)?.vault_id)?;
        let vault = self.open_vault_for(&vrow, secrets, p.from_replica)?;
        let m = vault.get_manifest(&p.rp_id)?;
        let mut need: Vec<(u64, u64, PathBuf)> = Vec::new(); // (fsid, bytes, dir)
        for (d, _, file, _) in &plan {
            let entry = m.disks.iter().find(|e| e.name == d.name).expect("held");
            let bytes = (entry.chunks - entry.zero_chunks) * u64::from(vault.config().chunk_size);
            let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
            let st = rustix::fs::statvfs(&dir)
                .map_err(|e| Error::io(format!("statvfs {}", dir.display()), e.into()))?;
            match need.iter_mut().find(|n| n.0 == st.f_fsid) {
                Some(n) => n.1 += bytes,
                None => need.push((st.f_fsid, bytes, dir)),
            }
        }
        for (_, bytes, dir) in &need {
            let st = rustix::fs::statvfs(dir)
                .map_err(|e| Error::io(format!("statvfs {}", dir.display()), e.into()))?;
            let free = st.f_bavail * st.f_frsize;
            if free < *bytes {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!(
                        "{} has {free} bytes free but the restored disks need {bytes} beside the safety copies of the current ones; nothing was changed",
                        dir.display()
                    ),
                ));
            }
        }
        // The VM must be off: its QEMU holds the images.
        if let Some((dom, _)) = &p.libvirt {
            if dom.state()? != "shut off" {
                if !stop {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "libvirt domain {} of item {item:?} is running; shut it down or pass --stop; nothing was changed",
                            dom.name
                        ),
                    ));
                }
                stop_domain(dom)?;
            }
        } else if let Ok(q) = kura_source::qmp::Qmp::connect(&p.qmp, Duration::ZERO) {
            if !stop {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "the VM of item {item:?} is running (its QMP socket {} answers); shut it down or pass --stop; nothing was changed",
                        p.qmp.display()
                    ),
                ));
            }
            stop_vm(q, &p.qmp, p.qga.as_deref())?;
        }
        let mut reports = Vec::new();
        let mut safety_copies = Vec::new();
        let mut done: Vec<(PathBuf, PathBuf)> = Vec::new();
        for (d, format, file, safety) in plan {
            let meta = std::fs::metadata(&file)
                .map_err(|e| Error::io(format!("VM disk {}: {}", d.name, file.display()), e))?;
            std::fs::rename(&file, &safety).map_err(|e| {
                Error::io(
                    format!("cannot keep {} as {}", file.display(), safety.display()),
                    e,
                )
            })?;
            let one = RestoreOptions {
                rp: p.rp_id.clone(),
                to: file.clone(),
                format,
                force: false,
                job_id: None,
                disk: Some(d.name.clone()),
                decrypt: false,
                from_replica: p.from_replica,
            };
            let restored = crate::progress::check_cancel(progress)
                .and_then(|()| self.restore_disk(item, &one, secrets, progress));
            match restored {
                Ok(r) => reports.push(r),
                Err(e) => {
                    // Every disk goes back as it was, not only this one: a VM with some disks
                    // from the point and others from now would not be the VM of any instant.
                    let mut kept = Vec::new();
                    for (f, s) in
                        std::iter::once((&file, &safety)).chain(done.iter().map(|(f, s)| (f, s)))
                    {
                        if f != &file {
                            let _ = std::fs::remove_file(f);
                        }
                        if std::fs::rename(s, f).is_err() {
                            kept.push(s.display().to_string());
                        }
                    }
                    let what = if e.kind() == ErrorKind::Cancelled {
                        "the restore was cancelled".to_string()
                    } else {
                        format!("restoring VM disk {} failed: {e}", d.name)
                    };
                    return Err(Error::new(
                        e.kind(),
                        if kept.is_empty() {
                            format!("{what}; every disk of the VM is back as it was")
                        } else {
                            format!(
                                "{what}; the disks' current images are kept as {}",
                                kept.join(", ")
                            )
                        },
                    ));
                }
            }
            // The VM's user (libvirt-qemu, ...) must be able to open the new image.
            {
                use std::os::unix::fs::{MetadataExt, PermissionsExt};
                let _ = std::os::unix::fs::chown(&file, Some(meta.uid()), Some(meta.gid()));
                let _ = std::fs::set_permissions(
                    &file,
                    std::fs::Permissions::from_mode(meta.mode() & 0o777),
                );
            }
            safety_copies.push(safety.display().to_string());
            done.push((file, safety));
        }
        Ok(VmRestoreReport {
            job_id: String::new(),
            rp_id: p.rp_id.clone(),
            mode: "replace",
            name: item.to_string(),
            disks: reports,
            blank_disks: Vec::new(),
            script: None,
            qmp: None,
            qga: None,
            pid: None,
            safety_copies,
            libvirt_domain: None,
            started: false,
        })
    }
}

/// Asks libvirt to shut the domain down (agent or ACPI, libvirt's choice) and waits.
fn stop_domain(dom: &kura_source::libvirt::Domain) -> Result<()> {
    dom.virsh(&["shutdown", &dom.name])?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while dom.state()? != "shut off" {
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "libvirt domain {} did not shut off within {} s; nothing was changed",
                    dom.name,
                    STOP_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Asks the VM to power off (its agent, else ACPI) and waits until its QEMU is gone.
fn stop_vm(mut q: kura_source::qmp::Qmp, qmp: &Path, qga: Option<&Path>) -> Result<()> {
    let pid = q.peer_pid();
    let by_agent = qga.is_some_and(|a| {
        kura_source::qga::Qga::connect(a, kura_source::vm::AGENT_TIMEOUT)
            .and_then(|mut g| g.shutdown())
            .is_ok()
    });
    if !by_agent {
        q.execute("system_powerdown", None)?;
    }
    drop(q);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let gone = match pid {
            Some(pid) => !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            None => kura_source::qmp::Qmp::connect(qmp, Duration::ZERO).is_err(),
        };
        if gone {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "the VM did not power off within {} s; nothing was changed",
                    STOP_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Starts the new VM's script in its own process group, its output in DIR/NAME.log; waits
/// for its QMP socket when it has one.
fn start_vm(script: &Path, dir: &Path, name: &str, qmp: Option<&str>) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log)
        .map_err(|e| Error::io(format!("cannot create {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io(format!("{}", log.display()), e))?;
    let mut child = std::process::Command::new("/bin/sh")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("cannot start {}", script.display()), e))?;
    let pid = child.id();
    // Its QMP socket says it started; without one, a VM that lives 2 s has. After a minute
    // it is left to start on its own, its log saying how it goes.
    let started = Instant::now();
    let enough = Duration::from_secs(if qmp.is_some() { 60 } else { 2 });
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Other,
                format!("the new VM exited at once ({status}): {}", text.trim()),
            ));
        }
        if qmp.is_some_and(|s| std::os::unix::net::UnixStream::connect(s).is_ok())
            || started.elapsed() > enough
        {
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
