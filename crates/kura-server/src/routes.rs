//! Routes mirror URLs. One table ([`ROUTES`]) drives both the router and the OpenAPI
//! document, so they cannot drift apart.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use axum::{Json, Router};
use kura_engine::{BackupOptions, PolicySource, RestoreFormat, RestoreOptions};
use serde::de::DeserializeOwned;
use serde_json::Value;

use kura_api as api;
use kura_api::convert::list;
use kura_api::response::JobOperation;

use crate::AppState;
use crate::error::ApiError;

/// Makes the JSON schema of a type, registering what it refers to in the document's
/// components.
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// The [`SchemaFn`] of `T`.
fn schema<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

/// The answer of a download: bytes, not JSON (the document says `application/octet-stream`).
pub(crate) fn binary(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "format": "binary"})
}

/// One API route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path with `{param}` segments.
    pub path: &'static str,
    /// OpenAPI operation id; also selects the handler.
    pub operation: &'static str,
    /// One line for the document.
    pub summary: &'static str,
    /// Success status.
    pub success: u16,
    /// The JSON body it takes, if any.
    pub request: Option<SchemaFn>,
    /// The body of its success answer.
    pub response: SchemaFn,
    /// Its query string, if it reads one.
    pub query: Option<SchemaFn>,
}

#[allow(clippy::too_many_arguments)]
const fn r(
    method: &'static str,
    path: &'static str,
    operation: &'static str,
    summary: &'static str,
    success: u16,
    request: Option<SchemaFn>,
    response: SchemaFn,
    query: Option<SchemaFn>,
) -> Route {
    Route {
        method,
        path,
        operation,
        summary,
        success,
        request,
        response,
        query,
    }
}

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    r(
        "GET",
        "/api/v1/openapi.json",
        "getOpenApi",
        "This document",
        200,
        None,
        schema::<Value>,
        None,
    ),
    r(
        "GET",
        "/api/v1/vaults",
        "listVaults",
        "List vaults",
        200,
        None,
        schema::<Vec<api::Vault>>,
        None,
    ),
    r(
        "POST",
        "/api/v1/vaults",
        "createVault",
        "Create a vault",
        201,
        Some(schema::<api::NewVault>),
        schema::<api::Vault>,
        None,
    ),
    r(
        "GET",
        "/api/v1/vaults/{vault}",
        "getVault",
        "Show a vault",
        200,
        None,
        schema::<api::Vault>,
        None,
    ),
    r(
        "GET",
        "/api/v1/vaults/{vault}/trend",
        "getVaultTrend",
        "A vault's stored size over time and its estimated full date",
        200,
        None,
        schema::<api::VaultTrend>,
        None,
    ),
    r(
        "PATCH",
        "/api/v1/vaults/{vault}",
        "updateVault",
        "Change soft-delete settings",
        200,
        Some(schema::<api::VaultSettings>),
        schema::<api::Vault>,
        None,
    ),
    r(
        "GET",
        "/api/v1/vaults/{vault}/policies",
        "listPolicies",
        "List a vault's policies",
        200,
        None,
        schema::<Vec<api::Policy>>,
        None,
    ),
    r(
        "POST",
        "/api/v1/vaults/{vault}/policies",
        "createPolicy",
        "Create a policy",
        201,
        Some(schema::<kura_policy::PolicyDoc>),
        schema::<api::Policy>,
        None,
    ),
    r(
        "GET",
        "/api/v1/vaults/{vault}/policies/{policy}",
        "getPolicy",
        "Show a policy",
        200,
        None,
        schema::<api::Policy>,
        None,
    ),
    r(
        "PUT",
        "/api/v1/vaults/{vault}/policies/{policy}",
        "updatePolicy",
        "Replace a policy and re-apply retention",
        200,
        Some(schema::<kura_policy::PolicyDoc>),
        schema::<api::PolicyUpdated>,
        None,
    ),
    r(
        "DELETE",
        "/api/v1/vaults/{vault}/policies/{policy}",
        "deletePolicy",
        "Delete an unused policy",
        200,
        None,
        schema::<api::PolicyDeleted>,
        None,
    ),
    r(
        "POST",
        "/api/v1/vaults/{vault}/policies/{policy}/simulate",
        "simulatePolicy",
        "Preview a policy",
        200,
        Some(schema::<api::Simulate>),
        schema::<api::Simulation>,
        None,
    ),
    r(
        "GET",
        "/api/v1/items",
        "listItems",
        "List protected items",
        200,
        None,
        schema::<Vec<api::Item>>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items",
        "protectItem",
        "Protect a disk image",
        201,
        Some(schema::<api::Protect>),
        schema::<api::Item>,
        None,
    ),
    r(
        "GET",
        "/api/v1/items/{item}",
        "getItem",
        "Protection state and health of an item",
        200,
        None,
        schema::<api::Item>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/stop",
        "stopProtection",
        "Stop protection, keeping or deleting data",
        200,
        Some(schema::<api::Stop>),
        schema::<api::Item>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/resume",
        "resumeProtection",
        "Resume protection with a policy",
        200,
        Some(schema::<api::Resume>),
        schema::<api::Item>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/policy",
        "setItemPolicy",
        "Move a protected item to another policy of its vault",
        200,
        Some(schema::<api::SetPolicy>),
        schema::<api::Item>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/undelete",
        "undeleteItem",
        "Undelete a soft-deleted item",
        200,
        None,
        schema::<api::Item>,
        None,
    ),
    r(
        "GET",
        "/api/v1/items/{item}/precheck",
        "precheckItem",
        "Whether a backup could run now (vault secrets, source), touching nothing",
        200,
        None,
        schema::<api::Precheck>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/format",
        "setItemFormat",
        "Pin a new format or accept a changed backing chain: {\"format\"?}",
        200,
        Some(schema::<api::SetFormat>),
        schema::<api::Item>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/backups",
        "backupNow",
        "Start an on-demand backup",
        202,
        Some(schema::<api::BackupNow>),
        schema::<api::JobAccepted>,
        None,
    ),
    r(
        "GET",
        "/api/v1/items/{item}/recovery-points",
        "listRecoveryPoints",
        "List recovery points",
        200,
        None,
        schema::<Vec<api::RecoveryPoint>>,
        None,
    ),
    r(
        "GET",
        "/api/v1/items/{item}/recovery-points/{rp}",
        "getRecoveryPoint",
        "A recovery point's manifest: disks, consistency, retention, definition",
        200,
        None,
        schema::<api::RecoveryPointDetail>,
        None,
    ),
    r(
        "GET",
        "/api/v1/items/{item}/retention-plan",
        "retentionPlan",
        "What retention would remove",
        200,
        None,
        schema::<api::RetentionPlan>,
        Some(schema::<api::At>),
    ),
    r(
        "POST",
        "/api/v1/items/{item}/restores",
        "restoreDisk",
        "Start a restore to a new image",
        202,
        Some(schema::<api::Restore>),
        schema::<api::JobAccepted>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/agent",
        "setAgent",
        "Set a VM item's guest-agent settings (the socket under a source root)",
        200,
        Some(schema::<api::SetAgent>),
        schema::<api::Item>,
        None,
    ),
    r(
        "GET",
        "/api/v1/items/{item}/recovery-points/{rp}/volumes",
        "listVolumes",
        "The partitions of a point's disk and the file system each holds",
        200,
        None,
        schema::<api::PointVolumes>,
        Some(schema::<api::DiskQuery>),
    ),
    r(
        "GET",
        "/api/v1/items/{item}/recovery-points/{rp}/files",
        "listFiles",
        "A directory of a point's file system (or one entry), read from the chunks it needs",
        200,
        None,
        schema::<api::FileListing>,
        Some(schema::<api::FilesQuery>),
    ),
    r(
        "GET",
        "/api/v1/items/{item}/recovery-points/{rp}/download",
        "downloadFiles",
        "A file of a point (its contents), or a directory as a tar archive",
        200,
        None,
        binary,
        Some(schema::<api::FilesQuery>),
    ),
    r(
        "POST",
        "/api/v1/items/{item}/exports",
        "startExport",
        "Serve a point's disk read-only over NBD for a while",
        201,
        Some(schema::<api::NewExport>),
        schema::<api::Export>,
        None,
    ),
    r(
        "GET",
        "/api/v1/exports",
        "listExports",
        "The NBD exports running on this home",
        200,
        None,
        schema::<Vec<api::Export>>,
        None,
    ),
    r(
        "DELETE",
        "/api/v1/exports/{export}",
        "stopExport",
        "End an export this server runs: its clients are cut off",
        200,
        None,
        schema::<api::ExportStopped>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/file-restores",
        "restoreFiles",
        "Start a restore of files and directories of a point into a directory",
        202,
        Some(schema::<api::RestoreFiles>),
        schema::<api::JobAccepted>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/disk-restores",
        "restoreDisks",
        "Start a restore of all (or some) disks of a point into a directory, one file per disk",
        202,
        Some(schema::<api::RestoreDisks>),
        schema::<api::JobAccepted>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/vm-restores",
        "restoreVm",
        "Start a VM restore: as a new VM (`as_new`, `to`, `start`) or over the VM's disks (`replace`, `stop`)",
        202,
        Some(schema::<api::RestoreVm>),
        schema::<api::JobAccepted>,
        None,
    ),
    r(
        "GET",
        "/api/v1/jobs",
        "listJobs",
        "The latest jobs, newest first; ?item=, ?status=, ?operation= filter, ?limit= caps (100)",
        200,
        None,
        schema::<Vec<api::Job>>,
        Some(schema::<api::JobFilter>),
    ),
    r(
        "GET",
        "/api/v1/jobs/{job}",
        "getJob",
        "One job with its log",
        200,
        None,
        schema::<api::Job>,
        None,
    ),
    r(
        "GET",
        "/api/v1/tokens",
        "listTokens",
        "API tokens (names, dates, last use; never secrets)",
        200,
        None,
        schema::<Vec<api::Token>>,
        None,
    ),
    r(
        "POST",
        "/api/v1/tokens",
        "createToken",
        "Make a named token; its secret is in this answer only",
        201,
        Some(schema::<api::NewTokenRequest>),
        schema::<api::NewToken>,
        None,
    ),
    r(
        "DELETE",
        "/api/v1/tokens/{name}",
        "revokeToken",
        "Revoke a token",
        200,
        None,
        schema::<api::Revoked>,
        None,
    ),
    r(
        "POST",
        "/api/v1/tokens/{name}/reset",
        "resetToken",
        "Give a token a new secret, shown in this answer only",
        200,
        Some(schema::<api::ResetToken>),
        schema::<api::NewToken>,
        None,
    ),
    r(
        "POST",
        "/api/v1/jobs/{job}/cancel",
        "cancelJob",
        "Cancel a backup during its snapshot phase",
        200,
        None,
        schema::<api::Job>,
        None,
    ),
    r(
        "POST",
        "/api/v1/vaults/attach",
        "attachVault",
        "Register an existing vault directory and rebuild its catalog entries",
        201,
        Some(schema::<api::Attach>),
        schema::<api::Attached>,
        None,
    ),
    r(
        "POST",
        "/api/v1/policy-simulations",
        "simulateDocument",
        "Preview a policy document that is not stored: its runs and what survives",
        200,
        Some(schema::<api::SimulateDocument>),
        schema::<api::Simulation>,
        None,
    ),
    r(
        "POST",
        "/api/v1/session",
        "createSession",
        "Sign in to the web UI: a token's secret for an HttpOnly session cookie",
        201,
        Some(schema::<api::NewSession>),
        schema::<api::Session>,
        None,
    ),
    r(
        "GET",
        "/api/v1/session",
        "getSession",
        "The session of the request's cookie",
        200,
        None,
        schema::<api::Session>,
        None,
    ),
    r(
        "DELETE",
        "/api/v1/session",
        "deleteSession",
        "Sign out: end the session and clear its cookie",
        200,
        None,
        schema::<api::SignedOut>,
        None,
    ),
    r(
        "GET",
        "/api/v1/vaults/{vault}/key",
        "exportKey",
        "The vault's wrapped data key, for escrow",
        200,
        None,
        schema::<api::WrappedKey>,
        None,
    ),
    r(
        "POST",
        "/api/v1/verify",
        "verify",
        "Re-read and check chunks of a vault, item or recovery point",
        202,
        Some(schema::<api::Verify>),
        schema::<api::JobAccepted>,
        None,
    ),
    r(
        "POST",
        "/api/v1/vaults/{vault}/gc",
        "collectGarbage",
        "Remove unreferenced chunks",
        202,
        Some(schema::<api::Gc>),
        schema::<api::JobAccepted>,
        None,
    ),
    r(
        "POST",
        "/api/v1/vaults/{vault}/replicate",
        "replicateVault",
        "Copy a geo-redundant vault's new points to its replica now",
        202,
        None,
        schema::<api::JobAccepted>,
        None,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/retention",
        "applyRetention",
        "Remove the recovery points retention marks for deletion",
        200,
        Some(schema::<api::RetentionApply>),
        schema::<api::RetentionPlan>,
        None,
    ),
    r(
        "GET",
        "/api/v1/usage",
        "getUsage",
        "Usage per vault and item",
        200,
        None,
        schema::<Vec<api::VaultUsage>>,
        Some(schema::<api::UsageFilter>),
    ),
];

