#!/usr/bin/env bash
# Side-by-side comparison of rtmp-relay with peer RTMP servers and with the ideal fan-out floor.
# Not part of CI: it installs packages, takes minutes and wants an otherwise idle machine.
#
# Every server runs pinned to SERVER_CPU (rtmp-relay with --shards 1), the load generator
# (rtmp-loadtest, all its threads) pinned to LOADGEN_CPU, everything on 127.0.0.1. Each run
# starts a fresh server (so RSS per player means something), runs one workload with
# --server-pid and --json, and stops it. At the end scripts/compare/report.py prints one
# markdown table per workload with every server side by side, and the ratios.
#
# Servers (SERVERS, space-separated, in this order by default):
#   relay  rtmp-relay from this checkout (cargo build --release)
#   floor  ideal_fanout (loadtest/src/bin/ideal_fanout.rs): epoll, encode once, one sendmsg
#          per message per player; the physical floor
#   nginx  nginx + libnginx-mod-rtmp (Debian), one worker; the worker's CPU is sampled
#   nms    Node-Media-Server 4 (npm, in $SCRATCH/nms)
#   xiu    xiu (crates.io, cargo install into $SCRATCH/xiu; skipped if it does not build)
#
# Workloads (WORKLOADS):
#   w1     1 stream at 2.5 Mbit/s video + 128 kbit/s AAC, 30 fps, 2 s GOP, W1_PLAYERS players
#   w2     50 streams x 4 players at 500 kbit/s video + 128 kbit/s AAC
#   w3     join storm: W3_PLAYERS players joining within 1 s of a live stream (time to first frame)
#   w4     W4_PLAYERS players with --rcvbuf W4_RCVBUF, without and then with 10% stalled players
#
# Environment (defaults in brackets):
#   SERVERS ["relay floor nginx nms xiu"]  WORKLOADS ["w1 w4 w3 w2"]
#   W1_PLAYERS ["100 500 1000 2000"]  W3_PLAYERS [500]  W4_PLAYERS [500]  W4_RCVBUF [131072]
#   DURATION [10] measured seconds per run   WARMUP [3]   RAMP [1] W1/W4 join spread, seconds
#   SERVER_CPU [0]  LOADGEN_CPU [1]  OUT [target/compare/<date>] results
#   SCRATCH [/tmp/rtmp-compare] installs   INSTALL [1] 0: use only what is already installed
#   BUILD [1] 0: use the binaries already in target/release   XIU_BUILD_TIMEOUT [1500] seconds
#   PERF_SECS [0] >0: perf record -g the server for that many seconds during W1 at PERF_PLAYERS
#   PERF_PLAYERS [500] PERF_SERVERS ["relay"]
#
# Default run: 5 servers x 8 runs x ~16 s ≈ 11 minutes, plus installs and builds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/scripts/compare"
SERVERS=${SERVERS:-"relay floor nginx nms xiu"}
WORKLOADS=${WORKLOADS:-"w1 w4 w3 w2"}
W1_PLAYERS=${W1_PLAYERS:-"100 500 1000 2000"}
W3_PLAYERS=${W3_PLAYERS:-500}
W4_PLAYERS=${W4_PLAYERS:-500}
W4_RCVBUF=${W4_RCVBUF:-131072}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
RAMP=${RAMP:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
OUT=${OUT:-"$ROOT/target/compare/$(date +%Y%m%d-%H%M%S)"}
SCRATCH=${SCRATCH:-/tmp/rtmp-compare}
INSTALL=${INSTALL:-1}
BUILD=${BUILD:-1}
XIU_BUILD_TIMEOUT=${XIU_BUILD_TIMEOUT:-1500}
PERF_SECS=${PERF_SECS:-0}
PERF_PLAYERS=${PERF_PLAYERS:-500}
PERF_SERVERS=${PERF_SERVERS:-relay}

RELAY="$ROOT/target/release/rtmp-relay"
LOADTEST="$ROOT/target/release/rtmp-loadtest"
FLOOR="$ROOT/target/release/ideal_fanout"
XIU="$SCRATCH/xiu/bin/xiu"
NMS_DIR="$SCRATCH/nms"
NGINX_MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so

declare -A PORT=([relay]=19360 [floor]=19361 [nginx]=19362 [nms]=19363 [xiu]=19364)
declare -A SKIP=()

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# --- cleanup: every process this script starts is in STARTED, and killed on exit -------------
STARTED=()
SERVER_PID=""
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 0.5
    for pid in "${STARTED[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT" "$SCRATCH"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

# --- install peers ----------------------------------------------------------------------------
want() { [[ " $SERVERS " == *" $1 "* ]]; }

install_nginx() {
    if command -v nginx >/dev/null && [[ -f $NGINX_MODULE ]]; then return 0; fi
    if [[ $INSTALL == 1 ]]; then
        log "installing nginx + libnginx-mod-rtmp (apt-get)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            nginx libnginx-mod-rtmp; } >"$OUT/install-nginx.log" 2>&1 || true
    fi
    command -v nginx >/dev/null && [[ -f $NGINX_MODULE ]]
}

install_nms() {
    if [[ -f $NMS_DIR/node_modules/node-media-server/bin/app.js ]]; then return 0; fi
    command -v npm >/dev/null || return 1
    if [[ $INSTALL == 1 ]]; then
        log "installing node-media-server@4 (npm) in $NMS_DIR"
        mkdir -p "$NMS_DIR"
        (cd "$NMS_DIR" && { [[ -f package.json ]] || npm init -y >/dev/null; } \
            && npm install --no-audit --no-fund node-media-server@4) \
            >"$OUT/install-nms.log" 2>&1 || true
    fi
    [[ -f $NMS_DIR/node_modules/node-media-server/bin/app.js ]]
}

install_xiu() {
    if [[ -x $XIU ]]; then return 0; fi
    if [[ $INSTALL == 1 ]]; then
        log "building xiu from crates.io (cargo install, up to ${XIU_BUILD_TIMEOUT}s)"
        timeout "$XIU_BUILD_TIMEOUT" cargo install --locked --root "$SCRATCH/xiu" xiu \
            >"$OUT/install-xiu.log" 2>&1 || true
    fi
    [[ -x $XIU ]]
}

for server in $SERVERS; do
    case $server in
        nginx) install_nginx || SKIP[nginx]="nginx or $NGINX_MODULE missing (apt-get install nginx libnginx-mod-rtmp)" ;;
        nms) install_nms || SKIP[nms]="node-media-server not installed (npm install node-media-server@4; see $OUT/install-nms.log)" ;;
        xiu) install_xiu || SKIP[xiu]="xiu not built (cargo install xiu failed or took over ${XIU_BUILD_TIMEOUT}s; see $OUT/install-xiu.log)" ;;
        relay | floor) ;;
        *) echo "unknown server '$server'" >&2; exit 2 ;;
    esac
