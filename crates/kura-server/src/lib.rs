//! kura's HTTP API: JSON REST under `/api/v1`, over the same [`Home`] and engine as the CLI.
//!
//! - [`app`] builds the router (shared by `kura server` and the tests);
//! - [`first_start`] prepares a home for serving: the `default` vault (encrypted with a key
//!   file generated in the home) and the admin token, stored only as a hash;
//! - every route but `/api/v1/openapi.json` needs `Authorization: Bearer TOKEN`;
//! - long operations (backup, restore) answer `202 Accepted` with the job id at once;
//! - errors are `{"error": {"code", "message"}}` with a stable code and HTTP status
//!   ([`error::ApiError`]); malformed bodies, wrong types and unknown ids are 4xx, never 5xx.
//!
//! Handlers run the (blocking) engine on tokio's blocking pool. This crate never touches
//! vault storage or the catalog except through the engine.

pub mod error;
mod openapi;
mod paths;
mod routes;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use kura_engine::{CreateVault, Home, Secrets};

pub use openapi::openapi;
pub use paths::{LIBVIRT_IMAGES, Roots};
#[cfg(feature = "fuzzing")]
pub use routes::fuzz_bodies;
pub use routes::{ROUTES, Route};

/// Shared state of the server.
pub struct AppState {
    /// The home.
    pub home: Arc<Home>,
    /// BLAKE3 of the admin token.
    pub token_hash: [u8; 32],
    /// Secrets for vaults (from the server's environment).
    pub secrets: Secrets,
    /// Where requests may read sources and write restores and vaults.
    pub roots: Roots,
}

/// File in the home that holds the admin token's hash.
pub const TOKEN_FILE: &str = "server-token.blake3";

/// Prepares a home for serving. On the first start it creates the `default` vault (with
/// `DefaultPolicy` and a generated key file) unless one exists, and the admin token: the
/// value of `admin_token` when given (for automation), a random one otherwise. Returns the
/// token hash and, on the first start, the token itself (print it once: only its hash is
/// stored).
pub fn first_start(
    home: &Home,
    admin_token: Option<&str>,
) -> Result<([u8; 32], Option<String>), kura_engine::Error> {
    if home.vault_info("default").is_err() {
        home.create_vault("default", &CreateVault::default(), &Secrets::default())?;
    }
    let path = home.root().join(TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut hash = [0u8; 32];
        if hex::decode_to_slice(text.trim(), &mut hash).is_ok() {
            return Ok((hash, None));
        }
    }
    let token = match admin_token.filter(|t| !t.is_empty()) {
        Some(t) => t.to_string(),
        None => {
            // 32 bytes from the operating system's random source, as hex.
            let text = kura_store::keys::generate_key_file();
            let hex_text = String::from_utf8_lossy(&text).trim().to_string();
            format!("kura_{hex_text}")
        }
    };
    let hash = *blake3::hash(token.as_bytes()).as_bytes();
    write_token_hash(&path, &hash).map_err(|e| {
        kura_engine::Error::from(kura_catalog::Error::Conflict(format!(
            "cannot write {}: {e}",
            path.display()
        )))
    })?;
    Ok((hash, Some(token)))
}

fn write_token_hash(path: &Path, hash: &[u8; 32]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{}\n", hex::encode(hash)).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The router: `/api/v1/...` plus a JSON 404 for everything else.
pub fn app(state: Arc<AppState>) -> Router {
    routes::router(state)
}
