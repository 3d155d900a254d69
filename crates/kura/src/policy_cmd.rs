//! `kura policy ...` and `kura retention ...`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use kura_api::Call;
use kura_engine::{Home, Secrets, split_policy_path};
use serde_json::Value;

use crate::output::Out;

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

#[derive(Debug, Subcommand)]
pub enum SchedulerCmd {
    /// Run every backup that is due now (or at --now), then apply retention.
    Tick {
        /// Pretend it is this instant (RFC 3339); for previews and tests.
        #[arg(long)]
        now: Option<String>,
        /// Spread window for items sharing a schedule, in seconds.
        #[arg(long, default_value_t = 600)]
        spread: i64,
    },
    /// Tick forever, every --interval seconds.
    Run {
        /// Seconds between ticks.
        #[arg(long, default_value_t = 30)]
        interval: u64,
        /// Spread window for items sharing a schedule, in seconds.
        #[arg(long, default_value_t = 600)]
        spread: i64,
    },
}

fn read(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read policy file {}", file.display()))
}

/// The API call of a policy command, with its view.
pub fn call(cmd: &PolicyCmd) -> anyhow::Result<(Call, crate::views::View)> {
    let parse = |file: &PathBuf| -> anyhow::Result<Value> {
        serde_json::from_slice(&read(file)?)
            .with_context(|| format!("policy file {} is not JSON", file.display()))
    };
    Ok(match cmd {
        PolicyCmd::Create { vault, file } => (
            Call::CreatePolicy {
                vault: vault.clone(),
                doc: parse(file)?,
            },
            crate::views::policy_show,
        ),
        PolicyCmd::List { vault } => (
            Call::ListPolicies {
                vault: vault.clone(),
            },
            crate::views::policy_list,
        ),
        PolicyCmd::Show { path } => {
            let (vault, policy) = split_policy_path(path)?;
            (Call::GetPolicy { vault, policy }, crate::views::policy_show)
        }
        PolicyCmd::Update { path, file } => {
            let (vault, policy) = split_policy_path(path)?;
            (
                Call::UpdatePolicy {
                    vault,
                    policy,
                    doc: parse(file)?,
                },
                crate::views::policy_show,
            )
        }
        PolicyCmd::Delete { path } => {
            let (vault, policy) = split_policy_path(path)?;
            (Call::DeletePolicy { vault, policy }, |v| {
                format!("deleted policy {}\n", v["deleted"].as_str().unwrap_or(""))
            })
        }
        PolicyCmd::Simulate {
            path: Some(path),
            file: None,
            from,
            days,
        } => {
            let (vault, policy) = split_policy_path(path)?;
            crate::transport::simulation_start(from)?;
            (
                Call::SimulatePolicy {
                    vault,
                    policy,
                    body: kura_api::Simulate {
                        from: from.clone(),
                        days: *days,
                    },
                },
                crate::views::simulation,
            )
        }
        PolicyCmd::Simulate {
            file: Some(f),
            from,
            days,
            ..
        } => {
            crate::transport::simulation_start(from)?;
            (
                Call::SimulateDocument(kura_api::SimulateDocument {
                    policy: parse(f)?,
                    from: from.clone(),
                    days: *days,
                }),
                crate::views::simulation,
            )
        }
        PolicyCmd::Simulate { .. } => anyhow::bail!("give VAULT/NAME or --file"),
    })
}

/// The instant given, or now by the home's clock.
fn instant(home: &Home, at: &Option<String>) -> anyhow::Result<jiff::Timestamp> {
    match at {
        Some(a) => a
            .parse()
            .with_context(|| format!("--at {a:?} is not an RFC 3339 instant")),
        None => Ok(home.now()),
    }
}

fn tick_text(r: &kura_engine::TickReport) -> String {
    let when = |t: &str| crate::views::when(&serde_json::Value::from(t));
    let at = when(&r.at);
    let mut s = String::new();
    for b in &r.backups {
        let slot = when(&b.slot);
        s += &match (&b.rp_id, &b.error) {
            (Some(rp), _) => format!(
                "{at} {}: backed up slot {slot} as recovery point {rp}",
                b.item
            ),
            (None, Some(e)) => format!("{at} {}: backup for slot {slot} FAILED: {e}", b.item),
            (None, None) => format!("{at} {}: slot {slot}", b.item),
        };
        if b.skipped_slots > 0 {
            s += &format!(" ({} missed slot(s) folded into this one)", b.skipped_slots);
        }
        s.push('\n');
    }
    for x in &r.expired {
        s += &format!(
            "{at} {}: removed recovery point {}: {}\n",
            x.item, x.rp_id, x.reason
        );
    }
    for p in &r.purged {
        s += &format!("{at} {p}: purged (its soft-delete period is over)\n");
    }
    for j in &r.gc_jobs {
        s += &format!("{at} garbage collection ran as job {j}\n");
    }
    for e in &r.retention_errors {
        s += &format!("{at} upkeep failed: {e}\n");
    }
    s
}

pub fn run_scheduler(
    home: &Home,
    cmd: &SchedulerCmd,
    secrets: Secrets,
    out: &Out,
) -> anyhow::Result<u8> {
    match cmd {
        SchedulerCmd::Tick { now, spread } => {
            let opts = kura_engine::SchedulerOptions {
                spread: jiff::SignedDuration::from_secs(*spread),
                secrets,
                ..Default::default()
            };
            let r = home.scheduler_tick(instant(home, now)?, &opts)?;
            out.print(&r, || {
                let t = tick_text(&r);
                if t.is_empty() {
                    format!(
                        "{}: nothing due\n",
                        crate::views::when(&r.at.clone().into())
                    )
                } else {
                    t
                }
            });
            Ok(0)
        }
        SchedulerCmd::Run { interval, spread } => {
            let opts = kura_engine::SchedulerOptions {
                spread: jiff::SignedDuration::from_secs(*spread),
                secrets,
                ..Default::default()
            };
            eprintln!("scheduler running; ticking every {interval} s (Ctrl-C to stop)");
            loop {
                match home.scheduler_tick(home.now(), &opts) {
                    Ok(r) => print!("{}", tick_text(&r)),
                    Err(e) => eprintln!("scheduler: {e}"),
                }
                std::thread::sleep(std::time::Duration::from_secs((*interval).max(1)));
            }
        }
    }
}
