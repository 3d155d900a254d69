//! Catalog rules: names, one item per source, id prefixes, job exclusivity, orphaned jobs.

use kura_catalog::{Catalog, Error, ItemRow, JobOperation, JobStatus, RpRow, VaultRow};

fn vault(cat: &Catalog, name: &str) -> VaultRow {
    let v = VaultRow {
        id: format!("id-{name}"),
        name: name.into(),
        path: format!("/v/{name}"),
        chunk_size: 4 << 20,
        encryption: "none".into(),
        cipher: None,
        key_file: None,
        created: "2026-01-01T00:00:00Z".into(),
        redundancy: "local".into(),
        replica: None,
    };
    cat.insert_vault(&v).unwrap();
    v
}

fn item(cat: &Catalog, name: &str, source: &str) -> Result<ItemRow, Error> {
    let i = ItemRow {
        id: format!("item-{name}"),
        name: name.into(),
        vault_id: "id-v".into(),
        kind: "disk".into(),
        source: source.into(),
        created: "2026-01-01T00:00:00Z".into(),
        policy: Some("DefaultPolicy".into()),
        last_slot: None,
        state: "protected".into(),
        deleted_at: None,
        spec: None,
        damaged_points: 0,
    };
    cat.insert_item(&i).map(|()| i)
}

fn rp(id: &str, item: &str, time: &str) -> RpRow {
    RpRow {
        id: id.into(),
        item_id: item.into(),
        time: time.into(),
        logical_size: 1,
        stored_size: 1,
        consistency: "crash".into(),
        tier: "vault-standard".into(),
        retain_until: None,
        job_id: None,
        tags: vec!["on-demand".into()],
        expires: None,
        origin: "on-demand".into(),
        used_bytes: 0,
        snapshot: None,
        snapshot_expires: None,
    }
}

#[test]
fn names_are_unique_and_sources_belong_to_one_item() {
    let cat = Catalog::open_in_memory().unwrap();
    vault(&cat, "v");
    let dup = VaultRow {
        id: "other".into(),
        ..cat.vault("v").unwrap()
    };
    assert!(matches!(
        cat.insert_vault(&dup),
        Err(Error::AlreadyExists { kind: "vault", .. })
    ));
    item(&cat, "a", "/img/a").unwrap();
    assert!(matches!(item(&cat, "b", "/img/a"), Err(Error::Conflict(_))));
    assert!(matches!(
        item(&cat, "a", "/img/other"),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        cat.item("zzz"),
        Err(Error::NotFound { kind: "item", .. })
    ));
    assert_eq!(
        cat.item("item-a").unwrap().name,
        "a",
        "items resolve by id too"
    );
}

#[test]
fn recovery_points_list_newest_first_and_resolve_by_prefix() {
    let cat = Catalog::open_in_memory().unwrap();
    vault(&cat, "v");
    item(&cat, "a", "/img/a").unwrap();
    cat.insert_rp(&rp("0001aaaa", "item-a", "2026-01-01T00:00:00Z"))
        .unwrap();
    cat.insert_rp(&rp("0002bbbb", "item-a", "2026-01-02T00:00:00Z"))
        .unwrap();
    cat.insert_rp(&rp("0002bbbc", "item-a", "2026-01-03T00:00:00Z"))
        .unwrap();
    let ids: Vec<String> = cat
        .list_rps("item-a")
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["0002bbbc", "0002bbbb", "0001aaaa"]);
    assert_eq!(cat.rp("0001").unwrap().id, "0001aaaa");
    assert!(matches!(cat.rp("0002bbb"), Err(Error::Ambiguous { .. })));
    assert_eq!(cat.rp("0002bbbb").unwrap().id, "0002bbbb");
    assert!(
        matches!(cat.rp("00"), Err(Error::NotFound { .. })),
        "too short"
    );
    assert!(matches!(cat.rp("%%%%"), Err(Error::NotFound { .. })));
    // Re-inserting (attach run twice) is harmless.
    cat.insert_rp(&rp("0001aaaa", "item-a", "2026-01-01T00:00:00Z"))
        .unwrap();
    assert_eq!(cat.list_rps("item-a").unwrap().len(), 3);
}

