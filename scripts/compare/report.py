#!/usr/bin/env python3
"""Markdown tables from scripts/compare.sh results: one table per workload, every server side
by side, and rtmp-relay's ratios against each peer, the best peer and the ideal fan-out floor.

Usage: report.py RESULTS_DIR   (files SERVER--RUN.json written by rtmp-loadtest --json)
Python 3.11 standard library only.
"""

import json
import sys
from pathlib import Path

ORDER = ["relay", "floor", "nginx", "nms", "xiu"]
NAMES = {
    "relay": "rtmp-relay",
    "floor": "ideal fan-out",
    "nginx": "nginx-rtmp",
    "nms": "Node-Media-Server",
    "xiu": "xiu",
}
PEERS = ["nginx", "nms", "xiu"]
# A load generator above this share of its core is the bottleneck, not the server (for JSON from
# versions of rtmp-loadtest that do not say so themselves in "loadgen_check").
LOADGEN_SATURATED_PCT = 80.0


def load(results: Path) -> dict[str, dict[str, dict]]:
    """{run: {server: json}}"""
    runs: dict[str, dict[str, dict]] = {}
    for path in sorted(results.glob("*--*.json")):
        server, run = path.stem.split("--", 1)
        try:
            runs.setdefault(run, {})[server] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"<!-- {path.name}: {e} -->")
    return runs


def servers_of(by_server: dict) -> list[str]:
    return [s for s in ORDER if s in by_server] + sorted(set(by_server) - set(ORDER))


def ms(us) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def num(x, fmt="{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def metrics(d: dict) -> dict:
    srv, gen, pl, slow = d["server"], d["loadgen"], d["players"], d["slow_players"]
    expected = d["publishers"] * d["players_per_stream"]
    cpu_s = srv.get("cpu_s") or 0.0
    delivered_gbit = (pl["mbit_s"] + slow["mbit_s"]) * d["window_s"] / 1000.0
    live, lost = pl["live_msgs"], pl["lost"]
    errors = sum(d.get("errors", {}).values()) if isinstance(d.get("errors"), dict) else 0
    rss = srv.get("rss_per_player_bytes")
    return {
        "expected": expected,
        "players": d["connections"]["players_avg"],
        "cpu_pct": srv.get("cpu_percent"),
        "cpu_us": srv.get("cpu_us_per_player_s"),
        "gbit_per_cpu_s": delivered_gbit / cpu_s if cpu_s > 0 else None,
        "mbit_s": pl["mbit_s"] + slow["mbit_s"],
        "p50": pl["latency_us"]["p50"] if pl["latency_us"]["count"] else None,
        "p99": pl["latency_us"]["p99"] if pl["latency_us"]["count"] else None,
        "p999": pl["latency_us"]["p999"] if pl["latency_us"]["count"] else None,
        "ttff_p50": pl["first_frame_us"]["p50"] if pl["first_frame_us"]["count"] else None,
        "ttff_p99": pl["first_frame_us"]["p99"] if pl["first_frame_us"]["count"] else None,
        "ttff_max": pl["first_frame_us"]["max"] if pl["first_frame_us"]["count"] else None,
        "ttff_count": pl["first_frame_us"]["count"] + slow["first_frame_us"]["count"],
        "ttfk_p50": pl["first_keyframe_us"]["p50"] if pl["first_keyframe_us"]["count"] else None,
        "ttfk_p99": pl["first_keyframe_us"]["p99"] if pl["first_keyframe_us"]["count"] else None,
        "loss_pct": 100.0 * lost / (live + lost) if live + lost else None,
        "join_gaps": pl["join_gaps"],
        "rss_kib": rss / 1024 if rss is not None else None,
        "gen_pct": gen.get("cpu_percent"),
        "gen_busy": (d.get("loadgen_check") or {}).get("busy"),
        "contended": any("waited" in w for w in d.get("warnings", [])),
        "send_lag_p99": d["send_lag_us"]["p99"] if d["send_lag_us"]["count"] else None,
        "errors": errors,
        "error_kinds": d.get("errors", {}),
        "incomplete": d.get("incomplete", False),
    }


def notes(m: dict) -> str:
    out = []
    busy = m["gen_busy"]
    if busy is None:
        busy = m["gen_pct"] is not None and m["gen_pct"] >= LOADGEN_SATURATED_PCT
    if busy:
        out.append("**loadgen saturated**")
    if m["contended"]:
        out.append("**CPU contention** (see the run's warnings)")
    if m["players"] < 0.98 * m["expected"]:
        out.append(f"only {m['players']:.0f}/{m['expected']} players")
    if m["errors"]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(m["error_kinds"].items()))
        out.append(f"errors: {kinds}")
    if m["incomplete"]:
        out.append("incomplete")
    return "; ".join(out)


