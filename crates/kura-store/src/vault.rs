use std::sync::Arc;

use kura_backend::Backend;
use serde::{Deserialize, Serialize};

use crate::blob::{BlobKind, Codec};
use crate::keys::{self, Cipher, KeySecret, Keys, WrappedKey};
use crate::pack::{ChunkRef, PackId, Packed};
use crate::{ChunkId, DiskIndex, Error, ItemRecord, Manifest, Result, TreeIndex};

/// Vault format version written by this build.
pub const FORMAT_VERSION: u32 = 1;
const CONFIG_KEY: &str = "config";
const FORMAT_NAME: &str = "kura-vault";
/// Accepted zstd levels (negative levels are zstd's fast modes).
pub const COMPRESSION_LEVELS: std::ops::RangeInclusive<i32> = -7..=19;
/// Smallest and largest accepted chunk sizes.
pub const CHUNK_SIZE_RANGE: (u32, u32) = (64 << 10, 64 << 20);

/// The vault's `config` object (plaintext JSON: it holds no secret in the clear).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaultConfig {
    /// Always `kura-vault`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Random id, also the associated data of the key wrap.
    pub vault_id: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Chunk size for disks, in bytes.
    pub chunk_size: u32,
    /// zstd level.
    pub compression_level: i32,
    /// Encryption, when on.
    pub encryption: Option<EncryptionConfig>,
    /// The chunk-id key in hex, only for vaults without encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_key: Option<String>,
}

/// Encryption settings and the wrapped master key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// Blob cipher.
    pub cipher: Cipher,
    /// The wrapped master key.
    pub key: WrappedKey,
}

/// Settings for a new vault.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    /// Chunk size for disks (64 KiB – 64 MiB, a multiple of 4 KiB). Default 4 MiB.
    pub chunk_size: u32,
    /// Blob cipher when encrypted. Default AES-256-GCM.
    pub cipher: Cipher,
    /// zstd level (-7 to 19). Default 1.
    pub compression_level: i32,
    /// Use cheap Argon2 parameters (tests only).
    pub fast_kdf: bool,
}

impl Default for VaultOptions {
    fn default() -> Self {
        VaultOptions {
            chunk_size: 4 << 20,
            cipher: Cipher::Aes256Gcm,
            compression_level: 1,
            fast_kdf: false,
        }
    }
}

impl VaultOptions {
    /// Defaults with small chunks and cheap key derivation, for tests and examples.
    pub fn for_tests() -> Self {
        VaultOptions {
            chunk_size: 64 << 10,
            fast_kdf: true,
            ..Default::default()
        }
    }
}

