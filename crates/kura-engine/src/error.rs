/// What kind of failure, for callers that branch (exit codes, HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Unknown vault, item, recovery point, job or path.
    NotFound,
    /// The target already exists.
    AlreadyExists,
    /// The request is malformed or not allowed.
    Invalid,
    /// The object's state forbids it (e.g. a job already running).
    Conflict,
    /// Stored data failed a check.
    Corrupt,
    /// The key or passphrase is wrong or missing.
    Key,
    /// The job was cancelled (`kura job cancel`, or the server stopping).
    Cancelled,
    /// Anything else (I/O, tools).
    Other,
}

impl ErrorKind {
    /// The stable snake_case code the CLI and the API report for this kind.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Key => "key",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Other => "error",
        }
    }
}

/// An engine error: a message naming the object, and a kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the store.
    #[error(transparent)]
    Store(#[from] kura_store::Error),
    /// From the catalog.
    #[error(transparent)]
    Catalog(#[from] kura_catalog::Error),
    /// From a source.
    #[error(transparent)]
    Source(#[from] kura_source::Error),
    /// From a backend.
    #[error(transparent)]
    Backend(#[from] kura_backend::Error),
    /// A policy document with wrong fields (each named by its path).
    #[error(transparent)]
    Policy(#[from] kura_policy::PolicyError),
    /// Anything else, with its kind.
    #[error("{message}")]
    Other {
        /// Kind.
        kind: ErrorKind,
        /// Message naming the object.
        message: String,
    },
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error::Other {
            kind,
            message: message.into(),
        }
    }

    /// The target exists already (for callers outside the engine that check first).
    pub fn already_exists(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::AlreadyExists, message)
    }

    /// A request field is not valid (for callers outside the engine that check first).
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Invalid, message)
    }

    /// Something named does not exist (for callers outside the engine that check first).
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }

    /// The work stopped because its job was cancelled.
    pub(crate) fn cancelled() -> Self {
        Error::new(ErrorKind::Cancelled, "the job was cancelled")
    }

    pub(crate) fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            _ => ErrorKind::Other,
        };
        Error::new(kind, format!("{what}: {e}"))
    }

    /// The fields a request got wrong, each with its path and message, when the error is
    /// about fields of a document (a policy); empty otherwise.
    pub fn fields(&self) -> Vec<(String, String)> {
        match self {
            Error::Policy(p) => p
                .errors
                .iter()
                .map(|e| (e.field.clone(), e.message.clone()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        use kura_store::Error as S;
        match self {
            Error::Policy(_) => ErrorKind::Invalid,
            Error::Store(S::NotAVault { .. } | S::Missing { .. }) => ErrorKind::NotFound,
            Error::Store(S::AlreadyAVault { .. }) => ErrorKind::AlreadyExists,
            Error::Store(S::WrongKey | S::SecretNeeded { .. }) => ErrorKind::Key,
            Error::Store(S::Corrupt { .. } | S::UnsupportedVersion { .. }) => ErrorKind::Corrupt,
            Error::Store(S::Invalid { .. }) => ErrorKind::Invalid,
            Error::Store(S::Backend(b)) | Error::Backend(b) => match b {
                kura_backend::Error::NotFound { .. } => ErrorKind::NotFound,
                _ => ErrorKind::Other,
            },
            Error::Store(_) => ErrorKind::Other,
            Error::Catalog(c) => match c {
                kura_catalog::Error::NotFound { .. } => ErrorKind::NotFound,
                kura_catalog::Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
                kura_catalog::Error::Ambiguous { .. } => ErrorKind::Invalid,
                kura_catalog::Error::Conflict(_) => ErrorKind::Conflict,
                _ => ErrorKind::Other,
            },
            Error::Source(kura_source::Error::NotFound { .. }) => ErrorKind::NotFound,
            Error::Source(kura_source::Error::Invalid(_)) => ErrorKind::Invalid,
            Error::Source(kura_source::Error::Changed { .. }) => ErrorKind::Conflict,
            Error::Source(_) => ErrorKind::Other,
            Error::Other { kind, .. } => *kind,
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