def ratio(a, b) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def ratio_line(ms_by_server: dict[str, dict], key="cpu_us", label="CPU per player-second") -> str:
    relay = ms_by_server.get("relay")
    if relay is None or relay[key] is None:
        return ""
    parts = [f"{NAMES[p]} {ratio(relay[key], ms_by_server[p][key])}"
             for p in PEERS if p in ms_by_server]
    peers = [(ms_by_server[p][key], p) for p in PEERS
             if p in ms_by_server and ms_by_server[p][key]]
    if peers:
        best = min(peers)
        parts.append(f"best peer ({NAMES[best[1]]}) {ratio(relay[key], best[0])}")
    if "floor" in ms_by_server:
        parts.append(f"floor {ratio(relay[key], ms_by_server['floor'][key])}")
    return f"rtmp-relay {label} relative to: " + ", ".join(parts) + "\n"


MAIN_HEADER = (
    "| server | players | server CPU | CPU µs / player-s | x floor | Gbit/s per CPU-s "
    "| latency p50 / p99 / p99.9 ms | TTFF p50 / p99 ms | loss | RSS / player | loadgen CPU "
    "| notes |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n"
)


def main_row(server: str, m: dict, floor: dict | None) -> str:
    return (
        f"| {NAMES.get(server, server)} | {m['players']:.0f} | {num(m['cpu_pct'], '{:.1f}%')} "
        f"| {num(m['cpu_us'])} | {ratio(m['cpu_us'], floor['cpu_us']) if floor else '-'} "
        f"| {num(m['gbit_per_cpu_s'], '{:.2f}')} "
        f"| {ms(m['p50'])} / {ms(m['p99'])} / {ms(m['p999'])} "
        f"| {ms(m['ttff_p50'])} / {ms(m['ttff_p99'])} "
        f"| {num(m['loss_pct'], '{:.3f}%')} | {num(m['rss_kib'], '{:.1f} KiB')} "
        f"| {num(m['gen_pct'], '{:.0f}%')} | {notes(m)} |\n"
    )


def main_table(title: str, by_server: dict) -> str:
    ms_ = {s: metrics(by_server[s]) for s in servers_of(by_server)}
    out = f"### {title}\n\n" + MAIN_HEADER
    for s, m in ms_.items():
        out += main_row(s, m, ms_.get("floor"))
    return out + "\n" + ratio_line(ms_) + "\n"


def w3_table(by_server: dict) -> str:
    out = ("### W3: join storm, time to first frame\n\n"
           "| server | players with a frame | TTFF p50 / p99 / max ms | first keyframe p50 / p99 ms "
           "| join gaps | server CPU | loadgen CPU | notes |\n|---|--:|--:|--:|--:|--:|--:|---|\n")
    for s in servers_of(by_server):
        m = metrics(by_server[s])
        out += (f"| {NAMES.get(s, s)} | {m['ttff_count']}/{m['expected']} "
                f"| {ms(m['ttff_p50'])} / {ms(m['ttff_p99'])} / {ms(m['ttff_max'])} "
                f"| {ms(m['ttfk_p50'])} / {ms(m['ttfk_p99'])} | {m['join_gaps']} "
                f"| {num(m['cpu_pct'], '{:.1f}%')} | {num(m['gen_pct'], '{:.0f}%')} | {notes(m)} |\n")
    return out + "\n"


