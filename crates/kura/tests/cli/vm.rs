//! VM items against a real QEMU (qemu-system-x86_64 under TCG, installed by scripts/test):
//! the VM runs while kura backs it up through QMP. There is no guest OS yet: the guest's
//! writes are made through QEMU's own `qemu-io` monitor command on the guest's devices.

use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};

use super::*;

struct Vm {
    child: Child,
    qmp: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn qemu_system() -> (String, String) {
    let bin = std::env::var("KURA_QEMU_SYSTEM")
        .expect("KURA_QEMU_SYSTEM names qemu-system-x86_64; scripts/test installs it and sets it");
    let data = std::env::var("KURA_QEMU_DATA").expect("KURA_QEMU_DATA is set by scripts/test");
    (bin, data)
}

/// QEMU arguments attaching `disks` (id, file, format) as virtio-blk devices, nodes `n0`...
pub(crate) fn disk_args(cmd: &mut Command, disks: &[(&str, &Path, &str)]) {
    for (i, (id, file, format)) in disks.iter().enumerate() {
        cmd.arg("-blockdev")
            .arg(format!(
                "driver=file,node-name=f{i},filename={}",
                file.display()
            ))
            .arg("-blockdev")
            .arg(format!("driver={format},node-name=n{i},file=f{i}"))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=n{i},id={id}"));
    }
}

/// Starts a VM (no OS: the firmware idles) whose disks are `disks` (id, file, format).
fn start_vm(e: &Env, disks: &[(&str, &Path, &str)]) -> Vm {
    let (bin, data) = qemu_system();
    let qmp = e.path("vm.qmp");
    let mut cmd = Command::new(bin);
    cmd.args(["-L", "/usr/share/seabios", "-L", &data])
        .args([
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-machine",
            "q35",
        ])
        .args(["-m", "64", "-serial", "none"])
        // A PCIe root port a disk can be hot-plugged into.
        .args(["-device", "pcie-root-port,id=hp0,bus=pcie.0,chassis=1"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    disk_args(&mut cmd, disks);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while UnixStream::connect(&qmp).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU did not open its QMP socket"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Vm { child, qmp }
}

/// Runs QMP commands; returns their answers (`{"return": ...}` or `{"error": ...}`).
fn qmp(vm: &Vm, commands: &[Value]) -> Vec<Value> {
    // kura's own client: it waits out a socket that another client (kura) just used.
    let mut q = kura_source::qmp::Qmp::connect(&vm.qmp, std::time::Duration::from_secs(10))
        .expect("QEMU answers on its QMP socket");
    commands
        .iter()
        .map(|c| {
            let cmd = c["execute"].as_str().unwrap();
            match q.execute(cmd, c.get("arguments").cloned()) {
                Ok(v) => serde_json::json!({ "return": v }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            }
        })
        .collect()
}

/// A write by the guest to its device `dev`, through QEMU's monitor.
fn guest_write(vm: &Vm, dev: &str, pattern: u8, offset: &str, len: &str) {
    let cmd = format!("qemu-io -d {dev}/virtio-backend \"write -P {pattern} {offset} {len}\"");
    let a = qmp(
        vm,
        &[
            serde_json::json!({"execute": "human-monitor-command", "arguments": {"command-line": cmd}}),
        ],
    );
    assert_eq!(a[0]["return"], "", "{a:?}");
}

/// What a raw disk holds now, read beside the running VM.
fn image_now(e: &Env, file: &Path, format: &str, name: &str) -> PathBuf {
    let out = e.path(name);
    qemu_img(&[
        "convert",
        "-U",
        "-f",
        format,
        "-O",
        "raw",
        file.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    out
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_running_vm_is_backed_up_at_one_instant_for_every_disk() {
    let e = Env::new();
    e.vault("v", &[]);
    let a = e.path("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "8M"]);
    let io = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x11 0 2M"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(io.status.success());
    let b = e.path("b.raw");
    make_image(&b, 4 << 20, &[(0, 1 << 20, 7)]);
    let scratch = e.path("scratch.raw");
    make_image(&scratch, 1 << 20, &[(0, 4096, 9)]);
    let vm = start_vm(
        &e,
        &[
            ("vda", &a, "qcow2"),
            ("vdb", &b, "raw"),
            ("vdc", &scratch, "raw"),
        ],
    );
    let item = e.json(&[
        "item",
        "protect",
        "vm",
        "--qmp",
        vm.qmp.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "web",
        "--exclude-disk",
        "vdc",
    ]);
    assert_eq!(item["kind"], "vm", "{item}");
    assert_eq!(item["spec"]["disks"].as_array().unwrap().len(), 3, "{item}");
    assert_eq!(e.json(&["item", "precheck", "web"])["ready"], true);
    guest_write(&vm, "vda", 0x22, "3M", "64k");
    // What the guest's disks hold at the point: a qcow2 under a running QEMU cannot be read
    // reliably from its file (QEMU may still cache its metadata), so vda is built from the
    // writes; the raw vdb can be read.
    let a_at_point = e.path("a-point.raw");
    let mut expected = vec![0x11u8; 2 << 20];
    expected.resize(8 << 20, 0);
    expected[3 << 20..(3 << 20) + (64 << 10)].fill(0x22);
    std::fs::write(&a_at_point, &expected).unwrap();
    let b_at_point = image_now(&e, &b, "raw", "b-point.raw");

    // The guest keeps writing to both disks while the backup reads them.
    let gate = Gate::new(&e, "read");
    let (var, val) = gate.env();
    let backup = e
        .cmd(&["--output", "json", "backup", "now", "web"])
        .env(var, val)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    gate.wait_reached();
    guest_write(&vm, "vda", 0x77, "0", "1M");
    guest_write(&vm, "vdb", 0x78, "0", "64k");
    gate.release();
    let o = backup.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["incremental"], false, "{r}");

    // A point of several disks needs --disk for a one-disk restore: said before any job.
    let jobs = e.json(&["job", "list"]).as_array().unwrap().len();
    let x = e.path("x.raw");
    let (_, err) = e.fails(&[
        "restore",
        "disk",
        "web",
        "--rp",
        "latest",
        "--to",
        x.to_str().unwrap(),
    ]);
    assert!(err.to_string().contains("name one with --disk"), "{err}");
    assert_eq!(
        e.json(&["job", "list"]).as_array().unwrap().len(),
        jobs,
        "no job was started"
    );
    let dir = e.path("restored");
    std::fs::create_dir(&dir).unwrap();
    e.ok(&[
        "restore",
        "disks",
        "web",
        "--rp",
        "latest",
        "--to",
        dir.to_str().unwrap(),
    ]);
    assert!(
        same_file(&dir.join("vda.raw"), &a_at_point),
        "vda at the instant of the point"
    );
    assert!(
        same_file(&dir.join("vdb.raw"), &b_at_point),
        "vdb at the same instant"
    );
    assert!(
        !dir.join("vdc.raw").exists(),
        "the excluded disk is not backed up"
    );
    let rp = &e.json(&["rp", "list", "web"])[0];
    assert_eq!(rp["consistency"], "crash", "no guest agent: {rp}");
    // The point keeps the VM's definition at that instant, and lists the disks it holds.
    let m = e.json(&["rp", "show", "web"]);
    let names: Vec<&str> = m["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vda", "vdb"], "{m}");
    assert_eq!(m["definition"]["disks"].as_array().unwrap().len(), 3, "{m}");
    assert_eq!(m["definition"]["exclude"][0], "vdc", "{m}");
    assert!(e.ok(&["rp", "show", "web"]).contains("vda"));

    // Nothing is left behind in the VM, which runs on.
    let a2 = qmp(
        &vm,
        &[
            serde_json::json!({"execute": "query-named-block-nodes"}),
            serde_json::json!({"execute": "query-block-jobs"}),
            serde_json::json!({"execute": "query-status"}),
        ],
    );
    let nodes = a2[0]["return"].to_string();
    assert!(!nodes.contains("kura-"), "{nodes}");
    assert_eq!(a2[1]["return"], serde_json::json!([]));
    assert_eq!(a2[2]["return"]["status"], "running");

    // The next backup matches each disk by name: incremental.
    let again = e.json(&["backup", "now", "web"]);
    assert_eq!(again["incremental"], true, "{again}");
    let now_a = e.path("a-now.raw");
    expected[..1 << 20].fill(0x77);
    std::fs::write(&now_a, &expected).unwrap();
    let out = e.path("vda-latest.raw");
    e.ok(&[
        "restore",
        "disk",
        "web",
        "--rp",
        "latest",
        "--disk",
        "vda",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(
        same_file(&out, &now_a),
        "the guest's later writes are in the next point"
    );
}

/// A VM item through `kura server`: protected, backed up and restored over the API; the QMP
/// socket must lie under the server's source roots like any other source.
#[test]
fn a_vm_through_the_server() {
    let e = Env::new();
    let d = e.path("d.raw");
    make_image(&d, 2 << 20, &[(0, 1 << 20, 3)]);
    let mut vm = start_vm(&e, &[("vda", &d, "raw")]);
    let srv = super::remote::serve(&e);
    let json = |args: &[&str]| -> Value { e.json(&srv.args(args)) };
    let item = json(&[
        "item",
        "protect",
        "vm",
        "--qmp",
        vm.qmp.to_str().unwrap(),
        "--vault",
        "default",
    ]);
    assert_eq!(item["kind"], "vm", "{item}");
    let name = item["name"].as_str().unwrap().to_string();
    let r = json(&["backup", "now", &name]);
    assert!(r["rp_id"].is_string(), "{r}");
    let m = json(&["rp", "show", &name, "--rp", "latest"]);
    assert_eq!(m["disks"][0]["name"], "vda", "{m}");
    assert_eq!(m["definition"]["disks"][0]["name"], "vda", "{m}");
    let out = e.path("out.raw");
    json(&[
        "restore",
        "disk",
        &name,
        "--rp",
        "latest",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(same_file(&out, &d));
    // Every disk into a directory, as one job.
    let disks_dir = e.path("disks");
    std::fs::create_dir(&disks_dir).unwrap();
    let r = json(&[
        "restore",
        "disks",
        &name,
        "--rp",
        "latest",
        "--to",
        disks_dir.to_str().unwrap(),
    ]);
    assert!(same_file(&disks_dir.join("vda.raw"), &d), "{r}");
    // A new VM from the point, and the VM's own disk replaced once it is off.
    let dir = e.path("copy");
    let r = json(&[
        "restore",
        "vm",
        &name,
        "--rp",
        "latest",
        "--as-new",
        "copy",
        "--to",
        dir.to_str().unwrap(),
    ]);
    assert!(same_file(&dir.join("vda.raw"), &d), "{r}");
    let script = std::fs::read_to_string(dir.join("copy.sh")).unwrap();
    assert!(!script.contains(d.to_str().unwrap()), "{script}");
    let (_, err) = e.fails(&srv.args(&["restore", "vm", &name, "--rp", "latest", "--replace"]));
    assert!(err.to_string().contains("is running"), "{err}");
    qmp(&vm, &[serde_json::json!({"execute": "quit"})]);
    let _ = vm.child.wait();
    make_image(&d, 2 << 20, &[(0, 1 << 20, 4)]);
    let r = json(&["restore", "vm", &name, "--rp", "latest", "--replace"]);
    assert!(same_file(&d, &dir.join("vda.raw")), "{r}");
    assert_eq!(r["safety_copies"].as_array().unwrap().len(), 1, "{r}");
    // Agent settings through the API: --require-agent needs an agent socket.
    let (_, err) = e.fails(&srv.args(&["item", "set-agent", &name, "--require-agent"]));
    assert!(err.to_string().contains("--qga"), "{err}");
    let st = json(&["item", "set-agent", &name]);
    assert_eq!(st["spec"]["disks"][0]["name"], "vda", "{st}");
    assert!(
        st["spec"]["agent"].is_null(),
        "the settings were cleared: {st}"
    );
    // A VM has no pinned image format to change.
    let (_, err) = e.fails(&srv.args(&["item", "set-format", &name]));
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only disk items"),
        "{err}"
    );
}

/// kura's dirty bitmaps on the VM's block nodes, as `node/name`.
fn kura_bitmaps(vm: &Vm) -> Vec<String> {
    let a = qmp(
        vm,
        &[serde_json::json!({"execute": "query-named-block-nodes", "arguments": {"flat": true}})],
    );
    let mut out: Vec<String> = a[0]["return"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| {
            let node = n["node-name"].as_str().unwrap_or_default().to_string();
            n["dirty-bitmaps"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |b| Some(format!("{node}/{}", b["name"].as_str()?)))
        })
        .filter(|n| n.contains("/kura."))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Changed-block incrementals: a backup reads only what the guest wrote since the previous
/// point; a qcow2 disk's bitmap survives a clean restart of the VM; after QEMU is killed the
/// bitmap is inconsistent and the backup reads everything; every point restores bit-exactly.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (its fixed clock); scripts/test turns it on"
)]
fn incrementals_read_only_changed_blocks_even_after_a_restart() {
    let e = Env::at("2026-03-10T09:00:00Z");
    e.vault("v", &[]);
    let a = e.path("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "16M"]);
    let b = e.path("b.raw");
    make_image(&b, 4 << 20, &[(0, 1 << 20, 5)]);
    let disks = [("vda", a.as_path(), "qcow2"), ("vdb", b.as_path(), "raw")];
    let mut vm = start_vm(&e, &disks);
    guest_write(&vm, "vda", 0x11, "0", "2M");
    let mut vda = vec![0x11u8; 2 << 20];
    vda.resize(16 << 20, 0);
    e.ok(&[
        "item",
        "protect",
        "vm",
        "--qmp",
        vm.qmp.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "db",
    ]);
    // Backs up, checks each disk restores as expected, returns the report and the job log.
    let check = |expected_vda: &[u8], vm: &Vm, tag: &str| -> (Value, String) {
        let vdb_now = image_now(&e, &b, "raw", &format!("b-{tag}.raw"));
        let r = e.json(&["backup", "now", "db"]);
        let log = e.json(&["job", "show", r["job_id"].as_str().unwrap()])["log"].to_string();
        let dir = e.path(&format!("restored-{tag}"));
        std::fs::create_dir(&dir).unwrap();
        e.ok(&[
            "restore",
            "disks",
            "db",
            "--rp",
            "latest",
            "--to",
            dir.to_str().unwrap(),
        ]);
        assert!(
            std::fs::read(dir.join("vda.raw")).unwrap() == expected_vda,
            "vda at point {tag}"
        );
        assert!(
            same_file(&dir.join("vdb.raw"), &vdb_now),
            "vdb at point {tag}"
        );
        // One bitmap per disk is left, the one the next backup starts from.
        assert_eq!(kura_bitmaps(vm).len(), 2, "{:?}", kura_bitmaps(vm));
        (r, log)
    };
    let (r, log) = check(&vda, &vm, "full");
    assert!(log.contains("vda: no previous recovery point"), "{log}");
    assert!(r["read_bytes"].as_u64().unwrap() >= 3 << 20, "{r}");

    // Three 64 KiB writes: only those are read.
    guest_write(&vm, "vda", 0x33, "1M", "64k");
    guest_write(&vm, "vda", 0x34, "9M", "64k");
    guest_write(&vm, "vdb", 0x44, "2M", "64k");
    vda[1 << 20..(1 << 20) + (64 << 10)].fill(0x33);
    vda[9 << 20..(9 << 20) + (64 << 10)].fill(0x34);
    let (r, log) = check(&vda, &vm, "cbt");
    assert!(
        log.contains("vda: 131072 bytes changed since recovery point"),
        "{log}"
    );
    assert!(
        log.contains("vdb: 65536 bytes changed since recovery point"),
        "{log}"
    );
    assert_eq!(r["read_bytes"], 3 * 65536, "{r}");

    // A clean restart: QEMU saves the qcow2 disk's bitmap; the raw disk's is gone.
    qmp(&vm, &[serde_json::json!({"execute": "quit"})]);
    let _ = vm.child.wait();
    drop(vm);
    vm = start_vm(&e, &disks);
    guest_write(&vm, "vda", 0x55, "2M", "64k");
    vda[2 << 20..(2 << 20) + (64 << 10)].fill(0x55);
    let (r, log) = check(&vda, &vm, "restart");
    assert!(
        log.contains("vda: 65536 bytes changed since recovery point"),
        "{log}"
    );
    assert!(log.contains("vdb: no dirty bitmap"), "{log}");
    assert!(
        r["read_bytes"].as_u64().unwrap() >= (1 << 20) + 65536,
        "vdb read in full: {r}"
    );

    // QEMU killed while it had the saved bitmap open: the bitmap is inconsistent when QEMU
    // starts again, and kura reads everything. (The guest flushed its write first, as a
    // guest's fsync does: it is on disk.)
    qmp(&vm, &[serde_json::json!({"execute": "quit"})]);
    let _ = vm.child.wait();
    drop(vm);
    vm = start_vm(&e, &disks);
    guest_write(&vm, "vda", 0x66, "3M", "64k");
    vda[3 << 20..(3 << 20) + (64 << 10)].fill(0x66);
    let a2 = qmp(
        &vm,
        &[serde_json::json!({"execute": "human-monitor-command",
            "arguments": {"command-line": "qemu-io -d vda/virtio-backend flush"}})],
    );
    assert_eq!(a2[0]["return"], "", "{a2:?}");
    let _ = vm.child.kill();
    let _ = vm.child.wait();
    drop(vm);
    vm = start_vm(&e, &disks);
    let (_, log) = check(&vda, &vm, "killed");
    assert!(
        log.contains("vda: its dirty bitmap is inconsistent"),
        "{log}"
    );
    // ... and tracks changes again from there.
    guest_write(&vm, "vda", 0x77, "4M", "64k");
    vda[4 << 20..(4 << 20) + (64 << 10)].fill(0x77);
    let (r, log) = check(&vda, &vm, "again");
    assert!(log.contains("vda: 65536 bytes changed"), "{log}");
    assert_eq!(r["read_bytes"], 65536, "{r}");

    // A disk hot-plugged into the running VM: backed up in full, beside the others'
    // incrementals.
    let c = e.path("c.raw");
    make_image(&c, 1 << 20, &[(0, 4096, 8)]);
    let plug = qmp(
        &vm,
        &[
            serde_json::json!({"execute": "blockdev-add", "arguments":
                {"driver": "file", "node-name": "hpf", "filename": c}}),
            serde_json::json!({"execute": "blockdev-add", "arguments":
                {"driver": "raw", "node-name": "hpn", "file": "hpf"}}),
            serde_json::json!({"execute": "device_add", "arguments":
                {"driver": "virtio-blk-pci", "drive": "hpn", "id": "vdc", "bus": "hp0"}}),
        ],
    );
    assert!(plug.iter().all(|a| a.get("return").is_some()), "{plug:?}");
    let r = e.json(&["backup", "now", "db"]);
    let log = e.json(&["job", "show", r["job_id"].as_str().unwrap()])["log"].to_string();
    assert!(log.contains("VM disk vdc was attached since"), "{log}");
    assert!(log.contains("vda: 0 bytes changed"), "{log}");
    let out = e.path("vdc.out");
    e.ok(&[
        "restore",
        "disk",
        "db",
        "--rp",
        "latest",
        "--disk",
        "vdc",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(same_file(&out, &c));
    assert_eq!(kura_bitmaps(&vm).len(), 3);

    // Once the item's data is purged, its bitmaps go too: nothing of kura stays in the VM.
    e.ok(&["item", "stop", "db", "--delete-data"]);
    // The clock started at 2026-03-10 09:00 UTC: 15 days later soft delete has ended.
    let tick = e.json(&["scheduler", "tick", "--now", "2026-03-25T12:00:00Z"]);
    assert_eq!(tick["purged"], serde_json::json!(["db"]), "{tick}");
    assert_eq!(kura_bitmaps(&vm), Vec::<String>::new());
}

/// Azure's usage example scaled to MiB: OS disk 17 used, temporary disk 5 (excluded), data
/// disks 30 and 0 → protected size 47; an incremental that reads only a few changed blocks
/// keeps the same protected size.
#[test]
fn a_vm_protected_size_counts_its_data_except_excluded_disks() {
    let e = Env::new();
    e.vault("v", &[]);
    const MIB: u64 = 1 << 20;
    let os = e.path("os.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", os.to_str().unwrap(), "64M"]);
    let temp = e.path("temp.raw");
    make_image(&temp, 16 * MIB, &[(0, 5 << 20, 1)]);
    let data1 = e.path("data1.raw");
    make_image(&data1, 64 * MIB, &[(8 * MIB, 30 << 20, 2)]);
    let data2 = e.path("data2.raw");
    make_image(&data2, 16 * MIB, &[]);
    let vm = start_vm(
        &e,
        &[
            ("vda", &os, "qcow2"),
            ("vdb", &temp, "raw"),
            ("vdc", &data1, "raw"),
            ("vdd", &data2, "raw"),
        ],
    );
    guest_write(&vm, "vda", 0x5a, "0", "17M");
    e.ok(&[
        "item",
        "protect",
        "vm",
        "--qmp",
        vm.qmp.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "app",
        "--exclude-disk",
        "vdb",
    ]);
    e.ok(&["backup", "now", "app"]);
    let protected = |e: &Env| -> u64 {
        let u = e.json(&["usage"]);
        u[0]["items"][0]["protected_bytes"].as_u64().unwrap()
    };
    assert_eq!(protected(&e), 47 * MIB);
    guest_write(&vm, "vdc", 0x11, "0", "64k");
    let r = e.json(&["backup", "now", "app"]);
    assert_eq!(r["read_bytes"], 65536, "{r}");
    assert_eq!(
        protected(&e),
        47 * MIB + 65536,
        "the new 64 KiB counts, nothing else changes"
    );
}

/// Overlapping VM backups (Azure's rule): a backup that starts while another one transfers
/// the item takes its snapshot (an internal snapshot of every qcow2 disk, in the VM's QEMU)
/// and skips its transfer, leaving the running transfer's bitmaps alone; each point restores
/// from its own snapshot at once, and the next transfer carries the skipped point's changes.
/// What a killed backup left in the VM is cleaned up by the next one, whose point is exact.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn overlapping_and_killed_vm_backups_leave_the_vm_clean() {
    let e = Env::new();
    e.vault("v", &[]);
    let a = e.path("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "8M"]);
    let vm = start_vm(&e, &[("vda", &a, "qcow2")]);
    guest_write(&vm, "vda", 0x21, "0", "1M");
    e.ok(&[
        "item",
        "protect",
        "vm",
        "--qmp",
        vm.qmp.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "db",
    ]);
    let mut expected = vec![0x21u8; 1 << 20];
    expected.resize(8 << 20, 0);
    let nodes = |vm: &Vm| -> String {
        let a = qmp(
            vm,
            &[
                serde_json::json!({"execute": "query-named-block-nodes"}),
                serde_json::json!({"execute": "query-block-exports"}),
                serde_json::json!({"execute": "query-block-jobs"}),
            ],
        );
        let names: Vec<String> = a[0]["return"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node-name"].as_str().unwrap_or_default().to_string())
            .collect();
        format!("{names:?} {} {}", a[1]["return"], a[2]["return"])
    };

    // 1. A second backup during a transfer (Azure's overlap rule): it takes its snapshot and
    // skips its transfer; the next transfer carries its changes.
    let gate = Gate::new(&e, "transfer");
    let (var, val) = gate.env();
    let first = e
        .cmd(&["--output", "json", "backup", "now", "db"])
        .env(var, val)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    gate.wait_reached();
    let before = kura_bitmaps(&vm);
    guest_write(&vm, "vda", 0x23, "4M", "64k");
    let mut at_second = expected.clone();
    at_second[4 << 20..(4 << 20) + (64 << 10)].fill(0x23);
    let second = e.json(&["backup", "now", "db"]);
    assert_eq!(second["tier"], "snapshot", "{second}");
    let job = e.json(&["job", "show", second["job_id"].as_str().unwrap()]);
    assert_eq!(job["status"], "Completed", "{job}");
    assert_eq!(job["tasks"][0]["status"], "Completed", "{job}");
    assert_eq!(job["tasks"][1]["status"], "Skipped", "{job}");
    assert!(
        job["tasks"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("still transferring this VM"),
        "{job}"
    );
    // The running transfer's bitmaps were left alone.
    assert_eq!(kura_bitmaps(&vm), before);
    gate.release();
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // Both points have their snapshot tier (internal snapshots of the qcow2 disk), each at
    // its own instant, and a restore reads it.
    let first_r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(first_r["tier"], "snapshot+vault", "{first_r}");
    for (rp, want) in [
        (&first_r["rp_id"], &expected),
        (&second["rp_id"], &at_second),
    ] {
        let snap_out = e.path("snap.raw");
        let r = e.json(&[
            "restore",
            "disk",
            "db",
            "--rp",
            rp.as_str().unwrap(),
            "--to",
            snap_out.to_str().unwrap(),
        ]);
        let log = e.json(&["job", "show", r["job_id"].as_str().unwrap()])["log"].to_string();
        assert!(log.contains("from the snapshot tier"), "{log}");
        assert!(&std::fs::read(&snap_out).unwrap() == want, "point {rp}");
        std::fs::remove_file(&snap_out).unwrap();
    }
    // The snapshot-only point restores as a whole new VM too (its definition is kept in the
    // catalog until it has a vault copy), which starts.
    let dir = e.path("copy");
    let r = e.json(&[
        "restore",
        "vm",
        "db",
        "--rp",
        second["rp_id"].as_str().unwrap(),
        "--as-new",
        "db2",
        "--to",
        dir.to_str().unwrap(),
        "--start",
    ]);
    let _copy = super::guest::KillOnDrop(r["pid"].as_i64().unwrap() as i32);
    let log =
        e.json(&["job", "show", r["disks"][0]["job_id"].as_str().unwrap()])["log"].to_string();
    assert!(log.contains("from the snapshot tier"), "{log}");
    let copy_disk = image_now(&e, &dir.join("vda.qcow2"), "qcow2", "copy.raw");
    assert!(std::fs::read(copy_disk).unwrap() == at_second);
    let copy = Vm {
        child: Command::new("true").spawn().unwrap(),
        qmp: PathBuf::from(r["qmp"].as_str().unwrap()),
    };
    let name = qmp(&copy, &[serde_json::json!({"execute": "query-name"})]);
    assert_eq!(name[0]["return"]["name"], "db2", "{name:?}");
    // Replacing the VM's disks with it is refused: its snapshots live inside them.
    let (_, err) = e.fails(&[
        "restore",
        "vm",
        "db",
        "--rp",
        second["rp_id"].as_str().unwrap(),
        "--replace",
    ]);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has no vault copy yet"),
        "{err}"
    );
    expected = at_second;

    // 2. A backup killed while it reads: its exports and overlays stay in the VM ...
    guest_write(&vm, "vda", 0x22, "2M", "64k");
    expected[2 << 20..(2 << 20) + (64 << 10)].fill(0x22);
    let gate = Gate::new(&e, "read");
    let (var, val) = gate.env();
    let mut killed = e
        .cmd(&["--output", "json", "backup", "now", "db"])
        .env(var, val)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    gate.wait_reached();
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(nodes(&vm).contains("kura-"), "{}", nodes(&vm));
    // ... until the next backup removes them, and its point is exact.
    let r = e.json(&["backup", "now", "db"]);
    let log = e.json(&["job", "show", r["job_id"].as_str().unwrap()])["log"].to_string();
    assert!(log.contains("removed what an interrupted backup"), "{log}");
    assert!(!nodes(&vm).contains("kura-"), "{}", nodes(&vm));
    let out = e.path("out.raw");
    e.ok(&[
        "restore",
        "disk",
        "db",
        "--rp",
        "latest",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&out).unwrap() == expected);
}

/// Starts QEMU on `disks` and returns what it printed if it exits within a few seconds.
fn start_fails(disks: &[(&str, &Path, &str)]) -> String {
    let (bin, data) = qemu_system();
    let mut cmd = Command::new(bin);
    cmd.args(["-L", "/usr/share/seabios", "-L", &data]).args([
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-m",
        "64",
    ]);
    disk_args(&mut cmd, disks);
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read as _;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("QEMU started on disks kura is reading");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A VM that is shut off is backed up from its disk files: crash-consistent, the qcow2 disk
/// still incremental through the bitmap its clean shutdown saved, and both disks locked so
/// that the VM cannot start while they are read; the next online backup is incremental from
/// the offline point.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test turns it on)"
)]
fn a_shut_off_vm_is_read_from_its_locked_disk_files() {
    let e = Env::new();
    e.geo_vault("v");
    let a = e.path("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "8M"]);
    let b = e.path("b.raw");
    make_image(&b, 2 << 20, &[(0, 1 << 20, 6)]);
    let disks = [("vda", a.as_path(), "qcow2"), ("vdb", b.as_path(), "raw")];
    let mut vm = start_vm(&e, &disks);
    guest_write(&vm, "vda", 0x31, "0", "1M");
    let mut vda = vec![0x31u8; 1 << 20];
    vda.resize(8 << 20, 0);
    e.ok(&[
        "item",
        "protect",
        "vm",
        "--qmp",
        vm.qmp.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "off",
    ]);
    e.ok(&["backup", "now", "off"]);
    guest_write(&vm, "vda", 0x32, "4M", "64k");
    vda[4 << 20..(4 << 20) + (64 << 10)].fill(0x32);
    qmp(&vm, &[serde_json::json!({"execute": "quit"})]);
    let _ = vm.child.wait();
    drop(vm);

    // Shut off: the precheck passes, the backup reads the files under lock.
    assert_eq!(e.json(&["item", "precheck", "off"])["ready"], true);
    let gate = Gate::new(&e, "read");
    let (var, val) = gate.env();
    let backup = e
        .cmd(&["--output", "json", "backup", "now", "off"])
        .env(var, val)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    gate.wait_reached();
    let err = start_fails(&disks[..1]);
    assert!(err.contains("lock"), "{err}");
    let err = start_fails(&disks[1..]);
    assert!(err.contains("lock"), "{err}");
    gate.release();
    let o = backup.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let log = e.json(&["job", "show", r["job_id"].as_str().unwrap()])["log"].to_string();
    assert!(log.contains("the VM is shut off"), "{log}");
    assert!(
        log.contains("vda: 65536 bytes changed since recovery point"),
        "{log}"
    );
    assert_eq!(e.json(&["rp", "show", "off"])["consistency"], "crash");
    let dir = e.path("r1");
    std::fs::create_dir(&dir).unwrap();
    e.ok(&[
        "restore",
        "disks",
        "off",
        "--rp",
        "latest",
        "--to",
        dir.to_str().unwrap(),
    ]);
    assert!(std::fs::read(dir.join("vda.raw")).unwrap() == vda);
    assert!(same_file(&dir.join("vdb.raw"), &b));

    // Running again: incremental from the offline point's bitmap.
    let vm = start_vm(&e, &disks);
    guest_write(&vm, "vda", 0x33, "6M", "64k");
    vda[6 << 20..(6 << 20) + (64 << 10)].fill(0x33);
    let r = e.json(&["backup", "now", "off"]);
    let log = e.json(&["job", "show", r["job_id"].as_str().unwrap()])["log"].to_string();
    assert!(
        log.contains("vda: 65536 bytes changed since recovery point"),
        "{log}"
    );
    let out = e.path("vda-now.raw");
    e.ok(&[
        "restore",
        "disk",
        "off",
        "--rp",
        "latest",
        "--disk",
        "vda",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&out).unwrap() == vda);
    assert_eq!(kura_bitmaps(&vm).len(), 2, "{:?}", kura_bitmaps(&vm));

    // Cross-region: with the vault's primary location gone, a new VM from the geo replica.
    let gone = e.primary_gone("v");
    // The point is still shown: its manifest comes from the replica. The usage of every
    // vault still answers, this one marked unreachable.
    assert_eq!(e.json(&["rp", "show", "off"])["consistency"], "crash");
    let usage = e.json(&["usage"]);
    assert!(usage[0]["unreachable"].is_string(), "{usage}");
    assert!(
        usage[0]["stored_bytes"].as_u64().unwrap() > 0,
        "last measured: {usage}"
    );
    let restore = |dir: &Path, replica: bool| {
        let mut a = vec![
            "restore",
            "vm",
            "off",
            "--rp",
            "latest",
            "--as-new",
            "off2",
            "--to",
            dir.to_str().unwrap(),
        ];
        if replica {
            a.push("--from-replica");
        }
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = restore(&e.path("not-made"), false);
    let (_, err) = e.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.to_string().contains("vault"),
        "without --from-replica the primary is read, and it is gone: {err}"
    );
    assert!(!e.path("not-made").exists(), "nothing made");
    let dir = e.path("from-replica");
    let args = restore(&dir, true);
    let r = e.json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let restored = r["disks"].as_array().unwrap();
    assert_eq!(restored.len(), 2, "{r}");
    let mut formats = Vec::new();
    for (i, d) in restored.iter().enumerate() {
        let to = PathBuf::from(d["target"].as_str().unwrap());
        assert!(to.starts_with(&dir), "{r}");
        // vda was a qcow2 disk, vdb a raw one; each comes back in its format.
        let format = d["format"].as_str().unwrap();
        formats.push(format);
        let raw = image_now(&e, &to, format, &format!("replica-{i}.raw"));
        if format == "qcow2" {
            assert!(std::fs::read(&raw).unwrap() == vda, "vda from the replica");
        } else {
            assert!(same_file(&raw, &b), "vdb from the replica");
        }
    }
    formats.sort_unstable();
    assert_eq!(formats, ["qcow2", "raw"], "{r}");
    drop(gone);
}

/// An encrypted disk (qcow2 with LUKS, its passphrase on the QEMU command line) is backed up
/// as the guest sees it; the passphrase is kept sealed with the point and never shown; a
/// restore writes the disk encrypted again with it, or decrypted when asked; a new VM from
/// the point opens its encrypted disk.
#[test]
fn an_encrypted_disk_is_restored_encrypted_with_its_passphrase() {
    let e = Env::new();
    e.vault("v", &[]);
    let a = e.path("enc.qcow2");
    let o = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=s0,data=correct horse",
        ])
        .args(["-o", "encrypt.format=luks,encrypt.key-secret=s0"])
        .arg(&a)
        .arg("8M")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (bin, data) = qemu_system();
    let qmp_path = e.path("enc.qmp");
    let mut child = Command::new(bin)
        .args(["-L", "/usr/share/seabios", "-L", &data])
        .args([
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-machine",
            "q35",
            "-m",
            "64",
        ])
        .args(["-object", "secret,id=s0,data=correct horse"])
        .arg("-blockdev")
        .arg(format!("driver=file,node-name=f0,filename={}", a.display()))
        .args([
            "-blockdev",
            "driver=qcow2,node-name=n0,file=f0,encrypt.format=luks,encrypt.key-secret=s0",
        ])
        .args(["-device", "virtio-blk-pci,drive=n0,id=vda"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while UnixStream::connect(&qmp_path).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let vm = Vm {
        child: std::mem::replace(&mut child, Command::new("true").spawn().unwrap()),
        qmp: qmp_path,
    };
    guest_write(&vm, "vda", 0x5c, "1M", "1M");
    let mut expected = vec![0u8; 8 << 20];
    expected[1 << 20..2 << 20].fill(0x5c);

    let item = e.json(&[
        "item",
        "protect",
        "vm",
        "--qmp",
        vm.qmp.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "enc",
    ]);
    assert_eq!(item["spec"]["disks"][0]["encrypted"], true, "{item}");
    e.ok(&["backup", "now", "enc"]);
    let shown = e.ok(&["--output", "json", "rp", "show", "enc"]);
    assert!(shown.contains("\"encrypted_disks\""), "{shown}");
    assert!(
        !shown.contains("correct horse") && !shown.contains("Y29ycmVjdCBob3JzZQ"),
        "{shown}"
    );

    // Encrypted again by default: qcow2 with LUKS, opened with the same passphrase.
    let out = e.path("restored.img");
    let r = e.json(&[
        "restore",
        "disk",
        "enc",
        "--rp",
        "latest",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r["encrypted"], true, "{r}");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&out)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["encrypted"], true, "{info}");
    let plain = e.path("plain.raw");
    let o = Command::new("qemu-img")
        .args([
            "convert",
            "--object",
            "secret,id=s0,data=correct horse",
            "--image-opts",
        ])
        .arg(format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=s0",
            out.display()
        ))
        .args(["-O", "raw"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&plain).unwrap() == expected);
    // Decrypted when asked.
    let dec = e.path("dec.raw");
    e.ok(&[
        "restore",
        "disk",
        "enc",
        "--rp",
        "latest",
        "--decrypt",
        "--to",
        dec.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&dec).unwrap() == expected);
    // A new VM from the point opens its encrypted disk with the passphrase it had.
    let dir = e.path("copy");
    let r = e.json(&[
        "restore",
        "vm",
        "enc",
        "--rp",
        "latest",
        "--as-new",
        "copy",
        "--to",
        dir.to_str().unwrap(),
        "--start",
    ]);
    let copy = Vm {
        child: Command::new("sleep").arg("0").spawn().unwrap(),
        qmp: PathBuf::from(r["qmp"].as_str().unwrap()),
    };
    let a = qmp(&copy, &[serde_json::json!({"execute": "query-block"})]);
    assert_eq!(a[0]["return"][0]["inserted"]["encrypted"], true, "{a:?}");
    qmp(&copy, &[serde_json::json!({"execute": "quit"})]);
    drop(child);
}

/// A VM item under its policy: the scheduler backs it up like a disk item, as a scheduled
/// point, incremental through its dirty bitmap the second time.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (its fixed clock); scripts/test turns it on"
)]
fn the_scheduler_backs_up_a_vm_under_its_policy() {
    let e = Env::at("2026-03-10T09:00:00Z");
    e.vault("v", &[]);
    let a = e.path("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "8M"]);
    let vm = start_vm(&e, &[("vda", &a, "qcow2")]);
    guest_write(&vm, "vda", 0x41, "0", "1M");
    e.ok(&[
        "item",
        "protect",
        "vm",
        "--qmp",
        vm.qmp.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "sched",
    ]);
    // The clock started at 2026-03-10 09:00 UTC; ticks two and four days later.
    let tick = e.json(&["scheduler", "tick", "--now", "2026-03-12T09:00:00Z"]);
    let b = &tick["backups"][0];
    assert_eq!(b["item"], "sched", "{tick}");
    assert!(b["rp_id"].is_string(), "{tick}");
    guest_write(&vm, "vda", 0x42, "2M", "64k");
    let tick = e.json(&["scheduler", "tick", "--now", "2026-03-14T09:00:00Z"]);
    assert!(tick["backups"][0]["rp_id"].is_string(), "{tick}");
    let rps = e.json(&["rp", "list", "sched"]);
    assert_eq!(rps.as_array().unwrap().len(), 2, "{rps}");
    assert_eq!(rps[0]["origin"], "scheduled", "{rps}");
    let jobs = e.json(&["job", "list"]);
    let log = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["operation"] == "Backup")
        .map(|j| j["id"].as_str().unwrap().to_string())
        .unwrap();
    let log = e.json(&["job", "show", &log])["log"].to_string();
    assert!(
        log.contains("vda: 65536 bytes changed since recovery point"),
        "{log}"
    );
    // Both points got an instant-restore snapshot; the first one's days are over, so it was
    // deleted through the running VM's QEMU: one internal snapshot is left in the image.
    let o = Command::new("qemu-img")
        .args(["snapshot", "-l", "-U", "-f", "qcow2"])
        .arg(&a)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&o.stdout);
    assert_eq!(list.matches("kura-").count(), 1, "{list}");
    assert_eq!(rps[0]["tier"], "snapshot+vault", "{rps}");
    assert_eq!(rps[1]["tier"], "vault-standard", "{rps}");
}

/// A QEMU that runs as an unprivileged user (as libvirt's and most hand-made VMs do) must be
/// able to open the fleecing overlays kura makes and to create its NBD socket: kura hands
/// their directory to QEMU's user. (A raw disk, so the point is read by fleecing.)
#[test]
fn a_vm_whose_qemu_runs_as_another_user_is_backed_up() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new();
    e.vault("v", &[]);
    // A directory the user nobody owns, for its image and sockets.
    std::fs::set_permissions(e.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let vmdir = e.path("vmdir");
    std::fs::create_dir(&vmdir).unwrap();
    // A raw image: its points are read through fleecing overlays in kura's directory.
    let img = vmdir.join("a.raw");
    qemu_img(&["create", "-q", "-f", "raw", img.to_str().unwrap(), "8M"]);
    let o = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(&vmdir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // QEMU's own files must be readable by nobody too (the test's copy lives under /root).
    let (bin, _) = qemu_system();
    let qdir = e.path("qemu");
    std::fs::create_dir(&qdir).unwrap();
    let bin = Path::new(&bin);
    for f in [bin.to_path_buf(), bin.with_file_name("accel-tcg-x86_64.so")] {
        let to = qdir.join(f.file_name().unwrap());
        std::fs::copy(&f, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&qdir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let qmp_path = vmdir.join("vm.qmp");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(qdir.join("qemu-system-x86_64"))
        .env("QEMU_MODULE_DIR", &qdir)
        .args(["-L", "/usr/share/seabios"])
        .args([
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "64",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
    disk_args(&mut cmd, &[("vda", &img, "raw")]);
    let child = cmd
        .stdout(Stdio::null())
        .spawn()
        .expect("setpriv (util-linux) runs QEMU");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while UnixStream::connect(&qmp_path).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU did not start as nobody"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let vm = Vm {
        child,
        qmp: qmp_path,
    };
    guest_write(&vm, "vda", 0x6d, "1M", "1M");
    let mut expected = vec![0u8; 8 << 20];
    expected[1 << 20..2 << 20].fill(0x6d);
    e.ok(&[
        "item",
        "protect",
        "vm",
        "--qmp",
        vm.qmp.to_str().unwrap(),
        "--vault",
        "v",
        "--name",
        "u",
    ]);
    e.ok(&["backup", "now", "u"]);
    // The incremental reads its changes from QEMU's NBD socket in that directory too.
    guest_write(&vm, "vda", 0x6e, "4M", "64k");
    expected[4 << 20..(4 << 20) + (64 << 10)].fill(0x6e);
    let r = e.json(&["backup", "now", "u"]);
    assert_eq!(r["read_bytes"], 64 << 10, "{r}");
    let out = e.path("out.raw");
    e.ok(&[
        "restore",
        "disk",
        "u",
        "--rp",
        "latest",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&out).unwrap() == expected);
}
