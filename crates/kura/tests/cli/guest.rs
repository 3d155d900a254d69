//! VM items with a real guest: the tiny Linux guest `scripts/build-guest` makes (Debian's
//! kernel, busybox and qemu-ga in an initramfs), booted by qemu-system-x86_64 under TCG, with
//! an ext4 data disk. The guest agent freezes it, runs its scripts, and the points are checked
//! with e2fsck and by what the scripts wrote.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use kura_source::qga::Qga;

use super::*;

pub(crate) struct Guest {
    child: Child,
    pub(crate) qmp: PathBuf,
    pub(crate) qga: PathBuf,
    console: PathBuf,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Guest {
    /// Runs `script` with /bin/sh in the guest; returns its output. Panics when it fails.
    pub(crate) fn sh(&self, script: &str) -> String {
        let mut q = Qga::connect(&self.qga, Duration::from_secs(30)).expect("the agent answers");
        let r = q
            .exec("/bin/sh", &["-c", script], Duration::from_secs(60))
            .unwrap();
        assert_eq!(r.exit_code, Some(0), "guest `{script}`: {}", r.output);
        r.output
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

/// The guest's kernel and initramfs (`KURA_GUEST_DIR`, built by scripts/test).
fn guest_files() -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(std::env::var("KURA_GUEST_DIR").expect(
        "KURA_GUEST_DIR names the tiny guest (vmlinuz, initrd.gz); scripts/test builds it and sets it",
    ));
    (dir.join("vmlinuz"), dir.join("initrd.gz"))
}

/// An ext4 image of `size` holding `files` (path, content, executable), made without mounting.
pub(crate) fn ext4_image(e: &Env, name: &str, size: &str, files: &[(&str, &str, bool)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let tree = e.path(&format!("{name}.tree"));
    for (path, content, exec) in files {
        let p = tree.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        let mode = if *exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::create_dir_all(&tree).unwrap();
    let img = e.path(name);
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg(size)
        .output()
        .expect("mkfs.ext4 (e2fsprogs) is installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    img
}

/// Boots the tiny guest with `disks` (id, file, format); the first is mounted on /mnt/data.
/// Waits until its agent answers.
pub(crate) fn boot(e: &Env, tag: &str, disks: &[(&str, &Path, &str)]) -> Guest {
    let (bin, data) = super::vm::qemu_system();
    let (kernel, initrd) = guest_files();
    let qmp = e.path(&format!("{tag}.qmp"));
    let qga = e.path(&format!("{tag}.qga"));
    let console = e.path(&format!("{tag}.console"));
    let mut cmd = Command::new(bin);
    cmd.args(["-L", "/usr/share/seabios", "-L", &data])
        .args(["-accel", "tcg", "-cpu", "max", "-M", "q35", "-m", "256"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-chardev")
        .arg(format!(
            "socket,id=qga0,path={},server=on,wait=off",
            qga.display()
        ))
        .args(["-device", "virtio-serial-pci"])
        .args([
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    super::vm::disk_args(&mut cmd, disks);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 starts");
    let guest = Guest {
        child,
        qmp,
        qga,
        console,
    };
    // TCG boots in about 8 s on an idle machine; much longer while tests compile and run.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if guest.console().contains("kura-guest: ready")
            && Qga::connect(&guest.qga, Duration::from_secs(5)).is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not boot; its console:\n{}",
            guest.console()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        guest.console().contains("/dev/vda mounted"),
        "{}",
        guest.console()
    );
    guest
}

/// A file of an ext4 image, read without mounting it.
pub(crate) fn ext4_cat(img: &Path, path: &str) -> Option<String> {
    let o = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("File not found") || !o.status.success() {
        None
    } else {
        Some(text)
    }
}

/// `e2fsck -fn`: the file system is clean.
pub(crate) fn e2fsck_clean(img: &Path) {
    let o = Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
    assert!(
        o.status.success(),
        "e2fsck -fn {}: {}{}",
        img.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn job_status(e: &Env, job: &str) -> Value {
    e.json(&["job", "show", job])
}

/// Restores the item's latest vda and returns its path.
fn restore_vda(e: &Env, item: &str, name: &str) -> PathBuf {
    let out = e.path(name);
    e.ok(&[
        "restore",
        "disk",
        item,
        "--rp",
        "latest",
        "--disk",
        "vda",
        "--to",
        out.to_str().unwrap(),
    ]);
    out
}

/// The consistency matrix on one booted guest: scripts succeed → application; no scripts →
/// file-system; a failing pre-script → file-system with a warning; agent stopped → crash
/// with a warning, or a failed backup with --require-agent.
#[test]
fn consistency_follows_the_agent_the_freeze_and_the_scripts() {
    let e = Env::new();
    e.vault("v", &[]);
    let pre = "#!/bin/sh\nn=$(cat /mnt/data/runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > /mnt/data/runs\necho \"pre $n\" > /mnt/data/pre-marker\nsync\necho prepared $n\n";
    let post =
        "#!/bin/sh\necho \"post $(cat /mnt/data/runs)\" > /mnt/data/post-marker\nsync\necho done\n";
    let data = ext4_image(
        &e,
        "data.raw",
        "32M",
        &[
            ("etc-kura/pre-backup", pre, true),
            ("etc-kura/post-backup", post, true),
            ("hello", "hello from the guest\n", false),
        ],
    );
    let guest = boot(&e, "g", &[("vda", &data, "raw")]);
    // The guest writes all the time, to its own file system.
    guest.sh("(while true; do date >> /mnt/data/log; sleep 0.05; done) >/dev/null 2>&1 &");

    let item = e.json(&[
        "item",
        "protect",
        "vm",
        "--qmp",
        guest.qmp.to_str().unwrap(),
        "--qga",
        guest.qga.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "web",
    ]);
    assert_eq!(item["spec"]["agent"]["qga"], guest.qga.to_str().unwrap());
    let show = e.json(&["item", "show", "web"]);
    assert!(
        show["agent_status"]
            .as_str()
            .unwrap()
            .starts_with("Ready: qemu-ga 7."),
        "{show}"
    );
    let pc = e.json(&["item", "precheck", "web"]);
    assert_eq!(pc["ready"], true, "{pc}");

    // 1. Scripts present and succeeding: application-consistent.
    let r = e.json(&["backup", "now", "web"]);
    let job = job_status(&e, r["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job}");
    let log = job["log"].to_string();
    assert!(
        log.contains("pre-script /etc/kura/pre-backup succeeded"),
        "{log}"
    );
    assert!(log.contains("the guest was frozen"), "{log}");
    let m = e.json(&["rp", "show", "web"]);
    assert_eq!(m["consistency"], "application", "{m}");
    assert!(m["capture"]["freeze_ms"].as_u64().is_some(), "{m}");
    let vda = restore_vda(&e, "web", "app.raw");
    e2fsck_clean(&vda);
    assert_eq!(ext4_cat(&vda, "/pre-marker").as_deref(), Some("pre 1\n"));
    assert_eq!(
        ext4_cat(&vda, "/post-marker"),
        None,
        "the post-script ran after the point"
    );
    assert_eq!(
        guest.sh("cat /mnt/data/post-marker"),
        "post 1",
        "the post-script ran"
    );
    assert_eq!(
        ext4_cat(&vda, "/hello").as_deref(),
        Some("hello from the guest\n")
    );
    assert_eq!(guest.sh("cat /proc/mounts | grep -c /mnt/data"), "1");
    // The same file straight from the VM point's disk in the vault, without a disk restore.
    let out = e.path("marker-out");
    std::fs::create_dir(&out).unwrap();
    let ls = e.json(&["files", "ls", "web", "/"]);
    assert!(ls["entries"].to_string().contains("\"pre-marker\""), "{ls}");
    let r = e.json(&[
        "files",
        "get",
        "web",
        "/pre-marker",
        "--disk",
        "vda",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r["disk"], "vda", "{r}");
    assert_eq!(
        std::fs::read_to_string(out.join("pre-marker")).unwrap(),
        "pre 1\n"
    );

    // 2. No scripts: file-system-consistent, and no warning.
    guest.sh("rm -f /etc/kura/pre-backup /etc/kura/post-backup");
    let r = e.json(&["backup", "now", "web"]);
    let job = job_status(&e, r["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job}");
    assert_eq!(e.json(&["rp", "show", "web"])["consistency"], "file-system");
    let vda = restore_vda(&e, "web", "fs.raw");
    e2fsck_clean(&vda);

    // 3. A failing pre-script: file-system-consistent, with a warning naming it.
    guest.sh(
        "printf '#!/bin/sh\\necho cannot quiesce the database\\nexit 3\\n' > /etc/kura/pre-backup && chmod +x /etc/kura/pre-backup",
    );
    let r = e.json(&["backup", "now", "web"]);
    let job = job_status(&e, r["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "CompletedWithWarnings", "{job}");
    let log = job["log"].to_string();
    assert!(
        log.contains("exit code 3") && log.contains("cannot quiesce the database"),
        "{log}"
    );
    assert_eq!(e.json(&["rp", "show", "web"])["consistency"], "file-system");
    assert_eq!(
        guest.sh("cat /proc/mounts | grep -c /mnt/data"),
        "1",
        "still mounted"
    );
    assert!(
        guest
            .sh("touch /mnt/data/writable && echo ok")
            .contains("ok")
    );

    // 3b. A Windows guest, whose agent freezes through VSS: application-consistent without
    // scripts, but at most file-system consistent when `vssadmin list writers` lists the
    // Cluster Shared Volume VSS Writer. No Windows guest can run here: this Linux guest
    // poses as one (its os-release says `mswindows`, and `vssadmin.exe` is a script), so
    // what is tested is kura's side through the real agent, not VSS itself.
    guest.sh(
        r#"rm -f /etc/kura/pre-backup; cp /etc/os-release /tmp/os-release
cat > /etc/os-release <<'END'
ID=mswindows
NAME="Microsoft Windows"
PRETTY_NAME="Windows Server 2022 (posing)"
END"#,
    );
    let writers = |csv: bool| {
        let extra = if csv {
            "echo \"Writer name: 'Cluster Shared Volume VSS Writer'\"\necho '   State: [1] Stable'"
        } else {
            ""
        };
        guest.sh(&format!(
            r#"cat > /bin/vssadmin.exe <<'END'
#!/bin/sh
[ "$*" = "list writers" ] || exit 2
echo "Writer name: 'System Writer'"
echo '   State: [1] Stable'
{extra}
END
chmod +x /bin/vssadmin.exe"#
        ));
    };
    writers(true);
    assert!(
        guest
            .sh("vssadmin.exe list writers")
            .contains("Cluster Shared Volume")
    );
    let pc = e.json(&["item", "precheck", "web"]);
    assert!(pc.to_string().contains("Windows Server 2022"), "{pc}");
    assert!(
        pc.to_string().contains("csv-writer") && pc.to_string().contains("disable that writer"),
        "{pc}"
    );
    let r = e.json(&["backup", "now", "web"]);
    let job = job_status(&e, r["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "CompletedWithWarnings", "{job}");
    assert!(
        job["log"]
            .to_string()
            .contains("Cluster Shared Volume VSS Writer"),
        "{job}"
    );
    let m = e.json(&["rp", "show", "web"]);
    assert_eq!(m["consistency"], "file-system", "{m}");
    assert_eq!(m["capture"]["vss"], true, "{m}");
    writers(false);
    let r = e.json(&["backup", "now", "web"]);
    let job = job_status(&e, r["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job}");
    assert_eq!(e.json(&["rp", "show", "web"])["consistency"], "application");
    guest.sh("rm -f /bin/vssadmin.exe && cp /tmp/os-release /etc/os-release");

    // 4. The agent stops: crash-consistent with a warning, or refused with --require-agent.
    {
        let mut q = Qga::connect(&guest.qga, Duration::from_secs(30)).unwrap();
        // The agent kills itself a moment after it answered.
        q.exec(
            "/bin/sh",
            &[
                "-c",
                "(sleep 0.5; kill $(cat /run/qga.pid)) >/dev/null 2>&1 &",
            ],
            Duration::from_secs(30),
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let r = e.json(&["backup", "now", "web"]);
    let job = job_status(&e, r["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "CompletedWithWarnings", "{job}");
    assert!(job["log"].to_string().contains("Not Ready"), "{job}");
    assert_eq!(e.json(&["rp", "show", "web"])["consistency"], "crash");
    let show = e.json(&["item", "show", "web"]);
    assert!(
        show["agent_status"]
            .as_str()
            .unwrap()
            .starts_with("Not Ready"),
        "{show}"
    );
    let points = e.json(&["rp", "list", "web"]).as_array().unwrap().len();
    let item = e.json(&[
        "item",
        "set-agent",
        "web",
        "--qga",
        guest.qga.to_str().unwrap(),
        "--require-agent",
    ]);
    assert_eq!(item["spec"]["agent"]["require"], true, "{item}");
    let o = e.run(&["--output", "json", "item", "precheck", "web"]);
    assert!(
        !o.status.success(),
        "a precheck that is not ready exits non-zero"
    );
    let pc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pc["ready"], false, "{pc}");
    assert!(
        pc.to_string().contains("kura item protect disk"),
        "the precheck tells how to protect the disks without an agent: {pc}"
    );
    let (_, err) = e.fails(&["backup", "now", "web"]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--require-agent"),
        "{err}"
    );
    assert_eq!(
        e.json(&["rp", "list", "web"]).as_array().unwrap().len(),
        points,
        "no point was made"
    );
}

/// Kills a process (a VM kura started) when dropped.
pub(crate) struct KillOnDrop(pub(crate) i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.0.to_string())
            .status();
    }
}

/// Azure's restore modes for a VM: a new VM that boots with a new identity and its agent
/// answering, and the existing VM's disks replaced (after it is stopped through its agent)
/// with a safety copy kept.
#[test]
fn a_vm_point_restores_as_a_new_vm_that_boots_and_over_the_existing_vm() {
    let e = Env::new();
    e.vault("v", &[]);
    let data = ext4_image(
        &e,
        "data.raw",
        "32M",
        &[("hello", "hello from the guest\n", false)],
    );
    let scratch = e.path("scratch.raw");
    make_image(&scratch, 4 << 20, &[(0, 4096, 3)]);
    let scratch_before = e.path("scratch.before");
    std::fs::copy(&scratch, &scratch_before).unwrap();
    let guest = boot(&e, "g", &[("vda", &data, "raw"), ("vdb", &scratch, "raw")]);
    e.ok(&[
        "item",
        "protect",
        "vm",
        "--qmp",
        guest.qmp.to_str().unwrap(),
        "--qga",
        guest.qga.to_str().unwrap(),
        "--exclude-disk",
        "vdb",
        "--vault",
        "v",
        "--name",
        "web",
    ]);
    e.ok(&["backup", "now", "web"]);
    let m = e.json(&["rp", "show", "web"]);
    assert!(
        m["definition"]["cmdline"][0]
            .as_str()
            .unwrap()
            .ends_with("qemu-system-x86_64"),
        "{m}"
    );
    guest.sh("echo later > /mnt/data/later && sync");

    // A new VM from the point: its own disks, sockets, name, UUID and MACs; it boots.
    let dir = e.path("web2");
    let r = e.json(&[
        "restore",
        "vm",
        "web",
        "--rp",
        "latest",
        "--as-new",
        "web2",
        "--to",
        dir.to_str().unwrap(),
        "--start",
    ]);
    let _new_vm = KillOnDrop(r["pid"].as_i64().unwrap() as i32);
    assert_eq!(r["blank_disks"].as_array().unwrap().len(), 1, "{r}");
    let script = std::fs::read_to_string(r["script"].as_str().unwrap()).unwrap();
    assert!(!script.contains(guest.qmp.to_str().unwrap()), "{script}");
    assert!(!script.contains(data.to_str().unwrap()), "{script}");
    assert!(
        script.contains(&format!("{}/vda.raw", dir.display())),
        "{script}"
    );
    let qga = PathBuf::from(r["qga"].as_str().unwrap());
    assert!(qga.starts_with(&dir));
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut agent = loop {
        if let Ok(q) = Qga::connect(&qga, Duration::from_secs(5)) {
            break q;
        }
        assert!(
            Instant::now() < deadline,
            "the restored VM's agent never answered"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let out = agent
        .exec(
            "/bin/sh",
            &["-c", "cat /mnt/data/hello; ls /mnt/data"],
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(
        out.output.contains("hello from the guest"),
        "{}",
        out.output
    );
    assert!(
        !out.output.contains("later"),
        "written after the point: {}",
        out.output
    );

    // Over the existing VM: refused while it runs, unless told to stop it.
    let (_, err) = e.fails(&["restore", "vm", "web", "--rp", "latest", "--replace"]);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("--stop"),
        "{err}"
    );
    assert_eq!(
        guest.sh("cat /mnt/data/later"),
        "later",
        "the VM still runs"
    );
    let r = e.json(&[
        "restore",
        "vm",
        "web",
        "--rp",
        "latest",
        "--replace",
        "--stop",
    ]);
    let safety = PathBuf::from(r["safety_copies"][0].as_str().unwrap());
    assert_eq!(
        ext4_cat(&safety, "/later").as_deref(),
        Some("later\n"),
        "the safety copy is the old disk"
    );
    assert_eq!(
        ext4_cat(&data, "/later"),
        None,
        "the disk is the point again"
    );
    assert_eq!(
        ext4_cat(&data, "/hello").as_deref(),
        Some("hello from the guest\n")
    );
    e2fsck_clean(&data);
    assert!(
        same_file(&scratch, &scratch),
        "the excluded disk is not touched"
    );
}
