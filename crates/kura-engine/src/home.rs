use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kura_backend::{Backend, FsBackend, Location, StorageEnv};
use kura_catalog::{Catalog, ItemRow, JobOperation, JobStatus, RpRow, VaultRow};
use kura_store::{Cipher, ItemRecord, KeySecret, Vault, VaultOptions};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::{Error, ErrorKind, Progress, Result, new_id};

const CATALOG_FILE: &str = "catalog.db";

/// The secrets a command was given to unlock vaults.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// A passphrase (from `--passphrase-file` or `KURA_PASSPHRASE`).
    pub passphrase: Option<Zeroizing<String>>,
    /// A key file path (`--key-file`).
    pub key_file: Option<PathBuf>,
    /// Passphrases of particular vaults, by vault name (`--vault-passphrase-file NAME=FILE`):
    /// one process can hold the secrets of several vaults.
    pub vault_passphrases: std::collections::BTreeMap<String, Zeroizing<String>>,
    /// A recovery kit (`vault attach --recovery-kit`).
    pub recovery_kit: Option<PathBuf>,
    /// The passphrase that seals a recovery kit (else `passphrase` is used).
    pub kit_passphrase: Option<Zeroizing<String>>,
}

impl Secrets {
    fn key_file_secret(path: &Path) -> Result<KeySecret> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(format!("cannot read key file {}", path.display()), e))?;
        Ok(KeySecret::KeyFile(Zeroizing::new(bytes)))
    }
}

/// Settings for `vault create`.
#[derive(Debug, Clone, Default)]
pub struct CreateVault {
    /// Where the vault's objects go (a directory, `s3://...`, `azblob://...`); default the
    /// directory `HOME/vaults/NAME`.
    pub location: Option<Location>,
    /// A second location: every write also goes there (zone), or replication jobs copy
    /// to it (geo).
    pub replica: Option<Location>,
    /// With `replica`: geo redundancy (an asynchronous replica) rather than zone.
    pub geo: bool,
    /// Chunk size; default 4 MiB.
    pub chunk_size: Option<u32>,
    /// Turn encryption off.
    pub no_encryption: bool,
    /// Cipher; default AES-256-GCM.
    pub cipher: Option<Cipher>,
    /// zstd level; default 1.
    pub compression_level: Option<i32>,
    /// Cheap key derivation (tests).
    pub fast_kdf: bool,
}

/// A vault as shown to users.
#[derive(Debug, Clone, Serialize)]
pub struct VaultInfo {
    /// Catalog row.
    #[serde(flatten)]
    pub row: VaultRow,
    /// Number of items.
    pub items: usize,
    /// Soft delete: `enabled`, `disabled` or `always-on`.
    pub soft_delete: String,
    /// Days soft-deleted data is kept.
    pub soft_delete_days: u32,
    /// When a recovery kit was last exported (`None`: never; then losing the home's keys
    /// means losing the backups).
    pub kit_exported: Option<String>,
    /// A note for the user (e.g. where a generated key file went).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A geo-redundant vault's replication lag.
    pub replication: Option<crate::ReplicationLag>,
}

/// A vault's wrapped data key as written for escrow (`vault key export`, the API).
#[derive(Debug, Clone, Serialize)]
pub struct WrappedKeyDocument {
    /// Document version (1).
    pub kura_wrapped_key: u32,
    /// The vault's id.
    pub vault_id: String,
    /// Its name here.
    pub vault_name: String,
    /// Blob cipher.
    pub cipher: String,
    /// The data key wrapped by the passphrase or key file.
    pub key: kura_store::WrappedKey,
    /// What this is.
    pub note: &'static str,
}

/// What `vault attach` found.
#[derive(Debug, Clone, Serialize)]
pub struct AttachReport {
    /// The vault.
    pub vault: VaultRow,
    /// Items registered.
    pub items: Vec<String>,
    /// Recovery points registered.
    pub recovery_points: usize,
    /// Problems met (e.g. an unreadable manifest), each naming the object.
    pub warnings: Vec<String>,
}

/// A kura home: catalog, generated key files and default vault storage.
#[derive(Debug)]
pub struct Home {
    root: PathBuf,
    pub(crate) catalog: Arc<Catalog>,
    clock: Arc<dyn crate::scheduler::Clock>,
    zone: jiff::tz::TimeZone,
    /// The spread window (seconds) of the last scheduler run in this process, for the next
    /// backup times item status shows; the scheduler's default until one runs.
    spread_secs: std::sync::atomic::AtomicI64,
    /// Object stores' settings and credentials, from this process's environment.
    storage_env: StorageEnv,
}

impl std::fmt::Debug for dyn crate::scheduler::Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

impl Home {
    /// Opens (creating if needed) the home at `root`. Jobs left `InProgress` by a process that
    /// died are marked failed.
    pub fn open(root: &Path) -> Result<Home> {
        Self::open_with(
            root,
            Arc::new(crate::scheduler::SystemClock),
            jiff::tz::TimeZone::system(),
        )
    }

    /// Like [`Home::open`], with the clock that stamps new items and on-demand backups and
    /// the time zone dates typed by users (`--retain-until`) are read in. Tests pass fixed
    /// instants and zones here.
    pub fn open_with(
        root: &Path,
        clock: Arc<dyn crate::scheduler::Clock>,
        zone: jiff::tz::TimeZone,
    ) -> Result<Home> {
        // The home holds the catalog and generated keys: only its owner may enter.
        if !root.exists() {
            create_private_dir(root)?;
        }
        let root = root
            .canonicalize()
            .map_err(|e| Error::io(format!("home {}", root.display()), e))?;
        let catalog = Catalog::open(&root.join(CATALOG_FILE))?;
        private_file(&root.join(CATALOG_FILE))?;
        catalog.fail_orphaned_jobs()?;
        let home = Home {
            root,
            catalog: Arc::new(catalog),
            clock,
            zone,
            spread_secs: std::sync::atomic::AtomicI64::new(
                crate::SchedulerOptions::default().spread.as_secs(),
            ),
            storage_env: StorageEnv::from_process(),
        };
        for v in home.catalog.list_vaults()? {
            home.ensure_default_policy(&v.id)?;
        }
        Ok(home)
    }

    /// The current time, from the home's clock.
    pub fn now(&self) -> jiff::Timestamp {
        self.clock.now()
    }