/// Ids made in the same minute share their beginning; their last 8 hex digits (the short id
/// the CLI shows) find them.
#[test]
fn short_ids_find_jobs_and_points_made_at_the_same_time() {
    let cat = Catalog::open_in_memory().unwrap();
    vault(&cat, "v");
    item(&cat, "a", "/img/a").unwrap();
    let a = "019a2f3c4d5e7a1b8c2d3e4f5a6b7c8d";
    let b = "019a2f3c4d5e7a1b8c2d3e4f11112222";
    let c = "019a2f3c4d5f7000800000003e4f5a6b";
    for id in [a, b, c] {
        cat.insert_rp(&rp(id, "item-a", "2026-01-01T00:00:00Z"))
            .unwrap();
        cat.start_job(id, JobOperation::Verify, "v", false).unwrap();
    }
    assert_eq!(kura_catalog::short_id(a), "5a6b7c8d");
    assert_eq!(cat.rp("5a6b7c8d").unwrap().id, a);
    assert_eq!(cat.job("11112222").unwrap().id, b);
    assert_eq!(cat.job("3e4f5a6b").unwrap().id, c);
    assert!(
        matches!(cat.rp("019a2f3c4d5e"), Err(Error::Ambiguous { .. })),
        "a shared beginning is ambiguous"
    );
    // A key that is both a short id and a prefix of another id is ambiguous, not guessed.
    let d = "5a6b7c8d00007000800000000000aaaa";
    cat.insert_rp(&rp(d, "item-a", "2026-01-02T00:00:00Z"))
        .unwrap();
    assert!(matches!(cat.rp("5a6b7c8d"), Err(Error::Ambiguous { .. })));
    assert_eq!(cat.rp(a).unwrap().id, a, "the full id always works");
}

#[test]
fn one_backup_job_per_item_at_a_time_and_orphans_fail() {
    let cat = Catalog::open_in_memory().unwrap();
    cat.start_job("j1", JobOperation::Backup, "a", true)
        .unwrap();
    assert!(matches!(
        cat.start_job("j2", JobOperation::Backup, "a", true),
        Err(Error::Conflict(_))
    ));
    cat.start_job("j3", JobOperation::Backup, "b", true)
        .unwrap();
    cat.start_job("j4", JobOperation::Restore, "a", false)
        .unwrap();
    cat.job_log("j1", "hello").unwrap();
    cat.job_progress("j1", 5, 10).unwrap();
    cat.finish_job("j1", JobStatus::Completed, Some("rp"), None)
        .unwrap();
    let j = cat.job("j1").unwrap();
    assert_eq!(
        (j.status.as_str(), j.bytes_done, j.bytes_total),
        ("Completed", 5, 10)
    );
    assert!(j.log[0].ends_with("hello"));
    cat.start_job("j2", JobOperation::Backup, "a", true)
        .unwrap();
    assert_eq!(cat.list_jobs(2).unwrap().len(), 2);
    // Jobs of this (live) process are not orphans.
    assert_eq!(cat.fail_orphaned_jobs().unwrap(), 0);
}

#[test]
fn jobs_of_dead_processes_are_marked_failed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let cat = Catalog::open(&path).unwrap();
        cat.start_job("j1", JobOperation::Backup, "a", true)
            .unwrap();
    }
    // Pretend the job belonged to a process that no longer exists.
    Catalog::open(&path)
        .unwrap()
        .debug_set_job_pid("j1", u32::MAX - 1)
        .unwrap();
    let cat = Catalog::open(&path).unwrap();
    assert_eq!(cat.fail_orphaned_jobs().unwrap(), 1);
    let j = cat.job("j1").unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert!(j.error.unwrap().contains("ended before it finished"));
    cat.start_job("j2", JobOperation::Backup, "a", true)
        .unwrap();
}

#[test]
fn policies_are_per_vault_and_cannot_go_while_used() {
    let cat = Catalog::open_in_memory().unwrap();
    vault(&cat, "v");
    let doc = serde_json::json!({"name": "p"});
    cat.insert_policy("id-v", "DefaultPolicy", &doc).unwrap();
    assert!(matches!(
        cat.insert_policy("id-v", "DefaultPolicy", &doc),
        Err(Error::AlreadyExists { .. })
    ));
    item(&cat, "a", "/img/a").unwrap();
    assert_eq!(cat.policy("id-v", "DefaultPolicy").unwrap().items, 1);
    let e = cat.delete_policy("id-v", "DefaultPolicy").unwrap_err();
    assert!(
        e.to_string().contains("\"a\"")
            || e.to_string().contains("a;")
            || e.to_string().contains(" a"),
        "{e}"
    );
    cat.set_item_policy("item-a", None).unwrap();
    cat.delete_policy("id-v", "DefaultPolicy").unwrap();
    assert!(matches!(
        cat.policy("id-v", "DefaultPolicy"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        cat.update_policy("id-v", "nope", &doc),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn the_nearest_name_is_offered_only_when_it_is_close() {
    use kura_catalog::nearest_name;
    let names = || ["web", "database", "offsite", "DefaultPolicy"].map(String::from);
    assert_eq!(nearest_name("Web", names()).as_deref(), Some("web"));
    assert_eq!(nearest_name("wbe", names()).as_deref(), Some("web"));
    assert_eq!(
        nearest_name("databse", names()).as_deref(),
        Some("database")
    );
    assert_eq!(
        nearest_name("defaultpolcy", names()).as_deref(),
        Some("DefaultPolicy")
    );
    assert_eq!(nearest_name("mail", names()), None);
    assert_eq!(nearest_name("x", names()), None);
    assert_eq!(nearest_name("", names()), None);
}
