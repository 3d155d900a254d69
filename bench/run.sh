#!/usr/bin/env bash
# kura vs restic, rustic and Borg on the same disk images, in one run.
#
#   bench/run.sh [WORKDIR]        (root or sudo; needs ~10 GiB free in WORKDIR)
#
# Builds kura (release), installs restic, borgbackup, zstd and GNU time from Debian, makes
# sparse raw images (real binaries and text from /usr, random data, holes), then times for
# each tool: a full backup, an incremental after 1% scattered 4 KiB writes, and a restore,
# with stored size and peak RSS from /usr/bin/time -v. `zstd -1 -T0` over the same image is
# the machine's compression limit. Results are printed as a Markdown table and saved in
# WORKDIR/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-/var/tmp/kura-bench}"
SIZE_GIB="${BENCH_SIZE_GIB:-4}"
BIG_GIB="${BENCH_BIG_GIB:-32}"

need=()
for p in restic borgbackup zstd time; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# rustic 0.11.4 (restic's format in Rust) is not packaged: built once with cargo (about
# 10-20 minutes on 2 cores) into a cache directory, or taken from $RUSTIC.
RUSTIC="${RUSTIC:-$HOME/.cache/kura/rustic/bin/rustic}"
if ! "$RUSTIC" --version 2>/dev/null | grep -q "0.11.4"; then
  cargo install rustic-rs --version 0.11.4 --locked --root "$HOME/.cache/kura/rustic"
  RUSTIC="$HOME/.cache/kura/rustic/bin/rustic"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kura/target}"
cargo build --release --locked -p kura -q
KURA="$CARGO_TARGET_DIR/release/kura"

rm -rf "$W"; mkdir -p "$W"
export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

