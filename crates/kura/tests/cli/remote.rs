//! The same CLI through a running `kura server` (`--server URL --token T`).

use std::io::BufRead;
use std::process::{Child, Stdio};

use super::*;

/// A `kura server` started by a test; its log (stderr) goes to `log`.
pub(super) struct ServerProcess {
    pub(super) child: Child,
    pub(super) url: String,
    pub(super) log: PathBuf,
    // Kept open: the server keeps printing.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

/// The admin token `serve` gives its server.
pub(super) const TOKEN: &str = "tok-0123456789abcdef";

impl ServerProcess {
    /// `args` sent to this server with the admin token.
    pub(super) fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["--server", self.url.as_str(), "--token", TOKEN];
        a.extend_from_slice(args);
        a
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server over `HOME/server-home` that may read and write under the test's directory.
pub(super) fn serve(e: &Env) -> ServerProcess {
    serve_with(e, &[])
}

/// A server with extra environment variables (test gates).
pub(super) fn serve_with(e: &Env, envs: &[(&str, &std::ffi::OsStr)]) -> ServerProcess {
    let dir = e.dir.path().to_str().unwrap();
    spawn(
        e,
        "server-home",
        &["--allow-source", dir, "--allow-restore", dir],
        envs,
    )
}

/// The server the commands of a test go through when the suite runs with
/// `KURA_TEST_TRANSPORT=server`: over the test's own home, so that the commands that run on
/// the host only (and those given secrets) meet the same catalog and vaults. The tests run
/// their own schedules (`scheduler tick`), so this server has no scheduler; it may read and
/// write anywhere, as the local commands may (the allow-lists have their own tests). The
/// `default` vault a server makes at its first start is detached again: the tests expect
/// the home they made.
pub(super) fn serve_home(e: &Env) -> ServerProcess {
    let home = e.path("home");
    let had_default = home.join("vaults/default").exists();
    let server = spawn(
        e,
        "home",
        &[
            "--no-scheduler",
            "--allow-source",
            "/",
            "--allow-restore",
            "/",
        ],
        &[],
    );
    if !had_default {
        let out = e
            .cmd(&[
                "--home",
                home.to_str().unwrap(),
                "vault",
                "detach",
                "default",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::remove_dir_all(home.join("vaults/default")).unwrap();
    }
    server
}

/// Starts `kura server` over `HOME/home` (a directory name in the test's directory) on a
/// free loopback port, with the admin token [`TOKEN`], the scheduler ticking hourly, and
/// `args`; waits for the address it prints.
pub(super) fn spawn(
    e: &Env,
    home: &str,
    args: &[&str],
    envs: &[(&str, &std::ffi::OsStr)],
) -> ServerProcess {
    let log = e.path(&format!(
        "server-{}.log",
        e.dir.path().read_dir().unwrap().count()
    ));
    let home = e.path(home);
    let mut c = e.cmd(&[
        "--home",
        home.to_str().unwrap(),
        "server",
        "--listen",
        "127.0.0.1:0",
        "--tick",
        "3600",
    ]);
    let mut child = c
        .args(args)
        .env("KURA_ADMIN_TOKEN", TOKEN)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| {
            panic!(
                "no address in {line:?}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .trim_end_matches("/api/v1")
        .to_string();
    ServerProcess {
        child,
        url,
        log,
        _stdout: stdout,
    }
}

#[test]
fn the_cli_works_through_the_server() {
    let e = Env::new();
    let srv = serve(&e);
    // The token comes from a file, so it never shows in the process list.
    let token_file = e.path("token");
    std::fs::write(&token_file, "tok-0123456789abcdef\n").unwrap();
    let remote = |args: &[&str]| -> Vec<String> {
        let mut a = vec![
            "--server".to_string(),
            srv.url.clone(),
            "--token-file".into(),
            token_file.to_str().unwrap().into(),
        ];
        a.extend(args.iter().map(|s| s.to_string()));
        a
    };
    let json = |args: &[&str]| -> Value {
        let a = remote(args);
        e.json(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let vaults = json(&["vault", "list"]);
    assert_eq!(vaults[0]["name"], "default");
    let img = e.path("d.raw");
    make_image(&img, 3 << 20, &[(0, 3 << 20, 4)]);
    let item = json(&[
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "default",
    ]);
    assert_eq!(item["name"], "d");
    let pre = json(&["item", "precheck", "d"]);
    assert_eq!(pre["ready"], true, "{pre}");
    let st = json(&["item", "set-format", "d", "--format", "raw"]);
    assert_eq!(st["spec"]["format"]["format"], "raw", "{st}");
    let report = json(&["backup", "now", "d"]);
    assert!(report["rp_id"].as_str().is_some(), "{report}");
    assert!(
        report["job_id"].as_str().is_some_and(|j| j.len() == 32),
        "{report}"
    );
    // The same report as the local command prints.
    let local = e.json(&[
        "--home",
        e.path("server-home").to_str().unwrap(),
        "backup",
        "now",
        "d",
    ]);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&report), keys(&local));
    let rps = json(&["rp", "list", "d"]);
    assert_eq!(rps.as_array().unwrap().len(), 2);
    let out = e.path("out.raw");
    let job = json(&[
        "restore",
        "disk",
        "d",
        "--rp",
        "latest",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(job["target"], out.to_str().unwrap());
    assert!(same_file(&img, &out));
    let verified = json(&["verify", "--item", "d"]);
    assert_eq!(verified["problems"], serde_json::json!([]));
    assert_eq!(verified["recovery_points"], 2);
    let gc = json(&["gc", "--vault", "default", "--grace", "0"]);
    assert_eq!(gc["deleted"], 0);
    let plan = json(&["retention", "plan", "d"]);
    assert_eq!(plan["entries"].as_array().unwrap().len(), 2);
    // A recovery kit holds the vault's key: it is written on the server's host only.
    let escrow = e.path("escrow.json");
    let a = remote(&[
        "vault",
        "key",
        "export",
        "default",
        "--to",
        escrow.to_str().unwrap(),
    ]);
    let (_, err) = e.fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server's host"),
        "{err}"
    );
    assert!(!escrow.exists());
    let a = remote(&[
        "vault",
        "attach",
        "x",
        "--path",
        e.dir.path().to_str().unwrap(),
    ]);
    let (_, err) = e.fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a kura vault"),
        "{err}"
    );
    // Tables are the same through the server as on the home.
    let home = e.path("server-home");
    for args in [
        vec!["rp", "list", "d"],
        vec!["item", "list"],
        vec!["vault", "list"],
        vec!["policy", "list", "--vault", "default"],
        vec!["item", "show", "d"],
        vec!["usage"],
    ] {
        let mut local = vec!["--home", home.to_str().unwrap()];
        local.extend(args.iter().copied());
        let through = remote(&args);
        assert_eq!(
            e.ok(&through.iter().map(String::as_str).collect::<Vec<_>>()),
            e.ok(&local),
            "{args:?}"
        );
    }
    let usage = json(&["usage", "--vault", "default"]);
    assert_eq!(usage[0]["vault"], "default");
    assert!(json(&["job", "list"]).as_array().unwrap().len() >= 2);
    assert_eq!(
        json(&["policy", "list", "--vault", "default"])[0]["name"],
        "DefaultPolicy"
    );
    let table = e.ok(&remote(&["rp", "list", "d"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(
        table.contains("ID") && table.contains(&rps[0]["id"].as_str().unwrap()[24..]),
        "{table}"
    );
    // The short id a table shows is accepted, through the server too.
    let short = &rps[0]["id"].as_str().unwrap()[24..];
    assert_eq!(
        json(&["rp", "show", "d", "--rp", short])["rp_id"],
        rps[0]["id"]
    );

    // Errors keep their codes; a wrong token is refused.
    let bad: Vec<String> = vec![
        "--server".into(),
        srv.url.clone(),
        "--token".into(),
        "nope".into(),
        "item".into(),
        "list".into(),
    ];
    let (_, err) = e.fails(&bad.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(err["error"]["code"], "unauthorized");
    let a = remote(&["backup", "now", "ghost"]);
    let (_, err) = e.fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(err["error"]["code"], "not_found");
    let a = remote(&["scheduler", "tick"]);
    let (_, err) = e.fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--server"),
        "{err}"
    );
}

/// A backup requested through the API while another backup of the item takes its snapshot
/// is refused with 409 before a job id is handed out, as docs/api.md says.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn an_overlapping_backup_request_gets_409() {
    let e = Env::new();
    let srv = serve(&e);
    let home = e.path("server-home");
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 6)]);
    e.ok(&[
        "--home",
        home.to_str().unwrap(),
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "default",
    ]);
    let gate = Gate::new(&e, "snapshot");
    let (var, val) = gate.env();
    let mut held = e
        .cmd(&["--home", home.to_str().unwrap(), "backup", "now", "d"])
        .env(var, val)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    gate.wait_reached();
    let jobs_before = e.json(&["--home", home.to_str().unwrap(), "job", "list"]);
    let (code, err) = e.fails(&[
        "--server",
        &srv.url,
        "--token",
        "tok-0123456789abcdef",
        "backup",
        "now",
        "d",
    ]);
    assert_eq!(code, 1);
    assert_eq!(err["error"]["code"], "conflict", "{err}");
    let jobs_after = e.json(&["--home", home.to_str().unwrap(), "job", "list"]);
    assert_eq!(
        jobs_before.as_array().unwrap().len(),
        jobs_after.as_array().unwrap().len(),
        "no job was made for the refused request"
    );
    gate.release();
    assert!(held.wait().unwrap().success());
}

/// The same command, run on the home and through the server over that home, prints the same
/// document and the same text (and, for a failure, the same error and exit code).
#[test]
fn the_same_command_prints_the_same_result_both_ways() {
    let e = Env::new();
    let srv = serve(&e);
    let home = e.path("server-home");
    let home = home.to_str().unwrap();
    let img = e.path("w.raw");
    make_image(&img, 3 << 20, &[(0, 2 << 20, 9)]);
    let remote = |args: &[&str]| -> Output { e.run(&srv.args(args)) };
    let local = |args: &[&str]| -> Output {
        let mut a = vec!["--home", home];
        a.extend_from_slice(args);
        e.run(&a)
    };
    assert!(
        remote(&[
            "item",
            "protect",
            "disk",
            img.to_str().unwrap(),
            "--vault",
            "default"
        ])
        .status
        .success()
    );
    assert!(remote(&["backup", "now", "w"]).status.success());
    let commands: &[&[&str]] = &[
        &["vault", "list"],
        &["vault", "show", "default"],
        &["item", "list"],
        &["item", "show", "w"],
        &["rp", "list", "w"],
        &["rp", "show", "w", "--rp", "latest"],
        &["job", "list", "--item", "w"],
        &["token", "list"],
        &["usage"],
        &["usage", "--vault", "default"],
        &["retention", "plan", "w", "--at", "2026-06-01T00:00:00Z"],
        &["policy", "list", "--vault", "default"],
        // Failures: the same message, code and exit status.
        &["item", "show", "nope"],
        &["rp", "show", "w", "--rp", "ffffffff"],
        &["vault", "show", "defualt"],
        &["usage", "--vault", "nope"],
    ];
    for (n, cmd) in commands.iter().enumerate() {
        let should_fail = n >= 12;
        for json in [true, false] {
            let mut args: Vec<&str> = if json {
                vec!["--output", "json"]
            } else {
                vec![]
            };
            args.extend_from_slice(cmd);
            let (l, r) = (local(&args), remote(&args));
            let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
            assert_eq!(
                l.status.code(),
                r.status.code(),
                "{args:?}: exit status differs\nlocal: {}{}\nremote: {}{}",
                text(&l),
                String::from_utf8_lossy(&l.stderr),
                text(&r),
                String::from_utf8_lossy(&r.stderr)
            );
            assert_eq!(
                l.status.success(),
                !should_fail,
                "{args:?}: {}{}",
                text(&l),
                String::from_utf8_lossy(&l.stderr)
            );
            if l.status.success() || json {
                assert!(!text(&l).trim().is_empty(), "{args:?} printed nothing");
                assert_eq!(text(&l), text(&r), "{args:?}: output differs");
            } else {
                assert_eq!(
                    String::from_utf8_lossy(&l.stderr),
                    String::from_utf8_lossy(&r.stderr),
                    "{args:?}: error differs"
                );
            }
        }
    }
}
