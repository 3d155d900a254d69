//! libvirt domains (TCG, `type='qemu'`) run by the libvirtd that scripts/test installs and
//! starts: the tiny guest defined as a domain, protected with `--libvirt`, frozen through
//! libvirt's agent channel, backed up with changed-block incrementals through libvirt's
//! monitor, and restored as a new domain that boots.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::guest::{e2fsck_clean, ext4_cat, ext4_image};
use super::*;

fn virsh(args: &[&str]) -> (bool, String) {
    let o = Command::new("virsh")
        .arg("-q")
        .args(args)
        .output()
        .expect("virsh is installed by scripts/test (libvirt-clients)");
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), text)
}

/// Destroys and undefines domains when dropped.
struct Domains(Vec<String>);

impl Drop for Domains {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = virsh(&["destroy", d]);
            let _ = virsh(&["undefine", d]);
        }
    }
}

fn domain_xml(name: &str, disk: &Path, format: &str, console: &Path, enc: (&Path, &str)) -> String {
    let (bin, data) = super::vm::qemu_system();
    let dir =
        PathBuf::from(std::env::var("KURA_GUEST_DIR").expect("KURA_GUEST_DIR (scripts/test)"));
    format!(
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{k}</kernel><initrd>{i}</initrd><cmdline>console=ttyS0 quiet panic=-1</cmdline></os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>{bin}</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='{format}'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{enc_disk}'><encryption format='luks'><secret type='passphrase' uuid='{enc_uuid}'/></encryption></source><target dev='vdb' bus='virtio'/></disk>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline><qemu:arg value='-L'/><qemu:arg value='/usr/share/seabios'/><qemu:arg value='-L'/><qemu:arg value='{data}'/></qemu:commandline>
</domain>",
        k = dir.join("vmlinuz").display(),
        i = dir.join("initrd.gz").display(),
        disk = disk.display(),
        console = console.display(),
        enc_disk = enc.0.display(),
        enc_uuid = enc.1,
    )
}