type S = Arc<AppState>;
type ApiResult = Result<Response, ApiError>;

/// Requires `Authorization: Bearer TOKEN` with a known, unexpired token, or the web UI's
/// session cookie; a request with the cookie that changes something (any method but GET and
/// HEAD) must also carry the session's CSRF value in `X-CSRF-Token`. Holds the session,
/// when the cookie was used.
pub struct Auth(Option<kura_catalog::SessionRow>);

/// Where the request log finds the name of the token a request presented.
#[derive(Clone, Default)]
pub(crate) struct TokenSlot(pub(crate) Arc<std::sync::Mutex<Option<String>>>);

/// The web UI's session cookie.
const SESSION_COOKIE: &str = "kura_session";

/// The value of the session cookie, if the request has one.
fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

impl FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let refused = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token (or a web UI session) is required",
            )
        };
        let st = state.clone();
        let (name, session) = match (bearer, session_cookie(&parts.headers)) {
            (Some(token), _) => {
                let row = blocking(move || Ok(st.home.authenticate(&token)?)).await?;
                (row.ok_or_else(refused)?.name, None)
            }
            (None, Some(id)) => {
                let row = blocking(move || Ok(st.home.session(&id)?))
                    .await?
                    .ok_or_else(refused)?;
                let safe = matches!(parts.method.as_str(), "GET" | "HEAD");
                let echoed = parts
                    .headers
                    .get("x-csrf-token")
                    .and_then(|v| v.to_str().ok());
                if !safe && echoed.map(str::as_bytes) != Some(row.csrf.as_bytes()) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "csrf",
                        "a request with the session cookie that changes something must carry the session's X-CSRF-Token",
                    ));
                }
                (row.token_name.clone(), Some(row))
            }
            (None, None) => return Err(refused()),
        };
        if let Some(slot) = parts.extensions.get::<TokenSlot>() {
            *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(name);
        }
        Ok(Auth(session))
    }
}

