#!/usr/bin/env bash
# Soak: 10 streams x 10 players with churn for SECONDS (default 600) against a fresh
# rtmp-relay, sampling the server's RSS, open descriptors and connections every INTERVAL
# seconds. Not part of CI. Writes OUT/samples.csv (elapsed_s, rss_kib, fds, connections_open)
# and OUT/loadtest.txt / loadtest.json (latency per interval and in total), then prints the
# RSS trend: a server that leaks shows it growing with time while the load stays the same.
#
# Environment: SECONDS_TOTAL [600], INTERVAL [10], CHURN [0.3] (fraction of players that leave
# and rejoin every CHURN_PERIOD [5] s), OUT [target/soak/<date>], PORT [19390], HTTP [19391].
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL=${SECONDS_TOTAL:-600}
INTERVAL=${INTERVAL:-10}
CHURN=${CHURN:-0.3}
CHURN_PERIOD=${CHURN_PERIOD:-5}
PORT=${PORT:-19390}
HTTP=${HTTP:-19391}
OUT=${OUT:-"target/soak/$(date +%Y%m%d-%H%M%S)"}
mkdir -p "$OUT"
cargo build --release -q -p rtmp-relay -p rtmp-loadtest --bins

# Every player comes from 127.0.0.1: lift the per-IP limits (as compare.sh does).
target/release/rtmp-relay --listen "127.0.0.1:$PORT" --http "127.0.0.1:$HTTP" \
    --max-connections-per-ip 1000000 --max-handshaking-per-ip 1000000 --log-level warn >"$OUT/server.log" 2>&1 &
server=$!
loadgen=""
trap 'kill $server $loadgen 2>/dev/null || true' EXIT
sleep 1

target/release/rtmp-loadtest "rtmp://127.0.0.1:$PORT/live" -p 10 -n 10 --bitrate 1M \
    --churn "$CHURN" --churn-period "$CHURN_PERIOD" --warmup 5 --duration "$SECONDS_TOTAL" \
    --interval "$INTERVAL" --server-pid "$server" --json "$OUT/loadtest.json" \
    >"$OUT/loadtest.txt" 2>&1 &
loadgen=$!

echo "elapsed_s,rss_kib,fds,connections_open" >"$OUT/samples.csv"
start=$(date +%s)
while kill -0 "$loadgen" 2>/dev/null; do
    now=$(($(date +%s) - start))
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server/status")
    fds=$(ls "/proc/$server/fd" | wc -l)
    open=$(curl -s "http://127.0.0.1:$HTTP/metrics" \
        | awk '/^rtmp_relay_connections_open[{ ]/ {sum += $NF} END {print sum + 0}')
    echo "$now,$rss,$fds,$open" >>"$OUT/samples.csv"
    sleep "$INTERVAL"
done
wait "$loadgen" || true

# After the load: everything closed, memory given back?
sleep 2
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server/status")
fds=$(ls "/proc/$server/fd" | wc -l)
echo "after,$rss,$fds,0" >>"$OUT/samples.csv"
grep -E "relay latency|loss|errors|server  |players  " "$OUT/loadtest.txt" || true
python3 - "$OUT/samples.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["elapsed_s"] != "after"]
steady = [r for r in rows if int(r["elapsed_s"]) >= 60] or rows
xs = [int(r["elapsed_s"]) for r in steady]
ys = [int(r["rss_kib"]) for r in steady]
n = len(xs)
mx, my = sum(xs) / n, sum(ys) / n
var = sum((x - mx) ** 2 for x in xs)
slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
print(f"RSS from 60 s on: min {min(ys)} KiB, max {max(ys)} KiB, trend {slope * 60:+.1f} KiB per minute over {n} samples")
fds = [int(r["fds"]) for r in steady]
print(f"open descriptors from 60 s on: min {min(fds)}, max {max(fds)}")
PY
echo "samples in $OUT/samples.csv"
