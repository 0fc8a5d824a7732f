#!/usr/bin/env bash
# Installs what the tests need (ffmpeg for the interop tests) and runs every test, plus the
# format and lint gates. Works on a fresh Debian machine with only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

# Interop tests run real clients: ffmpeg/ffprobe, and GStreamer (rtmp2sink from the bad
# plugins, flvmux from the good, x264enc from the ugly, voaacenc from the bad).
missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
if ! command -v gst-launch-1.0 >/dev/null 2>&1 \
    || ! gst-inspect-1.0 rtmp2sink >/dev/null 2>&1 \
    || ! gst-inspect-1.0 x264enc >/dev/null 2>&1; then
    missing+=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
        gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly)
fi
# tests/operations.rs verifies the systemd unit with systemd-analyze: one Debian package,
# a few seconds to install, so it is installed rather than the check skipped.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]} (interop and unit tests)"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The coverage script (issue 18). A full instrumented run roughly doubles the test time, so
# every run checks only what breaks it without tests failing: that it parses and that its filter
# of unreadable profiles works (a fixture, seconds). RTMP_RELAY_COVERAGE=1 adds the full run
# (README, Coverage).
echo "== coverage script check"
bash -n scripts/coverage.sh
llvm_tools=yes
if command -v rustup >/dev/null 2>&1 && [[ $(rustup component list --installed) != *llvm-tools* ]]; then
    # rustup's own servers, not a package registry: a machine that cannot reach them cannot
    # run coverage at all, so it is told so instead of failing the tests.
    rustup component add llvm-tools-preview || llvm_tools=no
fi
if [ "$llvm_tools" = yes ]; then
    ./scripts/coverage.sh --self-test
else
    echo "llvm-tools-preview could not be installed: coverage self-test not run"
fi
echo "== cargo test"
cargo test --workspace --locked
if [ "${RTMP_RELAY_COVERAGE:-0}" = 1 ]; then
    echo "== coverage (RTMP_RELAY_COVERAGE=1)"
    cargo llvm-cov --version >/dev/null 2>&1 || cargo install cargo-llvm-cov --locked
    ./scripts/coverage.sh
fi
# The Debian package needs cargo-deb, which `cargo install` compiles from source in about 12
# minutes on this 2-core machine, plus a release build: too much for every run.
# RTMP_RELAY_PACKAGE=1 builds the package and checks its contents (scripts/package.sh);
# tests/operations.rs checks the package's sources on every run.
if [ "${RTMP_RELAY_PACKAGE:-0}" = 1 ]; then
    echo "== Debian package (RTMP_RELAY_PACKAGE=1)"
    ./scripts/package.sh
fi