/// A JSON body whose rejections (malformed JSON, wrong types, missing fields) are API errors.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::invalid(format!("unreadable body: {e}")))?;
        parse_body(&bytes).map(Body)
    }
}

/// A query string whose rejections (`?limit=abc`, unknown parameters) are API errors in the
/// same envelope as everything else, naming the parameter.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or("")).map(Params)
    }
}

fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            String::new()
        } else {
            format!("query parameter {path}: ")
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("{field}{}", e.into_inner()),
        )
    })
}

/// A request body as `T`; an empty body is `{}`. Errors name the field.
fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { bytes };
    // Serde would read a struct from an array of its fields too (`[null, null]`); every
    // body is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("{field}{}", e.into_inner()),
        )
    })
}

/// Fuzz harness (feature `fuzzing`): any bytes as the body of every route that takes one
/// give a value or a 400, never a panic.
#[cfg(feature = "fuzzing")]
pub fn fuzz_bodies(data: &[u8]) {
    let _ = parse_body::<api::NewVault>(data);
    let _ = parse_body::<api::VaultSettings>(data);
    let _ = parse_body::<api::Simulate>(data);
    let _ = parse_body::<api::Protect>(data);
    let _ = parse_body::<api::Stop>(data);
    let _ = parse_body::<api::Resume>(data);
    let _ = parse_body::<api::SetPolicy>(data);
    let _ = parse_body::<api::BackupNow>(data);
    let _ = parse_body::<api::Restore>(data);
    let _ = parse_body::<api::RestoreDisks>(data);
    let _ = parse_body::<api::RestoreFiles>(data);
    let _ = parse_body::<api::NewExport>(data);
    let _ = parse_body::<api::RestoreVm>(data);
    let _ = parse_body::<api::SetAgent>(data);
    let _ = parse_body::<api::At>(data);
    let _ = parse_body::<api::JobFilter>(data);
    let _ = parse_body::<api::Verify>(data);
    let _ = parse_body::<api::Gc>(data);
    let _ = parse_body::<api::RetentionApply>(data);
    let _ = parse_body::<api::Attach>(data);
    let _ = parse_body::<api::SetFormat>(data);
    let _ = parse_body::<api::NewTokenRequest>(data);
    let _ = parse_body::<api::ResetToken>(data);
    let _ = parse_body::<serde_json::Value>(data)
        .map(|v| kura_policy::Policy::parse(v.to_string().as_bytes()));
}

/// Runs blocking engine work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

fn ok(status: u16, v: impl serde::Serialize) -> ApiResult {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok((status, Json(serde_json::to_value(v).unwrap_or(Value::Null))).into_response())
}

// ---- vaults

async fn list_vaults(_: Auth, State(s): State<S>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(list::<_, api::Vault>(s.home.list_vaults()?))).await?,
    )
}

async fn create_vault(_: Auth, State(s): State<S>, Body(b): Body<api::NewVault>) -> ApiResult {
    let location = checked_location(&s, b.path.as_deref(), b.location.as_deref())?;
    let (replica, geo) =
        match kura_engine::requested_replica(b.redundancy.as_deref(), b.replica.as_deref())
            .map_err(ApiError::from)?
        {
            Some((kura_engine::Location::Fs(dir), geo)) => (
                Some(kura_engine::Location::Fs(
                    s.roots.restore("replica", &dir.to_string_lossy())?,
                )),
                geo,
            ),
            Some((remote, geo)) => (Some(remote), geo),
            None => (None, false),
        };
    let v = blocking(move || {
        let opts = kura_engine::CreateVault {
            location,
            replica,
            geo,
            chunk_size: b.chunk_size,
            no_encryption: b.no_encryption,
            ..Default::default()
        };
        Ok(api::Vault::from(
            s.home.create_vault(&b.name, &opts, &s.secrets)?,
        ))
    })
    .await?;
    ok(201, v)
}

async fn get_vault(_: Auth, State(s): State<S>, Path(vault): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(api::Vault::from(s.home.vault_info(&vault)?))).await?,
    )
}

async fn update_vault(
    _: Auth,
    State(s): State<S>,
    Path(vault): Path<String>,
    Body(b): Body<api::VaultSettings>,
) -> ApiResult {
    let replica = match b.replica.as_deref() {
        Some(r) if !r.contains("://") => Some(
            s.roots
                .restore("replica", r)?
                .to_string_lossy()
                .into_owned(),
        ),
        other => other.map(str::to_string),
    };
    let v = blocking(move || {
        s.home.update_vault(
            &vault,
            b.soft_delete.as_deref(),
            b.soft_delete_days,
            b.redundancy.as_deref(),
            replica.as_deref(),
        )?;
        Ok(api::Vault::from(s.home.vault_info(&vault)?))
    })
    .await?;
    ok(200, v)
}

// ---- policies

async fn list_policies(_: Auth, State(s): State<S>, Path(vault): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(list::<_, api::Policy>(s.home.list_policies(&vault)?))).await?,
    )
}

async fn create_policy(
    _: Auth,
    State(s): State<S>,
    Path(vault): Path<String>,
    Body(doc): Body<Value>,
) -> ApiResult {
    ok(
        201,
        blocking(move || {
            Ok(api::Policy::from(
                s.home.create_policy(&vault, doc.to_string().as_bytes())?,
            ))
        })
        .await?,
    )
}

async fn get_policy(
    _: Auth,
    State(s): State<S>,
    Path((vault, policy)): Path<(String, String)>,
) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(api::Policy::from(s.home.policy(&vault, &policy)?))).await?,
    )
}

async fn update_policy(
    _: Auth,
    State(s): State<S>,
    Path((vault, policy)): Path<(String, String)>,
    Body(doc): Body<Value>,
) -> ApiResult {
    let (p, changed) = blocking(move || {
        Ok(s.home
            .update_policy(&vault, &policy, doc.to_string().as_bytes())?)
    })
    .await?;
    ok(
        200,
        api::PolicyUpdated {
            policy: p.into(),
            recovery_points_updated: changed,
        },
    )
}

