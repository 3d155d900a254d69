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
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

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
    /// Whether it takes a JSON body.
    pub body: bool,
}

const fn r(
    method: &'static str,
    path: &'static str,
    operation: &'static str,
    summary: &'static str,
    success: u16,
    body: bool,
) -> Route {
    Route {
        method,
        path,
        operation,
        summary,
        success,
        body,
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
        false,
    ),
    r(
        "GET",
        "/api/v1/vaults",
        "listVaults",
        "List vaults",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/vaults",
        "createVault",
        "Create a vault",
        201,
        true,
    ),
    r(
        "GET",
        "/api/v1/vaults/{vault}",
        "getVault",
        "Show a vault",
        200,
        false,
    ),
    r(
        "PATCH",
        "/api/v1/vaults/{vault}",
        "updateVault",
        "Change soft-delete settings",
        200,
        true,
    ),
    r(
        "GET",
        "/api/v1/vaults/{vault}/policies",
        "listPolicies",
        "List a vault's policies",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/vaults/{vault}/policies",
        "createPolicy",
        "Create a policy",
        201,
        true,
    ),
    r(
        "GET",
        "/api/v1/vaults/{vault}/policies/{policy}",
        "getPolicy",
        "Show a policy",
        200,
        false,
    ),
    r(
        "PUT",
        "/api/v1/vaults/{vault}/policies/{policy}",
        "updatePolicy",
        "Replace a policy and re-apply retention",
        200,
        true,
    ),
    r(
        "DELETE",
        "/api/v1/vaults/{vault}/policies/{policy}",
        "deletePolicy",
        "Delete an unused policy",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/vaults/{vault}/policies/{policy}/simulate",
        "simulatePolicy",
        "Preview a policy",
        200,
        true,
    ),
    r(
        "GET",
        "/api/v1/items",
        "listItems",
        "List protected items",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/items",
        "protectItem",
        "Protect a disk image",
        201,
        true,
    ),
    r(
        "GET",
        "/api/v1/items/{item}",
        "getItem",
        "Protection state and health of an item",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/stop",
        "stopProtection",
        "Stop protection, keeping or deleting data",
        200,
        true,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/resume",
        "resumeProtection",
        "Resume protection with a policy",
        200,
        true,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/undelete",
        "undeleteItem",
        "Undelete a soft-deleted item",
        200,
        false,
    ),
    r(
        "GET",
        "/api/v1/items/{item}/precheck",
        "precheckItem",
        "Whether a backup could run now (vault secrets, source), touching nothing",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/format",
        "setItemFormat",
        "Pin a new format or accept a changed backing chain: {\"format\"?}",
        200,
        true,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/backups",
        "backupNow",
        "Start an on-demand backup",
        202,
        true,
    ),
    r(
        "GET",
        "/api/v1/items/{item}/recovery-points",
        "listRecoveryPoints",
        "List recovery points",
        200,
        false,
    ),
    r(
        "GET",
        "/api/v1/items/{item}/recovery-points/{rp}",
        "getRecoveryPoint",
        "A recovery point's manifest: disks, consistency, retention, definition",
        200,
        false,
    ),
    r(
        "GET",
        "/api/v1/items/{item}/retention-plan",
        "retentionPlan",
        "What retention would remove",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/restores",
        "restoreDisk",
        "Start a restore to a new image",
        202,
        true,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/agent",
        "setAgent",
        "Set a VM item's guest-agent settings (the socket under a source root)",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/disk-restores",
        "restoreDisks",
        "Start a restore of all (or some) disks of a point into a directory, one file per disk",
        202,
        true,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/vm-restores",
        "restoreVm",
        "Start a VM restore: as a new VM (`as_new`, `to`, `start`) or over the VM's disks (`replace`, `stop`)",
        202,
        true,
    ),
    r(
        "GET",
        "/api/v1/jobs",
        "listJobs",
        "The latest jobs, newest first; ?item=, ?status=, ?operation= filter, ?limit= caps (100)",
        200,
        false,
    ),
    r(
        "GET",
        "/api/v1/jobs/{job}",
        "getJob",
        "One job with its log",
        200,
        false,
    ),
    r(
        "GET",
        "/api/v1/tokens",
        "listTokens",
        "API tokens (names, dates, last use; never secrets)",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/tokens",
        "createToken",
        "Make a named token; its secret is in this answer only",
        201,
        true,
    ),
    r(
        "DELETE",
        "/api/v1/tokens/{name}",
        "revokeToken",
        "Revoke a token",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/tokens/{name}/reset",
        "resetToken",
        "Give a token a new secret, shown in this answer only",
        200,
        true,
    ),
    r(
        "POST",
        "/api/v1/jobs/{job}/cancel",
        "cancelJob",
        "Cancel a backup during its snapshot phase",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/vaults/attach",
        "attachVault",
        "Register an existing vault directory and rebuild its catalog entries",
        201,
        true,
    ),
    r(
        "GET",
        "/api/v1/vaults/{vault}/key",
        "exportKey",
        "The vault's wrapped data key, for escrow",
        200,
        false,
    ),
    r(
        "POST",
        "/api/v1/verify",
        "verify",
        "Re-read and check chunks of a vault, item or recovery point",
        202,
        true,
    ),
    r(
        "POST",
        "/api/v1/vaults/{vault}/gc",
        "collectGarbage",
        "Remove unreferenced chunks",
        202,
        true,
    ),
    r(
        "POST",
        "/api/v1/items/{item}/retention",
        "applyRetention",
        "Remove the recovery points retention marks for deletion",
        200,
        true,
    ),
    r(
        "GET",
        "/api/v1/usage",
        "getUsage",
        "Usage per vault and item",
        200,
        false,
    ),
];

