//! Policies and retention through the CLI.

use super::*;

fn write_json(e: &Env, name: &str, v: &Value) -> PathBuf {
    let p = e.path(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

fn gfs(name: &str) -> Value {
    serde_json::json!({"name": name,
        "schedule": {"frequency": "daily", "times": ["02:30"], "time_zone": "Europe/Berlin"},
        "retention": {"daily": {"days": 7}, "weekly": {"weeks": 4, "days_of_week": ["sunday"]},
                      "monthly": {"months": 12, "days_of_month": [1]}}})
}

#[test]
fn every_vault_has_default_policy_and_policies_round_trip() {
    let e = Env::new();
    e.vault("v", &[]);
    let list = e.json(&["policy", "list", "--vault", "v"]);
    assert_eq!(list[0]["name"], "DefaultPolicy");
    assert_eq!(list[0]["doc"]["retention"]["daily"]["days"], 30);
    assert_eq!(list[0]["doc"]["instant_restore_days"], 2);

    let f = write_json(&e, "p.json", &gfs("gfs"));
    e.json(&[
        "policy",
        "create",
        "--vault",
        "v",
        "--file",
        f.to_str().unwrap(),
    ]);
    let shown = e.json(&["policy", "show", "v/gfs"]);
    assert_eq!(shown["doc"]["schedule"]["time_zone"], "Europe/Berlin");
    assert_eq!(
        shown["doc"]["instant_restore_days"], 2,
        "defaults are filled in"
    );
    let (_, err) = e.fails(&[
        "policy",
        "create",
        "--vault",
        "v",
        "--file",
        f.to_str().unwrap(),
    ]);
    assert_eq!(err["error"]["code"], "already_exists");

    // A policy in use cannot be deleted; DefaultPolicy never can.
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1000, 1)]);
    e.protect(&img, "v", &["--policy", "gfs"]);
    let (_, err) = e.fails(&["policy", "delete", "v/gfs"]);
    assert_eq!(err["error"]["code"], "conflict");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("d"),
        "{err}"
    );
    let (_, err) = e.fails(&["policy", "delete", "v/DefaultPolicy"]);
    assert_eq!(err["error"]["code"], "conflict");
    let (_, err) = e.fails(&[
        "item",
        "protect",
        "disk",
        e.path("x").to_str().unwrap(),
        "--vault",
        "v",
        "--policy",
        "nope",
    ]);
    assert_eq!(err["error"]["code"], "not_found");

    // Update keeps the name; a renamed document is refused.
    let mut changed = gfs("gfs");
    changed["retention"]["daily"]["days"] = serde_json::json!(14);
    let f2 = write_json(&e, "p2.json", &changed);
    e.json(&["policy", "update", "v/gfs", "--file", f2.to_str().unwrap()]);
    assert_eq!(
        e.json(&["policy", "show", "v/gfs"])["doc"]["retention"]["daily"]["days"],
        14
    );
    let f3 = write_json(&e, "p3.json", &gfs("other"));
    let (_, err) = e.fails(&["policy", "update", "v/gfs", "--file", f3.to_str().unwrap()]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("renamed"),
        "{err}"
    );
}