async fn delete_policy(
    _: Auth,
    State(s): State<S>,
    Path((vault, policy)): Path<(String, String)>,
) -> ApiResult {
    let name = format!("{vault}/{policy}");
    blocking(move || Ok(s.home.delete_policy(&vault, &policy)?)).await?;
    ok(200, api::PolicyDeleted { deleted: name })
}

async fn simulate_policy(
    _: Auth,
    State(s): State<S>,
    Path((vault, name)): Path<(String, String)>,
    Body(b): Body<api::Simulate>,
) -> ApiResult {
    let from: jiff::civil::Date = b.from.parse().map_err(|e| {
        ApiError::invalid(format!(
            "from: {:?} is not a date (YYYY-MM-DD): {e}",
            b.from
        ))
    })?;
    let sim = blocking(move || {
        Ok(s.home
            .simulate_policy(&PolicySource::Stored { vault, name }, from, b.days)?)
    })
    .await?;
    ok(200, api::Simulation::from(sim))
}

async fn simulate_document(
    _: Auth,
    State(s): State<S>,
    Body(b): Body<api::SimulateDocument>,
) -> ApiResult {
    let from: jiff::civil::Date = b.from.parse().map_err(|e| {
        ApiError::invalid(format!(
            "from: {:?} is not a date (YYYY-MM-DD): {e}",
            b.from
        ))
    })?;
    let doc = b.policy.to_string().into_bytes();
    let sim = blocking(move || {
        Ok(s.home
            .simulate_policy(&PolicySource::Document(doc), from, b.days)?)
    })
    .await?;
    ok(200, api::Simulation::from(sim))
}

// ---- items

async fn list_items(_: Auth, State(s): State<S>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(list::<_, api::Item>(s.home.list_item_status()?))).await?,
    )
}

async fn protect_item(_: Auth, State(s): State<S>, Body(b): Body<api::Protect>) -> ApiResult {
    if !matches!(b.kind.as_str(), "disk" | "vm" | "files") {
        return Err(ApiError::invalid(format!(
            "kind: {:?} is not supported; use \"disk\", \"vm\" or \"files\"",
            b.kind
        )));
    }
    if b.kind != "files" && !b.exclude.is_empty() {
        return Err(ApiError::invalid(
            "exclude: only file items take exclude patterns (VMs: exclude_disks)",
        ));
    }
    if b.kind != "files" && b.snapshot.is_some() {
        return Err(ApiError::invalid(
            "snapshot: only file items take a snapshot option",
        ));
    }
    // A VM's source is its QMP socket: it too must lie under a source root. A libvirt
    // domain's disks are whatever its definition says, as for `virsh` users.
    let link = match (&b.source, &b.libvirt, b.kind.as_str()) {
        (Some(src), None, _) => kura_engine::VmLink::Qmp(s.roots.source("source", src)?),
        (None, Some(d), "vm") => kura_engine::VmLink::Libvirt(
            kura_engine::Domain::new(&d.name, d.uri.as_deref())
                .map_err(|e| ApiError::invalid(format!("libvirt.name: {e}")))?,
        ),
        _ => {
            return Err(ApiError::invalid(
                "give source (a disk image, or a VM's QMP socket), or for a VM libvirt {\"name\", \"uri\"?}",
            ));
        }
    };
    if b.kind == "vm" {
        let qga = match &b.qga {
            Some(q) => Some(s.roots.source("qga", q)?.display().to_string()),
            None => None,
        };
        let agent = kura_engine::AgentOptions {
            qga,
            require: b.require_agent,
            pre_script: b.pre_script.clone(),
            post_script: b.post_script.clone(),
        };
        let item = blocking(move || {
            let row = s.home.protect_vm(
                &link,
                &b.vault,
                b.name.as_deref(),
                b.policy.as_deref(),
                &b.exclude_disks,
                &agent,
                &s.secrets,
            )?;
            Ok(api::Item::from(s.home.item_status(&row.name)?))
        })
        .await?;
        return ok(201, item);
    }
    let kura_engine::VmLink::Qmp(path) = link else {
        return Err(ApiError::invalid(
            "libvirt: only VM items are libvirt domains",
        ));
    };
    if b.kind == "files" {
        let item = blocking(move || {
            let row = s.home.protect_files(
                &path,
                &b.vault,
                b.name.as_deref(),
                b.policy.as_deref(),
                &b.exclude,
                kura_engine::tree_snapshot(b.snapshot.as_deref())?,
                &s.secrets,
            )?;
            Ok(api::Item::from(s.home.item_status(&row.name)?))
        })
        .await?;
        return ok(201, item);
    }
    let item = blocking(move || {
        let row = s.home.protect_disk(
            &path,
            &b.vault,
            b.name.as_deref(),
            b.policy.as_deref(),
            b.format.as_deref(),
            &s.secrets,
        )?;
        Ok(api::Item::from(s.home.item_status(&row.name)?))
    })
    .await?;
    ok(201, item)
}

async fn get_item(_: Auth, State(s): State<S>, Path(item): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(api::Item::from(s.home.item_show(&item)?))).await?,
    )
}

async fn stop_protection(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::Stop>,
) -> ApiResult {
    ok(
        200,
        blocking(move || {
            Ok(api::Item::from(s.home.stop_protection(
                &item,
                b.delete_data,
                &s.secrets,
                s.home.now(),
            )?))
        })
        .await?,
    )
}

async fn set_item_policy(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::SetPolicy>,
) -> ApiResult {
    ok(
        200,
        blocking(move || {
            Ok(api::Item::from(
                s.home.change_policy(&item, &b.policy, &s.secrets)?,
            ))
        })
        .await?,
    )
}

async fn resume_protection(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::Resume>,
) -> ApiResult {
    ok(
        200,
        blocking(move || {
            Ok(api::Item::from(
                s.home.resume_protection(&item, &b.policy, &s.secrets)?,
            ))
        })
        .await?,
    )
}

async fn precheck_item(_: Auth, State(s): State<S>, Path(item): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(api::Precheck::from(s.home.precheck(&item, &s.secrets)?))).await?,
    )
}

async fn set_item_format(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::SetFormat>,
) -> ApiResult {
    let st = blocking(move || {
        s.home
            .set_item_format(&item, b.format.as_deref(), &s.secrets)?;
        Ok(api::Item::from(s.home.item_status(&item)?))
    })
    .await?;
    ok(200, st)
}

async fn undelete_item(_: Auth, State(s): State<S>, Path(item): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(api::Item::from(s.home.undelete(&item, &s.secrets)?))).await?,
    )
}

/// New jobs are refused once the server is stopping.
fn refuse_when_stopping(s: &AppState) -> Result<(), ApiError> {
    if s.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the server is stopping and takes no new jobs",
        ));
    }
    Ok(())
}