/// A vault opened with its key: typed access to its objects.
#[derive(Clone)]
pub struct Vault {
    backend: Arc<dyn Backend>,
    config: VaultConfig,
    keys: Arc<Keys>,
    /// The unwrapped master key of an encrypted vault (for recovery kits and re-wrapping).
    master: Option<zeroize::Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("backend", &self.backend)
            .field("vault_id", &self.config.vault_id)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Creates a vault on an empty backend.
    pub fn create(
        backend: Arc<dyn Backend>,
        opts: &VaultOptions,
        secret: &KeySecret,
    ) -> Result<Vault> {
        let (lo, hi) = CHUNK_SIZE_RANGE;
        if opts.chunk_size < lo || opts.chunk_size > hi || !opts.chunk_size.is_multiple_of(4096) {
            return Err(Error::Invalid {
                field: "chunk size",
                reason: format!(
                    "{} bytes; it must be a multiple of 4 KiB between 64 KiB and 64 MiB",
                    opts.chunk_size
                ),
            });
        }
        if !COMPRESSION_LEVELS.contains(&opts.compression_level) {
            return Err(Error::Invalid {
                field: "compression level",
                reason: format!(
                    "{}; zstd levels from {} (fastest) to {} (smallest) are accepted",
                    opts.compression_level,
                    COMPRESSION_LEVELS.start(),
                    COMPRESSION_LEVELS.end()
                ),
            });
        }
        if matches!(secret, KeySecret::MasterKey(_)) {
            return Err(Error::Invalid {
                field: "secret",
                reason: "a new vault needs a passphrase or a key file, not a recovery kit".into(),
            });
        }
        if backend.stat(CONFIG_KEY)?.is_some() {
            return Err(Error::AlreadyAVault {
                location: backend.location(),
            });
        }
        let vault_id = hex::encode(keys::random_bytes::<16>());
        let master = zeroize::Zeroizing::new(keys::random_bytes::<32>());
        let encryption = match keys::new_kek_spec(secret, opts.fast_kdf) {
            Some(spec) => Some(EncryptionConfig {
                cipher: opts.cipher,
                key: keys::wrap(&master, spec, secret, vault_id.as_bytes())?,
            }),
            None => None,
        };
        let keys = Keys::from_master(&master, encryption.is_some());
        let config = VaultConfig {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            vault_id,
            created: jiff::Timestamp::now().to_string(),
            chunk_size: opts.chunk_size,
            compression_level: opts.compression_level,
            id_key: encryption.is_none().then(|| hex::encode(*keys.id_key)),
            encryption,
        };
        // Validate the compression level before anything is written.
        Codec::new(
            Arc::new(Keys::from_master(&master, false)),
            None,
            config.compression_level,
        )?;
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        backend.put_new(CONFIG_KEY, json).map_err(|e| match e {
            kura_backend::Error::AlreadyExists { .. } => Error::AlreadyAVault {
                location: backend.location(),
            },
            e => e.into(),
        })?;
        backend.sync()?;
        let encrypted = config.encryption.is_some();
        Ok(Vault {
            backend,
            config,
            keys: Arc::new(keys),
            master: encrypted.then_some(master),
        })
    }

    /// Reads a vault's config without unlocking it.
    pub fn read_config(backend: &dyn Backend) -> Result<VaultConfig> {
        let location = backend.location();
        let raw = backend.get(CONFIG_KEY).map_err(|e| match e {
            kura_backend::Error::NotFound { .. } => Error::NotAVault {
                location: location.clone(),
                reason: "it has no vault config".into(),
            },
            e => e.into(),
        })?;
        let config: VaultConfig = serde_json::from_slice(&raw).map_err(|e| Error::NotAVault {
            location: location.clone(),
            reason: format!("its config is not valid: {e}"),
        })?;
        if config.format != FORMAT_NAME {
            return Err(Error::NotAVault {
                location,
                reason: format!("config format is {:?}", config.format),
            });
        }
        if config.version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: config.version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(config)
    }

    /// Opens a vault, unwrapping its key with `secret`.
    pub fn open(backend: Arc<dyn Backend>, secret: &KeySecret) -> Result<Vault> {
        let config = Self::read_config(backend.as_ref())?;
        let mut kept = None;
        let keys = match (&config.encryption, &config.id_key) {
            (Some(enc), _) => {
                let master = match secret {
                    KeySecret::MasterKey(m) => m.clone(),
                    _ => keys::unwrap(&enc.key, secret, config.vault_id.as_bytes())?,
                };
                let k = Keys::from_master(&master, true);
                kept = Some(master);
                k
            }
            (None, Some(id_key)) => {
                let mut k = zeroize::Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(id_key, k.as_mut())
                    .map_err(|e| Error::corrupt("vault config", format!("id key: {e}")))?;
                Keys {
                    id_key: k,
                    blob_key: None,
                }
            }
            (None, None) => return Err(Error::corrupt("vault config", "no key material")),
        };
        let vault = Vault {
            backend,
            config,
            keys: Arc::new(keys),
            master: kept,
        };
        if matches!(secret, KeySecret::MasterKey(_)) {
            vault.check_master_key()?;
        }
        Ok(vault)
    }

