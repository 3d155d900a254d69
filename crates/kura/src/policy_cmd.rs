//! `kura policy ...` and `kura retention ...`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use kura_engine::{Home, PolicySource, Secrets, split_policy_path};

use crate::output::{Out, Table};

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Add a policy to a vault from a JSON document.
    Create {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Policy document (JSON; see docs/policies.md).
        #[arg(long)]
        file: PathBuf,
    },
    /// List a vault's policies.
    List {
        /// Vault name.
        #[arg(long)]
        vault: String,
    },
    /// Show a policy.
    Show {
        /// VAULT/NAME.
        path: String,
    },
    /// Replace a policy; re-applies retention to every item using it.
    Update {
        /// VAULT/NAME.
        path: String,
        /// Policy document (JSON).
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete a policy (refused while items use it).
    Delete {
        /// VAULT/NAME.
        path: String,
    },
    /// Preview a policy: the backups it takes and what still exists at the end.
    Simulate {
        /// VAULT/NAME of a stored policy (or use --file).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        path: Option<String>,
        /// Policy document (JSON).
        #[arg(long)]
        file: Option<PathBuf>,
        /// First simulated day (YYYY-MM-DD), in the policy's time zone.
        #[arg(long)]
        from: String,
        /// Number of days.
        #[arg(long)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum RetentionCmd {
    /// Show which recovery points of an item retention would remove, and why.
    Plan {
        /// Item name.
        item: String,
        /// Judge at this instant (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
    },
    /// Remove the recovery points the plan marks for deletion.
    Apply {
        /// Item name.
        item: String,
        /// Judge at this instant (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
    },
}

fn read(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read policy file {}", file.display()))
}

fn policy_table(rows: &[kura_catalog::PolicyRow]) -> String {
    let mut t = Table::new(&["NAME", "FREQUENCY", "TIME ZONE", "ITEMS", "UPDATED"]);
    for p in rows {
        let s = &p.doc["schedule"];
        t.row(vec![
            p.name.clone(),
            s["frequency"].as_str().unwrap_or("?").to_string(),
            s["time_zone"].as_str().unwrap_or("UTC").to_string(),
            p.items.to_string(),
            p.updated.clone(),
        ]);
    }
    t.render()
}

fn show(p: &kura_catalog::PolicyRow) -> String {
    format!(
        "policy {} ({} item(s))\n{}\n",
        p.name,
        p.items,
        serde_json::to_string_pretty(&p.doc).unwrap_or_default()
    )
}

pub fn run_policy(home: &Home, cmd: &PolicyCmd, out: &Out) -> anyhow::Result<u8> {
    match cmd {
        PolicyCmd::Create { vault, file } => {
            let p = home.create_policy(vault, &read(file)?)?;
            out.print(&p, || format!("created policy {vault}/{}\n", p.name));
        }
        PolicyCmd::List { vault } => {
            let rows = home.list_policies(vault)?;
            out.print(&rows, || policy_table(&rows));
        }
        PolicyCmd::Show { path } => {
            let (v, n) = split_policy_path(path)?;
            let p = home.policy(&v, &n)?;
            out.print(&p, || show(&p));
        }
        PolicyCmd::Update { path, file } => {
            let (v, n) = split_policy_path(path)?;
            let (p, changed) = home.update_policy(&v, &n, &read(file)?)?;
            let doc = serde_json::json!({"policy": p, "recovery_points_updated": changed});
            out.print(&doc, || {
                format!(
                    "updated policy {path}; retention re-applied to {changed} recovery point(s)\n"
                )
            });
        }
        PolicyCmd::Delete { path } => {
            let (v, n) = split_policy_path(path)?;
            home.delete_policy(&v, &n)?;
            out.print(&serde_json::json!({"deleted": path}), || {
                format!("deleted policy {path}\n")
            });
        }
        PolicyCmd::Simulate {
            path,
            file,
            from,
            days,
        } => {
            let source = match (path, file) {
                (Some(p), _) => {
                    let (vault, name) = split_policy_path(p)?;
                    PolicySource::Stored { vault, name }
                }
                (None, Some(f)) => PolicySource::Document(read(f)?),
                (None, None) => anyhow::bail!("give VAULT/NAME or --file"),
            };
            let from: jiff::civil::Date = from
                .parse()
                .with_context(|| format!("--from {from:?} is not a date in YYYY-MM-DD form"))?;
            let sim = home.simulate_policy(&source, from, *days)?;
            out.print(&sim, || {
                let mut s = format!(
                    "{} backup(s) from {} until {} ({})\n",
                    sim.runs.len(),
                    sim.from,
                    sim.until,
                    sim.time_zone
                );
                for r in &sim.runs {
                    s += &format!("  {}  {}\n", r.time, r.tier);
                }
                s += &format!(
                    "{} recovery point(s) still exist at {}:\n",
                    sim.surviving.len(),
                    sim.until
                );
                let mut t = Table::new(&["  TIME", "TAGS", "EXPIRES"]);
                for p in &sim.surviving {
                    t.row(vec![
                        format!("  {}", p.time),
                        p.tags.join(","),
                        p.expires.clone(),
                    ]);
                }
                s + &t.render()
            });
        }
    }
    Ok(0)
}

fn instant(at: &Option<String>) -> anyhow::Result<jiff::Timestamp> {
    match at {
        Some(a) => a
            .parse()
            .with_context(|| format!("--at {a:?} is not an RFC 3339 instant")),
        None => Ok(jiff::Timestamp::now()),
    }
}

pub fn run_retention(
    home: &Home,
    cmd: &RetentionCmd,
    secrets: &Secrets,
    out: &Out,
) -> anyhow::Result<u8> {
    let (plan, applied) = match cmd {
        RetentionCmd::Plan { item, at } => (home.retention_plan(item, instant(at)?)?, false),
        RetentionCmd::Apply { item, at } => {
            (home.retention_apply(item, instant(at)?, secrets)?, true)
        }
    };
    out.print(&plan, || {
        let mut t = Table::new(&["RECOVERY POINT", "TIME", "ACTION", "REASON"]);
        for e in &plan.entries {
            let action = if applied && e.action == "delete" {
                "deleted"
            } else {
                e.action
            };
            t.row(vec![
                e.rp_id.clone(),
                e.time.clone(),
                action.to_string(),
                e.reason.clone(),
            ]);
        }
        t.render()
    });
    Ok(0)
}