/// Queues the job (after `check`) and answers 202 with its id; the server's queue runs the
/// work when a slot is free.
async fn start_job(
    s: S,
    operation: JobOperation,
    target: String,
    exclusive: bool,
    check: impl FnOnce(&AppState) -> Result<(), kura_engine::Error> + Send + 'static,
    work: impl FnOnce(&AppState, String) -> Result<(), kura_engine::Error> + Send + 'static,
) -> ApiResult {
    refuse_when_stopping(&s)?;
    let id = blocking(move || {
        check(&s)?;
        let st = s.clone();
        Ok(s.queue.submit(
            &s.home,
            kura_engine::JobRequest {
                operation,
                target,
                exclusive,
                work: Box::new(move |_, id| work(&st, id.to_string())),
            },
        )?)
    })
    .await?;
    ok(
        202,
        api::JobAccepted {
            job_id: id,
            status: api::JobStatus::Queued,
        },
    )
}

/// The item exists and has the recovery point `rp` (an id, a unique prefix or `latest`);
/// checked before a restore job is handed out.
fn point_exists(
    item: String,
    rp: String,
) -> impl FnOnce(&AppState) -> Result<(), kura_engine::Error> + Send + 'static {
    move |st| {
        let row = st.home.item(&item)?;
        st.home.resolve_rp(&row, &rp).map(|_| ())
    }
}

async fn backup_now(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::BackupNow>,
) -> ApiResult {
    let target = item.clone();
    let checked = item.clone();
    let retain_until = b.retain_until.clone();
    start_job(
        s,
        JobOperation::Backup,
        target,
        false,
        move |st| {
            let opts = BackupOptions {
                retain_until,
                ..Default::default()
            };
            st.home.check_backup_can_start(&checked, &opts)
        },
        move |st, job| {
            let opts = BackupOptions {
                retain_until: b.retain_until,
                job_id: Some(job),
                ..Default::default()
            };
            st.home
                .backup(&item, &st.secrets, &opts, &kura_engine::NoProgress)
                .map(|_| ())
        },
    )
    .await
}

/// A restore's `format` field.
fn restore_format(format: Option<&str>) -> Result<Option<RestoreFormat>, ApiError> {
    api::convert::restore_format(format).map_err(ApiError::invalid)
}

async fn restore_disk(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::Restore>,
) -> ApiResult {
    let given = restore_format(b.format.as_deref())?;
    let to = s.roots.restore("to", &b.to)?;
    let format = RestoreFormat::for_target(given, &to)
        .map_err(|e| ApiError::invalid(format!("format: {e}")))?;
    let target = item.clone();
    let (check_to, force) = (to.clone(), b.force);
    let point = point_exists(item.clone(), b.rp.clone());
    start_job(
        s,
        JobOperation::Restore,
        target,
        false,
        move |st| {
            point(st)?;
            if !force && check_to.exists() {
                return Err(kura_engine::Error::already_exists(format!(
                    "to: {} already exists (give force to replace it); nothing was restored",
                    check_to.display()
                )));
            }
            Ok(())
        },
        move |st, job| {
            let opts = RestoreOptions {
                rp: b.rp,
                to,
                format,
                force: b.force,
                job_id: Some(job),
                disk: b.disk,
                decrypt: b.decrypt,
                from_replica: b.from_replica,
            };
            st.home
                .restore_disk(&item, &opts, &st.secrets, &kura_engine::NoProgress)
                .map(|_| ())
        },
    )
    .await
}

async fn set_agent(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::SetAgent>,
) -> ApiResult {
    let qga = match &b.qga {
        Some(q) => Some(s.roots.source("qga", q)?.display().to_string()),
        None => None,
    };
    let agent = kura_engine::AgentOptions {
        qga,
        require: b.require_agent,
        pre_script: b.pre_script,
        post_script: b.post_script,
    };
    let st = blocking(move || {
        s.home.set_vm_agent(&item, &agent, &s.secrets)?;
        Ok(api::Item::from(s.home.item_show(&item)?))
    })
    .await?;
    ok(200, st)
}

async fn restore_disks(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::RestoreDisks>,
) -> ApiResult {
    let format = restore_format(b.format.as_deref())?.unwrap_or_default();
    let dir = s.roots.restore("to", &b.to)?;
    let target = item.clone();
    start_job(
        s,
        JobOperation::RestoreDisks,
        target,
        false,
        point_exists(item.clone(), b.rp.clone()),
        move |st, job| {
            let opts = kura_engine::RestoreDisksOptions {
                rp: b.rp,
                dir,
                disks: b.disks,
                format,
                force: b.force,
                decrypt: b.decrypt,
                job_id: Some(job),
                from_replica: b.from_replica,
            };
            st.home
                .restore_disks(&item, &opts, &st.secrets, &kura_engine::NoProgress)
                .map(|_| ())
        },
    )
    .await
}

async fn restore_vm(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::RestoreVm>,
) -> ApiResult {
    // Disks replaced in place must lie under a source root, a new VM under a restore root.
    let mode = match (b.as_new, b.to, b.replace) {
        (Some(name), Some(to), false) => kura_engine::VmRestoreMode::AsNew {
            name,
            dir: s.roots.restore("to", &to)?,
            start: b.start,
        },
        (None, None, true) => kura_engine::VmRestoreMode::Replace { stop: b.stop },
        _ => {
            return Err(ApiError::invalid(
                "give either as_new and to (a new VM), or replace (over the VM's disks)",
            ));
        }
    };
    let roots = s.roots.clone();
    let may_write: kura_engine::PathCheck = std::sync::Arc::new(move |p: &std::path::Path| {
        roots
            .source("disk", &p.display().to_string())
            .map(|_| ())
            .map_err(|e| e.message)
    });
    let replace = matches!(mode, kura_engine::VmRestoreMode::Replace { .. });
    let target = item.clone();
    start_job(
        s,
        JobOperation::RestoreVm,
        target,
        false,
        point_exists(item.clone(), b.rp.clone()),
        move |st, job| {
            let opts = kura_engine::VmRestoreOptions {
                rp: b.rp,
                mode,
                job_id: Some(job),
                may_write: replace.then_some(may_write),
                from_replica: b.from_replica,
            };
            st.home
                .restore_vm(&item, &opts, &st.secrets, &kura_engine::NoProgress)
                .map(|_| ())
        },
    )
    .await
}

async fn list_rps(_: Auth, State(s): State<S>, Path(item): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(list::<_, api::RecoveryPoint>(s.home.list_rps(&item)?))).await?,
    )
}

fn files_target(rp: String, disk: Option<String>, volume: Option<u32>) -> kura_engine::FilesTarget {
    kura_engine::FilesTarget {
        rp,
        disk,
        volume,
        ..Default::default()
    }
}

async fn list_volumes(
    _: Auth,
    State(s): State<S>,
    Path((item, rp)): Path<(String, String)>,
    Params(q): Params<api::DiskQuery>,
) -> ApiResult {
    let target = files_target(rp, q.disk, None);
    ok(
        200,
        blocking(move || {
            Ok(api::PointVolumes::from(
                s.home.point_volumes(&item, &target, &s.secrets)?,
            ))
        })
        .await?,
    )
}

