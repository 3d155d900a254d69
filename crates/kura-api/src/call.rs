//! Every operation of the API as one value: the names in its path and its request body.
//!
//! The CLI builds a [`Call`] once per command and hands it to a transport: over HTTP it
//! becomes the request [`Call::http`] describes; on the server's host it runs against the
//! home directly. Both answer with the response types of this crate, so a command prints the
//! same result either way.

use serde::Serialize;
use serde_json::Value;

use crate::request::*;

/// One API operation with its arguments. Fields named after a path parameter (`vault`,
/// `item`, `policy`, `rp`, `job`, `name`) fill it; `body` is the request body, `query` the
/// query string, `doc` a policy document.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `GET /vaults` → `Vec<Vault>`.
    ListVaults,
    /// `GET /vaults/{vault}` → `Vault`.
    GetVault { vault: String },
    /// `GET /vaults/{vault}/trend` → `VaultTrend`.
    VaultTrend { vault: String },
    /// `POST /vaults` → `Vault`.
    CreateVault(NewVault),
    /// `PATCH /vaults/{vault}` → `Vault`.
    UpdateVault { vault: String, body: VaultSettings },
    /// `POST /vaults/attach` → `Attached`.
    AttachVault(Attach),
    /// `GET /vaults/{vault}/policies` → `Vec<Policy>`.
    ListPolicies { vault: String },
    /// `POST /vaults/{vault}/policies` (the body is the policy document) → `Policy`.
    CreatePolicy { vault: String, doc: Value },
    /// `GET /vaults/{vault}/policies/{policy}` → `Policy`.
    GetPolicy { vault: String, policy: String },
    /// `PUT /vaults/{vault}/policies/{policy}` → `PolicyUpdated`.
    UpdatePolicy {
        vault: String,
        policy: String,
        doc: Value,
    },
    /// `DELETE /vaults/{vault}/policies/{policy}` → `PolicyDeleted`.
    DeletePolicy { vault: String, policy: String },
    /// `POST /vaults/{vault}/policies/{policy}/simulate` → `Simulation`.
    SimulatePolicy {
        vault: String,
        policy: String,
        body: Simulate,
    },
    /// `POST /policy-simulations` → `Simulation`.
    SimulateDocument(SimulateDocument),
    /// `GET /items` → `Vec<Item>`.
    ListItems,
    /// `POST /items` → `Item`.
    Protect(Box<Protect>),
    /// `GET /items/{item}` → `Item`.
    GetItem { item: String },
    /// `POST /items/{item}/stop` → `Item`.
    StopProtection { item: String, body: Stop },
    /// `POST /items/{item}/resume` → `Item`.
    ResumeProtection { item: String, body: Resume },
    /// `POST /items/{item}/policy` → `Item`.
    SetPolicy { item: String, body: SetPolicy },
    /// `POST /items/{item}/undelete` → `Item`.
    Undelete { item: String },
    /// `GET /items/{item}/precheck` → `Precheck`.
    Precheck { item: String },
    /// `POST /items/{item}/format` → `Item`.
    SetFormat { item: String, body: SetFormat },
    /// `POST /items/{item}/agent` → `Item`.
    SetAgent { item: String, body: SetAgent },
    /// `POST /items/{item}/backups` → a job whose result is the backup's report.
    BackupNow { item: String, body: BackupNow },
    /// `GET /items/{item}/recovery-points` → `Vec<RecoveryPoint>`.
    ListRecoveryPoints { item: String },
    /// `GET /items/{item}/recovery-points/{rp}` → `RecoveryPointDetail`.
    GetRecoveryPoint { item: String, rp: String },
    /// `GET /items/{item}/recovery-points/{rp}/volumes` → `PointVolumes`.
    ListVolumes {
        item: String,
        rp: String,
        query: DiskQuery,
    },
    /// `GET /items/{item}/recovery-points/{rp}/files` → `FileListing`.
    ListFiles {
        item: String,
        rp: String,
        query: FilesQuery,
    },
    /// `POST /items/{item}/file-restores` → a job whose result is the file restore's report.
    RestoreFiles { item: String, body: RestoreFiles },
    /// `POST /items/{item}/restores` → a job whose result is the restore's report.
    Restore { item: String, body: Restore },
    /// `POST /items/{item}/disk-restores` → a job whose result lists one report per disk.
    RestoreDisks { item: String, body: RestoreDisks },
    /// `POST /items/{item}/vm-restores` → a job whose result is the VM restore's report.
    RestoreVm { item: String, body: RestoreVm },
    /// `GET /items/{item}/retention-plan` → `RetentionPlan`.
    RetentionPlan { item: String, query: At },
    /// `POST /items/{item}/retention` → `RetentionPlan`.
    ApplyRetention { item: String, body: RetentionApply },
    /// `POST /verify` → a job whose result is the verify report.
    Verify(Verify),
    /// `POST /vaults/{vault}/gc` → a job whose result is the GC report.
    Gc { vault: String, body: Gc },
    /// `POST /vaults/{vault}/replicate` → a job whose result is the replication report.
    Replicate { vault: String },
    /// `GET /jobs` → `Vec<Job>`.
    ListJobs(JobFilter),
    /// `GET /jobs/{job}` → `Job`.
    GetJob { job: String },
    /// `POST /jobs/{job}/cancel` → `Job`.
    CancelJob { job: String },
    /// `GET /tokens` → `Vec<Token>`.
    ListTokens,
    /// `POST /tokens` → `NewToken`.
    CreateToken(NewTokenRequest),
    /// `DELETE /tokens/{name}` → `Revoked`.
    RevokeToken { name: String },
    /// `POST /tokens/{name}/reset` → `NewToken`.
    ResetToken { name: String, body: ResetToken },
    /// `GET /usage` → `Vec<VaultUsage>`.
    Usage(UsageFilter),
}

