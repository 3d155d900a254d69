//! File trees: directories as content-addressed objects, and one index per tree and point.
//!
//! A file-tree point stores each directory as a [`Dir`]: a JSON document listing its entries
//! by name, kept as an ordinary chunk (keyed id of its plaintext), so a directory that did
//! not change between two backups is the same chunk and is stored once. A regular file's
//! entry lists the content-defined chunks of its data; a subdirectory's entry names the
//! chunk of its own [`Dir`]. The [`TreeIndex`] of a point (`rps/RP/NAME.tree`) names the root
//! directory and lists every chunk the tree references, so garbage collection, verify and
//! usage read one object per tree, as they read one index per disk.

use serde::{Deserialize, Serialize};

use crate::pack::{ChunkRef, PackId, Packed};
use crate::{ChunkId, Error, Result};

/// Version of the directory documents this build writes and reads.
pub const DIR_VERSION: u32 = 1;

/// Bytes that are usually UTF-8 (names, link targets): a string when they are, base64
/// otherwise, so any name a file system allows round-trips exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(pub Vec<u8>);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NameRepr {
    Text(String),
    Raw { b64: String },
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use base64::Engine;
        match std::str::from_utf8(&self.0) {
            Ok(t) => NameRepr::Text(t.to_string()),
            Err(_) => NameRepr::Raw {
                b64: base64::engine::general_purpose::STANDARD.encode(&self.0),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use base64::Engine;
        Ok(Name(match NameRepr::deserialize(d)? {
            NameRepr::Text(t) => t.into_bytes(),
            NameRepr::Raw { b64 } => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(serde::de::Error::custom)?,
        }))
    }
}

impl Name {
    /// The name as text (bytes that are not UTF-8 shown as U+FFFD).
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A block device node.
    BlockDevice,
    /// A character device node.
    CharDevice,
    /// A named pipe.
    Fifo,
    /// A socket (recorded, never recreated).
    Socket,
}

/// A time as seconds and nanoseconds since the Unix epoch.
pub type Time = (i64, u32);

/// One piece of a file's data: a chunk and its length ([`ChunkId::ZERO`] for zeros, which
/// are never stored: a sparse region).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The chunk.
    pub id: ChunkId,
    /// Its length in bytes.
    pub len: u32,
}

impl Serialize for Piece {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (self.id.to_hex(), self.len).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Piece {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (hex, len) = <(String, u32)>::deserialize(d)?;
        Ok(Piece {
            id: ChunkId::from_hex(&hex).map_err(serde::de::Error::custom)?,
            len,
        })
    }
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Its name in the directory (never empty, `.`, `..`, or containing `/` or NUL).
    pub name: Name,
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits, with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length in bytes (files and links).
    #[serde(default)]
    pub size: u64,
    /// Last modification.
    pub mtime: Time,
    /// Last access.
    #[serde(default)]
    pub atime: Time,
    /// Last status change at the source (change detection only; never restored).
    #[serde(default)]
    pub ctime: Time,
    /// Inode number at the source (change detection, and hard links: files of one tree
    /// with the same `ino` and `nlink` > 1 are one file).
    #[serde(default)]
    pub ino: u64,
    /// Link count at the source.
    #[serde(default = "one")]
    pub nlink: u64,
    /// Device number of a device node.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub rdev: u64,
    /// A file's data, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Piece>,
    /// A directory's own [`Dir`] chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<Piece>,
    /// A link's target, as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Name>,
    /// Extended attributes (POSIX ACLs among them), name and value, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(Name, Name)>,
}

fn one() -> u64 {
    1
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// A directory's entries, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dir {
    /// Document version ([`DIR_VERSION`]).
    pub kura_tree: u32,
    /// The entries, by name, each name once.
    pub entries: Vec<Node>,
    /// The directory's own metadata (kept in a tree's root directory, which no parent
    /// lists); its name is the protected directory's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub this: Option<Box<Node>>,
}

/// Whether `name` can be a file name in a directory.
pub fn is_entry_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