done

if [[ $BUILD == 1 ]]; then
    log "building rtmp-relay, rtmp-loadtest and ideal_fanout (release)"
    (cd "$ROOT" && cargo build --release -p rtmp-relay -p rtmp-loadtest --bins) >"$OUT/build.log" 2>&1 \
        || { tail -30 "$OUT/build.log" >&2; exit 1; }
fi
for bin in "$RELAY" "$LOADTEST" "$FLOOR"; do
    [[ -x $bin ]] || { echo "missing $bin (run with BUILD=1)" >&2; exit 1; }
done

# --- servers ------------------------------------------------------------------------------------
wait_port() {
    local port=$1 i
    for i in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Starts $1 pinned to SERVER_CPU; sets SERVER_PID (the process the load generator samples) and
# SERVER_MAIN (the process to stop).
start_server() {
    local server=$1 port=${PORT[$1]} run="$SCRATCH/run-$1"
    rm -rf "$run" && mkdir -p "$run"
    case $server in
        relay)
            # Every player comes from 127.0.0.1: lift the per-IP limits, which no peer has.
            taskset -c "$SERVER_CPU" "$RELAY" --listen "127.0.0.1:$port" --shards 1 --no-http \
                --max-connections-per-ip 1000000 --max-handshaking-per-ip 1000000 \
                --log-level warn >"$run/server.log" 2>&1 &
            ;;
        floor)
            taskset -c "$SERVER_CPU" "$FLOOR" --listen "127.0.0.1:$port" >"$run/server.log" 2>&1 &
            ;;
        nginx)
            sed -e "s|@RUN@|$run|g" -e "s|@PORT@|$port|g" -e "s|@MODULE@|$NGINX_MODULE|g" \
                "$HERE/nginx.conf" >"$run/nginx.conf"
            mkdir -p "$run/logs"
            taskset -c "$SERVER_CPU" nginx -p "$run" -c "$run/nginx.conf" >"$run/server.log" 2>&1 &
            ;;
        nms)
            sed -e "s|@RUN@|$run|g" -e "s|@PORT@|$port|g" -e "s|@HTTP_PORT@|$((port + 100))|g" \
                -e "s|@HTTPS_PORT@|$((port + 200))|g" -e "s|@RTMPS_PORT@|$((port + 300))|g" \
                -e "s|@BIN@|$NMS_DIR/node_modules/node-media-server/bin|g" \
                "$HERE/nms.json" >"$run/nms.json"
            (cd "$run" && exec taskset -c "$SERVER_CPU" node \
                "$NMS_DIR/node_modules/node-media-server/bin/app.js" -c "$run/nms.json" --no-admin) \
                >"$run/server.log" 2>&1 &
            ;;
        xiu)
            # xiu's command line takes a port only: it listens on all interfaces.
            (cd "$run" && exec taskset -c "$SERVER_CPU" "$XIU" -r "$port" -l warn) \
                >"$run/server.log" 2>&1 &
            ;;
    esac
    SERVER_MAIN=$!
    STARTED+=("$SERVER_MAIN")
    if ! wait_port "$port"; then
        log "$server did not open port $port; log:"; tail -20 "$run/server.log" >&2
        return 1
    fi
    SERVER_PID=$SERVER_MAIN
    if [[ $server == nginx ]]; then
        # Sample the (single) worker: the master only forks and waits.
        local i
        for i in $(seq 50); do
            SERVER_PID=$(pgrep -P "$SERVER_MAIN" | head -1 || true)
            [[ -n $SERVER_PID ]] && break
            sleep 0.1
        done
        [[ -n $SERVER_PID ]] || { log "no nginx worker"; return 1; }
    fi
    sleep 0.5
}

