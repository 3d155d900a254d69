use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::nbd::{Client, STATE_ZERO};
use crate::{Changes, DiskReader, Error, Extent, ExtentKind, Result, normalize};

const ALLOCATION: &str = "base:allocation";

/// An image in any format QEMU reads, served read-only by a private `qemu-nbd` on a Unix
/// socket and read with kura's NBD client. The server stops when the reader is dropped.
#[derive(Debug)]
pub struct NbdReader {
    path: PathBuf,
    format: String,
    /// The private qemu-nbd serving the image, and its directory (`None` when reading an
    /// export someone else serves, e.g. a VM's QEMU).
    child: Option<Child>,
    dir: Option<PathBuf>,
    client: Option<Client<UnixStream>>,
    size: u64,
    /// The dirty bitmap negotiated as a meta context, and the point it tracks changes since.
    bitmap: Option<(String, String)>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl NbdReader {
    /// Starts `qemu-nbd` on `path` (of format `format`) and connects to it.
    pub fn open(path: &Path, format: &str) -> Result<Self> {
        Self::open_with(path, format, None, None)
    }

    /// Like [`NbdReader::open`], also exporting the image's persistent dirty bitmap `bitmap`
    /// (name, and the recovery point it tracks changes since) for [`DiskReader::changes`].
    pub fn open_with_bitmap(
        path: &Path,
        format: &str,
        bitmap: Option<(String, String)>,
    ) -> Result<Self> {
        Self::open_with(path, format, None, bitmap)
    }

    /// Like [`NbdReader::open`], reading the internal snapshot `snapshot` of a qcow2 image.
    pub fn open_snapshot(path: &Path, format: &str, snapshot: &str) -> Result<Self> {
        Self::open_with(path, format, Some(snapshot), None)
    }

    fn open_with(
        path: &Path,
        format: &str,
        snapshot: Option<&str>,
        bitmap: Option<(String, String)>,
    ) -> Result<Self> {
        let tool = |message: String| Error::Tool {
            tool: "qemu-nbd",
            path: path.to_path_buf(),
            message,
        };
        let dir = std::env::temp_dir().join(format!(
            "kura-nbd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| tool(format!("cannot create {}: {e}", dir.display())))?;
        let sock = dir.join("nbd.sock");
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg("--read-only")
            .arg("--socket")
            .arg(&sock)
            .arg("--shared=1");
        match snapshot {
            // An internal snapshot never changes, so reading it takes no image lock: the next
            // backup can add its own snapshot (which needs the write lock) while this one is
            // still being transferred, as Azure's overlap rule wants.
            Some(s) => {
                let file = path
                    .to_str()
                    .ok_or_else(|| tool("the image path is not UTF-8".into()))?
                    .replace(',', ",,");
                cmd.arg(format!("--load-snapshot=snapshot.name={s}"))
                    .arg("--image-opts")
                    .arg("--")
                    .arg(format!(
                        "driver={format},file.driver=file,file.filename={file},file.locking=off"
                    ));
            }
            None => {
                if let Some((b, _)) = &bitmap {
                    cmd.arg(format!("--bitmap={b}"));
                }
                cmd.arg(format!("--format={format}")).arg("--").arg(path);
            }
        }
        let context = bitmap
            .as_ref()
            .map(|(b, _)| format!("qemu:dirty-bitmap:{b}"));
        let mut contexts = vec![ALLOCATION];
        contexts.extend(context.as_deref());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                tool(if e.kind() == std::io::ErrorKind::NotFound {
                    "qemu-nbd is not installed (Debian package qemu-utils)".into()
                } else {
                    e.to_string()
                })
            })?;
        let mut reader = NbdReader {
            path: path.to_path_buf(),
            format: format.to_string(),
            child: Some(child),
            dir: Some(dir),
            client: None,
            size: 0,
            bitmap,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let child = reader.child.as_mut().expect("spawned above");
            if let Some(status) = child.try_wait().map_err(|e| tool(e.to_string()))? {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                return Err(tool(format!("exited with {status}: {}", err.trim())));
            }
            if sock.exists()
                && let Ok(c) = Client::connect_unix(&sock, "", &contexts)
            {
                reader.size = c.size();
                reader.client = Some(c);
                break;
            }
            if Instant::now() > deadline {
                return Err(tool("did not start within 30 s".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(reader)
    }

    /// Reads the NBD export `name` that another process (a VM's QEMU, a
    /// qemu-storage-daemon) serves on the Unix socket `sock`; `format` is what the export
    /// presents (`raw` for a point-in-time export of any image).
    pub fn connect_export(sock: &Path, name: &str, format: &str) -> Result<Self> {
        Self::connect_export_with_bitmap(sock, name, format, None)
    }

    /// [`NbdReader::connect_export`], also negotiating the export's dirty bitmap `bitmap`
    /// (name, and the recovery point it tracks changes since) for [`DiskReader::changes`].
    pub fn connect_export_with_bitmap(
        sock: &Path,
        name: &str,
        format: &str,
        bitmap: Option<(String, String)>,
    ) -> Result<Self> {
        let context = bitmap
            .as_ref()
            .map(|(b, _)| format!("qemu:dirty-bitmap:{b}"));
        let mut contexts = vec![ALLOCATION];
        contexts.extend(context.as_deref());
        let c = Client::connect_unix(sock, name, &contexts)?;
        if let Some(ctx) = &context
            && !c.has_context(ctx)
        {
            return Err(Error::Nbd(format!(
                "{}: the export does not offer {ctx}",
                sock.join(name).display()
            )));
        }
        Ok(NbdReader {
            path: sock.join(name),
            format: format.to_string(),
            child: None,
            dir: None,
            size: c.size(),
            client: Some(c),
            bitmap,
        })
    }

    fn client(&mut self) -> &mut Client<UnixStream> {
        self.client
            .as_mut()
            .expect("connected while the reader lives")
    }
}

impl DiskReader for NbdReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn format(&self) -> &str {
        &self.format
    }

    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        let mut pos = offset;
        let has_alloc = self.client().has_context(ALLOCATION);
        while pos < end {
            if !has_alloc {
                out.push(Extent {
                    offset: pos,
                    len: end - pos,
                    kind: ExtentKind::Data,
                });
                break;
            }
            let ask = (end - pos).min(1 << 30) as u32;
            for d in self.client().block_status(ALLOCATION, pos, ask)? {
                let kind = if d.flags & STATE_ZERO != 0 {
                    ExtentKind::Zero
                } else {
                    ExtentKind::Data
                };
                out.push(Extent {
                    offset: pos,
                    len: d.len,
                    kind,
                });
                pos += d.len;
                if pos >= end {
                    break;
                }
            }
        }
        Ok(normalize(out, offset, end))
    }

    fn changes(&mut self) -> Result<Option<Changes>> {
        let Some((bitmap, since)) = self.bitmap.clone() else {
            return Ok(None);
        };
        let context = format!("qemu:dirty-bitmap:{bitmap}");
        let size = self.size;
        let mut dirty: Vec<(u64, u64)> = Vec::new();
        let mut pos = 0u64;
        while pos < size {
            let ask = (size - pos).min(1 << 30) as u32;
            for d in self.client().block_status(&context, pos, ask)? {
                let len = d.len.min(size - pos);
                if len == 0 {
                    return Err(Error::Nbd(format!(
                        "{}: an empty block status extent at {pos}",
                        self.path.display()
                    )));
                }
                // Flag 1: dirty. Neighbouring dirty runs are merged.
                if d.flags & 1 != 0 {
                    match dirty.last_mut() {
                        Some(last) if last.0 + last.1 == pos => last.1 += len,
                        _ => dirty.push((pos, len)),
                    }
                }
                pos += len;
                if pos >= size {
                    break;
                }
            }
        }
        Ok(Some(Changes { since, dirty }))
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let path = self.path.clone();
        self.client().read(buf, offset).map_err(|e| match e {
            Error::Nbd(m) => Error::Nbd(format!("{}: {m}", path.display())),
            e => e,
        })
    }
}

impl Drop for NbdReader {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.disconnect();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