#[test]
fn bad_policy_documents_name_each_field_and_change_nothing() {
    let e = Env::new();
    e.vault("v", &[]);
    let bad = serde_json::json!({"name": "bad",
        "schedule": {"frequency": "hourly", "interval_hours": 5, "window_start": "8", "window_hours": 30, "time_zone": "Nowhere/City"},
        "retention": {"daily": {"days": 3}}});
    let f = write_json(&e, "bad.json", &bad);
    let (code, err) = e.fails(&[
        "policy",
        "create",
        "--vault",
        "v",
        "--file",
        f.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert_eq!(err["error"]["code"], "invalid");
    let msg = err["error"]["message"].as_str().unwrap();
    for field in [
        "schedule.time_zone",
        "schedule.interval_hours",
        "schedule.window_start",
        "schedule.window_hours",
        "retention.daily.days",
    ] {
        assert!(msg.contains(field), "{field} missing from {msg}");
    }
    assert!(
        msg.contains("4-24") && msg.contains("7-9999"),
        "ranges are named: {msg}"
    );
    let f = write_json(
        &e,
        "typo.json",
        &serde_json::json!({"name": "t", "schedule": {"frequency": "daily", "times": ["02:00"]}, "retention": {"daily": {"days": "30"}}}),
    );
    let (_, err) = e.fails(&[
        "policy",
        "create",
        "--vault",
        "v",
        "--file",
        f.to_str().unwrap(),
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retention.daily.days"),
        "{err}"
    );
    assert_eq!(
        e.json(&["policy", "list", "--vault", "v"])
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing was added"
    );
}

#[test]
fn simulate_prints_runs_and_survivors() {
    let e = Env::new();
    e.vault("v", &[]);
    let f = write_json(&e, "p.json", &gfs("gfs"));
    let sim = e.json(&[
        "policy",
        "simulate",
        "--file",
        f.to_str().unwrap(),
        "--from",
        "2026-03-01",
        "--days",
        "62",
    ]);
    let runs = sim["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 62);
    assert!(
        runs.iter()
            .any(|r| r["time"] == "2026-03-29T02:30:00+02:00")
            || runs
                .iter()
                .any(|r| r["time"] == "2026-03-29T03:30:00+02:00")
    );
    assert!(
        runs.iter()
            .any(|r| r["time"] == "2026-03-29T03:30:00+02:00"),
        "the DST gap shifts the run forward"
    );
    let surviving = sim["surviving"].as_array().unwrap();
    // Until 2026-05-02: days Apr 25 - May 1 (7), Sundays Apr 5, 12, 19 (Apr 26 is daily),
    // and the 1st of March and April (May 1 is daily).
    assert_eq!(surviving.len(), 7 + 3 + 2, "{sim}");
    let first = &surviving[0];
    assert_eq!(first["time"], "2026-03-01T02:30:00+01:00");
    assert_eq!(
        first["tags"],
        serde_json::json!(["daily", "weekly", "monthly"])
    );
    assert_eq!(first["expires"], "2027-03-01T02:30:00+01:00");
    e.json(&[
        "policy",
        "create",
        "--vault",
        "v",
        "--file",
        f.to_str().unwrap(),
    ]);
    let stored = e.json(&[
        "policy",
        "simulate",
        "v/gfs",
        "--from",
        "2026-03-01",
        "--days",
        "62",
    ]);
    assert_eq!(stored, sim, "a stored policy simulates the same");
    let (_, err) = e.fails(&[
        "policy", "simulate", "v/gfs", "--from", "March", "--days", "3",
    ]);
    assert!(err["error"]["message"].as_str().unwrap().contains("--from"));
}

#[test]
fn retention_plan_then_apply_removes_expired_points_but_never_the_newest() {
    let e = Env::at("2026-03-10T09:00:00Z");
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 2 << 20, &[(0, 2 << 20, 5)]);
    e.protect(&img, "v", &[]);
    // kura reads dates in its local zone: UTC here (Env sets TZ); its clock started at
    // 2026-03-10 09:00 UTC.
    let short = e.json(&["backup", "now", "d", "--retain-until", "2026-03-11"]);
    let short_id = short["rp_id"].as_str().unwrap().to_string();
    let long_id = e.backup("d");
    let rps = e.json(&["rp", "list", "d"]);
    assert_eq!(rps[1]["tags"], serde_json::json!(["on-demand"]));
    let expires = rps[1]["expires"].as_str().unwrap();
    assert!(
        expires.starts_with("2026-03-12"),
        "kept through the given day: {expires}"
    );

    // Now: nothing expired.
    let plan = e.json(&["retention", "plan", "d"]);
    assert!(
        plan["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["action"] == "keep"),
        "{plan}"
    );
    // In 3 days: the short one goes; in a year both expired, but the newest stays.
    let plan = e.json(&["retention", "plan", "d", "--at", "2026-03-13T09:00:00Z"]);
    let actions: Vec<(&str, &str)> = plan["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["rp_id"].as_str().unwrap(), x["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [(long_id.as_str(), "keep"), (short_id.as_str(), "delete")]
    );
    let in_a_year = "2027-03-10T09:00:00Z";
    let plan = e.json(&["retention", "plan", "d", "--at", in_a_year]);
    assert_eq!(plan["entries"][0]["action"], "keep");
    assert!(
        plan["entries"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("newest")
    );
    assert!(e.path("home/vaults/v/rps").join(&short_id).exists());
    e.json(&["retention", "apply", "d", "--at", in_a_year]);
    let rps = e.json(&["rp", "list", "d"]);
    assert_eq!(rps.as_array().unwrap().len(), 1);
    assert_eq!(rps[0]["id"], long_id.as_str());
    let left = e.path("home/vaults/v/rps").join(&short_id);
    assert!(
        !left.exists() || std::fs::read_dir(&left).unwrap().next().is_none(),
        "its manifest and index left the vault"
    );
    e.json(&["verify"]);
    let out = e.path("out.raw");
    e.restore("d", "latest", &out, "raw");
    assert!(same_file(&img, &out));
    let (_, err) = e.fails(&["retention", "plan", "d", "--at", "yesterday"]);
    assert!(err["error"]["message"].as_str().unwrap().contains("--at"));
}

#[test]
fn gc_from_the_command_line() {
    let e = Env::at("2026-03-10T09:00:00Z");
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 1)]);
    e.protect(&img, "v", &[]);
    e.backup("d");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 2)]);
    e.backup("d");
    // 400 days after the home's clock started.
    e.json(&["retention", "apply", "d", "--at", "2027-04-14T09:00:00Z"]);
    let before = e.chunk_files("v").len();
    let dry = e.json(&["gc", "--vault", "v", "--grace", "0", "--dry-run"]);
    assert_eq!(dry["newly_doomed"], 16);
    assert_eq!(e.chunk_files("v").len(), before);
    let first = e.json(&["gc", "--vault", "v", "--grace", "0"]);
    assert_eq!(
        (first["newly_doomed"].as_u64(), first["deleted"].as_u64()),
        (Some(16), Some(0)),
        "marked first"
    );
    let second = e.json(&["gc", "--vault", "v", "--grace", "0"]);
    assert_eq!(second["deleted"], 16, "{second}");
    assert_eq!(e.chunk_files("v").len(), before - 16);
    e.json(&["verify"]);
    let (_, err) = e.fails(&["gc", "--vault", "nope"]);
    assert_eq!(err["error"]["code"], "not_found");
}

