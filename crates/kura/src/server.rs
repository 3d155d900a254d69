//! `kura server`: the HTTP API and the scheduler over the home, configured from a TOML file,
//! flags and environment variables (see docs/config.md).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kura_catalog::{JobOperation, JobStatus};
use kura_engine::{Home, JobQueue, QueueEvent, SchedulerOptions, Secrets};
use kura_server::AppState;
use kura_server::config::{LogFormat, ServerConfig};

use crate::Cli;

/// Prints a line; a closed stdout (a detached server) is not an error.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// How long running jobs get to stop after SIGTERM or SIGINT before the server exits.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The server's own options. Each overrides the configuration file's key of the same name.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Configuration file (TOML; every key is listed in docs/config.md). Flags and
    /// environment variables override it.
    #[arg(long, env = "KURA_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (file, environment and flags merged) and exit.
    #[arg(long)]
    print_config: bool,
    /// Address and port to listen on [default: 127.0.0.1:8640].
    #[arg(long, env = "KURA_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "KURA_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "KURA_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (tokens cross the network in clear).
    #[arg(long, env = "KURA_INSECURE_HTTP")]
    insecure_http: bool,
    /// Log format: text or json [default: text].
    #[arg(long, env = "KURA_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<String>,
    /// Which events to log, RUST_LOG-style: `info`, `debug`, `kura=debug,warn`
    /// [default: info].
    #[arg(long, env = "KURA_LOG", value_name = "FILTER")]
    log_level: Option<String>,
    /// Serve the API only: no scheduled backups, retention, purges or GC from this process
    /// (when `kura scheduler run` or a timer ticks for this home).
    #[arg(long)]
    no_scheduler: bool,
    /// Seconds between scheduler ticks [default: 30].
    #[arg(long, value_name = "SECONDS")]
    tick: Option<u64>,
    /// Jobs that run at once [default: the number of cores, at least 2]; the rest wait,
    /// Queued.
    #[arg(long, value_name = "N")]
    max_jobs: Option<usize>,
    /// Jobs that run at once in one vault [default: max-jobs].
    #[arg(long, value_name = "N")]
    max_jobs_per_vault: Option<usize>,
    /// Spread window, in seconds, for items that share a schedule [default: 600].
    #[arg(long, value_name = "SECONDS")]
    spread: Option<u64>,
    /// Also let API requests protect sources under DIR (repeatable). Always allowed:
    /// /var/lib/libvirt/images and HOME/sources.
    #[arg(long = "allow-source", value_name = "DIR")]
    allow_source: Vec<PathBuf>,
    /// Also let API requests restore to, and keep vaults in, DIR (repeatable). Always
    /// allowed: HOME/restores and HOME/vaults.
    #[arg(long = "allow-restore", value_name = "DIR")]
    allow_restore: Vec<PathBuf>,
}

/// The configuration file, then environment variables and flags over it, checked.
fn effective(cli: &Cli, a: &ServerArgs) -> anyhow::Result<ServerConfig> {
    let mut c = match &a.config {
        Some(f) => ServerConfig::from_file(f)?,
        None => ServerConfig::default(),
    };
    let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    if let Some(h) = &cli.home {
        c.home = Some(abs(h));
    }
    if c.home.is_none() {
        c.home = Some(crate::default_home());
    }
    if let Some(l) = &a.listen {
        c.listen = l.clone();
    }
    if let Some(p) = &a.tls_cert {
        c.tls_cert = Some(abs(p));
    }
    if let Some(p) = &a.tls_key {
        c.tls_key = Some(abs(p));
    }
    c.insecure_http |= a.insecure_http;
    if let Some(f) = &a.log_format {
        c.log_format = f
            .parse::<LogFormat>()
            .map_err(|e| anyhow::anyhow!("--log-format: {e}"))?;
    }
    if let Some(l) = &a.log_level {
        c.log_level = l.clone();
    }
    if a.no_scheduler {
        c.scheduler = false;
    }
    if let Some(t) = a.tick {
        c.tick_seconds = t;
    }
    if let Some(s) = a.spread {
        c.spread_seconds = s;
    }
    if let Some(n) = a.max_jobs {
        c.max_jobs = n;
    }
    if let Some(n) = a.max_jobs_per_vault {
        c.max_jobs_per_vault = Some(n);
    }
    c.allow_source.extend(a.allow_source.iter().map(abs));
    c.allow_restore.extend(a.allow_restore.iter().map(abs));
    if let Some(f) = &cli.passphrase_file {
        c.passphrase_file = Some(abs(f));
    }
    if let Some(f) = &cli.key_file {
        c.key_file = Some(abs(f));
    }
    for (name, file) in crate::vault_passphrase_files(cli)? {
        c.vault_passphrase_files.insert(name, abs(&file));
    }
    c.check()?;
    Ok(c)
}

