//! Where kura's bytes go.
//!
//! A vault keeps everything (config, chunks, indexes, manifests) as named objects on a
//! [`Backend`]: a deliberately small, synchronous object-storage trait with whole-object
//! puts, whole or ranged gets, listing by prefix, deletes and a durability barrier.
//!
//! Backends here:
//! - [`FsBackend`]: the local filesystem, built on Apache OpenDAL's `fs` service with atomic
//!   writes (temp file, fsync, rename) and directory fsyncs at [`Backend::sync`].
//! - [`ObjectBackend`]: S3 and Azure Blob, through OpenDAL's `s3` and `azblob` services, with
//!   retries of transient failures and every request counted ([`Backend::requests`]).
//! - [`MemoryBackend`]: the in-memory reference implementation, for unit tests and for pinning
//!   down the rules every backend must follow.
//!
//! [`Location`] turns a vault's location (a path, `s3://...`, `azblob://...`) into one of them.
//!
//! [`conformance::run`] is the rule book: every backend must pass it.
//!
//! This crate must never interpret the bytes it stores: no format, no crypto, no catalog.
//!
//! ```
//! use kura_backend::{Backend, MemoryBackend};
//! let b = MemoryBackend::default();
//! b.put("chunks/ab/cd", b"bytes".to_vec()).unwrap();
//! assert_eq!(b.get("chunks/ab/cd").unwrap(), b"bytes");
//! assert!(b.get("missing").unwrap_err().is_not_found());
//! ```

pub mod conformance;
mod fs;
mod location;
mod memory;
mod mirror;
mod object;
#[cfg(feature = "test-servers")]
pub mod test_servers;

pub use fs::FsBackend;
pub use location::{Location, LocationError, StorageEnv};
pub use memory::MemoryBackend;
pub use mirror::MirrorBackend;
pub use object::{Faults, ObjectBackend};

use std::ops::Range;

/// What went wrong in a backend, with the key it happened on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object does not exist.
    #[error("object {key:?} not found")]
    NotFound {
        /// Object key.
        key: String,
    },
    /// A conditional put found the object already there.
    #[error("object {key:?} already exists")]
    AlreadyExists {
        /// Object key.
        key: String,
    },
    /// The key is not acceptable (empty, absolute, `..`, ...).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// Object key.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A requested range lies outside the object.
    #[error("range {start}..{end} is outside object {key:?} of {size} bytes")]
    InvalidRange {
        /// Object key.
        key: String,
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// Object size.
        size: u64,
    },
    /// Any other storage failure (I/O, permission, network, ...).
    #[error("storage error on {key:?} during {op}: {message}")]
    Storage {
        /// Object key or prefix.
        key: String,
        /// Operation name.
        op: &'static str,
        /// The underlying error, rendered.
        message: String,
    },
}

