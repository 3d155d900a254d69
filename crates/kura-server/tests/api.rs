//! The API against a real server on 127.0.0.1:0, with a tiny HTTP/1.1 client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use kura_engine::{Home, Secrets};
use kura_server::{AppState, ROUTES};
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token";

struct Server {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn start() -> Server {
    start_with(None)
}

/// A server whose home runs on `clock` (the system's when `None`).
fn start_with(clock: Option<Arc<dyn kura_engine::Clock>>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let home = match clock {
        Some(c) => Home::open_with(&dir.path().join("home"), c, jiff::tz::TimeZone::UTC),
        None => Home::open(&dir.path().join("home")),
    }
    .unwrap();
    // A home from before named tokens: its admin token's hash in a file.
    std::fs::write(
        dir.path().join("home").join(kura_server::LEGACY_TOKEN_FILE),
        format!("{}\n", blake3::hash(b"legacy-admin-token-1").to_hex()),
    )
    .unwrap();
    assert_eq!(
        kura_server::first_start(&home, None).unwrap(),
        kura_server::AdminToken::Existing,
        "the legacy admin token is adopted"
    );
    assert!(
        !dir.path()
            .join("home")
            .join(kura_server::LEGACY_TOKEN_FILE)
            .exists()
    );
    assert!(home.authenticate("legacy-admin-token-1").unwrap().is_some());
    // KURA_ADMIN_TOKEN sets the admin token at every start.
    assert_eq!(
        kura_server::first_start(&home, Some(TOKEN)).unwrap(),
        kura_server::AdminToken::Given
    );
    assert!(home.authenticate("legacy-admin-token-1").unwrap().is_none());
    let db = std::fs::read(dir.path().join("home").join("catalog.db")).unwrap();
    assert!(
        !db.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
        "only a hash is stored"
    );
    let home = Arc::new(home);
    // The server's queue with two workers, as `kura server` runs it.
    let queue = Arc::new(kura_engine::JobQueue::new(kura_engine::QueueLimits {
        jobs: 2,
        per_vault: 2,
    }));
    for _ in 0..2 {
        let (home, queue) = (home.clone(), queue.clone());
        std::thread::spawn(move || queue.serve(&home));
    }
    let state = Arc::new(AppState {
        home,
        queue,
        secrets: Secrets::default(),
        roots: kura_server::Roots {
            source: vec![dir.path().to_path_buf()],
            restore: vec![dir.path().to_path_buf()],
        },
        stopping: Default::default(),
        scheduler: Default::default(),
        secure_cookies: false,
        exports: Default::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        axum::serve(listener, kura_server::app(state))
            .await
            .unwrap()
    });
    Server { addr, dir, _rt: rt }
}

/// Sends one request; returns (status, JSON body).
fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let (status, _, payload) = call_raw(s, method, path, token, body);
    let v = serde_json::from_str(&payload)
        .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {payload:?}"));
    let errors = contract_errors(method, path, status, &v);
    assert!(
        errors.is_empty(),
        "{method} {path} -> {status}: the answer does not match the document: {errors:?}\n{v}"
    );
    (status, v)
}

/// Every answer any test gets is checked against the OpenAPI document's schema for its
/// route and status: the success body's schema, else the error envelope. Returns what does
/// not match.
fn contract_errors(method: &str, path: &str, status: u16, body: &Value) -> Vec<String> {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(kura_server::openapi);
    let path = path.split('?').next().unwrap_or(path);
    let fits = |template: &str| {
        let (a, b): (Vec<&str>, Vec<&str>) =
            (template.split('/').collect(), path.split('/').collect());
        a.len() == b.len() && a.iter().zip(&b).all(|(t, p)| t.starts_with('{') || t == p)
    };
    let op = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(template, _)| fits(template))
        .find_map(|(_, ops)| ops.get(method.to_ascii_lowercase()));
    let key = status.to_string();
    let schema = match op {
        Some(op) if op["responses"].get(&key).is_some() => {
            op["responses"][&key]["content"]["application/json"]["schema"].clone()
        }
        Some(op) => {
            let range = format!("{}XX", status / 100);
            assert!(
                op["responses"].get(&range).is_some(),
                "{method} {path}: status {status} is not documented"
            );
            op["responses"][&range]["content"]["application/json"]["schema"].clone()
        }
        // No such route, or not this method: the error envelope.
        None => json!({"$ref": "#/components/schemas/Error"}),
    };
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::validator_for(&root)
        .unwrap_or_else(|e| panic!("{method} {path}: the document's schema is invalid: {e}"));
    validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn answers_that_break_the_document_are_caught() {
    // The check every call makes is not vacuous: wrong shapes fail it.
    let vault = contract_errors("GET", "/api/v1/vaults", 200, &json!([{"id": 3}]));
    assert!(
        vault
            .iter()
            .any(|e| e.contains("\"name\" is a required property")),
        "{vault:?}"
    );
    assert!(!contract_errors("GET", "/api/v1/jobs/x", 200, &json!({"id": "x"})).is_empty());
    assert!(
        !contract_errors(
            "POST",
            "/api/v1/items/x/backups",
            202,
            &json!({"job_id": 1})
        )
        .is_empty()
    );
    assert!(!contract_errors("GET", "/api/v1/items", 404, &json!({"message": "x"})).is_empty());
    assert!(
        contract_errors(
            "GET",
            "/api/v1/items",
            404,
            &json!({"error": {"code": "not_found", "message": "x"}})
        )
        .is_empty()
    );
}

