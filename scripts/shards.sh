#!/usr/bin/env bash
# The same load against rtmp-relay with 1 and with 2 shards (not part of CI; wants an otherwise
# idle machine). The relay runs on CPU 0 (1 shard) or CPUs 0-1 (2 shards), the load generator on
# LOADGEN_CPU. Prints one line per run: shards, load, server CPU per player-second, latency.
#
# Environment: RUNS [2] rounds of both shard counts; LOADGEN_CPU [1]; PORT [19380].
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-2}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT=${PORT:-19380}
cargo build --release -q -p rtmp-relay -p rtmp-loadtest --bins
out=$(mktemp -d)
server=""
trap '[[ -n $server ]] && kill "$server" 2>/dev/null; rm -rf "$out"' EXIT
loads=("W1-300:-p 1 -n 300" "W2:-p 50 -n 4 --bitrate 500k")
for _ in $(seq "$RUNS"); do
    for shards in 1 2; do
        for load in "${loads[@]}"; do
            name=${load%%:*}
            read -r -a args <<<"${load#*:}"
            cpus=0
            [[ $shards == 2 ]] && cpus=0,1
            taskset -c "$cpus" target/release/rtmp-relay --listen "127.0.0.1:$PORT" \
                --shards "$shards" --no-http --max-connections-per-ip 1000000 \
                --max-handshaking-per-ip 1000000 --log-level warn >/dev/null 2>&1 &
            server=$!
            sleep 0.5
            taskset -c "$LOADGEN_CPU" target/release/rtmp-loadtest "rtmp://127.0.0.1:$PORT/live" \
                --cpus "$LOADGEN_CPU" --server-pid "$server" -q "${args[@]}" \
                --ramp 1 --warmup 3 --duration 10 >"$out/run.txt" 2>&1 || true
            kill "$server" 2>/dev/null || true
            wait "$server" 2>/dev/null || true
            server=""
            latency=$(awk '/relay latency/ {print "p50", $5, "p99", $7, "p99.9", $8}' "$out/run.txt")
            cpu=$(awk '/^server / {print $11, "µs/player-s"}' "$out/run.txt")
            echo "shards=$shards $name: $cpu, latency ms $latency"
        done
    done
done
