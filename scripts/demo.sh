#!/usr/bin/env bash
# The Rackline demo: installs dependencies, builds everything (release) and runs the
# rackline-lab demo binary (two racks behind a spine, two nodes per rack, a pod per node,
# and a ping matrix).
# Arguments go to rackline-lab, e.g. `scripts/demo.sh --keep` (Ctrl-C tears it down),
# `--nodes 3 --pods-per-node 4`. Needs root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bash scripts/install-deps.sh
cargo build --release --workspace --bins
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/rackline-lab" "$@"
