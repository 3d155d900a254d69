//! `kura export`: a recovery point's disk served read-only over NBD for a limited time (Azure's
//! file-recovery mount script), by this process, in the foreground (the engine's
//! `Home::start_export`; its record in `HOME/exports/` lets `export list` and `export stop`
//! find it from another process).

use anyhow::Context;
use clap::Subcommand;
use kura_engine::{ExportListen, FilesTarget, Home, Secrets};

use crate::output::Out;

#[derive(Debug, Subcommand)]
pub(crate) enum ExportCmd {
    /// Serve a point's disk read-only over NBD until it expires (or `export stop`, or
    /// Ctrl-C); clients see holes as holes (base:allocation).
    Start {
        /// Item name.
        item: String,
        /// Recovery point (default: the latest).
        #[arg(long, default_value = "latest")]
        rp: String,
        /// Which disk, when the point has several.
        #[arg(long)]
        disk: Option<String>,
        /// `unix:PATH` (default: a socket in the home) or `tcp:127.0.0.1:PORT` (loopback only).
        #[arg(long)]
        listen: Option<String>,
        /// How long it runs, e.g. `30m`, `1h`, `12h` (at most 7 days).
        #[arg(long, default_value = "1h")]
        expires: String,
    },
    /// The exports running now.
    List,
    /// End a running export: its clients are cut off.
    Stop {
        /// Export id (from `export list` or `export start`).
        id: String,
    },
}

pub(crate) fn run(
    home: &Home,
    cmd: &ExportCmd,
    secrets: &Secrets,
    out: &Out,
) -> anyhow::Result<u8> {
    match cmd {
        ExportCmd::List => {
            let list = home.list_exports();
            out.print(&list, || {
                if list.is_empty() {
                    return "no exports running; start one with `kura export start ITEM`\n".into();
                }
                list.iter()
                    .map(|r| {
                        format!(
                            "{}  {} point {} disk {}  {}  until {}\n",
                            r.id, r.item, r.rp_id, r.disk, r.uri, r.expires
                        )
                    })
                    .collect()
            });
            Ok(0)
        }
        ExportCmd::Stop { id } => {
            let r = home.find_export(id)?;
            let pid = rustix::process::Pid::from_raw(r.pid as i32).context("pid")?;
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .with_context(|| format!("stopping export {} (process {})", r.id, r.pid))?;
            out.print(&serde_json::json!({"id": r.id, "stopped": true}), || {
                format!("export {} stopped\n", r.id)
            });
            Ok(0)
        }
        ExportCmd::Start {
            item,
            rp,
            disk,
            listen,
            expires,
        } => {
            let life: jiff::SignedDuration = expires.parse().with_context(|| {
                format!("--expires {expires:?} is not a duration (e.g. 30m, 1h, 12h)")
            })?;
            let target = FilesTarget {
                rp: rp.clone(),
                disk: disk.clone(),
                volume: None,
            };
            let listen = ExportListen::parse(listen.as_deref().unwrap_or(""))?;
            let running = home.start_export(item, &target, &listen, life, secrets)?;
            let i = &running.info;
            out.print(i, || {
                format!(
                    "export {}: recovery point {} disk {} ({} bytes), read-only, at\n  {}\nuntil {} (kura export stop {}, or Ctrl-C)\n",
                    i.id, i.rp_id, i.disk, i.size, i.uri, i.expires, i.id
                )
            });
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let stop = running.stopper();
            std::thread::spawn(move || wait_for_signal(stop));
            let id = running.info.id.clone();
            let ended = running.wait()?;
            eprintln!(
                "export {id} {}",
                match ended {
                    kura_nbd::Ended::Expired => "expired; its clients were disconnected",
                    kura_nbd::Ended::Stopped => "stopped; its clients were disconnected",
                }
            );
            Ok(0)
        }
    }
}

/// SIGTERM (`export stop`) or SIGINT (Ctrl-C) ends the export.
fn wait_for_signal(stop: kura_nbd::Stop) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return,
    };
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    stop.stop();
}