impl Dir {
    /// The stored form (plaintext of its chunk).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a directory serializes")
    }

    /// Parses and checks a directory document; `object` names it in errors. Names must be
    /// file names, sorted and unique; a file's pieces must add up to its size.
    pub fn decode(object: &str, b: &[u8]) -> Result<Self> {
        let d: Dir = serde_json::from_slice(b)
            .map_err(|e| Error::corrupt(object, format!("directory JSON: {e}")))?;
        if d.kura_tree != DIR_VERSION {
            return Err(Error::corrupt(
                object,
                format!("unknown directory version {}", d.kura_tree),
            ));
        }
        for (i, n) in d.entries.iter().enumerate() {
            if !is_entry_name(&n.name.0) {
                return Err(Error::corrupt(
                    object,
                    format!("entry {:?} cannot be a file name", n.name.lossy()),
                ));
            }
            if i > 0 && d.entries[i - 1].name >= n.name {
                return Err(Error::corrupt(
                    object,
                    format!("entry {:?} is out of order or listed twice", n.name.lossy()),
                ));
            }
            let sum: u64 = n.chunks.iter().map(|p| u64::from(p.len)).sum();
            match n.kind {
                NodeKind::File if sum != n.size => {
                    return Err(Error::corrupt(
                        object,
                        format!(
                            "file {:?}: its chunks hold {sum} bytes, not {}",
                            n.name.lossy(),
                            n.size
                        ),
                    ));
                }
                NodeKind::Dir if n.tree.is_none() => {
                    return Err(Error::corrupt(
                        object,
                        format!("directory {:?} names no tree", n.name.lossy()),
                    ));
                }
                NodeKind::Symlink if n.target.is_none() => {
                    return Err(Error::corrupt(
                        object,
                        format!("link {:?} has no target", n.name.lossy()),
                    ));
                }
                _ => {}
            }
        }
        Ok(d)
    }

    /// The entry called `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.entries
            .binary_search_by(|n| n.name.0.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }
}

const MAGIC: &[u8; 4] = b"KTRE";
/// Version 1 listed chunk ids only (every chunk its own object); version 2 adds where each
/// chunk is.
const VERSION: u8 = 2;
const HEADER_LEN: usize = 80;
const ENTRY_LEN: usize = 44;
/// The pack number of a chunk stored as its own object.
const OWN_OBJECT: u32 = u32::MAX;

/// Everything a file tree of one point references, and where each chunk is stored.
///
/// Plaintext layout (inside an index blob):
/// ```text
///  0  4  magic "KTRE"   4  1  version (2)   5  3  zero
///  8 32  root directory chunk id            40 4  root directory length (u32 LE)
/// 44  4  pack count p (u32 LE)              48 8  files (u64)   56 8  directories (u64)
/// 64  8  file bytes (u64)                   72 8  chunk count c (u64)
/// 80 32 × p  the packs the tree's chunks are in, sorted, unique
///    44 × c  every chunk the tree references (directories and data), sorted by id, unique:
///            chunk id (32), pack number (u32 LE, an index into the packs; FFFFFFFF for a
///            chunk stored as its own object), offset and length in the pack (u32 LE each)
/// ```
/// Version 1 (read, no longer written) has no packs: bytes 44..48 are zero and each chunk
/// is its 32-byte id alone, its own object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeIndex {
    /// The root directory.
    pub root: Piece,
    /// Regular files in the tree.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Bytes of file data.
    pub bytes: u64,
    /// Every chunk referenced (without the zero chunk), sorted and unique.
    pub chunks: Vec<ChunkId>,
    /// Where each of `chunks` is: in a pack, or (`None`) its own object.
    pub places: Vec<Option<Packed>>,
}

