#!/usr/bin/env bash
# The web UI's pages at scale: the API calls of the dashboard, the item list and an item
# page, timed on a real server socket over a catalog of ITEMS items with POINTS recovery
# points each (default 1,000 and 100: 100,000 points). Prints a Markdown table (see
# docs/benchmarks.md).
#
#   bench/ui.sh [ITEMS] [POINTS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kura/target}"
cargo build --release -q -p kura-server --example ui_bench
"$CARGO_TARGET_DIR/release/examples/ui_bench" "$@"