#[test]
fn policies_travel_with_the_vault() {
    let e = Env::new();
    e.vault("v", &[]);
    let f = write_json(&e, "p.json", &gfs("gfs"));
    e.json(&[
        "policy",
        "create",
        "--vault",
        "v",
        "--file",
        f.to_str().unwrap(),
    ]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1000, 1)]);
    e.protect(&img, "v", &["--policy", "gfs"]);
    e.backup("d");
    assert!(e.path("home/vaults/v/policies/gfs.json").exists());
    let other = Env::new();
    let key = e.path("home/keys/v.key");
    other.json(&[
        "--key-file",
        key.to_str().unwrap(),
        "vault",
        "attach",
        "w",
        "--path",
        e.path("home/vaults/v").to_str().unwrap(),
    ]);
    let names: Vec<String> = other
        .json(&["policy", "list", "--vault", "w"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["DefaultPolicy", "gfs"]);
    assert_eq!(other.json(&["item", "show", "d"])["policy"], "gfs");
    assert_eq!(
        other.json(&["policy", "show", "w/gfs"])["doc"]["retention"]["weekly"]["weeks"],
        4
    );
    // Deleting a policy removes it from the vault too.
    e.json(&["item", "stop", "d"]);
    e.json(&["policy", "delete", "v/gfs"]);
    assert!(!e.path("home/vaults/v/policies/gfs.json").exists());
}

