#!/usr/bin/env bash
# kura vs restic backing up to, and restoring from, an S3 server on loopback, in one run.
#
#   bench/s3.sh [WORKDIR]        (root or sudo; needs ~8 GiB free in WORKDIR)
#
# Builds kura (release), installs restic and GNU time from Debian and the pinned s3s-fs
# (scripts/get-object-stores), makes a sparse raw image (real binaries and text from /usr,
# random data, holes), and times for each tool a full backup to S3, an incremental after 1%
# scattered 4 KiB writes, and a restore from S3; kura's restore from a local vault of the
# same data too. Then the same for a file tree of small files (/usr/share, /usr/include). s3s-fs logs every request it serves, so requests are counted by the server,
# the same way for both tools. Results: a Markdown table, also in WORKDIR/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-/var/tmp/kura-bench-s3}"
SIZE_GIB="${BENCH_SIZE_GIB:-2}"

need=()
for p in restic time; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
STORES="${KURA_OBJECT_STORES:-$HOME/.cache/kura/object-stores}"
scripts/get-object-stores "$STORES"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kura/target}"
cargo build --release --locked -p kura -q
KURA="$CARGO_TARGET_DIR/release/kura"

rm -rf "$W"; mkdir -p "$W/s3/kura" "$W/s3/restic"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=s3s::service=debug "$STORES/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$PORT" \
  --access-key bench-key --secret-key bench-secret "$W/s3" > "$W/s3s.log" 2>&1 &
S3S=$!
trap 'kill $S3S 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" RESTIC_PASSWORD=bench

# --- the image (the layout of bench/run.sh, smaller) ---------------------------------------
tar cf - /usr/lib /usr/bin /usr/share 2>/dev/null | head -c $((1024 << 20)) > "$W/usr.tar" || true
head -c $((512 << 20)) /dev/urandom > "$W/random.bin"
truncate -s "${SIZE_GIB}G" "$W/disk.raw"
dd if="$W/usr.tar" of="$W/disk.raw" bs=1M count=768 conv=notrunc,sparse status=none
dd if="$W/random.bin" of="$W/disk.raw" bs=1M seek=1024 conv=notrunc status=none
rm -f "$W/usr.tar" "$W/random.bin"
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

# --- measurement: wall time, peak RSS, and the requests the server saw ---------------------
RES="$W/results.tsv"; : > "$RES"
served() { grep -o 'req: Request { method: [A-Z]*' "$W/s3s.log" | awk '{print $NF}' | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}'; }
count() { grep -c 'req: Request { method: ' "$W/s3s.log" || true; }
measure() { # LABEL TOOL CMD...
  local label=$1 tool=$2; shift 2
  sync
  local before; before=$(count)
  /usr/bin/time -v -o "$W/time.txt" "$@" > "$W/out.txt" 2>&1 || { cat "$W/out.txt"; echo "FAILED: $*"; exit 1; }
  local wall rss reqs
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$W/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {print int($2/1024)}' "$W/time.txt")
  reqs=$(( $(count) - before ))
  printf '%s\t%s\t%s\t%s\t%s\n' "$tool" "$label" "$wall" "$rss" "$reqs" | tee -a "$RES"
}

# --- kura, on S3 and on a local vault --------------------------------------------------------
export KURA_HOME="$W/kura-home"
"$KURA" vault create s3 --location s3://kura/bench >/dev/null
"$KURA" vault create local >/dev/null
cp --sparse=always "$W/disk.raw" "$W/kura.raw"
"$KURA" item protect disk "$W/kura.raw" --vault s3 --name disk >/dev/null
measure full kura "$KURA" backup now disk
KURA_CHUNKS=$(find "$W/s3/kura/bench/chunks" -type f | wc -l)
churn "$W/kura.raw"
measure incremental kura "$KURA" backup now disk
measure restore kura "$KURA" restore disk disk --rp latest --to "$W/kura-restored.raw"
cmp "$W/kura.raw" "$W/kura-restored.raw"; rm -f "$W/kura-restored.raw"
cp --sparse=always "$W/kura.raw" "$W/kura-local.raw"
"$KURA" item protect disk "$W/kura-local.raw" --vault local --name local >/dev/null
"$KURA" backup now local >/dev/null
measure restore-local kura "$KURA" restore disk local --rp latest --to "$W/kura-restored.raw"
cmp "$W/kura-local.raw" "$W/kura-restored.raw"; rm -f "$W/kura-restored.raw"
KURA_SERVED=$(served)

