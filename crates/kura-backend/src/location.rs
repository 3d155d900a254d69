//! Where a vault lives, written as a URL, and the one factory that turns it into a backend.
//!
//! - `file:///srv/kura/v1`, or a plain path: a directory on this host ([`FsBackend`]);
//! - `s3://bucket/prefix`: an S3 bucket (AWS or any S3-compatible server);
//! - `azblob://account/container/prefix`: an Azure Blob container.
//!
//! Credentials never appear in a location: they come from the standard variables of each
//! service when a backend is opened ([`StorageEnv`]), so a catalog that stores locations
//! holds no secret. Nothing above this module knows which service a vault is on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Backend, Error, FsBackend, ObjectBackend, Result};

/// A vault's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on this host (absolute once [`Location::parse`] accepted it).
    Fs(PathBuf),
    /// An S3 bucket, objects under `prefix` (no leading or trailing `/`; may be empty).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix.
        prefix: String,
    },
    /// An Azure Blob container of a storage account, objects under `prefix`.
    Azblob {
        /// Storage account name.
        account: String,
        /// Container name.
        container: String,
        /// Blob name prefix.
        prefix: String,
    },
}

/// Why a location was refused; the message names the part that is wrong.
#[derive(Debug, thiserror::Error)]
#[error("location {location:?}: {reason}")]
pub struct LocationError {
    /// The location as given.
    pub location: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Location {
    /// Parses a location. A string without `scheme://` is a path on this host, made absolute
    /// against the current directory.
    pub fn parse(text: &str) -> std::result::Result<Location, LocationError> {
        let bad = |reason: String| LocationError {
            location: text.to_string(),
            reason,
        };
        let Some((scheme, rest)) = text.split_once("://") else {
            if text.is_empty() {
                return Err(bad("empty".into()));
            }
            return std::path::absolute(text)
                .map(Location::Fs)
                .map_err(|e| bad(e.to_string()));
        };
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(bad(
                        "a file location needs an absolute path (file:///srv/kura/v1)".into(),
                    ));
                }
                Ok(Location::Fs(PathBuf::from(rest)))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                check_bucket(bucket).map_err(|r| bad(format!("bucket {bucket:?}: {r}")))?;
                Ok(Location::S3 {
                    bucket: bucket.to_string(),
                    prefix: check_prefix(prefix).map_err(bad)?,
                })
            }
            "azblob" => {
                let mut parts = rest.splitn(3, '/');
                let account = parts.next().unwrap_or("");
                let container = parts.next().unwrap_or("");
                let prefix = parts.next().unwrap_or("");
                if account.len() < 3
                    || account.len() > 24
                    || !account
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                {
                    return Err(bad(format!(
                        "storage account {account:?}: 3 to 24 lower-case letters and digits \
                         (azblob://ACCOUNT/CONTAINER/PREFIX)"
                    )));
                }
                check_container(container)
                    .map_err(|r| bad(format!("container {container:?}: {r}")))?;
                Ok(Location::Azblob {
                    account: account.to_string(),
                    container: container.to_string(),
                    prefix: check_prefix(prefix).map_err(bad)?,
                })
            }
            other => Err(bad(format!(
                "unknown scheme {other:?}; a location is a path, file:///PATH, \
                 s3://BUCKET/PREFIX or azblob://ACCOUNT/CONTAINER/PREFIX"
            ))),
        }
    }

    /// The directory, for a location on this host.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Location::Fs(p) => Some(p),
            _ => None,
        }
    }

    /// Opens a backend on this location with credentials from `env`. Nothing is created or
    /// written: a directory that is missing is an error, like a bucket that is.
    pub fn open(&self, env: &StorageEnv) -> Result<Arc<dyn Backend>> {
        self.open_with(env, None)
    }

    /// [`Location::open`], with some requests failing on purpose (tests of retries).
    #[cfg(feature = "fault-injection")]
    pub fn open_with_faults(
        &self,
        env: &StorageEnv,
        faults: Arc<crate::Faults>,
    ) -> Result<Arc<dyn Backend>> {
        self.open_with(env, Some(faults))
    }

    fn open_with(
        &self,
        env: &StorageEnv,
        faults: Option<Arc<crate::Faults>>,
    ) -> Result<Arc<dyn Backend>> {
        let storage_err = |message: String| Error::Storage {
            key: self.to_string(),
            op: "open",
            message,
        };
        match self {
            Location::Fs(path) => {
                if !path.is_dir() {
                    return Err(Error::NotFound {
                        key: path.display().to_string(),
                    });
                }
                Ok(Arc::new(FsBackend::open(path)?))
            }
            Location::S3 { bucket, prefix } => {
                let mut b = opendal::services::S3::default()
                    .bucket(bucket)
                    .root(&format!("/{prefix}"));
                if let Some(endpoint) = &env.aws_endpoint {
                    b = b.endpoint(endpoint);
                }
                if let (Some(id), Some(secret)) = (&env.aws_key_id, &env.aws_secret) {
                    b = b.access_key_id(id).secret_access_key(secret);
                    if let Some(token) = &env.aws_session_token {
                        b = b.session_token(token);
                    }
                }
                match (&env.aws_region, &env.aws_endpoint) {
                    (Some(region), _) => b = b.region(region),
                    // An S3-compatible server of one's own rarely has regions.
                    (None, Some(_)) => b = b.region("us-east-1"),
                    (None, None) => {}
                }
                let op = opendal::Operator::new(b).map_err(|e| storage_err(e.to_string()))?;
                Ok(Arc::new(ObjectBackend::new(op, self.to_string(), faults)?))
            }
            Location::Azblob {
                account,
                container,
                prefix,
            } => {
                let endpoint = env
                    .azure_endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
                let mut b = opendal::services::Azblob::default()
                    .account_name(account)
                    .container(container)
                    .endpoint(&endpoint)
                    .root(&format!("/{prefix}"));
                match (&env.azure_key, &env.azure_sas) {
                    (Some(key), _) => b = b.account_key(key),
                    (None, Some(sas)) => b = b.sas_token(sas),
                    (None, None) => {
                        return Err(storage_err(
                            "no credentials: set AZURE_STORAGE_KEY (the account key) or \
                             AZURE_STORAGE_SAS_TOKEN"
                                .into(),
                        ));
                    }
                }
                let op = opendal::Operator::new(b).map_err(|e| storage_err(e.to_string()))?;
                Ok(Arc::new(ObjectBackend::new(op, self.to_string(), faults)?))
            }
        }
    }
}