    /// The spread window the scheduler places item backups in (see
    /// [`crate::scheduler::spread_offset`]).
    pub fn schedule_spread(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::from_secs(self.spread_secs.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Sets the spread window; every scheduler run sets it from its options.
    pub fn set_schedule_spread(&self, spread: jiff::SignedDuration) {
        self.spread_secs
            .store(spread.as_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The zone user-given dates are read in (the system's local zone by default).
    pub fn zone(&self) -> &jiff::tz::TimeZone {
        &self.zone
    }

    /// The home directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    // ---- vaults

    /// Creates a vault. With no passphrase and no key file (and encryption on), a key file is
    /// generated in `HOME/keys/NAME.key` and the returned note says so.
    pub fn create_vault(
        &self,
        name: &str,
        opts: &CreateVault,
        secrets: &Secrets,
    ) -> Result<VaultInfo> {
        check_vault_name(name)?;
        if self.catalog.vault(name).is_ok() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("vault {name:?} already exists"),
            ));
        }
        let location = match &opts.location {
            Some(Location::Fs(p)) => Location::Fs(absolute(p)?),
            Some(remote) => remote.clone(),
            None => Location::Fs(self.root.join("vaults").join(name)),
        };
        let replica = match &opts.replica {
            Some(Location::Fs(p)) => Some(Location::Fs(absolute(p)?)),
            other => other.clone(),
        };
        if replica.as_ref() == Some(&location) {
            return Err(Error::new(
                ErrorKind::Invalid,
                "replica: a redundant vault needs a second location, not the same one",
            ));
        }
        // Both locations are checked (an object store opened and found empty) before
        // anything is decided or made.
        let remote = self.check_new_location(&location)?;
        let remote_replica = match &replica {
            Some(r) => Some(self.check_new_location(r)?),
            None => None,
        };
        let mut note = None;
        let mut generated_key = None;
        let (secret, encryption, key_file) = if opts.no_encryption {
            if secrets.passphrase.is_some() || secrets.key_file.is_some() {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    "--no-encryption cannot be combined with a passphrase or key file",
                ));
            }
            (KeySecret::None, "none", None)
        } else if let Some(p) = &secrets.passphrase {
            if p.is_empty() {
                return Err(Error::new(ErrorKind::Invalid, "the passphrase is empty"));
            }
            (KeySecret::Passphrase(p.clone()), "passphrase", None)
        } else if let Some(kf) = &secrets.key_file {
            let kf = absolute(kf)?;
            (Secrets::key_file_secret(&kf)?, "key-file", Some(kf))
        } else {
            let kf = self.root.join("keys").join(format!("{name}.key"));
            if kf.exists() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "key file {} already exists; move it away or pass --key-file",
                        kf.display()
                    ),
                ));
            }
            let contents = kura_store::keys::generate_key_file();
            note = Some(format!(
                "generated key file {}; it lies on this machine's disk: export a recovery kit now and keep it elsewhere (`kura vault key export {name} --to FILE --kit-passphrase-file PASSFILE`), or a lost disk means unreadable backups",
                kf.display()
            ));
            generated_key = Some((kf.clone(), contents.clone()));
            (KeySecret::KeyFile(contents), "key-file", Some(kf))
        };
        let mut vopts = VaultOptions {
            fast_kdf: opts.fast_kdf,
            ..VaultOptions::default()
        };
        if let Some(cs) = opts.chunk_size {
            vopts.chunk_size = cs;
        }
        if let Some(c) = opts.cipher {
            vopts.cipher = c;
        }
        if let Some(l) = opts.compression_level {
            vopts.compression_level = l;
        }
        // Directories this call makes, removed again if it fails.
        let made: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
        let cleanup = |e: Error| {
            for d in made.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let _ = std::fs::remove_dir_all(d);
            }
            e
        };
        let storage = |location: &Location, remote: Option<Arc<dyn Backend>>| {
            let Some(dir) = location.as_path() else {
                return Ok(remote.expect("a remote location was opened"));
            };
            let (backend, created) = open_new_vault_dir(dir)?;
            if created {
                made.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(dir.to_path_buf());
            }
            Ok::<_, Error>(backend)
        };
        let mut backend = storage(&location, remote).map_err(cleanup)?;
        if let (Some(r), Some(remote)) = (&replica, remote_replica) {
            let second = storage(r, remote).map_err(cleanup)?;
            // A geo replica gets its objects from replication jobs, the first one below.
            if !opts.geo {
                backend = Arc::new(kura_backend::MirrorBackend::new(backend, second));
            }
        }
        let vault = Vault::create(backend, &vopts, &secret).map_err(|e| cleanup(e.into()))?;
        if let Some((kf, contents)) = generated_key {
            write_private(&kf, &contents).map_err(cleanup)?;
        }
        let row = VaultRow {
            id: vault.config().vault_id.clone(),
            name: name.to_string(),
            path: location.to_string(),
            chunk_size: vault.config().chunk_size,
            encryption: encryption.into(),
            cipher: vault
                .config()
                .encryption
                .as_ref()
                .map(|e| e.cipher.name().to_string()),
            key_file: key_file.map(|k| k.display().to_string()),
            created: vault.config().created.clone(),
            redundancy: match (&replica, opts.geo) {
                (None, _) => "local",
                (Some(_), false) => "zone",
                (Some(_), true) => "geo",
            }
            .into(),
            replica: replica.as_ref().map(Location::to_string),
        };
        self.catalog.insert_vault(&row)?;
        self.ensure_default_policy(&row.id)?;
        // The replica is a whole vault from the start (its config and policies).
        self.replicate_after(&row, &crate::NoProgress);
        Ok(VaultInfo {
            note,
            ..self.vault_info_of(row, 0)?
        })
    }

    fn vault_info_of(&self, row: VaultRow, items: usize) -> Result<VaultInfo> {
        let (soft_delete, soft_delete_days) = self.catalog.soft_delete(&row.id)?;
        let kit_exported = self.catalog.kit_exported(&row.id)?;
        let replication = self.replication_lag(&row)?;
        Ok(VaultInfo {
            replication,
            row,
            items,
            soft_delete,
            soft_delete_days,
            kit_exported,
            note: None,
        })
    }

    /// A vault's catalog row and item count.
    pub fn vault_info(&self, name: &str) -> Result<VaultInfo> {
        let row = self.catalog.vault(name)?;
        let items = self.catalog.list_items(Some(&row.id))?.len();
        self.vault_info_of(row, items)
    }

    /// Every vault.
    pub fn list_vaults(&self) -> Result<Vec<VaultInfo>> {
        self.catalog
            .list_vaults()?
            .into_iter()
            .map(|row| {
                let items = self.catalog.list_items(Some(&row.id))?.len();
                self.vault_info_of(row, items)
            })
            .collect()
    }

    pub(crate) fn secret_for(&self, row: &VaultRow, secrets: &Secrets) -> Result<KeySecret> {
        Ok(match row.encryption.as_str() {
            "none" => KeySecret::None,
            // Attached from a recovery kit: the master key itself, kept in the home.
            "master-key" => {
                let path = row.key_file.as_deref().unwrap_or_default();
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Error::io(
                        format!("vault {:?}: cannot read its key {path}", row.name),
                        e,
                    )
                })?);
                let mut m = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(text.trim(), m.as_mut()).map_err(|e| {
                    Error::new(
                        ErrorKind::Key,
                        format!("vault {:?}: key {path}: {e}", row.name),
                    )
                })?;
                KeySecret::MasterKey(m)
            }
            "passphrase" => match secrets
                .vault_passphrases
                .get(&row.name)
                .or(secrets.passphrase.as_ref())
            {
                Some(p) => KeySecret::Passphrase(p.clone()),
                None => {
                    return Err(Error::new(
                        ErrorKind::Key,
                        format!(
                            "vault {:?} is encrypted with a passphrase: pass --passphrase-file FILE or set KURA_PASSPHRASE",
                            row.name
                        ),
                    ));
                }
            },
            _ => match (&secrets.key_file, &row.key_file) {
                (Some(p), _) => Secrets::key_file_secret(p)?,
                (None, Some(p)) => Secrets::key_file_secret(Path::new(p))?,
                (None, None) => {
                    return Err(Error::new(
                        ErrorKind::Key,
                        format!(
                            "vault {:?} is encrypted with a key file: pass --key-file FILE",
                            row.name
                        ),
                    ));
                }
            },
        })
    }

    /// Opens a vault by catalog row.
    pub(crate) fn open_vault_row(&self, row: &VaultRow, secrets: &Secrets) -> Result<Vault> {
        let missing = || {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "vault {:?}: its storage {} is missing or is not a vault",
                    row.name, row.path
                ),
            )
        };
        let backend = match location_of(row)? {
            Location::Fs(dir) if !dir.join("config").exists() => return Err(missing()),
            Location::Fs(_) => self.backend_of(row)?,
            _ => {
                let backend = self.backend_of(row)?;
                if backend.stat("config")?.is_none() {
                    return Err(missing());
                }
                backend
            }
        };
        self.open_vault_on(row, backend, secrets)
    }

    /// Opens a vault's storage `backend` (its location, or its replica's) with its secret,
    /// and checks it holds that vault.
    pub(crate) fn open_vault_on(
        &self,
        row: &VaultRow,
        backend: Arc<dyn Backend>,
        secrets: &Secrets,
    ) -> Result<Vault> {
        let vault = Vault::open(backend, &self.secret_for(row, secrets)?).map_err(|e| match e {
            kura_store::Error::WrongKey => Error::new(
                ErrorKind::Key,
                format!("vault {:?}: wrong passphrase or key file", row.name),
            ),
            e => e.into(),
        })?;
        if vault.config().vault_id != row.id {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "vault {:?}: {} now holds a different vault",
                    row.name, row.path
                ),
            ));
        }
        Ok(vault)
    }

    /// A location's backend, with this process's object-store settings.
    pub(crate) fn open_location(&self, location: &Location) -> Result<Arc<dyn Backend>> {
        #[cfg(feature = "test-hooks")]
        let backend = match crate::hooks::storage_faults() {
            Some(faults) => location.open_with_faults(&self.storage_env, faults)?,
            None => location.open(&self.storage_env)?,
        };
        #[cfg(not(feature = "test-hooks"))]
        let backend = location.open(&self.storage_env)?;
        job_storage(&backend);
        Ok(backend)
    }

    /// The backend of a vault's storage: both copies of a zone-redundant vault.
    pub(crate) fn backend_of(&self, row: &VaultRow) -> Result<Arc<dyn Backend>> {
        let first = self.open_location(&location_of(row)?)?;
        match &row.replica {
            Some(r) if row.redundancy == "zone" => {
                let r = Location::parse(r).map_err(|e| {
                    Error::new(
                        ErrorKind::Invalid,
                        format!("vault {:?} replica: {e}", row.name),
                    )
                })?;
                Ok(Arc::new(kura_backend::MirrorBackend::new(
                    first,
                    self.open_location(&r)?,
                )))
            }
            _ => Ok(first),
        }
    }

    /// A location a new vault may be made at: a directory missing or empty (no side effect),
    /// or an object store's prefix holding nothing, opened.
    pub(crate) fn check_new_location(
        &self,
        location: &Location,
    ) -> Result<Option<Arc<dyn Backend>>> {
        match location {
            Location::Fs(path) => {
                check_new_vault_dir(path)?;
                Ok(None)
            }
            remote => {
                let backend = self.open_location(remote)?;
                if !backend.list("")?.is_empty() {
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!(
                            "{remote} already holds objects (to use an existing vault, run `kura vault attach`)"
                        ),
                    ));
                }
                Ok(Some(backend))
            }
        }
    }

    /// Opens a vault by name.
    pub fn open_vault(&self, name: &str, secrets: &Secrets) -> Result<Vault> {
        let row = self.catalog.vault(name)?;
        self.open_vault_row(&row, secrets)
    }

    /// Writes a vault's wrapped key (never the unwrapped one) to `to`, for escrow.
    pub fn export_key(&self, name: &str, to: &Path, force: bool) -> Result<PathBuf> {
        if to.exists() && !force {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} already exists (use --force to overwrite)", to.display()),
            ));
        }
        let doc = self.wrapped_key_document(name)?;
        let text = serde_json::to_vec_pretty(&doc).expect("json");
        write_private(to, &text)?;
        Ok(to.to_path_buf())
    }

    /// The escrow document of a vault's wrapped key (never the unwrapped key).
    pub fn wrapped_key_document(&self, name: &str) -> Result<WrappedKeyDocument> {
        let row = self.catalog.vault(name)?;
        let config = Vault::read_config(self.backend_of(&row)?.as_ref())?;
        let enc = config.encryption.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Invalid,
                format!("vault {name:?} is not encrypted; it has no key to export"),
            )
        })?;
        Ok(WrappedKeyDocument {
            kura_wrapped_key: 1,
            vault_id: config.vault_id.clone(),
            vault_name: name.to_string(),
            cipher: enc.cipher.name().to_string(),
            key: enc.key.clone(),
            note: "the vault's data key wrapped by its passphrase or key file; useless without them",
        })
    }

    /// Registers an existing vault directory and rebuilds its items and recovery points from
    /// the manifests stored in it.
    pub fn attach_vault(
        &self,
        name: &str,
        location: &Location,
        secrets: &Secrets,
    ) -> Result<AttachReport> {
        check_vault_name(name)?;
        if self.catalog.vault(name).is_ok() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("vault {name:?} already exists"),
            ));
        }
        let location = match location {
            Location::Fs(p) => {
                let p = absolute(p)?;
                if !p.is_dir() {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("{} is not a directory", p.display()),
                    ));
                }
                Location::Fs(p)
            }
            remote => remote.clone(),
        };
        // For messages.
        let path = &location;
        // Either copy of a zone-redundant vault is a whole vault: attached, it is read (and
        // written) at the one location given.
        let replica: Option<Location> = None;
        let backend = self.open_location(&location)?;
        let config = Vault::read_config(backend.as_ref()).map_err(|e| match e {
            kura_store::Error::NotAVault { reason, .. } => Error::new(
                ErrorKind::Invalid,
                format!("{path} is not a kura vault: {reason}"),
            ),
            e => e.into(),
        })?;
        if let Ok(existing) = self.catalog.vault_by_id(&config.vault_id) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("this vault is already attached as {:?}", existing.name),
            ));
        }
        // How the key will be supplied; a recovery kit is read (and its passphrase stretched)
        // once, and its key file written only after every check passed.
        let mut kit_key = None;
        let (encryption, key_file) =
            match (&config.encryption, &secrets.recovery_kit, &secrets.key_file) {
                (None, _, _) => ("none", None),
                (Some(_), Some(kit), _) => {
                    let kf = self.root.join("keys").join(format!("{name}.master"));
                    if kf.exists() {
                        return Err(Error::new(
                            ErrorKind::AlreadyExists,
                            format!("{} already exists; move it away first", kf.display()),
                        ));
                    }
                    kit_key = Some((kf.clone(), self.read_kit(kit, &config, secrets)?));
                    ("master-key", Some(kf.display().to_string()))
                }
                (Some(e), _, _)
                    if matches!(e.key.kek, kura_store::keys::KekSpec::Argon2id { .. }) =>
                {
                    ("passphrase", None)
                }
                (Some(_), _, Some(kf)) => ("key-file", Some(absolute(kf)?.display().to_string())),
                (Some(_), _, None) => {
                    return Err(Error::new(
                        ErrorKind::Key,
                        "this vault is encrypted with a key file: pass --key-file FILE",
                    ));
                }
            };
        let row = VaultRow {
            id: config.vault_id.clone(),
            name: name.into(),
            path: location.to_string(),
            chunk_size: config.chunk_size,
            encryption: encryption.into(),
            cipher: config
                .encryption
                .as_ref()
                .map(|e| e.cipher.name().to_string()),
            key_file,
            created: kura_catalog::stamp(self.now()),
            redundancy: if replica.is_some() { "zone" } else { "local" }.into(),
            replica: replica.as_ref().map(Location::to_string),
        };
        // Prove the key works before registering anything.
        let secret = match &kit_key {
            Some((_, master)) => KeySecret::MasterKey(master.clone()),
            None => self.secret_for(&row, secrets)?,
        };
        let vault = Vault::open(backend.clone(), &secret).map_err(|e| match e {
            kura_store::Error::WrongKey => Error::new(
                ErrorKind::Key,
                format!("{path}: wrong passphrase, key file or recovery kit"),
            ),
            e => e.into(),
        })?;
        // Items whose names or sources this home already uses would be dropped: refuse first.
        let mut clashes = Vec::new();
        let here = self.catalog.list_items(None)?;
        for r in vault.list_items().unwrap_or_default() {
            if let Some(other) = here.iter().find(|i| i.name == r.name) {
                clashes.push(format!(
                    "item {:?} (this home already has an item of that name, protecting {})",
                    r.name, other.source
                ));
            } else if let Some(other) = here
                .iter()
                .find(|i| i.kind == r.kind && i.source == r.source)
            {
                clashes.push(format!(
                    "item {:?} (its source {} is already protected here as {:?})",
                    r.name, r.source, other.name
                ));
            }
        }
        if !clashes.is_empty() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "vault {} cannot be attached without losing items: {}; detach or rename the items of this home first (`kura vault detach`)",
                    path,
                    clashes.join("; ")
                ),
            ));
        }
        if let Some((kf, master)) = &kit_key {
            write_private(kf, format!("{}\n", hex::encode(master.as_ref())).as_bytes())?;
        }
        let mut warnings = Vec::new();
        let mut manifests = Vec::new();
        for rp_id in vault.list_rp_ids()? {
            match vault.get_manifest(&rp_id) {
                Ok(m) => manifests.push(m),
                Err(e) => warnings.push(format!("recovery point {rp_id} skipped: {e}")),
            }
        }
        let mut records = vault.list_items().unwrap_or_else(|e| {
            warnings.push(format!("item records unreadable: {e}"));
            Vec::new()
        });
        for m in &manifests {
            if !records.iter().any(|r| r.id == m.item.id) {
                records.push(m.item.clone());
            }
        }
        self.catalog.insert_vault(&row)?;
        self.ensure_default_policy(&row.id)?;
        // Policies the vault carries (they replace the default DefaultPolicy).
        for (name, doc) in crate::policy::vault_policies(vault.backend().as_ref(), &mut warnings) {
            let stored = if self.catalog.has_policy(&row.id, &name)? {
                self.catalog.update_policy(&row.id, &name, &doc)
            } else {
                self.catalog.insert_policy(&row.id, &name, &doc)
            };
            if let Err(e) = stored {
                warnings.push(format!("policy {name:?} not registered: {e}"));
            }
        }
        let mut items = Vec::new();
        for r in &records {
            let item = ItemRow {
                id: r.id.clone(),
                name: r.name.clone(),
                vault_id: row.id.clone(),
                kind: r.kind.clone(),
                source: r.source.clone(),
                created: r.created.clone(),
                // Stopped and soft-deleted items have no policy until they are resumed.
                policy: match r.state.as_deref() {
                    None | Some("protected") => Some(
                        r.policy
                            .clone()
                            .filter(|p| self.catalog.has_policy(&row.id, p).unwrap_or(false))
                            .unwrap_or_else(|| kura_policy::DEFAULT_POLICY.into()),
                    ),
                    Some(_) => None,
                },
                last_slot: None,
                state: r.state.clone().unwrap_or_else(|| "protected".into()),
                deleted_at: r.deleted_at.clone(),
                // A spec must describe the record's own source, or it is not used (the format
                // is then probed once at the next backup).
                spec: r.spec.as_ref().map(|f| f.to_string()).filter(|text| {
                    kura_source::SourceSpec::parse(text).is_ok_and(|spec| spec.source() == r.source)
                }),
                damaged_points: 0,
            };
            match self.catalog.insert_item(&item) {
                Ok(()) => items.push(r.name.clone()),
                Err(e) => warnings.push(format!("item {:?} not registered: {e}", r.name)),
            }
        }
        let mut rps = 0;
        for m in &manifests {
            if !items.contains(&m.item.name) {
                continue;
            }
            let mut row = rp_row(m);
            // The snapshot tier of this point, if the item's record names one kura made.
            if let Some((snap, expires)) = snapshot_of(&records, &m.item.id, &m.rp_id) {
                row.tier = "snapshot+vault".into();
                row.snapshot = Some(snap);
                row.snapshot_expires = expires;
            }
            self.catalog.insert_rp(&row)?;
            rps += 1;
        }
        // Snapshot-only points (no vault copy) live only in the item's record.
        for r in records.iter().filter(|r| items.contains(&r.name)) {
            for s in &r.snapshots {
                if manifests.iter().any(|m| m.rp_id == s.rp_id) {
                    continue;
                }
                let Some((snap, expires)) = snapshot_of(&records, &r.id, &s.rp_id) else {
                    continue;
                };
                let row = RpRow {
                    id: s.rp_id.clone(),
                    item_id: r.id.clone(),
                    time: s.time.clone(),
                    logical_size: 0,
                    stored_size: 0,
                    consistency: "crash".into(),
                    tier: "snapshot".into(),
                    retain_until: None,
                    job_id: None,
                    tags: vec!["instant-restore".into()],
                    expires: expires.clone(),
                    origin: "on-demand".into(),
                    used_bytes: 0,
                    snapshot: Some(snap),
                    snapshot_expires: expires,
                };
                if self.catalog.insert_rp(&row).is_ok() {
                    rps += 1;
                }
            }
        }
        Ok(AttachReport {
            vault: row,
            items,
            recovery_points: rps,
            warnings,
        })
    }

    // ---- items

    /// Protects a disk image (or block device) in a vault, scheduled by `policy` (default
    /// `DefaultPolicy`).
    ///
    /// The image's format is pinned now: `format` when given, otherwise what `qemu-img info`
    /// probes (shown to the user by the caller from the item's `format`). Later backups never
    /// probe again.
    pub fn protect_disk(
        &self,
        image: &Path,
        vault: &str,
        name: Option<&str>,
        policy: Option<&str>,
        format: Option<&str>,
        secrets: &Secrets,
    ) -> Result<ItemRow> {
        let vrow = self.catalog.vault(vault)?;
        let policy = self.policy_for_new_item(&vrow, policy)?;
        let source = absolute(image)?;
        let meta = std::fs::metadata(&source)
            .map_err(|e| Error::io(format!("disk image {}", source.display()), e))?;
        if meta.is_dir() {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("{} is a directory, not a disk image", source.display()),
            ));
        }
        std::fs::File::open(&source).map_err(|e| {
            Error::io(
                format!("disk image {} is not readable", source.display()),
                e,
            )
        })?;
        let name = match name {
            Some(n) => n.to_string(),
            None => default_item_name(&source),
        };
        check_name("item", &name)?;
        let vault = self.open_vault_row(&vrow, secrets)?;
        let pinned = kura_source::PinnedFormat::inspect(&source, format)?;
        let spec = kura_source::SourceSpec::disk(&source, pinned.clone());
        self.register_item(&vrow, &vault, name, policy, spec, &pinned.describe())
    }

    /// Protects a running QEMU VM through its QMP socket: its disks are discovered now (and
    /// checked again at every backup); `exclude` names disks not to back up.
    #[allow(clippy::too_many_arguments)]
    pub fn protect_vm(
        &self,
        link: &kura_source::vm::VmLink,
        vault: &str,
        name: Option<&str>,
        policy: Option<&str>,
        exclude: &[String],
        agent: &kura_source::vm::AgentOptions,
        secrets: &Secrets,
    ) -> Result<ItemRow> {
        let vrow = self.catalog.vault(vault)?;
        let policy = self.policy_for_new_item(&vrow, policy)?;
        let link = match link {
            kura_source::vm::VmLink::Qmp(p) => kura_source::vm::VmLink::Qmp(absolute(p)?),
            l => l.clone(),
        };
        let libvirt = match &link {
            kura_source::vm::VmLink::Libvirt(d) => Some(d.clone()),
            kura_source::vm::VmLink::Qmp(_) => None,
        };
        agent.validate(libvirt.is_some())?;
        let mut agent = agent.clone();
        if let Some(q) = &agent.qga {
            agent.qga = Some(absolute(Path::new(q))?.display().to_string());
        }
        let disks = kura_source::vm::discover(&link)?;
        for x in exclude {
            if !disks.iter().any(|d| &d.name == x) {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!(
                        "--exclude-disk {x:?}: the VM has no such disk (it has: {})",
                        disks
                            .iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        if disks.iter().all(|d| exclude.contains(&d.name)) {
            return Err(Error::new(
                ErrorKind::Invalid,
                "every disk of the VM is excluded: nothing would be backed up",
            ));
        }
        let name = match name {
            Some(n) => n.to_string(),
            None => match &link {
                kura_source::vm::VmLink::Qmp(p) => default_item_name(p),
                kura_source::vm::VmLink::Libvirt(d) => default_item_name(Path::new(&d.name)),
            },
        };
        check_name("item", &name)?;
        let vault_handle = self.open_vault_row(&vrow, secrets)?;
        let agent_state = match link.agent(&agent) {
            None => "no guest agent (crash-consistent points)".to_string(),
            Some(a) => match kura_source::vm::link_status(&a).0 {
                kura_source::vm::AgentStatus::Ready(i) => {
                    format!("guest agent Ready (qemu-ga {} on {})", i.version, i.os)
                }
                kura_source::vm::AgentStatus::NotReady { reason } => {
                    format!("guest agent Not Ready: {reason}")
                }
                kura_source::vm::AgentStatus::NotConfigured => String::new(),
            },
        };
        let describe = format!(
            "VM with disks {}; {agent_state}",
            disks
                .iter()
                .map(|d| if exclude.contains(&d.name) {
                    format!("{} (excluded)", d.name)
                } else {
                    format!("{} ({}, {})", d.name, d.format, d.file)
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        let spec = kura_source::SourceSpec::Vm {
            v: kura_source::SPEC_VERSION,
            qmp: match &link {
                kura_source::vm::VmLink::Qmp(p) => p.display().to_string(),
                kura_source::vm::VmLink::Libvirt(_) => String::new(),
            },
            libvirt,
            disks,
            exclude: exclude.to_vec(),
            agent,
        };
        self.register_item(&vrow, &vault_handle, name, policy, spec, &describe)
    }

    /// Protects a directory tree (a file share): `exclude` patterns leave entries out (a
    /// pattern without `/` matches a name anywhere, one with `/` a path from the root).
    #[allow(clippy::too_many_arguments)]
    pub fn protect_files(
        &self,
        dir: &Path,
        vault: &str,
        name: Option<&str>,
        policy: Option<&str>,
        exclude: &[String],
        snapshot: kura_source::TreeSnapshot,
        secrets: &Secrets,
    ) -> Result<ItemRow> {
        let vrow = self.catalog.vault(vault)?;
        let policy = self.policy_for_new_item(&vrow, policy)?;
        let source = absolute(dir)?;
        let meta = std::fs::metadata(&source)
            .map_err(|e| Error::io(format!("directory {}", source.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{} is not a directory (protect a disk image with `kura item protect disk`)",
                    source.display()
                ),
            ));
        }
        let tree = kura_source::TreeSource::new(&source, exclude)?;
        tree.open_root()?;
        snapshot.check(&source)?;
        // A vault or the home inside the tree would back itself up, growing at every backup.
        let source_real = std::fs::canonicalize(&source)
            .map_err(|e| Error::io(format!("directory {}", source.display()), e))?;
        for (what, p) in [
            ("the vault's storage", PathBuf::from(&vrow.path)),
            ("kura's home", self.root().to_path_buf()),
        ] {
            let Ok(real) = std::fs::canonicalize(&p) else {
                continue;
            };
            if let Ok(rel) = real.strip_prefix(&source_real) {
                let rel = rel.display().to_string();
                if rel.is_empty() || !tree.excluded(rel.as_bytes()) {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        if rel.is_empty() {
                            format!("{} is {what} itself", source.display())
                        } else {
                            format!(
                                "{what} ({}) lies inside {}: it would be backed up into itself; add --exclude /{rel}",
                                real.display(),
                                source.display()
                            )
                        },
                    ));
                }
            }
        }
        let name = match name {
            Some(n) => n.to_string(),
            None => default_item_name(&source),
        };
        check_name("item", &name)?;
        let vault_handle = self.open_vault_row(&vrow, secrets)?;
        let mut describe = format!("directory tree {}", source.display());
        if !exclude.is_empty() {
            describe += &format!(", excluding {}", exclude.join(", "));
        }
        if !snapshot.is_none() {
            describe += &format!(", read from a {} snapshot", snapshot.as_str());
        }
        let spec = kura_source::SourceSpec::Files {
            v: kura_source::SPEC_VERSION,
            path: source.display().to_string(),
            exclude: exclude.to_vec(),
            snapshot,
        };
        self.register_item(&vrow, &vault_handle, name, policy, spec, &describe)
    }

    /// The policy a new item gets: the one named (which the vault must have), or
    /// `DefaultPolicy`.
    fn policy_for_new_item<'p>(&self, vrow: &VaultRow, policy: Option<&'p str>) -> Result<&'p str> {
        let policy = policy.unwrap_or(kura_policy::DEFAULT_POLICY);
        if !self.catalog.has_policy(&vrow.id, policy)? {
            let vault = &vrow.name;
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "vault {vault:?} has no policy {policy:?} (see `kura policy list --vault {vault}`)"
                ),
            ));
        }
        Ok(policy)
    }

    /// Records a new item in the catalog and its vault, as Azure's ConfigureBackup job.
    fn register_item(
        &self,
        vrow: &VaultRow,
        vault: &Vault,
        name: String,
        policy: &str,
        spec: kura_source::SourceSpec,
        describe: &str,
    ) -> Result<ItemRow> {
        let source = spec.source();
        let item = ItemRow {
            id: new_id(),
            name,
            vault_id: vrow.id.clone(),
            kind: spec.kind().into(),
            source,
            created: kura_catalog::stamp(self.now()),
            policy: Some(policy.to_string()),
            last_slot: None,
            state: "protected".into(),
            deleted_at: None,
            spec: Some(spec.to_json()),
            damaged_points: 0,
        };
        self.catalog.insert_item(&item)?;
        // Azure's ConfigureBackup: recorded as a job once the item exists.
        let configured = self.run_job(
            JobOperation::ConfigureBackup,
            &item.name,
            false,
            None,
            &crate::NoProgress,
            |job| {
                vault.put_item(&item_record(&item))?;
                job.message(&format!(
                    "protected {} ({describe}) in vault {vault_name} with policy {policy}",
                    item.source,
                    vault_name = vrow.name
                ));
                Ok(((), None))
            },
        );
        if let Err(e) = configured {
            // Refused: leave the catalog as it was.
            let _ = self.catalog.delete_item(&item.id);
            return Err(e);
        }
        Ok(item)
    }

    /// An item by name or id.
    pub fn item(&self, name: &str) -> Result<ItemRow> {
        Ok(self.catalog.item(name)?)
    }

    /// Items.
    pub fn list_items(&self) -> Result<Vec<ItemRow>> {
        Ok(self.catalog.list_items(None)?)
    }

    /// Recovery points of an item, newest first.
    pub fn list_rps(&self, item: &str) -> Result<Vec<RpRow>> {
        let item = self.catalog.item(item)?;
        Ok(self.catalog.list_rps(&item.id)?)
    }

    /// Resolves `RP` or `latest` for an item.
    pub fn resolve_rp(&self, item: &ItemRow, rp: &str) -> Result<RpRow> {
        if rp == "latest" {
            return self
                .catalog
                .list_rps(&item.id)?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("item {:?} has no recovery point yet", item.name),
                    )
                });
        }
        let row = self.catalog.rp(rp)?;
        if row.item_id != item.id {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "recovery point {rp} belongs to another item, not {:?}",
                    item.name
                ),
            ));
        }
        Ok(row)
    }

    // ---- jobs

    /// A job by id or unique prefix.
    pub fn job(&self, id: &str) -> Result<kura_catalog::JobRow> {
        Ok(self.catalog.job(id)?)
    }

    /// Cancels a running job, in any phase: its work stops at the next chunk or recovery
    /// point, undoes what is not complete and ends Cancelled. A job of any kind whose process
    /// is gone (killed, or a container that stopped) is cleared instead: it is recorded Failed
    /// and no longer blocks its item.
    pub fn cancel_job(&self, id: &str) -> Result<kura_catalog::JobRow> {
        let job = self.catalog.job(id)?;
        if job.status == JobStatus::Queued {
            if self.catalog.job_orphaned(&job.id)? {
                self.catalog.finish_job(
                    &job.id,
                    JobStatus::Failed,
                    None,
                    Some("the process that queued this job is gone; cleared by `kura job cancel`"),
                )?;
                return Ok(self.catalog.job(&job.id)?);
            }
            if self.catalog.cancel_queued(
                &job.id,
                "cancelled while it waited in the queue; it never started",
            )? {
                return Ok(self.catalog.job(&job.id)?);
            }
            // It started meanwhile: cancel it as a running job.
            return self.cancel_job(&job.id);
        }
        if matches!(job.status, JobStatus::InProgress | JobStatus::Cancelling)
            && self.catalog.job_orphaned(&job.id)?
        {
            self.catalog.finish_job(
                &job.id,
                JobStatus::Failed,
                None,
                Some("the process running this job is gone; cleared by `kura job cancel`"),
            )?;
            return Ok(self.catalog.job(&job.id)?);
        }
        if job.status == JobStatus::Cancelling {
            return Ok(job);
        }
        if job.status != JobStatus::InProgress {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "job {} is {}; only running jobs can be cancelled",
                    job.id, job.status
                ),
            ));
        }
        if !self.catalog.request_cancel(&job.id)? {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("job {} ended meanwhile", job.id),
            ));
        }
        Ok(self.catalog.job(&job.id)?)
    }

    /// The jobs this process runs that have not ended (for a server that stops).
    pub fn running_jobs_of_this_process(&self) -> Result<Vec<String>> {
        Ok(self.catalog.own_running_jobs()?)
    }

    /// Asks a job of this process to stop (see [`Home::cancel_job`]); false when it ended
    /// meanwhile.
    pub fn request_stop(&self, id: &str) -> Result<bool> {
        match self.cancel_job(id) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::Conflict => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records a job of this process Cancelled as the process exits before it ended: its
    /// transfer stops with the process, nothing it wrote is referenced by a recovery point,
    /// and garbage collection removes it.
    pub fn record_stopped(&self, id: &str, why: &str) -> Result<()> {
        self.catalog
            .finish_job(id, JobStatus::Cancelled, None, Some(why))?;
        Ok(())
    }

    /// Jobs by operation and status, with the bytes they processed (for monitoring).
    pub fn job_counts(&self) -> Result<Vec<kura_catalog::JobCount>> {
        Ok(self.catalog.job_counts()?)
    }

    /// Every item's latest backup status and latest success (for monitoring).
    pub fn item_health(&self) -> Result<Vec<kura_catalog::ItemHealth>> {
        Ok(self.catalog.item_health()?)
    }

    /// The latest `limit` jobs, newest first.
    pub fn list_jobs(&self, limit: usize) -> Result<Vec<kura_catalog::JobRow>> {
        Ok(self.catalog.list_jobs(limit)?)
    }

    /// The latest jobs that pass the query, newest first; unknown statuses or operations
    /// are refused by name.
    pub fn find_jobs(&self, q: &crate::JobQuery) -> Result<Vec<kura_catalog::JobRow>> {
        Ok(self.catalog.find_jobs(&q.to_filter()?)?)
    }

    /// Registers a job (status InProgress) and returns its id at once; the work is then run
    /// by passing the id in the operation's options (`job_id`). Refused like the operation
    /// itself would be when a job of the same kind runs on the same target.
    pub fn begin_job(
        &self,
        operation: JobOperation,
        target: &str,
        exclusive: bool,
    ) -> Result<String> {
        let id = new_id();
        self.catalog.start_job(&id, operation, target, exclusive)?;
        Ok(id)
    }

    /// The vault a job works in, for the queue's per-vault limit: the vault named by a
    /// vault-wide job, or the vault of the item it targets.
    pub(crate) fn job_vault(&self, operation: JobOperation, target: &str) -> Option<String> {
        if matches!(
            operation,
            JobOperation::GarbageCollect | JobOperation::PurgeSoftDeleted
        ) {
            self.catalog.vault(target).ok().map(|v| v.id)
        } else {
            self.catalog.item(target).ok().map(|i| i.vault_id)
        }
    }

    /// Marks a begun job failed if it is still in progress (its work could not start).
    /// One asked to stop meanwhile ends Cancelled.
    pub fn abandon_job(&self, id: &str, error: &str, kind: ErrorKind) -> Result<()> {
        match self.catalog.job(id)?.status.as_str() {
            "InProgress" => {
                self.catalog
                    .finish_job(id, JobStatus::Failed, None, Some(error))?;
                self.catalog.set_job_error_code(id, kind.code())?;
            }
            "Cancelling" => self
                .catalog
                .finish_job(id, JobStatus::Cancelled, None, Some(error))?,
            _ => {}
        }
        Ok(())
    }

    /// Runs `f` as a job: a catalog row with progress, log and final status. The error of a
    /// failed job names the job. With `preassigned`, the row made by [`Home::begin_job`] is
    /// used.
    pub(crate) fn run_job<T: serde::Serialize>(
        &self,
        operation: JobOperation,
        target: &str,
        exclusive: bool,
        preassigned: Option<&str>,
        progress: &dyn Progress,
        f: impl FnOnce(&JobCtx<'_>) -> Result<(T, Option<String>)>,
    ) -> Result<(String, T)> {
        let id = match preassigned {
            Some(id) => id.to_string(),
            None => {
                let id = new_id();
                self.catalog.start_job(&id, operation, target, exclusive)?;
                id
            }
        };
        let ctx = JobCtx {
            id: id.clone(),
            catalog: &self.catalog,
            user: progress,
            state: Mutex::new(TeeState::default()),
            warning: Mutex::new(None),
            cancel: Mutex::new(CancelCheck::default()),
        };
        ctx.log(&format!("{operation} of {target} started"));
        progress.job_started(&id, operation.as_str(), target);
        let outer = JOB_STORAGE.with(|j| j.replace(Some(Vec::new())));
        let result = f(&ctx);
        let opened = JOB_STORAGE.with(|j| j.replace(outer)).unwrap_or_default();
        let sent = opened
            .iter()
            .filter_map(|b| b.requests())
            .fold(kura_backend::Requests::default(), |a, r| a.plus(&r));
        if sent.total() > 0 {
            ctx.log(&format!("storage: {sent}"));
        }
        match result {
            Ok((value, rp)) => {
                ctx.flush();
                let warning = ctx.warning.lock().unwrap_or_else(|e| e.into_inner()).take();
                if ctx.cancelled() {
                    ctx.log("the cancel came after the work was done; the job's result stands");
                }
                let status = if warning.is_some() {
                    JobStatus::CompletedWithWarnings
                } else {
                    JobStatus::Completed
                };
                ctx.log(&format!("{operation} {}", status.as_str().to_lowercase()));
                if let Ok(mut v) = serde_json::to_value(&value) {
                    if let Some(o) = v.as_object_mut()
                        && o.contains_key("job_id")
                    {
                        o.insert("job_id".into(), serde_json::Value::String(id.clone()));
                    }
                    let _ = self.catalog.set_job_result(&id, &v);
                }
                self.catalog
                    .finish_job(&id, status, rp.as_deref(), warning.as_deref())?;
                Ok((id, value))
            }
            Err(e) if e.kind() == ErrorKind::Cancelled => {
                ctx.flush();
                let msg = format!("{operation} of {target} was cancelled; {}", e);
                ctx.log("cancelled; nothing incomplete was kept");
                self.catalog
                    .finish_job(&id, JobStatus::Cancelled, None, Some(&msg))?;
                Err(Error::new(
                    ErrorKind::Cancelled,
                    format!("job {id} was cancelled; nothing incomplete was kept"),
                ))
            }
            Err(e) => {
                let msg = e.to_string();
                ctx.log(&format!("failed: {msg}"));
                self.catalog
                    .finish_job(&id, JobStatus::Failed, None, Some(&msg))?;
                self.catalog.set_job_error_code(&id, e.kind().code())?;
                Err(Error::new(e.kind(), format!("{msg} (job {id})")))
            }
        }
    }
}

#[derive(Default)]
struct TeeState {
    done: u64,
    total: u64,
    last_write: Option<Instant>,
}

/// A running job: forwards progress to the user's sink and records it in the catalog about
/// once a second.
pub(crate) struct JobCtx<'a> {
    pub(crate) id: String,
    catalog: &'a Catalog,
    user: &'a dyn Progress,
    state: Mutex<TeeState>,
    warning: Mutex<Option<String>>,
    cancel: Mutex<CancelCheck>,
}

