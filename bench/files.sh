#!/usr/bin/env bash
# File-level restore at scale: a GPT disk of SIZE (default 8G) whose ext4 partition holds a
# 10 MiB file and 1 GiB of other data; backed up, the source deleted, then one file is
# listed and restored from the point. Prints what was fetched from the vault and how long it
# took (docs/benchmarks.md).
#
#   bench/files.sh [SIZE]
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-8G}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kura/target}"
cargo build --release -q -p kura
kura="$CARGO_TARGET_DIR/release/kura"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/tree/srv"
head -c $((10 << 20)) /dev/urandom > "$dir/tree/srv/report.bin"
for i in $(seq 1 16); do head -c $((64 << 20)) /dev/urandom > "$dir/tree/srv/bulk$i.bin"; done
truncate -s "$size" "$dir/disk.raw"
printf 'label: gpt\nstart=2048\n' | sfdisk -q "$dir/disk.raw"
part_bytes=$(( $(stat -c %s "$dir/disk.raw") - (1 << 20) - (1 << 20) ))
mkfs.ext4 -q -F -E offset=1048576 -d "$dir/tree" "$dir/disk.raw" "$((part_bytes / 1024))k"
export KURA_HOME="$dir/home"
"$kura" vault create v --no-encryption >/dev/null
"$kura" item protect disk "$dir/disk.raw" --vault v --name big >/dev/null
t0=$(date +%s.%N); "$kura" backup now big >/dev/null; t1=$(date +%s.%N)
echo "backup of the $size disk: $(echo "$t1 - $t0" | bc) s"
rm "$dir/disk.raw"
mkdir "$dir/out"
t0=$(date +%s.%N)
"$kura" --output json files ls big /srv > "$dir/ls.json"
t1=$(date +%s.%N)
"$kura" --output json files get big /srv/report.bin --to "$dir/out" > "$dir/get.json"
t2=$(date +%s.%N)
cmp "$dir/out/report.bin" "$dir/tree/srv/report.bin"
python3 - "$dir" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" <<'PY'
import json, sys
d, ls_s, get_s = sys.argv[1], sys.argv[2], sys.argv[3]
ls = json.load(open(f"{d}/ls.json")); get = json.load(open(f"{d}/get.json"))
mib = lambda b: b / (1 << 20)
print(f"files ls /srv: {ls_s} s, fetched {ls['fetched']['chunks']} chunks ({mib(ls['fetched']['bytes']):.1f} MiB)")
print(f"files get /srv/report.bin (10 MiB): {get_s} s, fetched {get['fetched']['chunks']} chunks ({mib(get['fetched']['bytes']):.1f} MiB), bit-exact")
PY
