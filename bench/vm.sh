#!/usr/bin/env bash
# VM backup benchmark: kura's changed-block incrementals of a running VM against restic and
# Borg on the same image states, in one run.
#
#   bench/vm.sh [WORKDIR]        (root or sudo; needs ~12 GiB free in WORKDIR)
#
# A 4 GiB qcow2 disk with about 1.75 GiB allocated (the layout of bench/run.sh) is attached
# as vdb to the tiny test guest (scripts/build-guest) running under QEMU/TCG, with its guest
# agent. kura backs the VM up in full, then after 1% of the disk changed in 256 KiB runs at
# random offsets (clustered, like a database or log), then after 1% changed in scattered
# 4 KiB writes. The changes are written into the running VM's disk (QEMU's qemu-io monitor
# command), so the VM's dirty bitmaps see them. After each step the disk's state is exported
# as a raw image, and restic and Borg back that same state up. Also measured: the guest's
# freeze window per backup, a guest's sequential write throughput with and without a backup
# running, and restore time against `cp --sparse=always` + sync of the same image.
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-/var/tmp/kura-vm-bench}"
ROOT="$(pwd)"

need=()
for p in restic borgbackup time e2fsprogs cpio qemu-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
QDIR="${KURA_QEMU_DIR:-$HOME/.cache/kura/qemu-system}"
scripts/get-qemu-system "$QDIR"
GUEST="${KURA_GUEST_DIR:-$HOME/.cache/kura/guest}"
scripts/build-guest "$GUEST" >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kura/target}"
cargo build --release --locked -p kura -q
KURA="$CARGO_TARGET_DIR/release/kura"

rm -rf "$W"; mkdir -p "$W"
export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export KURA_HOME="$W/kura-home"

# --- the disk and the VM ------------------------------------------------------------------
tar cf - /usr/lib /usr/bin /usr/share /usr/libexec 2>/dev/null | head -c $((1280 << 20)) > "$W/usr.tar" || true
head -c $((512 << 20)) /dev/urandom > "$W/random.bin"
truncate -s 4G "$W/disk.raw"
dd if="$W/usr.tar" of="$W/disk.raw" bs=1M count=1024 conv=notrunc,sparse status=none
dd if="$W/random.bin" of="$W/disk.raw" bs=1M seek=1536 conv=notrunc status=none
dd if="$W/usr.tar" of="$W/disk.raw" bs=1M skip=1024 count=256 seek=3072 conv=notrunc,sparse status=none
qemu-img convert -f raw -O qcow2 "$W/disk.raw" "$W/vdb.qcow2"
rm -f "$W/disk.raw" "$W/random.bin"
mkdir -p "$W/tree" && mkfs.ext4 -q -F -d "$W/tree" "$W/data.raw" 64M
# Both disks qcow2: the VM has the snapshot tier, and transfers read its internal snapshots.
qemu-img convert -f raw -O qcow2 "$W/data.raw" "$W/data.qcow2" && rm -f "$W/data.raw"

"$QDIR/root/usr/bin/qemu-system-x86_64" -L /usr/share/seabios -L "$QDIR/root/usr/share/qemu" \
  -accel tcg -cpu max -M q35 -m 256 -nodefaults -display none -no-reboot \
  -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.gz" -append "console=ttyS0 quiet panic=-1" \
  -serial "file:$W/console.log" \
  -chardev "socket,id=qga0,path=$W/qga.sock,server=on,wait=off" \
  -device virtio-serial-pci -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
  -blockdev "driver=file,node-name=f0,filename=$W/data.qcow2" -blockdev driver=qcow2,node-name=d0,file=f0 \
  -device virtio-blk-pci,drive=d0,id=vda \
  -blockdev "driver=file,node-name=f1,filename=$W/vdb.qcow2" -blockdev driver=qcow2,node-name=d1,file=f1 \
  -device virtio-blk-pci,drive=d1,id=vdb \
  -qmp "unix:$W/qmp.sock,server=on,wait=off" -daemonize -pidfile "$W/qemu.pid"
trap 'kill "$(cat "$W/qemu.pid" 2>/dev/null)" 2>/dev/null || true' EXIT

