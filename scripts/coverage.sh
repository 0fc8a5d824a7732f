#!/usr/bin/env bash
# Line coverage of rtmp-proto and rtmp-relay (issue 7, QR-001: above 80% each), measured with
# cargo-llvm-cov over the whole workspace test suite. ffmpeg on PATH lets the interop tests run
# too (scripts/test.sh installs it).
#
#   ./scripts/coverage.sh            # per-file table and per-crate totals
#   ./scripts/coverage.sh --html     # also target/llvm-cov/html/index.html
#
# Needs: rustup component add llvm-tools-preview; cargo install cargo-llvm-cov
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo llvm-cov --version >/dev/null 2>&1; then
    echo "cargo-llvm-cov is missing: rustup component add llvm-tools-preview && cargo install cargo-llvm-cov" >&2
    exit 1
fi

summary="${CARGO_TARGET_DIR:-target}/llvm-cov-summary.txt"
mkdir -p "$(dirname "$summary")"

cargo llvm-cov clean --workspace
# One instrumented run of every test; the reports below read its profile data.
cargo llvm-cov --workspace --no-report
# `report` covers only the packages it is given (by default the root one), so name them all.
packages=(-p rtmp-relay -p rtmp-proto -p rtmp-loadtest)
cargo llvm-cov report --summary-only "${packages[@]}" | tee "$summary"
if [ "${1:-}" = "--html" ]; then
    cargo llvm-cov report --html "${packages[@]}"
    echo "HTML report: ${CARGO_TARGET_DIR:-target}/llvm-cov/html/index.html"
fi

# Per-crate line totals over each crate's src/ (test files under tests/ are not counted).
awk -v root="$PWD/" '
    $1 ~ /\.rs$/ {
        file = $1; sub("^" root, "", file)
        crate = file ~ /^proto\/src\// ? "rtmp-proto" : (file ~ /^src\// ? "rtmp-relay" : (file ~ /^loadtest\/src\// ? "rtmp-loadtest" : ""))
        if (crate == "") next
        # Columns: regions, missed, cover, functions, missed, executed, lines, missed, cover, ...
        lines[crate] += $8; missed[crate] += $9
    }
    END {
        for (c in lines) printf "%-14s lines %6d  missed %5d  covered %5.1f%%\n", c, lines[c], missed[c], 100 * (lines[c] - missed[c]) / lines[c]
    }' "$summary" | sort