/// Sends one request; returns (status, head, body text).
fn call_raw(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    send(s, method, path, &auth, body)
}

/// Sends one request with `headers` (each line ending in CRLF); returns (status, head, body
/// text).
fn send(
    s: &Server,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut c = TcpStream::connect(s.addr).unwrap();
    let body = body.unwrap_or("");
    write!(c, "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let head_end = text.find("\r\n\r\n").unwrap();
    let head = &text[..head_end];
    let mut payload = text[head_end + 4..].to_string();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    (status, head.to_string(), payload)
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("\r\n") {
        let n = usize::from_str_radix(rest[..i].trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[i + 2..i + 2 + n]);
        rest = &rest[i + 2 + n + 2..];
    }
    out
}

fn ok(s: &Server, method: &str, path: &str, body: Option<Value>) -> Value {
    let b = body.map(|b| b.to_string());
    let (status, v) = call(s, method, path, Some(TOKEN), b.as_deref());
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "nope" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_route_needs_a_token_and_bad_input_is_a_4xx_json_error() {
    let s = start();
    for r in ROUTES {
        let path = concrete(r.path);
        if r.operation == "getOpenApi" {
            assert_eq!(call(&s, r.method, &path, None, None).0, 200);
            continue;
        }
        if r.operation == "createSession" {
            // Signing in is how a browser gets its cookie: the token is in the body.
            let (status, v) = call(&s, "POST", &path, None, Some(r#"{"token": "wrong"}"#));
            assert_eq!((status, &v["error"]["code"]), (401, &json!("unauthorized")));
            continue;
        }
        for token in [None, Some("wrong")] {
            let (status, v) = call(&s, r.method, &path, token, Some("{}"));
            assert_eq!(status, 401, "{} {path}", r.method);
            assert_eq!(v["error"]["code"], "unauthorized");
        }
        let bodies: &[&str] = if r.request.is_some() {
            &[
                "{not json",
                "[1, 2]",
                r#"{"unexpected_field": true}"#,
                r#"{"name": 5, "days": "x", "from": 3, "policy": [], "rp": 1, "to": false}"#,
            ]
        } else {
            &[""]
        };
        for body in bodies {
            let (status, v) = call(&s, r.method, &path, Some(TOKEN), Some(body));
            assert!(
                status < 500,
                "{} {path} with {body:?}: {status} {v}",
                r.method
            );
            if r.request.is_some() || r.path.contains('{') {
                // A bad body, or an unknown id in the path.
                assert!(
                    (400..500).contains(&status),
                    "{} {path} with {body:?}: {status} {v}",
                    r.method
                );
                assert!(
                    v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                    "{v}"
                );
            } else if r.operation == "getSession" {
                // A bearer token has no session to show.
                assert_eq!(status, 404, "{v}");
            } else {
                assert!(
                    (200..300).contains(&status),
                    "{} {path}: {status} {v}",
                    r.method
                );
            }
        }
    }
    // Unknown routes and methods are JSON errors too.
    assert_eq!(call(&s, "GET", "/api/v1/nothing", Some(TOKEN), None).0, 404);
    assert_eq!(
        call(&s, "DELETE", "/api/v1/items", Some(TOKEN), None).0,
        405
    );
}

#[test]
fn the_openapi_document_matches_the_routes() {
    let s = start();
    let doc = ok(&s, "GET", "/api/v1/openapi.json", None);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut listed = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            listed += 1;
            let r = ROUTES
                .iter()
                .find(|r| r.path == path && r.method.eq_ignore_ascii_case(method))
                .unwrap_or_else(|| panic!("{method} {path} is documented but not routed"));
            assert_eq!(op["operationId"], r.operation);
            // The server answers it: anything but "no such route" or "method not allowed".
            let (status, v) = call(
                &s,
                &method.to_ascii_uppercase(),
                &concrete(path),
                Some(TOKEN),
                Some("{}"),
            );
            assert!(
                status != 405 && v["error"]["message"] != "no such route",
                "{method} {path}: {status} {v}"
            );
        }
    }
    assert_eq!(listed, ROUTES.len());
}

#[test]
fn protect_back_up_and_restore_over_the_api() {
    let s = start();
    let vaults = ok(&s, "GET", "/api/v1/vaults", None);
    assert_eq!(
        vaults[0]["name"], "default",
        "the first start creates the default vault"
    );
    assert_eq!(vaults[0]["encryption"], "key-file");
    // Its wrapped key for escrow: the same document `vault key export` writes.
    let key = ok(&s, "GET", "/api/v1/vaults/default/key", None);
    assert_eq!(key["kura_wrapped_key"], 1, "{key}");
    assert_eq!(key["vault_id"], vaults[0]["id"], "{key}");
    assert!(key["key"].is_object(), "{key}");
    ok(
        &s,
        "POST",
        "/api/v1/vaults",
        Some(json!({"name": "small", "chunk_size": 65536})),
    );
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/vaults",
        Some(TOKEN),
        Some(&json!({"name": "small"}).to_string()),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("already_exists"))
    );
    let policies = ok(&s, "GET", "/api/v1/vaults/small/policies", None);
    assert_eq!(policies[0]["name"], "DefaultPolicy");
    let bad = json!({"name": "p", "schedule": {"frequency": "daily", "times": ["25:00"]}, "retention": {"daily": {"days": 3}}});
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/vaults/small/policies",
        Some(TOKEN),
        Some(&bad.to_string()),
    );
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retention.daily.days"),
        "{v}"
    );
    let good = json!({"name": "p", "schedule": {"frequency": "daily", "times": ["01:00"], "time_zone": "Europe/Berlin"}, "retention": {"daily": {"days": 7}}});
    ok(&s, "POST", "/api/v1/vaults/small/policies", Some(good));
    let sim = ok(
        &s,
        "POST",
        "/api/v1/vaults/small/policies/p/simulate",
        Some(json!({"from": "2026-01-01", "days": 10})),
    );
    assert_eq!(sim["runs"].as_array().unwrap().len(), 10);
    assert_eq!(sim["surviving"].as_array().unwrap().len(), 7);

    let img = s.dir.path().join("disk.raw");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    let item = ok(
        &s,
        "POST",
        "/api/v1/items",
        Some(json!({"kind": "disk", "source": img, "vault": "small", "policy": "p"})),
    );
    assert_eq!(item["name"], "disk");
    let started = ok(&s, "POST", "/api/v1/items/disk/backups", Some(json!({})));
    let job = started["job_id"].as_str().unwrap().to_string();
    let done = wait(&s, &job);
    assert_eq!(done["status"], "Completed", "{done}");
    let rps = ok(&s, "GET", "/api/v1/items/disk/recovery-points", None);
    assert_eq!(rps.as_array().unwrap().len(), 1);
    let status = ok(&s, "GET", "/api/v1/items/disk", None);
    assert_eq!(status["protection_state"], "Protected");
    let out = s.dir.path().join("restored.raw");
    let started = ok(
        &s,
        "POST",
        "/api/v1/items/disk/restores",
        Some(json!({"rp": "latest", "to": out})),
    );
    let done = wait(&s, started["job_id"].as_str().unwrap());
    assert_eq!(done["status"], "Completed", "{done}");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // A restore onto an existing file is refused before a job exists, with the reason.
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/items/disk/restores",
        Some(TOKEN),
        Some(&json!({"rp": "latest", "to": out}).to_string()),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("already_exists")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{v}"
    );
    let usage = ok(&s, "GET", "/api/v1/usage", None);
    assert!(usage.to_string().contains("\"disk\""));
    // The backup measured the vault for its storage trend.
    let trend = ok(&s, "GET", "/api/v1/vaults/small/trend", None);
    assert_eq!(trend["samples"].as_array().unwrap().len(), 1, "{trend}");
    assert!(
        trend["samples"][0]["stored_bytes"].as_u64().unwrap() > 0,
        "{trend}"
    );
    assert!(
        trend["filesystem"]["total_bytes"].as_u64().unwrap() > 0,
        "{trend}"
    );
    scrape_metrics(&s);
    job_filters_and_query_errors(&s);
    refused_before_any_job(&s);
    let plan = ok(&s, "GET", "/api/v1/items/disk/retention-plan", None);
    assert_eq!(plan["entries"][0]["action"], "keep");
    let (status, _) = call(
        &s,
        "GET",
        "/api/v1/items/disk/retention-plan?at=tomorrow",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 400);
    let (status, v) = call(
        &s,
        "DELETE",
        "/api/v1/vaults/small/policies/p",
        Some(TOKEN),
        None,
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    ok(
        &s,
        "POST",
        "/api/v1/items/disk/stop",
        Some(json!({"delete_data": true})),
    );
    ok(&s, "POST", "/api/v1/items/disk/undelete", None);
    ok(
        &s,
        "POST",
        "/api/v1/items/disk/resume",
        Some(json!({"policy": "p"})),
    );
    // A disk without a partition table or file system: one volume, nothing to browse.
    let vols = ok(
        &s,
        "GET",
        "/api/v1/items/disk/recovery-points/latest/volumes",
        None,
    );
    assert_eq!(vols["volumes"][0]["table"], "none", "{vols}");
    let (status, v) = call(
        &s,
        "GET",
        "/api/v1/items/disk/recovery-points/latest/files?path=/",
        Some(TOKEN),
        None,
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );
    let moved = ok(
        &s,
        "POST",
        "/api/v1/items/disk/policy",
        Some(json!({"policy": "DefaultPolicy"})),
    );
    assert_eq!(moved["policy"], "DefaultPolicy");
    assert!(moved["next_backup"].is_string(), "{moved}");
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/items/disk/policy",
        Some(TOKEN),
        Some(r#"{"policy": "DefaultPolicy", "extra": 1}"#),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_json")),
        "{v}"
    );
    ok(
        &s,
        "PATCH",
        "/api/v1/vaults/small",
        Some(json!({"soft_delete_days": 30})),
    );
}

