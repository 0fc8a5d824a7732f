//! The HTTP control plane: exact counters after a known publish/play, a slow player visible in
//! drops and lag, gauges back to zero, documented JSON fields, valid Prometheus exposition.
//! And the logs of the real binary: JSON lines whose spans say which shard and connection.

mod common;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use rtmp_proto::session::MediaKind;
use serde_json::Value;

#[test]
fn counters_equal_what_was_sent_and_return_to_zero() {
    let server = start_server(|c| c.shards = Some(2));
    let http = server.http_addr().expect("control plane runs");
    let mut publisher = Client::connect(server.local_addr(), "live");
    publisher.publish("metered");
    let mut players: Vec<Client> = (0..3)
        .map(|_| {
            let mut p = Client::connect(server.local_addr(), "live");
            p.play("metered");
            p
        })
        .collect();
    let mut bytes = 0u64;
    for seq in 0..50u32 {
        let payload = video_frame(seq, seq % 10 == 0, 1000 + seq as usize * 10);
        bytes += payload.len() as u64;
        publisher.send(MediaKind::Video, seq * 40, &payload);
    }
    for player in &mut players {
        assert_eq!(player.media(51, WAIT).len(), 51);
    }

    let m = Metrics::scrape(http);
    assert_eq!(m.sum("rtmp_relay_messages_in_total", &[]), 50.0);
    assert_eq!(m.sum("rtmp_relay_bytes_in_total", &[]), bytes as f64);
    assert_eq!(m.sum("rtmp_relay_messages_relayed_total", &[]), 150.0);
    assert_eq!(m.sum("rtmp_relay_bytes_relayed_total", &[]), 3.0 * bytes as f64);
    assert_eq!(m.sum("rtmp_relay_messages_dropped_total", &[]), 0.0);
    assert_eq!(m.sum("rtmp_relay_subscribers", &[]), 3.0);
    assert_eq!(m.sum("rtmp_relay_publishers", &[]), 1.0);
    assert_eq!(m.sum("rtmp_relay_streams", &[]), 1.0);
    let stream = [("app", "live"), ("stream", "metered")];
    assert_eq!(m.sum("rtmp_relay_stream_messages_in_total", &stream), 50.0);
    assert_eq!(m.sum("rtmp_relay_stream_bytes_in_total", &stream), bytes as f64);
    assert_eq!(m.sum("rtmp_relay_stream_subscribers", &stream), 3.0);
    assert_eq!(m.sum("rtmp_relay_stream_messages_out_total", &stream), 150.0);
    assert_eq!(m.sum("rtmp_relay_stream_bytes_out_total", &stream), 3.0 * bytes as f64);
    assert_eq!(m.sum("rtmp_relay_stream_skip_to_keyframe_total", &stream), 0.0);
    assert_eq!(m.sum("rtmp_relay_stream_slow_subscriber_disconnects_total", &stream), 0.0);
    let wait_max =
        m.sum("rtmp_relay_stream_viewer_wait_seconds", &[("stream", "metered"), ("quantile", "1")]);
    assert!(wait_max > 0.0 && wait_max < 5.0, "viewer wait max {wait_max}");

    for player in players {
        player.close();
    }
    publisher.close();
    eventually("gauges back to zero", || {
        let m = Metrics::scrape(http);
        m.sum("rtmp_relay_subscribers", &[]) == 0.0
            && m.sum("rtmp_relay_publishers", &[]) == 0.0
            && m.sum("rtmp_relay_streams", &[]) == 0.0
            && m.sum("rtmp_relay_mirrors", &[]) == 0.0
            && m.sum("rtmp_relay_connections_open", &[]) == 0.0
    });
    let (_, body) = get(http, "/api/streams");
    let json: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["streams"].as_array().map(Vec::len), Some(0));
}

