//! What a user reads: hints on empty lists, "did you mean" for mistyped names (locally and
//! through the server), and item list with each item's last backup and health.

use super::*;

#[test]
fn empty_lists_say_what_to_do_and_mistyped_names_get_the_nearest_one() {
    let e = Env::new();
    let out = e.ok(&["vault", "list"]);
    assert!(
        out.contains("no vaults yet") && out.contains("kura vault create"),
        "{out}"
    );
    assert_eq!(e.json(&["vault", "list"]), serde_json::json!([]));
    let out = e.ok(&["item", "list"]);
    assert!(out.contains("kura item protect disk"), "{out}");

    e.vault("offsite", &[]);
    let img = e.path("web.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 3)]);
    e.protect(&img, "offsite", &[]);
    e.backup("web");

    let near = |args: &[&str], want: Option<&str>| {
        let (code, err) = e.fails(args);
        assert_eq!(err["error"]["code"], "not_found", "{args:?}: {err}");
        assert_ne!(code, 0);
        let msg = err["error"]["message"].as_str().unwrap().to_string();
        match want {
            Some(w) => assert!(
                msg.contains(&format!("did you mean {w:?}?")),
                "{args:?}: {msg}"
            ),
            None => assert!(!msg.contains("did you mean"), "{args:?}: {msg}"),
        }
        msg
    };
    near(&["vault", "show", "ofsite"], Some("offsite"));
    near(&["backup", "now", "Web"], Some("web"));
    near(&["rp", "list", "wbe"], Some("web"));
    near(
        &["policy", "show", "offsite/DefaultPolcy"],
        Some("DefaultPolicy"),
    );
    near(&["backup", "now", "database"], None);

    // Through the server, the same message.
    let srv = remote::serve(&e);
    let (_, err) = e.fails(&[
        "--server",
        &srv.url,
        "--token",
        "tok-0123456789abcdef",
        "vault",
        "show",
        "defualt",
    ]);
    assert_eq!(err["error"]["code"], "not_found", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean \"default\"?"),
        "{err}"
    );
}

#[test]
fn item_list_shows_each_items_last_backup_and_health() {
    let e = Env::new();
    e.vault("v", &[]);
    for name in ["a", "b"] {
        let img = e.path(&format!("{name}.raw"));
        make_image(&img, 1 << 20, &[(0, 1 << 20, 5)]);
        e.protect(&img, "v", &[]);
    }
    e.backup("a");
    e.backup("b");
    // b's source disappears and its next backup fails.
    std::fs::remove_file(e.path("b.raw")).unwrap();
    e.fails(&["backup", "now", "b"]);
    let items = e.json(&["item", "list"]);
    let by = |n: &str| {
        items
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by("a")["last_backup_status"], "Healthy", "{items}");
    assert_eq!(by("a")["health_status"], "Passed", "{items}");
    assert_eq!(by("a")["protection_state"], "Protected", "{items}");
    assert_eq!(by("b")["last_backup_status"], "Unhealthy", "{items}");
    assert_eq!(by("b")["health_status"], "ActionRequired", "{items}");
    let text = e.ok(&["item", "list"]);
    let line = |n: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{n} ")))
            .unwrap_or_else(|| panic!("no line for {n}: {text}"))
            .to_string()
    };
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.lines().next().unwrap().contains("LAST BACKUP"),
        "{text}"
    );
    assert!(
        line("a").contains("Healthy") && line("a").contains("Passed"),
        "{text}"
    );
    assert!(
        line("b").contains("Unhealthy") && line("b").contains("ActionRequired"),
        "{text}"
    );
    // usage says in words what each figure is.
    let usage = e.ok(&["usage"]);
    for words in [
        "SOURCE SIZE",
        "DATA IN POINTS",
        "as if each were a full copy",
        "SAVING",
    ] {
        assert!(usage.contains(words), "{words} in {usage}");
    }
    assert!(!usage.contains("LOGICAL"), "{usage}");
}

#[test]
fn tables_show_times_in_the_zone_asked_and_json_stays_utc() {
    // The clock starts at a fixed instant, whatever the date the test runs at.
    let e = Env::at("2026-03-10T09:00:00Z");
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 3)]);
    e.protect(&img, "v", &[]);
    let rp = e.backup("d");
    let json = e.json(&["rp", "list", "d"]);
    let time = json[0]["time"].as_str().unwrap().to_string();
    assert!(
        time.starts_with("2026-03-10T09:00") && time.ends_with('Z'),
        "{json}"
    );
    let t: jiff::Timestamp = time.parse().unwrap();
    // The machine's zone by default (the tests run with TZ=UTC), else --tz (or KURA_TZ).
    let utc = e.ok(&["rp", "list", "d"]);
    let want = t
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    assert!(utc.contains(&want), "{want} in {utc}");
    let tokyo = e.ok(&["rp", "list", "d", "--tz", "Asia/Tokyo"]);
    let want = t
        .to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap())
        .strftime("%Y-%m-%d %H:%M:%S JST")
        .to_string();
    assert!(want.starts_with("2026-03-10 18:00"), "{want}");
    assert!(
        tokyo.contains(&want) && !tokyo.contains(&time),
        "{want} in {tokyo}"
    );
    let berlin = e.run(&["rp", "show", "d", "--rp", &rp]);
    assert!(berlin.status.success());
    let shown = e
        .cmd(&["job", "list"])
        .env("KURA_TZ", "Europe/Berlin")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    // Jobs are stamped with the system's time, not the test clock: compare with their JSON.
    let started: jiff::Timestamp = e.json(&["job", "list"])[0]["started"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let want = started
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .to_string();
    assert!(shown.contains(&want), "{want} in {shown}");
    // JSON ignores --tz.
    assert_eq!(e.json(&["rp", "list", "d", "--tz", "Asia/Tokyo"]), json);
    // A zone that does not exist is refused, naming the flag.
    let (_, err) = e.fails(&["rp", "list", "d", "--tz", "Mars/Olympus"]);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("--tz"),
        "{err}"
    );
}
