/// What went wrong reading or writing a vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage layer failed.
    #[error(transparent)]
    Backend(#[from] kura_backend::Error),
    /// The storage holds no vault (no readable `config`).
    #[error("{location} is not a kura vault: {reason}")]
    NotAVault {
        /// Where we looked.
        location: String,
        /// What was missing or wrong.
        reason: String,
    },
    /// A vault already exists there.
    #[error("{location} already holds a kura vault")]
    AlreadyAVault {
        /// Where.
        location: String,
    },
    /// The vault was written by a newer kura.
    #[error("vault format version {found} is not supported (this kura reads version {supported})")]
    UnsupportedVersion {
        /// Version found.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The passphrase or key file does not unlock the vault key.
    #[error("wrong passphrase or key file: the vault key could not be unwrapped")]
    WrongKey,
    /// The vault needs a secret that was not given.
    #[error("this vault is encrypted with a {needed}; provide it")]
    SecretNeeded {
        /// "passphrase" or "key file".
        needed: &'static str,
    },
    /// Stored bytes failed a check (checksum, AEAD tag, id, structure).
    #[error("{object} is corrupt: {reason}")]
    Corrupt {
        /// The object (e.g. `chunk 3fa1…`).
        object: String,
        /// What check failed.
        reason: String,
    },
    /// An object the vault refers to is missing.
    #[error("{object} is missing from the vault")]
    Missing {
        /// The object.
        object: String,
    },
    /// A caller passed an unacceptable value.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field or argument.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// A [`Error::Corrupt`] naming `object`.
    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