impl TreeIndex {
    /// Serializes to the layout above.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert_eq!(self.places.len(), self.chunks.len());
        let packs = self.packs();
        let mut out =
            Vec::with_capacity(HEADER_LEN + 32 * packs.len() + ENTRY_LEN * self.chunks.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&self.root.id.0);
        out.extend_from_slice(&self.root.len.to_le_bytes());
        out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
        for n in [self.files, self.dirs, self.bytes, self.chunks.len() as u64] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for p in &packs {
            out.extend_from_slice(&p.0);
        }
        for (i, id) in self.chunks.iter().enumerate() {
            out.extend_from_slice(&id.0);
            let (n, offset, len) = match self.places.get(i).copied().flatten() {
                Some(at) => (
                    packs.binary_search(&at.pack).expect("listed") as u32,
                    at.offset,
                    at.len,
                ),
                None => (OWN_OBJECT, 0, 0),
            };
            for v in [n, offset, len] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Parses and validates the layout above; `object` names the index in errors.
    pub fn decode(object: &str, b: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::corrupt(object, reason);
        if b.len() < HEADER_LEN {
            return Err(bad(format!("tree index truncated at {} bytes", b.len())));
        }
        if &b[..4] != MAGIC {
            return Err(bad("not a tree index (bad magic)".into()));
        }
        let version = b[4];
        if version != 1 && version != VERSION {
            return Err(bad(format!("unknown tree index version {version}")));
        }
        let pack_count = u32::from_le_bytes(b[44..48].try_into().expect("4")) as u64;
        if b[5..8] != [0; 3] || (version == 1 && pack_count != 0) {
            return Err(bad("reserved header bytes are not zero".into()));
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
        let root = Piece {
            id: ChunkId(b[8..40].try_into().expect("32")),
            len: u32::from_le_bytes(b[40..44].try_into().expect("4")),
        };
        let count = u64_at(72);
        let body = &b[HEADER_LEN..];
        let entry = if version == 1 { 32 } else { ENTRY_LEN as u64 };
        let expected = count
            .checked_mul(entry)
            .and_then(|n| n.checked_add(32 * pack_count));
        if Some(body.len() as u64) != expected {
            return Err(bad(format!(
                "expected {pack_count} packs and {count} chunks, found {} bytes",
                body.len()
            )));
        }
        let (pack_bytes, entries) = body.split_at(32 * pack_count as usize);
        let packs: Vec<PackId> = pack_bytes
            .chunks_exact(32)
            .map(|c| PackId(c.try_into().expect("32")))
            .collect();
        if packs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("pack ids are not sorted and unique".into()));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut places = Vec::with_capacity(count as usize);
        for e in entries.chunks_exact(entry as usize) {
            chunks.push(ChunkId(e[..32].try_into().expect("32")));
            if version == 1 {
                places.push(None);
                continue;
            }
            let u32_at = |o: usize| u32::from_le_bytes(e[o..o + 4].try_into().expect("4"));
            let (n, offset, len) = (u32_at(32), u32_at(36), u32_at(40));
            places.push(match n {
                OWN_OBJECT if offset == 0 && len == 0 => None,
                OWN_OBJECT => {
                    return Err(bad("a chunk of its own object has a place in a pack".into()));
                }
                n => Some(Packed {
                    pack: *packs
                        .get(n as usize)
                        .ok_or_else(|| bad(format!("pack number {n} of {} packs", packs.len())))?,
                    offset,
                    len,
                }),
            });
        }
        if chunks.windows(2).any(|w| w[0] >= w[1]) || chunks.first().is_some_and(|c| c.is_zero()) {
            return Err(bad("chunk ids are not sorted and unique".into()));
        }
        let mut used = vec![false; packs.len()];
        for at in places.iter().flatten() {
            if let Ok(i) = packs.binary_search(&at.pack) {
                used[i] = true;
            }
        }
        if used.contains(&false) {
            return Err(bad("it lists a pack none of its chunks is in".into()));
        }
        if root.id.is_zero() || chunks.binary_search(&root.id).is_err() {
            return Err(bad("the root directory is not among its chunks".into()));
        }
        Ok(TreeIndex {
            root,
            files: u64_at(48),
            dirs: u64_at(56),
            bytes: u64_at(64),
            chunks,
            places,
        })
    }

    /// Where chunk `id` is: `Some(place)` when the tree references it (`place` is `None`
    /// for its own object), `None` when it does not.
    pub fn place(&self, id: &ChunkId) -> Option<Option<Packed>> {
        let i = self.chunks.binary_search(id).ok()?;
        Some(self.places.get(i).copied().flatten())
    }

    /// Every chunk with its place.
    pub fn refs(&self) -> impl Iterator<Item = ChunkRef> + '_ {
        self.chunks.iter().enumerate().map(|(i, id)| ChunkRef {
            id: *id,
            packed: self.places.get(i).copied().flatten(),
        })
    }

