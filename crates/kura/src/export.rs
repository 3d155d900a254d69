//! `kura export`: a recovery point's disk served read-only over NBD for a limited time (Azure's
//! file-recovery mount script), by this process, in the foreground. Each running export is
//! listed in `HOME/exports/ID.json` while it runs, so `export list` and `export stop` find it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use kura_engine::{FilesTarget, Home, Secrets};
use serde::{Deserialize, Serialize};

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

/// A running export, as recorded for `list` and `stop`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Running {
    id: String,
    item: String,
    rp_id: String,
    disk: String,
    size: u64,
    uri: String,
    pid: u32,
    started: String,
    expires: String,
}

fn registry(home: &Home) -> PathBuf {
    home.root().join("exports")
}

fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// The exports whose process still runs (records of dead ones are removed).
fn running(home: &Home) -> Vec<Running> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(registry(home)) else {
        return out;
    };
    for e in dir.flatten() {
        let p = e.path();
        let Some(r) = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<Running>(&b).ok())
        else {
            continue;
        };
        if alive(r.pid) {
            out.push(r);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    out.sort_by(|a, b| a.started.cmp(&b.started));
    out
}

/// Removes a file (the record, the socket) when the export ends, however it ends.
struct Record(PathBuf);

impl Drop for Record {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) fn run(
    home: &Home,
    cmd: &ExportCmd,
    secrets: &Secrets,
    out: &Out,
) -> anyhow::Result<u8> {
    match cmd {
        ExportCmd::List => {
            let list = running(home);
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
            let list = running(home);
            let r = list
                .iter()
                .find(|r| r.id == *id || r.id.ends_with(id.as_str()))
                .with_context(|| format!("no running export {id:?} (see `kura export list`)"))?;
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
        } => start(
            home,
            item,
            rp,
            disk.clone(),
            listen.as_deref(),
            expires,
            secrets,
            out,
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn start(
    home: &Home,
    item: &str,
    rp: &str,
    disk: Option<String>,
    listen: Option<&str>,
    expires: &str,
    secrets: &Secrets,
    out: &Out,
) -> anyhow::Result<u8> {
    let life: jiff::SignedDuration = expires
        .parse()
        .with_context(|| format!("--expires {expires:?} is not a duration (e.g. 30m, 1h, 12h)"))?;
    if life <= jiff::SignedDuration::ZERO || life > jiff::SignedDuration::from_hours(24 * 7) {
        anyhow::bail!("--expires {expires}: between a second and 7 days");
    }
    // Everything is checked (the point, its disk, the vault's key) before anything listens.
    let target = FilesTarget {
        rp: rp.to_string(),
        disk,
        volume: None,
    };
    let export = home.point_export(item, &target, secrets)?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let name = format!(
        "{item}-{}",
        &export.rp_id[export.rp_id.len().saturating_sub(8)..]
    );
    std::fs::create_dir_all(registry(home))?;
    let mut socket = None;
    let (listener, uri) = match listen.unwrap_or("") {
        "" => unix(
            &registry(home).join(format!("{id}.sock")),
            &name,
            &mut socket,
        )?,
        l if l.starts_with("unix:") => unix(Path::new(&l[5..]), &name, &mut socket)?,
        l if l.starts_with("tcp:") => {
            let addr: std::net::SocketAddr = l[4..].parse().with_context(|| {
                format!("--listen {l}: tcp:ADDRESS:PORT, e.g. tcp:127.0.0.1:10809")
            })?;
            if !addr.ip().is_loopback() {
                anyhow::bail!(
                    "--listen {l}: exports listen on loopback or a Unix socket only (an export has no secret or TLS yet); reach it from elsewhere through an SSH tunnel"
                );
            }
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("listening on {addr}"))?;
            let at = l.local_addr()?;
            (kura_nbd::Listener::Tcp(l), format!("nbd://{at}/{name}"))
        }
        l => anyhow::bail!("--listen {l}: unix:PATH or tcp:127.0.0.1:PORT"),
    };
    let now = jiff::Timestamp::now();
    let until = now.checked_add(life)?;
    let running = Running {
        id: id.clone(),
        item: item.to_string(),
        rp_id: export.rp_id.clone(),
        disk: export.disk.clone(),
        size: export.size,
        uri: uri.clone(),
        pid: std::process::id(),
        started: now.to_string(),
        expires: until.to_string(),
    };
    let record = registry(home).join(format!("{id}.json"));
    std::fs::write(&record, serde_json::to_vec_pretty(&running)?)?;
    let _record = Record(record);
    let _socket = socket.map(Record);
    out.print(&running, || {
        format!(
            "export {id}: recovery point {} disk {} ({} bytes), read-only, at\n  {uri}\nuntil {until} (kura export stop {id}, or Ctrl-C)\n",
            running.rp_id, running.disk, running.size
        )
    });
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let stop = kura_nbd::Stop::default();
    let on_signal = stop.clone();
    std::thread::spawn(move || wait_for_signal(on_signal));
    let deadline = Instant::now() + Duration::from_secs(life.as_secs().max(1) as u64);
    let ended = kura_nbd::serve(listener, &name, export.factory, Some(deadline), &stop)?;
    eprintln!(
        "export {id} {}",
        match ended {
            kura_nbd::Ended::Expired => "expired; its clients were disconnected",
            kura_nbd::Ended::Stopped => "stopped; its clients were disconnected",
        }
    );
    Ok(0)
}

fn unix(
    path: &Path,
    name: &str,
    made: &mut Option<PathBuf>,
) -> anyhow::Result<(kura_nbd::Listener, String)> {
    let path = std::path::absolute(path)?;
    if path.exists() {
        anyhow::bail!(
            "--listen unix:{}: something is there already",
            path.display()
        );
    }
    let l = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("listening on {}", path.display()))?;
    *made = Some(path.clone());
    // Only the owner may connect: the export is the point's data in the clear.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok((
        kura_nbd::Listener::Unix(l),
        format!("nbd+unix:///{name}?socket={}", path.display()),
    ))
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
