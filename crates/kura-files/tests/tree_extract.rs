//! Extraction of a tree whose files are read on several threads at once (a file item's
//! point): contents, holes, hard links and every directory's times come out as recorded,
//! more than one file is read at a time, and a file that cannot be read fails the whole
//! extraction with its name, after the threads are done.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kura_files::{
    Entry, EntryKind, Error, ExtractOptions, FileSystem, RawEntry, Result, Tree, extract,
};

/// Readers in flight at once: how many now, and the most there ever were.
#[derive(Default)]
struct Overlap {
    now: Mutex<usize>,
    peak: AtomicUsize,
    gave_up: std::sync::atomic::AtomicBool,
    changed: Condvar,
}

impl Overlap {
    /// Counts one more reader, and waits for a second to be in flight with it; up to a
    /// deadline, once, so that a tree read one file at a time still ends.
    fn enter(&self) {
        let mut now = self.now.lock().unwrap();
        *now += 1;
        self.peak.fetch_max(*now, Ordering::SeqCst);
        self.changed.notify_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.peak.load(Ordering::SeqCst) < 2 && !self.gave_up.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                self.gave_up.store(true, Ordering::SeqCst);
            }
            now = self
                .changed
                .wait_timeout(now, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }

    fn leave(&self) {
        *self.now.lock().unwrap() -= 1;
    }
}

/// A tree in memory; a file without contents fails when it is read.
struct MemTree {
    entries: BTreeMap<Vec<u8>, (RawEntry, Option<Vec<u8>>)>,
    overlap: Arc<Overlap>,
    readers: usize,
}

fn raw(path: &str, kind: EntryKind, size: u64, mtime: i64) -> RawEntry {
    RawEntry {
        path: path.as_bytes().to_vec(),
        kind: Some(kind),
        size,
        mode: if kind == EntryKind::Dir { 0o750 } else { 0o640 },
        uid: 0,
        gid: 0,
        mtime: (mtime, 250_000_000),
        atime: (mtime, 0),
        target: None,
        link_group: None,
        xattrs: Vec::new(),
        rdev: 0,
    }
}

impl MemTree {
    fn new(readers: usize) -> MemTree {
        let mut t = MemTree {
            entries: BTreeMap::new(),
            overlap: Arc::default(),
            readers,
        };
        t.entries.insert(
            b"/".to_vec(),
            (raw("/", EntryKind::Dir, 0, 1_600_000_000), None),
        );
        t
    }

    fn dir(&mut self, path: &str, mtime: i64) {
        self.entries.insert(
            path.as_bytes().to_vec(),
            (raw(path, EntryKind::Dir, 0, mtime), None),
        );
    }

    fn file(&mut self, path: &str, contents: Option<Vec<u8>>, group: Option<u64>) {
        let len = contents.as_ref().map_or(1000, |c| c.len() as u64);
        let mut r = raw(path, EntryKind::File, len, 1_700_000_000);
        r.link_group = group;
        self.entries.insert(path.as_bytes().to_vec(), (r, contents));
    }
}

/// A reader that counts itself in flight from its first read until it is dropped.
struct Counted {
    data: std::io::Cursor<Vec<u8>>,
    fail: bool,
    overlap: Arc<Overlap>,
    entered: bool,
}

impl std::io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.entered {
            self.entered = true;
            self.overlap.enter();
        }
        if self.fail {
            return Err(std::io::Error::other("chunk 00ff: missing from the vault"));
        }
        self.data.read(buf)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.entered {
            self.overlap.leave();
        }
    }
}

impl Tree for MemTree {
    fn entry(&self, path: &[u8]) -> Result<Entry> {
        let (r, _) = self
            .entries
            .get(path)
            .ok_or_else(|| Error::NotFound(String::from_utf8_lossy(path).into_owned()))?;
        Ok(Entry::from_raw(r.clone()))
    }

    fn list(&self, path: &[u8]) -> Result<Vec<Entry>> {
        let mut prefix = path.to_vec();
        if prefix != b"/" {
            prefix.push(b'/');
        }
        Ok(self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| k.len() > prefix.len() && !k[prefix.len()..].contains(&b'/'))
            .map(|(_, (r, _))| Entry::from_raw(r.clone()))
            .collect())
    }

    fn reader(&self, path: &[u8]) -> Result<Box<dyn std::io::Read + Send>> {
        let (_, contents) = &self.entries[path];
        Ok(Box::new(Counted {
            data: std::io::Cursor::new(contents.clone().unwrap_or_default()),
            fail: contents.is_none(),
            overlap: self.overlap.clone(),
            entered: false,
        }))
    }

    fn concurrent_reads(&self) -> usize {
        self.readers
    }
}

