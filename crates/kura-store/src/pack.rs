//! Pack objects: many chunk blobs in one object, so that a file tree of small files costs a
//! few large writes instead of one object (a file on disk, a request on S3) per chunk.
//!
//! ```text
//!  blob 1 | blob 2 | … | blob n | header blob | header blob length (u32 LE)
//! ```
//!
//! Each blob is a chunk's ordinary stored form ([`crate::blob`]), bound to its chunk id, so a
//! chunk read from a pack is checked exactly as one read from its own object. The header
//! blob (kind [`BlobKind::Pack`], bound to the pack's key) lists every chunk with its offset
//! and length: the index of a recovery point says where its packed chunks are, and the header
//! lets a pack be checked, or its chunks found, without any index.
//!
//! Header plaintext:
//! ```text
//!  0  4  magic "KPAK"   4  1  version (1)   5  3  zero   8  8  chunk count n (u64 LE)
//! 16 40 × n  chunk id (32), offset (u32 LE), length (u32 LE), by offset
//! ```
//!
//! Pack ids are random: a pack is never written twice, and its key says nothing about its
//! content.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use crate::blob::{BlobKind, Codec};
use crate::{ChunkId, Error, Result, Vault};

const MAGIC: &[u8; 4] = b"KPAK";
const VERSION: u8 = 1;
const ENTRY_LEN: usize = 40;
const HEADER_FIXED: usize = 16;

/// What a pack grows to before it is written: few enough objects for a tree of small files,
/// small enough that a pack in the making per writer stays a modest amount of memory.
pub const PACK_TARGET: usize = 16 << 20;
/// Room a pack's buffer keeps past its target: the last chunk (4 MiB at most by default)
/// and the header.
const ROOM: usize = 5 << 20;

/// A pack's id: 32 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 32]);

impl PackId {
    /// A new random id.
    pub fn random() -> Self {
        PackId(crate::keys::random_bytes::<32>())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| Error::Invalid {
            field: "pack id",
            reason: format!("{s:?}: {e}"),
        })?;
        Ok(PackId(out))
    }

    /// The object key of this pack in a vault.
    pub fn key(&self) -> String {
        let h = self.to_hex();
        format!("packs/{}/{}", &h[..2], h)
    }

    /// The pack a `packs/…` key names.
    pub fn from_key(key: &str) -> Option<Self> {
        let hex = key.strip_prefix("packs/")?.rsplit('/').next()?;
        Self::from_hex(hex).ok().filter(|p| p.key() == key)
    }

    /// A short form for messages (first 12 hex digits).
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({})", self.short())
    }
}

/// Where a packed chunk's blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packed {
    /// The pack.
    pub pack: PackId,
    /// Offset of the blob in the pack.
    pub offset: u32,
    /// Length of the blob.
    pub len: u32,
}

impl Packed {
    /// The blob's byte range in its pack.
    pub fn range(&self) -> std::ops::Range<u64> {
        u64::from(self.offset)..u64::from(self.offset) + u64::from(self.len)
    }
}

/// A chunk a recovery point references, and where its stored copy is: its own object
/// (`chunks/…`) or a blob in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// The chunk.
    pub id: ChunkId,
    /// Its pack, when packed.
    pub packed: Option<Packed>,
}