impl Error {
    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A flat namespace of immutable-ish objects.
///
/// Rules (checked by [`conformance::run`]):
/// - keys are relative `/`-separated paths of `[A-Za-z0-9._-]` segments, never `..`;
/// - `put` is atomic: a reader sees the old object, the new one, or nothing, never a prefix;
///   `put` replaces an existing object; `put_new` refuses to;
/// - `get` of a missing object is [`Error::NotFound`];
/// - `get_range` returns exactly the bytes asked for or [`Error::InvalidRange`];
/// - `list(prefix)` (`""` or a path ending in `/`) returns every key under it, recursively, sorted;
///   `list_sizes` the same keys, each with its size;
/// - `delete` of a missing object succeeds (deletes are idempotent);
/// - after `sync` returns, every completed `put` survives a crash of the machine; before it,
///   a crash may lose (or leave unreadable) objects that were new, never one that existed.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Stores `data` under `key`, replacing any existing object.
    fn put(&self, key: &str, data: Vec<u8>) -> Result<()>;
    /// Stores `data` under `key` only if no object has that key.
    fn put_new(&self, key: &str, data: Vec<u8>) -> Result<()>;
    /// Reads a whole object.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Reads `range` of an object.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>>;
    /// The size of an object, or `None` when it does not exist.
    fn stat(&self, key: &str) -> Result<Option<u64>>;
    /// Every key under `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Every key under `prefix` with its object's size, sorted. Object stores return sizes
    /// with a listing, so a backend overrides this to spare a stat per key.
    fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for key in self.list(prefix)? {
            // Deleted between the listing and the stat: not there any more.
            if let Some(size) = self.stat(&key)? {
                out.push((key, size));
            }
        }
        Ok(out)
    }
    /// Removes an object; removing a missing object is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Removes several objects (missing ones are not an error). Object stores override it to
    /// send one request per batch of keys.
    fn delete_many(&self, keys: &[String]) -> Result<()> {
        keys.iter().try_for_each(|k| self.delete(k))
    }
    /// Makes every completed put durable.
    fn sync(&self) -> Result<()>;
    /// Where the objects live, for messages (a directory, a bucket); never credentials.
    fn location(&self) -> String {
        "vault storage".into()
    }
    /// Removes partial uploads older than `older_than` that a killed or failed writer left
    /// (they are never visible as objects); returns how many. Default: none to remove.
    fn remove_stale_uploads(&self, older_than: std::time::Duration) -> Result<u64> {
        let _ = older_than;
        Ok(0)
    }
    /// Whether [`Backend::stat`] is cheap enough to call once per chunk of a backup (a local
    /// filesystem), rather than a network request (object storage).
    fn cheap_stat(&self) -> bool {
        false
    }
    /// Requests sent to a remote service since the backend was opened, or `None` for local
    /// storage (a job reports the difference over its run).
    fn requests(&self) -> Option<Requests> {
        None
    }
    /// The copies a redundant backend keeps, each a whole backend (empty for one copy), so
    /// that verification can read each and repair one from another.
    fn copies(&self) -> Vec<std::sync::Arc<dyn Backend>> {
        Vec::new()
    }
}

/// Requests sent to a storage service, by kind. Retries count: each attempt is a request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Requests {
    /// Object reads (whole or ranged).
    pub get: u64,
    /// Object writes (a multipart upload's parts included).
    pub put: u64,
    /// Object stats.
    pub head: u64,
    /// Listing pages.
    pub list: u64,
    /// Deletes.
    pub delete: u64,
    /// Anything else (multipart starts and completions, batch deletes).
    pub other: u64,
}

impl Requests {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.get + self.put + self.head + self.list + self.delete + self.other
    }

    /// Both counts together.
    pub fn plus(&self, other: &Requests) -> Requests {
        Requests {
            get: self.get + other.get,
            put: self.put + other.put,
            head: self.head + other.head,
            list: self.list + other.list,
            delete: self.delete + other.delete,
            other: self.other + other.other,
        }
    }

    /// The requests sent since `earlier`.
    pub fn since(&self, earlier: &Requests) -> Requests {
        Requests {
            get: self.get.saturating_sub(earlier.get),
            put: self.put.saturating_sub(earlier.put),
            head: self.head.saturating_sub(earlier.head),
            list: self.list.saturating_sub(earlier.list),
            delete: self.delete.saturating_sub(earlier.delete),
            other: self.other.saturating_sub(earlier.other),
        }
    }
}

impl std::fmt::Display for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests ({} PUT, {} GET, {} HEAD, {} LIST, {} DELETE, {} other)",
            self.total(),
            self.put,
            self.get,
            self.head,
            self.list,
            self.delete,
            self.other
        )
    }
}

/// Checks a key against the rules in [`Backend`].
pub fn check_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    for seg in key.split('/') {
        if seg.is_empty() {
            return bad("empty path segment");
        }
        if seg == "." || seg == ".." {
            return bad("relative path segment");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return bad("only A-Z a-z 0-9 . _ - are allowed in a segment");
        }
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    match prefix.strip_suffix('/') {
        Some(dir) => check_key(dir),
        None => Err(Error::InvalidKey {
            key: prefix.to_string(),
            reason: "a list prefix is empty or ends with '/'",
        }),
    }
}

/// Checks that `range` lies inside an object of `size` bytes.
fn check_range(key: &str, range: &Range<u64>, size: u64) -> Result<()> {
    if range.start > range.end || range.end > size {
        return Err(Error::InvalidRange {
            key: key.to_string(),
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(())
}

fn slice_range(key: &str, data: &[u8], range: Range<u64>) -> Result<Vec<u8>> {
    check_range(key, &range, data.len() as u64)?;
    Ok(data[range.start as usize..range.end as usize].to_vec())
}
