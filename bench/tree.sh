#!/usr/bin/env bash
# File-tree backup, side by side with restic and Borg on the same tree in one run: a copy of
# /usr/share, /usr/include and /usr/bin plus generated files (about 100,000 files), then
# first backup, a backup after changing 1% of the files, a no-change backup, a restore of
# the whole tree and of one file, and the stored size. Every tool encrypts; each keeps its
# own default compression. Prints a table (docs/benchmarks.md).
#
#   bench/tree.sh [GENERATED_FILES]      (default 48000; needs restic and borgbackup)
set -euo pipefail
cd "$(dirname "$0")/.."
gen="${1:-48000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kura/target}"
cargo build --release -q -p kura
kura="$CARGO_TARGET_DIR/release/kura"
command -v restic >/dev/null && command -v borg >/dev/null || {
    echo "bench/tree.sh needs restic and borg: apt-get install restic borgbackup" >&2
    exit 1
}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
src="$dir/tree"
mkdir -p "$src/gen"
cp -a /usr/share /usr/include /usr/bin "$src/"
python3 - "$src/gen" "$gen" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
for i in range(n):
    d = os.path.join(root, f"{i % 200:03d}", f"{(i // 200) % 50:02d}")
    os.makedirs(d, exist_ok=True)
    size = int(rng.paretovariate(1.2) * 2000)
    text = b" ".join(rng.choice(words) for _ in range(size // 6 + 1))[:size]
    with open(os.path.join(d, f"f{i}.txt"), "wb") as f:
        f.write(text)
for i in range(8):
    with open(os.path.join(root, f"big{i}.bin"), "wb") as f:
        f.write(os.urandom(32 << 20))
PY
files=$(find "$src" -type f | wc -l)
bytes=$(du -sb "$src" | cut -f1)
one="gen/007/07/f1407.txt"
echo "tree: $files files, $((bytes >> 20)) MiB; $(nproc) cores"

export KURA_PASSPHRASE=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export KURA_HOME="$dir/kura-home" RESTIC_REPOSITORY="$dir/restic" RESTIC_CACHE_DIR="$dir/restic-cache"
export BORG_BASE_DIR="$dir/borg-base" BORG_REPO="$dir/borg"
"$kura" vault create v --path "$dir/kura-vault" >/dev/null
"$kura" item protect files "$src" --vault v --name tree >/dev/null
restic init -q
borg init -e repokey >/dev/null

# timed LABEL TOOL CMD...: wall seconds and peak RSS of CMD, appended to the results.
results="$dir/results"
timed() {
    local label=$1 tool=$2
    shift 2
    /usr/bin/time -f "%e %M" -o "$dir/time" "$@" >/dev/null 2>"$dir/err" || {
        cat "$dir/err" >&2
        exit 1
    }
    read -r secs kb <"$dir/time"
    echo "$label $tool $secs $((kb / 1024))" | tee -a "$results" >&2
}
backup_all() {
    timed "$1" kura "$kura" backup now tree
    timed "$1" restic restic backup -q "$src"
    timed "$1" borg borg create "::b$2" "$src"
}
sync
backup_all first 1
# 1% of the files change (a line appended), spread over the tree.
find "$src" -type f | awk 'NR % 100 == 0' | while read -r f; do echo "changed" >>"$f"; done
backup_all "1%-changed" 2
backup_all no-change 3

for tool in kura restic borg; do mkdir -p "$dir/out-$tool" "$dir/one-$tool"; done
timed restore-all kura "$kura" restore files tree --rp latest --to "$dir/out-kura"
timed restore-all restic restic restore latest -q --target "$dir/out-restic"
(cd "$dir/out-borg" && timed restore-all borg borg extract ::b3)
timed restore-one kura "$kura" restore files tree --rp latest --path "/$one" --to "$dir/one-kura"
timed restore-one restic restic restore latest -q --target "$dir/one-restic" --include "$src/$one"
(cd "$dir/one-borg" && timed restore-one borg borg extract ::b3 "${src#/}/$one")
diff -r --no-dereference "$src" "$dir/out-kura" >/dev/null || { echo "kura's restore differs from the tree" >&2; exit 1; }
cmp "$src/$one" "$dir/one-kura/$(basename "$one")"
echo "stored kura $(du -sb "$dir/kura-vault" | cut -f1)" >>"$results"
echo "stored restic $(du -sb "$dir/restic" | cut -f1)" >>"$results"
echo "stored borg $(du -sb "$dir/borg" | cut -f1)" >>"$results"

python3 - "$results" <<'PY'
import sys
rows, stored = {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] == "stored":
        stored[f[1]] = int(f[2])
    else:
        rows.setdefault(f[0], {})[f[1]] = (float(f[2]), int(f[3]))
tools = ["kura", "restic", "borg"]
print(f"| step | {' | '.join(tools)} | restic / kura |")
print("|---|" + "---:|" * (len(tools) + 1))
for step, r in rows.items():
    cells = [f"{r[t][0]:.2f} s ({r[t][1]} MiB)" for t in tools]
    print(f"| {step} | {' | '.join(cells)} | {r['restic'][0] / max(r['kura'][0], 0.01):.1f}× |")
cells = [f"{stored[t] / (1 << 20):.0f} MiB" for t in tools]
print(f"| stored | {' | '.join(cells)} | {stored['restic'] / stored['kura']:.2f} |")
PY
