//! `kura server` as a service: configuration file, flags and environment; named tokens;
//! HTTPS with a private CA; request logs; a graceful stop on SIGTERM.

use super::*;

use std::process::Stdio;

use super::remote::{ServerProcess, TOKEN as ADMIN};

/// A server over `HOME/server-home` with `args` and environment variables.
fn serve_with(e: &Env, args: &[&str], envs: &[(&str, &str)]) -> ServerProcess {
    let envs: Vec<(&str, &std::ffi::OsStr)> = envs
        .iter()
        .map(|(k, v)| (*k, std::ffi::OsStr::new(*v)))
        .collect();
    super::remote::spawn(e, "server-home", args, &envs)
}

#[test]
fn the_configuration_file_is_checked_and_flags_and_environment_override_it() {
    let e = Env::new();
    let cfg = e.path("kura.toml");
    std::fs::write(
        &cfg,
        "home = \"h\"\nlisten = \"127.0.0.1:9001\"\nlog_format = \"json\"\ntick_seconds = 5\nallow_source = [\"/srv/a\"]\n",
    )
    .unwrap();
    let o = e.run(&[
        "server",
        "--config",
        cfg.to_str().unwrap(),
        "--print-config",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: toml::Table = toml::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
    // KURA_HOME (set by Env) overrides the file's home; the rest comes from the file.
    assert_eq!(
        printed["home"].as_str(),
        Some(e.path("home").to_str().unwrap())
    );
    assert_eq!(printed["listen"].as_str(), Some("127.0.0.1:9001"));
    assert_eq!(printed["tick_seconds"].as_integer(), Some(5));
    assert_eq!(printed["log_format"].as_str(), Some("json"));

    // A flag beats the environment, which beats the file; lists add up.
    let o = e
        .cmd(&[
            "server",
            "--config",
            cfg.to_str().unwrap(),
            "--print-config",
            "--tick",
            "7",
            "--allow-source",
            "/srv/b",
        ])
        .env("KURA_LISTEN", "127.0.0.1:9002")
        .env("KURA_LOG_FORMAT", "text")
        .env("KURA_PASSPHRASE", "do-not-print-me")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let printed: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(printed["listen"].as_str(), Some("127.0.0.1:9002"));
    assert_eq!(printed["tick_seconds"].as_integer(), Some(7));
    assert_eq!(printed["log_format"].as_str(), Some("text"));
    assert_eq!(printed["allow_source"].as_array().unwrap().len(), 2);
    assert!(text.contains("KURA_PASSPHRASE is set") && !text.contains("do-not-print-me"));

    // Unknown keys and bad values are refused, naming the key, before anything starts.
    for (content, key) in [
        (
            "listen = \"127.0.0.1:1\"\nlisten_addr = \"x\"\n",
            "listen_addr",
        ),
        ("tick_seconds = \"often\"\n", "tick_seconds"),
        ("log_level = \"kura=chatty\"\n", "log_level"),
        ("listen = \"0.0.0.0:8640\"\n", "listen"),
        ("tls_cert = \"/nonexistent.pem\"\n", "tls_key"),
        ("max_jobs = 0\n", "max_jobs"),
        ("max_jobs_per_vault = 5000\n", "max_jobs_per_vault"),
    ] {
        std::fs::write(&cfg, content).unwrap();
        let o = e.run(&["server", "--config", cfg.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{content}: {err}");
        assert!(err.contains(key), "{content}: the error names {key}: {err}");
    }
    assert!(
        !e.path("home").join("catalog.db").exists(),
        "nothing was started"
    );

    // `kura server --help` lists the server's options, not the client's.
    let help = e.ok(&["server", "--help"]);
    assert!(help.contains("--config") && help.contains("--tls-cert"));
    assert!(!help.contains("--token-file") && !help.contains("--output"));
}

#[test]
fn the_shipped_unit_file_is_valid() {
    let e = Env::new();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dist/systemd/kura.service"
    ))
    .unwrap()
    .replace("/usr/local/bin/kura", env!("CARGO_BIN_EXE_kura"));
    let path = e.path("kura.service");
    std::fs::write(&path, unit).unwrap();
    let o = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (scripts/test installs systemd)");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The example configuration is what the unit points at, and it is accepted as is.
    let o = e.run(&[
        "server",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist/kura.toml"),
        "--print-config",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn named_tokens_are_made_used_revoked_and_reset() {
    let e = Env::new();
    let srv = serve_with(&e, &["--log-format", "json"], &[]);
    let home = e.path("server-home");
    let home = home.to_str().unwrap();
    let via = |token: &str, args: &[&str]| -> Output {
        let mut a = vec!["--output", "json", "--server", &srv.url, "--token", token];
        a.extend_from_slice(args);
        e.run(&a)
    };
    let doc = |o: &Output| -> Value { serde_json::from_slice(&o.stdout).unwrap() };

    // The admin makes a token for a client, through the API.
    let o = via(ADMIN, &["token", "create", "ci", "--expires", "2999-01-01"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let ci = doc(&o)["token"].as_str().unwrap().to_string();
    assert!(ci.starts_with("kura_"));
    let o = via(&ci, &["vault", "list"]);
    assert!(o.status.success());
    // Listed with its use, never with its secret.
    let list = e.json(&["--home", home, "token", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "ci"]);
    assert!(!list[1]["last_used"].is_null(), "{list}");
    assert!(
        list[1]["expires"]
            .as_str()
            .unwrap()
            .starts_with("2999-01-01")
    );
    assert!(!list.to_string().contains(&ci));

    // Revoked on the server's host: refused at once.
    e.ok(&["--home", home, "token", "revoke", "ci"]);
    let o = via(&ci, &["vault", "list"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(doc(&o)["error"]["code"], "unauthorized");

    // A lost admin token is reset on the server's host.
    let reset = e.json(&["--home", home, "token", "reset", "admin"]);
    let admin2 = reset["token"].as_str().unwrap();
    assert_eq!(
        doc(&via(ADMIN, &["vault", "list"]))["error"]["code"],
        "unauthorized"
    );
    assert!(via(admin2, &["vault", "list"]).status.success());

    // A bad name or a past expiry changes nothing.
    let (_, err) = e.fails(&["--home", home, "token", "create", "a b"]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("token name")
    );
    let (_, err) = e.fails(&[
        "--home",
        home,
        "token",
        "create",
        "old",
        "--expires",
        "2001-01-01",
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not in the future")
    );
    assert_eq!(
        e.json(&["--home", home, "token", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // One JSON log line per request, with the token's name and never a secret.
    let log = std::fs::read_to_string(&srv.log).unwrap();
    let requests: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "request")
        .collect();
    assert!(
        requests
            .iter()
            .any(|r| r["path"] == "/api/v1/vaults" && r["status"] == 200 && r["token"] == "ci"),
        "{log}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r["status"] == 401 && r["token"] == "-"),
        "{log}"
    );
    assert!(!log.contains(&ci) && !log.contains(ADMIN) && !log.contains(admin2));
}

/// A private CA and a certificate for 127.0.0.1 signed by it, made with openssl.
fn make_ca(e: &Env) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(e.dir.path())
            .output()
            .expect("openssl (scripts/test installs it)");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "3650",
        "-subj",
        "/CN=kura test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(e.path("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "3650",
        "-extfile",
        "san.ext",
    ]);
    (e.path("ca.pem"), e.path("server.pem"), e.path("server.key"))
}

#[test]
fn https_with_a_private_ca() {
    let e = Env::new();
    let (ca, cert, key) = make_ca(&e);
    let srv = serve_with(
        &e,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(srv.url.starts_with("https://127.0.0.1:"), "{}", srv.url);
    let vaults = e.json(&[
        "--server",
        &srv.url,
        "--token",
        ADMIN,
        "--ca-file",
        ca.to_str().unwrap(),
        "vault",
        "list",
    ]);
    assert_eq!(vaults[0]["name"], "default");
    // Without the CA the certificate is not trusted, and the token is never sent.
    let (code, err) = e.fails(&["--server", &srv.url, "--token", ADMIN, "vault", "list"]);
    assert_eq!(code, 1);
    let msg = err["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(
        msg.contains("certificate") || msg.contains("issuer"),
        "{msg}"
    );
    // Plain HTTP to the HTTPS port gets no answer from the API.
    let plain = srv.url.replace("https://", "http://");
    let (code, _) = e.fails(&["--server", &plain, "--token", ADMIN, "vault", "list"]);
    assert_eq!(code, 1);
    // A non-loopback address is fine with TLS.
    let o = e.run(&[
        "server",
        "--listen",
        "0.0.0.0:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--print-config",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn sigterm_cancels_running_jobs_and_the_server_exits() {
    let e = Env::new();
    let img = e.path("d.raw");
    make_image(&img, 1 << 20, &[(0, 1 << 20, 6)]);
    let gate = Gate::new(&e, "snapshot");
    let (var, val) = gate.env();
    let val = val.to_str().unwrap().to_string();
    let mut srv = serve_with(
        &e,
        &["--allow-source", e.dir.path().to_str().unwrap()],
        &[(&var, &val)],
    );
    e.json(&srv.args(&[
        "item",
        "protect",
        "disk",
        img.to_str().unwrap(),
        "--vault",
        "default",
    ]));
    // A backup through the server stops at its snapshot phase.
    let mut client = e
        .cmd(&["--server", &srv.url, "--token", ADMIN, "backup", "now", "d"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    gate.wait_reached();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(srv.child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    // The server asks the job to stop; the job goes on to the point where it sees it.
    let home = e.path("server-home");
    let home = home.to_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let jobs = e.json(&["--home", home, "job", "list"]);
        if jobs[0]["status"] == "Cancelling" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not cancelled: {jobs}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    gate.release();
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "the server exits cleanly: {status:?}");
    let _ = client.wait();
    let jobs = e.json(&["--home", home, "job", "list"]);
    assert_eq!(jobs[0]["operation"], "Backup");
    assert_eq!(jobs[0]["status"], "Cancelled", "{jobs}");
    assert!(
        e.json(&["--home", home, "rp", "list", "d"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
}

#[test]
fn jobs_beyond_max_jobs_wait_queued_and_each_start_and_end_is_logged() {
    let e = Env::new();
    let gate = Gate::new(&e, "snapshot");
    let (var, val) = gate.env();
    let val = val.to_str().unwrap().to_string();
    let srv = serve_with(
        &e,
        &[
            "--max-jobs",
            "1",
            "--log-format",
            "json",
            "--allow-source",
            e.dir.path().to_str().unwrap(),
        ],
        &[(&var, &val)],
    );
    for d in ["d1", "d2"] {
        let img = e.path(&format!("{d}.raw"));
        make_image(&img, 1 << 20, &[(0, 1 << 20, 6)]);
        e.json(&srv.args(&[
            "item",
            "protect",
            "disk",
            img.to_str().unwrap(),
            "--vault",
            "default",
        ]));
    }
    let home = e.path("server-home");
    let home = home.to_str().unwrap();
    let spawn = |item: &str| {
        e.cmd(&srv.args(&["--output", "json", "backup", "now", item]))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // d1's backup holds the only slot (at its snapshot); d2's waits, Queued.
    let first = spawn("d1");
    gate.wait_reached();
    let second = spawn("d2");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let queued = loop {
        let q = e.json(&["--home", home, "job", "list", "--status", "queued"]);
        if let Some(j) = q.as_array().unwrap().first() {
            break j.clone();
        }
        assert!(std::time::Instant::now() < deadline, "d2 never queued");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(queued["target"], "d2", "{queued}");
    assert_eq!(queued["operation"], "Backup", "{queued}");
    let running = e.json(&["--home", home, "job", "list", "--status", "inprogress"]);
    assert_eq!(running.as_array().unwrap().len(), 1, "{running}");
    assert_eq!(running[0]["target"], "d1", "{running}");
    let shown = e.ok(&[
        "--home",
        home,
        "job",
        "show",
        queued["id"].as_str().unwrap(),
    ]);
    assert!(shown.contains("Queued"), "{shown}");

    gate.release();
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let j2 = e.json(&[
        "--home",
        home,
        "job",
        "show",
        queued["id"].as_str().unwrap(),
    ]);
    assert_eq!(j2["status"], "Completed", "{j2}");
    let t = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    assert!(t(&j2["started"]) >= t(&j2["queued"]), "{j2}");
    let j1 = &e.json(&["--home", home, "job", "list", "--item", "d1"])[0];
    assert!(
        t(&j2["started"]) >= t(&j1["ended"]),
        "d2 started only once d1 ended: {j1} {j2}"
    );

    // One log line per job start and end, with the job's id, operation, target and outcome.
    let log = std::fs::read_to_string(&srv.log).unwrap();
    let events: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    for j in [j1, &j2] {
        let of = |msg: &str| {
            events
                .iter()
                .find(|v| v["message"] == msg && v["job"] == j["id"])
                .unwrap_or_else(|| panic!("no {msg:?} line for job {}: {log}", j["id"]))
                .clone()
        };
        let started = of("job started");
        assert_eq!(started["operation"], "Backup", "{started}");
        assert_eq!(started["target"], j["target"], "{started}");
        assert!(started["waited_ms"].is_u64(), "{started}");
        let ended = of("job ended");
        assert_eq!(ended["status"], "Completed", "{ended}");
        assert!(ended["duration_ms"].is_u64(), "{ended}");
    }
}