/// `kura server`: merges the configuration, then serves until SIGTERM or SIGINT.
pub fn start(cli: &Cli, args: &ServerArgs) -> anyhow::Result<u8> {
    let cfg = effective(cli, args)?;
    if args.print_config {
        say!("{}", cfg.to_toml().trim_end());
        for var in ["KURA_PASSPHRASE", "KURA_ADMIN_TOKEN"] {
            if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
                say!("# {var} is set in the environment (its value is not shown)");
            }
        }
        return Ok(0);
    }
    init_logging(&cfg)?;
    let home_dir = cfg.home.clone().expect("effective() sets the home");
    let home = match crate::test_clock()? {
        Some(clock) => Home::open_with(&home_dir, clock, jiff::tz::TimeZone::system())?,
        None => Home::open(&home_dir)?,
    };
    let secrets = crate::secrets_from(
        cfg.passphrase_file.as_deref(),
        cfg.key_file.clone(),
        &cfg.vault_passphrase_files,
    )?;
    let mut roots = kura_server::Roots::defaults(home.root());
    roots.source.extend(cfg.allow_source.iter().cloned());
    roots.restore.extend(cfg.allow_restore.iter().cloned());
    run(home, secrets, &cfg, roots)
}

fn init_logging(cfg: &ServerConfig) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .with_context(|| format!("log_level {:?}", cfg.log_level))?;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let set = match cfg.log_format {
        LogFormat::Text => fmt.try_init(),
        LogFormat::Json => fmt.json().flatten_event(true).try_init(),
    };
    set.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// Loads the TLS certificate chain and key into a rustls configuration (ring provider,