type S = Arc<AppState>;
type ApiResult = Result<Response, ApiError>;

/// Requires `Authorization: Bearer TOKEN` with a known, unexpired token; holds its name.
pub struct Auth;

/// Where the request log finds the name of the token a request presented.
#[derive(Clone, Default)]
pub(crate) struct TokenSlot(pub(crate) Arc<std::sync::Mutex<Option<String>>>);

impl FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let refused = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            )
        };
        let Some(token) = token else {
            return Err(refused());
        };
        let st = state.clone();
        let row = blocking(move || Ok(st.home.authenticate(&token)?)).await?;
        let Some(row) = row else {
            return Err(refused());
        };
        if let Some(slot) = parts.extensions.get::<TokenSlot>() {
            *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(row.name.clone());
        }
        Ok(Auth)
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
    let _ = parse_body::<NewVault>(data);
    let _ = parse_body::<VaultSettings>(data);
    let _ = parse_body::<Simulate>(data);
    let _ = parse_body::<Protect>(data);
    let _ = parse_body::<Stop>(data);
    let _ = parse_body::<Resume>(data);
    let _ = parse_body::<BackupNow>(data);
    let _ = parse_body::<Restore>(data);
    let _ = parse_body::<At>(data);
    let _ = parse_body::<Limit>(data);
    let _ = parse_body::<VerifyBody>(data);
    let _ = parse_body::<GcBody>(data);
    let _ = parse_body::<RetentionBody>(data);
    let _ = parse_body::<Attach>(data);
    let _ = parse_body::<SetFormat>(data);
    let _ = parse_body::<NewTokenBody>(data);
    let _ = parse_body::<ResetTokenBody>(data);
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVault {
    name: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    chunk_size: Option<u32>,
    #[serde(default)]
    no_encryption: bool,
}

async fn list_vaults(_: Auth, State(s): State<S>) -> ApiResult {
    ok(200, blocking(move || Ok(s.home.list_vaults()?)).await?)
}

async fn create_vault(_: Auth, State(s): State<S>, Body(b): Body<NewVault>) -> ApiResult {
    let path = b
        .path
        .as_deref()
        .map(|p| s.roots.restore("path", p))
        .transpose()?;
    let v = blocking(move || {
        let opts = kura_engine::CreateVault {
            path,
            chunk_size: b.chunk_size,
            no_encryption: b.no_encryption,
            ..Default::default()
        };
        Ok(s.home.create_vault(&b.name, &opts, &s.secrets)?)
    })
    .await?;
    ok(201, v)
}

async fn get_vault(_: Auth, State(s): State<S>, Path(vault): Path<String>) -> ApiResult {
    ok(200, blocking(move || Ok(s.home.vault_info(&vault)?)).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultSettings {
    #[serde(default)]
    soft_delete: Option<String>,
    #[serde(default)]
    soft_delete_days: Option<u32>,
}

async fn update_vault(
    _: Auth,
    State(s): State<S>,
    Path(vault): Path<String>,
    Body(b): Body<VaultSettings>,
) -> ApiResult {
    let v = blocking(move || {
        s.home
            .set_soft_delete(&vault, b.soft_delete.as_deref(), b.soft_delete_days)?;
        Ok(s.home.vault_info(&vault)?)
    })
    .await?;
    ok(200, v)
}

// ---- policies

async fn list_policies(_: Auth, State(s): State<S>, Path(vault): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(s.home.list_policies(&vault)?)).await?,
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
        blocking(move || Ok(s.home.create_policy(&vault, doc.to_string().as_bytes())?)).await?,
    )
}

