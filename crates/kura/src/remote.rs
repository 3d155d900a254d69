//! The CLI against a running `kura server` (`--server URL` or `KURA_SERVER`): the same
//! commands, sent to the HTTP API with `--token` (or `KURA_TOKEN`).

use anyhow::{Context, bail};
use serde_json::{Value, json};

use kura_api as api;

use crate::output::Out;
use crate::views;
use crate::{
    BackupCmd, Command, ItemCmd, JobCmd, ProtectCmd, RestoreCmd, RpCmd, TokenCmd, VaultCmd,
};

/// An API client.
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// An error the server answered with; the CLI prints it and exits non-zero.
#[derive(Debug)]
pub struct ApiFailure {
    /// Stable code.
    pub code: String,
    /// Message.
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    /// A client of the server at `url`. An `https` server's certificate is checked against
    /// `ca_file` (PEM, a private CA) when given, else against the system's trusted roots.
    pub fn new(url: &str, token: &str, ca_file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        use ureq::tls::{PemItem, RootCerts, TlsConfig};
        let roots = match ca_file {
            Some(f) => {
                let pem = std::fs::read(f).with_context(|| format!("--ca-file {}", f.display()))?;
                let mut certs = Vec::new();
                for item in ureq::tls::parse_pem(&pem) {
                    if let PemItem::Certificate(c) =
                        item.with_context(|| format!("--ca-file {}", f.display()))?
                    {
                        certs.push(c);
                    }
                }
                if certs.is_empty() {
                    bail!("--ca-file {}: no PEM certificate in it", f.display());
                }
                RootCerts::from(certs)
            }
            None => RootCerts::PlatformVerifier,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        Ok(Client {
            base: format!("{}/api/v1", url.trim_end_matches('/')),
            token: token.to_string(),
            agent,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let auth = format!("Bearer {}", self.token);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (m, b) => {
                let req = match m {
                    "PUT" => self.agent.put(&url),
                    "PATCH" => self.agent.patch(&url),
                    _ => self.agent.post(&url),
                };
                req.header("Authorization", &auth)
                    .send_json(b.unwrap_or_else(|| json!({})))
            }
        };
        let mut resp = resp
            .map_err(|e| anyhow::anyhow!("cannot reach the kura server at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .context("unreadable answer from the server")?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("the server answered {status} with non-JSON"))?;
        if status >= 400 {
            return Err(ApiFailure {
                code: v["error"]["code"].as_str().unwrap_or("error").to_string(),
                message: v["error"]["message"]
                    .as_str()
                    .unwrap_or("request failed")
                    .to_string(),
            }
            .into());
        }
        Ok(v)
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None)
    }

    /// Posts a request body of the API contract (`kura_api`), the type the server reads.
    fn post(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Value> {
        self.call("POST", path, Some(serde_json::to_value(body)?))
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits for a started job and prints its report, as the local command would.
fn job_done(
    out: &Out,
    c: &Client,
    started: &Value,
    render: fn(&Value) -> String,
) -> anyhow::Result<Value> {
    let job = started["job_id"]
        .as_str()
        .context("the server returned no job id")?;
    if !out.json() {
        eprintln!("job {job} queued");
    }
    let j = crate::output::follow(out, false, || c.get(&format!("/jobs/{job}")))?;
    if j["status"] != "Completed" {
        bail!(
            "job {job} {}: {}",
            j["status"].as_str().unwrap_or("?"),
            j["error"].as_str().unwrap_or("")
        );
    }
    let report = if j["result"].is_null() {
        j.clone()
    } else {
        j["result"].clone()
    };
    out.view(&report, render);
    Ok(report)
}

/// Runs a command through the server; the output is rendered by the same views as locally.
pub fn run(cmd: &Command, c: &Client, out: &Out) -> anyhow::Result<u8> {
    let show = |v: Value, render: fn(&Value) -> String| {
        out.view(&v, render);
        Ok(0)
    };
    match cmd {
        Command::Vault(VaultCmd::List) => show(c.get("/vaults")?, views::vault_list),
        Command::Vault(VaultCmd::Show { name }) => {
            show(c.get(&format!("/vaults/{}", enc(name)))?, views::vault_show)
        }
        Command::Vault(VaultCmd::Create {
            name,
            path,
            chunk_size,
            no_encryption,
            cipher: None,
            compression_level: None,
        }) => {
            let chunk_size = chunk_size
                .as_deref()
                .map(crate::parse_size)
                .transpose()?
                .map(u32::try_from)
                .transpose()
                .context("--chunk-size is too large")?;
            let req = api::NewVault {
                name: name.clone(),
                path: path.as_deref().map(abs).transpose()?,
                chunk_size,
                no_encryption: *no_encryption,
            };
            show(c.post("/vaults", &req)?, views::vault_show)
        }
        Command::Vault(VaultCmd::Set {
            name,
            soft_delete,
            soft_delete_days,
        }) => show(
            c.call(
                "PATCH",
                &format!("/vaults/{}", enc(name)),
                Some(serde_json::to_value(api::VaultSettings {
                    soft_delete: soft_delete.clone(),
                    soft_delete_days: *soft_delete_days,
                })?),
            )?,
            views::vault_show,
        ),
        Command::Vault(VaultCmd::Attach {
            name,
            path,
            recovery_kit: None,
            ..
        }) => {
            let req = api::Attach {
                name: name.clone(),
                path: abs(path)?,
                key_file: None,
            };
            show(c.post("/vaults/attach", &req)?, views::attached)
        }
        Command::Item(ItemCmd::List) => show(c.get("/items")?, views::item_list),
        Command::Item(ItemCmd::Show { item }) => {
            show(c.get(&format!("/items/{}", enc(item)))?, views::item_status)
        }
        Command::Item(ItemCmd::Protect(ProtectCmd::Vm {
            qmp,
            libvirt,
            connect,
            vault,
            name,
            policy,
            exclude_disk,
            qga,
            require_agent,
            pre_script,
            post_script,
        })) => {
            let req = api::Protect {
                kind: "vm".into(),
                source: qmp.as_deref().map(abs).transpose()?,
                libvirt: libvirt.as_ref().map(|d| api::LibvirtDomain {
                    name: d.clone(),
                    uri: connect.clone(),
                }),
                vault: vault.clone(),
                name: name.clone(),
                policy: policy.clone(),
                format: None,
                exclude_disks: exclude_disk.clone(),
                qga: qga.as_deref().map(abs).transpose()?,
                require_agent: *require_agent,
                pre_script: pre_script.clone(),
                post_script: post_script.clone(),
            };
            show(c.post("/items", &req)?, views::protected)
        }
        Command::Item(ItemCmd::Protect(ProtectCmd::Disk {
            image,
            vault,
            name,
            policy,
            format,
        })) => {
            let req = api::Protect {
                kind: "disk".into(),
                source: Some(abs(image)?),
                vault: vault.clone(),
                name: name.clone(),
                policy: policy.clone(),
                format: format.clone(),
                ..Default::default()
            };
            show(c.post("/items", &req)?, views::protected)
        }
        Command::Item(ItemCmd::Stop { item, delete_data }) => show(
            c.post(
                &format!("/items/{}/stop", enc(item)),
                &api::Stop {
                    delete_data: *delete_data,
                },
            )?,
            views::item_status,
        ),
        Command::Item(ItemCmd::Resume { item, policy }) => show(
            c.post(
                &format!("/items/{}/resume", enc(item)),
                &api::Resume {
                    policy: policy.clone(),
                },
            )?,
            views::item_status,
        ),
        Command::Item(ItemCmd::Precheck { item }) => {
            let r = c.get(&format!("/items/{}/precheck", enc(item)))?;
            let ready = r["ready"] == true;
            show(r, views::precheck)?;
            Ok(if ready { 0 } else { 1 })
        }
        Command::Item(ItemCmd::SetFormat { item, format }) => show(
            c.post(
                &format!("/items/{}/format", enc(item)),
                &api::SetFormat {
                    format: format.clone(),
                },
            )?,
            views::item_status,
        ),
        Command::Item(ItemCmd::Undelete { item }) => show(
            c.call("POST", &format!("/items/{}/undelete", enc(item)), None)?,
            views::item_status,
        ),
        Command::Backup(
            now @ BackupCmd::Now {
                item, retain_until, ..
            },
        ) if now.fail_after_chunks().is_none() => {
            let started = c.post(
                &format!("/items/{}/backups", enc(item)),
                &api::BackupNow {
                    retain_until: retain_until.clone(),
                },
            )?;
            job_done(out, c, &started, views::backup)?;
            Ok(0)
        }
        Command::Rp(RpCmd::Show { item, rp }) => show(
            c.get(&format!("/items/{}/recovery-points/{}", enc(item), enc(rp)))?,
            views::rp_show,
        ),
        Command::Rp(RpCmd::List { item }) => show(
            c.get(&format!("/items/{}/recovery-points", enc(item)))?,
            views::rp_list,
        ),
        Command::Restore(RestoreCmd::Disk {
            item,
            rp,
            to,
            format,
            force,
            disk,
            decrypt,
        }) => {
            let req = api::Restore {
                rp: rp.clone(),
                to: abs(to)?,
                format: format.map(|f| f.restore_format().name().to_string()),
                force: *force,
                disk: disk.clone(),
                decrypt: *decrypt,
            };
            let started = c.post(&format!("/items/{}/restores", enc(item)), &req)?;
            job_done(out, c, &started, views::restore)?;
            Ok(0)
        }
        Command::Restore(RestoreCmd::Vm {
            item,
            rp,
            as_new,
            to,
            start,
            replace,
            stop,
        }) => {
            let req = api::RestoreVm {
                rp: rp.clone(),
                as_new: as_new.clone(),
                to: to.as_deref().map(abs).transpose()?,
                start: *start,
                replace: *replace,
                stop: *stop,
            };
            let started = c.post(&format!("/items/{}/vm-restores", enc(item)), &req)?;
            job_done(out, c, &started, views::restore_vm)?;
            Ok(0)
        }
        Command::Verify(v) => {
            let req = api::Verify {
                vault: v.vault.clone(),
                item: v.item.clone(),
                rp: v.rp.clone(),
            };
            let started = c.post("/verify", &req)?;
            let report = job_done(out, c, &started, views::verify)?;
            let damaged = report["problems"].as_array().is_some_and(|p| !p.is_empty());
            Ok(if damaged { crate::EXIT_DAMAGED } else { 0 })
        }
        Command::Token(cmd) => match cmd {
            TokenCmd::Create { name, expires } => show(
                c.post(
                    "/tokens",
                    &api::NewTokenRequest {
                        name: name.clone(),
                        expires: expires.clone(),
                    },
                )?,
                views::new_token,
            ),
            TokenCmd::List => show(c.get("/tokens")?, views::token_list),
            TokenCmd::Revoke { name } => {
                c.call("DELETE", &format!("/tokens/{}", enc(name)), None)?;
                show(json!({"revoked": name}), views::token_revoked)
            }
            TokenCmd::Reset { name, expires } => show(
                c.post(
                    &format!("/tokens/{}/reset", enc(name)),
                    &api::ResetToken {
                        expires: expires.clone(),
                    },
                )?,
                views::new_token,
            ),
        },
        Command::Job(JobCmd::List {
            limit,
            item,
            status,
            operation,
        }) => {
            let mut q = format!("/jobs?limit={limit}");
            for (k, v) in [("item", item), ("status", status), ("operation", operation)] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", enc(v)));
                }
            }
            show(c.get(&q)?, views::job_list)
        }
        Command::Job(JobCmd::Show { id, follow }) => {
            let j = c.get(&format!("/jobs/{}", enc(id)))?;
            let j = if *follow {
                let id = j["id"]
                    .as_str()
                    .context("the server returned no job id")?
                    .to_string();
                crate::output::follow(out, true, || c.get(&format!("/jobs/{id}")))?
            } else {
                j
            };
            show(j, views::job_show)
        }
        Command::Job(JobCmd::Cancel { id }) => show(
            c.call("POST", &format!("/jobs/{}/cancel", enc(id)), None)?,
            views::job_status,
        ),
        Command::Usage { vault } => {
            let all = c.get("/usage")?;
            let Some(v) = vault else {
                return show(all, views::usage);
            };
            let one: Vec<Value> = all
                .as_array()
                .into_iter()
                .flatten()
                .filter(|u| u["vault"] == v.as_str())
                .cloned()
                .collect();
            if one.is_empty() {
                return Err(ApiFailure {
                    code: "not_found".into(),
                    message: format!("vault {v:?} not found"),
                }
                .into());
            }
            show(Value::Array(one), views::usage)
        }
        Command::Gc {
            vault,
            grace,
            dry_run,
        } => {
            let started = c.post(
                &format!("/vaults/{}/gc", enc(vault)),
                &api::Gc {
                    grace_seconds: Some(*grace),
                    dry_run: *dry_run,
                },
            )?;
            job_done(out, c, &started, views::gc)?;
            Ok(0)
        }
        Command::Retention(crate::policy_cmd::RetentionCmd::Plan { item, at }) => {
            let q = at
                .as_ref()
                .map(|a| format!("?at={}", enc(a)))
                .unwrap_or_default();
            show(
                c.get(&format!("/items/{}/retention-plan{q}", enc(item)))?,
                |v| views::retention(v, false),
            )
        }
        Command::Retention(crate::policy_cmd::RetentionCmd::Apply { item, at }) => show(
            c.post(
                &format!("/items/{}/retention", enc(item)),
                &api::RetentionApply { at: at.clone() },
            )?,
            |v| views::retention(v, true),
        ),
        Command::Item(ItemCmd::SetAgent {
            item,
            qga,
            require_agent,
            pre_script,
            post_script,
        }) => {
            let req = api::SetAgent {
                qga: qga.as_deref().map(abs).transpose()?,
                require_agent: *require_agent,
                pre_script: pre_script.clone(),
                post_script: post_script.clone(),
            };
            show(
                c.post(&format!("/items/{}/agent", enc(item)), &req)?,
                views::item_status,
            )
        }
        Command::Restore(RestoreCmd::Disks {
            item,
            rp,
            to,
            disks,
            format,
            force,
            decrypt,
        }) => {
            let req = api::RestoreDisks {
                rp: rp.clone(),
                to: abs(to)?,
                disks: disks.clone(),
                format: Some(format.restore_format().name().to_string()),
                force: *force,
                decrypt: *decrypt,
            };
            let started = c.post(&format!("/items/{}/disk-restores", enc(item)), &req)?;
            job_done(out, c, &started, |r| {
                r.as_array()
                    .into_iter()
                    .flatten()
                    .map(views::restore)
                    .collect::<String>()
            })?;
            Ok(0)
        }
        Command::Policy(p) => crate::policy_cmd::run_policy_remote(p, c, out),
        _ => bail!(
            "this command runs on the server's host only (quickstart, server, scheduler, vault create with a passphrase, key file, cipher or compression level, vault key export/change, vault detach, attach with a recovery kit); run it there without --server"
        ),
    }
}

impl Client {
    /// Sends a request (for other modules).
    pub fn request(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.call(method, path, body)
    }
}

/// A path given on the command line, absolute (the server does not share the CLI's working
/// directory), as the API's UTF-8 text.
fn abs(p: impl AsRef<std::path::Path>) -> anyhow::Result<String> {
    let p = std::path::absolute(p.as_ref())?;
    p.to_str()
        .map(str::to_string)
        .with_context(|| format!("{}: the API takes UTF-8 paths", p.display()))
}

/// Percent-encodes a path segment.
pub fn segment(s: &str) -> String {
    enc(s)
}
