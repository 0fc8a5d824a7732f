//! End to end: the load tester against a real rtmp-relay on loopback. A short run must see every
//! player join, every frame arrive in order, and latencies a loopback relay can explain.

use std::process::Command;

use clap::Parser;
use serde_json::Value;

#[test]
fn one_publisher_five_players_lose_nothing() {
    let config = rtmp_relay::Config::parse_from([
        "rtmp-relay",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--log-level",
        "warn",
    ]);
    let server = rtmp_relay::start(&config).expect("relay starts");
    let url = format!("rtmp://{}/live", server.local_addr());
    let json = std::env::temp_dir().join(format!("rtmp-loadtest-e2e-{}.json", std::process::id()));

    let output = Command::new(env!("CARGO_BIN_EXE_rtmp-loadtest"))
        .args([url.as_str(), "--publishers", "2", "--players", "5", "--duration", "2"])
        .args(["--warmup", "1", "--player-delay", "0.3", "--prefix", "e2e-", "--quiet"])
        .arg("--server-pid")
        .arg(std::process::id().to_string())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("runs rtmp-loadtest");
    server.shutdown();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("relay latency"), "{stdout}");

    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("valid JSON");
    let _ = std::fs::remove_file(&json);
    let players = &report["players"];
    assert_eq!(report["player_joins"], 10, "{report:#}");
    assert_eq!(report["publisher_starts"], 2, "{report:#}");
    assert_eq!(players["lost"], 0, "{report:#}");
    assert_eq!(players["join_gaps"], 0, "{report:#}");
    assert_eq!(players["reordered"], 0, "{report:#}");
    assert_eq!(report["errors"].as_object().map(|e| e.len()), Some(0), "{report:#}");
    // 2 s of 30 fps video and ~43 fps audio to 10 players: about 1460 live messages.
    let live = players["live_msgs"].as_u64().unwrap_or(0);
    assert!(live > 1000, "{report:#}");
    // At least one latency sample per live message (more when coordinated-omission correction
    // back-fills a stall).
    assert!(players["latency_us"]["count"].as_u64().unwrap_or(0) >= live, "{report:#}");
    // Loose bound: loopback, but CI's two cores are busy (a healthy relay is far below).
    assert!(players["latency_us"]["p50"].as_u64().unwrap_or(u64::MAX) < 500_000, "{report:#}");
    assert_eq!(report["intervals"].as_array().map(Vec::len), Some(3));
    assert!(report["server"]["cpu_s"].as_f64().is_some(), "{report:#}");
}
