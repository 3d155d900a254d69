//! Keys that survive the loss of the home: recovery kits, re-wrapping a vault's key, and
//! detaching a vault from a home.

use std::path::{Path, PathBuf};

use kura_catalog::{JobOperation, JobStatus};
use kura_store::{KeySecret, VaultConfig};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::home::{Secrets, absolute, write_private};
use crate::{Error, ErrorKind, Home, Result};

/// What `vault key export` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct KitReport {
    /// The vault.
    pub vault: String,
    /// The kit file.
    pub exported_to: PathBuf,
    /// `passphrase` (sealed) or `plain`.
    pub protection: String,
    /// The printable form (the key in groups and a checksum) to keep on paper.
    pub printable: String,
}

/// A new secret for `vault key change`.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// A new passphrase.
    pub passphrase: Option<Zeroizing<String>>,
    /// A new key file.
    pub key_file: Option<PathBuf>,
}

impl Home {
    /// Writes a recovery kit for vault `name` to `to` (mode 0600): its master key sealed
    /// under the kit passphrase (`secrets.kit_passphrase`, else `secrets.passphrase`), or in
    /// the clear with `plain`. With the vault's storage, the kit alone rebuilds a home
    /// (`vault attach --recovery-kit`).
    pub fn export_recovery_kit(
        &self,
        name: &str,
        to: &Path,
        plain: bool,
        force: bool,
        secrets: &Secrets,
    ) -> Result<KitReport> {
        let row = self.catalog.vault(name)?;
        let pass = secrets
            .kit_passphrase
            .clone()
            .or_else(|| secrets.passphrase.clone());
        let kit_secret = match (plain, pass) {
            (true, _) => None,
            (false, Some(p)) => Some(KeySecret::Passphrase(p)),
            (false, None) => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    "a recovery kit is sealed with a passphrase you choose: pass --kit-passphrase-file FILE (or --passphrase-file), or --plain to write the key in the clear",
                ));
            }
        };
        if to.exists() && !force {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} already exists (use --force to overwrite)", to.display()),
            ));
        }
        let vault = self.open_vault_row(&row, secrets)?;
        let kit = kura_store::kit::seal(&vault, kit_secret.as_ref(), false)?;
        let text = serde_json::to_vec_pretty(&kit).expect("a kit serializes");
        let to = absolute(to)?;
        write_private(&to, &text)?;
        self.catalog.set_kit_exported(&row.id)?;
        Ok(KitReport {
            vault: name.into(),
            exported_to: to,
            protection: kit.protection,
            printable: kit.printable,
        })
    }

    /// The master key in a recovery kit, checked against the vault's config.
    pub(crate) fn read_kit(
        &self,
        kit: &Path,
        config: &VaultConfig,
        secrets: &Secrets,
    ) -> Result<Zeroizing<[u8; 32]>> {
        let bytes =
            Zeroizing::new(std::fs::read(kit).map_err(|e| {
                Error::io(format!("cannot read recovery kit {}", kit.display()), e)
            })?);
        let pass = secrets
            .kit_passphrase
            .clone()
            .or_else(|| secrets.passphrase.clone())
            .map(KeySecret::Passphrase);
        let (vault_id, master) =
            kura_store::kit::open(&bytes, pass.as_ref()).map_err(|e| match e {
                kura_store::Error::WrongKey => Error::new(
                    ErrorKind::Key,
                    format!("recovery kit {}: wrong kit passphrase", kit.display()),
                ),
                kura_store::Error::SecretNeeded { .. } => Error::new(
                    ErrorKind::Key,
                    format!(
                        "recovery kit {} is sealed: pass its passphrase with --kit-passphrase-file FILE (or --passphrase-file)",
                        kit.display()
                    ),
                ),
                e => e.into(),
            })?;
        if let Some(id) = vault_id
            && id != config.vault_id
        {
            return Err(Error::new(
                ErrorKind::Key,
                format!(
                    "recovery kit {} belongs to vault {id}, not to this one ({})",
                    kit.display(),
                    config.vault_id
                ),
            ));
        }
        Ok(master)
    }

    /// Re-wraps a vault's key under a new passphrase or key file. Only the vault's config
    /// changes; every chunk, index and manifest stays as it is.
    pub fn change_vault_key(
        &self,
        name: &str,
        new: &NewKey,
        secrets: &Secrets,
    ) -> Result<crate::VaultInfo> {
        let row = self.catalog.vault(name)?;
        let (secret, encryption, key_file) = match (&new.passphrase, &new.key_file) {
            (Some(p), None) if !p.is_empty() => {
                (KeySecret::Passphrase(p.clone()), "passphrase", None)
            }
            (None, Some(kf)) => {
                let kf = absolute(kf)?;
                let bytes = std::fs::read(&kf)
                    .map_err(|e| Error::io(format!("cannot read key file {}", kf.display()), e))?;
                (
                    KeySecret::KeyFile(Zeroizing::new(bytes)),
                    "key-file",
                    Some(kf.display().to_string()),
                )
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    "give exactly one new secret: --new-passphrase-file FILE or --new-key-file FILE",
                ));
            }
        };
        let mut vault = self.open_vault_row(&row, secrets)?;
        vault.rewrap(&secret, crate::home::fast_kdf_for_tests())?;
        self.catalog
            .set_vault_key(&row.id, encryption, key_file.as_deref())?;
        self.vault_info(name)
    }

    /// Forgets a vault in this home: its items, recovery points and policies leave the
    /// catalog; its storage is not touched and can be attached again.
    pub fn detach_vault(&self, name: &str) -> Result<()> {
        let row = self.catalog.vault(name)?;
        for item in self.catalog.list_items(Some(&row.id))? {
            let running = self
                .catalog
                .jobs_for(JobOperation::Backup, &item.name, 10)?
                .into_iter()
                .any(|j| {
                    j.status == JobStatus::InProgress
                        && !self.catalog.job_orphaned(&j.id).unwrap_or(true)
                });
            if running {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "a backup of item {:?} is running; detach after it ends",
                        item.name
                    ),
                ));
            }
        }
        self.catalog.detach_vault(&row.id)?;
        Ok(())
    }
}
