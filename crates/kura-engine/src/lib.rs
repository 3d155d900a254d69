//! kura's engine: the operations users run, over the store, the sources and the catalog.
//!
//! [`Home`] is the entry point: one directory holding the SQLite catalog, the key files kura
//! generated, and (by default) the vaults' local storage. Its methods are the product's
//! verbs: create and attach vaults, protect items, back up ([`backup`]), restore
//! ([`restore`]) and verify ([`verify`]). Every long operation is a job with an id, a log and
//! progress in the catalog, and reports progress to a [`Progress`] sink as it goes.
//!
//! Architecture invariants kept here:
//! - a recovery point is published (manifest written, catalog row inserted) only after its
//!   chunks and indexes are durable;
//! - a restore writes to a temporary file next to the target and renames it into place only
//!   when every chunk has been verified and written;
//! - bad input is refused before anything is written.
//!
//! The engine knows nothing about terminals or HTTP; the CLI and (later) the server call it.
//!
//! ```no_run
//! use kura_engine::{Home, Secrets, NoProgress};
//! let home = Home::open(std::path::Path::new("/var/lib/kura")).unwrap();
//! let report = home.backup("web-disk", &Secrets::default(), &Default::default(), &NoProgress).unwrap();
//! println!("job {} made recovery point {}", report.job_id, report.rp_id);
//! ```

pub mod backup;
mod error;
mod export;
mod export_tls;
mod files;
pub mod gc;
mod home;
mod hooks;
pub mod jobs;
mod policy;
mod progress;
mod protection;
pub mod queue;
mod recovery;
mod replication;
pub mod restore;
mod restore_vm;
pub mod retention;
pub mod scheduler;
pub mod snapshot;
pub mod tokens;
mod tree_backup;
mod tree_read;
pub mod usage;
pub mod verify;

pub use backup::{BackupOptions, BackupReport, ScheduledRun};
pub use error::{Error, ErrorKind, Result};
pub use export::{ExportInfo, ExportListen, MAX_EXPORT_LIFE, RunningExport};
pub use files::{Fetched, FileListing, FileRestoreReport, FilesTarget, PointVolumes};
pub use gc::{GcOptions, GcReport};
pub use home::fast_kdf_for_tests;
pub use home::{
    AttachReport, CreateVault, Home, Secrets, VaultInfo, WrappedKeyDocument, requested_location,
    requested_replica,
};
pub use jobs::JobQuery;
pub use kura_backend::Location;
pub use kura_files::{
    Archive as FileArchive, Entry as FileEntry, EntryKind as FileEntryKind, FsKind, Volume,
};
pub use kura_source::TreeSnapshot;
pub use kura_source::libvirt::Domain;
pub use kura_source::vm::{AgentOptions, VmLink};
pub use policy::{PolicySource, split_policy_path};
pub use progress::{NoProgress, Progress};
pub use protection::{ItemStatus, PrecheckCheck, PrecheckReport};
pub use queue::{JobQueue, JobRequest, QueueEvent, QueueLimits};
pub use recovery::{KitReport, NewKey};
pub use replication::{ReplicationLag, ReplicationReport};
pub use restore::{RestoreDisksOptions, RestoreFormat, RestoreOptions, RestoreReport};
pub use restore_vm::{PathCheck, VmRestoreMode, VmRestoreOptions, VmRestoreReport};
pub use retention::{PlanEntry, RetentionPlan};
pub use scheduler::{Clock, SchedulerOptions, SystemClock, TickReport};
pub use verify::{VerifyProblem, VerifyReport, VerifyScope};

/// Number of worker threads for data-path work.
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 16)
}

/// Workers for a loop that moves chunks to or from `backend`: one per core for local
/// storage; on an object store, where each request waits on the network, enough requests in
/// flight to fill the link.
pub(crate) fn io_workers(backend: &dyn kura_backend::Backend) -> usize {
    if backend.cheap_stat() {
        workers()
    } else {
        (workers() * 8).clamp(16, 64)
    }
}

/// A file item's snapshot option as given (`none`, `btrfs`; absent: none).
pub fn tree_snapshot(given: Option<&str>) -> Result<TreeSnapshot> {
    given.map_or(Ok(TreeSnapshot::None), |s| Ok(TreeSnapshot::parse(s)?))
}

/// A new time-ordered id (UUID v7, simple form: 32 hex digits).
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