/// The last answer to "was this job cancelled?", so that loops may ask once per chunk
/// while the catalog is read at most every [`CANCEL_POLL`].
#[derive(Default)]
struct CancelCheck {
    at: Option<Instant>,
    cancelled: bool,
}

#[cfg(not(feature = "test-hooks"))]
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// Tests that stop a job at a gate and cancel it there need the next check to see it.
#[cfg(feature = "test-hooks")]
const CANCEL_POLL: std::time::Duration = std::time::Duration::ZERO;

impl JobCtx<'_> {
    /// Whether someone asked this job to stop (`kura job cancel`, a stopping server), read
    /// from the catalog now.
    pub(crate) fn cancelled(&self) -> bool {
        let cancelled = self
            .catalog
            .job(&self.id)
            .is_ok_and(|j| j.status == JobStatus::Cancelling || j.status == JobStatus::Cancelled);
        let mut c = self.cancel.lock().unwrap_or_else(|e| e.into_inner());
        c.at = Some(Instant::now());
        c.cancelled |= cancelled;
        c.cancelled
    }

    /// Ends the job CompletedWithWarnings (with this message) if it otherwise succeeds.
    pub(crate) fn warn(&self, message: &str) {
        self.log(&format!("warning: {message}"));
        *self.warning.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.to_string());
    }

    pub(crate) fn log(&self, line: &str) {
        let _ = self.catalog.job_log(&self.id, line);
    }

    fn flush(&self) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.catalog.job_progress(&self.id, st.done, st.total);
    }
}

