//! Pause points for tests, compiled only with the `test-hooks` feature (release builds leave
//! it off, so the shipped binary reads no test switch).
//!
//! With `KURA_TEST_GATE_<POINT>=PREFIX` set, a job reaching `<POINT>` creates `PREFIX.reached`
//! and waits until the test creates `PREFIX.release`. Tests thereby make real operations meet
//! at a chosen moment, without sleeps.

/// Waits at `point` (`snapshot`: after the snapshot is taken; `transfer`: when the transfer
/// phase is claimed; `read`: once the source is open, before it is read; `transfer_chunk`,
/// `restore_chunk`, `verify_chunk`, `gc_delete`, `retention_delete`: after each unit of work,
/// so every worker stops after its first until the release; `file_read`: a file of a tree
/// is read, not yet checked for changes) when a test asked for it.
#[cfg(feature = "test-hooks")]
pub(crate) fn gate(point: &str) {
    let var = format!("KURA_TEST_GATE_{}", point.to_uppercase());
    let Some(prefix) = std::env::var_os(&var) else {
        return;
    };
    let with = |ext: &str| {
        let mut p = prefix.clone();
        p.push(ext);
        std::path::PathBuf::from(p)
    };
    // Written aside and renamed, so a test that sees `.reached` also sees its content (the
    // process id): a plain write shows an empty file for a moment.
    let _ = std::fs::write(with(".reached.tmp"), std::process::id().to_string());
    let _ = std::fs::rename(with(".reached.tmp"), with(".reached"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !with(".release").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Without the `test-hooks` feature: nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn gate(_point: &str) {}

/// With `KURA_TEST_STORAGE_FAULTS=RATE` (0 to 1, e.g. `0.05`), that share of the requests
/// to object stores fails: 503s, replies lost after the work was done, slow answers, hangs
/// cut off by the (then short) timeouts. The
/// same faults for every run (a fixed seed).
#[cfg(feature = "test-hooks")]
pub(crate) fn storage_faults() -> Option<std::sync::Arc<kura_backend::Faults>> {
    let rate: f64 = std::env::var("KURA_TEST_STORAGE_FAULTS")
        .ok()?
        .parse()
        .ok()?;
    Some(std::sync::Arc::new(kura_backend::Faults::new(
        rate,
        0x6b75_7261,
    )))
}