async fn list_files(
    _: Auth,
    State(s): State<S>,
    Path((item, rp)): Path<(String, String)>,
    Params(q): Params<api::FilesQuery>,
) -> ApiResult {
    let target = kura_engine::FilesTarget {
        from_replica: q.from_replica.unwrap_or(false),
        ..files_target(rp, q.disk, q.volume)
    };
    let at = q.path.unwrap_or_else(|| "/".into());
    ok(
        200,
        blocking(move || {
            Ok(api::FileListing::from(
                s.home.list_files(&item, &target, &at, &s.secrets)?,
            ))
        })
        .await?,
    )
}

async fn start_export(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::NewExport>,
) -> ApiResult {
    refuse_when_stopping(&s)?;
    let listen = match b.listen.as_deref() {
        Some(l) if l.starts_with("unix:") => {
            return Err(ApiError::invalid(
                "listen: the server chooses its socket (in its home); give tcp:ADDRESS:PORT or leave it out",
            ));
        }
        l => kura_engine::ExportListen::parse(l.unwrap_or(""))?,
    };
    let listen = if b.tls == Some(true) {
        listen.with_tls()?
    } else {
        listen
    };
    let minutes = b.minutes.unwrap_or(60);
    let life = jiff::SignedDuration::from_mins(i64::from(minutes));
    if minutes == 0 || life > kura_engine::MAX_EXPORT_LIFE {
        return Err(ApiError::invalid(format!(
            "minutes: {minutes} is not between 1 and {}",
            kura_engine::MAX_EXPORT_LIFE.as_mins()
        )));
    }
    let target = files_target(b.rp, b.disk, None);
    let st = s.clone();
    let info = blocking(move || {
        let running = st
            .home
            .start_export(&item, &target, &listen, life, &st.secrets)?;
        let info = running.info.clone();
        let mut map = st.exports.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| !e.ended());
        map.insert(info.id.clone(), running);
        Ok(info)
    })
    .await?;
    let client_tls = match &info.tls_dir {
        Some(dir) => {
            let dir = std::path::Path::new(dir);
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f)).map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("{}: {e}", dir.join(f).display()),
                    )
                })
            };
            Some(api::ClientTls {
                ca_cert: read("ca-cert.pem")?,
                client_cert: read("client-cert.pem")?,
                client_key: read("client-key.pem")?,
            })
        }
        None => None,
    };
    let mut export = api::Export::from(info);
    export.client_tls = client_tls;
    ok(201, export)
}

async fn list_exports(_: Auth, State(s): State<S>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(list::<_, api::Export>(s.home.list_exports()))).await?,
    )
}

async fn stop_export(_: Auth, State(s): State<S>, Path(id): Path<String>) -> ApiResult {
    let st = s.clone();
    let id = blocking(move || {
        let info = st.home.find_export(&id)?;
        let mut map = st.exports.lock().unwrap_or_else(|p| p.into_inner());
        match map.remove(&info.id) {
            Some(running) => {
                // Answer once it has ended: its clients are cut off, its socket is gone.
                running.stop();
                drop(map);
                let _ = running.wait();
                Ok(info.id)
            }
            None => Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "export {} is run by process {}, not this server: stop it with `kura export stop {}` on the host",
                    info.id, info.pid, info.id
                ),
            )),
        }
    })
    .await?;
    ok(200, api::ExportStopped { id, stopped: true })
}

/// A `Write` whose bytes go, in pieces, to a response body being streamed.
struct BodyWriter {
    tx: tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl BodyWriter {
    const PIECE: usize = 256 << 10;

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::PIECE));
        self.tx.blocking_send(Ok(piece.into())).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for BodyWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= Self::PIECE {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// `filename*` of a Content-Disposition header (RFC 6266/5987): any name, safely quoted.
fn attachment(name: &str) -> String {
    let mut enc = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename*=UTF-8''{enc}")
}

async fn download_files(
    _: Auth,
    State(s): State<S>,
    Path((item, rp)): Path<(String, String)>,
    Params(q): Params<api::FilesQuery>,
) -> ApiResult {
    use axum::http::header;
    let target = kura_engine::FilesTarget {
        from_replica: q.from_replica.unwrap_or(false),
        ..files_target(rp, q.disk, q.volume)
    };
    let path = q.path.unwrap_or_else(|| "/".into());
    let archive = match q.archive {
        Some(api::ArchiveFormat::Zip) => kura_engine::FileArchive::Zip,
        Some(api::ArchiveFormat::Tar) | None => kura_engine::FileArchive::Tar,
    };
    // Everything that can fail before the first byte fails here, as a JSON error.
    let (st, it, tg, p) = (s.clone(), item.clone(), target.clone(), path.clone());
    let listing = blocking(move || Ok(st.home.list_files(&it, &tg, &p, &st.secrets)?)).await?;
    let entry = listing.entry;
    let (kind, name, length) = match entry.kind {
        kura_engine::FileEntryKind::File => (
            "application/octet-stream",
            entry.name.clone(),
            Some(entry.size),
        ),
        kura_engine::FileEntryKind::Dir => {
            let base = if entry.path == "/" {
                item.clone()
            } else {
                entry.name.clone()
            };
            let (ext, media) = archive.extension_and_type();
            (media, format!("{base}.{ext}"), None)
        }
        k => {
            return Err(ApiError::invalid(format!(
                "path: {} is a {k:?}, which has no contents to download",
                entry.path
            )));
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut w = BodyWriter {
            tx,
            buf: Vec::with_capacity(BodyWriter::PIECE),
        };
        let done = s
            .home
            .write_files(&item, &target, &path, archive, &s.secrets, &mut w)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|_| std::io::Write::flush(&mut w));
        // A failure mid-way ends the body with an error: the client sees a broken transfer
        // (short of its length, or a tar without its end), never a complete-looking one.
        if let Err(e) = done {
            tracing::warn!("download of {path} failed: {e}");
            let _ = w.tx.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    if let Ok(v) = header::HeaderValue::from_str(&attachment(&name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    if let Some(n) = length {
        h.insert(header::CONTENT_LENGTH, n.into());
    }
    Ok(resp)
}

async fn restore_files(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::RestoreFiles>,
) -> ApiResult {
    // The original location is the item's own protected directory; anything else must lie
    // under a restore root.
    let to = match api::convert::files_destination(&b.to, b.original).map_err(ApiError::invalid)? {
        Some(t) => Some(s.roots.restore("to", t)?),
        None => None,
    };
    let target = kura_engine::FilesTarget {
        from_replica: b.from_replica,
        ..files_target(b.rp.clone(), b.disk.clone(), b.volume)
    };
    let (check_item, check_target, check_paths, check_to) =
        (item.clone(), target.clone(), b.paths.clone(), to.clone());
    start_job(
        s,
        JobOperation::RestoreFiles,
        item.clone(),
        false,
        move |st| {
            let check_to = match check_to {
                Some(t) => t,
                None => st
                    .home
                    .original_location(&st.home.catalog().item(&check_item)?)?,
            };
            if !check_to.is_dir() {
                return Err(kura_engine::Error::not_found(format!(
                    "to: {} is not an existing directory",
                    check_to.display()
                )));
            }
            // The point, disk, volume and every path exist, before a job does.
            st.home
                .check_files(&check_item, &check_target, &check_paths, &st.secrets)
        },
        move |st, job| {
            st.home
                .restore_files(
                    &item,
                    &target,
                    &b.paths,
                    to.as_deref(),
                    b.overwrite,
                    Some(&job),
                    &st.secrets,
                    &kura_engine::NoProgress,
                )
                .map(|_| ())
        },
    )
    .await
}

async fn get_rp(
    _: Auth,
    State(s): State<S>,
    Path((item, rp)): Path<(String, String)>,
) -> ApiResult {
    ok(
        200,
        blocking(move || {
            Ok(api::RecoveryPointDetail::from(
                s.home.rp_manifest(&item, &rp, &s.secrets)?,
            ))
        })
        .await?,
    )
}

/// An optional `at` instant (RFC 3339); the home's now when absent.
fn instant(at: Option<String>, now: jiff::Timestamp) -> Result<jiff::Timestamp, ApiError> {
    api::convert::instant(at.as_deref(), now).map_err(ApiError::invalid)
}

async fn retention_plan(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Params(q): Params<api::At>,
) -> ApiResult {
    let at = instant(q.at, s.home.now())?;
    ok(
        200,
        blocking(move || Ok(api::RetentionPlan::from(s.home.retention_plan(&item, at)?))).await?,
    )
}

// ---- jobs, usage, document

async fn list_jobs(_: Auth, State(s): State<S>, Params(q): Params<api::JobFilter>) -> ApiResult {
    let query = kura_engine::JobQuery {
        item: q.item,
        status: q.status,
        operation: q.operation,
        since: q.since,
        limit: q.limit.unwrap_or(100).min(10_000),
    };
    ok(
        200,
        blocking(move || Ok(list::<_, api::Job>(s.home.find_jobs(&query)?))).await?,
    )
}

async fn list_tokens(_: Auth, State(s): State<S>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(list::<_, api::Token>(s.home.list_tokens()?))).await?,
    )
}

async fn create_token(
    _: Auth,
    State(s): State<S>,
    Body(b): Body<api::NewTokenRequest>,
) -> ApiResult {
    let t = blocking(move || {
        let expires = match &b.expires {
            Some(e) => Some(
                s.home
                    .parse_token_expiry(e)
                    .map_err(|e| ApiError::invalid(format!("expires: {e}")))?,
            ),
            None => None,
        };
        Ok(api::NewToken::from(s.home.create_token(&b.name, expires)?))
    })
    .await?;
    ok(201, t)
}

async fn revoke_token(_: Auth, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    let revoked = name.clone();
    blocking(move || Ok(s.home.revoke_token(&name)?)).await?;
    ok(
        200,
        api::Revoked {
            name: revoked,
            revoked: true,
        },
    )
}

async fn reset_token(
    _: Auth,
    State(s): State<S>,
    Path(name): Path<String>,
    Body(b): Body<api::ResetToken>,
) -> ApiResult {
    let t = blocking(move || {
        s.home
            .list_tokens()?
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| {
                kura_engine::Error::from(kura_catalog::Error::NotFound {
                    kind: "token",
                    name: name.clone(),
                    near: None,
                })
            })?;
        let expires = match &b.expires {
            Some(e) => Some(
                s.home
                    .parse_token_expiry(e)
                    .map_err(|e| ApiError::invalid(format!("expires: {e}")))?,
            ),
            None => None,
        };
        Ok(api::NewToken::from(
            s.home.reset_token(&name, None, expires)?,
        ))
    })
    .await?;
    ok(200, t)
}

async fn get_job(_: Auth, State(s): State<S>, Path(job): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(api::Job::from(s.home.job(&job)?))).await?,
    )
}

