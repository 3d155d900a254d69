//! Every backend passes the same rule book.

use kura_backend::{Backend, FsBackend, MemoryBackend, conformance};

#[test]
fn memory_backend_conforms() {
    conformance::run(&MemoryBackend::default());
}

#[test]
fn fs_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run(&FsBackend::open(dir.path()).unwrap());
}

#[test]
fn fs_backend_never_exposes_staging_files() {
    let dir = tempfile::tempdir().unwrap();
    let b = FsBackend::open(dir.path()).unwrap();
    b.put("a/b", b"x".to_vec()).unwrap();
    // A crashed writer leaves a staging file behind: it must not show up as an object.
    std::fs::write(dir.path().join(".staging").join("leftover"), b"partial").unwrap();
    assert_eq!(b.list("").unwrap(), vec!["a/b"]);
    b.sync().unwrap();
}
