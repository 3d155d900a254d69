//! Packed chunks read a window at a time, for readers of an object store.
//!
//! A restore of a file tree reads its chunks in about the order the backup wrote them, so
//! neighbouring chunks sit in the same stretch of the same pack. On a local vault each
//! chunk is one `pread`, and that is cheapest. On an object store each ranged read is a
//! request with its own round trip, and a tree of small files would cost one request per
//! file. [`PackWindows`] reads a pack in aligned windows of [`WINDOW`] bytes instead,
//! keeps the last [`MOST_WINDOWS`] of them, and cuts every chunk it can out of a kept
//! window. Readers on several threads share it: one fetches a window while the others
//! that need it wait for that fetch rather than sending their own.
//!
//! A window holds stored blobs, still sealed: each chunk taken out of one is checked and
//! decoded like any other, and a damaged or missing one is healed the usual way
//! ([`Vault::get_packed_or_healed`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use crate::blob::Codec;
use crate::pack::{PackId, Packed};
use crate::{ChunkId, Result, TreeIndex, Vault};

/// Bytes of a pack read at once.
pub const WINDOW: u64 = 4 << 20;
/// Windows kept for the next chunks (at most 64 MiB, plus those being fetched).
pub const MOST_WINDOWS: usize = 16;

/// A chunk larger than this is read on its own (a window would hold little else).
const OWN_READ: u64 = WINDOW / 4;

/// Reads of one tree's packed chunks through a cache of pack windows.
pub struct PackWindows {
    /// For each pack, the end of the last blob the tree's index places in it: no window
    /// reaches past it (the pack's header, which follows, is not needed).
    ends: HashMap<PackId, u64>,
    state: Mutex<State>,
    changed: Condvar,
    /// Windows fetched, for reports and tests.
    fetched: std::sync::atomic::AtomicU64,
}

/// A window: its pack and its number in the pack.
type Key = (PackId, u64);

#[derive(Default)]
struct State {
    slots: HashMap<Key, Slot>,
    /// Kept windows, least recently used first.
    order: VecDeque<Key>,
}

enum Slot {
    /// One reader is fetching it; the others wait.
    Loading,
    Ready(Arc<Vec<u8>>),
}

impl PackWindows {
    /// Windows over the packs of `index`.
    pub fn new(index: &TreeIndex) -> Self {
        let mut ends: HashMap<PackId, u64> = HashMap::new();
        for at in index.places.iter().flatten() {
            let end = ends.entry(at.pack).or_default();
            *end = (*end).max(at.range().end);
        }
        PackWindows {
            ends,
            state: Mutex::default(),
            changed: Condvar::new(),
            fetched: Default::default(),
        }
    }

