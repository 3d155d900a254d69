//! The vault's keys and how they are wrapped.
//!
//! A vault has one random 32-byte master key. Two subkeys are derived from it with BLAKE3's
//! key derivation: the chunk-id key and the blob key. The master key is stored in the vault
//! config only wrapped (AES-256-GCM) by a key-encryption key (KEK) derived from a passphrase
//! (Argon2id) or from the contents of a key file. A vault without encryption keeps only its
//! chunk-id key, in the clear.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::{Error, Result};

const ID_KEY_CONTEXT: &str = "kura vault v1 chunk id key";
const BLOB_KEY_CONTEXT: &str = "kura vault v1 blob key";
const KEY_FILE_CONTEXT: &str = "kura vault v1 key file kek";

/// The AEAD used for blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cipher {
    /// AES-256-GCM (default; hardware accelerated on x86-64 and arm64).
    Aes256Gcm,
    /// ChaCha20-Poly1305 (for CPUs without AES instructions).
    Chacha20Poly1305,
}

impl Cipher {
    pub(crate) fn code(self) -> u8 {
        match self {
            Cipher::Aes256Gcm => 1,
            Cipher::Chacha20Poly1305 => 2,
        }
    }
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Cipher::Aes256Gcm),
            2 => Some(Cipher::Chacha20Poly1305),
            _ => None,
        }
    }
    pub(crate) fn algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Cipher::Aes256Gcm => &AES_256_GCM,
            Cipher::Chacha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
        }
    }
    /// Name as used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::Chacha20Poly1305 => "chacha20-poly1305",
        }
    }
}

/// The secret that unlocks a vault.
#[derive(Clone)]
pub enum KeySecret {
    /// No encryption.
    None,
    /// A passphrase, stretched with Argon2id.
    Passphrase(Zeroizing<String>),
    /// The bytes of a key file (at least 32).
    KeyFile(Zeroizing<Vec<u8>>),
    /// The vault's master key itself, from a recovery kit: opens the vault without its
    /// passphrase or key file.
    MasterKey(Zeroizing<[u8; 32]>),
}

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.write_str(match self {
            KeySecret::None => "KeySecret::None",
            KeySecret::Passphrase(_) => "KeySecret::Passphrase(..)",
            KeySecret::KeyFile(_) => "KeySecret::KeyFile(..)",
            KeySecret::MasterKey(_) => "KeySecret::MasterKey(..)",
        })
    }
}

impl From<&str> for KeySecret {
    fn from(p: &str) -> Self {
        KeySecret::Passphrase(Zeroizing::new(p.to_string()))
    }
}

/// How the key-encryption key is derived; stored in the vault config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum KekSpec {
    /// Argon2id over a passphrase.
    Argon2id {
        /// Random salt, hex.
        salt: String,
        /// Memory cost in KiB.
        m_cost: u32,
        /// Iterations.
        t_cost: u32,
        /// Parallelism.
        p_cost: u32,
    },
    /// BLAKE3 key derivation over the contents of a key file.
    KeyFile,
}

/// The wrapped master key as stored in the config and exported for escrow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// How to derive the KEK.
    pub kek: KekSpec,
    /// AES-256-GCM nonce (12 bytes) followed by the sealed 32-byte master key and tag, hex.
    pub wrapped: String,
}

/// Unwrapped key material, wiped on drop.
pub struct Keys {
    pub(crate) id_key: Zeroizing<[u8; 32]>,
    pub(crate) blob_key: Option<Zeroizing<[u8; 32]>>,
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random number generator failed");
    out
}

/// Generates the contents of a new key file: 32 random bytes as hex and a newline.
pub fn generate_key_file() -> Zeroizing<Vec<u8>> {
    let mut bytes = random_bytes::<32>();
    let text = format!("{}\n", hex::encode(bytes));
    bytes.zeroize();
    Zeroizing::new(text.into_bytes())
}

impl Keys {
    pub(crate) fn from_master(master: &[u8; 32], encrypted: bool) -> Keys {
        Keys {
            id_key: Zeroizing::new(blake3::derive_key(ID_KEY_CONTEXT, master)),
            blob_key: encrypted
                .then(|| Zeroizing::new(blake3::derive_key(BLOB_KEY_CONTEXT, master))),
        }
    }
}

/// The largest Argon2id costs a vault config may ask for. The config is read before anything
/// in it can be authenticated, so a tampered one must not make kura allocate gigabytes or
/// spin for hours: 1 GiB of memory, 64 passes, 16 lanes (new vaults use 64 MiB, 3, 1).
pub const ARGON2_MAX_M_COST_KIB: u32 = 1 << 20;
/// See [`ARGON2_MAX_M_COST_KIB`].
pub const ARGON2_MAX_T_COST: u32 = 64;
/// See [`ARGON2_MAX_M_COST_KIB`].
pub const ARGON2_MAX_P_COST: u32 = 16;