impl std::fmt::Display for Location {
    /// The form a catalog stores: a plain path for a directory, a URL otherwise.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = |prefix: &str| {
            if prefix.is_empty() {
                String::new()
            } else {
                format!("/{prefix}")
            }
        };
        match self {
            Location::Fs(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}{}", join(prefix)),
            Location::Azblob {
                account,
                container,
                prefix,
            } => write!(f, "azblob://{account}/{container}{}", join(prefix)),
        }
    }
}

/// The settings and credentials of the object stores, read from the standard variables
/// (AWS's and Azure's) when a backend is opened. Secrets stay in memory only.
#[derive(Clone, Default)]
pub struct StorageEnv {
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`: an S3-compatible server.
    pub aws_endpoint: Option<String>,
    /// `AWS_REGION` or `AWS_DEFAULT_REGION`.
    pub aws_region: Option<String>,
    /// `AWS_ACCESS_KEY_ID`; without it (or the secret), the signer's standard chain looks
    /// further (profiles, the shared credentials file, instance metadata).
    pub aws_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub aws_secret: Option<String>,
    /// `AWS_SESSION_TOKEN`.
    pub aws_session_token: Option<String>,
    /// `AZURE_STORAGE_ENDPOINT`: the blob endpoint (Azurite: `http://127.0.0.1:10000/ACCOUNT`).
    pub azure_endpoint: Option<String>,
    /// `AZURE_STORAGE_KEY`: the account key.
    pub azure_key: Option<String>,
    /// `AZURE_STORAGE_SAS_TOKEN`.
    pub azure_sas: Option<String>,
}