# --- restic ----------------------------------------------------------------------------------
R="s3:http://127.0.0.1:$PORT/restic/bench"
restic -r "$R" init -q
cp --sparse=always "$W/disk.raw" "$W/restic.raw"
measure full restic restic -r "$R" backup -q "$W/restic.raw"
churn "$W/restic.raw"
measure incremental restic restic -r "$R" backup -q "$W/restic.raw"
mkdir -p "$W/restic-out"
SPARSE=""; restic restore --help | grep -q -- --sparse && SPARSE="--sparse"
measure restore restic restic -r "$R" restore latest $SPARSE --target "$W/restic-out" -q
cmp "$W/restic.raw" "$W/restic-out/$W/restic.raw"; rm -rf "$W/restic-out"

# --- a file tree of small files: where one object per chunk would cost a request each ---------
mkdir -p "$W/tree"
cp -a /usr/share /usr/include "$W/tree/"
TREE_FILES=$(find "$W/tree" -type f | wc -l)
TREE_MIB=$(( $(du -sb "$W/tree" | cut -f1) >> 20 ))
"$KURA" item protect files "$W/tree" --vault s3 --name tree >/dev/null
measure tree-full kura "$KURA" backup now tree
mkdir -p "$W/kura-tree-out"
measure tree-restore kura "$KURA" restore files tree --rp latest --to "$W/kura-tree-out"
diff -r --no-dereference "$W/tree" "$W/kura-tree-out" >/dev/null
rm -rf "$W/kura-tree-out"
measure tree-full restic restic -r "$R" backup -q "$W/tree"
mkdir -p "$W/restic-tree-out"
measure tree-restore restic restic -r "$R" restore latest --path "$W/tree" --target "$W/restic-tree-out" -q
diff -r --no-dereference "$W/tree" "$W/restic-tree-out/$W/tree" >/dev/null
rm -rf "$W/restic-tree-out"

# --- report ----------------------------------------------------------------------------------
get() { awk -F'\t' -v t="$1" -v l="$2" -v c="$3" '$1==t && $2==l {print $c}' "$RES"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
GIB_DATA=$(awk 'BEGIN { printf "%.2f", 1280 / 1024 }')
{
  echo "| tool | full (s) | requests | incremental (s) | requests | restore from S3 (s) | requests | peak RSS full / restore (MiB) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  for t in kura restic; do
    echo "| $t | $(get $t full 3) | $(get $t full 5) | $(get $t incremental 3) | $(get $t incremental 5) | $(get $t restore 3) | $(get $t restore 5) | $(get $t full 4) / $(get $t restore 4) |"
  done
  echo
  echo
  echo "File tree ($TREE_FILES files, $TREE_MIB MiB: /usr/share and /usr/include):"
  echo
  echo "| tool | first backup (s) | requests | requests per GiB | restore from S3 (s) | requests | peak RSS backup / restore (MiB) |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  for t in kura restic; do
    echo "| $t | $(get $t tree-full 3) | $(get $t tree-full 5) | $(ratio "$(get $t tree-full 5)" "$(awk -v m="$TREE_MIB" 'BEGIN { print m / 1024 }')") | $(get $t tree-restore 3) | $(get $t tree-restore 5) | $(get $t tree-full 4) / $(get $t tree-restore 4) |"
  done
  echo
  echo "- kura's full backup: $(get kura full 5) requests for $KURA_CHUNKS new 4 MiB chunks ($(ratio "$(get kura full 5)" "$KURA_CHUNKS") per chunk); requests per GiB of data (${GIB_DATA} GiB): kura $(ratio "$(get kura full 5)" "$GIB_DATA"), restic $(ratio "$(get restic full 5)" "$GIB_DATA")"
  echo "- kura restore from S3 / from a local vault: $(get kura restore 3) / $(get kura restore-local 3) s = $(ratio "$(get kura restore 3)" "$(get kura restore-local 3)")x"
  echo "- speed-up vs restic: full $(ratio "$(get restic full 3)" "$(get kura full 3)")x, restore $(ratio "$(get restic restore 3)" "$(get kura restore 3)")x"
  echo "- requests kura's jobs sent, by method (server's count): $KURA_SERVED"
  echo "- image: ${SIZE_GIB} GiB, 768 MiB of /usr and 512 MiB random, the rest holes; server: s3s-fs on loopback (request logging on); machine: $(nproc) cores; versions: $("$KURA" --version), $(restic version | cut -d' ' -f1-2)"
} | tee "$W/results.md"