fn contents(i: usize) -> Vec<u8> {
    (0..(i * 37) % 5000 + 1)
        .map(|b| (b * 7 + i) as u8)
        .collect()
}

/// 20 directories of 30 files, two hard-linked files and a file that is mostly a hole.
fn big_tree(readers: usize) -> MemTree {
    let mut t = MemTree::new(readers);
    for d in 0..20 {
        t.dir(&format!("/d{d:02}"), 1_650_000_000 + d);
        for f in 0..30 {
            let i = d as usize * 30 + f;
            t.file(&format!("/d{d:02}/f{f:02}"), Some(contents(i)), None);
        }
    }
    let mut sparse = vec![0u8; 4 << 20];
    sparse[(3 << 20) + 5] = 9;
    t.file("/sparse.img", Some(sparse), None);
    t.file(
        "/d00/linked",
        Some(b"one file, two names".to_vec()),
        Some(77),
    );
    t.file(
        "/d19/linked",
        Some(b"one file, two names".to_vec()),
        Some(77),
    );
    t
}

#[test]
fn a_tree_read_on_several_threads_comes_out_whole_with_every_time_and_link() {
    let t = big_tree(4);
    let overlap = t.overlap.clone();
    let fs = FileSystem::from_tree(Box::new(t));
    let out = tempfile::tempdir().unwrap();
    let r = extract(&fs, &["/".into()], out.path(), ExtractOptions::default()).unwrap();
    assert_eq!(r.files, 20 * 30 + 3, "{r:?}");
    assert_eq!(r.hard_links, 1, "{r:?}");
    assert_eq!(r.dirs, 20, "{r:?}");
    assert!(r.skipped.is_empty(), "{r:?}");
    assert!(
        overlap.peak.load(Ordering::SeqCst) >= 2,
        "files were read one at a time"
    );
    let mut bytes = 0;
    for d in 0..20 {
        let dir = out.path().join(format!("d{d:02}"));
        for f in 0..30 {
            let want = contents(d * 30 + f);
            bytes += want.len() as u64;
            let p = dir.join(format!("f{f:02}"));
            assert!(std::fs::read(&p).unwrap() == want, "{}", p.display());
            let m = std::fs::metadata(&p).unwrap();
            assert_eq!(
                (m.mtime(), m.mtime_nsec(), m.mode() & 0o7777),
                (1_700_000_000, 250_000_000, 0o640)
            );
        }
        // Set after its files were made, and not moved by their contents written later.
        let m = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            (m.mtime(), m.mtime_nsec(), m.mode() & 0o7777),
            (1_650_000_000 + d as i64, 250_000_000, 0o750),
            "{}",
            dir.display()
        );
    }
    assert_eq!(r.bytes, bytes + (4 << 20) + 19, "{r:?}");
    let a = std::fs::metadata(out.path().join("d00/linked")).unwrap();
    let b = std::fs::metadata(out.path().join("d19/linked")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard links stay one file");
    assert_eq!(
        std::fs::read(out.path().join("d19/linked")).unwrap(),
        b"one file, two names"
    );
    let sparse = out.path().join("sparse.img");
    let data = std::fs::read(&sparse).unwrap();
    assert_eq!((data.len(), data[(3 << 20) + 5]), (4 << 20, 9));
    assert!(
        std::fs::metadata(&sparse).unwrap().blocks() * 512 < 1 << 20,
        "a hole stays a hole"
    );
}

#[test]
fn a_file_that_cannot_be_read_fails_the_extraction_with_its_name() {
    for readers in [1, 4] {
        let mut t = big_tree(readers);
        t.file("/d07/broken", None, None);
        // Overlap is not what this test is about: no reader waits for another.
        t.overlap.gave_up.store(true, Ordering::SeqCst);
        let fs = FileSystem::from_tree(Box::new(t));
        let out = tempfile::tempdir().unwrap();
        let e = extract(&fs, &["/".into()], out.path(), ExtractOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/d07/broken") && msg.contains("chunk 00ff"),
            "{readers} reader(s): {msg}"
        );
        // The walk stopped: nothing after the broken file's directory was started.
        assert!(!out.path().join("d19").exists(), "{readers} reader(s)");
        assert!(
            !out.path().join("sparse.img").exists(),
            "{readers} reader(s)"
        );
    }
}
