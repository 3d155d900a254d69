//! `kura export`: a point's disk served read-only over NBD, read by clients kura did not
//! write (libnbd's nbdinfo and nbdcopy, qemu-img), listed, stopped.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use super::*;

/// Starts `kura export start ARGS` in the background; returns the process and the URI it
/// printed.
fn start(e: &Env, args: &[&str]) -> (std::process::Child, String, String) {
    let mut a = vec!["--output", "json", "export", "start"];
    a.extend_from_slice(args);
    let mut child = e
        .cmd(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut doc = String::new();
    // One JSON document, pretty-printed: read up to its closing brace.
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("export start ended early: {doc}{err}");
        }
        doc.push_str(&line);
        if line.starts_with('}') {
            break;
        }
    }
    let v: Value = serde_json::from_str(&doc).unwrap();
    (
        child,
        v["uri"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|err| panic!("{cmd:?}: {err}"));
    assert!(o.status.success(), "{cmd:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_point_is_served_over_nbd_to_real_clients_until_it_is_stopped() {
    let e = Env::new();
    e.geo_vault("v");
    // 32 MiB with data at 0-4 MiB and 20-24 MiB only: the rest is holes in the point.
    let img = e.path("d.raw");
    make_image(&img, 32 << 20, &[(0, 4 << 20, 5), (20 << 20, 4 << 20, 9)]);
    e.protect(&img, "v", &[]);
    e.backup("d");

    // Refused before anything listens: TLS on a Unix socket, an unknown point.
    let (_, err) = e.fails(&["export", "start", "d", "--tls"]);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("tls"),
        "{err}"
    );
    let (_, err) = e.fails(&["export", "start", "d", "--rp", "0123abcd"]);
    assert!(err.to_string().contains("0123abcd"), "{err}");

    let (mut child, uri, id) = start(&e, &["d", "--expires", "10m"]);
    let map = run_ok(Command::new("nbdinfo").args(["--map", &uri]));
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0][..3], ["0", &(4 << 20).to_string(), "0"], "{map}");
    assert_eq!(
        lines[1][..3],
        [&(4u64 << 20).to_string()[..], &(16 << 20).to_string(), "3"],
        "{map}"
    );
    assert_eq!(lines.len(), 4, "{map}");

    // Two clients at once, both bit-exact.
    let a = e.path("qemu.raw");
    let b = e.path("nbdcopy.raw");
    let mut q = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&a)
        .spawn()
        .unwrap();
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&b));
    assert!(q.wait().unwrap().success());
    let want = std::fs::read(&img).unwrap();
    assert!(
        std::fs::read(&a).unwrap() == want,
        "qemu-img's copy differs"
    );
    assert!(std::fs::read(&b).unwrap() == want, "nbdcopy's copy differs");

    let list = e.json(&["export", "list"]);
    assert_eq!(list[0]["id"], id.as_str(), "{list}");
    assert_eq!(list[0]["uri"], uri.as_str());
    e.json(&["export", "stop", &id[id.len() - 8..]]);
    assert!(child.wait().unwrap().success());
    let o = Command::new("nbdinfo").arg(&uri).output().unwrap();
    assert!(!o.status.success(), "a stopped export still answered");
    assert_eq!(e.json(&["export", "list"]), serde_json::json!([]));

    // With the vault's primary location gone, the point is served from its geo replica.
    let gone = e.primary_gone("v");
    e.fails(&["export", "start", "d"]);
    let (mut child, uri, id) = start(&e, &["d", "--from-replica"]);
    let c = e.path("replica.raw");
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&c));
    assert!(
        std::fs::read(&c).unwrap() == want,
        "the replica's copy differs"
    );
    e.json(&["export", "stop", &id]);
    assert!(child.wait().unwrap().success());
    drop(gone);
}