/// A [`Call`] as an HTTP request.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// The route's path under `/api/v1`, with `{param}` segments (as in the route table).
    pub route: &'static str,
    /// The path under `/api/v1`, names percent-encoded, query string included.
    pub path: String,
    /// The JSON body, for the methods that send one.
    pub body: Option<Value>,
}

impl Call {
    /// Whether the server answers with a job (`202`, `JobAccepted`) rather than the result.
    pub fn starts_job(&self) -> bool {
        matches!(
            self,
            Call::BackupNow { .. }
                | Call::Restore { .. }
                | Call::RestoreDisks { .. }
                | Call::RestoreVm { .. }
                | Call::RestoreFiles { .. }
                | Call::Verify(_)
                | Call::Gc { .. }
                | Call::Replicate { .. }
        )
    }

    /// The HTTP request for this call.
    pub fn http(&self) -> HttpCall {
        use Call as C;
        let get = |route, path: String| (route, "GET", path, None);
        let delete = |route, path: String| (route, "DELETE", path, None);
        let post = |route, path: String, body: Value| (route, "POST", path, Some(body));
        let (route, method, path, body): (&'static str, &'static str, String, Option<Value>) =
            match self {
                C::ListVaults => get("/vaults", "/vaults".into()),
                C::GetVault { vault } => get("/vaults/{vault}", format!("/vaults/{}", seg(vault))),
                C::VaultTrend { vault } => get(
                    "/vaults/{vault}/trend",
                    format!("/vaults/{}/trend", seg(vault)),
                ),
                C::CreateVault(b) => post("/vaults", "/vaults".into(), json(b)),
                C::UpdateVault { vault, body } => (
                    "/vaults/{vault}",
                    "PATCH",
                    format!("/vaults/{}", seg(vault)),
                    Some(json(body)),
                ),
                C::AttachVault(b) => post("/vaults/attach", "/vaults/attach".into(), json(b)),
                C::ListPolicies { vault } => get(
                    "/vaults/{vault}/policies",
                    format!("/vaults/{}/policies", seg(vault)),
                ),
                C::CreatePolicy { vault, doc } => post(
                    "/vaults/{vault}/policies",
                    format!("/vaults/{}/policies", seg(vault)),
                    doc.clone(),
                ),
                C::GetPolicy { vault, policy } => get(
                    "/vaults/{vault}/policies/{policy}",
                    policy_path(vault, policy),
                ),
                C::UpdatePolicy { vault, policy, doc } => (
                    "/vaults/{vault}/policies/{policy}",
                    "PUT",
                    policy_path(vault, policy),
                    Some(doc.clone()),
                ),
                C::DeletePolicy { vault, policy } => delete(
                    "/vaults/{vault}/policies/{policy}",
                    policy_path(vault, policy),
                ),
                C::SimulatePolicy {
                    vault,
                    policy,
                    body,
                } => post(
                    "/vaults/{vault}/policies/{policy}/simulate",
                    format!("{}/simulate", policy_path(vault, policy)),
                    json(body),
                ),
                C::SimulateDocument(b) => {
                    post("/policy-simulations", "/policy-simulations".into(), json(b))
                }
                C::ListItems => get("/items", "/items".into()),
                C::Protect(b) => post("/items", "/items".into(), json(b)),
                C::GetItem { item } => get("/items/{item}", item_path(item, "")),
                C::StopProtection { item, body } => {
                    post("/items/{item}/stop", item_path(item, "/stop"), json(body))
                }
                C::ResumeProtection { item, body } => post(
                    "/items/{item}/resume",
                    item_path(item, "/resume"),
                    json(body),
                ),
                C::SetPolicy { item, body } => post(
                    "/items/{item}/policy",
                    item_path(item, "/policy"),
                    json(body),
                ),
                C::Undelete { item } => post(
                    "/items/{item}/undelete",
                    item_path(item, "/undelete"),
                    Value::Object(Default::default()),
                ),
                C::Precheck { item } => get("/items/{item}/precheck", item_path(item, "/precheck")),
                C::SetFormat { item, body } => post(
                    "/items/{item}/format",
                    item_path(item, "/format"),
                    json(body),
                ),
                C::SetAgent { item, body } => {
                    post("/items/{item}/agent", item_path(item, "/agent"), json(body))
                }
                C::BackupNow { item, body } => post(
                    "/items/{item}/backups",
                    item_path(item, "/backups"),
                    json(body),
                ),
                C::ListRecoveryPoints { item } => get(
                    "/items/{item}/recovery-points",
                    item_path(item, "/recovery-points"),
                ),
                C::GetRecoveryPoint { item, rp } => get(
                    "/items/{item}/recovery-points/{rp}",
                    item_path(item, &format!("/recovery-points/{}", seg(rp))),
                ),
                C::ListVolumes { item, rp, query } => get(
                    "/items/{item}/recovery-points/{rp}/volumes",
                    item_path(item, &format!("/recovery-points/{}/volumes", seg(rp)))
                        + &query_string(query),
                ),
                C::ListFiles { item, rp, query } => get(
                    "/items/{item}/recovery-points/{rp}/files",
                    item_path(item, &format!("/recovery-points/{}/files", seg(rp)))
                        + &query_string(query),
                ),
                C::RestoreFiles { item, body } => post(
                    "/items/{item}/file-restores",
                    item_path(item, "/file-restores"),
                    json(body),
                ),
                C::Restore { item, body } => post(
                    "/items/{item}/restores",
                    item_path(item, "/restores"),
                    json(body),
                ),
                C::RestoreDisks { item, body } => post(
                    "/items/{item}/disk-restores",
                    item_path(item, "/disk-restores"),
                    json(body),
                ),
                C::RestoreVm { item, body } => post(
                    "/items/{item}/vm-restores",
                    item_path(item, "/vm-restores"),
                    json(body),
                ),
                C::RetentionPlan { item, query } => get(
                    "/items/{item}/retention-plan",
                    item_path(item, "/retention-plan") + &query_string(query),
                ),
                C::ApplyRetention { item, body } => post(
                    "/items/{item}/retention",
                    item_path(item, "/retention"),
                    json(body),
                ),
                C::Verify(b) => post("/verify", "/verify".into(), json(b)),
                C::Gc { vault, body } => post(
                    "/vaults/{vault}/gc",
                    format!("/vaults/{}/gc", seg(vault)),
                    json(body),
                ),
                C::Replicate { vault } => post(
                    "/vaults/{vault}/replicate",
                    format!("/vaults/{}/replicate", seg(vault)),
                    serde_json::json!({}),
                ),
                C::ListJobs(filter) => get("/jobs", format!("/jobs{}", query_string(filter))),
                C::GetJob { job } => get("/jobs/{job}", format!("/jobs/{}", seg(job))),
                C::CancelJob { job } => post(
                    "/jobs/{job}/cancel",
                    format!("/jobs/{}/cancel", seg(job)),
                    Value::Object(Default::default()),
                ),
                C::ListTokens => get("/tokens", "/tokens".into()),
                C::CreateToken(b) => post("/tokens", "/tokens".into(), json(b)),
                C::RevokeToken { name } => {
                    delete("/tokens/{name}", format!("/tokens/{}", seg(name)))
                }
                C::ResetToken { name, body } => post(
                    "/tokens/{name}/reset",
                    format!("/tokens/{}/reset", seg(name)),
                    json(body),
                ),
                C::Usage(filter) => get("/usage", format!("/usage{}", query_string(filter))),
            };
        HttpCall {
            method,
            route,
            path,
            body,
        }
    }
}