# QMP and guest-agent helper: `vmctl qmp CMD [ARGS-JSON]`, `vmctl hmp LINE...`,
# `vmctl churn clustered|scattered SEED`, `vmctl sh SCRIPT` (prints the guest's output).
vmctl() {
  python3 - "$W" "$@" <<'PY'
import base64, json, random, socket, sys, time
W, op, args = sys.argv[1], sys.argv[2], sys.argv[3:]
def qmp():
    s = socket.socket(socket.AF_UNIX); s.connect(W + "/qmp.sock"); f = s.makefile("rwb")
    f.readline()
    def cmd(c, a=None):
        m = {"execute": c}
        if a is not None: m["arguments"] = a
        f.write(json.dumps(m).encode() + b"\n"); f.flush()
        while True:
            r = json.loads(f.readline())
            if "event" not in r: return r
    cmd("qmp_capabilities")
    return cmd
if op == "qmp":
    print(json.dumps(qmp()(args[0], json.loads(args[1]) if len(args) > 1 else None)))
elif op == "churn":
    kind, seed = args[0], int(args[1]); rnd = random.Random(seed); cmd = qmp()
    size = 4 << 30; n = 0
    if kind == "clustered":
        run = 256 << 10; count = size // 100 // run
        for i in range(count):
            off = rnd.randrange(size // run) * run
            r = cmd("human-monitor-command", {"command-line": f'qemu-io -d vdb/virtio-backend "write -P {rnd.randrange(256)} {off} {run}"'})
            assert r.get("return") == "", r
    else:
        blk = 4096; count = size // 100 // blk
        for i in range(count):
            off = rnd.randrange(size // blk) * blk
            r = cmd("human-monitor-command", {"command-line": f'qemu-io -d vdb/virtio-backend "write -P {rnd.randrange(256)} {off} {blk}"'})
            assert r.get("return") == "", r
    cmd("human-monitor-command", {"command-line": 'qemu-io -d vdb/virtio-backend "flush"'})
elif op == "sh":
    s = socket.socket(socket.AF_UNIX); s.settimeout(120); s.connect(W + "/qga.sock"); f = s.makefile("rwb")
    def cmd(c, a=None):
        m = {"execute": c}
        if a is not None: m["arguments"] = a
        f.write(json.dumps(m).encode() + b"\n"); f.flush()
        return json.loads(f.readline())
    f.write(b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": 4242}}).encode() + b"\n"); f.flush()
    while f.read(1) != b"\xff": pass
    while json.loads(f.readline()).get("return") != 4242:
        while f.read(1) != b"\xff": pass
    pid = cmd("guest-exec", {"path": "/bin/sh", "arg": ["-c", args[0]], "capture-output": True})["return"]["pid"]
    while True:
        st = cmd("guest-exec-status", {"pid": pid})["return"]
        if st["exited"]:
            print(base64.b64decode(st.get("out-data", "")).decode().strip()); break
        time.sleep(0.1)
PY
}
for _ in $(seq 600); do grep -q "kura-guest: ready" "$W/console.log" 2>/dev/null && break; sleep 0.2; done
vmctl sh "echo agent ready" >/dev/null

RES="$W/results.tsv"; : > "$RES"
measure() { # TOOL LABEL CMD...
  local tool=$1 label=$2; shift 2
  sync
  /usr/bin/time -v -o "$W/time.txt" bash -c '"$@" && sync' _ "$@" > "$W/out.txt" 2> "$W/err.txt" || { cat "$W/out.txt" "$W/err.txt"; echo "FAILED: $*"; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$W/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {print int($2/1024)}' "$W/time.txt")
  printf '%s\t%s\t%s\t%s\n' "$tool" "$label" "$wall" "$rss" | tee -a "$RES"
}
note() { printf '%s\t%s\t%s\t-\n' "$1" "$2" "$3" | tee -a "$RES"; }
# The disk's state now, as a raw image for restic and Borg (not timed).
export_state() {
  qemu-img convert -U -f qcow2 -O raw "$W/vdb.qcow2" "$W/state.raw"
}
freeze_ms() { "$KURA" --output json rp show vm | python3 -c 'import json,sys; print(json.load(sys.stdin)["capture"]["freeze_ms"])'; }
read_mib() { python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["read_bytes"]/1048576,1))' "$W/out.txt"; }

"$KURA" vault create bench >/dev/null
"$KURA" item protect vm --qmp "$W/qmp.sock" --qga "$W/qga.sock" --vault bench --name vm >/dev/null
# The same VM in a vault with 1 MiB chunks (a second item, through another name of the socket):
# a changed block costs reading its whole chunk, so smaller chunks read less after churn.
ln -s "$W/qmp.sock" "$W/qmp-1m.sock"
"$KURA" vault create bench1m --chunk-size 1MiB >/dev/null
"$KURA" item protect vm --qmp "$W/qmp-1m.sock" --vault bench1m --name vm1m >/dev/null
restic init --repo "$W/restic" -q
borg init -e repokey "$W/borg"

step() { # LABEL SEED-OR-EMPTY KIND
  local label=$1
  measure kura "$label" "$KURA" --output json backup now vm
  note kura "$label-read-MiB" "$(read_mib)"
  note kura "$label-freeze-ms" "$(freeze_ms)"
  measure kura-1MiB "$label" "$KURA" --output json backup now vm1m
  note kura-1MiB "$label-read-MiB" "$(read_mib)"
  export_state
  measure restic "$label" restic --repo "$W/restic" backup -q "$W/state.raw"
  measure borg "$label" borg create "$W/borg::$label" "$W/state.raw"
}
step full
vmctl churn clustered 11
step clustered
vmctl churn scattered 12
step scattered
cp --sparse=always "$W/state.raw" "$W/final.raw"

# A guest writing sequentially (128 MiB, O_DIRECT, to vdb beyond the data) with and without
# a full backup of the VM running. Each run writes the same region.
guest_write() { # prints the milliseconds the guest took (from its /proc/uptime)
  vmctl sh 'a=$(cut -d" " -f1 /proc/uptime); dd if=/dev/zero of=/dev/vdb bs=1M count=128 seek=3700 oflag=direct 2>/dev/null || echo FAILED; b=$(cut -d" " -f1 /proc/uptime); echo "$a $b"' \
    | awk '/FAILED/ {print "failed"; exit} {printf "%d", ($2 - $1) * 1000}'
}
base_ms=$(guest_write)
ln -s "$W/qmp.sock" "$W/qmp2.sock"
"$KURA" vault create bench2 >/dev/null
"$KURA" item protect vm --qmp "$W/qmp2.sock" --vault bench2 --name vm2 >/dev/null
"$KURA" backup now vm2 > "$W/full2.txt" 2>&1 &
bk=$!
sleep 1
during_ms=$(guest_write)
wait $bk
note guest write-128MiB-ms "$base_ms"
note guest write-128MiB-during-backup-ms "$during_ms"

# Restore against the physical limit: the point's image copied sparsely, then synced.
measure cp restore cp --sparse=always "$W/final.raw" "$W/copy.raw"
rm -f "$W/copy.raw"
measure kura restore "$KURA" restore disk vm --rp latest --disk vdb --to "$W/restored.raw"
cmp "$W/final.raw" "$W/restored.raw"

get() { awk -F'\t' -v t="$1" -v l="$2" -v c="${3:-3}" '$1==t && $2==l {print $c}' "$RES"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
{
  echo "| tool | full (s) | clustered 1% inc (s) | scattered 1% inc (s) | peak RSS full / inc (MiB) |"
  echo "|---|---:|---:|---:|---|"
  for t in kura kura-1MiB restic borg; do
    echo "| $t | $(get $t full) | $(get $t clustered) | $(get $t scattered) | $(get $t full 4) / $(get $t clustered 4) |"
  done
  echo
  echo "- kura read (4 MiB chunks): full $(get kura full-read-MiB) MiB, clustered $(get kura clustered-read-MiB) MiB, scattered $(get kura scattered-read-MiB) MiB"
  echo "- kura read (1 MiB chunks): full $(get kura-1MiB full-read-MiB) MiB, clustered $(get kura-1MiB clustered-read-MiB) MiB, scattered $(get kura-1MiB scattered-read-MiB) MiB"
  echo "- clustered incremental / full (kura, 1 MiB chunks): $(ratio "$(get kura-1MiB clustered)" "$(get kura-1MiB full)")"
  echo "- clustered incremental / full (kura): $(ratio "$(get kura clustered)" "$(get kura full)") (target ≤ 0.10)"
  echo "- clustered incremental speed-up: vs restic $(ratio "$(get restic clustered)" "$(get kura clustered)")x, vs Borg $(ratio "$(get borg clustered)" "$(get kura clustered)")x (target ≥ 10)"
  echo "- scattered incremental speed-up: vs restic $(ratio "$(get restic scattered)" "$(get kura scattered)")x, vs Borg $(ratio "$(get borg scattered)" "$(get kura scattered)")x"
  echo "- full backup speed-up: vs restic $(ratio "$(get restic full)" "$(get kura full)")x, vs Borg $(ratio "$(get borg full)" "$(get kura full)")x (target ≥ 3)"
  echo "- guest frozen per backup: $(get kura full-freeze-ms) / $(get kura clustered-freeze-ms) / $(get kura scattered-freeze-ms) ms (target ≤ 100)"
  echo "- guest sequential write of 128 MiB: $(get guest write-128MiB-ms) ms alone, $(get guest write-128MiB-during-backup-ms) ms during a full backup: throughput kept $(ratio "$(get guest write-128MiB-ms)" "$(get guest write-128MiB-during-backup-ms)") (target ≥ 0.80)"
  echo "- restore of the 4 GiB disk: kura $(get kura restore) s, cp --sparse=always + sync $(get cp restore) s: $(ratio "$(get kura restore)" "$(get cp restore)")x (target ≤ 1.3)"
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); the VM runs under TCG"
  echo "- versions: $("$KURA" --version), $(restic version | cut -d' ' -f1-2), $(borg --version), QEMU $("$QDIR/root/usr/bin/qemu-system-x86_64" --version | head -1 | awk '{print $4}')"
} | tee "$W/results.md"
