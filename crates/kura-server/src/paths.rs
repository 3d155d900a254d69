//! What a request through the server may read and where it may write.
//!
//! A token holder must not be able to use kura as a way into every file the server can
//! read or write (protect `/etc/shadow` as a disk, restore over `/etc/passwd`). So every path
//! in a request is checked against allow-lists set when the server starts: sources (disk
//! images, key files) must lie under a source root, restore targets and vault directories
//! under a restore root. Paths must be absolute; they are resolved (symlinks included)
//! before the check, and the engine is given the resolved path, so a symlink inside a root
//! cannot lead out of it.

use std::path::{Component, Path, PathBuf};

use axum::http::StatusCode;

use crate::error::ApiError;

/// The allow-lists.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    /// Directories sources may be read from (`--allow-source`).
    pub source: Vec<PathBuf>,
    /// Directories restores and vaults may be written to (`--allow-restore`).
    pub restore: Vec<PathBuf>,
}

/// The libvirt images directory: a default source root.
pub const LIBVIRT_IMAGES: &str = "/var/lib/libvirt/images";

impl Roots {
    /// The defaults: sources from the libvirt images directory and `HOME/sources`; restores
    /// to `HOME/restores`, vaults in `HOME/vaults` (both created here when missing).
    pub fn defaults(home: &Path) -> Roots {
        for d in ["sources", "restores", "vaults"] {
            let _ = std::fs::create_dir_all(home.join(d));
        }
        Roots {
            source: vec![PathBuf::from(LIBVIRT_IMAGES), home.join("sources")],
            restore: vec![home.join("restores"), home.join("vaults")],
        }
    }

    /// A source path from a request: absolute, existing, under a source root.
    pub fn source(&self, field: &str, path: &str) -> Result<PathBuf, ApiError> {
        let p = absolute(field, path)?;
        let real =
            std::fs::canonicalize(&p).map_err(|e| unreadable(format!("{field}: {path}"), &e))?;
        check(field, path, &real, &self.source, "--allow-source")?;
        Ok(real)
    }

    /// A path a request writes to (it may not exist yet; its directory must): absolute,
    /// under a restore root.
    pub fn restore(&self, field: &str, path: &str) -> Result<PathBuf, ApiError> {
        let p = absolute(field, path)?;
        let name = match p.file_name() {
            Some(n) => n.to_owned(),
            None => return Err(ApiError::invalid(format!("{field}: {path} names no file"))),
        };
        let parent = p.parent().unwrap_or(Path::new("/"));
        let real_parent = std::fs::canonicalize(parent)
            .map_err(|e| unreadable(format!("{field}: directory {}", parent.display()), &e))?;
        let mut real = real_parent.join(name);
        // An existing target that is a symlink is resolved too: writing follows it.
        if let Ok(target) = std::fs::canonicalize(&real) {
            real = target;
        }
        check(field, path, &real, &self.restore, "--allow-restore")?;
        Ok(real)
    }
}

/// A path that cannot be resolved: 404 when it does not exist (as the same command run on
/// the host reports it), else 400.
fn unreadable(what: String, e: &std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what}: {e}"))
    } else {
        ApiError::invalid(format!("{what}: {e}"))
    }
}

fn absolute(field: &str, path: &str) -> Result<PathBuf, ApiError> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(ApiError::invalid(format!(
            "{field}: {path:?} is relative; paths through the API must be absolute"
        )));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(ApiError::invalid(format!(
            "{field}: {path:?} contains '..'"
        )));
    }
    Ok(p)
}

fn check(
    field: &str,
    given: &str,
    real: &Path,
    roots: &[PathBuf],
    flag: &str,
) -> Result<(), ApiError> {
    let inside = roots
        .iter()
        .any(|r| std::fs::canonicalize(r).is_ok_and(|root| real.starts_with(&root)));
    if inside {
        return Ok(());
    }
    let shown = if real == Path::new(given) {
        given.to_string()
    } else {
        format!("{given} (resolves to {})", real.display())
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "{field}: {shown} is outside the directories this server allows ({}); start `kura server` with {flag} DIR to allow another",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}
