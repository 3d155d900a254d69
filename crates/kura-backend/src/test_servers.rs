//! Real object-storage servers on loopback, for tests (feature `test-servers`): moto's S3
//! server, s3s-fs and Azurite, as installed by `scripts/get-object-stores` into
//! `$KURA_OBJECT_STORES` (default `~/.cache/kura/object-stores`). A missing server is a test
//! failure that says how to install it, never a skipped test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Location, StorageEnv};

/// The bucket or container every test server gets.
pub const BUCKET: &str = "kura-test";

/// Azurite's account and its well-known development key (public, in Azure's documentation).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// moto's S3 server (PyPI).
    Moto,
    /// s3s-fs (installed with cargo): S3 over plain files.
    S3sFs,
    /// Azurite's blob service (npm).
    Azurite,
}

/// A running server, stopped when dropped.
#[derive(Debug)]
pub struct TestStore {
    /// Which server it is.
    pub kind: Kind,
    child: Option<Child>,
    port: u16,
    _data: tempfile::TempDir,
}

fn install_dir() -> PathBuf {
    std::env::var_os("KURA_OBJECT_STORES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kura/object-stores")
        })
}

fn tool(rel: &str) -> PathBuf {
    let path = install_dir().join(rel);
    assert!(
        path.exists(),
        "{} is missing: run scripts/get-object-stores (scripts/test does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl TestStore {
    /// Starts one server of `kind` with an empty bucket (container) [`BUCKET`].
    pub fn start(kind: Kind) -> TestStore {
        let data = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut cmd = match kind {
            Kind::Moto => {
                let mut c = Command::new(tool("moto/bin/moto_server"));
                c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                c
            }
            Kind::S3sFs => {
                std::fs::create_dir(data.path().join(BUCKET)).expect("bucket directory");
                let mut c = Command::new(tool("s3s-fs/bin/s3s-fs"));
                c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args([
                        "--access-key",
                        "kura-test-key",
                        "--secret-key",
                        "kura-test-secret",
                    ])
                    .arg(data.path());
                c
            }
            Kind::Azurite => {
                let mut c = Command::new(tool("azurite/node_modules/.bin/azurite-blob"));
                c.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                    .arg("--location")
                    .arg(data.path())
                    .args(["--silent", "--skipApiVersionCheck"]);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {kind:?}: {e}"));
        let mut store = TestStore {
            kind,
            child: Some(child),
            port,
            _data: data,
        };
        store.wait_up();
        match kind {
            Kind::Moto => store.make_moto_bucket(),
            Kind::S3sFs => {}
            Kind::Azurite => store.make_container(BUCKET),
        }
        store
    }

    fn wait_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{:?} exited at start: {status}", self.kind);
            }
            assert!(Instant::now() < deadline, "{:?} did not start", self.kind);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// moto answers unsigned requests: one PUT makes the bucket.
    fn make_moto_bucket(&self) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            s,
            "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "moto bucket: {answer}");
    }

    /// Creates a container with Azure's own Python SDK (installed beside moto).
    pub fn make_container(&self, name: &str) {
        let script = format!(
            "from azure.storage.blob import BlobServiceClient\n\
             BlobServiceClient.from_connection_string({:?}).create_container({name:?})\n",
            self.azure_connection_string()
        );
        let out = Command::new(tool("moto/bin/python"))
            .args(["-c", &script])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "creating container {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn azure_connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};\
             BlobEndpoint=http://127.0.0.1:{}/{AZURITE_ACCOUNT};",
            self.port
        )
    }

    /// The location of a vault under `prefix` on this server.
    pub fn location(&self, prefix: &str) -> String {
        match self.kind {
            Kind::Moto | Kind::S3sFs => format!("s3://{BUCKET}/{prefix}"),
            Kind::Azurite => format!("azblob://{AZURITE_ACCOUNT}/{BUCKET}/{prefix}"),
        }
    }

    /// The variables a kura process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let endpoint = format!("http://127.0.0.1:{}", self.port);
        match self.kind {
            Kind::Moto => vec![
                ("AWS_ENDPOINT_URL", endpoint),
                ("AWS_REGION", "us-east-1".into()),
                ("AWS_ACCESS_KEY_ID", "testing".into()),
                ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ],
            Kind::S3sFs => vec![
                ("AWS_ENDPOINT_URL", endpoint),
                ("AWS_REGION", "us-east-1".into()),
                ("AWS_ACCESS_KEY_ID", "kura-test-key".into()),
                ("AWS_SECRET_ACCESS_KEY", "kura-test-secret".into()),
            ],
            Kind::Azurite => vec![
                (
                    "AZURE_STORAGE_ENDPOINT",
                    format!("{endpoint}/{AZURITE_ACCOUNT}"),
                ),
                ("AZURE_STORAGE_KEY", AZURITE_KEY.into()),
            ],
        }
    }

    /// [`TestStore::env`] as the backend reads it.
    pub fn storage_env(&self) -> StorageEnv {
        let mut env = StorageEnv::default();
        for (k, v) in self.env() {
            let slot = match k {
                "AWS_ENDPOINT_URL" => &mut env.aws_endpoint,
                "AWS_REGION" => &mut env.aws_region,
                "AWS_ACCESS_KEY_ID" => &mut env.aws_key_id,
                "AWS_SECRET_ACCESS_KEY" => &mut env.aws_secret,
                "AZURE_STORAGE_ENDPOINT" => &mut env.azure_endpoint,
                "AZURE_STORAGE_KEY" => &mut env.azure_key,
                _ => unreachable!("{k}"),
            };
            *slot = Some(v);
        }
        env
    }

    /// A location under `prefix`, parsed.
    pub fn parsed(&self, prefix: &str) -> Location {
        Location::parse(&self.location(prefix)).expect("a valid location")
    }

    /// Stops the server (a service outage); its data stays until the store is dropped.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        self.stop();
    }
}