/// `GET /jobs` filters by item, status and operation; a bad query string gets the JSON error
/// envelope naming the parameter.
fn job_filters_and_query_errors(s: &Server) {
    let all = ok(s, "GET", "/api/v1/jobs", None);
    let all = all.as_array().unwrap();
    assert!(all.iter().any(|j| j["operation"] == "Restore"), "{all:?}");
    let backups = ok(s, "GET", "/api/v1/jobs?operation=backup&item=disk", None);
    let backups = backups.as_array().unwrap();
    assert!(!backups.is_empty());
    assert!(
        backups
            .iter()
            .all(|j| j["operation"] == "Backup" && j["target"] == "disk"),
        "{backups:?}"
    );
    let done = ok(s, "GET", "/api/v1/jobs?status=Completed&limit=1", None);
    assert_eq!(done.as_array().unwrap().len(), 1);
    assert_eq!(done[0]["status"], "Completed");
    // `since`: only jobs started at or after an instant (the web UI's last 24 hours).
    let newest = all[0]["started"].as_str().unwrap().to_string();
    let since = ok(s, "GET", &format!("/api/v1/jobs?since={newest}"), None);
    let since = since.as_array().unwrap();
    assert!(!since.is_empty() && since.len() < all.len(), "{since:?}");
    assert!(
        since
            .iter()
            .all(|j| j["started"].as_str().unwrap() >= newest.as_str())
    );
    for (query, names) in [
        ("since=yesterday", "since"),
        ("limit=abc", "limit"),
        ("status=Done", "status"),
        ("operation=Nap", "operation"),
        ("colour=blue", "colour"),
    ] {
        let (status, v) = call(
            s,
            "GET",
            &format!("/api/v1/jobs?{query}"),
            Some(TOKEN),
            None,
        );
        assert_eq!(status, 400, "{query}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(names),
            "{query}: {v}"
        );
    }
    let (status, v) = call(
        s,
        "GET",
        "/api/v1/items/disk/retention-plan?at=2026-01-01T00:00:00Z&x=1",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`x`"),
        "{v}"
    );
}