    /// Proves a master key given directly (from a recovery kit) by decoding one sealed
    /// object of the vault: an item record, else a manifest. [`Error::WrongKey`] when it does
    /// not open; an error when the vault holds nothing sealed to check it against.
    fn check_master_key(&self) -> Result<()> {
        let mut keys = self.backend.list("items/")?;
        keys.extend(
            self.backend
                .list("rps/")?
                .into_iter()
                .filter(|k| k.ends_with("/manifest")),
        );
        let Some(key) = keys.first() else {
            return Err(Error::Invalid {
                field: "recovery kit",
                reason: "the vault holds no item or recovery point to check the kit's key against"
                    .into(),
            });
        };
        let kind = if key.starts_with("items/") {
            BlobKind::Item
        } else {
            BlobKind::Manifest
        };
        match self.get_object(key, kind, key) {
            Ok(_) => Ok(()),
            Err(Error::Corrupt { .. }) | Err(Error::WrongKey) => Err(Error::WrongKey),
            Err(e) => Err(e),
        }
    }

    /// The unwrapped master key of an encrypted vault (`None` without encryption). Only for
    /// writing a recovery kit and re-wrapping; never stored by kura in the clear unasked.
    pub fn master_key(&self) -> Option<&zeroize::Zeroizing<[u8; 32]>> {
        self.master.as_ref()
    }

    /// Wraps the master key under a new passphrase or key file and rewrites the config;
    /// nothing else in the vault changes (every blob is sealed under subkeys of the master).
    pub fn rewrap(&mut self, secret: &KeySecret, fast_kdf: bool) -> Result<()> {
        let (Some(master), Some(enc)) = (&self.master, &self.config.encryption) else {
            return Err(Error::Invalid {
                field: "secret",
                reason: "the vault is not encrypted; it has no key to re-wrap".into(),
            });
        };
        let spec = keys::new_kek_spec(secret, fast_kdf).ok_or_else(|| Error::Invalid {
            field: "secret",
            reason: "give a new passphrase or key file".into(),
        })?;
        let key = keys::wrap(master, spec, secret, self.config.vault_id.as_bytes())?;
        let mut config = self.config.clone();
        config.encryption = Some(EncryptionConfig {
            cipher: enc.cipher,
            key,
        });
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        self.backend.put(CONFIG_KEY, json)?;
        self.backend.sync()?;
        self.config = config;
        Ok(())
    }

    /// The config.
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The wrapped key, for escrow; `None` for an unencrypted vault.
    pub fn wrapped_key(&self) -> Option<&WrappedKey> {
        self.config.encryption.as_ref().map(|e| &e.key)
    }

    /// A new codec (one per worker thread).
    pub fn codec(&self) -> Codec {
        Codec::new(
            self.keys.clone(),
            self.config.encryption.as_ref().map(|e| e.cipher),
            self.config.compression_level,
        )
        .expect("the compression level was validated at creation")
    }

