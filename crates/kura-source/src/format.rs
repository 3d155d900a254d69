//! An image's format, fixed when the item is protected and never probed again.
//!
//! The bytes of a disk belong to its guest. If kura asked `qemu-img` what format an image
//! is at every backup, a guest could write a qcow2 header (with a backing file naming any
//! host file) into its raw disk and kura would then read the host file, or write a qcow2
//! snapshot into the guest's disk. So the format is probed at most once, when the item is
//! protected (and shown to the user), or given explicitly; every later open passes it to
//! the tools (`-f FORMAT`), raw images never go through QEMU at all, and an image whose
//! backing chain differs from the recorded one is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::{DiskReader, Error, NbdReader, RawReader, Result};

/// Formats kura accepts for disk items.
pub const FORMATS: &[&str] = &["raw", "qcow2", "vmdk", "vdi", "vhdx", "vpc", "qed"];

/// One image of a backing chain, below the item's own image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingFile {
    /// Absolute path.
    pub path: String,
    /// Its format.
    pub format: String,
}

/// How an item's image is opened: its format and the backing chain it may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedFormat {
    /// `raw`, `qcow2`, ...
    pub format: String,
    /// The backing chain, nearest first; empty for a standalone image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backing: Vec<BackingFile>,
}

impl PinnedFormat {
    /// A standalone image of `format`, checked against [`FORMATS`].
    pub fn new(format: &str) -> Result<Self> {
        if !FORMATS.contains(&format) {
            return Err(Error::Invalid(format!(
                "unknown disk format {format:?}: use one of {}",
                FORMATS.join(", ")
            )));
        }
        Ok(PinnedFormat {
            format: format.to_string(),
            backing: Vec::new(),
        })
    }

    /// Whether the image is read directly (raw) rather than through `qemu-nbd`.
    pub fn is_raw(&self) -> bool {
        self.format == "raw"
    }

    /// What an image is when it is protected: with `format` given, that format (and, for
    /// formats other than raw, the backing chain `qemu-img` finds under it); without, the
    /// format `qemu-img info` probes. Only for the moment an item is protected: a probe's
    /// answer comes from bytes the guest may control, so the caller shows it to the user.
    pub fn inspect(path: &Path, format: Option<&str>) -> Result<Self> {
        if let Some(f) = format {
            PinnedFormat::new(f)?;
            if f == "raw" {
                return PinnedFormat::new(f);
            }
        }
        let chain = qemu_img_chain(path, format)?;
        let first = chain.first().ok_or_else(|| Error::Tool {
            tool: "qemu-img",
            path: path.to_path_buf(),
            message: "no image in its answer".into(),
        })?;
        let pinned = PinnedFormat {
            format: first.format.clone(),
            backing: chain[1..].to_vec(),
        };
        PinnedFormat::new(&pinned.format)?;
        Ok(pinned)
    }

    /// Refuses an image whose backing chain, read with the pinned format, is not the
    /// recorded one (a raw image never has one and is never given to QEMU).
    pub fn check(&self, path: &Path) -> Result<()> {
        if self.is_raw() {
            return Ok(());
        }
        let chain = qemu_img_chain(path, Some(&self.format))?;
        let found = chain.get(1..).unwrap_or_default();
        if found != self.backing.as_slice() {
            let show = |c: &[BackingFile]| {
                if c.is_empty() {
                    "none".to_string()
                } else {
                    c.iter()
                        .map(|b| format!("{} ({})", b.path, b.format))
                        .collect::<Vec<_>>()
                        .join(" <- ")
                }
            };
            return Err(Error::Invalid(format!(
                "{}: its backing chain changed since it was protected (recorded: {}; now: {}); kura does not follow backing files the item does not name (`kura item set-format ITEM` accepts the new chain)",
                path.display(),
                show(&self.backing),
                show(found)
            )));
        }
        Ok(())
    }

    /// Opens the image with this format: raw directly, others through a read-only
    /// `qemu-nbd` told the format, after checking the backing chain.
    pub fn open(&self, path: &Path) -> Result<Box<dyn DiskReader>> {
        if !path.exists() {
            return Err(Error::NotFound {
                path: path.to_path_buf(),
            });
        }
        if self.is_raw() {
            return Ok(Box::new(RawReader::open(path)?));
        }
        self.check(path)?;
        Ok(Box::new(NbdReader::open(path, &self.format)?))
    }

    /// One line for users: `qcow2`, or `qcow2 on /base.raw (raw)`.
    pub fn describe(&self) -> String {
        let mut s = self.format.clone();
        for b in &self.backing {
            s.push_str(&format!(" on {} ({})", b.path, b.format));
        }
        s
    }
}

/// `qemu-img info --backing-chain` of `path`, with the top image's format forced when given.
fn qemu_img_chain(path: &Path, format: Option<&str>) -> Result<Vec<BackingFile>> {
    let tool = |message: String| Error::Tool {
        tool: "qemu-img",
        path: path.to_path_buf(),
        message,
    };
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json", "--backing-chain", "-U"]);
    if let Some(f) = format {
        cmd.args(["-f", f]);
    }
    let out = cmd
        .arg("--")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            tool(if e.kind() == std::io::ErrorKind::NotFound {
                "qemu-img is not installed (Debian package qemu-utils); give the format with --format raw to protect a raw image without it".into()
            } else {
                e.to_string()
            })
        })?;
    if !out.status.success() {
        return Err(tool(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| tool(format!("unreadable JSON: {e}")))?;
    let images = v.as_array().ok_or_else(|| tool("expected a list".into()))?;
    images
        .iter()
        .map(|img| {
            let field = |k: &str| img.get(k).and_then(|f| f.as_str()).map(str::to_string);
            let format = field("format").ok_or_else(|| tool("an image without format".into()))?;
            let name = field("filename").ok_or_else(|| tool("an image without name".into()))?;
            let path = std::path::absolute(PathBuf::from(&name))
                .map(|p| p.display().to_string())
                .unwrap_or(name);
            Ok(BackingFile { path, format })
        })
        .collect()
}
