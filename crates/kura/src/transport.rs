//! How a command reaches the engine. The CLI turns each command into one
//! [`kura_api::Call`] and sends it through a [`Transport`]: [`Local`] runs it against the home
//! on this host, [`crate::remote::Client`] sends it to a running `kura server`. Both answer
//! with the API's response documents, so the views render, and the exit code is decided, the
//! same way whichever way the command went.

use std::path::{Path, PathBuf};

use serde_json::Value;
use zeroize::Zeroizing;

use kura_api::convert::list;
use kura_api::{self as api, Call};
use kura_engine::{Home, Secrets};

use crate::output::{Bar, Out};

/// Sends calls and returns the API's answer. For calls that start a job, the answer is the
/// job's report once it ended (progress is shown on the way).
pub trait Transport {
    /// Runs one call.
    fn send(&self, call: &Call) -> anyhow::Result<Value>;
}

/// Options that exist only on the server's host: the API has no field for them (they name
/// secrets or choices made once, where the vault lives). Refused with `--server`.
#[derive(Default)]
pub struct HostOptions {
    /// `vault create --cipher`.
    pub cipher: Option<kura_store::Cipher>,
    /// `vault create --compression-level`.
    pub compression_level: Option<i32>,
    /// `vault attach --recovery-kit`.
    pub recovery_kit: Option<PathBuf>,
    /// `vault attach --kit-passphrase-file`, read.
    pub kit_passphrase: Option<Zeroizing<String>>,
    /// Test builds: make the backup fail after this many chunks.
    pub fail_after_chunks: Option<u64>,
    /// Test builds: cheap key derivation for new vaults (not an option a user gives).
    pub fast_kdf: bool,
}

impl HostOptions {
    /// The flags given that only work on the server's host.
    pub fn given(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if self.cipher.is_some() {
            f.push("--cipher");
        }
        if self.compression_level.is_some() {
            f.push("--compression-level");
        }
        if self.recovery_kit.is_some() {
            f.push("--recovery-kit");
        }
        if self.kit_passphrase.is_some() {
            f.push("--kit-passphrase-file");
        }
        if self.fail_after_chunks.is_some() {
            f.push("--fail-after-chunks");
        }
        f
    }
}

/// The home on this host.
pub struct Local<'a> {
    /// The home.
    pub home: &'a Home,
    /// The secrets given to this command.
    pub secrets: &'a Secrets,
    /// Where progress goes.
    pub out: &'a Out,
    /// This command's host-only options.
    pub host: &'a HostOptions,
}

fn doc(v: impl serde::Serialize) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(v)?)
}

fn path(p: &str) -> PathBuf {
    PathBuf::from(p)
}

/// A request that is not valid, reported with the code `invalid` either way.
pub fn invalid(message: String) -> anyhow::Error {
    kura_engine::Error::invalid(message).into()
}