/// The beginning of live restore: the tiny guest boots with its data disk on a local qcow2
/// overlay whose backing file is the export, reads what the point holds while kura fetches
/// it on demand, and writes into the overlay (the export stays read-only).
#[test]
fn a_vm_runs_from_an_export_through_a_local_overlay() {
    let e = Env::new();
    e.vault("v", &[]);
    let data = super::guest::ext4_image(
        &e,
        "data.raw",
        "64M",
        &[("hello", "hello from the point\n", false)],
    );
    e.protect(&data, "v", &["--name", "data"]);
    e.backup("data");
    std::fs::remove_file(&data).unwrap();
    let (mut child, uri, id) = start(&e, &["data", "--expires", "30m"]);
    let overlay = e.path("overlay.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", &uri])
            .arg(&overlay),
    );
    let guest = super::guest::boot(&e, "live", &[("vda", &overlay, "qcow2")]);
    assert_eq!(guest.sh("cat /mnt/data/hello"), "hello from the point");
    guest.sh("echo written in the guest > /mnt/data/new && sync");
    assert_eq!(guest.sh("cat /mnt/data/new"), "written in the guest");
    drop(guest);
    // The point is untouched: a fresh read of the export has the file system as backed up.
    let copy = e.path("copy.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &uri])
            .arg(&copy),
    );
    assert_eq!(
        super::guest::ext4_cat(&copy, "/hello").as_deref(),
        Some("hello from the point\n")
    );
    assert_eq!(super::guest::ext4_cat(&copy, "/new"), None);
    e.json(&["export", "stop", &id]);
    assert!(child.wait().unwrap().success());
}

/// `curl` with the admin token against the server over the test's home: status and JSON.
fn api(e: &Env, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let server = e.server.get_or_init(|| remote::serve_home(e));
    let mut c = Command::new("curl");
    c.args(["-sS", "-w", "\n%{http_code}", "-X", method, "-H"])
        .arg(format!("Authorization: Bearer {}", remote::TOKEN));
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data", b]);
    }
    let o = c
        .arg(format!("{}/api/v1{path}", server.url))
        .output()
        .expect("curl (scripts/test installs it)");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (doc, code) = text.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(doc).unwrap_or(Value::Null),
    )
}

