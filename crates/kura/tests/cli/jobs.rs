//! Watching jobs: `job list` filters, `job show --follow`, and the progress bar of a job run
//! through the server.

use std::io::{BufRead, Read};
use std::process::Stdio;

use super::*;

fn two_items(e: &Env) {
    e.vault("v", &[]);
    for name in ["a", "b"] {
        let img = e.path(&format!("{name}.raw"));
        make_image(&img, 1 << 20, &[(0, 1 << 20, 5)]);
        e.protect(&img, "v", &["--name", name]);
        e.backup(name);
    }
}

#[test]
fn job_list_filters_by_item_status_and_operation() {
    let e = Env::new();
    two_items(&e);
    let out = e.path("a-out.raw");
    e.restore("a", "latest", &out, "raw");
    let ops = |args: &[&str]| -> Vec<(String, String, String)> {
        let mut a = vec!["job", "list"];
        a.extend_from_slice(args);
        e.json(&a)
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["operation"].as_str().unwrap().to_string(),
                    j["target"].as_str().unwrap().to_string(),
                    j["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let of_a = ops(&["--item", "a"]);
    assert!(of_a.iter().all(|(_, t, _)| t == "a"), "{of_a:?}");
    assert!(of_a.iter().any(|(o, _, _)| o == "Restore"), "{of_a:?}");
    let backups = ops(&["--operation", "backup"]);
    assert_eq!(backups.len(), 2, "{backups:?}");
    assert!(backups.iter().all(|(o, _, _)| o == "Backup"));
    let restores_of_b = ops(&["--item", "b", "--operation", "Restore"]);
    assert!(restores_of_b.is_empty(), "{restores_of_b:?}");
    let completed = ops(&["--status", "completed", "--limit", "1"]);
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].2, "Completed");
    let (_, err) = e.fails(&["job", "list", "--status", "done"]);
    assert_eq!(err["error"]["code"], "invalid");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"done\"") && msg.contains("CompletedWithWarnings"),
        "the message names the value and the choices: {msg}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn job_show_follow_prints_the_log_as_it_grows_until_the_job_ends() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 2 << 20, &[(0, 2 << 20, 9)]);
    e.protect(&img, "v", &[]);
    let gate = Gate::new(&e, "transfer_chunk");
    let (var, val) = gate.env();
    let mut backup = e
        .cmd(&["backup", "now", "d"])
        .env(var, val)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    gate.wait_reached();
    let job = e.json(&["job", "list", "--status", "InProgress"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut follow = e
        .cmd(&["job", "show", &job[..12], "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The follower prints the log so far while the job is held at the gate...
    let mut log = std::io::BufReader::new(follow.stderr.take().unwrap());
    let mut first = String::new();
    log.read_line(&mut first).unwrap();
    assert!(first.contains("Backup of d started"), "{first:?}");
    // ... and the rest once it goes on, then the job as `job show` prints it.
    gate.release();
    assert!(backup.wait().unwrap().success());
    let mut rest = String::new();
    log.read_to_string(&mut rest).unwrap();
    let mut shown = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut shown)
        .unwrap();
    assert!(follow.wait().unwrap().success());
    assert!(rest.contains("Backup completed"), "{rest}");
    assert!(shown.contains("Completed"), "{shown}");
    assert!(!shown.contains("InProgress"), "{shown}");
    // JSON: the ended job only.
    let j = e.json(&["job", "show", &job, "--follow"]);
    assert_eq!(j["status"], "Completed");
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_backup_through_the_server_draws_the_same_progress_bar_on_a_terminal() {
    let e = Env::new();
    let gate = Gate::new(&e, "transfer_chunk");
    let (var, val) = gate.env();
    let srv = super::remote::serve_with(&e, &[(var.as_str(), val.as_os_str())]);
    let token_file = e.path("token");
    std::fs::write(&token_file, "tok-0123456789abcdef\n").unwrap();
    let img = e.path("d.raw");
    make_image(&img, 2 << 20, &[(0, 2 << 20, 9)]);
    let base = [
        "--server",
        &srv.url,
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    let run = |args: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(args);
        e.ok(&a)
    };
    run(&[
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "default",
    ]);
    // `script` gives the command a terminal, as a person at a shell has.
    let line = format!(
        "{} {} backup now d",
        env!("CARGO_BIN_EXE_kura"),
        base.join(" ")
    );
    let mut child = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .env("TERM", "xterm")
        .env("KURA_HOME", e.path("home"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    let mut tty = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // The bar is drawn while the job is held at the gate, named after its phase.
    while !String::from_utf8_lossy(&seen).contains("Backup transfer") {
        let n = tty.read(&mut buf).unwrap();
        assert!(n > 0, "no bar: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    gate.release();
    tty.read_to_end(&mut seen).unwrap();
    assert!(child.wait().unwrap().success());
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("] "), "a bar: {text}");
    assert!(text.contains("recovery point"), "then the report: {text}");
}