impl Progress for JobCtx<'_> {
    /// As [`JobCtx::cancelled`], reading the catalog at most every [`CANCEL_POLL`]; a job
    /// run inside another one (a VM restore's disks) also stops when the outer one is
    /// cancelled.
    fn cancelled(&self) -> bool {
        if self.user.cancelled() {
            return true;
        }
        {
            let c = self.cancel.lock().unwrap_or_else(|e| e.into_inner());
            if c.cancelled || c.at.is_some_and(|t| t.elapsed() < CANCEL_POLL) {
                return c.cancelled;
            }
        }
        JobCtx::cancelled(self)
    }

    fn start(&self, phase: &str, total: u64) {
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.total += total;
        }
        self.log(&format!("{phase}: {total} bytes"));
        self.user.start(phase, total);
        self.flush();
    }

    fn advance(&self, bytes: u64) {
        self.user.advance(bytes);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.done += bytes;
        if st
            .last_write
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            st.last_write = Some(Instant::now());
            let _ = self.catalog.job_progress(&self.id, st.done, st.total);
        }
    }

    fn finish(&self) {
        self.user.finish();
        self.flush();
    }

    fn message(&self, line: &str) {
        self.log(line);
        self.user.message(line);
    }
}

pub(crate) fn rp_row(m: &kura_store::Manifest) -> RpRow {
    RpRow {
        id: m.rp_id.clone(),
        item_id: m.item.id.clone(),
        time: m.time.clone(),
        logical_size: m.disks.iter().map(|d| d.size).sum::<u64>()
            + m.trees.iter().map(|t| t.bytes).sum::<u64>(),
        stored_size: m.stats.new_stored_bytes,
        consistency: m.consistency.clone(),
        tier: m.tier.clone(),
        retain_until: m.retain_until.clone(),
        job_id: Some(m.job_id.clone()),
        tags: m.tags.clone(),
        expires: m.expires.clone(),
        origin: m.origin.clone(),
        used_bytes: m.stats.used_bytes.unwrap_or(m.stats.read_bytes),
        snapshot: None,
        snapshot_expires: None,
    }
}