/// Bad fields are refused with a 400 naming the JSON field, before a job exists; a vault
/// cannot take a name the API uses for a route.
fn refused_before_any_job(s: &Server) {
    let jobs_before = ok(s, "GET", "/api/v1/jobs?limit=10000", None)
        .as_array()
        .unwrap()
        .len();
    for bad in ["01/01/2027", "2020-01-01"] {
        let (status, v) = call(
            s,
            "POST",
            "/api/v1/items/disk/backups",
            Some(TOKEN),
            Some(&json!({"retain_until": bad}).to_string()),
        );
        assert_eq!(status, 400, "{bad}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("retain_until: ") && !msg.contains("--"),
            "{bad}: {msg}"
        );
    }
    let to = s.dir.path().join("never.raw");
    let (status, v) = call(
        s,
        "POST",
        "/api/v1/items/disk/restores",
        Some(TOKEN),
        Some(&json!({"rp": "0000ffff", "to": to}).to_string()),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    // The snapshot option is a file item's, and only takes the values it names.
    let items_before = ok(s, "GET", "/api/v1/items", None)
        .as_array()
        .unwrap()
        .len();
    let dir = s.dir.path().to_str().unwrap();
    for (body, says) in [
        (
            json!({"kind": "disk", "source": to, "vault": "v", "snapshot": "btrfs"}),
            "snapshot: only file items",
        ),
        (
            json!({"kind": "files", "source": dir, "vault": "v", "snapshot": "lvm"}),
            "expected none or btrfs",
        ),
    ] {
        let (status, v) = call(
            s,
            "POST",
            "/api/v1/items",
            Some(TOKEN),
            Some(&body.to_string()),
        );
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    let items_after = ok(s, "GET", "/api/v1/items", None)
        .as_array()
        .unwrap()
        .len();
    assert_eq!(items_before, items_after, "no item was made");
    let jobs_after = ok(s, "GET", "/api/v1/jobs?limit=10000", None)
        .as_array()
        .unwrap()
        .len();
    assert_eq!(jobs_before, jobs_after, "no job was made");
    let (status, v) = call(
        s,
        "POST",
        "/api/v1/vaults",
        Some(TOKEN),
        Some(&json!({"name": "attach"}).to_string()),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );
}

/// `/metrics` parses as Prometheus text and holds the backup and restores just run.
fn scrape_metrics(s: &Server) {
    assert_eq!(
        call_raw(s, "GET", "/metrics", None, None).0,
        401,
        "a token is needed"
    );
    let (status, head, text) = call_raw(s, "GET", "/metrics", Some(TOKEN), None);
    assert_eq!(status, 200, "{text}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .map(|x| match x.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        value(
            "kura_jobs",
            &[("operation", "Backup"), ("status", "Completed")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "kura_jobs",
            &[("operation", "Restore"), ("status", "Completed")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(value("kura_job_bytes", &[("operation", "Backup")]).unwrap() >= 300_000.0);
    let at = value(
        "kura_item_last_backup_success_timestamp_seconds",
        &[("item", "disk"), ("vault", "small")],
    )
    .unwrap();
    assert!(at > 1.7e9, "{at}");
    assert_eq!(
        value(
            "kura_item_last_backup_status",
            &[("item", "disk"), ("status", "Completed")]
        ),
        Some(1.0)
    );
    assert!(value("kura_vault_stored_bytes", &[("vault", "small")]).unwrap() > 0.0);
    assert_eq!(
        value("kura_item_recovery_points", &[("item", "disk")]),
        Some(1.0)
    );
    assert!(value("kura_scheduler_lag_seconds", &[]).is_some());
}

fn wait(s: &Server, job: &str) -> Value {
    for _ in 0..200 {
        let j = ok(s, "GET", &format!("/api/v1/jobs/{job}"), None);
        if j["status"] != "InProgress" && j["status"] != "Queued" {
            return j;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("job {job} did not finish");
}

/// A token cannot turn kura into a way to read or overwrite any file the server can: sources
/// and restore targets must lie inside the allow-lists, symlinks included.
#[test]
fn requests_read_and_write_only_inside_the_allowed_directories() {
    let s = start();
    let post =
        |path: &str, body: Value| call(&s, "POST", path, Some(TOKEN), Some(&body.to_string()));
    let (st, e) = post(
        "/api/v1/items",
        json!({"kind": "disk", "source": "/etc/shadow", "vault": "default"}),
    );
    assert_eq!(st, 403, "{e}");
    assert_eq!(e["error"]["code"], "forbidden");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-source"),
        "{e}"
    );
    let (st, e) = post(
        "/api/v1/items",
        json!({"kind": "disk", "source": "disk.raw", "vault": "default"}),
    );
    assert_eq!(st, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("relative"),
        "{e}"
    );
    // A symlink inside an allowed directory does not lead out of it.
    let link = s.dir.path().join("escape.raw");
    std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
    let (st, e) = post(
        "/api/v1/items",
        json!({"kind": "disk", "source": link, "vault": "default"}),
    );
    assert_eq!(st, 403, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resolves to /etc/hostname"),
        "{e}"
    );
    assert!(
        ok(&s, "GET", "/api/v1/items", None)
            .as_array()
            .unwrap()
            .is_empty()
    );

    let img = s.dir.path().join("d.raw");
    std::fs::write(&img, vec![5u8; 100_000]).unwrap();
    ok(
        &s,
        "POST",
        "/api/v1/items",
        Some(json!({"kind": "disk", "source": img, "vault": "default"})),
    );
    let done = wait(
        &s,
        ok(&s, "POST", "/api/v1/items/d/backups", Some(json!({})))["job_id"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(done["status"], "Completed", "{done}");
    for to in ["/etc/kura-api-test.raw", "/tmp/../etc/passwd"] {
        let (st, e) = post(
            "/api/v1/items/d/restores",
            json!({"rp": "latest", "to": to, "force": true}),
        );
        assert!(st == 403 || st == 400, "{to}: {st} {e}");
    }
    assert!(!std::path::Path::new("/etc/kura-api-test.raw").exists());
    let (st, e) = post(
        "/api/v1/vaults",
        json!({"name": "elsewhere", "path": "/var/tmp/kura-api-test-vault"}),
    );
    assert_eq!(st, 403, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-restore"),
        "{e}"
    );
}

/// Inputs the API body fuzzer was seeded with or found stay harmless.
#[cfg(feature = "fuzzing")]
#[test]
fn api_body_fuzz_regressions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for kind in ["regressions", "seeds"] {
        if let Ok(entries) = std::fs::read_dir(root.join(kind).join("api_body")) {
            for e in entries {
                kura_server::fuzz_bodies(&std::fs::read(e.unwrap().path()).unwrap());
            }
        }
    }
    for body in [
        &b"{\"rp\": \"latest\", \"to\": \"/x\", \"format\": 7}"[..],
        b"[[[[[[[[[[",
        b"{\"name\": \"\\ud800\"}",
    ] {
        kura_server::fuzz_bodies(body);
    }
}

/// The CLI sends `kura_api::Call`s through either transport. Every call must name a route
/// of the table with its method, and its body and query must be what the document says the
/// route takes: a client built on `Call` cannot drift from the server.
#[test]
fn every_client_call_is_a_documented_request() {
    use kura_api::{self as api, Call};
    let s = |x: &str| x.to_string();
    let doc = json!({"name": "p1", "schedule": {"frequency": "daily", "times": ["02:30"]},
                     "retention": {"daily": {"days": 30}}});
    let item = || s("web");
    let calls = vec![
        Call::ListVaults,
        Call::GetVault { vault: s("v 1") },
        Call::VaultTrend { vault: s("v 1") },
        Call::CreateVault(api::NewVault {
            name: s("v1"),
            path: Some(s("/srv/v1")),
            location: None,
            redundancy: Some(s("zone")),
            replica: Some(s("s3://kura-vaults/v1")),
            chunk_size: Some(65536),
            no_encryption: true,
        }),
        Call::UpdateVault {
            vault: s("v1"),
            body: api::VaultSettings {
                soft_delete: Some(s("enabled")),
                soft_delete_days: Some(20),
                redundancy: Some(s("geo")),
                replica: Some(s("azblob://acct/kura/v1")),
            },
        },
        Call::AttachVault(api::Attach {
            name: s("v2"),
            path: None,
            location: Some(s("s3://kura-vaults/v2")),
            key_file: None,
        }),
        Call::ListPolicies { vault: s("v1") },
        Call::CreatePolicy {
            vault: s("v1"),
            doc: doc.clone(),
        },
        Call::GetPolicy {
            vault: s("v1"),
            policy: s("p1"),
        },
        Call::UpdatePolicy {
            vault: s("v1"),
            policy: s("p1"),
            doc,
        },
        Call::DeletePolicy {
            vault: s("v1"),
            policy: s("p1"),
        },
        Call::SimulatePolicy {
            vault: s("v1"),
            policy: s("p1"),
            body: api::Simulate {
                from: s("2027-01-01"),
                days: 30,
            },
        },
        Call::SimulateDocument(api::SimulateDocument {
            policy: json!({"name": "p2", "schedule": {"frequency": "daily", "times": ["01:00"]},
                           "retention": {"daily": {"days": 7}}}),
            from: s("2027-01-01"),
            days: 10,
        }),
        Call::ListItems,
        Call::Protect(Box::new(api::Protect {
            kind: s("disk"),
            source: Some(s("/srv/disk.raw")),
            vault: s("v1"),
            ..Default::default()
        })),
        Call::GetItem { item: item() },
        Call::StopProtection {
            item: item(),
            body: api::Stop { delete_data: true },
        },
        Call::ResumeProtection {
            item: item(),
            body: api::Resume { policy: s("p1") },
        },
        Call::ListVolumes {
            item: item(),
            rp: s("latest"),
            query: api::DiskQuery {
                disk: Some(s("vda")),
            },
        },
        Call::ListFiles {
            item: item(),
            rp: s("latest"),
            query: api::FilesQuery {
                path: Some(s("/etc")),
                disk: None,
                volume: Some(1),
                archive: None,
                from_replica: Some(true),
            },
        },
        Call::RestoreFiles {
            item: item(),
            body: api::RestoreFiles {
                rp: s("latest"),
                paths: vec![s("/etc/hosts")],
                to: s("/srv/restores"),
                ..Default::default()
            },
        },
        Call::SetPolicy {
            item: item(),
            body: api::SetPolicy { policy: s("p1") },
        },
        Call::Undelete { item: item() },
        Call::Precheck { item: item() },
        Call::SetFormat {
            item: item(),
            body: api::SetFormat {
                format: Some(s("raw")),
            },
        },
        Call::SetAgent {
            item: item(),
            body: api::SetAgent {
                qga: Some(s("/run/vm/qga.sock")),
                require_agent: true,
                ..Default::default()
            },
        },
        Call::BackupNow {
            item: item(),
            body: api::BackupNow {
                retain_until: Some(s("2027-01-31")),
            },
        },
        Call::ListRecoveryPoints { item: item() },
        Call::GetRecoveryPoint {
            item: item(),
            rp: s("latest"),
        },
        Call::Restore {
            item: item(),
            body: api::Restore {
                rp: s("latest"),
                to: s("/srv/out.qcow2"),
                format: Some(s("qcow2")),
                force: false,
                disk: None,
                decrypt: false,
                from_replica: true,
            },
        },
        Call::RestoreDisks {
            item: item(),
            body: api::RestoreDisks {
                rp: s("latest"),
                to: s("/srv/out"),
                disks: vec![s("vda")],
                format: Some(s("raw")),
                force: false,
                decrypt: false,
                from_replica: false,
            },
        },
        Call::RestoreVm {
            item: item(),
            body: api::RestoreVm {
                rp: s("latest"),
                as_new: Some(s("web2")),
                to: Some(s("/srv/web2")),
                start: false,
                replace: false,
                stop: false,
                from_replica: true,
            },
        },
        Call::RetentionPlan {
            item: item(),
            query: api::At {
                at: Some(s("2027-01-01T00:00:00Z")),
            },
        },
        Call::ApplyRetention {
            item: item(),
            body: api::At { at: None },
        },
        Call::Verify(api::Verify {
            item: Some(item()),
            ..Default::default()
        }),
        Call::Gc {
            vault: s("v1"),
            body: api::Gc {
                grace_seconds: Some(60),
                dry_run: true,
            },
        },
        Call::Replicate { vault: s("v1") },
        Call::ListJobs(api::JobFilter {
            limit: Some(5),
            status: Some(s("Failed")),
            ..Default::default()
        }),
        Call::GetJob { job: s("01ab") },
        Call::CancelJob { job: s("01ab") },
        Call::ListTokens,
        Call::CreateToken(api::NewTokenRequest {
            name: s("ci"),
            expires: Some(s("2027-01-01")),
        }),
        Call::RevokeToken { name: s("ci") },
        Call::ResetToken {
            name: s("ci"),
            body: api::ResetToken::default(),
        },
        Call::Usage(api::UsageFilter {
            vault: Some(s("v1")),
        }),
    ];
    let document = kura_server::openapi();
    let mut reached = std::collections::BTreeSet::new();
    for call in &calls {
        let h = call.http();
        let route = ROUTES
            .iter()
            .find(|r| r.method == h.method && r.path == format!("/api/v1{}", h.route))
            .unwrap_or_else(|| panic!("{call:?}: {} {} is not a route", h.method, h.route));
        reached.insert(route.operation);
        assert_eq!(
            h.body.is_some(),
            h.method != "GET" && h.method != "DELETE",
            "{call:?}"
        );
        let op = &document["paths"][route.path][h.method.to_ascii_lowercase()];
        if let Some(body) = &h.body {
            let schema = op["requestBody"]["content"]["application/json"]["schema"].clone();
            let root = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": document["components"],
                "allOf": [if schema.is_null() { json!({"type": "object", "maxProperties": 0}) } else { schema }],
            });
            let errors: Vec<String> = jsonschema::validator_for(&root)
                .unwrap()
                .iter_errors(body)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{call:?}: body {body} breaks {errors:?}");
        }
        if let Some((_, query)) = h.path.split_once('?') {
            let params: Vec<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str())
                .collect();
            for pair in query.split('&') {
                let name = pair.split('=').next().unwrap();
                assert!(
                    params.contains(&name),
                    "{call:?}: ?{name} is not documented"
                );
            }
        }
    }
    // Every route a client can use is reachable through a Call (the document itself, the
    // key escrow, the web UI's sessions and downloads, which the CLI does not use, are the
    // exceptions).
    let missing: Vec<&str> = ROUTES
        .iter()
        .map(|r| r.operation)
        .filter(|op| {
            !reached.contains(op)
                && ![
                    "getOpenApi",
                    "exportKey",
                    "createSession",
                    "getSession",
                    "deleteSession",
                    "downloadFiles",
                    "startExport",
                    "listExports",
                    "stopExport",
                ]
                .contains(op)
        })
        .collect();
    assert!(missing.is_empty(), "no Call for {missing:?}");
}

/// The web UI's sign-in: a session cookie (HttpOnly, SameSite=Strict) that authorizes API
/// requests; a request that changes something needs the session's CSRF value too, so a
/// cross-site form post (which cannot set headers) is refused; sign-out and the session's
/// expiry end it.
#[test]
fn sessions_sign_in_refuse_cross_site_posts_and_expire() {
    use std::sync::atomic::{AtomicI64, Ordering};
    struct Manual(AtomicI64);
    impl kura_engine::Clock for Manual {
        fn now(&self) -> jiff::Timestamp {
            jiff::Timestamp::from_second(self.0.load(Ordering::SeqCst)).unwrap()
        }
    }
    let clock = Arc::new(Manual(AtomicI64::new(1_800_000_000)));
    let s = start_with(Some(clock.clone()));
    let body = format!(r#"{{"token": "{TOKEN}"}}"#);
    let (status, head, text) = send(&s, "POST", "/api/v1/session", "", Some(&body));
    assert_eq!(status, 201, "{text}");
    let session: Value = serde_json::from_str(&text).unwrap();
    assert!(contract_errors("POST", "/api/v1/session", 201, &session).is_empty());
    assert_eq!(session["token_name"], "admin");
    let csrf = session["csrf"].as_str().unwrap().to_string();
    let set = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a cookie is set")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(
        !text.contains(set.split(['=', ';']).nth(1).unwrap()),
        "the cookie is not in the body"
    );
    let with_cookie = cookie_header(&head);
    // Reads need only the cookie.
    let (status, _, text) = send(&s, "GET", "/api/v1/items", &with_cookie, None);
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = send(&s, "GET", "/api/v1/session", &with_cookie, None);
    assert_eq!((status, text.contains(&csrf)), (200, true), "{text}");
    // A cross-site form post carries the cookie (were SameSite not honoured) but cannot set
    // a header: refused, and nothing is made.
    let vault = r#"{"name": "csrf-made", "no_encryption": true}"#;
    let cross = format!("{with_cookie}Origin: https://evil.example\r\n");
    for headers in [cross.clone(), format!("{cross}X-CSRF-Token: guessed\r\n")] {
        let (status, _, text) = send(&s, "POST", "/api/v1/vaults", &headers, Some(vault));
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("\"csrf\""), "{text}");
    }
    assert_eq!(
        call(&s, "GET", "/api/v1/vaults/csrf-made", Some(TOKEN), None).0,
        404
    );
    // The page's own request echoes the value it got at sign-in.
    let page = format!("{with_cookie}X-CSRF-Token: {csrf}\r\n");
    let (status, _, text) = send(&s, "POST", "/api/v1/vaults", &page, Some(vault));
    assert_eq!(status, 201, "{text}");
    // Sign-out ends the session and clears the cookie; the old cookie is refused.
    let (status, head, _) = send(&s, "DELETE", "/api/v1/session", &page, None);
    assert_eq!(status, 200);
    assert!(head.contains("Max-Age=0"), "{head}");
    let (status, _, _) = send(&s, "GET", "/api/v1/items", &with_cookie, None);
    assert_eq!(status, 401);
    // A session ends at its expiry (12 h).
    let (_, head, _) = send(&s, "POST", "/api/v1/session", "", Some(&body));
    let with_cookie = cookie_header(&head);
    assert_eq!(send(&s, "GET", "/api/v1/items", &with_cookie, None).0, 200);
    clock.0.fetch_add(12 * 3600, Ordering::SeqCst);
    assert_eq!(send(&s, "GET", "/api/v1/items", &with_cookie, None).0, 401);
    // The UI itself is served from the binary, with a policy that keeps other sites'
    // scripts out.
    let (status, head, text) = send(&s, "GET", "/", "", None);
    assert_eq!(status, 200);
    assert!(
        head.contains("default-src 'self'") && text.contains("<html"),
        "{head}"
    );
    assert_eq!(send(&s, "GET", "/ui/no-such-file.js", "", None).0, 404);
}

/// The `Cookie:` request header that sends back the cookie an answer's head sets.
fn cookie_header(head: &str) -> String {
    let set = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a cookie is set");
    let cookie = set["set-cookie:".len()..].trim().split(';').next().unwrap();
    format!("Cookie: {cookie}\r\n")
}

/// A policy document with wrong fields is refused naming each field, in a list a form can
/// put next to its inputs; the same check previews a document that is not stored.
#[test]
fn policy_errors_name_each_field_and_unsaved_documents_preview() {
    let s = start();
    let bad = json!({"name": "p1", "schedule": {"frequency": "daily", "times": ["25:30"]},
                     "retention": {"daily": {"days": 3}}});
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/vaults/default/policies",
        Some(TOKEN),
        Some(&bad.to_string()),
    );
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid")),
        "{v}"
    );
    let fields: Vec<&str> = v["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["schedule.times[0]", "retention.daily.days"], "{v}");
    let body = json!({"policy": bad, "from": "2027-01-01", "days": 7}).to_string();
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/policy-simulations",
        Some(TOKEN),
        Some(&body),
    );
    assert_eq!(status, 400);
    assert_eq!(v["error"]["fields"].as_array().unwrap().len(), 2, "{v}");
    let good = json!({"name": "p1", "schedule": {"frequency": "daily", "times": ["02:30"]},
                      "retention": {"daily": {"days": 7}}});
    let body = json!({"policy": good, "from": "2027-01-01", "days": 10}).to_string();
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/policy-simulations",
        Some(TOKEN),
        Some(&body),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["runs"].as_array().unwrap().len(), 10, "one run a day");
    assert_eq!(
        v["surviving"].as_array().unwrap().len(),
        7,
        "seven daily points kept"
    );
    assert_eq!(
        call(
            &s,
            "GET",
            "/api/v1/vaults/default/policies/p1",
            Some(TOKEN),
            None
        )
        .0,
        404,
        "a preview stores nothing"
    );
}
