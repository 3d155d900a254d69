//! Job vocabulary: operations, statuses, and how a backup's status follows its sub-tasks.

/// A backup job's status from its two sub-tasks, as in Azure Backup:
///
/// | snapshot | transfer | job |
/// |---|---|---|
/// | Completed | InProgress | InProgress |
/// | Completed | Skipped | Completed |
/// | Completed | Completed | Completed |
/// | Completed | Failed | CompletedWithWarnings |
/// | Failed | (any) | Failed |
///
/// kura adds the rows Azure does not need: a snapshot still running (InProgress), a job
/// cancelled during its snapshot (Cancelled), and an item without a snapshot provider
/// (snapshot Skipped), whose job is simply its transfer.
pub fn backup_status(snapshot: &str, transfer: &str) -> &'static str {
    match (snapshot, transfer) {
        ("Cancelled", _) => "Cancelled",
        ("Failed", _) => "Failed",
        ("InProgress", _) => "InProgress",
        ("Completed" | "Skipped", "InProgress") => "InProgress",
        ("Completed", "Skipped" | "Completed") => "Completed",
        ("Completed", "Failed") => "CompletedWithWarnings",
        ("Skipped", "Completed") => "Completed",
        ("Skipped", _) => "Failed",
        _ => "InProgress",
    }
}

pub(crate) fn task(name: &str, status: &str, detail: Option<String>) -> kura_catalog::SubTask {
    kura_catalog::SubTask {
        name: name.into(),
        status: status.into(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::backup_status;

    #[test]
    fn the_azure_matrix() {
        let table = [
            ("Completed", "InProgress", "InProgress"),
            ("Completed", "Skipped", "Completed"),
            ("Completed", "Completed", "Completed"),
            ("Completed", "Failed", "CompletedWithWarnings"),
            ("Failed", "Failed", "Failed"),
            ("Failed", "Skipped", "Failed"),
            ("InProgress", "InProgress", "InProgress"),
            ("Cancelled", "Skipped", "Cancelled"),
            ("Skipped", "InProgress", "InProgress"),
            ("Skipped", "Completed", "Completed"),
            ("Skipped", "Failed", "Failed"),
        ];
        for (s, t, expected) in table {
            assert_eq!(backup_status(s, t), expected, "snapshot {s}, transfer {t}");
        }
    }
}