pub(crate) fn item_record(item: &ItemRow) -> ItemRecord {
    ItemRecord {
        id: item.id.clone(),
        name: item.name.clone(),
        kind: item.kind.clone(),
        source: item.source.clone(),
        created: item.created.clone(),
        policy: item.policy.clone(),
        spec: item
            .spec
            .as_deref()
            .and_then(|f| serde_json::from_str(f).ok()),
        state: Some(item.state.clone()),
        deleted_at: item.deleted_at.clone(),
        snapshots: Vec::new(),
    }
}

impl Home {
    /// Writes an item's record to its vault with the snapshots the catalog knows, so a
    /// rebuilt catalog can still find and expire them.
    pub(crate) fn record_item_with_snapshots(&self, item: &ItemRow, vault: &Vault) -> Result<()> {
        let mut rec = item_record(item);
        rec.snapshots = self
            .catalog
            .list_rps(&item.id)?
            .into_iter()
            .filter_map(|r| {
                Some(kura_store::SnapshotRef {
                    snapshot: r.snapshot?,
                    rp_id: r.id,
                    time: r.time,
                    expires: r.snapshot_expires,
                })
            })
            .collect();
        vault.put_item(&rec)?;
        Ok(())
    }
}

/// An item's source spec. Items protected before specs existed get their format probed
/// once, recorded in the catalog and the vault, and never probed again.
pub(crate) fn source_spec(
    home: &Home,
    item: &ItemRow,
    vault: Option<&kura_store::Vault>,
) -> Result<kura_source::SourceSpec> {
    if let Some(text) = &item.spec {
        let spec = kura_source::SourceSpec::parse(text)
            .map_err(|e| Error::new(ErrorKind::Corrupt, format!("item {:?}: {e}", item.name)))?;
        if spec.kind() != item.kind {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "item {:?} is a {} item but its source spec is for {}",
                    item.name,
                    item.kind,
                    spec.kind()
                ),
            ));
        }
        return Ok(spec);
    }
    if item.kind != "disk" {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("{} item {:?} has no source spec", item.kind, item.name),
        ));
    }
    let source = Path::new(&item.source);
    let pinned = kura_source::PinnedFormat::inspect(source, None)?;
    let spec = kura_source::SourceSpec::disk(source, pinned);
    let text = spec.to_json();
    home.catalog.set_item_spec(&item.id, &text)?;
    if let Some(v) = vault {
        let mut updated = item.clone();
        updated.spec = Some(text);
        home.record_item_with_snapshots(&updated, v)?;
    }
    Ok(spec)
}