stop_server() {
    local i
    kill -TERM "$SERVER_MAIN" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$SERVER_MAIN" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_MAIN" 2>/dev/null || true
    wait "$SERVER_MAIN" 2>/dev/null || true
    # nginx's worker may outlive a killed master.
    [[ -n $SERVER_PID && $SERVER_PID != "$SERVER_MAIN" ]] && kill -KILL "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    sleep 1
}

# --- one run: fresh server, one rtmp-loadtest invocation ------------------------------------
# run_one SERVER NAME LOADTEST_ARGS...
run_one() {
    local server=$1 name=$2
    shift 2
    local json="$OUT/$server--$name.json" txt="$OUT/$server--$name.txt"
    local url="rtmp://127.0.0.1:${PORT[$server]}/live"
    if ! start_server "$server"; then
        stop_server
        echo "server did not start" >"$txt"
        return 0
    fi
    local cmd=(taskset -c "$LOADGEN_CPU" "$LOADTEST" "$url" --cpus "$LOADGEN_CPU"
        --server-pid "$SERVER_PID" --json "$json" -q "$@")
    printf '%q ' "${cmd[@]}" | sed "s|$ROOT/||g" >"$txt"
    echo >>"$txt"
    log "$server $name: ${*}"
    local perf_pid=""
    if ((PERF_SECS > 0)) && [[ $name == "w1-$PERF_PLAYERS" && " $PERF_SERVERS " == *" $server "* ]]; then
        (sleep "$WARMUP" && exec perf record -g -o "$OUT/$server--$name.perf.data" \
            -p "$SERVER_PID" -- sleep "$PERF_SECS") >"$OUT/$server--$name.perf.log" 2>&1 &
        perf_pid=$!
        STARTED+=("$perf_pid")
    fi
    "${cmd[@]}" >>"$txt" 2>&1 || echo "rtmp-loadtest exit status $?" >>"$txt"
    [[ -n $perf_pid ]] && wait "$perf_pid" 2>/dev/null || true
    stop_server
}

STREAM=(--warmup "$WARMUP" --duration "$DURATION")
for server in $SERVERS; do
    if [[ -n ${SKIP[$server]:-} ]]; then
        log "skipping $server: ${SKIP[$server]}"
        echo "${SKIP[$server]}" >"$OUT/$server.skipped"
        continue
    fi
    for workload in $WORKLOADS; do
        case $workload in
            w1)
                for n in $W1_PLAYERS; do
                    run_one "$server" "w1-$n" -p 1 -n "$n" --ramp "$RAMP" "${STREAM[@]}"
                done
                ;;
            w2)
                run_one "$server" w2 -p 50 -n 4 --bitrate 500k --ramp "$RAMP" "${STREAM[@]}"
                ;;
            w3)
                # The stream is live (and a GOP cached) 2 s before the storm starts.
                run_one "$server" w3 -p 1 -n "$W3_PLAYERS" --player-delay 2 --ramp 1 \
                    --warmup "$((WARMUP + 1))" --duration "$DURATION"
                ;;
            w4)
                run_one "$server" w4-base -p 1 -n "$W4_PLAYERS" --rcvbuf "$W4_RCVBUF" \
                    --ramp "$RAMP" "${STREAM[@]}"
                run_one "$server" w4-stalled -p 1 -n "$W4_PLAYERS" --rcvbuf "$W4_RCVBUF" \
                    --stalled 0.1 --ramp "$RAMP" "${STREAM[@]}"
                ;;
            *) echo "unknown workload '$workload'" >&2; exit 2 ;;
        esac
    done
done

{
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
    echo "rtmp-relay: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' (with uncommitted changes)')"
    echo "nginx: $(nginx -v 2>&1 | sed 's/.*: //') + libnginx-mod-rtmp $(dpkg-query -W -f '${Version}' libnginx-mod-rtmp 2>/dev/null || echo '?')"
    echo "node-media-server: $(sed -n 's/.*"version": "\(.*\)".*/\1/p' "$NMS_DIR/node_modules/node-media-server/package.json" 2>/dev/null | head -1), node $(node --version 2>/dev/null || echo '?')"
    echo "xiu: $([[ -x $XIU ]] && echo 'crates.io xiu 0.14 (cargo install)' || echo 'not built')"
    echo "settings: DURATION=$DURATION WARMUP=$WARMUP RAMP=$RAMP SERVER_CPU=$SERVER_CPU LOADGEN_CPU=$LOADGEN_CPU"
} >"$OUT/meta.txt"

python3 "$HERE/report.py" "$OUT" | tee "$OUT/report.md"
log "results in $OUT"