/// TLS 1.2 and 1.3, HTTP/1.1).
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls_cert {}: no certificate in the file", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| anyhow::anyhow!("tls_cert/tls_key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn run(
    home: Home,
    secrets: Secrets,
    cfg: &ServerConfig,
    roots: kura_server::Roots,
) -> anyhow::Result<u8> {
    // Everything that can be refused is checked before the home is prepared for serving.
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Some(tls_config(c, k)?),
        _ => None,
    };
    let addr = cfg.listen_addr()?;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let admin = std::env::var("KURA_ADMIN_TOKEN").ok();
    let admin_token = kura_server::first_start(&home, admin.as_deref())?;
    let home = Arc::new(home);
    let scheme = if tls.is_some() { "https" } else { "http" };
    say!(
        "kura server listening on {scheme}://{addr}/api/v1 (home {})",
        home.root().display()
    );
    tracing::info!(%addr, tls = tls.is_some(), home = %home.root().display(), "listening");
    match admin_token {
        kura_server::AdminToken::Given => {
            say!("admin token: set from KURA_ADMIN_TOKEN (stored hashed)")
        }
        kura_server::AdminToken::New(t) => {
            say!("admin token (shown once, stored hashed): {t}")
        }
        kura_server::AdminToken::Existing => say!(
            "admin token: the one printed at the first start (`kura token reset admin` on this host makes a new one)"
        ),
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
    let show = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    say!(
        "requests may read sources under {} and restore under {} (allow_source, allow_restore)",
        show(&roots.source),
        show(&roots.restore)
    );
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scheduler = Arc::new(kura_server::metrics::SchedulerStats::default());
    let queue = Arc::new(JobQueue::new(cfg.queue_limits()).with_watcher(log_job));
    let limits = queue.limits();
    say!(
        "up to {} jobs at once, {} per vault (max_jobs, max_jobs_per_vault)",
        limits.jobs,
        limits.per_vault
    );
    let workers: Vec<_> = (0..limits.jobs)
        .map(|_| {
            let (home, queue) = (home.clone(), queue.clone());
            std::thread::spawn(move || queue.serve(&home))
        })
        .collect();
    if cfg.scheduler {
        spawn_scheduler(
            home.clone(),
            &secrets,
            cfg,
            queue.clone(),
            stopping.clone(),
            scheduler.clone(),
        );
    } else {
        tracing::info!("the scheduler is off (scheduler = false): this server runs requests only");
    }
    let state = Arc::new(AppState {
        home: home.clone(),
        secrets,
        roots,
        stopping: stopping.clone(),
        scheduler,
        queue: queue.clone(),
        secure_cookies: cfg.tls_cert.is_some(),
        exports: Default::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let handle = axum_server::Handle::new();
    let app = kura_server::app(state).into_make_service();
    let served = rt.block_on(async {
        tokio::spawn(wait_for_signal(handle.clone(), stopping.clone()));
        match tls {
            Some(config) => {
                let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
                axum_server::from_tcp_rustls(listener, config)?
                    .handle(handle)
                    .serve(app)
                    .await
            }
            None => {
                axum_server::from_tcp(listener)?
                    .handle(handle)
                    .serve(app)
                    .await
            }
        }
    });
    served.context("the HTTP server stopped")?;
    for id in queue.close(&home) {
        tracing::info!(job = %id, "cancelled before it started: the server is stopping");
    }
    stop_jobs(&home);
    drop(workers);
    // Jobs still on the blocking pool end with the process.
    rt.shutdown_background();
    tracing::info!("stopped");
    Ok(0)
}

/// Waits for SIGTERM or SIGINT, then refuses new work and lets requests in flight finish.
async fn wait_for_signal(
    handle: axum_server::Handle<std::net::SocketAddr>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install the SIGTERM/SIGINT handlers");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        "stopping: new jobs are refused, running jobs are cancelled"
    );
    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    handle.graceful_shutdown(Some(Duration::from_secs(10)));
}

/// Cancels the jobs this process runs and waits for them to end (up to [`STOP_GRACE`]);
/// the ones still running then are recorded Cancelled as the process exits.
fn stop_jobs(home: &Home) {
    let mine =
        |home: &Home| -> Vec<String> { home.running_jobs_of_this_process().unwrap_or_default() };
    let running = mine(home);
    for id in &running {
        match home.request_stop(id) {
            Ok(true) => tracing::info!(job = %id, "cancelling"),
            Ok(false) => tracing::info!(job = %id, "waiting for the job to end"),
            Err(e) => tracing::warn!(job = %id, error = %e, "cannot cancel"),
        }
    }
    let deadline = std::time::Instant::now() + STOP_GRACE;
    while !mine(home).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in mine(home) {
        let _ = home.record_stopped(&id, "the server stopped before the job finished");
        tracing::warn!(job = %id, "recorded Cancelled: still running when the server stopped");
    }
}

/// One log line per job start and end (the queue's watcher).
fn log_job(event: QueueEvent) {
    match event {
        QueueEvent::Started {
            id,
            operation,
            target,
            waited_ms,
        } => {
            tracing::info!(job = %id, operation = %operation, target = %target, waited_ms, "job started")
        }
        QueueEvent::Ended { job, ran_ms } => {
            let (id, op, target, status) = (&job.id, &job.operation, &job.target, &job.status);
            match (status, &job.error) {
                (JobStatus::Completed, _) => tracing::info!(
                    job = %id, operation = %op, target = %target, status = %status,
                    duration_ms = ran_ms, rp = job.rp_id.as_deref().unwrap_or(""), "job ended"
                ),
                (_, error) => tracing::warn!(
                    job = %id, operation = %op, target = %target, status = %status,
                    duration_ms = ran_ms, error = error.as_deref().unwrap_or(""), "job ended"
                ),
            }
        }
    }
}

/// The scheduler runs on its own thread with the home's clock, until the server stops.
/// Each tick queues what is due (the queue's workers run it) and returns at once, so a long
/// job never delays the next tick. What it queued or could not queue is logged; its timing
/// goes to `/metrics`.
fn spawn_scheduler(
    home: Arc<Home>,
    secrets: &Secrets,
    cfg: &ServerConfig,
    queue: Arc<JobQueue>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    stats: Arc<kura_server::metrics::SchedulerStats>,
) {
    use std::sync::atomic::Ordering;
    let opts = SchedulerOptions {
        secrets: secrets.clone(),
        spread: jiff::SignedDuration::from_secs(cfg.spread_seconds.min(i64::MAX as u64) as i64),
        limits: queue.limits(),
        ..Default::default()
    };
    home.set_schedule_spread(opts.spread);
    let tick = Duration::from_secs(cfg.tick_seconds.max(1));
    std::thread::spawn(move || {
        while !stopping.load(Ordering::SeqCst) {
            let now = home.now();
            stats.last_tick.store(now.as_second(), Ordering::Relaxed);
            stats.ticks.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            match home.schedule(now, &opts, &queue) {
                Ok(r) => {
                    let lag = r
                        .backups
                        .iter()
                        .filter_map(|b| b.slot.parse::<jiff::Timestamp>().ok())
                        .map(|slot| now.duration_since(slot).as_millis().max(0) as i64)
                        .max()
                        .unwrap_or(0);
                    stats.lag_ms.store(lag, Ordering::Relaxed);
                    for b in &r.backups {
                        match (&b.job_id, &b.error) {
                            (Some(job), _) => tracing::info!(
                                item = %b.item, slot = %b.slot, job = %job, "scheduled backup queued"
                            ),
                            (None, e) => tracing::error!(
                                item = %b.item, slot = %b.slot, error = e.as_deref().unwrap_or(""),
                                "scheduled backup not queued"
                            ),
                        }
                    }
                    for j in r
                        .jobs
                        .iter()
                        .filter(|j| j.operation != JobOperation::Backup)
                    {
                        tracing::info!(job = %j.job_id, operation = %j.operation, target = %j.target, "queued");
                    }
                    for e in &r.retention_errors {
                        tracing::error!(error = %e, "upkeep not queued");
                    }
                }
                Err(e) => tracing::error!(error = %e, "scheduler tick failed"),
            }
            stats
                .tick_us
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            // Sleep in short steps so a stop is seen promptly.
            let until = std::time::Instant::now() + tick;
            while std::time::Instant::now() < until && !stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200).min(tick));
            }
        }
    });
}