    /// The packs its chunks are in, sorted.
    pub fn packs(&self) -> Vec<PackId> {
        let mut p: Vec<PackId> = self.places.iter().flatten().map(|a| a.pack).collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &[u8], kind: NodeKind) -> Node {
        Node {
            name: Name(name.to_vec()),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: (1, 2),
            atime: (0, 0),
            ctime: (0, 0),
            ino: 7,
            nlink: 1,
            rdev: 0,
            chunks: Vec::new(),
            tree: None,
            target: None,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn directories_round_trip_any_name_and_refuse_bad_ones() {
        let mut f = node(b"caf\xe9", NodeKind::File);
        f.size = 5;
        f.chunks = vec![Piece {
            id: ChunkId([3; 32]),
            len: 5,
        }];
        f.xattrs = vec![(Name(b"user.k".to_vec()), Name(vec![0, 159, 1]))];
        let mut l = node(b"link", NodeKind::Symlink);
        l.target = Some(Name(b"../x".to_vec()));
        let d = Dir {
            kura_tree: DIR_VERSION,
            entries: vec![f, l],
            this: None,
        };
        let text = d.encode();
        assert!(String::from_utf8_lossy(&text).contains(r#""b64""#));
        assert_eq!(Dir::decode("t", &text).unwrap(), d);
        assert!(Dir::decode("t", &text).unwrap().get(b"link").is_some());

        for bad in [&b".."[..], b"a/b", b"", b"a\0"] {
            let mut d2 = d.clone();
            d2.entries[1].name = Name(bad.to_vec());
            d2.entries.sort_by(|a, b| a.name.cmp(&b.name));
            assert!(Dir::decode("t", &d2.encode()).is_err(), "{bad:?}");
        }
        let mut twice = d.clone();
        twice.entries[1] = twice.entries[0].clone();
        assert!(Dir::decode("t", &twice.encode()).is_err());
        let mut short = d.clone();
        short.entries[0].size = 6;
        assert!(
            Dir::decode("t", &short.encode())
                .unwrap_err()
                .to_string()
                .contains("not 6")
        );
        let newer = String::from_utf8(text)
            .unwrap()
            .replace(r#""kura_tree":1"#, r#""kura_tree":2"#);
        assert!(Dir::decode("t", newer.as_bytes()).is_err());
    }

    #[test]
    fn tree_indexes_round_trip_and_refuse_damage() {
        let root = Piece {
            id: ChunkId([2; 32]),
            len: 40,
        };
        let t = TreeIndex {
            root,
            files: 3,
            dirs: 1,
            bytes: 99,
            chunks: vec![ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([9; 32])],
            places: vec![
                Some(Packed {
                    pack: PackId([7; 32]),
                    offset: 10,
                    len: 20,
                }),
                None,
                Some(Packed {
                    pack: PackId([3; 32]),
                    offset: 0,
                    len: 5,
                }),
            ],
        };
        let b = t.encode();
        assert_eq!(t.packs(), vec![PackId([3; 32]), PackId([7; 32])]);
        assert_eq!(t.place(&ChunkId([2; 32])), Some(None));
        assert_eq!(t.place(&ChunkId([9; 32])).unwrap().unwrap().len, 5);
        assert_eq!(t.place(&ChunkId([4; 32])), None);
        assert_eq!(TreeIndex::decode("x", &b).unwrap(), t);
        for cut in 0..b.len() {
            assert!(TreeIndex::decode("x", &b[..cut]).is_err());
        }
        let mut unsorted = t.clone();
        unsorted.chunks.swap(0, 2);
        assert!(TreeIndex::decode("x", &unsorted.encode()).is_err());
        let mut rootless = t.clone();
        rootless.root.id = ChunkId([5; 32]);
        assert!(TreeIndex::decode("x", &rootless.encode()).is_err());
        // A pack number past the pack list.
        let mut far = b.clone();
        let first_entry = 80 + 2 * 32;
        far[first_entry + 32..first_entry + 36].copy_from_slice(&2u32.to_le_bytes());
        assert!(TreeIndex::decode("x", &far).is_err());

        // Version 1 (every chunk its own object) still reads.
        let mut v1 = b[..80].to_vec();
        v1[4] = 1;
        v1[44..48].copy_from_slice(&[0; 4]);
        for c in &t.chunks {
            v1.extend_from_slice(&c.0);
        }
        let old = TreeIndex::decode("x", &v1).unwrap();
        assert_eq!(old.chunks, t.chunks);
        assert!(old.places.iter().all(Option::is_none));
    }
}
