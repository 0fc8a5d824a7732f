#!/usr/bin/env bash
# Line coverage of rtmp-proto and rtmp-relay (issue 7, QR-001: above 80% each), measured with
# cargo-llvm-cov over the whole workspace test suite. ffmpeg on PATH lets the interop tests run
# too (scripts/test.sh installs it).
#
#   ./scripts/coverage.sh              # per-file table and per-crate totals
#   ./scripts/coverage.sh --html       # also target/llvm-cov/html/index.html
#   ./scripts/coverage.sh --self-test  # only check the profile filter below on a fixture
#                                      # (a few seconds; scripts/test.sh runs it)
#
# Needs: rustup component add llvm-tools-preview; cargo install cargo-llvm-cov --locked
# (--self-test needs only llvm-tools-preview).
set -euo pipefail
cd "$(dirname "$0")/.."

# A tool of the llvm-tools-preview component: the same llvm-profdata cargo-llvm-cov uses, for
# the LLVM version rustc instruments with.
llvm_tool() {
    local host
    host=$(rustc -vV | sed -n 's/^host: //p')
    echo "$(rustc --print sysroot)/lib/rustlib/$host/bin/$1"
}

# set_aside_bad_profiles DIR ASIDE [BINARY...]
#
# Moves every DIR/*.profraw that llvm-profdata cannot read into ASIDE and names it on stderr,
# with the BINARY that wrote it when one's build ID is in the profile's header (a truncated
# profile keeps its header). One bad file makes `llvm-profdata merge`, and so the whole report,
# fail; without it the report lacks only what that one process ran. Prints nothing when every
# profile is good; returns 0 either way.
set_aside_bad_profiles() {
    local dir=$1 aside=$2
    shift 2
    local profdata readobj
    profdata=$(llvm_tool llvm-profdata)
    readobj=$(llvm_tool llvm-readobj)
    local file name error header binary id writer bad=0
    for file in "$dir"/*.profraw; do
        [ -e "$file" ] || continue
        if error=$("$profdata" show "$file" 2>&1 >/dev/null); then
            continue
        fi
        bad=$((bad + 1))
        name=${file##*/}
        mkdir -p "$aside"
        mv "$file" "$aside/$name"
        header=$(od -An -v -tx1 -N 4096 "$aside/$name" | tr -d ' \n')
        writer="an unknown binary"
        for binary in "$@"; do
            id=$("$readobj" --notes "$binary" 2>/dev/null | sed -n 's/^ *Build ID: *//p') || id=""
            id=${id%%$'\n'*}
            if [ -n "$id" ] && [[ $header == *"$id"* ]]; then
                writer=${binary##*/}
                break
            fi
        done
        echo "coverage: set aside $name ($(wc -c <"$aside/$name") bytes, from $writer): ${error##*: }" >&2
    done
    if [ "$bad" -gt 0 ]; then
        echo "coverage: $bad unreadable profile(s) moved to $aside and left out of the report." \
            "A process that was cut short while writing its profile at exit (killed, or out of" \
            "file size or disk) leaves one; what only that process ran counts as not covered." >&2
    fi
}

# The executables of the instrumented build: the candidates set_aside_bad_profiles names.
instrumented_binaries() {
    find "$1/debug" -maxdepth 2 -type f -perm -u+x ! -name '*.so' ! -path '*/build/*' 2>/dev/null
}