    /// Windows fetched so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The chunk `id`, stored at `at`: cut from its window (fetched first if it is not
    /// kept), or read on its own when it is large or crosses a window's end.
    pub fn get(
        &self,
        vault: &Vault,
        id: &ChunkId,
        at: &Packed,
        codec: &mut Codec,
    ) -> Result<Vec<u8>> {
        let r = at.range();
        let number = r.start / WINDOW;
        if r.is_empty() || r.end - r.start > OWN_READ || (r.end - 1) / WINDOW != number {
            let packed = vault.get_packed(id, at, codec);
            return vault.get_packed_or_healed(id, packed, codec);
        }
        let end = self.ends.get(&at.pack).map_or(r.end, |e| (*e).max(r.end));
        let start = number * WINDOW;
        let window = match self.window(vault, (at.pack, number), start..end.min(start + WINDOW)) {
            Ok(w) => w,
            Err(e) => return vault.get_packed_or_healed(id, Err(e), codec),
        };
        let from = (r.start - start) as usize;
        let stored = window
            .get(from..from + at.len as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                crate::Error::corrupt(
                    format!("chunk {id}"),
                    format!("pack {} is shorter than its index says", at.pack),
                )
            });
        let decoded = stored.and_then(|s| codec.decode_chunk(id, s));
        vault.get_packed_or_healed(id, decoded, codec)
    }

    /// The window `key`, covering `range` of its pack: kept, being fetched by another
    /// reader (waited for), or fetched now.
    fn window(&self, vault: &Vault, key: Key, range: std::ops::Range<u64>) -> Result<Arc<Vec<u8>>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match st.slots.get(&key) {
                Some(Slot::Ready(w)) => {
                    let w = w.clone();
                    if let Some(i) = st.order.iter().position(|k| *k == key) {
                        st.order.remove(i);
                    }
                    st.order.push_back(key);
                    return Ok(w);
                }
                Some(Slot::Loading) => {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                None => break,
            }
        }
        st.slots.insert(key, Slot::Loading);
        drop(st);
        let got = vault.get_pack_range(&key.0, range);
        self.fetched
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let out = match got {
            Ok(bytes) => {
                let w = Arc::new(bytes);
                st.slots.insert(key, Slot::Ready(w.clone()));
                st.order.push_back(key);
                while st.order.len() > MOST_WINDOWS {
                    if let Some(old) = st.order.pop_front() {
                        st.slots.remove(&old);
                    }
                }
                Ok(w)
            }
            // Not kept: the next reader that needs it tries again.
            Err(e) => {
                st.slots.remove(&key);
                Err(e)
            }
        };
        drop(st);
        self.changed.notify_all();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PackWriter, Piece, VaultOptions};

    fn noise(seed: u32, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect()
    }

    #[test]
    fn chunks_are_cut_from_shared_windows_and_a_damaged_one_is_healed() {
        let backend = Arc::new(kura_backend::MemoryBackend::default());
        let v = Vault::create(backend.clone(), &VaultOptions::for_tests(), &"pw".into()).unwrap();
        let mut codec = v.codec();
        // 300 chunks of about 2 KB in one pack, and one of 2 MiB read on its own.
        let data: Vec<Vec<u8>> = (0..300)
            .map(|i| noise(i, 2000 + i as usize))
            .chain([noise(999, 2 << 20)])
            .collect();
        let w = PackWriter::new(&v);
        for d in &data {
            let id = v.chunk_id(d);
            w.add(id, &codec.encode_chunk(&id, d).unwrap()).unwrap();
        }
        let placed = w.finish().unwrap().places;
        let mut chunks: Vec<ChunkId> = data.iter().map(|d| v.chunk_id(d)).collect();
        chunks.sort_unstable();
        let index = TreeIndex {
            root: Piece {
                id: chunks[0],
                len: 0,
            },
            files: 0,
            dirs: 0,
            bytes: 0,
            places: chunks.iter().map(|id| Some(placed[id])).collect(),
            chunks,
        };
        let windows = PackWindows::new(&index);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (v, data, windows, placed) = (&v, &data, &windows, &placed);
                s.spawn(move || {
                    let mut codec = v.codec();
                    for d in data.iter().skip(t).step_by(2) {
                        let id = v.chunk_id(d);
                        assert!(windows.get(v, &id, &placed[&id], &mut codec).unwrap() == *d);
                    }
                });
            }
        });
        // The small chunks all lie in the pack's first window: fetched once for all four
        // readers. The large one is not kept in a window.
        assert_eq!(windows.fetched(), 1);

        // A blob damaged in its pack is refused, then read from the copy that heals it.
        let id = v.chunk_id(&data[7]);
        let at = placed[&id];
        let key = at.pack.key();
        let mut stored = kura_backend::Backend::get(backend.as_ref(), &key).unwrap();
        stored[at.offset as usize + 40] ^= 1;
        kura_backend::Backend::put(backend.as_ref(), &key, stored).unwrap();
        let fresh = PackWindows::new(&index);
        let err = fresh.get(&v, &id, &at, &mut codec).unwrap_err();
        assert!(matches!(err, crate::Error::Corrupt { .. }), "{err}");
        let other = v.chunk_id(&data[8]);
        assert!(fresh.get(&v, &other, &placed[&other], &mut codec).unwrap() == data[8]);
        v.put_chunk(&id, codec.encode_chunk(&id, &data[7]).unwrap())
            .unwrap();
        assert!(fresh.get(&v, &id, &at, &mut codec).unwrap() == data[7]);
        assert_eq!(fresh.fetched(), 1, "the window is kept through all of it");
    }
}