fn check_argon2_bounds(m_cost: u32, t_cost: u32, p_cost: u32) -> Result<()> {
    for (field, value, max) in [
        ("m_cost", m_cost, ARGON2_MAX_M_COST_KIB),
        ("t_cost", t_cost, ARGON2_MAX_T_COST),
        ("p_cost", p_cost, ARGON2_MAX_P_COST),
    ] {
        if value > max {
            return Err(Error::corrupt(
                "vault config",
                format!("argon2 {field} {value} is above the limit kura accepts ({max})"),
            ));
        }
    }
    Ok(())
}

fn derive_kek(spec: &KekSpec, secret: &KeySecret) -> Result<Zeroizing<[u8; 32]>> {
    let mut kek = Zeroizing::new([0u8; 32]);
    match (spec, secret) {
        (
            KekSpec::Argon2id {
                salt,
                m_cost,
                t_cost,
                p_cost,
            },
            KeySecret::Passphrase(p),
        ) => {
            check_argon2_bounds(*m_cost, *t_cost, *p_cost)?;
            let salt = hex::decode(salt)
                .map_err(|e| Error::corrupt("vault config", format!("kek salt: {e}")))?;
            let params = argon2::Params::new(*m_cost, *t_cost, *p_cost, Some(32))
                .map_err(|e| Error::corrupt("vault config", format!("argon2 parameters: {e}")))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(p.as_bytes(), &salt, kek.as_mut())
                .map_err(|e| Error::Invalid {
                    field: "passphrase",
                    reason: e.to_string(),
                })?;
        }
        (KekSpec::KeyFile, KeySecret::KeyFile(bytes)) => {
            if bytes.len() < 32 {
                return Err(Error::Invalid {
                    field: "key file",
                    reason: format!("it holds {} bytes; at least 32 are needed", bytes.len()),
                });
            }
            *kek = blake3::derive_key(KEY_FILE_CONTEXT, bytes);
        }
        (KekSpec::Argon2id { .. }, _) => {
            return Err(Error::SecretNeeded {
                needed: "passphrase",
            });
        }
        (KekSpec::KeyFile, _) => return Err(Error::SecretNeeded { needed: "key file" }),
    }
    Ok(kek)
}

/// Argon2id cost used for new vaults: 64 MiB, 3 passes (OWASP's recommended floor is lower).
pub(crate) fn new_kek_spec(secret: &KeySecret, fast: bool) -> Option<KekSpec> {
    match secret {
        KeySecret::None | KeySecret::MasterKey(_) => None,
        KeySecret::KeyFile(_) => Some(KekSpec::KeyFile),
        KeySecret::Passphrase(_) => Some(KekSpec::Argon2id {
            salt: hex::encode(random_bytes::<16>()),
            m_cost: if fast { 1024 } else { 64 * 1024 },
            t_cost: if fast { 1 } else { 3 },
            p_cost: 1,
        }),
    }
}

pub(crate) fn wrap(
    master: &[u8; 32],
    spec: KekSpec,
    secret: &KeySecret,
    aad: &[u8],
) -> Result<WrappedKey> {
    let kek = derive_kek(&spec, secret)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek.as_ref()).expect("32-byte key"));
    let nonce = random_bytes::<12>();
    let mut buf = master.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .expect("sealing 32 bytes cannot fail");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(WrappedKey {
        kek: spec,
        wrapped: hex::encode(out),
    })
}

pub(crate) fn unwrap(
    w: &WrappedKey,
    secret: &KeySecret,
    aad: &[u8],
) -> Result<Zeroizing<[u8; 32]>> {
    let kek = derive_kek(&w.kek, secret)?;
    let raw = hex::decode(&w.wrapped)
        .map_err(|e| Error::corrupt("vault config", format!("wrapped key: {e}")))?;
    if raw.len() != 12 + 32 + 16 {
        return Err(Error::corrupt(
            "vault config",
            "wrapped key has the wrong length",
        ));
    }
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek.as_ref()).expect("32-byte key"));
    let nonce: [u8; 12] = raw[..12].try_into().expect("12 bytes");
    let mut buf = Zeroizing::new(raw[12..].to_vec());
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| Error::WrongKey)?;
    let mut master = Zeroizing::new([0u8; 32]);
    master.copy_from_slice(plain);
    Ok(master)
}
