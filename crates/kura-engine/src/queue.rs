//! The job queue: scheduled and on-demand jobs wait here (status `Queued`) until a slot is
//! free, then run on one of the queue's workers.
//!
//! Two limits bound the work at any moment: jobs on the whole host, and jobs per vault.
//! Jobs start in the order they were queued, except that one whose vault is at its limit
//! lets later jobs of other vaults go first; so a long backup holds one slot and never delays
//! other items beyond the limits. A job cancelled while it waits ends Cancelled without
//! starting. The server keeps one queue for its lifetime ([`JobQueue::serve`] on each
//! worker thread); a one-off scheduler tick runs its jobs through a queue of its own
//! ([`JobQueue::drain`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use kura_catalog::JobOperation;

use crate::{Error, ErrorKind, Home, Result};

/// How many jobs may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Jobs running at once on this host.
    pub jobs: usize,
    /// Jobs running at once in one vault.
    pub per_vault: usize,
}

impl QueueLimits {
    /// The defaults for this machine: as many jobs as it has cores (at least 2; a backup's
    /// own hashing and compression use every core, and most jobs wait on disks and QEMU
    /// much of the time), and no vault limit beyond that.
    pub fn for_this_machine() -> QueueLimits {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let jobs = cores.clamp(2, 64);
        QueueLimits {
            jobs,
            per_vault: jobs,
        }
    }

    /// Refuses a zero limit, naming the setting.
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("max_jobs", self.jobs),
            ("max_jobs_per_vault", self.per_vault),
        ] {
            if v == 0 {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!("{name} must be at least 1"),
                ));
            }
        }
        Ok(())
    }
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits::for_this_machine()
    }
}

/// The work of a queued job, given the home and the job's id (which the operation must use:
/// `job_id` in its options).
pub type Work = Box<dyn FnOnce(&Home, &str) -> Result<()> + Send>;

/// A job to queue.
pub struct JobRequest {
    /// What it does.
    pub operation: JobOperation,
    /// Item name, or vault name for vault-wide operations.
    pub target: String,
    /// Refuse it while a job of the same operation on the same target is queued or running.
    pub exclusive: bool,
    /// The work.
    pub work: Work,
}

/// A job's start or end, for whoever watches the queue (the server logs them).
#[derive(Debug, Clone)]
pub enum QueueEvent {
    /// A job left the queue and started.
    Started {
        /// Job id.
        id: String,
        /// What it does.
        operation: JobOperation,
        /// Item or vault name.
        target: String,
        /// Milliseconds it waited in the queue.
        waited_ms: u64,
    },
    /// A job ended.
    Ended {
        /// The job as it ended (status, error, result).
        job: Box<kura_catalog::JobRow>,
        /// Milliseconds it ran.
        ran_ms: u64,
    },
}

struct Entry {
    id: String,
    operation: JobOperation,
    target: String,
    vault: Option<String>,
    queued_at: std::time::Instant,
    work: Work,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Entry>,
    running: usize,
    by_vault: HashMap<String, usize>,
    closed: bool,
}

/// See the module documentation.
pub struct JobQueue {
    limits: QueueLimits,
    state: Mutex<State>,
    changed: Condvar,
    watcher: Option<Box<dyn Fn(QueueEvent) + Send + Sync>>,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (queued, running) = self.counts();
        f.debug_struct("JobQueue")
            .field("limits", &self.limits)
            .field("queued", &queued)
            .field("running", &running)
            .finish()
    }
}

impl JobQueue {
    /// An empty queue with these limits (a zero limit counts as 1).
    pub fn new(limits: QueueLimits) -> JobQueue {
        JobQueue {
            limits: QueueLimits {
                jobs: limits.jobs.max(1),
                per_vault: limits.per_vault.max(1),
            },
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            watcher: None,
        }
    }

    /// Calls `f` at each job's start and end (from the worker running it).
    pub fn with_watcher(mut self, f: impl Fn(QueueEvent) + Send + Sync + 'static) -> JobQueue {
        self.watcher = Some(Box::new(f));
        self
    }

