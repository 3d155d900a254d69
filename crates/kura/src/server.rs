//! `kura server`: the HTTP API and the scheduler, over the home.

use std::io::Write;
use std::sync::Arc;

use kura_engine::{Home, SchedulerOptions, Secrets};
use kura_server::AppState;

/// Prints a line; a closed stdout (a detached server) is not an error.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub fn run(
    home: Home,
    secrets: Secrets,
    listen: &str,
    tick: u64,
    spread: i64,
    roots: kura_server::Roots,
) -> anyhow::Result<u8> {
    let admin = std::env::var("KURA_ADMIN_TOKEN").ok();
    let (token_hash, token) = kura_server::first_start(&home, admin.as_deref())?;
    let home = Arc::new(home);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(listen))
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    say!(
        "kura server listening on http://{addr}/api/v1 (home {})",
        home.root().display()
    );
    match token {
        Some(_) if admin.is_some() => {
            say!("admin token: taken from KURA_ADMIN_TOKEN (stored hashed)")
        }
        Some(t) => say!("admin token (shown once, stored hashed): {t}"),
        None => say!("admin token: the one printed at the first start"),
    }
    // Until a recovery kit exists, every start says where the key is and how to export it.
    for v in home.list_vaults()? {
        if v.kit_exported.is_none() && v.row.encryption != "none" {
            say!(
                "vault {}: key {} ; no recovery kit exported yet: run `kura vault key export {} --to FILE --kit-passphrase-file PASSFILE` and keep the kit off this machine",
                v.row.name,
                v.row.key_file.as_deref().unwrap_or("(passphrase)"),
                v.row.name
            );
        }
    }
    let show = |v: &[std::path::PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    say!(
        "requests may read sources under {} and restore under {} (--allow-source, --allow-restore)",
        show(&roots.source),
        show(&roots.restore)
    );
    // The scheduler runs on its own thread with the system clock.
    let sched_home = home.clone();
    let sched_opts = SchedulerOptions {
        secrets: secrets.clone(),
        spread: jiff::SignedDuration::from_secs(spread.max(0)),
        ..Default::default()
    };
    std::thread::spawn(move || {
        loop {
            match sched_home.scheduler_tick(sched_home.now(), &sched_opts) {
                Ok(r) => {
                    for b in &r.backups {
                        say!(
                            "scheduler: {} slot {}: {}",
                            b.item,
                            b.slot,
                            b.rp_id.as_deref().or(b.error.as_deref()).unwrap_or("")
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(std::io::stderr().lock(), "scheduler: {e}");
                }
            }
            std::thread::sleep(std::time::Duration::from_secs(tick.max(1)));
        }
    });
    let state = Arc::new(AppState {
        home,
        token_hash,
        secrets,
        roots,
    });
    rt.block_on(async move {
        axum::serve(listener, kura_server::app(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    })?;
    Ok(0)
}
