/// Where long operations report progress. Implementations must be cheap: `advance` is called
/// once per chunk from worker threads.
pub trait Progress: Sync {
    /// A phase starts with `total` bytes to go (e.g. `backup disk0`).
    fn start(&self, phase: &str, total: u64);
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
    /// The phase ended.
    fn finish(&self);
    /// A line for the user (also kept in the job log by the engine).
    fn message(&self, _line: &str) {}
    /// A job started (its id is known before any work is done).
    fn job_started(&self, _id: &str, _operation: &str, _target: &str) {}
    /// Whether the work should stop now because its job was cancelled. Long loops ask it
    /// between units of work (a chunk, a recovery point) and end with [`ErrorKind::Cancelled`]
    /// after undoing what is not complete.
    ///
    /// [`ErrorKind::Cancelled`]: crate::ErrorKind::Cancelled
    fn cancelled(&self) -> bool {
        false
    }
}

/// Ends the work with [`crate::ErrorKind::Cancelled`] when its job was cancelled.
pub(crate) fn check_cancel(progress: &dyn Progress) -> crate::Result<()> {
    if progress.cancelled() {
        return Err(crate::Error::cancelled());
    }
    Ok(())
}

/// Discards progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
