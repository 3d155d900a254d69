//! Object storage (S3 and Azure Blob) through Apache OpenDAL.
//!
//! One [`ObjectBackend`] serves both services: they differ only in the OpenDAL builder that
//! [`crate::location`] makes. Every HTTP request goes through [`Transport`], which counts it
//! (a job reports its storage requests) and, in builds with the `fault-injection` feature,
//! can fail it on purpose. OpenDAL's retry layer retries what the service calls transient
//! (5xx, 429, timeouts, dropped connections) with jittered exponential backoff.

use std::future::IntoFuture;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{Buffer, ErrorKind, HttpBody, HttpTransport, HttpTransporter, Operator};

use crate::{Backend, Error, Requests, Result, check_key, check_prefix, check_range};

/// Attempts per request: the first and up to this many retries.
const RETRIES: usize = 6;

/// A vault on an object store.
#[derive(Debug)]
pub struct ObjectBackend {
    op: Operator,
    rt: tokio::runtime::Runtime,
    /// `s3://bucket/prefix`, for messages.
    location: String,
    counts: Arc<Counts>,
}

impl ObjectBackend {
    /// Wraps an operator built for a service (its root already the vault's prefix).
    pub(crate) fn new(op: Operator, location: String, faults: Option<Arc<Faults>>) -> Result<Self> {
        let storage_err = |message: String| Error::Storage {
            key: location.clone(),
            op: "open",
            message,
        };
        let counts = Arc::new(Counts::default());
        let client = http_client().map_err(storage_err)?;
        // A request that hangs is cut off and retried. With injected faults the limits are
        // short, so that a test meets them in seconds (a hang lasts longer than them).
        let (timeout, io_timeout) = match &faults {
            Some(_) => (faults::TEST_TIMEOUT, faults::TEST_TIMEOUT),
            None => (Duration::from_secs(120), Duration::from_secs(30)),
        };
        let transport = Transport {
            inner: opendal_http_transport_reqwest::ReqwestTransport::new(client),
            counts: counts.clone(),
            faults,
        };
        let ctx = op
            .context()
            .with_http_transport(HttpTransporter::new(transport));
        let op = op
            .with_context(ctx)
            .layer(
                TimeoutLayer::new()
                    .with_timeout(timeout)
                    .with_io_timeout(io_timeout),
            )
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(RETRIES),
            );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kura-object-io")
            .enable_all()
            .build()
            .map_err(|e| storage_err(e.to_string()))?;
        Ok(ObjectBackend {
            op,
            rt,
            location,
            counts,
        })
    }

    fn err(&self, key: &str, op: &'static str, e: opendal::Error) -> Error {
        match e.kind() {
            // A write has no object to miss: its bucket or container is.
            ErrorKind::NotFound if op == "put" => Error::Storage {
                key: format!("{}/{key}", self.location),
                op,
                message: "the bucket or container does not exist (kura does not create it)".into(),
            },
            ErrorKind::NotFound => Error::NotFound {
                key: key.to_string(),
            },
            _ => Error::Storage {
                key: format!("{}/{key}", self.location),
                op,
                message: e.to_string(),
            },
        }
    }
}

/// HTTPS with rustls (ring) and the platform's trusted roots.
fn http_client() -> std::result::Result<reqwest::Client, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