async fn get_policy(
    _: Auth,
    State(s): State<S>,
    Path((vault, policy)): Path<(String, String)>,
) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(s.home.policy(&vault, &policy)?)).await?,
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
        json!({"policy": p, "recovery_points_updated": changed}),
    )
}

async fn delete_policy(
    _: Auth,
    State(s): State<S>,
    Path((vault, policy)): Path<(String, String)>,
) -> ApiResult {
    let name = format!("{vault}/{policy}");
    blocking(move || Ok(s.home.delete_policy(&vault, &policy)?)).await?;
    ok(200, json!({"deleted": name}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Simulate {
    from: String,
    days: u32,
}

async fn simulate_policy(
    _: Auth,
    State(s): State<S>,
    Path((vault, name)): Path<(String, String)>,
    Body(b): Body<Simulate>,
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
    ok(200, sim)
}

// ---- items

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Protect {
    kind: String,
    #[serde(default)]
    source: Option<String>,
    /// VM items run by libvirt: `{"domain", "uri"?}` instead of a QMP socket.
    #[serde(default)]
    libvirt: Option<kura_engine::Domain>,
    vault: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    format: Option<String>,
    /// VM items: disks not to back up.
    #[serde(default)]
    exclude_disks: Vec<String>,
    /// VM items: the guest agent's socket (under a source root like the QMP socket).
    #[serde(default)]
    qga: Option<String>,
    /// VM items: fail backups when the agent is Not Ready.
    #[serde(default)]
    require_agent: bool,
    /// VM items: guest paths of the pre- and post-backup scripts.
    #[serde(default)]
    pre_script: Option<String>,
    #[serde(default)]
    post_script: Option<String>,
}

async fn list_items(_: Auth, State(s): State<S>) -> ApiResult {
    ok(200, blocking(move || Ok(s.home.list_item_status()?)).await?)
}

async fn protect_item(_: Auth, State(s): State<S>, Body(b): Body<Protect>) -> ApiResult {
    if b.kind != "disk" && b.kind != "vm" {
        return Err(ApiError::invalid(format!(
            "kind: {:?} is not supported; use \"disk\" or \"vm\"",
            b.kind
        )));
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
            Ok(s.home.protect_vm(
                &link,
                &b.vault,
                b.name.as_deref(),
                b.policy.as_deref(),
                &b.exclude_disks,
                &agent,
                &s.secrets,
            )?)
        })
        .await?;
        return ok(201, item);
    }
    let kura_engine::VmLink::Qmp(path) = link else {
        return Err(ApiError::invalid(
            "libvirt: only VM items are libvirt domains",
        ));
    };
    let item = blocking(move || {
        Ok(s.home.protect_disk(
            &path,
            &b.vault,
            b.name.as_deref(),
            b.policy.as_deref(),
            b.format.as_deref(),
            &s.secrets,
        )?)
    })
    .await?;
    ok(201, item)
}

async fn get_item(_: Auth, State(s): State<S>, Path(item): Path<String>) -> ApiResult {
    ok(200, blocking(move || Ok(s.home.item_show(&item)?)).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stop {
    #[serde(default)]
    delete_data: bool,
}

async fn stop_protection(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<Stop>,
) -> ApiResult {
    ok(
        200,
        blocking(move || {
            Ok(s.home
                .stop_protection(&item, b.delete_data, &s.secrets, s.home.now())?)
        })
        .await?,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resume {
    policy: String,
}

async fn resume_protection(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<Resume>,
) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(s.home.resume_protection(&item, &b.policy, &s.secrets)?)).await?,
    )
}

async fn precheck_item(_: Auth, State(s): State<S>, Path(item): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(s.home.precheck(&item, &s.secrets)?)).await?,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFormat {
    #[serde(default)]
    format: Option<String>,
}

async fn set_item_format(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<SetFormat>,
) -> ApiResult {
    let st = blocking(move || {
        s.home
            .set_item_format(&item, b.format.as_deref(), &s.secrets)?;
        Ok(s.home.item_status(&item)?)
    })
    .await?;
    ok(200, st)
}

async fn undelete_item(_: Auth, State(s): State<S>, Path(item): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(s.home.undelete(&item, &s.secrets)?)).await?,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupNow {
    #[serde(default)]
    retain_until: Option<String>,
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
    operation: &'static str,
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
    ok(202, json!({"job_id": id, "status": "Queued"}))
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
    Body(b): Body<BackupNow>,
) -> ApiResult {
    let target = item.clone();
    let checked = item.clone();
    let retain_until = b.retain_until.clone();
    start_job(
        s,
        "Backup",
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Restore {
    rp: String,
    to: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    disk: Option<String>,
    /// Write a disk that was encrypted at the source decrypted.
    #[serde(default)]
    decrypt: bool,
}

/// A restore's `format` field.
fn restore_format(format: Option<&str>) -> Result<Option<RestoreFormat>, ApiError> {
    match format {
        None => Ok(None),
        Some("raw") => Ok(Some(RestoreFormat::Raw)),
        Some("qcow2") => Ok(Some(RestoreFormat::Qcow2)),
        Some(f) => Err(ApiError::invalid(format!(
            "format: {f:?} is not raw or qcow2"
        ))),
    }
}

async fn restore_disk(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<Restore>,
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
        "Restore",
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
            };
            st.home
                .restore_disk(&item, &opts, &st.secrets, &kura_engine::NoProgress)
                .map(|_| ())
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAgent {
    #[serde(default)]
    qga: Option<String>,
    #[serde(default)]
    require_agent: bool,
    #[serde(default)]
    pre_script: Option<String>,
    #[serde(default)]
    post_script: Option<String>,
}

async fn set_agent(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<SetAgent>,
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
        Ok(s.home.item_show(&item)?)
    })
    .await?;
    ok(200, st)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreDisks {
    rp: String,
    /// An existing directory under a restore root.
    to: String,
    #[serde(default)]
    disks: Vec<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    decrypt: bool,
}

async fn restore_disks(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<RestoreDisks>,
) -> ApiResult {
    let format = restore_format(b.format.as_deref())?.unwrap_or_default();
    let dir = s.roots.restore("to", &b.to)?;
    let target = item.clone();
    start_job(
        s,
        "RestoreDisks",
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
            };
            st.home
                .restore_disks(&item, &opts, &st.secrets, &kura_engine::NoProgress)
                .map(|_| ())
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreVm {
    rp: String,
    #[serde(default)]
    as_new: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    start: bool,
    #[serde(default)]
    replace: bool,
    #[serde(default)]
    stop: bool,
}

async fn restore_vm(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<RestoreVm>,
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
        "RestoreVm",
        target,
        false,
        point_exists(item.clone(), b.rp.clone()),
        move |st, job| {
            let opts = kura_engine::VmRestoreOptions {
                rp: b.rp,
                mode,
                job_id: Some(job),
                may_write: replace.then_some(may_write),
            };
            st.home
                .restore_vm(&item, &opts, &st.secrets, &kura_engine::NoProgress)
                .map(|_| ())
        },
    )
    .await
}

async fn list_rps(_: Auth, State(s): State<S>, Path(item): Path<String>) -> ApiResult {
    ok(200, blocking(move || Ok(s.home.list_rps(&item)?)).await?)
}

async fn get_rp(
    _: Auth,
    State(s): State<S>,
    Path((item, rp)): Path<(String, String)>,
) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(s.home.rp_manifest(&item, &rp, &s.secrets)?)).await?,
    )
}

