//! Recovery points served read-only over NBD for a limited time (Azure's file-recovery mount
//! script): the listener, the record every running export leaves in `HOME/exports/` (so any
//! process lists them), and the serving thread. `kura export` runs one in the foreground;
//! the server runs them for its API clients.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, FilesTarget, Home, Result, Secrets};

/// Where an export listens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ExportListen {
    /// A private Unix socket in the home's `exports/` directory.
    #[default]
    Home,
    /// A Unix socket at this path.
    Unix(PathBuf),
    /// A TCP address (port 0: any free one), with TLS and a client certificate of the
    /// export's own, always so off loopback.
    Tcp {
        /// Where to listen.
        addr: std::net::SocketAddr,
        /// Whether clients must use TLS (with the export's client certificate).
        tls: bool,
    },
}

impl ExportListen {
    /// Reads `unix:PATH` or `tcp:ADDRESS:PORT` (empty: [`ExportListen::Home`]). An address
    /// that is not loopback gets TLS: whoever can reach the port needs the export's client
    /// key too.
    pub fn parse(s: &str) -> Result<ExportListen> {
        if s.is_empty() {
            return Ok(ExportListen::Home);
        }
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(ExportListen::Unix(PathBuf::from(p)));
        }
        if let Some(a) = s.strip_prefix("tcp:") {
            let addr: std::net::SocketAddr = a.parse().map_err(|_| {
                Error::invalid(format!(
                    "listen: {s}: tcp:ADDRESS:PORT, e.g. tcp:127.0.0.1:10809"
                ))
            })?;
            return Ok(ExportListen::Tcp {
                addr,
                tls: !addr.ip().is_loopback(),
            });
        }
        Err(Error::invalid(format!(
            "listen: {s}: unix:PATH or tcp:ADDRESS:PORT"
        )))
    }

    /// The same with TLS required (`--tls`): only for TCP, since a Unix socket is private to
    /// its owner already.
    pub fn with_tls(self) -> Result<ExportListen> {
        match self {
            ExportListen::Tcp { addr, .. } => Ok(ExportListen::Tcp { addr, tls: true }),
            _ => Err(Error::invalid(
                "tls: only a TCP export (--listen tcp:ADDRESS:PORT) uses TLS; a Unix socket is reachable by its owner only",
            )),
        }
    }
}

/// A running export, as recorded in `HOME/exports/ID.json` while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportInfo {
    /// Export id.
    pub id: String,
    /// Item name.
    pub item: String,
    /// Recovery point id.
    pub rp_id: String,
    /// Disk name.
    pub disk: String,
    /// Disk size in bytes.
    pub size: u64,
    /// Where clients connect (`nbd+unix:///NAME?socket=PATH`, `nbd://ADDRESS/NAME`, or with
    /// TLS `nbds://ADDRESS/NAME`).
    pub uri: String,
    /// With TLS: the directory holding the CA certificate and the client certificate and
    /// key a client must present (`ca-cert.pem`, `client-cert.pem`, `client-key.pem`;
    /// readable by kura's user only). It is deleted when the export ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<String>,
    /// The process serving it.
    pub pid: u32,
    /// When it started.
    pub started: String,
    /// When it ends.
    pub expires: String,
}

/// Longest life of an export.
pub const MAX_EXPORT_LIFE: jiff::SignedDuration = jiff::SignedDuration::from_hours(24 * 7);

/// An export being served by a thread of this process.
#[derive(Debug)]
pub struct RunningExport {
    /// What it serves and where.
    pub info: ExportInfo,
    stop: kura_nbd::Stop,
    thread: std::thread::JoinHandle<std::io::Result<kura_nbd::Ended>>,
}

impl RunningExport {
    /// Ends it now: its clients are cut off.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// A handle that stops it from elsewhere (a signal handler).
    pub fn stopper(&self) -> kura_nbd::Stop {
        self.stop.clone()
    }

