//! `GET /metrics`: Prometheus text format, built with `prometheus-client` from the catalog
//! at each scrape (jobs, items' last backups, usage) and from the scheduler's own figures.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::error::ApiError;

/// What the scheduler thread reports about itself.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Unix seconds of the last tick's start (0: none yet).
    pub last_tick: AtomicI64,
    /// Milliseconds between the due time of the slots the last tick ran and the tick.
    pub lag_ms: AtomicI64,
    /// Ticks run since the server started.
    pub ticks: AtomicU64,
    /// Microseconds the ticks took in all (deciding what is due and queueing it).
    pub tick_us: AtomicU64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    operation: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabels {
    item: String,
    vault: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemStatusLabels {
    item: String,
    vault: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VaultLabels {
    vault: String,
}

type FGauge = Gauge<f64, AtomicU64>;

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The metrics document.
pub(crate) fn render(s: &AppState) -> Result<String, ApiError> {
    let home = &s.home;
    let mut reg = Registry::with_prefix("kura");

    let jobs = Family::<JobLabels, Gauge>::default();
    let job_bytes = Family::<OperationLabels, Gauge>::default();
    reg.register(
        "jobs",
        "Jobs in the catalog, by operation and status",
        jobs.clone(),
    );
    reg.register(
        "job_bytes",
        "Bytes processed by jobs: read by backups, written by restores",
        job_bytes.clone(),
    );
    for c in home.job_counts()? {
        jobs.get_or_create(&JobLabels {
            operation: c.operation.clone(),
            status: c.status,
        })
        .set(clamp(c.jobs));
        job_bytes
            .get_or_create(&OperationLabels {
                operation: c.operation,
            })
            .inc_by(clamp(c.bytes));
    }

    let last_success = Family::<ItemLabels, FGauge>::default();
    let last_status = Family::<ItemStatusLabels, Gauge>::default();
    reg.register(
        "item_last_backup_success_timestamp_seconds",
        "When the item's latest successful backup ended (Unix time)",
        last_success.clone(),
    );
    reg.register(
        "item_last_backup_status",
        "1 for the status of the item's latest backup job",
        last_status.clone(),
    );
    for h in home.item_health()? {
        let labels = ItemLabels {
            item: h.item.clone(),
            vault: h.vault.clone(),
        };
        if let Some(t) = h
            .last_success
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        {
            last_success
                .get_or_create(&labels)
                .set(t.as_millisecond() as f64 / 1000.0);
        }
        if let Some(status) = h.last_status {
            last_status
                .get_or_create(&ItemStatusLabels {
                    item: h.item,
                    vault: h.vault,
                    status,
                })
                .set(1);
        }
    }

    let vault_stored = Family::<VaultLabels, Gauge>::default();
    let item_protected = Family::<ItemLabels, Gauge>::default();
    let item_stored = Family::<ItemLabels, Gauge>::default();
    let item_points = Family::<ItemLabels, Gauge>::default();
    reg.register(
        "vault_stored_bytes",
        "Bytes of the vault's chunk objects in its storage",
        vault_stored.clone(),
    );
    reg.register(
        "item_protected_bytes",
        "Used bytes of the item's disks at its latest backup (its protected size)",
        item_protected.clone(),
    );
    reg.register(
        "item_stored_bytes",
        "Bytes the item's backups added to its vault (after dedup, compression, encryption)",
        item_stored.clone(),
    );
    reg.register(
        "item_recovery_points",
        "Recovery points of the item",
        item_points.clone(),
    );
    for v in home.usage(None)? {
        vault_stored
            .get_or_create(&VaultLabels {
                vault: v.vault.clone(),
            })
            .set(clamp(v.stored_bytes));
        for i in v.items {
            let labels = ItemLabels {
                item: i.item,
                vault: v.vault.clone(),
            };
            item_protected
                .get_or_create(&labels)
                .set(clamp(i.protected_bytes));
            item_stored
                .get_or_create(&labels)
                .set(clamp(i.stored_bytes));
            item_points
                .get_or_create(&labels)
                .set(i.recovery_points as i64);
        }
    }

    let (queued, running) = s.queue.counts();
    let limits = s.queue.limits();
    let queue = Family::<QueueLabels, Gauge>::default();
    reg.register(
        "queue_jobs",
        "Jobs of this server waiting in its queue (queued) or running (running)",
        queue.clone(),
    );
    for (state, n) in [("queued", queued), ("running", running)] {
        queue
            .get_or_create(&QueueLabels {
                state: state.into(),
            })
            .set(n as i64);
    }
    let max_jobs: Gauge = Gauge::default();
    reg.register(
        "queue_max_jobs",
        "Jobs that may run at once (max_jobs)",
        max_jobs.clone(),
    );
    max_jobs.set(limits.jobs as i64);

    let last_tick = FGauge::default();
    let lag = FGauge::default();
    let ticks: Gauge = Gauge::default();
    let tick_secs = FGauge::default();
    reg.register(
        "scheduler_tick_seconds",
        "Time the scheduler's ticks took in all since the server started (deciding what is due and queueing it)",
        tick_secs.clone(),
    );
    tick_secs.set(s.scheduler.tick_us.load(Ordering::Relaxed) as f64 / 1e6);
    reg.register(
        "scheduler_last_tick_timestamp_seconds",
        "When the scheduler's latest tick started (Unix time; 0 before the first)",
        last_tick.clone(),
    );
    reg.register(
        "scheduler_lag_seconds",
        "How late the latest tick queued the slots it found due (0 when none was due)",
        lag.clone(),
    );
    reg.register(
        "scheduler_ticks",
        "Scheduler ticks since the server started",
        ticks.clone(),
    );
    last_tick.set(s.scheduler.last_tick.load(Ordering::Relaxed) as f64);
    lag.set(s.scheduler.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0);
    ticks.set(clamp(s.scheduler.ticks.load(Ordering::Relaxed)));

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )
    })?;
    Ok(out)
}