def w4_table(base: dict, stalled: dict) -> str:
    out = ("### W4: 10% stalled players\n\n"
           "| server | healthy p99 ms: base -> stalled | healthy p50 ms: base -> stalled "
           "| server CPU: base -> stalled | CPU µs / healthy player-s: base -> stalled "
           "| healthy loss (stalled run) | notes |\n|---|--:|--:|--:|--:|--:|---|\n")
    for s in servers_of({**base, **stalled}):
        if s not in base or s not in stalled:
            continue
        b, t = metrics(base[s]), metrics(stalled[s])
        # CPU per *healthy* player-second in the stalled run: stalled players get nothing.
        healthy = t["players"] * 0.9
        t_cpu_us = (t["cpu_pct"] / 100 * 1e6 / healthy) if healthy and t["cpu_pct"] is not None else None
        delta_p99 = f" ({ratio(t['p99'], b['p99'])})" if b["p99"] else ""
        delta_cpu = f" ({ratio(t['cpu_pct'], b['cpu_pct'])})" if b["cpu_pct"] else ""
        out += (f"| {NAMES.get(s, s)} | {ms(b['p99'])} -> {ms(t['p99'])}{delta_p99} "
                f"| {ms(b['p50'])} -> {ms(t['p50'])} "
                f"| {num(b['cpu_pct'], '{:.1f}%')} -> {num(t['cpu_pct'], '{:.1f}%')}{delta_cpu} "
                f"| {num(b['cpu_us'])} -> {num(t_cpu_us)} | {num(t['loss_pct'], '{:.3f}%')} "
                f"| {'; '.join(x for x in (notes(b), notes(t)) if x)} |\n")
    return out + "\n"


def main() -> int:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    runs = load(results)
    meta = results / "meta.txt"
    print("## Results\n")
    if meta.exists():
        print("".join(f"- {line}\n" for line in meta.read_text().splitlines()))
    for skipped in sorted(results.glob("*.skipped")):
        print(f"- **{NAMES.get(skipped.stem, skipped.stem)} skipped**: {skipped.read_text().strip()}")
    print()
    w1 = sorted((r for r in runs if r.startswith("w1-")), key=lambda r: int(r[3:]))
    for run in w1:
        n = run[3:]
        print(main_table(f"W1: 1 stream at 2.5 Mbit/s, {n} players", runs[run]))
    if w1:
        print("### W1 summary: CPU µs per player-second\n")
        servers = [s for s in ORDER if any(s in runs[r] for r in w1)]
        print("| players | " + " | ".join(NAMES[s] for s in servers)
              + " | relay / best peer | relay / floor |")
        print("|--:|" + "--:|" * (len(servers) + 2))
        for run in w1:
            ms_ = {s: metrics(runs[run][s]) for s in runs[run]}
            cells = [num(ms_[s]["cpu_us"]) + (" (sat.)" if ms_[s]["gen_pct"] and ms_[s]["gen_pct"]
                     >= LOADGEN_SATURATED_PCT else "") if s in ms_ else "-" for s in servers]
            peers = [ms_[p]["cpu_us"] for p in PEERS if p in ms_ and ms_[p]["cpu_us"]]
            relay = ms_.get("relay", {}).get("cpu_us")
            best = ratio(relay, min(peers)) if peers else "-"
            floor = ratio(relay, ms_["floor"]["cpu_us"]) if "floor" in ms_ else "-"
            print(f"| {run[3:]} | " + " | ".join(cells) + f" | {best} | {floor} |")
        print()
    if "w2" in runs:
        print(main_table("W2: 50 streams x 4 players at 500 kbit/s", runs["w2"]))
    if "w3" in runs:
        print(w3_table(runs["w3"]))
    if "w4-base" in runs and "w4-stalled" in runs:
        print(w4_table(runs["w4-base"], runs["w4-stalled"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