#[test]
fn the_server_runs_exports_for_its_clients() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 8 << 20, &[(0, 1 << 20, 5)]);
    e.protect(&img, "v", &[]);
    e.backup("d");

    let (code, v) = api(
        &e,
        "POST",
        "/items/d/exports",
        Some(r#"{"rp": "latest", "minutes": 5}"#),
    );
    assert_eq!(code, 201, "{v}");
    let uri = v["uri"].as_str().unwrap().to_string();
    let copy = e.path("copy.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &uri])
            .arg(&copy),
    );
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&img).unwrap());
    let (_, list) = api(&e, "GET", "/exports", None);
    assert_eq!(list[0]["id"], v["id"], "{list}");

    // Refused: a socket path of the client's choosing, a life out of range, TLS on the
    // server's own socket.
    for body in [
        r#"{"rp": "latest", "listen": "unix:/tmp/x.sock"}"#,
        r#"{"rp": "latest", "minutes": 0}"#,
        r#"{"rp": "latest", "tls": true}"#,
    ] {
        let (code, err) = api(&e, "POST", "/items/d/exports", Some(body));
        assert_eq!(code, 400, "{body}: {err}");
    }
    // An export another process runs is not the server's to stop.
    let (mut child, _, other) = start(&e, &["d", "--expires", "5m"]);
    let (code, err) = api(&e, "DELETE", &format!("/exports/{other}"), None);
    assert_eq!(code, 409, "{err}");
    e.json(&["export", "stop", &other]);
    assert!(child.wait().unwrap().success());

    let (code, _) = api(
        &e,
        "DELETE",
        &format!("/exports/{}", v["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(code, 200);
    let o = Command::new("nbdinfo").arg(&uri).output().unwrap();
    assert!(!o.status.success(), "a stopped export still answered");
    let (_, list) = api(&e, "GET", "/exports", None);
    assert_eq!(list, serde_json::json!([]));

    // A TLS export through the API: its answer holds the client's files, once.
    let (code, v) = api(
        &e,
        "POST",
        "/items/d/exports",
        Some(r#"{"rp": "latest", "minutes": 5, "listen": "tcp:127.0.0.1:0", "tls": true}"#),
    );
    assert_eq!(code, 201, "{v}");
    let uri = v["uri"].as_str().unwrap().to_string();
    assert!(uri.starts_with("nbds://127.0.0.1:"), "{v}");
    let certs = e.path("api-certs");
    std::fs::create_dir(&certs).unwrap();
    for (key, file) in [
        ("ca_cert", "ca-cert.pem"),
        ("client_cert", "client-cert.pem"),
        ("client_key", "client-key.pem"),
    ] {
        std::fs::write(certs.join(file), v["client_tls"][key].as_str().unwrap()).unwrap();
    }
    let copy = e.path("tls-copy.raw");
    run_ok(
        Command::new("nbdcopy")
            .arg(format!("{uri}?tls-certificates={}", certs.display()))
            .arg(&copy),
    );
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&img).unwrap());
    let (_, list) = api(&e, "GET", "/exports", None);
    assert!(
        list[0].get("client_tls").is_none(),
        "the key is shown once: {list}"
    );
    let (code, _) = api(
        &e,
        "DELETE",
        &format!("/exports/{}", v["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(code, 200);
}

/// Off loopback an export requires TLS and a client certificate of its own CA: a plain
/// client, and one with a certificate of another export, are refused; libnbd and qemu with
/// the export's files read it bit-exactly; its files go when it ends.
#[test]
fn an_export_off_loopback_serves_only_clients_with_its_certificate() {
    let e = Env::new();
    e.vault("v", &[]);
    let img = e.path("d.raw");
    make_image(&img, 16 << 20, &[(0, 2 << 20, 3), (12 << 20, 1 << 20, 4)]);
    e.protect(&img, "v", &[]);
    e.backup("d");

    // Every address: TLS without being asked. The URI names the host.
    let (mut child, uri, id) = start(&e, &["d", "--listen", "tcp:0.0.0.0:0"]);
    assert!(uri.starts_with("nbds://"), "{uri}");
    let list = e.json(&["export", "list"]);
    let dir = PathBuf::from(list[0]["tls_dir"].as_str().unwrap());
    let mode = std::fs::metadata(dir.join("client-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is its owner's only");
    // Connect by loopback, which its certificate names too.
    let port = uri.rsplit_once(':').unwrap().1.split('/').next().unwrap();
    let name = uri.rsplit('/').next().unwrap();
    let local = format!("nbds://127.0.0.1:{port}/{name}");
    let with = |d: &Path| format!("{local}?tls-certificates={}", d.display());

    let plain = format!("nbd://127.0.0.1:{port}/{name}");
    let o = Command::new("nbdinfo").arg(&plain).output().unwrap();
    assert!(
        !o.status.success(),
        "a client without TLS was served: {o:?}"
    );

    let map = run_ok(Command::new("nbdinfo").args(["--map", &with(&dir)]));
    let states: Vec<&str> = map
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(
        states,
        ["0", "3", "0", "3"],
        "data, hole, data, hole: {map}"
    );
    let copy = e.path("qemu.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw", "--object"])
            .arg(format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=client",
                dir.display()
            ))
            .args(["--image-opts"])
            .arg(format!(
                "driver=nbd,host=127.0.0.1,port={port},export={name},tls-creds=tls0"
            ))
            .arg(&copy),
    );
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&img).unwrap());

    // Another export's certificate (its CA is not this one's) gets nothing.
    let (mut other, _, other_id) = start(&e, &["d", "--listen", "tcp:127.0.0.1:0", "--tls"]);
    let list = e.json(&["export", "list"]);
    let other_dir = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == other_id.as_str())
        .map(|x| PathBuf::from(x["tls_dir"].as_str().unwrap()))
        .unwrap();
    let o = Command::new("nbdinfo")
        .arg(with(&other_dir))
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "another export's certificate was let in: {o:?}"
    );

    e.json(&["export", "stop", &id]);
    e.json(&["export", "stop", &other_id]);
    assert!(child.wait().unwrap().success());
    assert!(other.wait().unwrap().success());
    assert!(
        !dir.exists() && !other_dir.exists(),
        "the TLS files are deleted"
    );
}