/// The next backup is the policy's next slot plus the item's fixed spread offset (under
/// 10 minutes); `set-policy` moves a protected item to another policy and its schedule.
#[test]
fn set_policy_moves_an_item_to_another_schedule_and_item_show_gives_the_next_backup() {
    let e = Env::at("2026-03-10T09:00:00Z");
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 4096, 3)]);
    e.protect(&img, "v", &[]);
    let ts = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let spread = jiff::SignedDuration::from_mins(10);

    // DefaultPolicy: daily at 02:00 UTC, so the next slot after 09:00 is tomorrow's.
    let st = e.json(&["item", "show", "d"]);
    let offset = ts(&st["next_backup"]).duration_since("2026-03-11T02:00:00Z".parse().unwrap());
    assert!(
        offset >= jiff::SignedDuration::ZERO && offset < spread,
        "{st}"
    );

    // The scheduler makes that backup; it is kept 30 days, as DefaultPolicy says.
    let tick = e.json(&["scheduler", "tick", "--now", "2026-03-11T02:15:00Z"]);
    assert!(tick["backups"][0]["rp_id"].is_string(), "{tick}");
    let before = e.json(&["rp", "list", "d"])[0].clone();
    assert_eq!(before["tags"], serde_json::json!(["daily"]), "{before}");

    let weekly = serde_json::json!({"name": "sundays",
        "schedule": {"frequency": "weekly", "days_of_week": ["sunday"], "times": ["23:00"],
                     "time_zone": "Europe/Berlin"},
        "retention": {"weekly": {"weeks": 8, "days_of_week": ["sunday"]}}});
    let f = write_json(&e, "w.json", &weekly);
    e.json(&[
        "policy",
        "create",
        "--vault",
        "v",
        "--file",
        f.to_str().unwrap(),
    ]);
    let (_, err) = e.fails(&["item", "set-policy", "d", "--policy", "nope"]);
    assert_eq!(err["error"]["code"], "not_found");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("nope"),
        "{err}"
    );
    assert_eq!(
        e.json(&["item", "show", "d"])["policy"],
        "DefaultPolicy",
        "nothing changed"
    );

    let st = e.json(&["item", "set-policy", "d", "--policy", "sundays"]);
    assert_eq!(st["policy"], "sundays");
    assert_eq!(st["protection_state"], "Protected");
    // Sunday 2026-03-15 23:00 in Berlin (CET, +01:00) is 22:00 UTC; same item, same offset.
    assert_eq!(
        ts(&st["next_backup"]),
        "2026-03-15T22:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .checked_add(offset)
            .unwrap(),
        "{st}"
    );
    let text = e.ok(&["item", "show", "d"]);
    assert!(text.contains("next backup"), "{text}");
    let job = &e.json(&["job", "list", "--operation", "ConfigureBackup"])[0];
    let shown = e.json(&["job", "show", job["id"].as_str().unwrap()]);
    assert!(
        shown["log"].to_string().contains(
            "policy changed from DefaultPolicy to sundays; 1 scheduled recovery point(s) take its retention"
        ),
        "{shown}"
    );
    // A Wednesday point has no place in a Sunday-only retention: it loses its daily tag and
    // its 30 days.
    let after = e.json(&["rp", "list", "d"])[0].clone();
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["tags"], serde_json::json!([]), "{after}");
    assert!(
        ts(&after["expires"]) < ts(&before["expires"]),
        "{before} {after}"
    );

    // Only a protected item changes policy; a stopped one resumes with one.
    e.json(&["item", "stop", "d"]);
    let (_, err) = e.fails(&["item", "set-policy", "d", "--policy", "sundays"]);
    assert_eq!(err["error"]["code"], "conflict");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("resume"),
        "{err}"
    );
    assert_eq!(e.json(&["item", "show", "d"])["next_backup"], Value::Null);
}