/// The snapshot an item's vault record names for a point, if it is one kura made of the
/// item's source and it still exists (records come from the vault: untrusted).
fn snapshot_of(
    records: &[ItemRecord],
    item_id: &str,
    rp_id: &str,
) -> Option<(String, Option<String>)> {
    let r = records.iter().find(|r| r.id == item_id)?;
    let s = r.snapshots.iter().find(|s| s.rp_id == rp_id)?;
    let snap = kura_source::Snapshot::decode(&s.snapshot)?;
    let ours = match &snap {
        // A VM's snapshots must be in the VM's own disks, as its record names them.
        kura_source::Snapshot::Vm { .. } => {
            let files: Vec<String> = match r
                .spec
                .as_ref()
                .and_then(|v| kura_source::SourceSpec::parse(&v.to_string()).ok())
            {
                Some(kura_source::SourceSpec::Vm { disks, .. }) => {
                    disks.into_iter().map(|d| d.file).collect()
                }
                _ => Vec::new(),
            };
            snap.belongs_to_vm(Path::new(&r.source), &files)
        }
        _ => snap.belongs_to(Path::new(&r.source)),
    };
    (ours && snap.exists()).then(|| (snap.encode(), s.expires.clone()))
}

fn default_item_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "disk".into()
    } else {
        cleaned
    }
}