    /// The limits.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Jobs waiting and jobs running.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.pending.len(), st.running)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the job (status `Queued`, refused like the operation when `exclusive` and
    /// another one is queued or running) and puts it in line; returns its id.
    pub fn submit(&self, home: &Home, req: JobRequest) -> Result<String> {
        if self.lock().closed {
            return Err(Error::new(
                ErrorKind::Conflict,
                "the job queue is closed: kura is stopping",
            ));
        }
        let id = crate::new_id();
        home.catalog
            .queue_job(&id, req.operation, &req.target, req.exclusive)?;
        let vault = home.job_vault(req.operation, &req.target);
        let mut st = self.lock();
        if st.closed {
            drop(st);
            let _ = home
                .catalog
                .cancel_queued(&id, "kura stopped before the job started");
            return Err(Error::new(
                ErrorKind::Conflict,
                "the job queue is closed: kura is stopping",
            ));
        }
        st.pending.push_back(Entry {
            id: id.clone(),
            operation: req.operation,
            target: req.target,
            vault,
            queued_at: std::time::Instant::now(),
            work: req.work,
        });
        drop(st);
        self.changed.notify_one();
        Ok(id)
    }

    /// Runs queued jobs on this thread until the queue is closed (a server's worker).
    pub fn serve(&self, home: &Home) {
        while let Some(e) = self.take(false) {
            self.run(home, e);
        }
    }

    /// Runs every queued job with up to `limits.jobs` threads, and returns when none is
    /// left (a one-off scheduler tick).
    pub fn drain(&self, home: &Home) {
        std::thread::scope(|s| {
            for _ in 0..self.limits.jobs {
                s.spawn(|| {
                    while let Some(e) = self.take(true) {
                        self.run(home, e);
                    }
                });
            }
        });
    }

    /// Closes the queue: no new jobs, waiting ones end Cancelled, workers stop once their
    /// current job ends. Returns the ids of the jobs cancelled.
    pub fn close(&self, home: &Home) -> Vec<String> {
        let waiting: Vec<Entry> = {
            let mut st = self.lock();
            st.closed = true;
            st.pending.drain(..).collect()
        };
        self.changed.notify_all();
        waiting
            .into_iter()
            .filter(|e| {
                home.catalog
                    .cancel_queued(&e.id, "kura stopped before the job started")
                    .unwrap_or(false)
            })
            .map(|e| e.id)
            .collect()
    }

    /// The next job that may start now, waiting until there is one. `None` when the queue
    /// is closed, or (with `until_empty`) when nothing is left to start.
    fn take(&self, until_empty: bool) -> Option<Entry> {
        let mut st = self.lock();
        loop {
            if st.closed || (until_empty && st.pending.is_empty()) {
                return None;
            }
            if st.running < self.limits.jobs {
                let free = |v: &Option<String>| {
                    v.as_ref().is_none_or(|v| {
                        st.by_vault.get(v).copied().unwrap_or(0) < self.limits.per_vault
                    })
                };
                if let Some(i) = st.pending.iter().position(|e| free(&e.vault)) {
                    let e = st.pending.remove(i).expect("index from position");
                    st.running += 1;
                    if let Some(v) = &e.vault {
                        *st.by_vault.entry(v.clone()).or_default() += 1;
                    }
                    return Some(e);
                }
            }
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs one job (unless it was cancelled while it waited) and frees its slot.
    fn run(&self, home: &Home, e: Entry) {
        let Entry {
            id,
            operation,
            target,
            vault,
            queued_at,
            work,
        } = e;
        if home.catalog.activate_job(&id).unwrap_or(false) {
            self.notify(|| QueueEvent::Started {
                id: id.clone(),
                operation,
                target: target.clone(),
                waited_ms: queued_at.elapsed().as_millis() as u64,
            });
            let started = std::time::Instant::now();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(home, &id)));
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some((e.to_string(), e.kind())),
                Err(_) => Some((
                    format!("internal error: {operation} of {target} panicked"),
                    ErrorKind::Other,
                )),
            };
            // Work that fails before its job runs (a vault that cannot be opened) leaves
            // the row InProgress; it ends Failed with the reason. Work must end its job;
            // one that did not is not left running forever.
            let (msg, kind) = failure.unwrap_or_else(|| {
                (
                    format!("internal error: {operation} of {target} ended without an outcome"),
                    ErrorKind::Other,
                )
            });
            let _ = home.abandon_job(&id, &msg, kind);
            if let Ok(job) = home.catalog.job(&id) {
                self.notify(|| QueueEvent::Ended {
                    job: Box::new(job),
                    ran_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
        let mut st = self.lock();
        st.running -= 1;
        if let Some(v) = vault
            && let Some(n) = st.by_vault.get_mut(&v)
        {
            *n -= 1;
            if *n == 0 {
                st.by_vault.remove(&v);
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    fn notify(&self, event: impl FnOnce() -> QueueEvent) {
        if let Some(w) = &self.watcher {
            w(event());
        }
    }
}