/// Runs a shell command in a domain's guest through libvirt's agent channel, waiting for
/// the agent first.
fn guest_sh(domain: &str, script: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (ok, _) = virsh(&["qemu-agent-command", domain, r#"{"execute":"guest-ping"}"#]);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent of {domain} never answered"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let cmd = serde_json::json!({"execute": "guest-exec", "arguments": {
        "path": "/bin/sh", "arg": ["-c", script], "capture-output": true}});
    let (ok, out) = virsh(&["qemu-agent-command", domain, &cmd.to_string()]);
    assert!(ok, "{out}");
    let pid = serde_json::from_str::<Value>(&out).unwrap()["return"]["pid"]
        .as_i64()
        .unwrap();
    loop {
        let st = serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}});
        let (ok, out) = virsh(&["qemu-agent-command", domain, &st.to_string()]);
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        if v["return"]["exited"] == true {
            assert_eq!(v["return"]["exitcode"], 0, "guest `{script}`: {v}");
            let b64 = v["return"]["out-data"].as_str().unwrap_or_default();
            let o = Command::new("base64")
                .arg("-d")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            o.stdin.as_ref().unwrap().write_all(b64.as_bytes()).unwrap();
            let o = o.wait_with_output().unwrap();
            return String::from_utf8_lossy(&o.stdout).trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kura_bitmaps(domain: &str) -> Vec<String> {
    let (ok, out) = virsh(&[
        "qemu-monitor-command",
        domain,
        r#"{"execute":"query-named-block-nodes","arguments":{"flat":true}}"#,
    ]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["return"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["dirty-bitmaps"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["name"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("kura."))
        .collect()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Undefines a libvirt secret when dropped.
struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = virsh(&["secret-undefine", &self.0]);
    }
}

#[test]
fn a_libvirt_domain_is_backed_up_through_libvirt_and_restored_as_a_new_domain() {
    let (ok, out) = virsh(&["list", "--all"]);
    assert!(ok, "libvirtd must run (scripts/test starts it): {out}");
    let e = Env::new();
    e.vault("v", &[]);
    let tag = format!(
        "kura-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let copy = format!("{tag}-copy");
    let _cleanup = Domains(vec![tag.clone(), copy.clone()]);
    let raw = ext4_image(
        &e,
        "data.raw",
        "32M",
        &[("hello", "hello from libvirt\n", false)],
    );
    let disk = e.path("data.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        disk.to_str().unwrap(),
    ]);
    // A second disk, encrypted (qcow2 with LUKS), whose passphrase libvirt keeps as a secret.
    let enc = e.path("enc.qcow2");
    let o = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=s0,data=libvirt pass",
        ])
        .args(["-o", "encrypt.format=luks,encrypt.key-secret=s0"])
        .arg(&enc)
        .arg("4M")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let uuid = format!(
        "6b1f0c5e-0000-4000-8000-{:012x}",
        u64::from(std::process::id()) * 1000 + u64::from(NEXT.load(Ordering::Relaxed))
    );
    let secret_xml = e.path("secret.xml");
    std::fs::write(
        &secret_xml,
        format!("<secret ephemeral='no' private='no'><uuid>{uuid}</uuid><usage type='volume'><volume>{}</volume></usage></secret>", enc.display()),
    )
    .unwrap();
    let (ok, out) = virsh(&["secret-define", secret_xml.to_str().unwrap()]);
    assert!(ok, "{out}");
    let _secret = Secret(uuid.clone());
    let (ok, out) = virsh(&["secret-set-value", &uuid, "--base64", "bGlidmlydCBwYXNz"]);
    assert!(ok, "{out}");
    let xml = e.path("dom.xml");
    std::fs::write(
        &xml,
        domain_xml(&tag, &disk, "qcow2", &e.path("console.log"), (&enc, &uuid)),
    )
    .unwrap();
    let (ok, out) = virsh(&["define", xml.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = virsh(&["start", &tag]);
    assert!(ok, "{out}");
    assert_eq!(guest_sh(&tag, "cat /mnt/data/hello"), "hello from libvirt");

    let item = e.json(&[
        "item",
        "protect",
        "vm",
        "--libvirt",
        &tag,
        "--vault",
        "v",
        "--name",
        "lv",
    ]);
    assert_eq!(item["spec"]["libvirt"]["name"], tag.as_str(), "{item}");
    assert_eq!(
        item["spec"]["disks"][0]["name"], "vda",
        "named after the XML target: {item}"
    );
    assert_eq!(item["spec"]["disks"][1]["encrypted"], true, "{item}");
    let show = e.json(&["item", "show", "lv"]);
    assert!(
        show["agent_status"].as_str().unwrap().starts_with("Ready"),
        "{show}"
    );

    let r = e.json(&["backup", "now", "lv"]);
    let m = e.json(&["rp", "show", "lv"]);
    assert_eq!(
        m["consistency"], "file-system",
        "frozen through libvirt's agent: {m}"
    );
    assert!(
        m["definition"]["domain_xml"]
            .as_str()
            .unwrap()
            .contains(&tag),
        "{m}"
    );
    assert!(r["read_bytes"].as_u64().unwrap() > 0);

    // An incremental reads what the guest changed, through libvirt's monitor.
    guest_sh(&tag, "seq 1 50000 > /mnt/data/new; sync");
    let r = e.json(&["backup", "now", "lv"]);
    let log = e.json(&["job", "show", r["job_id"].as_str().unwrap()])["log"].to_string();
    assert!(
        log.contains("vda: ") && log.contains("bytes changed since recovery point"),
        "{log}"
    );
    assert!(r["read_bytes"].as_u64().unwrap() < 4 << 20, "{r}");
    assert_eq!(
        kura_bitmaps(&tag).len(),
        2,
        "only the latest point's bitmap of each disk is left"
    );
    let out = e.path("vda.raw");
    e.ok(&[
        "restore",
        "disk",
        "lv",
        "--rp",
        "latest",
        "--disk",
        "vda",
        "--to",
        out.to_str().unwrap(),
    ]);
    e2fsck_clean(&out);
    let expected: String = (1..=50000).map(|i| format!("{i}\n")).collect();
    let got = ext4_cat(&out, "/new").unwrap_or_default();
    assert!(
        got == expected,
        "the guest's new file is in the point: {} bytes, expected {}",
        got.len(),
        expected.len(),
    );

    // The encrypted disk comes back encrypted with libvirt's passphrase.
    let m = e.json(&["rp", "show", "lv"]);
    assert_eq!(m["encrypted_disks"], serde_json::json!(["vdb"]), "{m}");
    let vdb = e.path("vdb.img");
    let r = e.json(&[
        "restore",
        "disk",
        "lv",
        "--rp",
        "latest",
        "--disk",
        "vdb",
        "--to",
        vdb.to_str().unwrap(),
    ]);
    assert_eq!(r["encrypted"], true, "{r}");
    let o = Command::new("qemu-img")
        .args([
            "compare",
            "-U",
            "--object",
            "secret,id=s0,data=libvirt pass",
            "--image-opts",
        ])
        .arg(format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=s0",
            vdb.display()
        ))
        .arg(format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=s0",
            enc.display()
        ))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // A new domain from the point boots, with its own name, UUID and MAC addresses.
    let dir = e.path("copy");
    let r = e.json(&[
        "restore",
        "vm",
        "lv",
        "--rp",
        "latest",
        "--as-new",
        &copy,
        "--to",
        dir.to_str().unwrap(),
        "--start",
    ]);
    assert_eq!(r["libvirt_domain"], copy.as_str(), "{r}");
    assert_eq!(guest_sh(&copy, "cat /mnt/data/hello"), "hello from libvirt");
    let (_, a) = virsh(&["domuuid", &tag]);
    let (_, b) = virsh(&["domuuid", &copy]);
    assert_ne!(a.trim(), b.trim());
    let (_, copy_xml) = virsh(&["dumpxml", &copy]);
    assert!(!copy_xml.contains(disk.to_str().unwrap()), "{copy_xml}");
}
