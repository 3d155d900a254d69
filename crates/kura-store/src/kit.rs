//! Recovery kits: a vault's master key, kept apart from the home, so that the vault's
//! storage and the kit alone restore everything on a new machine.
//!
//! A kit is a small JSON document. Its key is either sealed under a passphrase the user
//! chooses (Argon2id, then AES-256-GCM with the vault id as associated data) or, only when
//! asked for, in the clear. Either way it carries a printable form, the key in groups of
//! four hex digits followed by a checksum, so a kit copied by hand from paper is checked
//! for typos before it is used.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{self, KekSpec, KeySecret, WrappedKey};
use crate::{Error, Result, Vault};

/// Version of the kit document written by this build.
pub const KIT_VERSION: u32 = 1;

const PRINTABLE_PREFIX: &str = "kura-kit1";

/// The stored form of a kit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryKit {
    /// Always [`KIT_VERSION`].
    pub kura_recovery_kit: u32,
    /// The vault it opens.
    pub vault_id: String,
    /// `passphrase` (sealed) or `plain`.
    pub protection: String,
    /// How the sealing key is derived (passphrase kits only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<KekSpec>,
    /// The key: sealed (nonce, ciphertext, tag) or plain, as hex.
    pub key: String,
    /// The key in groups of four hex digits and a checksum: what to print or copy by hand.
    pub printable: String,
    /// A reminder for whoever finds the file.
    pub note: String,
}

fn checksum(hex_key: &str) -> String {
    hex::encode(&blake3::hash(hex_key.as_bytes()).as_bytes()[..4])
}

fn printable(hex_key: &str) -> String {
    let groups: Vec<&str> = hex_key
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("hex is ASCII"))
        .collect();
    format!(
        "{PRINTABLE_PREFIX}-{}-{}",
        groups.join("-"),
        checksum(hex_key)
    )
}

/// The hex key out of a printable form, after checking its checksum.
fn from_printable(p: &str) -> Result<String> {
    let bad = |reason: &str| Error::Invalid {
        field: "recovery kit",
        reason: reason.into(),
    };
    let rest = p
        .trim()
        .strip_prefix(PRINTABLE_PREFIX)
        .and_then(|r| r.strip_prefix('-'))
        .ok_or_else(|| bad("the printable key does not start with kura-kit1-"))?;
    let (body, check) = rest
        .rsplit_once('-')
        .ok_or_else(|| bad("the printable key has no checksum"))?;
    let hex_key: String = body
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if checksum(&hex_key) != check.to_ascii_lowercase() {
        return Err(bad(
            "the printable key does not match its checksum: a digit was mistyped",
        ));
    }
    Ok(hex_key)
}

/// Writes the kit of an open, encrypted vault: sealed under `passphrase`, or in the clear
/// when `passphrase` is `None`.
pub fn seal(vault: &Vault, passphrase: Option<&KeySecret>, fast_kdf: bool) -> Result<RecoveryKit> {
    let master = vault.master_key().ok_or_else(|| Error::Invalid {
        field: "vault",
        reason: "it is not encrypted, so it has no key to put in a kit".into(),
    })?;
    let vault_id = vault.config().vault_id.clone();
    let (protection, kek, key) = match passphrase {
        Some(secret @ KeySecret::Passphrase(p)) => {
            if p.is_empty() {
                return Err(Error::Invalid {
                    field: "kit passphrase",
                    reason: "it is empty".into(),
                });
            }
            let spec = keys::new_kek_spec(secret, fast_kdf).expect("a passphrase has a spec");
            let w = keys::wrap(master, spec, secret, aad(&vault_id).as_bytes())?;
            ("passphrase", Some(w.kek), w.wrapped)
        }
        Some(_) => {
            return Err(Error::Invalid {
                field: "kit passphrase",
                reason: "a kit is sealed with a passphrase".into(),
            });
        }
        None => ("plain", None, hex::encode(master.as_ref())),
    };
    Ok(RecoveryKit {
        kura_recovery_kit: KIT_VERSION,
        vault_id,
        protection: protection.into(),
        kek,
        printable: printable(&key),
        key,
        note: if protection == "plain" {
            "this key opens every backup in the vault: keep it as safe as the backups".into()
        } else {
            "opens the vault together with the passphrase chosen when it was exported".into()
        },
    })
}

fn aad(vault_id: &str) -> String {
    format!("kura-recovery-kit:{vault_id}")
}

/// Reads a kit (its JSON, or just the printable line for a plain kit copied by hand) and
/// returns the vault id it names (when known) and the master key.
pub fn open(
    bytes: &[u8],
    passphrase: Option<&KeySecret>,
) -> Result<(Option<String>, Zeroizing<[u8; 32]>)> {
    let bad = |reason: String| Error::Invalid {
        field: "recovery kit",
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("it is not text".into()))?;
    let kit: RecoveryKit = if text.trim_start().starts_with(PRINTABLE_PREFIX) {
        let key = from_printable(text)?;
        RecoveryKit {
            kura_recovery_kit: KIT_VERSION,
            vault_id: String::new(),
            protection: "plain".into(),
            kek: None,
            printable: text.trim().into(),
            key,
            note: String::new(),
        }
    } else {
        serde_json::from_str(text).map_err(|e| bad(format!("unreadable kit: {e}")))?
    };
    if kit.kura_recovery_kit != KIT_VERSION {
        return Err(bad(format!(
            "unknown kit version {}",
            kit.kura_recovery_kit
        )));
    }
    // The printable form is what a person may have retyped: it must agree with the key.
    if from_printable(&kit.printable)? != kit.key {
        return Err(bad("its key and its printable form differ".into()));
    }
    let vault_id = (!kit.vault_id.is_empty()).then(|| kit.vault_id.clone());
    let master = match (kit.protection.as_str(), &kit.kek) {
        ("plain", _) => {
            let mut m = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(&kit.key, m.as_mut()).map_err(|e| bad(format!("key: {e}")))?;
            m
        }
        ("passphrase", Some(kek)) => {
            let secret = passphrase.ok_or(Error::SecretNeeded {
                needed: "the kit's passphrase",
            })?;
            let w = WrappedKey {
                kek: kek.clone(),
                wrapped: kit.key.clone(),
            };
            keys::unwrap(&w, secret, aad(&kit.vault_id).as_bytes())?
        }
        (p, _) => return Err(bad(format!("unknown protection {p:?}"))),
    };
    Ok((vault_id, master))
}
