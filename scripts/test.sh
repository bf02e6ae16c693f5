#!/usr/bin/env bash
# Everything CI checks: dependencies, stale-lab sweep, fmt, clippy, docs, build of all binaries (the
# netns lab tests execute them), then the tests (cargo-nextest when installed, with the
# timeouts of .config/nextest.toml; cargo test otherwise), and a final sweep.
# Runs every step it can and exits non-zero if any failed. Needs root (the lab tests create
# network namespaces).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# A CI run builds once from a clean clone: incremental caches would only cost disk (gigabytes
# next to the target dirs). A developer re-running this script may set CARGO_INCREMENTAL=1.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

failed=()
step() {
    local name=$1
    shift
    echo "==> $name: $*"
    local start=$SECONDS
    if "$@"; then
        echo "<== $name ok ($((SECONDS - start))s)"
    else
        local rc=$?
        echo "<== $name FAILED (exit $rc, $((SECONDS - start))s)"
        failed+=("$name")
        return "$rc"
    fi
}

sweep() { bash scripts/lab-sweep.sh || echo "lab-sweep failed" >&2; }
trap sweep EXIT

# A clean run's build outputs take about 5.5 GB (target dirs and the fuzz build); a full disk
# shows up as a compiler error deep in some step, so say up front how much room there is.
disk_free() { df -Pk "$ROOT" | awk 'NR == 2 { printf "%.1f", $4 / 1048576 }'; }
echo "disk: $(disk_free) GiB free for $ROOT"
if awk -v f="$(disk_free)" 'BEGIN { exit !(f < 8) }'; then
    echo "warning: less than 8 GiB free; a clean run may run out of space" >&2
fi

step install-deps bash scripts/install-deps.sh || exit 1
sweep
step fmt cargo fmt --all --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
# The code's own docs, private items included (they describe the internals): broken or
# ambiguous links and stray HTML in doc comments fail like lints.
step doc env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items
# The VLAN test boots a VM with static rackline + rackline-ipamd (tests/netns/src/vm), and the
# OCI image holds every binary statically linked: built here once, in their own target dir and
# lean profile, so the tests only check they are up to date and their time is visible.
static_build() {
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile vm \
        --target x86_64-unknown-linux-gnu -p rackline-cni -p rackline-ipamd -p rackline-netmaster -p rackline-ctl \
        --target-dir target/static
}
if step build cargo build --workspace --bins; then
    # Not a gate: if it fails, the VLAN test fails (it retries the build) and says why.
    step static-build static_build
    # The image from those binaries (podman, FROM scratch); the install and runtime tests use it.
    step image bash scripts/build-image.sh --profile vm
    if cargo nextest --version >/dev/null 2>&1; then
        step tests cargo nextest run --workspace --no-fail-fast
    else
        step tests cargo test --workspace --no-fail-fast
    fi
else
    echo "skipping tests: the build failed"
    failed+=("tests (not run)")
fi

# Fuzzing the plugin's input boundary (cni-plugin/fuzz, its own workspace): build every target
# once, then run each for FUZZ_SECONDS (default 15) from the seeds in fuzz/corpus (new inputs go
# to fuzz/target/corpus, outside git). cargo-fuzz is installed once; on the stable toolchain its
# nightly-only flags need RUSTC_BOOTSTRAP=1. No sanitizer: the fuzzed code is safe Rust (bounds
# and overflow checks stay on), and ASan would double the build of this CI step.
fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked || return 1
    fi
    local secs=${FUZZ_SECONDS:-15}
    (
        cd cni-plugin || exit 1
        export RUSTC_BOOTSTRAP=1
        cargo fuzz build -s none || exit 1
        for t in $(cargo fuzz list); do
            mkdir -p "fuzz/target/corpus/$t"
            echo "--- fuzz $t for ${secs}s"
            cargo fuzz run "$t" -s none "fuzz/target/corpus/$t" "fuzz/corpus/$t" -- \
                -max_total_time="$secs" -close_fd_mask=2 -print_final_stats=1 2>&1 |
                grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec)|ERROR|panicked|Test unit written'
            [[ ${PIPESTATUS[0]} == 0 ]] || exit 1
        done
    )
}
step fuzz fuzz

echo "disk: $(disk_free) GiB free at the end"
if ((${#failed[@]} > 0)); then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all checks passed"