fn json(body: &impl Serialize) -> Value {
    serde_json::to_value(body).expect("request types serialize")
}

fn item_path(item: &str, rest: &str) -> String {
    format!("/items/{}{rest}", seg(item))
}

fn policy_path(vault: &str, policy: &str) -> String {
    format!("/vaults/{}/policies/{}", seg(vault), seg(policy))
}

/// `?k=v&...` for the fields of a query type that are set; empty when none is.
fn query_string(q: &impl Serialize) -> String {
    let Value::Object(fields) = json(q) else {
        return String::new();
    };
    let pairs: Vec<String> = fields
        .iter()
        .filter_map(|(k, v)| match v {
            Value::Null => None,
            Value::String(s) => Some(format!("{k}={}", seg(s))),
            other => Some(format!("{k}={}", seg(&other.to_string()))),
        })
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// Percent-encodes one path segment or query value (RFC 3986 unreserved characters stay).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_and_unset_query_fields_left_out() {
        let c = Call::GetRecoveryPoint {
            item: "a b/c".into(),
            rp: "latest".into(),
        };
        assert_eq!(c.http().path, "/items/a%20b%2Fc/recovery-points/latest");
        let c = Call::ListJobs(JobFilter {
            limit: Some(5),
            item: Some("x&y".into()),
            ..Default::default()
        });
        let h = c.http();
        let (path, query) = h.path.split_once('?').unwrap();
        let mut pairs: Vec<&str> = query.split('&').collect();
        pairs.sort_unstable();
        assert_eq!((path, pairs), ("/jobs", vec!["item=x%26y", "limit=5"]));
        assert_eq!((h.method, h.route, h.body), ("GET", "/jobs", None));
        assert_eq!(Call::Usage(UsageFilter::default()).http().path, "/usage");
    }
}
