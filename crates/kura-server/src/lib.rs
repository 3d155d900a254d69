//! kura's HTTP API: JSON REST under `/api/v1`, over the same [`Home`] and engine as the CLI.
//!
//! - [`app`] builds the router (shared by `kura server` and the tests);
//! - [`first_start`] prepares a home for serving: the `default` vault (encrypted with a key
//!   file generated in the home) and the admin token;
//! - every route but `/api/v1/openapi.json` and the web UI's sign-in (`POST /api/v1/session`)
//!   needs `Authorization: Bearer TOKEN`, a named token of the home's catalog (stored as a
//!   hash, optionally expiring), or the web UI's session cookie with its CSRF header;
//! - the web UI's files are served at `/` and `/ui/` (see `ui.rs`);
//! - long operations (backup, restore) answer `202 Accepted` with the job id at once;
//! - errors are `{"error": {"code", "message"}}` with a stable code and HTTP status
//!   ([`error::ApiError`]); malformed bodies, wrong types and unknown ids are 4xx, never 5xx.
//!
//! Handlers run the (blocking) engine on tokio's blocking pool. This crate never touches
//! vault storage or the catalog except through the engine.

pub mod config;
pub mod error;
pub mod metrics;
mod openapi;
mod paths;
mod routes;
mod ui;

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
    /// The home (its catalog holds the API tokens).
    pub home: Arc<Home>,
    /// Secrets for vaults (from the server's environment).
    pub secrets: Secrets,
    /// Where requests may read sources and write restores and vaults.
    pub roots: Roots,
    /// Set when the server is stopping: new jobs are refused.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// What the scheduler reports about itself, for `/metrics`.
    pub scheduler: Arc<metrics::SchedulerStats>,
    /// The job queue every job of the API and the scheduler goes through.
    pub queue: Arc<kura_engine::JobQueue>,
    /// Mark the web UI's session cookie `Secure` (the server speaks HTTPS).
    pub secure_cookies: bool,
    /// The NBD exports this server runs for its clients, by id.
    pub exports: Exports,
}

/// The exports a server runs (`POST /items/{item}/exports`).
pub type Exports =
    Arc<std::sync::Mutex<std::collections::HashMap<String, kura_engine::RunningExport>>>;

/// Where the admin token stood before named tokens (a file with its hash); adopted into
/// the token table at the next start and removed.
pub const LEGACY_TOKEN_FILE: &str = "server-token.blake3";

/// What the start did with the admin token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminToken {
    /// Made now; the secret is shown this once.
    New(String),
    /// Set from the value given (`KURA_ADMIN_TOKEN`), replacing any earlier one.
    Given,
    /// The one made earlier.
    Existing,
}

/// Prepares a home for serving: the `default` vault (with `DefaultPolicy` and a key file
/// generated in the home) unless one exists, and the admin token. `admin_token` (from
/// `KURA_ADMIN_TOKEN`) sets the admin token's secret at every start, so automation stays
/// in charge of it; without it, a random one is made at the first start and printed once.
pub fn first_start(
    home: &Home,
    admin_token: Option<&str>,
) -> Result<AdminToken, kura_engine::Error> {
    use kura_engine::tokens::ADMIN_TOKEN;
    if home.vault_info("default").is_err() {
        home.create_vault("default", &CreateVault::default(), &Secrets::default())?;
    }
    let legacy = home.root().join(LEGACY_TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&legacy) {
        let text = text.trim();
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            home.adopt_token_hash(ADMIN_TOKEN, &text.to_ascii_lowercase())?;
        }
        let _ = std::fs::remove_file(&legacy);
    }
    if let Some(t) = admin_token.filter(|t| !t.is_empty()) {
        home.reset_token(ADMIN_TOKEN, Some(t), None)?;
        return Ok(AdminToken::Given);
    }
    if home.list_tokens()?.iter().any(|t| t.name == ADMIN_TOKEN) {
        return Ok(AdminToken::Existing);
    }
    Ok(AdminToken::New(
        home.reset_token(ADMIN_TOKEN, None, None)?.token,
    ))
}

/// The router: `/api/v1/...` plus a JSON 404 for everything else.
pub fn app(state: Arc<AppState>) -> Router {
    routes::router(state)
}
