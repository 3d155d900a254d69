//! Which process owns a job, a lease or a GC claim, judged by something a dead process
//! cannot keep: an exclusive `flock` on a lock file in `locks/` beside the catalog.
//!
//! Each open [`crate::Catalog`] creates `locks/OWNER.lock` and holds the lock until it is
//! dropped or its process dies (the kernel releases it then, even after `kill -9`). Rows
//! record `OWNER`; another process finds the owner alive only if it cannot take the lock.
//! A bare PID is not enough: in a container kura runs as PID 1, which looks alive forever.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FlockOperation, flock};

/// The lock a catalog holds for its process.
#[derive(Debug)]
pub(crate) struct Owner {
    pub(crate) id: String,
    dir: PathBuf,
    _file: File,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn lock_path(dir: &Path, id: &str) -> Option<PathBuf> {
    // Owner ids come from catalog rows: accept only what `Owner::create` makes.
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then(|| dir.join(format!("{id}.lock")))
}

impl Owner {
    /// Creates and locks a new owner file in `dir`.
    pub(crate) fn create(dir: &Path) -> std::io::Result<Owner> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let nanos = jiff::Timestamp::now().as_nanosecond();
        let id = format!(
            "{}-{nanos:x}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = lock_path(dir, &id).expect("well-formed id");
        // Lock first under a name no one looks at, then rename into place: a lock file is
        // never visible unlocked, or another process would take its owner for dead.
        let staging = dir.join(format!("{id}.new"));
        let file = File::create(&staging)?;
        flock(&file, FlockOperation::NonBlockingLockExclusive)?;
        std::fs::rename(&staging, &path)?;
        Ok(Owner {
            id,
            dir: dir.to_path_buf(),
            _file: file,
        })
    }

    /// Removes lock files whose process is gone (left by processes that were killed).
    pub(crate) fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // A `.new` file is being set up right now (it may not be locked yet), or was
            // left by a process killed in those few instructions: only a stale one goes.
            if name.ends_with(".new") {
                let stale = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(3600));
                if stale {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            }
            if let Some(id) = name.strip_suffix(".lock")
                && id != self.id
                && !alive_in(&self.dir, id)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(p) = lock_path(&self.dir, &self.id) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Whether the owner `id` (a lock file in `dir`) is held by a live process.
pub(crate) fn alive_in(dir: &Path, id: &str) -> bool {
    let Some(path) = lock_path(dir, id) else {
        return false;
    };
    let Ok(file) = File::open(&path) else {
        return false; // never created, or removed when its owner ended
    };
    // Taking the lock succeeds only when no live process holds it; release it at once.
    flock(&file, FlockOperation::NonBlockingLockExclusive).is_err()
}