/// Names: 1–64 characters of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
/// Words the API uses beside vault names (`POST /api/v1/vaults/attach`): a vault called so
/// could not be reached there.
const RESERVED_VAULT_NAMES: &[&str] = &["attach"];

fn check_vault_name(name: &str) -> Result<()> {
    check_name("vault", name)?;
    if RESERVED_VAULT_NAMES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "vault name {name:?} is reserved (the API has a route of that name); choose another"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "invalid {kind} name {name:?}: use 1-64 characters from A-Z a-z 0-9 . _ - (not starting with . or -)"
            ),
        ))
    }
}

/// Whether new passphrases get cheap Argon2id parameters: only in builds with the
/// `test-hooks` feature, when a test asks (`KURA_TEST_FAST_KDF`); a release build always
/// uses the real parameters. The one place that reads the switch.
pub fn fast_kdf_for_tests() -> bool {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os("KURA_TEST_FAST_KDF").is_some_and(|v| v != "0") {
        return true;
    }
    false
}

/// Creates a directory (and missing parents) only its owner may enter.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))
}

/// Makes a file kura owns readable by its owner only.
fn private_file(path: &Path) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("cannot chmod {}", path.display()), e))
}

pub(crate) fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io(format!("path {}", p.display()), e))
}

/// Writes a file readable only by its owner, atomically (temp file + rename).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        create_private_dir(dir)?;
    }
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
    let r = f
        .write_all(data)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("cannot write {}", path.display()), e));
    }
    Ok(())
}