impl std::fmt::Debug for StorageEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageEnv")
            .field("aws_endpoint", &self.aws_endpoint)
            .field("aws_region", &self.aws_region)
            .field("aws_key_id", &self.aws_key_id)
            .field("aws_secret", &self.aws_secret.as_ref().map(|_| "<set>"))
            .field(
                "aws_session_token",
                &self.aws_session_token.as_ref().map(|_| "<set>"),
            )
            .field("azure_endpoint", &self.azure_endpoint)
            .field("azure_key", &self.azure_key.as_ref().map(|_| "<set>"))
            .field("azure_sas", &self.azure_sas.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl StorageEnv {
    /// The settings this process was started with.
    pub fn from_process() -> StorageEnv {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        };
        StorageEnv {
            aws_endpoint: var(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]),
            aws_region: var(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
            aws_key_id: var(&["AWS_ACCESS_KEY_ID"]),
            aws_secret: var(&["AWS_SECRET_ACCESS_KEY"]),
            aws_session_token: var(&["AWS_SESSION_TOKEN"]),
            azure_endpoint: var(&["AZURE_STORAGE_ENDPOINT"]),
            azure_key: var(&["AZURE_STORAGE_KEY"]),
            azure_sas: var(&["AZURE_STORAGE_SAS_TOKEN"]),
        }
    }
}

fn check_bucket(b: &str) -> std::result::Result<(), &'static str> {
    if b.len() < 3 || b.len() > 63 {
        return Err("3 to 63 characters (s3://BUCKET/PREFIX)");
    }
    if !b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
    {
        return Err("only lower-case letters, digits, '-' and '.'");
    }
    Ok(())
}

fn check_container(c: &str) -> std::result::Result<(), &'static str> {
    if c.len() < 3 || c.len() > 63 {
        return Err("3 to 63 characters (azblob://ACCOUNT/CONTAINER/PREFIX)");
    }
    if !c
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || c.starts_with('-')
        || c.contains("--")
    {
        return Err("lower-case letters, digits and single '-' inside");
    }
    Ok(())
}

/// A prefix of object keys: segments as strict as keys', no empty one.
fn check_prefix(prefix: &str) -> std::result::Result<String, String> {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Ok(String::new());
    }
    crate::check_key(prefix).map_err(|e| match e {
        Error::InvalidKey { reason, .. } => format!("prefix {prefix:?}: {reason}"),
        e => e.to_string(),
    })?;
    Ok(prefix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_print_back() {
        for text in [
            "s3://kura-vaults",
            "s3://kura-vaults/site-a/v1",
            "azblob://devstoreaccount1/kura/v1",
            "azblob://acct/kura",
            "/srv/kura/v1",
        ] {
            assert_eq!(Location::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            Location::parse("file:///srv/kura").unwrap(),
            Location::Fs("/srv/kura".into())
        );
        assert_eq!(
            Location::parse("s3://b-1/p/").unwrap().to_string(),
            "s3://b-1/p"
        );
        assert!(matches!(Location::parse("rel/dir").unwrap(), Location::Fs(p) if p.is_absolute()));
    }

    #[test]
    fn bad_locations_are_refused_naming_the_part() {
        for (text, says) in [
            ("s3://", "bucket \"\""),
            ("s3://UPPER/x", "bucket \"UPPER\""),
            ("s3://bucket/a/../b", "prefix"),
            ("s3://bucket/a//b", "prefix"),
            ("azblob://acct", "container \"\""),
            ("azblob://Acct/c0ntainer", "storage account"),
            ("azblob://acct/a--b", "container"),
            ("gs://bucket", "unknown scheme \"gs\""),
            ("file://relative", "absolute"),
            ("", "empty"),
        ] {
            let e = Location::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn credentials_are_not_printed() {
        let env = StorageEnv {
            azure_key: Some("secret-key".into()),
            aws_secret: Some("secret-key".into()),
            ..StorageEnv::default()
        };
        assert!(!format!("{env:?}").contains("secret-key"));
    }
}
