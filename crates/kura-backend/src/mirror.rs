//! Zone redundancy: one vault written synchronously to two locations.
//!
//! Every write goes to both copies and succeeds only when both took it; an object exists
//! (for `stat` and `list`) only when both copies have it, so a recovery point whose manifest
//! one copy lacks (a location failed part way) is not visible. Reads are served by the
//! first copy and fall back to the second; a copy that failed is skipped for the rest of
//! the backend's life, so a location that is down costs its retries once, not per chunk.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Backend, Error, Requests, Result};

/// Two copies of one vault.
#[derive(Debug)]
pub struct MirrorBackend {
    copies: [Arc<dyn Backend>; 2],
    /// Copy `i` failed a request: reads go to the other one first.
    down: [AtomicBool; 2],
}

impl MirrorBackend {
    /// Mirrors `first` (read first) and `second`.
    pub fn new(first: Arc<dyn Backend>, second: Arc<dyn Backend>) -> MirrorBackend {
        MirrorBackend {
            copies: [first, second],
            down: Default::default(),
        }
    }

    /// Copy indexes in the order reads try them: the healthy ones first.
    fn order(&self) -> [usize; 2] {
        if self.down[0].load(Ordering::Relaxed) && !self.down[1].load(Ordering::Relaxed) {
            [1, 0]
        } else {
            [0, 1]
        }
    }

    fn failed(&self, i: usize, e: &Error) {
        if matches!(e, Error::Storage { .. }) {
            self.down[i].store(true, Ordering::Relaxed);
        }
    }

    /// A write, to both copies.
    fn both(&self, f: impl Fn(&dyn Backend) -> Result<()>) -> Result<()> {
        for (i, c) in self.copies.iter().enumerate() {
            if let Err(e) = f(c.as_ref()) {
                self.failed(i, &e);
                return Err(e);
            }
        }
        Ok(())
    }

    /// A read: the first copy that answers, else the first copy's error.
    fn either<T>(&self, f: impl Fn(&dyn Backend) -> Result<T>) -> Result<T> {
        let [a, b] = self.order();
        match f(self.copies[a].as_ref()) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.failed(a, &e);
                match f(self.copies[b].as_ref()) {
                    Ok(v) => Ok(v),
                    Err(e2) => {
                        self.failed(b, &e2);
                        Err(e)
                    }
                }
            }
        }
    }
}

impl Backend for MirrorBackend {
    fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.both(|c| c.put(key, data.clone()))
    }

    /// The first copy decides who wins; the second then holds the winner's bytes (a second
    /// copy that already has them, from an attempt that failed half way, is fine).
    fn put_new(&self, key: &str, data: Vec<u8>) -> Result<()> {
        if let Err(e) = self.copies[0].put_new(key, data.clone()) {
            self.failed(0, &e);
            return Err(e);
        }
        match self.copies[1].put_new(key, data.clone()) {
            Ok(()) => Ok(()),
            Err(Error::AlreadyExists { .. }) if self.copies[1].get(key).ok() == Some(data) => {
                Ok(())
            }
            Err(e) => {
                self.failed(1, &e);
                Err(e)
            }
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.either(|c| c.get(key))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        self.either(|c| c.get_range(key, range.clone()))
    }

    /// Present only when both copies have it (so a backup writes again what one lacks);
    /// with a copy down, what the other says.
    fn stat(&self, key: &str) -> Result<Option<u64>> {
        let answers: Vec<Result<Option<u64>>> = self.copies.iter().map(|c| c.stat(key)).collect();
        match (&answers[0], &answers[1]) {
            (Ok(a), Ok(b)) => Ok(if a.is_some() && b.is_some() { *a } else { None }),
            (Ok(a), Err(e)) => {
                self.failed(1, e);
                Ok(*a)
            }
            (Err(e), Ok(b)) => {
                self.failed(0, e);
                Ok(*b)
            }
            (Err(_), Err(_)) => answers.into_iter().next().expect("two answers"),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_sizes(prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// The keys both copies hold (sizes from the first); with a copy down, the other's.
    fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let a = self.copies[0].list_sizes(prefix);
        let b = self.copies[1].list_sizes(prefix);
        match (a, b) {
            (Ok(a), Ok(b)) => {
                let second: BTreeSet<String> = b.into_iter().map(|(k, _)| k).collect();
                Ok(a.into_iter().filter(|(k, _)| second.contains(k)).collect())
            }
            (Ok(a), Err(e)) => {
                self.failed(1, &e);
                Ok(a)
            }
            (Err(e), Ok(b)) => {
                self.failed(0, &e);
                Ok(b)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.both(|c| c.delete(key))
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.both(|c| c.delete_many(keys))
    }

    fn sync(&self) -> Result<()> {
        self.both(|c| c.sync())
    }

    fn location(&self) -> String {
        format!(
            "{} and {}",
            self.copies[0].location(),
            self.copies[1].location()
        )
    }

    fn remove_stale_uploads(&self, older_than: std::time::Duration) -> Result<u64> {
        let mut n = 0;
        for c in &self.copies {
            n += c.remove_stale_uploads(older_than)?;
        }
        Ok(n)
    }

    fn cheap_stat(&self) -> bool {
        self.copies.iter().all(|c| c.cheap_stat())
    }

    fn copies(&self) -> Vec<Arc<dyn Backend>> {
        self.copies.to_vec()
    }

    fn requests(&self) -> Option<Requests> {
        let mut sum = None;
        for c in &self.copies {
            if let Some(r) = c.requests() {
                sum = Some(r.plus(&sum.unwrap_or_default()));
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    fn pair() -> (Arc<MemoryBackend>, Arc<MemoryBackend>, MirrorBackend) {
        let a = Arc::new(MemoryBackend::default());
        let b = Arc::new(MemoryBackend::default());
        let m = MirrorBackend::new(a.clone(), b.clone());
        (a, b, m)
    }

    #[test]
    fn a_mirror_follows_the_backend_rules() {
        let (_, _, m) = pair();
        crate::conformance::run(&m);
    }

    #[test]
    fn an_object_one_copy_lacks_is_not_there() {
        let (a, b, m) = pair();
        m.put("rps/1/manifest", b"m".to_vec()).unwrap();
        assert_eq!(b.get("rps/1/manifest").unwrap(), b"m", "written to both");
        a.put("rps/2/manifest", b"only here".to_vec()).unwrap();
        assert_eq!(m.list("rps/").unwrap(), vec!["rps/1/manifest"]);
        assert_eq!(m.stat("rps/2/manifest").unwrap(), None);
        // A read falls back to the copy that has it.
        b.put("chunks/x", b"x".to_vec()).unwrap();
        assert_eq!(m.get("chunks/x").unwrap(), b"x");
    }
}