    /// Whether it has ended (expired or stopped).
    pub fn ended(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for its end.
    pub fn wait(self) -> Result<kura_nbd::Ended> {
        self.thread
            .join()
            .map_err(|_| Error::new(ErrorKind::Other, "the export's thread failed"))?
            .map_err(|e| Error::io("serving the export", e))
    }
}

/// Removes a file (the record, the socket) or a directory (TLS files) when the export ends,
/// however it ends.
struct RemoveOnEnd(PathBuf);

impl Drop for RemoveOnEnd {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The names a TLS client may connect by: the address listened on (unless it is every
/// address), the host's name, and loopback.
fn tls_names(addr: &std::net::SocketAddr) -> Vec<String> {
    let mut names = Vec::new();
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    for n in [host, "localhost".into(), "127.0.0.1".into(), "::1".into()] {
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

impl Home {
    fn exports_dir(&self) -> PathBuf {
        self.root().join("exports")
    }

    /// Starts serving a point's disk for `life`, on a thread of this process. Everything is
    /// checked (the point, its disk, the vault's key, the address) before anything listens.
    pub fn start_export(
        &self,
        item: &str,
        target: &FilesTarget,
        listen: &ExportListen,
        life: jiff::SignedDuration,
        secrets: &Secrets,
    ) -> Result<RunningExport> {
        if life <= jiff::SignedDuration::ZERO || life > MAX_EXPORT_LIFE {
            return Err(Error::invalid(format!(
                "expires: {life:#} is not between a second and 7 days"
            )));
        }
        let export = self.point_export(item, target, secrets)?;
        let id = crate::new_id();
        let name = format!(
            "{item}-{}",
            &export.rp_id[export.rp_id.len().saturating_sub(8)..]
        );
        let dir = self.exports_dir();
        crate::home::create_private_dir(&dir)?;
        let mut socket = None;
        let mut tls = None;
        let (listener, uri) = match listen {
            ExportListen::Home => unix(&dir.join(format!("{id}.sock")), &name, &mut socket)?,
            ExportListen::Unix(p) => unix(p, &name, &mut socket)?,
            ExportListen::Tcp { addr, tls: secure } => {
                let l = std::net::TcpListener::bind(addr)
                    .map_err(|e| Error::io(format!("listening on {addr}"), e))?;
                let at = l
                    .local_addr()
                    .map_err(|e| Error::io("the export's address", e))?;
                if *secure {
                    let tls_dir = dir.join(format!("{id}.tls"));
                    let names = tls_names(&at);
                    let config = crate::export_tls::make(&tls_dir, &names)?;
                    tls = Some((config, RemoveOnEnd(tls_dir)));
                    // Every address: name the host, as its certificate does.
                    let host = if at.ip().is_unspecified() {
                        names[0].clone()
                    } else {
                        at.ip().to_string()
                    };
                    let host = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host
                    };
                    let uri = format!("nbds://{host}:{}/{name}", at.port());
                    (kura_nbd::Listener::Tcp(l), uri)
                } else {
                    (kura_nbd::Listener::Tcp(l), format!("nbd://{at}/{name}"))
                }
            }
        };
        let socket = socket.map(RemoveOnEnd);
        let (tls_config, tls_dir) = match tls {
            Some((c, d)) => (Some(c), Some(d)),
            None => (None, None),
        };
        let now = self.now();
        let until = now
            .checked_add(life)
            .map_err(|e| Error::invalid(format!("expires: {e}")))?;
        let info = ExportInfo {
            id: id.clone(),
            item: item.to_string(),
            rp_id: export.rp_id.clone(),
            disk: export.disk.clone(),
            size: export.size,
            uri,
            tls_dir: tls_dir.as_ref().map(|d| d.0.display().to_string()),
            pid: std::process::id(),
            started: kura_catalog::stamp(now),
            expires: kura_catalog::stamp(until),
        };
        let record = dir.join(format!("{id}.json"));
        let doc = serde_json::to_vec_pretty(&info).expect("serializable");
        std::fs::write(&record, doc).map_err(|e| Error::io(record.display(), e))?;
        let record = RemoveOnEnd(record);
        let stop = kura_nbd::Stop::default();
        let (s, factory) = (stop.clone(), export.factory);
        let deadline = Instant::now() + Duration::from_secs(life.as_secs().max(1) as u64);
        let thread = std::thread::spawn(move || {
            let ended = kura_nbd::serve(listener, &name, factory, tls_config, Some(deadline), &s);
            drop((record, socket, tls_dir));
            ended
        });
        Ok(RunningExport { info, stop, thread })
    }

    /// The exports running now, in any process on this home, oldest first (records left by
    /// a process that died are removed).
    pub fn list_exports(&self) -> Vec<ExportInfo> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.exports_dir()) else {
            return out;
        };
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(r) = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<ExportInfo>(&b).ok())
            else {
                continue;
            };
            if alive(r.pid) {
                out.push(r);
            } else {
                let _ = std::fs::remove_file(&p);
                let _ = std::fs::remove_file(p.with_extension("sock"));
                let _ = std::fs::remove_dir_all(p.with_extension("tls"));
            }
        }
        out.sort_by(|a, b| a.started.cmp(&b.started));
        out
    }

    /// A running export by its id or the id's last characters.
    pub fn find_export(&self, id: &str) -> Result<ExportInfo> {
        self.list_exports()
            .into_iter()
            .find(|r| !id.is_empty() && (r.id == id || r.id.ends_with(id)))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no running export {id:?} (see `kura export list`)"),
                )
            })
    }
}

fn unix(
    path: &Path,
    name: &str,
    made: &mut Option<PathBuf>,
) -> Result<(kura_nbd::Listener, String)> {
    let path = crate::home::absolute(path)?;
    if path.exists() {
        return Err(Error::already_exists(format!(
            "listen: unix:{}: something is there already",
            path.display()
        )));
    }
    let l = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| Error::io(format!("listening on {}", path.display()), e))?;
    *made = Some(path.clone());
    // Only the owner may connect: the export is the point's data in the clear.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(path.display(), e))?;
    Ok((
        kura_nbd::Listener::Unix(l),
        format!("nbd+unix:///{name}?socket={}", path.display()),
    ))
}