# --- images -------------------------------------------------------------------------------
# Layout of an image of N GiB: 1 GiB of a tar of /usr (ELF binaries, libraries, text) at 0,
# 512 MiB of random data at 1.5 GiB, 256 MiB of the same /usr tar again at N-1 GiB (dedup),
# holes everywhere else. The big image has the same data spread over 32 GiB.
tar cf - /usr/lib /usr/bin /usr/share /usr/libexec 2>/dev/null | head -c $((1280 << 20)) > "$W/usr.tar" || true
head -c $((512 << 20)) /dev/urandom > "$W/random.bin"
make_image() { # PATH GIB
  local img=$1 gib=$2
  truncate -s "${gib}G" "$img"
  dd if="$W/usr.tar" of="$img" bs=1M count=1024 conv=notrunc,sparse status=none
  dd if="$W/random.bin" of="$img" bs=1M seek=1536 conv=notrunc status=none
  dd if="$W/usr.tar" of="$img" bs=1M skip=1024 count=256 seek=$(( (gib - 1) * 1024 )) conv=notrunc,sparse status=none
}
make_image "$W/disk.raw" "$SIZE_GIB"
make_image "$W/big.raw" "$BIG_GIB"
churn() { # 1% of the image in scattered 4 KiB writes, same offsets for every tool
  python3 - "$1" <<'PY'
import os, random, sys
p = sys.argv[1]; size = os.path.getsize(p); rnd = random.Random(7)
n = size // 100 // 4096
with open(p, "r+b") as f:
    for _ in range(n):
        f.seek(rnd.randrange(size // 4096) * 4096); f.write(rnd.randbytes(4096))
PY
}

# --- measurement helpers ------------------------------------------------------------------
RES="$W/results.tsv"; : > "$RES"
measure() { # LABEL TOOL CMD...
  local label=$1 tool=$2; shift 2
  sync
  # `sync` is inside the timing: every tool is measured until its output is on disk.
  /usr/bin/time -v -o "$W/time.txt" bash -c '"$@" && sync' _ "$@" > "$W/out.txt" 2>&1 || { cat "$W/out.txt"; echo "FAILED: $*"; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$W/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {print int($2/1024)}' "$W/time.txt")
  printf '%s\t%s\t%s\t%s\n' "$tool" "$label" "$wall" "$rss" | tee -a "$RES"
}
stored() { du -sb "$1" | cut -f1; }
alloc() { du -B1 "$1" | cut -f1; }

SRC_ALLOC=$(alloc "$W/disk.raw")
measure zstd-limit zstd zstd -1 -T0 -q -f "$W/disk.raw" -o /dev/null

# --- kura ---------------------------------------------------------------------------------
export KURA_HOME="$W/kura-home"
"$KURA" vault create bench >/dev/null
cp --sparse=always "$W/disk.raw" "$W/kura.raw"
"$KURA" item protect disk "$W/kura.raw" --vault bench --name disk >/dev/null
measure full kura "$KURA" backup now disk
KURA_FULL=$(stored "$W/kura-home/vaults/bench")
churn "$W/kura.raw"
measure incremental kura "$KURA" backup now disk
KURA_INC=$(stored "$W/kura-home/vaults/bench")
measure restore kura "$KURA" restore disk disk --rp latest --to "$W/kura-restored.raw"
cmp "$W/kura.raw" "$W/kura-restored.raw"
KURA_RALLOC=$(alloc "$W/kura-restored.raw")
rm -f "$W/kura-restored.raw"

# --- restic -------------------------------------------------------------------------------
restic init --repo "$W/restic" -q
cp --sparse=always "$W/disk.raw" "$W/restic.raw"
measure full restic restic --repo "$W/restic" backup -q "$W/restic.raw"
RESTIC_FULL=$(stored "$W/restic")
churn "$W/restic.raw"
measure incremental restic restic --repo "$W/restic" backup -q "$W/restic.raw"
RESTIC_INC=$(stored "$W/restic")
mkdir -p "$W/restic-out"
SPARSE=""; restic restore --help | grep -q -- --sparse && SPARSE="--sparse"  # restic >= 0.15
measure restore restic restic --repo "$W/restic" restore latest $SPARSE --target "$W/restic-out" -q
cmp "$W/restic.raw" "$W/restic-out/$W/restic.raw"
RESTIC_RALLOC=$(alloc "$W/restic-out/$W/restic.raw")
rm -rf "$W/restic-out"

# --- rustic -------------------------------------------------------------------------------
export RUSTIC_PASSWORD=bench
"$RUSTIC" -r "$W/rustic" init >/dev/null 2>&1
cp --sparse=always "$W/disk.raw" "$W/rustic.raw"
measure full rustic "$RUSTIC" -r "$W/rustic" --no-progress backup "$W/rustic.raw"
RUSTIC_FULL=$(stored "$W/rustic")
churn "$W/rustic.raw"
measure incremental rustic "$RUSTIC" -r "$W/rustic" --no-progress backup "$W/rustic.raw"
RUSTIC_INC=$(stored "$W/rustic")
mkdir -p "$W/rustic-out"
measure restore rustic "$RUSTIC" -r "$W/rustic" --no-progress restore latest "$W/rustic-out"
RUSTIC_OUT=$(find "$W/rustic-out" -name rustic.raw -type f | head -1)
cmp "$W/rustic.raw" "$RUSTIC_OUT"
RUSTIC_RALLOC=$(alloc "$RUSTIC_OUT")
rm -rf "$W/rustic-out"

# --- Borg ---------------------------------------------------------------------------------
borg init -e repokey "$W/borg"
cp --sparse=always "$W/disk.raw" "$W/borg.raw"
measure full borg borg create "$W/borg::full" "$W/borg.raw"
BORG_FULL=$(stored "$W/borg")
churn "$W/borg.raw"
measure incremental borg borg create "$W/borg::inc" "$W/borg.raw"
BORG_INC=$(stored "$W/borg")
mkdir -p "$W/borg-out"
measure restore borg bash -c "cd '$W/borg-out' && borg extract --sparse '$W/borg::inc'"
cmp "$W/borg.raw" "$W/borg-out/${W#/}/borg.raw"
BORG_RALLOC=$(alloc "$W/borg-out/${W#/}/borg.raw")
rm -rf "$W/borg-out"

# --- kura on the big sparse image (memory must not grow with disk size) ---------------------
"$KURA" vault create big >/dev/null
"$KURA" item protect disk "$W/big.raw" --vault big --name big >/dev/null
measure full-${BIG_GIB}G kura "$KURA" backup now big

# --- catalog: 10,000 items, 1,000,000 recovery points ----------------------------------------
cargo run --release --locked -q -p kura-catalog --example catalog_bench "$W" | tee "$W/catalog.txt"

# --- report -------------------------------------------------------------------------------
get() { awk -F'\t' -v t="$1" -v l="$2" -v c="$3" '$1==t && $2==l {print $c}' "$RES"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
{
  echo "| tool | full (s) | incremental (s) | restore (s) | stored after full (MiB) | after incremental (MiB) | restored allocation / source | peak RSS full / inc / restore (MiB) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  for t in kura restic rustic borg; do
    case $t in kura) F=$KURA_FULL I=$KURA_INC A=$KURA_RALLOC;; restic) F=$RESTIC_FULL I=$RESTIC_INC A=$RESTIC_RALLOC;; rustic) F=$RUSTIC_FULL I=$RUSTIC_INC A=$RUSTIC_RALLOC;; borg) F=$BORG_FULL I=$BORG_INC A=$BORG_RALLOC;; esac
    echo "| $t | $(get $t full 3) | $(get $t incremental 3) | $(get $t restore 3) | $(mib "$F") | $(mib "$I") | $(ratio "$A" "$SRC_ALLOC") | $(get $t full 4) / $(get $t incremental 4) / $(get $t restore 4) |"
  done
  echo
  echo "- zstd -1 -T0 over the ${SIZE_GIB} GiB image: $(get zstd zstd-limit 3) s"
  echo "- full backup speed-up: vs restic $(ratio "$(get restic full 3)" "$(get kura full 3)")x, vs rustic $(ratio "$(get rustic full 3)" "$(get kura full 3)")x, vs Borg $(ratio "$(get borg full 3)" "$(get kura full 3)")x; kura / zstd limit $(ratio "$(get kura full 3)" "$(get zstd zstd-limit 3)")"
  echo "- restore speed-up: vs restic $(ratio "$(get restic restore 3)" "$(get kura restore 3)")x, vs rustic $(ratio "$(get rustic restore 3)" "$(get kura restore 3)")x, vs Borg $(ratio "$(get borg restore 3)" "$(get kura restore 3)")x"
  echo "- kura peak RSS: ${SIZE_GIB} GiB image $(get kura full 4) MiB, ${BIG_GIB} GiB image (same data) $(get kura full-${BIG_GIB}G 4) MiB in $(get kura full-${BIG_GIB}G 3) s"
  echo "- source image: ${SIZE_GIB} GiB, $(mib "$SRC_ALLOC") MiB allocated; machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  sed 's/^/- catalog: /' "$W/catalog.txt"
  echo "- versions: $("$KURA" --version), $(restic version | cut -d' ' -f1-2), $("$RUSTIC" --version), $(borg --version), $(zstd --version | head -c 60)"
} | tee "$W/results.md"