impl Backend for ObjectBackend {
    fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        check_key(key)?;
        self.rt
            .block_on(self.op.write(key, data))
            .map(drop)
            .map_err(|e| self.err(key, "put", e))
    }

    fn put_new(&self, key: &str, data: Vec<u8>) -> Result<()> {
        check_key(key)?;
        let sent = Buffer::from(data);
        let res = self.rt.block_on(
            self.op
                .write_with(key, sent.clone())
                .if_not_exists(true)
                .into_future(),
        );
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConditionNotMatch | ErrorKind::AlreadyExists
                ) =>
            {
                // A retry after a lost reply finds our own first attempt: the same bytes are
                // there (every blob holds a random salt, so nobody else writes them).
                match self.rt.block_on(self.op.read(key)) {
                    Ok(there) if there.to_bytes() == sent.to_bytes() => Ok(()),
                    _ => Err(Error::AlreadyExists {
                        key: key.to_string(),
                    }),
                }
            }
            Err(e) => Err(self.err(key, "put", e)),
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        check_key(key)?;
        self.rt
            .block_on(self.op.read(key))
            .map(|b| b.to_vec())
            .map_err(|e| self.err(key, "get", e))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        check_key(key)?;
        let want = range.end.saturating_sub(range.start);
        if range.start >= range.end {
            // HTTP cannot ask for zero bytes: the size alone answers.
            let size = self.stat(key)?.ok_or_else(|| Error::NotFound {
                key: key.to_string(),
            })?;
            check_range(key, &range, size)?;
            return Ok(Vec::new());
        }
        let res = self
            .rt
            .block_on(self.op.read_with(key).range(range.clone()).into_future());
        let failure = match res {
            Ok(b) if b.len() as u64 == want => return Ok(b.to_vec()),
            Ok(_) => Error::Storage {
                key: format!("{}/{key}", self.location),
                op: "get",
                message: format!("asked for {want} bytes, got fewer"),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(self.err(key, "get", e)),
            Err(e) => self.err(key, "get", e),
        };
        // Past the end (416, or fewer bytes than asked): say so with the object's size.
        let size = self.stat(key)?.ok_or_else(|| Error::NotFound {
            key: key.to_string(),
        })?;
        check_range(key, &range, size)?;
        Err(failure)
    }

    fn stat(&self, key: &str) -> Result<Option<u64>> {
        check_key(key)?;
        match self.rt.block_on(self.op.stat(key)) {
            Ok(m) => Ok(Some(m.content_length())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(key, "stat", e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_sizes(prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        check_prefix(prefix)?;
        let listed = self
            .rt
            .block_on(self.op.list_with(prefix).recursive(true).into_future());
        let entries = match listed {
            Ok(e) => e,
            // Nothing under the prefix.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(prefix, "list", e)),
        };
        let mut out: Vec<(String, u64)> = entries
            .into_iter()
            .filter(|e| !e.metadata().is_dir() && !e.path().ends_with('/'))
            .map(|e| (e.path().to_string(), e.metadata().content_length()))
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        match self.rt.block_on(self.op.delete(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(key, "delete", e)),
        }
    }

    /// One request per batch: S3's DeleteObjects (1,000 keys), Azure's blob batch (256).
    fn delete_many(&self, keys: &[String]) -> Result<()> {
        for k in keys {
            check_key(k)?;
        }
        let first = keys.first().map_or("", String::as_str);
        match self
            .rt
            .block_on(self.op.delete_iter(keys.iter().map(String::as_str)))
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(first, "delete", e)),
        }
    }

    /// An object store answers a put only once the object is durable: nothing to wait for.
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn requests(&self) -> Option<Requests> {
        Some(self.counts.snapshot())
    }
}

/// Requests sent, by kind (retries included: each attempt is a request).
#[derive(Debug, Default)]
struct Counts {
    get: AtomicU64,
    put: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    other: AtomicU64,
}

impl Counts {
    fn count(&self, req: &http::Request<Buffer>) {
        let query = req.uri().query().unwrap_or("");
        let listing = query.contains("list-type=") || query.contains("comp=list");
        let c = match *req.method() {
            http::Method::GET if listing => &self.list,
            http::Method::GET => &self.get,
            http::Method::PUT => &self.put,
            http::Method::HEAD => &self.head,
            http::Method::DELETE => &self.delete,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Requests {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Requests {
            get: l(&self.get),
            put: l(&self.put),
            head: l(&self.head),
            list: l(&self.list),
            delete: l(&self.delete),
            other: l(&self.other),
        }
    }
}

/// The HTTP transport: reqwest, with every request counted (and, in fault-injection builds,
/// some failed on purpose).
struct Transport {
    inner: opendal_http_transport_reqwest::ReqwestTransport,
    counts: Arc<Counts>,
    faults: Option<Arc<Faults>>,
}

impl HttpTransport for Transport {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        self.counts.count(&req);
        match self.faults.as_ref().and_then(|f| f.pick()) {
            None => self.inner.fetch(req).await,
            Some(fault) => fault.apply(&self.inner, req).await,
        }
    }
}

pub use faults::Faults;

/// Failures injected into a share of requests, for the tests of what kura does when the
/// network or the service misbehaves. Only `fault-injection` builds can make one.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
mod faults {
    use super::*;

    /// Which requests fail, and how: deterministic for a seed. Without the `fault-injection`
    /// feature there is no way to make one, so a release build never injects anything.
    #[derive(Debug)]
    pub struct Faults {
        /// Per mille of requests that fail.
        per_mille: u32,
        state: std::sync::Mutex<u64>,
        injected: AtomicU64,
    }

    pub(super) enum Fault {
        /// The service answers 503 Slow Down without doing anything.
        Unavailable,
        /// The request is carried out, but its answer is lost (a dropped connection).
        LostReply,
        /// The answer comes late (a congested link).
        Slow,
        /// Nothing comes back before the timeout: the request is cut off (never sent).
        Hang,
        /// The request is carried out and its answer starts, but the connection drops
        /// halfway through the body (at once when there is none).
        CutBody,
    }

    /// The request timeouts of a backend with injected faults.
    pub(super) const TEST_TIMEOUT: Duration = Duration::from_secs(2);

    impl Faults {
        /// `rate` of all requests (0.0 to 1.0) fail, chosen by a generator seeded with `seed`.
        #[cfg(feature = "fault-injection")]
        pub fn new(rate: f64, seed: u64) -> Faults {
            Faults {
                per_mille: (rate.clamp(0.0, 1.0) * 1000.0).round() as u32,
                state: std::sync::Mutex::new(seed | 1),
                injected: AtomicU64::new(0),
            }
        }

        /// How many requests were failed so far.
        #[cfg(feature = "fault-injection")]
        pub fn injected(&self) -> u64 {
            self.injected.load(Ordering::Relaxed)
        }

        #[cfg(not(feature = "fault-injection"))]
        pub(super) fn pick(&self) -> Option<Fault> {
            None
        }

        #[cfg(feature = "fault-injection")]
        pub(super) fn pick(&self) -> Option<Fault> {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            // xorshift64*: enough to spread faults, and the same for a seed.
            *s ^= *s >> 12;
            *s ^= *s << 25;
            *s ^= *s >> 27;
            let r = s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33;
            if (r % 1000) as u32 >= self.per_mille {
                return None;
            }
            // The kinds take turns, so any five faults in a row include each of them.
            Some(match self.injected.fetch_add(1, Ordering::Relaxed) % 5 {
                0 => Fault::Unavailable,
                1 => Fault::LostReply,
                2 => Fault::Slow,
                3 => Fault::Hang,
                _ => Fault::CutBody,
            })
        }
    }

    impl Fault {
        pub(super) async fn apply(
            self,
            inner: &opendal_http_transport_reqwest::ReqwestTransport,
            req: http::Request<Buffer>,
        ) -> opendal::Result<http::Response<HttpBody>> {
            match self {
                Fault::Unavailable => {
                    let body = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>";
                    let body = Buffer::from(body.to_vec());
                    let len = body.len() as u64;
                    Ok(http::Response::builder()
                        .status(503)
                        .body(HttpBody::new(futures::stream::iter([Ok(body)]), Some(len)))
                        .expect("a valid response"))
                }
                Fault::LostReply => {
                    let _ = inner.fetch(req).await?;
                    Err(opendal::Error::new(
                        ErrorKind::Unexpected,
                        "connection reset (injected after the request was carried out)",
                    )
                    .set_temporary())
                }
                Fault::Slow => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    inner.fetch(req).await
                }
                Fault::Hang => {
                    tokio::time::sleep(TEST_TIMEOUT * 2).await;
                    inner.fetch(req).await
                }
                Fault::CutBody => {
                    let resp = inner.fetch(req).await?;
                    let keep = http_len(&resp).map_or(0, |n| n / 2);
                    Ok(resp.map(|body| body.map_inner(|stream| Box::new(Cut { stream, keep }))))
                }
            }
        }
    }

    /// The length the response's head announces.
    fn http_len(resp: &http::Response<HttpBody>) -> Option<u64> {
        resp.headers()
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    type BodyStream =
        Box<dyn futures::Stream<Item = opendal::Result<Buffer>> + Send + Sync + Unpin + 'static>;

    /// A body that yields its first `keep` bytes, then fails as a reset connection would.
    struct Cut {
        stream: BodyStream,
        keep: u64,
    }

    impl futures::Stream for Cut {
        type Item = opendal::Result<Buffer>;

        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            use std::task::Poll;
            if self.keep == 0 {
                return Poll::Ready(Some(Err(opendal::Error::new(
                    ErrorKind::Unexpected,
                    "connection reset in the middle of the body (injected)",
                )
                .set_temporary())));
            }
            match std::pin::Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Ready(Some(Ok(buf))) => {
                    let n = (buf.len() as u64).min(self.keep);
                    self.keep -= n;
                    Poll::Ready(Some(Ok(buf.slice(..n as usize))))
                }
                // Ended (or failed) before the cut: the cut still comes next.
                Poll::Ready(None) => {
                    self.keep = 0;
                    self.poll_next(cx)
                }
                other => other,
            }
        }
    }
}
