//! Vaults on object storage, end to end through the binary: a disk item's whole life (full
//! and incremental backups, restores, verify, retention, soft delete, purge, GC) on S3
//! (moto) and on Azure Blob (Azurite), every job reporting its requests, and the same round
//! trip with one request in twenty failing.

use kura_backend::test_servers::{Kind, TestStore};

use super::*;

/// The vault's objects under `prefix/chunks/`, listed by the test (not through kura).
fn chunks(store: &TestStore, prefix: &str) -> usize {
    let b = store.parsed(prefix).open(&store.storage_env()).unwrap();
    b.list("chunks/").unwrap().len()
}

/// The requests a job's log reports, as (PUT, GET, HEAD, LIST, DELETE).
fn requests(e: &Env, job: &str) -> (u64, u64, u64, u64, u64) {
    let j = e.json(&["job", "show", job]);
    let line = j["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .find_map(|l| l.find("storage: ").map(|at| l[at..].to_string()))
        .unwrap_or_else(|| panic!("job {job} reports no storage requests: {j}"));
    let n = |what: &str| -> u64 {
        let at = line.find(&format!(" {what}")).expect(what);
        let digits: String = line[..at]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.chars().rev().collect::<String>().parse().unwrap()
    };
    (n("PUT"), n("GET"), n("HEAD"), n("LIST"), n("DELETE"))
}

fn life_on(kind: Kind) {
    let store = TestStore::start(kind);
    let e = Env::at("2026-03-10T09:00:00Z");
    e.storage(store.env());
    let location = store.location("site-a/v1");
    e.vault("remote", &["--location", &location]);
    let shown = e.json(&["vault", "show", "remote"]);
    assert_eq!(shown["path"], location.as_str(), "{shown}");

    let img = e.path("disk.raw");
    make_image(&img, 4 << 20, &[(0, 1 << 20, 1), (3 << 20, 256 << 10, 2)]);
    e.protect(&img, "remote", &["--name", "d"]);
    let first = e.json(&["backup", "now", "d"]);
    let stored = chunks(&store, "site-a/v1");
    assert!(stored >= 20, "{stored} chunks");
    let (put, _, head, list, _) = requests(&e, first["job_id"].as_str().unwrap());
    // One PUT per new chunk plus the index, manifest, item record and health: no HEAD
    // before a put, no listing of the vault beyond the first backup's measurement of its
    // stored size for the trend (chunks/ and packs/, each nearly empty then).
    assert!(
        put >= stored as u64 && put <= stored as u64 + 8,
        "{put} PUTs for {stored} chunks"
    );
    assert!(head <= 4 && list <= 3, "{head} HEAD, {list} LIST");
    std::fs::copy(&img, e.path("v1.raw")).unwrap();

    // An incremental writes only what changed.
    make_image_part(&img, 128 << 10, 64 << 10, 3);
    let second = e.json(&["backup", "now", "d"]);
    let (put, ..) = requests(&e, second["job_id"].as_str().unwrap());
    assert!(put <= 8, "an incremental of one chunk: {put} PUTs");
    assert_eq!(chunks(&store, "site-a/v1"), stored + 1);

    for (rp, want) in [
        (first["rp_id"].as_str().unwrap(), e.path("v1.raw")),
        (second["rp_id"].as_str().unwrap(), img.clone()),
    ] {
        let out = e.path("out.raw");
        e.restore("d", rp, &out, "raw");
        assert!(same_file(&out, &want), "restore of {rp}");
        std::fs::remove_file(&out).unwrap();
    }
    let verdict = e.json(&["verify", "--item", "d"]);
    assert_eq!(verdict["problems"], serde_json::json!([]), "{verdict}");
    assert_eq!(verdict["chunks_checked"], stored + 1, "{verdict}");

    // Retention a year on deletes the expired points; GC frees the chunks they alone used.
    let far = "2027-04-14T09:00:00Z";
    let plan = e.json(&["retention", "plan", "d", "--at", far]);
    let doomed = plan["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["action"] == "delete")
        .count();
    assert!(doomed >= 1, "{plan}");
    e.json(&["retention", "apply", "d", "--at", far]);
    e.json(&["gc", "--vault", "remote", "--grace", "0"]);
    e.json(&["gc", "--vault", "remote", "--grace", "0"]);
    let left = e.json(&["rp", "list", "d"]).as_array().unwrap().len();
    assert_eq!(left, 2 - doomed);
    let expected = if left == 0 { 0 } else { stored };
    assert_eq!(chunks(&store, "site-a/v1"), expected, "GC on the bucket");

    // Soft delete keeps the data; the purge 14 days on and GC remove it from the bucket.
    make_image_part(&img, 0, 64 << 10, 4);
    e.backup("d");
    let kept = chunks(&store, "site-a/v1");
    e.json(&["item", "stop", "d", "--delete-data"]);
    e.json(&["gc", "--vault", "remote", "--grace", "0"]);
    assert_eq!(chunks(&store, "site-a/v1"), kept);
    let tick = e.json(&["scheduler", "tick", "--now", "2026-03-25T12:00:00Z"]);
    assert_eq!(tick["purged"], serde_json::json!(["d"]));
    // Two runs: one marks, the next deletes (the tick may have queued a marking run
    // already). One DELETE per chunk; sizes come from the listing, not a HEAD each.
    let mut deleted = 0;
    for _ in 0..2 {
        let sweep = e.json(&["gc", "--vault", "remote", "--grace", "0"]);
        deleted += sweep["deleted"].as_u64().unwrap();
        let (_, _, head, _, delete) = requests(&e, sweep["job_id"].as_str().unwrap());
        assert!(head <= 4, "{head} HEADs in {sweep}");
        // Deletes go in batches (S3's DeleteObjects, Azure's blob batch: POSTs).
        assert!(delete <= 2, "{delete} DELETEs in {sweep}");
    }
    assert!(deleted >= 20, "{deleted} chunks deleted");
    assert_eq!(
        chunks(&store, "site-a/v1"),
        0,
        "purged data leaves the bucket"
    );
}

#[test]
fn a_disk_item_lives_its_whole_life_on_s3() {
    life_on(Kind::Moto);
}

#[test]
fn a_disk_item_lives_its_whole_life_on_azure_blob() {
    life_on(Kind::Azurite);
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn backups_and_restores_come_through_when_requests_fail() {
    let store = TestStore::start(Kind::Moto);
    let e = Env::new();
    let mut env = store.env();
    env.push(("KURA_TEST_STORAGE_FAULTS", "0.05".into()));
    e.storage(env);
    e.vault("remote", &["--location", &store.location("faults")]);
    let img = e.path("disk.raw");
    make_image(&img, 8 << 20, &[(0, 6 << 20, 11)]);
    e.protect(&img, "remote", &["--name", "d"]);
    let rp = e.backup("d");
    let out = e.path("out.raw");
    e.restore("d", &rp, &out, "raw");
    assert!(same_file(&out, &img), "bit-exact through the faults");
    let verdict = e.json(&["verify", "--item", "d"]);
    assert_eq!(verdict["problems"], serde_json::json!([]), "{verdict}");
    assert_eq!(verdict["chunks_checked"], 96, "{verdict}");
}

#[test]
fn a_location_that_cannot_hold_a_vault_is_refused_and_nothing_is_made() {
    let store = TestStore::start(Kind::Moto);
    let e = Env::new();
    e.storage(store.env());
    // Not empty: another vault is there.
    e.vault(
        "first",
        &["--location", &store.location("taken"), "--no-encryption"],
    );
    let (_, err) = e.fails(&[
        "vault",
        "create",
        "second",
        "--location",
        &store.location("taken"),
    ]);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("already holds objects") && msg.contains("attach"),
        "{msg}"
    );
    // A bucket that does not exist, a scheme kura does not know, both flags at once.
    let missing = store.location("v").replace("kura-test", "no-such-bucket");
    for (args, says) in [
        (vec!["--location", missing.as_str()], "no-such-bucket"),
        (vec!["--location", "gs://bucket/v"], "unknown scheme \"gs\""),
        (vec!["--location", "s3://Bad_Bucket/v"], "bucket"),
    ] {
        let mut a = vec!["vault", "create", "second"];
        a.extend(args);
        let (_, err) = e.fails(&a);
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{a:?}: {msg}");
    }
    let vaults = e.json(&["vault", "list"]);
    assert_eq!(vaults.as_array().unwrap().len(), 1, "first only: {vaults}");
    // The vault that was made can be attached again from its location alone.
    e.ok(&["vault", "detach", "first"]);
    let attached = e.json(&[
        "vault",
        "attach",
        "again",
        "--location",
        &store.location("taken"),
    ]);
    assert_eq!(attached["vault"]["path"], store.location("taken").as_str());
}

#[test]
fn a_file_tree_round_trips_through_azure_blob() {
    let store = TestStore::start(Kind::Azurite);
    let e = Env::new();
    e.storage(store.env());
    e.vault("remote", &["--location", &store.location("trees")]);
    let src = super::trees::share(&e);
    e.ok(&[
        "item",
        "protect",
        "files",
        src.to_str().unwrap(),
        "--vault",
        "remote",
        "--name",
        "share",
    ]);
    let first = e.json(&["backup", "now", "share"]);
    // About 120 chunks at this vault's 64 KiB chunk size (3 MB of data, a few small files,
    // four directories) go into one pack: a handful of PUTs, not one per chunk.
    assert!(first["new_chunks"].as_u64().unwrap() > 100, "{first}");
    let (put, _, head, _, _) = requests(&e, first["job_id"].as_str().unwrap());
    assert!(
        put <= 8 && head <= 4,
        "first backup: {put} PUT, {head} HEAD"
    );
    assert_eq!(chunks(&store, "trees"), 0, "no chunk objects of their own");
    let first = first["rp_id"].as_str().unwrap().to_string();
    std::fs::write(src.join("docs/readme.txt"), b"read me, changed\n").unwrap();
    let second = e.json(&["backup", "now", "share"]);
    // An incremental of one changed file: a handful of PUTs (the file, its directories,
    // the index, the manifest), nothing stated first.
    let (put, _, head, _, _) = requests(&e, second["job_id"].as_str().unwrap());
    assert!(put <= 10 && head <= 4, "{put} PUT, {head} HEAD");
    for (rp, readme) in [
        (first.as_str(), &b"read me\n"[..]),
        (
            second["rp_id"].as_str().unwrap(),
            &b"read me, changed\n"[..],
        ),
    ] {
        let to = e.path(&format!("out-{rp}"));
        std::fs::create_dir(&to).unwrap();
        let restored = e.json(&[
            "restore",
            "files",
            "share",
            "--rp",
            rp,
            "--to",
            to.to_str().unwrap(),
        ]);
        // Its chunks are cut out of a window or two of the pack: not a GET per chunk.
        let (_, get, _, _, _) = requests(&e, restored["job_id"].as_str().unwrap());
        assert!(get <= 12, "restore of {rp}: {get} GET");
        assert_eq!(std::fs::read(to.join("docs/readme.txt")).unwrap(), readme);
        assert_eq!(
            std::fs::read(to.join("data.bin")).unwrap(),
            pattern(7, 3_000_000)
        );
        assert_eq!(
            std::fs::read_link(to.join("docs/rel")).unwrap(),
            Path::new("../data.bin")
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_zone_redundant_vault_writes_both_locations_and_outlives_one() {
    let mut primary = TestStore::start(Kind::Azurite);
    let replica = TestStore::start(Kind::Moto);
    let e = Env::new();
    e.storage(primary.env().into_iter().chain(replica.env()).collect());
    let (first, second) = (primary.location("zone"), replica.location("zone"));
    e.vault(
        "zone",
        &[
            "--location",
            &first,
            "--redundancy",
            "zone",
            "--replica",
            &second,
        ],
    );
    let shown = e.json(&["vault", "show", "zone"]);
    assert_eq!(shown["redundancy"], "zone", "{shown}");
    assert_eq!(shown["replica"], second.as_str(), "{shown}");
    let img = e.path("disk.raw");
    make_image(&img, 4 << 20, &[(0, 1 << 20, 5)]);
    e.protect(&img, "zone", &["--name", "d"]);
    let rp = e.backup("d");
    // Both locations hold the whole point.
    for store in [&primary, &replica] {
        let b = store.parsed("zone").open(&store.storage_env()).unwrap();
        assert_eq!(b.list("chunks/").unwrap().len(), 16, "{:?}", store.kind);
        assert!(b.stat(&format!("rps/{rp}/manifest")).unwrap().is_some());
    }

    // A copy lost at one location comes back from the other at the next verify.
    let at_replica = replica.parsed("zone").open(&replica.storage_env()).unwrap();
    let lost = at_replica.list("chunks/").unwrap()[0].clone();
    at_replica.delete(&lost).unwrap();
    let verdict = e.json(&["verify", "--item", "d"]);
    assert_eq!(verdict["problems"], serde_json::json!([]), "{verdict}");
    assert_eq!(
        verdict["repaired"],
        serde_json::json!([format!("{lost} at {second}")]),
        "{verdict}"
    );
    assert!(at_replica.stat(&lost).unwrap().is_some());

    // The primary location fails while a backup is under way: the backup fails, and no
    // point appears that a location lacks.
    make_image_part(&img, 0, 64 << 10, 6);
    let g = Gate::new(&e, "transfer");
    let (var, val) = g.env();
    let child = e
        .cmd(&["--output", "json", "backup", "now", "d"])
        .env(var, val)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    g.wait_reached();
    primary.stop();
    g.release();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a backup with a location down fails");
    let rps = e.json(&["rp", "list", "d"]);
    assert_eq!(rps.as_array().unwrap().len(), 1, "{rps}");
    let manifests: Vec<String> = at_replica
        .list("rps/")
        .unwrap()
        .into_iter()
        .filter(|k| k.ends_with("/manifest"))
        .collect();
    assert_eq!(manifests, [format!("rps/{rp}/manifest")]);

    // Restores read from the location that is still there.
    let back = e.path("back.raw");
    e.restore("d", &rp, &back, "raw");
    let want = e.path("want.raw");
    make_image(&want, 4 << 20, &[(0, 1 << 20, 5)]);
    assert!(
        same_file(&back, &want),
        "the first point, read from the replica"
    );
}

#[test]
fn redundancy_is_checked_before_anything_is_made() {
    let store = TestStore::start(Kind::Moto);
    let e = Env::new();
    e.storage(store.env());
    let here = store.location("a");
    for (args, says) in [
        (vec!["--redundancy", "zone"], "--replica"),
        (vec!["--replica", "s3://kura-test/b"], "zone"),
        (
            vec!["--redundancy", "zone", "--replica", here.as_str()],
            "second location",
        ),
        (vec!["--redundancy", "geo"], "--replica"),
        (vec!["--redundancy", "lrs"], "expected local, zone or geo"),
    ] {
        let mut a = vec!["vault", "create", "v", "--location", here.as_str()];
        a.extend(args);
        let (_, err) = e.fails(&a);
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{a:?}: {msg}");
    }
    let (_, err) = e.fails(&["vault", "create", "v", "--path", "s3://kura-test/a"]);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("--location"), "{msg}");
    assert_eq!(e.json(&["vault", "list"]).as_array().unwrap().len(), 0);
    let b = store.parsed("a").open(&store.storage_env()).unwrap();
    assert_eq!(b.list("").unwrap(), Vec::<String>::new(), "nothing written");
}

/// Waits until `n` replication jobs ran and none is queued or running. A backup through a
/// server ends before the replication it triggers starts; on the host the command runs both.
fn replications_done(e: &Env, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let jobs = e.json(&["job", "list", "--operation", "Replicate"]);
        let busy = jobs
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["status"] == "InProgress" || j["status"] == "Queued");
        if !busy && jobs.as_array().unwrap().len() >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replication still running: {jobs}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_geo_replica_follows_the_vault_and_serves_restores_when_the_primary_is_gone() {
    let mut primary = TestStore::start(Kind::Moto);
    let e = Env::at("2026-03-10T09:00:00Z");
    e.storage(primary.env());
    let replica = e.path("replica");
    let replica_text = replica.to_str().unwrap();
    e.vault(
        "geo",
        &[
            "--location",
            &primary.location("geo"),
            "--redundancy",
            "geo",
            "--replica",
            replica_text,
            "--no-encryption",
        ],
    );
    let shown = e.json(&["vault", "show", "geo"]);
    assert_eq!(shown["redundancy"], "geo", "{shown}");
    assert_eq!(shown["replication"]["points_behind"], 0, "{shown}");
    assert!(
        replica.join("config").exists(),
        "the replica is a vault from the start"
    );

    let img = e.path("disk.raw");
    make_image(&img, 4 << 20, &[(0, 1 << 20, 8)]);
    e.protect(&img, "geo", &["--name", "d"]);
    let rp1 = e.backup("d");
    // One replication when the vault was made, one after the backup.
    replications_done(&e, 2);
    assert!(
        replica.join(format!("rps/{rp1}/manifest")).exists(),
        "replicated after the backup"
    );
    let primary_chunks = chunks(&primary, "geo");
    let replica_chunks = std::fs::read_dir(replica.join("chunks"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .count();
    assert_eq!(replica_chunks, primary_chunks);

    // The replica is unreachable for a while: backups go on, and the lag shows it.
    std::fs::rename(&replica, e.path("replica.away")).unwrap();
    make_image_part(&img, 0, 64 << 10, 9);
    let rp2 = e.backup("d");
    replications_done(&e, 3);
    let shown = e.json(&["vault", "show", "geo"]);
    assert_eq!(shown["replication"]["points_behind"], 1, "{shown}");
    assert!(
        shown["replication"]["bytes_behind"].as_u64().unwrap() > 0,
        "{shown}"
    );
    std::fs::rename(e.path("replica.away"), &replica).unwrap();
    let r = e.json(&["vault", "replicate", "geo"]);
    assert!(r["copied_objects"].as_u64().unwrap() >= 3, "{r}");
    assert_eq!(
        e.json(&["vault", "show", "geo"])["replication"]["points_behind"],
        0
    );
    assert!(replica.join(format!("rps/{rp2}/manifest")).exists());

    // The primary's region is gone: the point comes back from the replica.
    primary.stop();
    let back = e.path("back.raw");
    e.ok(&[
        "restore",
        "disk",
        "d",
        "--rp",
        &rp2,
        "--to",
        back.to_str().unwrap(),
        "--from-replica",
    ]);
    assert!(same_file(&back, &img), "restored from the replica");
    // And the replica alone rebuilds a home.
    e.on_host();
    let attached = e.json(&[
        "--home",
        e.path("new-home").to_str().unwrap(),
        "vault",
        "attach",
        "geo",
        "--location",
        replica_text,
    ]);
    assert_eq!(attached["recovery_points"], 2, "{attached}");
}

#[test]
fn redundancy_changes_until_an_item_is_protected_and_an_azure_replica_serves_restores() {
    let mut primary = TestStore::start(Kind::Moto);
    let azure = TestStore::start(Kind::Azurite);
    let e = Env::new();
    e.storage(primary.env().into_iter().chain(azure.env()).collect());
    e.vault(
        "v",
        &["--location", &primary.location("v"), "--no-encryption"],
    );
    // A redundancy change comes on its own: with another setting it is refused, and
    // neither changes.
    let (_, err) = e.fails(&[
        "vault",
        "set",
        "v",
        "--redundancy",
        "geo",
        "--replica",
        &azure.location("v"),
        "--soft-delete",
        "disabled",
    ]);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("on its own"), "{msg}");
    let shown = e.json(&["vault", "show", "v"]);
    assert_eq!(
        (&shown["redundancy"], &shown["soft_delete"]),
        (&serde_json::json!("local"), &serde_json::json!("enabled")),
        "{shown}"
    );
    let at_azure = azure.parsed("v").open(&azure.storage_env()).unwrap();
    assert_eq!(at_azure.list("").unwrap(), Vec::<String>::new());
    // Before any item: local becomes geo, and the replica gets the vault's objects.
    let shown = e.json(&[
        "vault",
        "set",
        "v",
        "--redundancy",
        "geo",
        "--replica",
        &azure.location("v"),
    ]);
    assert_eq!(shown["redundancy"], "geo", "{shown}");
    assert!(at_azure.stat("config").unwrap().is_some());

    let img = e.path("disk.raw");
    make_image(&img, 4 << 20, &[(0, 1 << 20, 12)]);
    e.protect(&img, "v", &["--name", "d"]);
    let rp = e.backup("d");
    replications_done(&e, 1);
    // From now on the redundancy is fixed (Azure's rule).
    let (_, err) = e.fails(&["vault", "set", "v", "--redundancy", "local"]);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("fixed once an item is protected"), "{msg}");
    assert_eq!(e.json(&["vault", "show", "v"])["redundancy"], "geo");

    // The primary's S3 server is gone: the point comes back from Azure.
    primary.stop();
    let back = e.path("back.raw");
    e.ok(&[
        "restore",
        "disk",
        "d",
        "--rp",
        &rp,
        "--to",
        back.to_str().unwrap(),
        "--from-replica",
    ]);
    assert!(same_file(&back, &img), "restored from the Azure replica");
    let dir = e.path("disks");
    std::fs::create_dir(&dir).unwrap();
    e.ok(&[
        "restore",
        "disks",
        "d",
        "--rp",
        &rp,
        "--to",
        dir.to_str().unwrap(),
        "--from-replica",
    ]);
    assert!(
        same_file(&dir.join("disk0.raw"), &img),
        "restore disks from the replica"
    );
}

#[test]
fn s3_credentials_come_from_a_profile_in_the_shared_credentials_file() {
    // s3s-fs checks signatures: only the right key gets in.
    let store = TestStore::start(Kind::S3sFs);
    let e = Env::new();
    // The environment changes between commands: a server would keep its first one.
    e.on_host();
    let creds = e.path("aws-credentials");
    let keys: std::collections::HashMap<_, _> = store.env().into_iter().collect();
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
             [backups]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"]
        ),
    )
    .unwrap();
    let mut env: Vec<(&'static str, String)> = store
        .env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"))
        .collect();
    env.push((
        "AWS_SHARED_CREDENTIALS_FILE",
        creds.to_str().unwrap().into(),
    ));
    env.push((
        "AWS_CONFIG_FILE",
        e.path("no-config").to_str().unwrap().into(),
    ));
    // The default profile holds a wrong key: refused, nothing registered.
    e.storage(env.clone());
    let (_, err) = e.fails(&["vault", "create", "v", "--location", &store.location("p")]);
    assert!(
        !err["error"]["message"].as_str().unwrap().is_empty(),
        "{err}"
    );
    assert_eq!(e.json(&["vault", "list"]).as_array().unwrap().len(), 0);
    // The named profile's key works, end to end.
    env.push(("AWS_PROFILE", "backups".into()));
    e.storage(env);
    e.vault("v", &["--location", &store.location("p")]);
    let img = e.path("disk.raw");
    make_image(&img, 1 << 20, &[(0, 256 << 10, 14)]);
    e.protect(&img, "v", &["--name", "d"]);
    let rp = e.backup("d");
    let out = e.path("out.raw");
    e.restore("d", &rp, &out, "raw");
    assert!(same_file(&out, &img));
}

#[test]
fn a_file_tree_comes_back_from_a_geo_replica() {
    let mut primary = TestStore::start(Kind::Moto);
    let e = Env::new();
    e.storage(primary.env());
    // An empty directory others may read: the replica made there is owner-only.
    let replica = e.path("replica");
    std::fs::create_dir(&replica).unwrap();
    std::fs::set_permissions(
        &replica,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    e.vault(
        "geo",
        &[
            "--location",
            &primary.location("tree"),
            "--redundancy",
            "geo",
            "--replica",
            replica.to_str().unwrap(),
        ],
    );
    let src = super::trees::share(&e);
    e.ok(&[
        "item",
        "protect",
        "files",
        src.to_str().unwrap(),
        "--vault",
        "geo",
        "--name",
        "share",
    ]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&replica).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "the replica directory is owner-only");
    let rp = e.backup("share");
    replications_done(&e, 2);
    primary.stop();
    let to = e.path("out");
    std::fs::create_dir(&to).unwrap();
    e.ok(&[
        "restore",
        "files",
        "share",
        "--rp",
        &rp,
        "--to",
        to.to_str().unwrap(),
        "--from-replica",
    ]);
    assert_eq!(
        std::fs::read(to.join("docs/readme.txt")).unwrap(),
        b"read me\n"
    );
    assert_eq!(
        std::fs::read(to.join("data.bin")).unwrap(),
        pattern(7, 3_000_000)
    );
    // Browsing and taking single files work from the replica alone too.
    let ls = e.json(&[
        "files",
        "ls",
        "share",
        "--rp",
        &rp,
        "/docs",
        "--from-replica",
    ]);
    assert!(ls["entries"].as_array().unwrap().len() >= 4, "{ls}");
    let one = e.path("one");
    std::fs::create_dir(&one).unwrap();
    e.ok(&[
        "files",
        "get",
        "share",
        "/docs/deep/er/note",
        "--to",
        one.to_str().unwrap(),
        "--rp",
        &rp,
        "--from-replica",
    ]);
    assert_eq!(std::fs::read(one.join("note")).unwrap(), b"deep note");
    // Without the flag, the primary is asked, and it is down: a clear error.
    let (_, err) = e.fails(&["files", "ls", "share", "--rp", &rp, "/docs"]);
    assert!(
        !err["error"]["message"].as_str().unwrap().is_empty(),
        "{err}"
    );
}