/// A pack being filled.
pub struct PackBuilder {
    id: PackId,
    bytes: Vec<u8>,
    entries: Vec<(ChunkId, u32, u32)>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// An empty pack with a new id.
    pub fn new() -> Self {
        PackBuilder {
            id: PackId::random(),
            bytes: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// An empty pack with room for `target` bytes and one more large chunk, so that it is
    /// filled without ever growing (and copying) its buffer.
    pub fn with_capacity(target: usize) -> Self {
        PackBuilder {
            bytes: Vec::with_capacity(target.saturating_add(ROOM)),
            ..Self::new()
        }
    }

    /// Its id.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// Bytes of blobs so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it holds no blob.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a chunk's stored blob; returns where it is.
    pub fn push(&mut self, id: ChunkId, stored: &[u8]) -> Packed {
        let at = Packed {
            pack: self.id,
            offset: u32::try_from(self.bytes.len()).expect("a pack stays under 4 GiB"),
            len: u32::try_from(stored.len()).expect("a blob stays under 4 GiB"),
        };
        self.bytes.extend_from_slice(stored);
        self.entries.push((id, at.offset, at.len));
        at
    }

    /// The pack's stored bytes: the blobs, then the sealed header and its length.
    pub fn finish(mut self, codec: &mut Codec) -> Result<(PackId, Vec<u8>)> {
        let mut plain = Vec::with_capacity(HEADER_FIXED + ENTRY_LEN * self.entries.len());
        plain.extend_from_slice(MAGIC);
        plain.extend_from_slice(&[VERSION, 0, 0, 0]);
        plain.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (id, offset, len) in &self.entries {
            plain.extend_from_slice(&id.0);
            plain.extend_from_slice(&offset.to_le_bytes());
            plain.extend_from_slice(&len.to_le_bytes());
        }
        let header = codec.encode(BlobKind::Pack, self.id.key().as_bytes(), &plain)?;
        let header_len = u32::try_from(header.len()).expect("a pack header stays under 4 GiB");
        self.bytes.extend_from_slice(&header);
        self.bytes.extend_from_slice(&header_len.to_le_bytes());
        Ok((self.id, self.bytes))
    }
}

/// The chunks a pack's header lists, checked: each blob lies in the pack before the header,
/// in order, without overlap. `stored` is the whole pack.
pub fn pack_entries(codec: &mut Codec, id: &PackId, stored: &[u8]) -> Result<Vec<ChunkRef>> {
    let object = format!("pack {id}");
    let bad = |reason: String| Error::corrupt(object.clone(), reason);
    let Some(tail) = stored.len().checked_sub(4) else {
        return Err(bad(format!("truncated at {} bytes", stored.len())));
    };
    let header_len = u32::from_le_bytes(stored[tail..].try_into().expect("4")) as usize;
    let Some(header_at) = tail.checked_sub(header_len) else {
        return Err(bad(format!(
            "its header claims {header_len} bytes of {}",
            stored.len()
        )));
    };
    let plain = codec.decode(
        BlobKind::Pack,
        id.key().as_bytes(),
        &object,
        stored[header_at..tail].to_vec(),
    )?;
    if plain.len() < HEADER_FIXED || &plain[..4] != MAGIC {
        return Err(bad("not a pack header (bad magic)".into()));
    }
    if plain[4] != VERSION || plain[5..8] != [0; 3] {
        return Err(bad(format!("unknown pack header version {}", plain[4])));
    }
    let count = u64::from_le_bytes(plain[8..16].try_into().expect("8"));
    let body = &plain[HEADER_FIXED..];
    if Some(body.len() as u64) != count.checked_mul(ENTRY_LEN as u64) {
        return Err(bad(format!(
            "its header lists {count} chunks in {} bytes",
            body.len()
        )));
    }
    let mut out = Vec::with_capacity(body.len() / ENTRY_LEN);
    let mut end = 0u64;
    for e in body.chunks_exact(ENTRY_LEN) {
        let at = Packed {
            pack: *id,
            offset: u32::from_le_bytes(e[32..36].try_into().expect("4")),
            len: u32::from_le_bytes(e[36..40].try_into().expect("4")),
        };
        let r = at.range();
        if r.start < end || r.end > header_at as u64 {
            return Err(bad(format!(
                "its header places a chunk at {}..{} (blobs end at {header_at})",
                r.start, r.end
            )));
        }
        end = r.end;
        out.push(ChunkRef {
            id: ChunkId(e[..32].try_into().expect("32")),
            packed: Some(at),
        });
    }
    Ok(out)
}

/// Packs shared by the workers of one backup: each encoded chunk goes into the open pack; a
/// pack that reaches [`PACK_TARGET`] goes to the writer's own thread, which seals and stores
/// it while the workers fill the next. A chunk is added once per backup (two files with the
/// same content share it).
///
/// Every pack buffer is allocated and freed on the writer's thread: buffers freed on the
/// thread that filled them stayed in each thread's allocator arena, and a backup of 100,000
/// files peaked at 280 MiB instead of about 130.
pub struct PackWriter {
    target: usize,
    state: Mutex<WriterState>,
    /// Full packs to the writer, handed over when it is free (a worker waits meanwhile).
    full: Option<crossbeam_channel::Sender<PackBuilder>>,
    /// Empty packs from the writer, one ready ahead.
    fresh: Option<crossbeam_channel::Receiver<PackBuilder>>,
    /// The writer's first failure.
    failed: std::sync::Arc<Mutex<Option<Error>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct WriterState {
    open: Option<PackBuilder>,
    places: HashMap<ChunkId, Packed>,
    packs: u64,
}

/// What a [`PackWriter`] wrote.
#[derive(Debug, Default)]
pub struct PackedChunks {
    /// Where each chunk it added is.
    pub places: HashMap<ChunkId, Packed>,
    /// Packs written.
    pub packs: u64,
}

impl PackWriter {
    /// Packs of [`PACK_TARGET`] bytes into `vault`.
    pub fn new(vault: &Vault) -> Self {
        Self::with_target(vault, PACK_TARGET)
    }

    /// Packs of about `target` bytes (small ones in tests).
    pub fn with_target(vault: &Vault, target: usize) -> Self {
        let target = target.max(1);
        let (full_tx, full_rx) = crossbeam_channel::bounded::<PackBuilder>(0);
        let (fresh_tx, fresh_rx) = crossbeam_channel::bounded::<PackBuilder>(1);
        let failed: std::sync::Arc<Mutex<Option<Error>>> = Default::default();
        let vault = vault.clone();
        let slot = failed.clone();
        let thread = std::thread::Builder::new()
            .name("kura-packs".into())
            .spawn(move || {
                let mut codec = vault.codec();
                let _ = fresh_tx.send(PackBuilder::with_capacity(target));
                for pack in full_rx {
                    let done = pack
                        .finish(&mut codec)
                        .and_then(|(id, bytes)| vault.put_pack(&id, bytes));
                    if let Err(e) = done {
                        slot.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    }
                    if fresh_tx.send(PackBuilder::with_capacity(target)).is_err() {
                        break;
                    }
                }
            });
        let (thread, fresh) = match thread {
            Ok(t) => (Some(t), Some(fresh_rx)),
            Err(e) => {
                *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Error::Invalid {
                    field: "pack writer",
                    reason: format!("its thread did not start: {e}"),
                });
                (None, None)
            }
        };
        PackWriter {
            target,
            state: Mutex::new(WriterState {
                open: None,
                places: HashMap::new(),
                packs: 0,
            }),
            full: Some(full_tx),
            fresh,
            failed,
            thread,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failure(&self) -> Option<Error> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn stopped(&self) -> Error {
        self.failure().unwrap_or_else(|| Error::Invalid {
            field: "pack writer",
            reason: "its thread stopped".into(),
        })
    }

    /// An empty pack from the writer's thread.
    fn fresh(&self) -> Result<PackBuilder> {
        self.fresh
            .as_ref()
            .and_then(|f| f.recv().ok())
            .ok_or_else(|| self.stopped())
    }

    /// Whether this backup has already added the chunk.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.lock().places.contains_key(id)
    }

    /// Adds a chunk's stored blob unless this backup already added it; true when it was
    /// added. Fails when the writer failed to store an earlier pack.
    pub fn add(&self, id: ChunkId, stored: &[u8]) -> Result<bool> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let full = {
            let mut st = self.lock();
            if st.places.contains_key(&id) {
                return Ok(false);
            }
            if st.open.is_none() {
                st.open = Some(self.fresh()?);
            }
            let open = st.open.as_mut().expect("an open pack");
            let at = open.push(id, stored);
            let full = open.len() >= self.target;
            st.places.insert(id, at);
            if !full {
                return Ok(true);
            }
            st.packs += 1;
            st.open.take().expect("an open pack")
        };
        let sent = self.full.as_ref().is_some_and(|f| f.send(full).is_ok());
        if !sent {
            return Err(self.stopped());
        }
        Ok(true)
    }

    /// Stores the last pack and waits for the writer; returns where every added chunk is.
    /// The packs still need a [`Vault::sync`] before an index names them.
    pub fn finish(mut self) -> Result<PackedChunks> {
        let st = std::mem::replace(
            &mut *self.lock(),
            WriterState {
                open: None,
                places: HashMap::new(),
                packs: 0,
            },
        );
        let mut packs = st.packs;
        if let Some(open) = st.open.filter(|p| !p.is_empty()) {
            packs += 1;
            let sent = self.full.as_ref().is_some_and(|f| f.send(open).is_ok());
            if !sent {
                return Err(self.stopped());
            }
        }
        self.stop();
        if let Some(e) = self.failure() {
            return Err(e);
        }
        Ok(PackedChunks {
            places: st.places,
            packs,
        })
    }

    /// Ends the writer's thread once it has stored what it was given.
    fn stop(&mut self) {
        drop(self.full.take());
        drop(self.fresh.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VaultOptions;
    use std::sync::Arc;

    fn vault() -> Vault {
        let backend = Arc::new(kura_backend::MemoryBackend::default());
        Vault::create(backend, &VaultOptions::for_tests(), &"pw".into()).unwrap()
    }

    #[test]
    fn packs_hold_chunks_that_read_back_checked_and_list_themselves() {
        let v = vault();
        let mut codec = v.codec();
        let w = PackWriter::with_target(&v, 3000);
        // Bytes that do not compress, so each blob is about 1 KB.
        let mut x = 12345u32;
        let data: Vec<Vec<u8>> = (0..10)
            .map(|i| {
                (0..1000 + i)
                    .map(|_| {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        (x >> 16) as u8
                    })
                    .collect()
            })
            .collect();
        for d in &data {
            let id = v.chunk_id(d);
            let stored = codec.encode_chunk(&id, d).unwrap();
            assert!(w.add(id, &stored).unwrap());
            assert!(!w.add(id, &stored).unwrap(), "added once");
        }
        let out = w.finish().unwrap();
        assert_eq!(out.places.len(), 10);
        assert!(out.packs >= 3, "{} packs", out.packs);
        let keys = v.backend().list("packs/").unwrap();
        assert_eq!(keys.len() as u64, out.packs);
        for d in &data {
            let id = v.chunk_id(d);
            let at = out.places[&id];
            assert_eq!(v.get_packed(&id, &at, &mut codec).unwrap(), *d);
        }
        let mut listed = 0;
        for key in &keys {
            let id = PackId::from_key(key).unwrap();
            let stored = v.backend().get(key).unwrap();
            for r in pack_entries(&mut codec, &id, &stored).unwrap() {
                assert_eq!(out.places[&r.id], r.packed.unwrap());
                listed += 1;
            }
            // Any cut or flipped byte in the header is refused.
            for cut in [0, 3, stored.len() - 1] {
                assert!(pack_entries(&mut codec, &id, &stored[..cut]).is_err());
            }
            let mut flipped = stored.clone();
            let n = flipped.len();
            flipped[n - 20] ^= 1;
            assert!(pack_entries(&mut codec, &id, &flipped).is_err());
            // A header is bound to its pack's key.
            assert!(pack_entries(&mut codec, &PackId::random(), &stored).is_err());
        }
        assert_eq!(listed, 10);
        // A blob read at the wrong place is refused, never taken for another chunk.
        let (a, b) = (v.chunk_id(&data[0]), v.chunk_id(&data[1]));
        let wrong = Packed {
            len: out.places[&b].len,
            ..out.places[&b]
        };
        assert!(v.get_packed(&a, &wrong, &mut codec).is_err());
        assert!(PackId::from_key("packs/zz/1").is_none());
        assert!(PackId::from_key(&out.places[&a].pack.key()).is_some());
    }
}
