//! The CLI against a running `kura server` (`--server URL` or `KURA_SERVER`): the same
//! commands, sent to the HTTP API with `--token` (or `KURA_TOKEN`).

use anyhow::{Context, bail};
use serde_json::{Value, json};

use kura_api::{self as api, Call};

use crate::output::Out;
use crate::transport::Transport;

/// An API client.
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
    /// Where a followed job's progress goes.
    out: Out,
}

/// An error the server answered with; the CLI prints it and exits non-zero.
#[derive(Debug)]
pub struct ApiFailure {
    /// Stable code.
    pub code: String,
    /// Message.
    pub message: String,
    /// The wrong fields (path, message), when the server named them.
    pub fields: Vec<(String, String)>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    /// A client of the server at `url`. An `https` server's certificate is checked against
    /// `ca_file` (PEM, a private CA) when given, else against the system's trusted roots.
    pub fn new(
        url: &str,
        token: &str,
        ca_file: Option<&std::path::Path>,
        out: Out,
    ) -> anyhow::Result<Self> {
        use ureq::tls::{PemItem, RootCerts, TlsConfig};
        let roots = match ca_file {
            Some(f) => {
                let pem = std::fs::read(f).with_context(|| format!("--ca-file {}", f.display()))?;
                let mut certs = Vec::new();
                for item in ureq::tls::parse_pem(&pem) {
                    if let PemItem::Certificate(c) =
                        item.with_context(|| format!("--ca-file {}", f.display()))?
                    {
                        certs.push(c);
                    }
                }
                if certs.is_empty() {
                    bail!("--ca-file {}: no PEM certificate in it", f.display());
                }
                RootCerts::from(certs)
            }
            None => RootCerts::PlatformVerifier,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        Ok(Client {
            base: format!("{}/api/v1", url.trim_end_matches('/')),
            token: token.to_string(),
            agent,
            out,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let auth = format!("Bearer {}", self.token);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (m, b) => {
                let req = match m {
                    "PUT" => self.agent.put(&url),
                    "PATCH" => self.agent.patch(&url),
                    _ => self.agent.post(&url),
                };
                req.header("Authorization", &auth)
                    .send_json(b.unwrap_or_else(|| json!({})))
            }
        };
        let mut resp = resp
            .map_err(|e| anyhow::anyhow!("cannot reach the kura server at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .context("unreadable answer from the server")?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("the server answered {status} with non-JSON"))?;
        if status >= 400 {
            return Err(ApiFailure {
                code: v["error"]["code"].as_str().unwrap_or("error").to_string(),
                message: v["error"]["message"]
                    .as_str()
                    .unwrap_or("request failed")
                    .to_string(),
                fields: v["error"]["fields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
                        (s("field"), s("message"))
                    })
                    .collect(),
            }
            .into());
        }
        Ok(v)
    }
}

impl Transport for Client {
    fn send(&self, call: &Call) -> anyhow::Result<Value> {
        let h = call.http();
        let answer = self.call(h.method, &h.path, h.body)?;
        if !call.starts_job() {
            return Ok(answer);
        }
        let job = answer["job_id"]
            .as_str()
            .context("the server returned no job id")?;
        if !self.out.json() {
            eprintln!("job {job} queued");
        }
        let path = format!("/jobs/{}", api::call::seg(job));
        // Said once the job leaves the queue, as the command run on the host says it.
        let started = std::cell::Cell::new(false);
        let j = crate::output::follow(&self.out, false, || {
            let j = self.call("GET", &path, None)?;
            if !started.get() && j["status"] != "Queued" {
                started.set(true);
                if !self.out.json() {
                    eprintln!(
                        "job {job} started: {} of {}",
                        j["operation"].as_str().unwrap_or("?"),
                        j["target"].as_str().unwrap_or("?")
                    );
                }
            }
            Ok(j)
        })?;
        let status = j["status"].as_str().unwrap_or("?");
        // Warnings are in the report, as on the host; a backup whose transfer failed is an
        // error there (its point exists in the snapshot tier only), so it is here too.
        let warned = status == "CompletedWithWarnings" && j["result"]["transfer"] != "Failed";
        if status != "Completed" && !warned {
            // The same code and message as the command run on the server's host.
            let code = match (status, j["error_code"].as_str()) {
                ("Cancelled", _) => "cancelled",
                (_, Some(code)) => code,
                _ => "error",
            };
            let why = j["error"].as_str().unwrap_or(status);
            return Err(ApiFailure {
                code: code.into(),
                message: format!("{why} (job {job})"),
                fields: Vec::new(),
            }
            .into());
        }
        Ok(if j["result"].is_null() {
            j
        } else {
            j["result"].clone()
        })
    }
}