#[test]
fn stream_json_has_the_documented_fields() {
    let server = start_server(|_| {});
    let http = server.http_addr().expect("control plane runs");
    assert_eq!(get(http, "/healthz"), (200, "ok\n".to_owned()));
    let mut publisher = Client::connect(server.local_addr(), "live");
    publisher.publish("described");
    publisher.send_headers();
    for seq in 0..20u32 {
        publisher.send(MediaKind::Video, seq * 33, &video_frame(seq, seq == 0, 500));
        publisher.send(MediaKind::Audio, seq * 33, &audio_frame(seq));
    }
    let mut player = Client::connect(server.local_addr(), "live");
    player.play("described");
    player.media(10, Duration::from_secs(2));

    let json: Value = loop {
        let (status, body) = get(http, "/api/streams/live/described");
        assert_eq!(status, 200);
        let json: Value = serde_json::from_str(&body).expect("JSON");
        if json["subscriber_count"] == 1 {
            break json;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for field in [
        "app",
        "name",
        "owner_shard",
        "publisher",
        "video",
        "audio",
        "bytes_in",
        "messages_in",
        "gop_cache_bytes",
        "subscriber_count",
        "dropped",
        "viewer_wait",
        "time_to_first_frame",
        "subscribers",
    ] {
        assert!(json.get(field).is_some(), "missing {field}: {json}");
    }
    assert_eq!(json["video"]["codec"], "H.264");
    assert_eq!(json["video"]["profile"], "High");
    assert_eq!(json["video"]["width"], 1280);
    assert_eq!(json["audio"]["codec"], "AAC");
    assert!(json["publisher"]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")));
    let subscriber = &json["subscribers"][0];
    for field in [
        "peer",
        "conn_id",
        "shard",
        "bytes",
        "dropped",
        "queue_bytes",
        "lag_ms",
        "unacknowledged_bytes",
    ] {
        assert!(subscriber.get(field).is_some(), "missing subscriber {field}: {subscriber}");
    }
    assert!(json["time_to_first_frame"]["count"].as_u64() >= Some(1));
    assert_eq!(get(http, "/api/streams/live/nothing").0, 404);
    assert_eq!(get(http, "/nowhere").0, 404);
    let (_, list) = get(http, "/api/streams");
    let list: Value = serde_json::from_str(&list).expect("JSON");
    assert_eq!(list["streams"][0]["name"], "described");
}

#[test]
fn a_slow_player_shows_in_drops_and_lag() {
    let server = start_server(|c| {
        c.shards = Some(1);
        c.gop_cache_max_ms = 100;
        c.player_soft_lag_ms = 500;
    });
    let http = server.http_addr().expect("control plane runs");
    let mut publisher = Client::connect(server.local_addr(), "live");
    publisher.publish("slowpoke");
    let mut stalled = Client::connect(server.local_addr(), "live");
    stalled.play("slowpoke");
    // 300 x 100 KB at 33 ms: 10 s of media, far more than the socket buffers hold.
    for seq in 0..300u32 {
        publisher.send(MediaKind::Video, seq * 33, &video_frame(seq, seq % 30 == 0, 100_000));
    }
    let stream = [("app", "live"), ("stream", "slowpoke")];
    eventually("the stalled player is skipping", || {
        let m = Metrics::scrape(http);
        m.sum("rtmp_relay_stream_messages_dropped_total", &stream) > 0.0
            && m.sum("rtmp_relay_skip_to_keyframe_total", &[]) >= 1.0
            && m.sum("rtmp_relay_stream_skip_to_keyframe_total", &stream) >= 1.0
    });
    // 100 ms of GOP cache: each second-long GOP outgrows it.
    let m = Metrics::scrape(http);
    assert!(m.sum("rtmp_relay_limits_tripped_total", &[("limit", "gop_cache_max_ms")]) >= 1.0);
    let m = Metrics::scrape(http);
    let queued_max = m.sum("rtmp_relay_stream_player_queued_bytes_max", &stream);
    assert!(queued_max > 0.0, "the stalled player's queue shows");
    // One player: the sum over players is that player's queue.
    assert_eq!(m.sum("rtmp_relay_stream_players_queued_bytes", &stream), queued_max);
    let (_, body) = get(http, "/api/streams/live/slowpoke");
    let json: Value = serde_json::from_str(&body).expect("JSON");
    let subscriber = &json["subscribers"][0];
    assert!(subscriber["dropped"].as_u64() > Some(0), "{subscriber}");
    assert!(subscriber["queue_bytes"].as_u64() > Some(0), "{subscriber}");
    // From the oldest frame still queued to the stream's newest (per track): what it skipped
    // counts too, so the stalled player shows as far behind live as it is.
    assert!(
        subscriber["lag_ms"].as_u64() > Some(500),
        "behind live by more than the soft lag: {subscriber}"
    );
    stalled.close();
}

/// Two shards, placed deterministically with the per-shard test listeners.
fn two_placed_shards() -> rtmp_relay::ServerHandle {
    start_server(|c| {
        c.shards = Some(2);
        c.debug_shard_listeners = true;
    })
}

#[test]
fn stream_out_counters_keep_what_players_who_left_were_sent() {
    let server = two_placed_shards();
    let http = server.http_addr().expect("control plane runs");
    let key = (0..)
        .map(|i| format!("kept{i}"))
        .find(|k| server.owner_of("live", k) == 0)
        .expect("some key hashes to shard 0");
    let on_shard = |shard| server.shard_addr(shard).expect("debug shard listeners are on");
    let mut publisher = Client::connect(on_shard(0), "live");
    publisher.publish(&key);
    let mut local = Client::connect(on_shard(0), "live");
    local.play(&key);
    let mut remote = Client::connect(on_shard(1), "live");
    remote.play(&key);
    eventually("shard 1 mirrors the stream", || server.counters().mirrors == 1);
    let mut bytes = 0u64;
    for seq in 0..20u32 {
        let payload = video_frame(seq, seq == 0, 800);
        bytes += payload.len() as u64;
        publisher.send(MediaKind::Video, seq * 40, &payload);
    }
    assert_eq!(local.media(20, WAIT).len(), 20);
    assert_eq!(remote.media(20, WAIT).len(), 20);
    let stream = [("app", "live"), ("stream", key.as_str())];
    let out = |m: &Metrics| {
        (
            m.sum("rtmp_relay_stream_messages_out_total", &stream),
            m.sum("rtmp_relay_stream_bytes_out_total", &stream),
        )
    };
    assert_eq!(out(&Metrics::scrape(http)), (40.0, 2.0 * bytes as f64));

    // The mirror goes away with its only player: the owner keeps what it delivered.
    remote.close();
    eventually("the mirror is gone", || server.counters().mirrors == 0);
    assert_eq!(out(&Metrics::scrape(http)), (40.0, 2.0 * bytes as f64), "after the mirror left");
    // A local player leaves: the stream keeps what it was sent.
    local.close();
    eventually("no players left", || server.counters().subscribers == 0);
    let m = Metrics::scrape(http);
    assert_eq!(m.sum("rtmp_relay_stream_subscribers", &stream), 0.0);
    assert_eq!(out(&m), (40.0, 2.0 * bytes as f64), "after every player left");
    publisher.close();
}

#[test]
fn a_disconnected_slow_player_is_counted_on_its_stream() {
    let server = start_server(|c| {
        c.shards = Some(1);
        c.player_hard_limit_bytes = 1024 * 1024;
        // Far behind before it skips, so its queue reaches the hard limit quickly.
        c.player_soft_lag_ms = 600_000;
        // Ten 100 KB frames outgrow the GOP cache.
        c.gop_cache_max_bytes = 1000 * 1000;
    });
    let http = server.http_addr().expect("control plane runs");
    let mut publisher = Client::connect(server.local_addr(), "live");
    publisher.publish("cutoff");
    let mut stalled = Client::connect(server.local_addr(), "live");
    stalled.play("cutoff");
    let stream = [("app", "live"), ("stream", "cutoff")];
    for seq in 0..300u32 {
        publisher.send(MediaKind::Video, seq * 33, &video_frame(seq, seq % 30 == 0, 100_000));
    }
    assert!(stalled.wait_closed(WAIT), "the stalled player is cut off");
    eventually("the player is gone from the stream", || server.counters().subscribers == 0);
    let m = Metrics::scrape(http);
    assert_eq!(m.sum("rtmp_relay_stream_subscribers", &stream), 0.0);
    assert_eq!(m.sum("rtmp_relay_stream_slow_subscriber_disconnects_total", &stream), 1.0);
    let tripped = |limit| m.sum("rtmp_relay_limits_tripped_total", &[("limit", limit)]);
    assert_eq!(tripped("player_hard_limit_bytes"), 1.0);
    assert_eq!(tripped("player_stall_secs"), 0.0);
    assert!(tripped("gop_cache_max_bytes") >= 1.0);
    assert!(m.sum("rtmp_relay_stream_messages_out_total", &stream) > 0.0);
    assert_eq!(m.sum("rtmp_relay_stream_players_queued_bytes", &stream), 0.0);
    publisher.close();
}

#[test]
fn connections_by_state_follow_each_connection_and_return_to_zero() {
    let server = start_server(|c| c.shards = Some(2));
    let http = server.http_addr().expect("control plane runs");
    // (handshake, connected, publishing, playing), summed over the shards, and whether they add
    // up to the open connections.
    let states = || {
        let m = Metrics::scrape(http);
        let states = ["handshake", "connected", "publishing", "playing"]
            .map(|state| m.sum("rtmp_relay_connections", &[("state", state)]));
        let open = m.sum("rtmp_relay_connections_open", &[]);
        (states, states.iter().sum::<f64>() == open)
    };
    assert_eq!(states(), ([0.0; 4], true));

    // Connected at the TCP level but silent: still in the handshake.
    let silent = TcpStream::connect(server.local_addr()).expect("tcp connect");
    eventually("one connection in the handshake", || states() == ([1.0, 0.0, 0.0, 0.0], true));
    let idle = Client::connect(server.local_addr(), "live");
    let mut publisher = Client::connect(server.local_addr(), "live");
    publisher.publish("stately");
    let mut player = Client::connect(server.local_addr(), "live");
    player.play("stately");
    eventually("one connection in each state", || states() == ([1.0; 4], true));

    player.close();
    eventually("the player is gone", || states() == ([1.0, 1.0, 1.0, 0.0], true));
    drop(silent);
    idle.close();
    publisher.close();
    eventually("every state back to zero", || states() == ([0.0; 4], true));
}

/// Design invariant 5: each limit has a config knob and a counter. Every `Limit` is named after
/// its flag (the ones without a flag yet say so), no two share a name, and each is exported, at
/// zero before it trips, on every shard.
#[test]
fn every_limit_is_named_after_its_flag_and_exported() {
    use clap::CommandFactory;
    use rtmp_relay::metrics::Limit;
    use rtmp_relay::Config;

    let flags: BTreeSet<String> =
        Config::command().get_arguments().filter_map(|a| a.get_long()).map(str::to_owned).collect();
    let server = start_server(|c| c.shards = Some(2));
    let m = Metrics::scrape(server.http_addr().expect("control plane runs"));
    let exported = m.label_values("rtmp_relay_limits_tripped_total", "limit");
    let mut names = BTreeSet::new();
    for limit in Limit::ALL {
        assert!(names.insert(limit.name()), "two limits are named {limit}");
        let flag = limit.name().replace('_', "-");
        if Limit::WITHOUT_FLAG.contains(&limit) {
            assert!(!flags.contains(&flag), "--{flag} exists: take {limit:?} off WITHOUT_FLAG");
        } else {
            assert!(flags.contains(&flag), "{limit:?} is named {limit} but there is no --{flag}");
        }
        assert!(exported.contains(limit.name()), "{limit} is not in /metrics");
        for shard in ["0", "1"] {
            let series = [("limit", limit.name()), ("shard", shard)];
            assert_eq!(m.sum("rtmp_relay_limits_tripped_total", &series), 0.0, "{limit}");
        }
    }
    let names: BTreeSet<String> = names.into_iter().map(str::to_owned).collect();
    assert_eq!(exported, names, "/metrics names no limit but these");
}

fn message(log: &Value) -> &str {
    log["fields"]["message"].as_str().unwrap_or("")
}

#[test]
fn json_logs_carry_the_connection_span() {
    let relay = RelayProcess::start(&[]);
    let mut player = Client::connect(relay.addr, "live");
    let peer = player.local_addr().to_string();
    let opened = relay.wait_for("the connection's open line", |log| {
        message(log) == "connection opened" && log["span"]["peer"] == peer.as_str()
    });
    let span = &opened["span"];
    assert_eq!(span["name"], "conn", "{opened}");
    assert!(span["shard"].as_u64().is_some_and(|shard| shard < 2), "shard: {opened}");
    assert!(span["id"].as_u64().is_some(), "connection id: {opened}");

    // Once known, the app and the stream key join the span.
    player.play("spanned");
    let play = relay.wait_for("the play line", |log| {
        message(log) == "play started" && log["span"]["peer"] == peer.as_str()
    });
    assert_eq!(play["span"]["app"], "live", "{play}");
    assert_eq!(play["span"]["key"], "spanned", "{play}");
    assert_eq!(play["span"]["id"], span["id"], "the same connection: {play}");
}

#[test]
fn shard_tasks_log_inside_a_span_that_names_the_shard() {
    let relay = RelayProcess::start(&["--republish-wait-secs", "1"]);
    let owned_by = |shard: usize| {
        (0..)
            .map(|i| format!("owned{shard}-{i}"))
            .find(|name| {
                rtmp_relay::stream::owner_of(&rtmp_relay::stream::StreamKey::new("live", name), 2)
                    == shard
            })
            .expect("some key hashes to every shard")
    };

    // One connection publishes a stream owned by each shard: whichever shard it landed on, one
    // of the two is owned by the other shard, whose mesh receive loop relays it and logs its
    // codecs.
    let mut publisher = Client::connect(relay.addr, "live");
    let keys = [owned_by(0), owned_by(1)];
    let mut stream_ids = Vec::new();
    for key in &keys {
        publisher.publish(key);
        stream_ids.push(publisher.stream_id);
    }
    for stream_id in stream_ids {
        publisher.stream_id = stream_id;
        publisher.send_headers();
        publisher.send(MediaKind::Video, 0, &video_frame(0, true, 100));
    }
    let mut from_mesh = 0;
    for (owner, key) in keys.iter().enumerate() {
        let stream = format!("live/{key}");
        let detected = relay.wait_for("the codec line", |log| {
            message(log) == "codecs detected" && log["fields"]["stream"] == stream.as_str()
        });
        assert_eq!(detected["span"]["shard"], owner, "logged on the owner shard: {detected}");
        if detected["span"]["name"] == "shard" {
            from_mesh += 1;
        }
    }
    assert_eq!(from_mesh, 1, "one of the streams was relayed over the mesh");

    // Housekeeping stops a player whose publisher never came.
    let mut player = Client::connect(relay.addr, "live");
    player.play("nobody");
    let stopped = relay.wait_for("the housekeeping line", |log| {
        message(log) == "no publisher in time: stopping players"
    });
    assert_eq!(stopped["span"]["name"], "shard", "{stopped}");
    assert!(stopped["span"]["shard"].as_u64().is_some_and(|shard| shard < 2), "{stopped}");
    publisher.close();
}
