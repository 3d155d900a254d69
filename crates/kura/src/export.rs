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
        /// `unix:PATH` (default: a socket in the home) or `tcp:ADDRESS:PORT`. Off loopback,
        /// clients need TLS and the export's own client certificate (see `--tls`).
        #[arg(long)]
        listen: Option<String>,
        /// Require TLS on a loopback TCP export too. A CA made for this export signs the
        /// server's certificate and one client certificate; the client's files are written
        /// to a directory (shown) readable by you only, and deleted when the export ends.
        #[arg(long)]
        tls: bool,
        /// How long it runs, e.g. `30m`, `1h`, `12h` (at most 7 days).
        #[arg(long, default_value = "1h")]
        expires: String,
        /// Read the point from the vault's replica (cross-region, when its primary
        /// location is down).
        #[arg(long)]
        from_replica: bool,
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
            tls,
            expires,
            from_replica,
        } => {
            let life: jiff::SignedDuration = expires.parse().with_context(|| {
                format!("--expires {expires:?} is not a duration (e.g. 30m, 1h, 12h)")
            })?;
            let target = FilesTarget {
                rp: rp.clone(),
                disk: disk.clone(),
                from_replica: *from_replica,
                ..Default::default()
            };
            let mut listen = ExportListen::parse(listen.as_deref().unwrap_or(""))?;
            if *tls {
                listen = listen.with_tls()?;
            }
            let running = home.start_export(item, &target, &listen, life, secrets)?;
            let i = &running.info;
            out.print(i, || {
                let mut t = format!(
                    "export {}: recovery point {} disk {} ({} bytes), read-only, at\n  {}\nuntil {} (kura export stop {}, or Ctrl-C)\n",
                    i.id, i.rp_id, i.disk, i.size, i.uri, i.expires, i.id
                );
                if let Some(dir) = &i.tls_dir {
                    t.push_str(&tls_help(&i.uri, dir));
                }
                t
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

/// How a client reaches a TLS export: its files, and the commands of libnbd and qemu.
fn tls_help(uri: &str, dir: &str) -> String {
    let rest = uri.strip_prefix("nbds://").unwrap_or(uri);
    let (at, name) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = at.rsplit_once(':').unwrap_or((at, "10809"));
    format!(
        "TLS with a client certificate: copy {dir}/ (ca-cert.pem, client-cert.pem, client-key.pem;\n\
         the key is the export's secret) to the client, then for example\n  \
         nbdinfo '{uri}?tls-certificates=DIR'\n  \
         qemu-img info --object tls-creds-x509,id=tls0,dir=DIR,endpoint=client \\\n    \
         --image-opts driver=nbd,host={host},port={port},export={name},tls-creds=tls0\n"
    )
}

/// `kura mount`: a point's files mounted read-only in the foreground until SIGINT or
/// SIGTERM, or until the mount point is unmounted.
pub(crate) fn mount(
    home: &Home,
    item: &str,
    mountpoint: &std::path::Path,
    target: &FilesTarget,
    secrets: &Secrets,
    out: &Out,
) -> anyhow::Result<u8> {
    let stop = kura_nbd::Stop::default();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (stop, flag) = (stop.clone(), flag.clone());
        std::thread::spawn(move || {
            wait_for_signal(stop);
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    eprintln!(
        "mounting {item} point {}{} read-only at {} (Ctrl-C or `umount {}` ends it)",
        target.rp,
        if target.from_replica {
            " from the vault's replica"
        } else {
            ""
        },
        mountpoint.display(),
        mountpoint.display()
    );
    let fetched = home.mount_files(item, target, mountpoint, secrets, &flag)?;
    out.print(
        &serde_json::json!({"unmounted": true, "fetched": fetched}),
        || {
            format!(
                "unmounted {}; {} chunks ({} bytes) were fetched\n",
                mountpoint.display(),
                fetched.chunks,
                fetched.bytes
            )
        },
    );
    Ok(0)
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