    /// Keyed BLAKE3 of `data`.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.keys.id_key, data).as_bytes())
    }

    /// Stores an encoded chunk.
    pub fn put_chunk(&self, id: &ChunkId, stored: Vec<u8>) -> Result<()> {
        Ok(self.backend.put(&id.key(), stored)?)
    }

    /// Whether an intact copy of a chunk is stored: it exists and its stored bytes pass the
    /// keyless check. A damaged copy counts as absent, so the next backup that meets the
    /// chunk writes it again and repairs every recovery point that uses it.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        if self.backend.stat(&id.key())?.is_none() {
            return Ok(false);
        }
        match self.backend.get(&id.key()) {
            Ok(stored) => Ok(crate::blob::check_stored("chunk", &stored).is_ok()),
            Err(kura_backend::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a chunk's object exists, when the backend can tell cheaply (a local
    /// filesystem); `None` when asking would cost a request per chunk (object storage).
    pub fn chunk_exists_cheaply(&self, id: &ChunkId) -> Result<Option<bool>> {
        if !self.backend.cheap_stat() {
            return Ok(None);
        }
        Ok(Some(self.backend.stat(&id.key())?.is_some()))
    }

    /// The vault's list of bad chunks, as the last `verify` left it (empty when none ran).
    pub fn bad_chunks(&self) -> Result<BadChunks> {
        match self.get_object(BAD_CHUNKS, BlobKind::Health, "bad-chunk list") {
            Ok(plain) => serde_json::from_slice(&plain)
                .map_err(|e| Error::corrupt("bad-chunk list", e.to_string())),
            Err(Error::Missing { .. }) => Ok(BadChunks::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the bad-chunk list (written by `verify` only).
    pub fn put_bad_chunks(&self, list: &BadChunks) -> Result<()> {
        let json = serde_json::to_vec(list).expect("serializes");
        self.put_object(BAD_CHUNKS, BlobKind::Health, &json, false)?;
        self.backend.sync()?;
        Ok(())
    }

    /// Records chunks a backup wrote again because they were bad or missing. One object per
    /// recovery point, so backups never rewrite each other's records.
    pub fn put_healed(&self, healed: &Healed) -> Result<()> {
        let json = serde_json::to_vec(healed).expect("serializes");
        let key = format!("{HEALED}{}", healed.rp_id);
        self.put_object(&key, BlobKind::Health, &json, false)?;
        self.backend.sync()?;
        Ok(())
    }

    /// Every healed-chunk record not yet consumed by a `verify`, with its key.
    pub fn list_healed(&self) -> Result<Vec<(String, Healed)>> {
        let mut out = Vec::new();
        for key in self.backend.list(HEALED)? {
            let object = format!("healed-chunk record {key}");
            let plain = self.get_object(&key, BlobKind::Health, &object)?;
            let h = serde_json::from_slice(&plain)
                .map_err(|e| Error::corrupt(object, e.to_string()))?;
            out.push((key, h));
        }
        Ok(out)
    }

    /// Removes a healed-chunk record that `verify` has reported.
    pub fn delete_healed(&self, key: &str) -> Result<()> {
        self.backend.delete(key)?;
        Ok(())
    }

    /// The stored bytes of a chunk; [`Error::Missing`] when absent.
    pub fn get_chunk_stored(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.backend.get(&id.key()).map_err(|e| match e {
            kura_backend::Error::NotFound { .. } => Error::Missing {
                object: format!("chunk {id}"),
            },
            e => e.into(),
        })
    }

    /// Fetches, checks and decodes a chunk.
    pub fn get_chunk(&self, id: &ChunkId, codec: &mut Codec) -> Result<Vec<u8>> {
        let stored = self.get_chunk_stored(id)?;
        codec.decode_chunk(id, stored)
    }

    fn put_object(&self, key: &str, kind: BlobKind, plain: &[u8], new: bool) -> Result<()> {
        let stored = self.codec().encode(kind, key.as_bytes(), plain)?;
        if new {
            self.backend.put_new(key, stored)?;
        } else {
            self.backend.put(key, stored)?;
        }
        Ok(())
    }

    fn get_object(&self, key: &str, kind: BlobKind, object: &str) -> Result<Vec<u8>> {
        let stored = self.backend.get(key).map_err(|e| match e {
            kura_backend::Error::NotFound { .. } => Error::Missing {
                object: object.to_string(),
            },
            e => e.into(),
        })?;
        self.codec().decode(kind, key.as_bytes(), object, stored)
    }

    /// Stores a disk index of a recovery point; returns its key.
    pub fn put_index(&self, rp_id: &str, disk: &str, index: &DiskIndex) -> Result<String> {
        let key = format!("rps/{rp_id}/{disk}.index");
        self.put_object(&key, BlobKind::Index, &index.encode(), false)?;
        Ok(key)
    }

    /// Reads and validates a disk index.
    pub fn get_index(&self, key: &str) -> Result<DiskIndex> {
        let object = format!("index {key}");
        let plain = self.get_object(key, BlobKind::Index, &object)?;
        let index = DiskIndex::decode(&object, &plain)?;
        if index.chunk_size != self.config.chunk_size {
            return Err(Error::corrupt(
                object,
                "chunk size differs from the vault's",
            ));
        }
        Ok(index)
    }

    /// Stores the tree index of a recovery point's tree; returns its key.
    pub fn put_tree_index(&self, rp_id: &str, tree: &str, index: &TreeIndex) -> Result<String> {
        let key = format!("rps/{rp_id}/{tree}.tree");
        self.put_object(&key, BlobKind::Index, &index.encode(), false)?;
        Ok(key)
    }

    /// Reads and validates a tree index.
    pub fn get_tree_index(&self, key: &str) -> Result<TreeIndex> {
        let object = format!("tree index {key}");
        let plain = self.get_object(key, BlobKind::Index, &object)?;
        TreeIndex::decode(&object, &plain)
    }

    /// Reads a directory of a file tree (a chunk holding a [`Dir`]), found through the
    /// tree's index.
    pub fn get_dir(
        &self,
        index: &TreeIndex,
        piece: &crate::Piece,
        codec: &mut Codec,
    ) -> Result<crate::Dir> {
        let plain = self.get_tree_chunk(index, &piece.id, codec)?;
        crate::Dir::decode(&format!("directory {}", piece.id.short()), &plain)
    }

    /// Fetches, checks and decodes a chunk of a file tree, from its pack when the tree's
    /// index places it in one.
    pub fn get_tree_chunk(
        &self,
        index: &TreeIndex,
        id: &ChunkId,
        codec: &mut Codec,
    ) -> Result<Vec<u8>> {
        match index.place(id) {
            Some(packed) => self.get_ref(&ChunkRef { id: *id, packed }, codec),
            None => Err(Error::corrupt(
                format!("chunk {id}"),
                "its tree's index does not list it",
            )),
        }
    }

    /// Fetches, checks and decodes a chunk wherever `r` says it is. A packed chunk whose
    /// copy there is damaged or missing is read from its own object when a later backup
    /// wrote one to heal it ([`Vault::get_packed_or_healed`]).
    pub fn get_ref(&self, r: &ChunkRef, codec: &mut Codec) -> Result<Vec<u8>> {
        match &r.packed {
            Some(at) => {
                let packed = self.get_packed(&r.id, at, codec);
                self.get_packed_or_healed(&r.id, packed, codec)
            }
            None => self.get_chunk(&r.id, codec),
        }
    }

    /// The outcome of reading a packed chunk, or, when its packed copy is damaged or
    /// missing, the copy a later backup wrote as the chunk's own object to heal it (packs
    /// are never rewritten, so that is how one backup repairs every point using the chunk).
    /// Without such a copy, the packed copy's error.
    pub fn get_packed_or_healed(
        &self,
        id: &ChunkId,
        packed: Result<Vec<u8>>,
        codec: &mut Codec,
    ) -> Result<Vec<u8>> {
        match packed {
            Err(e @ (Error::Corrupt { .. } | Error::Missing { .. })) => {
                match self.get_chunk(id, codec) {
                    Err(Error::Missing { .. }) => Err(e),
                    healed => healed,
                }
            }
            other => other,
        }
    }

    /// Fetches, checks and decodes a chunk's blob from its pack (one ranged read).
    pub fn get_packed(&self, id: &ChunkId, at: &Packed, codec: &mut Codec) -> Result<Vec<u8>> {
        let stored = self
            .get_pack_range(&at.pack, at.range())
            .map_err(|e| match e {
                Error::Missing { .. } => Error::Missing {
                    object: format!("chunk {id} (pack {} is missing)", at.pack),
                },
                Error::Corrupt { reason, .. } => Error::corrupt(format!("chunk {id}"), reason),
                e => e,
            })?;
        codec.decode_chunk(id, stored)
    }

    /// The stored bytes `range` of a pack (one ranged read): [`Error::Missing`] when the
    /// pack is absent, [`Error::Corrupt`] when it is shorter than `range`.
    pub fn get_pack_range(&self, pack: &PackId, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        self.backend
            .get_range(&pack.key(), range)
            .map_err(|e| match e {
                kura_backend::Error::NotFound { .. } => Error::Missing {
                    object: format!("pack {pack}"),
                },
                kura_backend::Error::InvalidRange { .. } => Error::corrupt(
                    format!("pack {pack}"),
                    format!("pack {pack} is shorter than its index says"),
                ),
                e => e.into(),
            })
    }

    /// Stores a finished pack ([`crate::pack::PackBuilder::finish`]).
    pub fn put_pack(&self, id: &PackId, stored: Vec<u8>) -> Result<()> {
        Ok(self.backend.put(&id.key(), stored)?)
    }

    /// The stored bytes of a whole pack; [`Error::Missing`] when absent.
    pub fn get_pack(&self, id: &PackId) -> Result<Vec<u8>> {
        self.backend.get(&id.key()).map_err(|e| match e {
            kura_backend::Error::NotFound { .. } => Error::Missing {
                object: format!("pack {id}"),
            },
            e => e.into(),
        })
    }

    /// Whether a pack exists, when the backend can tell cheaply (see
    /// [`Vault::chunk_exists_cheaply`]).
    pub fn pack_exists_cheaply(&self, id: &PackId) -> Result<Option<bool>> {
        if !self.backend.cheap_stat() {
            return Ok(None);
        }
        Ok(Some(self.backend.stat(&id.key())?.is_some()))
    }

    /// Every pack stored in the vault with its stored size (one listing).
    pub fn list_pack_sizes(&self) -> Result<Vec<(PackId, u64)>> {
        Ok(self
            .backend
            .list_sizes("packs/")?
            .into_iter()
            .filter_map(|(k, size)| Some((PackId::from_key(&k)?, size)))
            .collect())
    }

    /// Every chunk a recovery point references (its disks' and trees'), without the zero
    /// chunk, with where it is stored: one list per index, named by its key, each read on
    /// its own (one damaged index does not hide the others).
    pub fn point_chunks(&self, m: &Manifest) -> Vec<(String, Result<Vec<ChunkRef>>)> {
        let disks = m.disks.iter().map(|d| {
            let chunks = self.get_index(&d.index).and_then(|idx| {
                if idx.size != d.size {
                    return Err(Error::corrupt(
                        format!("index {}", d.index),
                        "its disk size differs from the manifest's",
                    ));
                }
                Ok(idx
                    .chunks
                    .into_iter()
                    .filter(|c| !c.is_zero())
                    .map(|id| ChunkRef { id, packed: None })
                    .collect())
            });
            (d.index.clone(), chunks)
        });
        let trees = m.trees.iter().map(|t| {
            let chunks = self
                .get_tree_index(&t.index)
                .map(|i| i.refs().collect::<Vec<_>>());
            (t.index.clone(), chunks)
        });
        disks.chain(trees).collect()
    }

    /// Publishes a recovery point: call after its chunks and indexes are synced. Syncs again,
    /// so the manifest is durable when this returns.
    pub fn put_manifest(&self, m: &Manifest) -> Result<()> {
        self.put_object(
            &format!("rps/{}/manifest", m.rp_id),
            BlobKind::Manifest,
            &m.encode(),
            true,
        )?;
        self.backend.sync()?;
        Ok(())
    }

    /// Removes a recovery point: its manifest first (after which it no longer exists), then
    /// its indexes. Its chunks are left for garbage collection.
    pub fn delete_rp(&self, rp_id: &str) -> Result<()> {
        let dir = format!("rps/{rp_id}/");
        self.backend.delete(&format!("{dir}manifest"))?;
        self.backend.sync()?;
        for key in self.backend.list(&dir)? {
            self.backend.delete(&key)?;
        }
        self.backend.sync()?;
        Ok(())
    }

    /// Reads a manifest.
    pub fn get_manifest(&self, rp_id: &str) -> Result<Manifest> {
        let object = format!("manifest of recovery point {rp_id}");
        let plain = self.get_object(
            &format!("rps/{rp_id}/manifest"),
            BlobKind::Manifest,
            &object,
        )?;
        let m = Manifest::decode(&object, &plain)?;
        if m.rp_id != rp_id || m.vault_id != self.config.vault_id {
            return Err(Error::corrupt(
                object,
                "it describes another recovery point or vault",
            ));
        }
        Ok(m)
    }

    /// Ids of every published recovery point (those with a manifest), oldest first.
    pub fn list_rp_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .backend
            .list("rps/")?
            .into_iter()
            .filter_map(|k| {
                k.strip_prefix("rps/")?
                    .strip_suffix("/manifest")
                    .map(str::to_string)
            })
            .collect())
    }

    /// Records a protected item in the vault.
    pub fn put_item(&self, item: &ItemRecord) -> Result<()> {
        let json = serde_json::to_vec(item).expect("item serializes");
        self.put_object(&format!("items/{}", item.id), BlobKind::Item, &json, false)?;
        self.backend.sync()?;
        Ok(())
    }

    /// Removes an item's record.
    pub fn delete_item(&self, item_id: &str) -> Result<()> {
        self.backend.delete(&format!("items/{item_id}"))?;
        self.backend.sync()?;
        Ok(())
    }

    /// Every item recorded in the vault.
    pub fn list_items(&self) -> Result<Vec<ItemRecord>> {
        let mut out = Vec::new();
        for key in self.backend.list("items/")? {
            let object = format!("item record {key}");
            let plain = self.get_object(&key, BlobKind::Item, &object)?;
            out.push(
                serde_json::from_slice(&plain)
                    .map_err(|e| Error::corrupt(object, e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Ids of every chunk stored in the vault.
    pub fn list_chunks(&self) -> Result<Vec<ChunkId>> {
        Ok(self
            .list_chunk_sizes()?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Every chunk stored in the vault with its stored size (one listing: no request per
    /// chunk on object storage).
    pub fn list_chunk_sizes(&self) -> Result<Vec<(ChunkId, u64)>> {
        self.backend
            .list_sizes("chunks/")?
            .into_iter()
            .filter_map(|(k, size)| Some((k.rsplit('/').next()?.to_string(), size)))
            .map(|(hex, size)| ChunkId::from_hex(&hex).map(|id| (id, size)))
            .collect()
    }

    /// Makes every completed write durable.
    pub fn sync(&self) -> Result<()> {
        Ok(self.backend.sync()?)
    }
}

const BAD_CHUNKS: &str = "health/bad-chunks";
const HEALED: &str = "health/healed/";

/// The chunks `verify` found missing or corrupt, kept in the vault so that every later
/// backup writes them again instead of reusing them, whichever home it runs from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BadChunks {
    /// When a verify last wrote the list (RFC 3339).
    #[serde(default)]
    pub verified_at: Option<String>,
    /// Chunk id (hex) → what is wrong with it.
    #[serde(default)]
    pub chunks: std::collections::BTreeMap<String, BadChunk>,
}

/// One bad chunk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BadChunk {
    /// `missing` or `corrupt`.
    pub problem: String,
    /// When verify first found it (RFC 3339).
    pub found: String,
}

/// Chunks one backup wrote again (they were on the bad list, or missing when reused).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Healed {
    /// The recovery point whose backup healed them.
    pub rp_id: String,
    /// When (RFC 3339).
    pub time: String,
    /// Chunk ids (hex).
    pub chunks: Vec<String>,
}
