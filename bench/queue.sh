#!/usr/bin/env bash
# The scheduler and job queue under load: 100 and 1,000 items due at one slot, run through
# the queue at the default concurrency (the machine's cores) and one at a time (kura before
# the queue). Prints a Markdown table (see docs/benchmarks.md).
#
#   bench/queue.sh [N ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kura/target}"
cargo build --release -q -p kura-engine --example queue_bench
bin="$CARGO_TARGET_DIR/release/examples/queue_bench"
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(100 1000)
"$bin" "${sizes[@]}"
"$bin" "${sizes[@]}" --jobs 1 | tail -n +3