# --self-test: an instrumented fixture writes two good profiles; a truncated copy of one (as a
# file size limit or a kill mid-write leaves it) and an empty one (killed right after opening
# it) must be moved aside and named, and what is left must merge.
self_test() {
    local profdata tmp
    profdata=$(llvm_tool llvm-profdata)
    if [ ! -x "$profdata" ]; then
        echo "coverage self-test: $profdata is missing: rustup component add llvm-tools-preview" >&2
        return 1
    fi
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064 # expand $tmp now: the self-test exits right after
    trap "rm -rf '$tmp'" EXIT
    mkdir "$tmp/profiles"
    echo 'fn main() { if std::env::args().count() > 1 { println!("an argument"); } }' >"$tmp/fixture.rs"
    rustc -C instrument-coverage -o "$tmp/fixture" "$tmp/fixture.rs"
    LLVM_PROFILE_FILE="$tmp/profiles/fixture-%p-%m.profraw" "$tmp/fixture"
    LLVM_PROFILE_FILE="$tmp/profiles/fixture-%p-%m.profraw" "$tmp/fixture" arg >/dev/null
    local good=("$tmp"/profiles/*.profraw)
    [ ${#good[@]} -eq 2 ] || { echo "coverage self-test: expected 2 profiles, got ${#good[@]}" >&2; return 1; }
    head -c "$(($(wc -c <"${good[0]}") - 80))" "${good[0]}" >"$tmp/profiles/truncated.profraw"
    : >"$tmp/profiles/empty.profraw"

    local said
    said=$(set_aside_bad_profiles "$tmp/profiles" "$tmp/aside" "$tmp/fixture" 2>&1)
    local failed=0
    check() {
        if ! eval "$1"; then
            echo "coverage self-test: failed: $1" >&2
            failed=1
        fi
    }
    check '[ -e "$tmp/aside/truncated.profraw" ] && [ -e "$tmp/aside/empty.profraw" ]'
    check '[ -e "${good[0]}" ] && [ -e "${good[1]}" ]'
    check '[[ $said == *"set aside truncated.profraw"*"from fixture"*"header is corrupt"* ]]'
    check '[[ $said == *"set aside empty.profraw"* ]]'
    check '"$profdata" merge -sparse "$tmp"/profiles/*.profraw -o "$tmp/merged.profdata"'
    check '[ -z "$(set_aside_bad_profiles "$tmp/profiles" "$tmp/aside" 2>&1)" ]'
    if [ "$failed" -ne 0 ]; then
        printf 'coverage self-test: set_aside_bad_profiles said:\n%s\n' "$said" >&2
        return 1
    fi
    echo "coverage self-test: ok (a truncated and an empty profile set aside and named, the rest merge)"
}

if [ "${1:-}" = "--self-test" ]; then
    self_test
    exit
fi

if ! cargo llvm-cov --version >/dev/null 2>&1; then
    echo "cargo-llvm-cov is missing: rustup component add llvm-tools-preview && cargo install cargo-llvm-cov --locked" >&2
    exit 1
fi

target="${CARGO_TARGET_DIR:-target}"
# Where the instrumented build and its profiles go: cargo-llvm-cov's default, made explicit so
# that the filter below looks in the same place.
export CARGO_LLVM_COV_TARGET_DIR="${CARGO_LLVM_COV_TARGET_DIR:-$target/llvm-cov-target}"
# One profile per process (%p), whatever cargo-llvm-cov's default becomes: tests start the
# relay binary and re-run themselves as child processes, and one of those cut short must spoil
# only its own file.
export LLVM_PROFILE_FILE_NAME="rtmp-relay-%p-%m.profraw"
summary="$target/llvm-cov-summary.txt"
aside="$target/llvm-cov-bad-profiles"
mkdir -p "$(dirname "$summary")"

cargo llvm-cov clean --workspace
rm -rf "$aside"
# One instrumented run of every test; the reports below read its profile data.
cargo llvm-cov --workspace --no-report
mapfile -t binaries < <(instrumented_binaries "$CARGO_LLVM_COV_TARGET_DIR")
set_aside_bad_profiles "$CARGO_LLVM_COV_TARGET_DIR" "$aside" "${binaries[@]}"
echo "coverage: processes that end on purpose by abort or SIGKILL write no profile at all (the" \
    "relay started with --debug-panic-on-key in tests/shutdown.rs, kill_9_child in" \
    "tests/recording.rs): expected; what only they ran counts as not covered." >&2
# `report` covers only the packages it is given (by default the root one), so name them all.
packages=(-p rtmp-relay -p rtmp-proto -p rtmp-loadtest)
cargo llvm-cov report --summary-only "${packages[@]}" | tee "$summary"
if [ "${1:-}" = "--html" ]; then
    cargo llvm-cov report --html "${packages[@]}"
    echo "HTML report: $target/llvm-cov/html/index.html"
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