impl Transport for Local<'_> {
    #[allow(clippy::too_many_lines)]
    fn send(&self, call: &Call) -> anyhow::Result<Value> {
        let (home, secrets, bar) = (self.home, self.secrets, Bar::new(self.out));
        let item_status =
            |name: &str| -> anyhow::Result<Value> { doc(api::Item::from(home.item_status(name)?)) };
        match call {
            Call::ListVaults => doc(list::<_, api::Vault>(home.list_vaults()?)),
            Call::GetVault { vault } => doc(api::Vault::from(home.vault_info(vault)?)),
            Call::VaultTrend { vault } => doc(api::VaultTrend::from(home.vault_trend(vault)?)),
            Call::CreateVault(b) => {
                let location =
                    kura_engine::requested_location(b.path.as_deref(), b.location.as_deref())?;
                let replica =
                    kura_engine::requested_replica(b.redundancy.as_deref(), b.replica.as_deref())?;
                let geo = replica.as_ref().is_some_and(|(_, geo)| *geo);
                let replica = replica.map(|(l, _)| l);
                let opts = kura_engine::CreateVault {
                    location,
                    replica,
                    geo,
                    chunk_size: b.chunk_size,
                    no_encryption: b.no_encryption,
                    cipher: self.host.cipher,
                    compression_level: self.host.compression_level,
                    fast_kdf: self.host.fast_kdf,
                };
                doc(api::Vault::from(
                    home.create_vault(&b.name, &opts, secrets)?,
                ))
            }
            Call::UpdateVault { vault, body } => {
                home.update_vault(
                    vault,
                    body.soft_delete.as_deref(),
                    body.soft_delete_days,
                    body.redundancy.as_deref(),
                    body.replica.as_deref(),
                )?;
                doc(api::Vault::from(home.vault_info(vault)?))
            }
            Call::AttachVault(b) => {
                let mut secrets = secrets.clone();
                if let Some(k) = &b.key_file {
                    secrets.key_file = Some(path(k));
                }
                secrets.recovery_kit.clone_from(&self.host.recovery_kit);
                if let Some(p) = &self.host.kit_passphrase {
                    secrets.kit_passphrase = Some(p.clone());
                }
                let location =
                    kura_engine::requested_location(b.path.as_deref(), b.location.as_deref())?
                        .ok_or_else(|| {
                            anyhow::anyhow!("vault attach needs --path or --location")
                        })?;
                let r = home.attach_vault(&b.name, &location, &secrets)?;
                doc(api::Attached {
                    vault: home.vault_info(&b.name)?.into(),
                    items: r.items,
                    recovery_points: r.recovery_points,
                    warnings: r.warnings,
                })
            }
            Call::ListPolicies { vault } => doc(list::<_, api::Policy>(home.list_policies(vault)?)),
            Call::CreatePolicy { vault, doc: d } => doc(api::Policy::from(
                home.create_policy(vault, d.to_string().as_bytes())?,
            )),
            Call::GetPolicy { vault, policy } => {
                doc(api::Policy::from(home.policy(vault, policy)?))
            }
            Call::UpdatePolicy {
                vault,
                policy,
                doc: d,
            } => {
                let (p, changed) = home.update_policy(vault, policy, d.to_string().as_bytes())?;
                doc(api::PolicyUpdated {
                    policy: p.into(),
                    recovery_points_updated: changed,
                })
            }
            Call::DeletePolicy { vault, policy } => {
                home.delete_policy(vault, policy)?;
                doc(api::PolicyDeleted {
                    deleted: format!("{vault}/{policy}"),
                })
            }
            Call::SimulatePolicy {
                vault,
                policy,
                body,
            } => {
                let from = simulation_start(&body.from)?;
                let source = kura_engine::PolicySource::Stored {
                    vault: vault.clone(),
                    name: policy.clone(),
                };
                doc(api::Simulation::from(
                    home.simulate_policy(&source, from, body.days)?,
                ))
            }
            Call::SimulateDocument(b) => {
                let from = simulation_start(&b.from)?;
                let source = kura_engine::PolicySource::Document(b.policy.to_string().into_bytes());
                doc(api::Simulation::from(
                    home.simulate_policy(&source, from, b.days)?,
                ))
            }
            Call::ListItems => doc(list::<_, api::Item>(home.list_item_status()?)),
            Call::Protect(b) => {
                let row = match (b.kind.as_str(), &b.source, &b.libvirt) {
                    ("disk", Some(src), None) => home.protect_disk(
                        Path::new(src),
                        &b.vault,
                        b.name.as_deref(),
                        b.policy.as_deref(),
                        b.format.as_deref(),
                        secrets,
                    )?,
                    ("files", Some(src), None) => home.protect_files(
                        Path::new(src),
                        &b.vault,
                        b.name.as_deref(),
                        b.policy.as_deref(),
                        &b.exclude,
                        kura_engine::tree_snapshot(b.snapshot.as_deref())?,
                        secrets,
                    )?,
                    ("vm", source, libvirt) => {
                        let link = match (source, libvirt) {
                            (Some(q), None) => kura_engine::VmLink::Qmp(path(q)),
                            (None, Some(d)) => kura_engine::VmLink::Libvirt(
                                kura_engine::Domain::new(&d.name, d.uri.as_deref())
                                    .map_err(kura_engine::Error::from)?,
                            ),
                            _ => {
                                return Err(invalid(
                                    "give a QMP socket or a libvirt domain".into(),
                                ));
                            }
                        };
                        let agent = kura_engine::AgentOptions {
                            qga: b.qga.clone(),
                            require: b.require_agent,
                            pre_script: b.pre_script.clone(),
                            post_script: b.post_script.clone(),
                        };
                        home.protect_vm(
                            &link,
                            &b.vault,
                            b.name.as_deref(),
                            b.policy.as_deref(),
                            &b.exclude_disks,
                            &agent,
                            secrets,
                        )?
                    }
                    (kind, _, _) => {
                        return Err(invalid(format!("kind: {kind:?} needs its source")));
                    }
                };
                item_status(&row.name)
            }
            Call::GetItem { item } => doc(api::Item::from(home.item_show(item)?)),
            Call::StopProtection { item, body } => doc(api::Item::from(home.stop_protection(
                item,
                body.delete_data,
                secrets,
                home.now(),
            )?)),
            Call::ResumeProtection { item, body } => doc(api::Item::from(home.resume_protection(
                item,
                &body.policy,
                secrets,
            )?)),
            Call::SetPolicy { item, body } => doc(api::Item::from(home.change_policy(
                item,
                &body.policy,
                secrets,
            )?)),
            Call::Undelete { item } => doc(api::Item::from(home.undelete(item, secrets)?)),
            Call::Precheck { item } => doc(api::Precheck::from(home.precheck(item, secrets)?)),
            Call::SetFormat { item, body } => {
                home.set_item_format(item, body.format.as_deref(), secrets)?;
                item_status(item)
            }
            Call::SetAgent { item, body } => {
                let agent = kura_engine::AgentOptions {
                    qga: body.qga.clone(),
                    require: body.require_agent,
                    pre_script: body.pre_script.clone(),
                    post_script: body.post_script.clone(),
                };
                home.set_vm_agent(item, &agent, secrets)?;
                doc(api::Item::from(home.item_show(item)?))
            }
            Call::BackupNow { item, body } => {
                let opts = kura_engine::BackupOptions {
                    retain_until: body.retain_until.clone(),
                    fail_after_chunks: self.host.fail_after_chunks,
                    ..Default::default()
                };
                doc(home.backup(item, secrets, &opts, &bar)?)
            }
            Call::ListRecoveryPoints { item } => {
                doc(list::<_, api::RecoveryPoint>(home.list_rps(item)?))
            }
            Call::GetRecoveryPoint { item, rp } => doc(api::RecoveryPointDetail::from(
                home.rp_manifest(item, rp, secrets)?,
            )),
            Call::ListVolumes { item, rp, query } => {
                let target = kura_engine::FilesTarget {
                    rp: rp.clone(),
                    disk: query.disk.clone(),
                    ..Default::default()
                };
                doc(api::PointVolumes::from(
                    home.point_volumes(item, &target, secrets)?,
                ))
            }
            Call::ListFiles { item, rp, query } => {
                let target = kura_engine::FilesTarget {
                    rp: rp.clone(),
                    disk: query.disk.clone(),
                    volume: query.volume,
                    from_replica: query.from_replica.unwrap_or(false),
                };
                let at = query.path.as_deref().unwrap_or("/");
                doc(api::FileListing::from(
                    home.list_files(item, &target, at, secrets)?,
                ))
            }
            Call::RestoreFiles { item, body } => {
                let target = kura_engine::FilesTarget {
                    rp: body.rp.clone(),
                    disk: body.disk.clone(),
                    volume: body.volume,
                    from_replica: body.from_replica,
                };
                let to =
                    api::convert::files_destination(&body.to, body.original).map_err(invalid)?;
                doc(home.restore_files(
                    item,
                    &target,
                    &body.paths,
                    to.map(path).as_deref(),
                    body.overwrite,
                    None,
                    secrets,
                    &bar,
                )?)
            }
            Call::Restore { item, body } => {
                let to = path(&body.to);
                let given =
                    api::convert::restore_format(body.format.as_deref()).map_err(invalid)?;
                let opts = kura_engine::RestoreOptions {
                    rp: body.rp.clone(),
                    format: kura_engine::RestoreFormat::for_target(given, &to)?,
                    to,
                    force: body.force,
                    job_id: None,
                    disk: body.disk.clone(),
                    decrypt: body.decrypt,
                    from_replica: body.from_replica,
                };
                doc(home.restore_disk(item, &opts, secrets, &bar)?)
            }
            Call::RestoreDisks { item, body } => {
                let format = api::convert::restore_format(body.format.as_deref())
                    .map_err(invalid)?
                    .unwrap_or_default();
                let opts = kura_engine::RestoreDisksOptions {
                    rp: body.rp.clone(),
                    dir: path(&body.to),
                    disks: body.disks.clone(),
                    format,
                    force: body.force,
                    decrypt: body.decrypt,
                    job_id: None,
                    from_replica: body.from_replica,
                };
                doc(home.restore_disks(item, &opts, secrets, &bar)?)
            }
            Call::RestoreVm { item, body } => {
                let mode = match (&body.as_new, &body.to, body.replace) {
                    (Some(name), Some(to), false) => kura_engine::VmRestoreMode::AsNew {
                        name: name.clone(),
                        dir: path(to),
                        start: body.start,
                    },
                    (None, None, true) => kura_engine::VmRestoreMode::Replace { stop: body.stop },
                    _ => {
                        return Err(invalid(
                            "give either --as-new and --to (a new VM), or --replace (over the VM's disks)".into(),
                        ));
                    }
                };
                let opts = kura_engine::VmRestoreOptions {
                    rp: body.rp.clone(),
                    mode,
                    job_id: None,
                    may_write: None,
                    from_replica: body.from_replica,
                };
                doc(home.restore_vm(item, &opts, secrets, &bar)?)
            }
            Call::RetentionPlan { item, query } => {
                let at = api::convert::instant(query.at.as_deref(), home.now()).map_err(invalid)?;
                doc(api::RetentionPlan::from(home.retention_plan(item, at)?))
            }
            Call::ApplyRetention { item, body } => {
                let at = api::convert::instant(body.at.as_deref(), home.now()).map_err(invalid)?;
                doc(api::RetentionPlan::from(
                    home.retention_apply(item, at, secrets)?,
                ))
            }
            Call::Verify(b) => {
                let scope = b.scope().map_err(invalid)?;
                doc(home.verify(&scope, secrets, &bar)?)
            }
            Call::Gc { vault, body } => {
                let opts = kura_engine::GcOptions {
                    grace: jiff::SignedDuration::from_secs(
                        body.grace_seconds.unwrap_or(3600).max(0),
                    ),
                    dry_run: body.dry_run,
                    job_id: None,
                };
                doc(home.gc(vault, &opts, secrets, &bar)?)
            }
            Call::Replicate { vault } => doc(home.replicate(vault, None, &bar)?),
            Call::ListJobs(q) => doc(list::<_, api::Job>(home.find_jobs(
                &kura_engine::JobQuery {
                    item: q.item.clone(),
                    status: q.status.clone(),
                    operation: q.operation.clone(),
                    since: q.since.clone(),
                    limit: q.limit.unwrap_or(100).min(10_000),
                },
            )?)),
            Call::GetJob { job } => doc(api::Job::from(home.job(job)?)),
            Call::CancelJob { job } => doc(api::Job::from(home.cancel_job(job)?)),
            Call::ListTokens => doc(list::<_, api::Token>(home.list_tokens()?)),
            Call::CreateToken(b) => {
                let expires = token_expiry(home, b.expires.as_deref())?;
                doc(api::NewToken::from(home.create_token(&b.name, expires)?))
            }
            Call::RevokeToken { name } => {
                home.revoke_token(name)?;
                doc(api::Revoked {
                    name: name.clone(),
                    revoked: true,
                })
            }
            Call::ResetToken { name, body } => {
                let expires = token_expiry(home, body.expires.as_deref())?;
                doc(api::NewToken::from(home.reset_token(name, None, expires)?))
            }
            Call::Usage(q) => doc(list::<_, api::VaultUsage>(home.usage(q.vault.as_deref())?)),
        }
    }
}

fn token_expiry(home: &Home, expires: Option<&str>) -> anyhow::Result<Option<jiff::Timestamp>> {
    Ok(expires.map(|t| home.parse_token_expiry(t)).transpose()?)
}

/// A simulation's first day.
pub fn simulation_start(from: &str) -> anyhow::Result<jiff::civil::Date> {
    from.parse().map_err(|e| {
        invalid(format!(
            "--from {from:?} is not a date in YYYY-MM-DD form: {e}"
        ))
    })
}