/// An optional `at` instant (RFC 3339); the home's now when absent.
fn instant(at: Option<String>, now: jiff::Timestamp) -> Result<jiff::Timestamp, ApiError> {
    match at {
        Some(a) => a
            .parse()
            .map_err(|e| ApiError::invalid(format!("at: {a:?} is not an RFC 3339 instant: {e}"))),
        None => Ok(now),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct At {
    at: Option<String>,
}

async fn retention_plan(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Params(q): Params<At>,
) -> ApiResult {
    let at = instant(q.at, s.home.now())?;
    ok(
        200,
        blocking(move || Ok(s.home.retention_plan(&item, at)?)).await?,
    )
}

// ---- jobs, usage, document

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Limit {
    limit: Option<usize>,
    item: Option<String>,
    status: Option<String>,
    operation: Option<String>,
}

async fn list_jobs(_: Auth, State(s): State<S>, Params(q): Params<Limit>) -> ApiResult {
    let query = kura_engine::JobQuery {
        item: q.item,
        status: q.status,
        operation: q.operation,
        limit: q.limit.unwrap_or(100).min(10_000),
    };
    ok(200, blocking(move || Ok(s.home.find_jobs(&query)?)).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    name: String,
    #[serde(default)]
    expires: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResetTokenBody {
    #[serde(default)]
    expires: Option<String>,
}

async fn list_tokens(_: Auth, State(s): State<S>) -> ApiResult {
    ok(200, blocking(move || Ok(s.home.list_tokens()?)).await?)
}

async fn create_token(_: Auth, State(s): State<S>, Body(b): Body<NewTokenBody>) -> ApiResult {
    let t = blocking(move || {
        let expires = match &b.expires {
            Some(e) => Some(
                s.home
                    .parse_token_expiry(e)
                    .map_err(|e| ApiError::invalid(format!("expires: {e}")))?,
            ),
            None => None,
        };
        Ok(s.home.create_token(&b.name, expires)?)
    })
    .await?;
    ok(201, t)
}

async fn revoke_token(_: Auth, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    blocking(move || Ok(s.home.revoke_token(&name)?)).await?;
    ok(200, json!({"revoked": true}))
}

async fn reset_token(
    _: Auth,
    State(s): State<S>,
    Path(name): Path<String>,
    Body(b): Body<ResetTokenBody>,
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
        Ok(s.home.reset_token(&name, None, expires)?)
    })
    .await?;
    ok(200, t)
}

async fn get_job(_: Auth, State(s): State<S>, Path(job): Path<String>) -> ApiResult {
    ok(200, blocking(move || Ok(s.home.job(&job)?)).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    #[serde(default)]
    vault: Option<String>,
    #[serde(default)]
    item: Option<String>,
    #[serde(default)]
    rp: Option<String>,
}

async fn verify(_: Auth, State(s): State<S>, Body(b): Body<VerifyBody>) -> ApiResult {
    let scope = match (b.vault, b.item, b.rp) {
        (None, None, None) => kura_engine::VerifyScope::All,
        (Some(v), None, None) => kura_engine::VerifyScope::Vault(v),
        (None, Some(i), None) => kura_engine::VerifyScope::Item(i),
        (None, None, Some(r)) => kura_engine::VerifyScope::Rp(r),
        _ => return Err(ApiError::invalid("give at most one of vault, item, rp")),
    };
    let target = kura_engine::Home::verify_target(&scope);
    let check_scope = scope.clone();
    start_job(
        s,
        "Verify",
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GcBody {
    #[serde(default)]
    grace_seconds: Option<i64>,
    #[serde(default)]
    dry_run: bool,
}

async fn collect_garbage(
    _: Auth,
    State(s): State<S>,
    Path(vault): Path<String>,
    Body(b): Body<GcBody>,
) -> ApiResult {
    let grace = jiff::SignedDuration::from_secs(b.grace_seconds.unwrap_or(3600).max(0));
    let v = vault.clone();
    start_job(
        s,
        "GarbageCollect",
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionBody {
    #[serde(default)]
    at: Option<String>,
}

async fn apply_retention(
    _: Auth,
    State(s): State<S>,
    Path(item): Path<String>,
    Body(b): Body<RetentionBody>,
) -> ApiResult {
    let at = instant(b.at, s.home.now())?;
    ok(
        200,
        blocking(move || Ok(s.home.retention_apply(&item, at, &s.secrets)?)).await?,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Attach {
    name: String,
    path: String,
    #[serde(default)]
    key_file: Option<String>,
}

async fn attach_vault(_: Auth, State(s): State<S>, Body(b): Body<Attach>) -> ApiResult {
    let path = s.roots.restore("path", &b.path)?;
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
        Ok(s.home.attach_vault(&b.name, &path, &secrets)?)
    })
    .await?;
    ok(201, report)
}

async fn export_key(_: Auth, State(s): State<S>, Path(vault): Path<String>) -> ApiResult {
    ok(
        200,
        blocking(move || Ok(s.home.wrapped_key_document(&vault)?)).await?,
    )
}

async fn cancel_job(_: Auth, State(s): State<S>, Path(job): Path<String>) -> ApiResult {
    ok(200, blocking(move || Ok(s.home.cancel_job(&job)?)).await?)
}

async fn get_usage(_: Auth, State(s): State<S>) -> ApiResult {
    ok(200, blocking(move || Ok(s.home.usage(None)?)).await?)
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
        "setAgent" => post(set_agent),
        "listJobs" => get(list_jobs),
        "getJob" => get(get_job),
        "cancelJob" => post(cancel_job),
        "verify" => post(verify),
        "attachVault" => post(attach_vault),
        "exportKey" => get(export_key),
        "collectGarbage" => post(collect_garbage),
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