/// The location a request names in its `path` field (a directory) or its `location` field
/// (a directory or an object store's URL): one of them, or neither for the default.
pub fn requested_location(path: Option<&str>, location: Option<&str>) -> Result<Option<Location>> {
    match (path, location) {
        (Some(_), Some(_)) => Err(Error::new(
            ErrorKind::Invalid,
            "path and location name the same thing: give one of them",
        )),
        (Some(p), None) if p.contains("://") => Err(Error::new(
            ErrorKind::Invalid,
            format!("path: {p:?} is a URL, not a directory: give it as the location (--location)"),
        )),
        (Some(p), None) => Ok(Some(Location::Fs(PathBuf::from(p)))),
        (None, Some(l)) => Location::parse(l)
            .map(Some)
            .map_err(|e| Error::new(ErrorKind::Invalid, format!("location: {e}"))),
        (None, None) => Ok(None),
    }
}

/// Counts `backend`'s requests in the log of the job running on this thread, if any: a
/// backend opened before its job (to check everything before the job exists) is added
/// this way.
pub(crate) fn job_storage(backend: &Arc<dyn Backend>) {
    JOB_STORAGE.with(|j| {
        if let Some(opened) = j.borrow_mut().as_mut()
            && !opened.iter().any(|b| Arc::ptr_eq(b, backend))
        {
            opened.push(backend.clone());
        }
    });
}

thread_local! {
    /// The backends the job running on this thread opened, whose requests its log reports.
    static JOB_STORAGE: std::cell::RefCell<Option<Vec<Arc<dyn Backend>>>> =
        const { std::cell::RefCell::new(None) };
}

/// The replica a request's `redundancy` and `replica` fields ask for, and whether it is a
/// geo replica: `local` (or nothing) has none, `zone` and `geo` need one.
pub fn requested_replica(
    redundancy: Option<&str>,
    replica: Option<&str>,
) -> Result<Option<(Location, bool)>> {
    let invalid = |m: String| Err(Error::new(ErrorKind::Invalid, m));
    match (redundancy.unwrap_or("local"), replica) {
        ("local", None) => Ok(None),
        ("local", Some(_)) => {
            invalid("replica: only a redundant vault has one (--redundancy zone or geo)".into())
        }
        (kind @ ("zone" | "geo"), None) => invalid(format!(
            "redundancy {kind}: give the second location with --replica URL"
        )),
        (kind @ ("zone" | "geo"), Some(r)) => Location::parse(r)
            .map(|l| Some((l, kind == "geo")))
            .map_err(|e| Error::new(ErrorKind::Invalid, format!("replica: {e}"))),
        (other, _) => invalid(format!("redundancy {other:?}: expected local, zone or geo")),
    }
}

/// A new vault's directory (checked missing or empty): made if missing, owner-only either
/// way (an unencrypted vault's chunks are the disk's data), and opened. Says whether it was
/// made here.
pub(crate) fn open_new_vault_dir(dir: &Path) -> Result<(Arc<dyn Backend>, bool)> {
    let created = !dir.exists();
    if created {
        create_private_dir(dir)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("cannot chmod {}", dir.display()), e))?;
    Ok((Arc::new(FsBackend::open(dir)?), created))
}

/// Where a vault's catalog row says it lives.
pub(crate) fn location_of(row: &VaultRow) -> Result<Location> {
    Location::parse(&row.path)
        .map_err(|e| Error::new(ErrorKind::Invalid, format!("vault {:?}: {e}", row.name)))
}

/// A directory a new vault may be made in: missing, or empty. One that holds only the
/// partial uploads of a `vault create` that was killed counts as empty: they are removed.
fn check_new_vault_dir(path: &Path) -> Result<()> {
    let leftovers_only = path
        .read_dir()
        .is_ok_and(|d| d.flatten().all(|e| e.file_name() == ".staging"))
        && !path.join("config").exists();
    if leftovers_only && path.join(".staging").is_dir() {
        std::fs::remove_dir_all(path.join(".staging"))
            .map_err(|e| Error::io(format!("cannot remove {}/.staging", path.display()), e))?;
    }
    if path.exists()
        && path
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "vault directory {} is not empty (to use an existing vault, run `kura vault attach`)",
                path.display()
            ),
        ));
    }
    Ok(())
}