async fn verify(_: Auth, State(s): State<S>, Body(b): Body<api::Verify>) -> ApiResult {
    let scope = b.scope().map_err(ApiError::invalid)?;
    let target = kura_engine::Home::verify_target(&scope);
    let check_scope = scope.clone();
    start_job(
        s,
        JobOperation::Verify,
        target,
        false,
        move |st| match &check_scope {
            kura_engine::VerifyScope::All => Ok(()),
            kura_engine::VerifyScope::Vault(v) => st.home.vault_info(v).map(|_| ()),
            kura_engine::VerifyScope::Item(i) => st.home.item(i).map(|_| ()),
            kura_engine::VerifyScope::Rp(r) => {
                st.home.catalog().rp(r).map(|_| ()).map_err(Into::into)
            }
        },
        move |st, job| {
            st.home
                .verify_in_job(&scope, Some(&job), &st.secrets, &kura_engine::NoProgress)
                .map(|_| ())
        },
    )
    .await
}

async fn collect_garbage(
    _: Auth,
    State(s): State<S>,
    Path(vault): Path<String>,
    Body(b): Body<api::Gc>,
) -> ApiResult {
    let grace = jiff::SignedDuration::from_secs(b.grace_seconds.unwrap_or(3600).max(0));
    let v = vault.clone();
    start_job(
        s,
        JobOperation::GarbageCollect,
        vault.clone(),
        true,
        move |st| st.home.vault_info(&v).map(|_| ()),
        move |st, job| {
            let opts = kura_engine::GcOptions {
                grace,
                dry_run: b.dry_run,
                job_id: Some(job),
            };
            st.home
                .gc(&vault, &opts, &st.secrets, &kura_engine::NoProgress)
                .map(|_| ())
        },
    )
    .await
}

async fn replicate_vault(_: Auth, State(s): State<S>, Path(vault): Path<String>) -> ApiResult {
    let v = vault.clone();
    start_job(
        s,
        JobOperation::Replicate,
        vault.clone(),
        true,
        move |st| st.home.check_replicate(&v),
        move |st, job| {
            st.home
                .replicate(&vault, Some(&job), &kura_engine::NoProgress)
                .map(|_| ())
        },
    )
    .await
}

async fn apply_retention(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<api::RetentionApply>,
) -> ApiResult {
    let at = instant(b.at, s.home.now())?;
    ok(
        200,
        blocking(move || {
            Ok(api::RetentionPlan::from(
                s.home.retention_apply(&item, at, &s.secrets)?,
            ))
        })
        .await?,
    )
}

/// A vault's location from a request: a directory must lie under a restore root (it is
/// written to); an object store is reached with the server's own credentials.
fn checked_location(
    s: &S,
    path: Option<&str>,
    location: Option<&str>,
) -> Result<Option<kura_engine::Location>, ApiError> {
    let field = if path.is_some() { "path" } else { "location" };
    Ok(
        match kura_engine::requested_location(path, location).map_err(ApiError::from)? {
            Some(kura_engine::Location::Fs(dir)) => Some(kura_engine::Location::Fs(
                s.roots.restore(field, &dir.to_string_lossy())?,
            )),
            other => other,
        },
    )
}

async fn attach_vault(_: Auth, State(s): State<S>, Body(b): Body<api::Attach>) -> ApiResult {
    let Some(location) = checked_location(&s, b.path.as_deref(), b.location.as_deref())? else {
        return Err(ApiError::invalid(
            "path or location: the vault's storage is required",
        ));
    };
    let key_file = b
        .key_file
        .as_deref()
        .map(|k| s.roots.source("key_file", k))
        .transpose()?;
    let report = blocking(move || {
        let mut secrets = s.secrets.clone();
        if let Some(k) = key_file {
            secrets.key_file = Some(k);
        }
        let report = s.home.attach_vault(&b.name, &location, &secrets)?;
        Ok(api::Attached {
            vault: s.home.vault_info(&b.name)?.into(),
            items: report.items,
            recovery_points: report.recovery_points,
            warnings: report.warnings,
        })
    })
    .await?;
    ok(201, report)
}

// ---- web UI sessions

/// The `Set-Cookie` value for the session cookie (`id` empty and `max_age` 0 clear it).
fn set_cookie(s: &AppState, id: &str, max_age: i64) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if s.secure_cookies { "; Secure" } else { "" }
    )
}

async fn create_session(State(s): State<S>, Body(b): Body<api::NewSession>) -> ApiResult {
    let st = s.clone();
    let opened = blocking(move || Ok(st.home.open_session(&b.token)?))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "token: not accepted (unknown, revoked or expired)",
            )
        })?;
    let ends: jiff::Timestamp = opened.row.expires.parse().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{e}"),
        )
    })?;
    let max_age = ends.duration_since(s.home.now()).as_secs().max(0);
    let mut resp = ok(201, session(opened.row))?;
    let cookie = set_cookie(&s, &opened.id, max_age);
    resp.headers_mut().insert(
        axum::http::header::SET_COOKIE,
        cookie
            .parse()
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "cookie"))?,
    );
    Ok(resp)
}

/// A session as its owner sees it, with what it may do: today every operation (the roles
/// to come narrow this list, and the UI follows it).
fn session(row: kura_catalog::SessionRow) -> api::Session {
    api::Session {
        operations: ROUTES.iter().map(|r| r.operation.to_string()).collect(),
        ..api::Session::from(row)
    }
}

async fn get_session(auth: Auth) -> ApiResult {
    match auth.0 {
        Some(row) => ok(200, session(row)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no session: this request was authorized by a bearer token",
        )),
    }
}

async fn delete_session(_: Auth, State(s): State<S>, headers: axum::http::HeaderMap) -> ApiResult {
    if let Some(id) = session_cookie(&headers) {
        let st = s.clone();
        blocking(move || Ok(st.home.close_session(&id)?)).await?;
    }
    let mut resp = ok(200, api::SignedOut { signed_out: true })?;
    if let Ok(v) = set_cookie(&s, "", 0).parse() {
        resp.headers_mut().insert(axum::http::header::SET_COOKIE, v);
    }
    Ok(resp)
}

async fn export_key(_: Auth, State(s): State<S>, Path(vault): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(api::WrappedKey::from(s.home.wrapped_key_document(&vault)?))).await?,
    )
}

async fn cancel_job(_: Auth, State(s): State<S>, Path(job): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(api::Job::from(s.home.cancel_job(&job)?))).await?,
    )
}

async fn get_usage(_: Auth, State(s): State<S>, Params(q): Params<api::UsageFilter>) -> ApiResult {
    ok(
        200,
        blocking(move || {
            Ok(list::<_, api::VaultUsage>(
                s.home.usage(q.vault.as_deref())?,
            ))
        })
        .await?,
    )
}

async fn get_vault_trend(_: Auth, State(s): State<S>, Path(vault): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(api::VaultTrend::from(s.home.vault_trend(&vault)?))).await?,
    )
}

async fn get_openapi() -> ApiResult {
    ok(200, crate::openapi())
}

fn handler(route: &Route) -> MethodRouter<S> {
    match route.operation {
        "getOpenApi" => get(get_openapi),
        "listTokens" => get(list_tokens),
        "createToken" => post(create_token),
        "revokeToken" => delete(revoke_token),
        "resetToken" => post(reset_token),
        "listVaults" => get(list_vaults),
        "createVault" => post(create_vault),
        "getVault" => get(get_vault),
        "getVaultTrend" => get(get_vault_trend),
        "updateVault" => patch(update_vault),
        "listPolicies" => get(list_policies),
        "createPolicy" => post(create_policy),
        "getPolicy" => get(get_policy),
        "updatePolicy" => put(update_policy),
        "deletePolicy" => delete(delete_policy),
        "simulatePolicy" => post(simulate_policy),
        "listItems" => get(list_items),
        "protectItem" => post(protect_item),
        "getItem" => get(get_item),
        "stopProtection" => post(stop_protection),
        "resumeProtection" => post(resume_protection),
        "setItemPolicy" => post(set_item_policy),
        "undeleteItem" => post(undelete_item),
        "precheckItem" => get(precheck_item),
        "setItemFormat" => post(set_item_format),
        "backupNow" => post(backup_now),
        "listRecoveryPoints" => get(list_rps),
        "getRecoveryPoint" => get(get_rp),
        "retentionPlan" => get(retention_plan),
        "restoreDisk" => post(restore_disk),
        "restoreVm" => post(restore_vm),
        "restoreDisks" => post(restore_disks),
        "listVolumes" => get(list_volumes),
        "listFiles" => get(list_files),
        "restoreFiles" => post(restore_files),
        "downloadFiles" => get(download_files),
        "startExport" => post(start_export),
        "listExports" => get(list_exports),
        "stopExport" => delete(stop_export),
        "setAgent" => post(set_agent),
        "listJobs" => get(list_jobs),
        "getJob" => get(get_job),
        "cancelJob" => post(cancel_job),
        "verify" => post(verify),
        "attachVault" => post(attach_vault),
        "exportKey" => get(export_key),
        "createSession" => post(create_session),
        "simulateDocument" => post(simulate_document),
        "getSession" => get(get_session),
        "deleteSession" => delete(delete_session),
        "collectGarbage" => post(collect_garbage),
        "replicateVault" => post(replicate_vault),
        "applyRetention" => post(apply_retention),
        "getUsage" => get(get_usage),
        other => panic!("route table names an operation without a handler: {other}"),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub(crate) fn router(state: S) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, handler(route));
    }
    router
        .route("/metrics", get(get_metrics))
        .route("/", get(crate::ui::index))
        .route("/ui/{*file}", get(crate::ui::asset))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .with_state(state)
        .layer(axum::middleware::from_fn(log_request))
}

/// `GET /metrics` (a token is needed, as everywhere): Prometheus text format.
async fn get_metrics(_: Auth, State(s): State<S>) -> ApiResult {
    let text = blocking(move || crate::metrics::render(&s)).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// One log line per request: method, path, status, duration and the token's name (never
/// its secret).
async fn log_request(mut req: Request, next: axum::middleware::Next) -> Response {
    let slot = TokenSlot::default();
    req.extensions_mut().insert(slot.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let token = slot.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    tracing::info!(
        target: "kura::http",
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        token = token.as_deref().unwrap_or("-"),
        "request"
    );
    resp
}
