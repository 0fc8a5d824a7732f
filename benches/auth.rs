//! Access control's cost per connection: deciding a publish on the shard with the policy `open`
//! (the baseline), and with a token signed by each supported algorithm (`ShardAuth::check`:
//! find the token, pick the key by `kid`, verify the signature and the claims). A refused token
//! (bad signature) costs about as much as an accepted one.
//!
//! Nothing here is per message: access control runs once per publish or play, and the media
//! path (`ServerEvent::Media` -> `Publication::relay`) has no access-control code at all, so
//! callbacks, however slow, add nothing to it (`tests/auth.rs`,
//! `a_slow_callback_delays_only_the_connections_that_asked`, shows it end to end).
//!
//! `cargo bench --bench auth`. See `benches/harness/mod.rs` for how figures are taken.

mod harness;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use harness::{black_box, fmt_allocs, fmt_ns, Harness, Suite, Table};
use rtmp_relay::auth::token::{self, ActionClaim, MintRequest};
use rtmp_relay::auth::{
    Action, AppPolicy, Authority, Check, Method, Policies, Request, Settings, ShardAuth,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
}

fn mint(kid: &str, pem: Option<&str>) -> String {
    let jwks = std::fs::read_to_string(fixture("jwks.json")).expect("fixture");
    let pem = pem.map(|p| std::fs::read(fixture(p)).expect("fixture pem"));
    let signer = token::signer_from_jwks(&jwks, kid, pem.as_deref()).expect("signer");
    let request = MintRequest {
        kid: kid.into(),
        action: ActionClaim::Publish,
        app: "live".into(),
        name: "cam1".into(),
        ttl: Duration::from_secs(3600),
        not_before: None,
        ip: None,
    };
    token::mint(&signer, &request, token::unix_secs(SystemTime::now())).expect("mint")
}

fn shard(method: Method) -> ShardAuth {
    let mut policies = Policies { default: AppPolicy::open(), apps: Vec::new() };
    policies.default.publish.method = method;
    let settings = Settings {
        policies,
        keys_file: Some(fixture("jwks.json")),
        keys_poll: Duration::ZERO,
        ..Settings::default()
    };
    Authority::start(settings, 1).expect("authority").for_shard(0)
}

fn main() {
    let h = Harness::from_args();
    let open = shard(Method::Open);
    let tokens = shard(Method::Token);
    let mut cases: Vec<(String, &ShardAuth, String, bool)> =
        vec![("open (no token)".into(), &open, String::new(), true)];
    for (kid, alg, pem) in [
        ("hs-1", "HS256", None),
        ("rsa-1", "RS256 (2048)", Some("rsa-private.pem")),
        ("ec-1", "ES256", Some("ec-private.pem")),
        ("ed-1", "EdDSA (Ed25519)", Some("ed-private.pem")),
    ] {
        let token = mint(kid, pem);
        cases.push((format!("token {alg}"), &tokens, format!("token={token}"), true));
        if kid == "hs-1" || kid == "ed-1" {
            let (signed, _) = token.rsplit_once('.').expect("jwt");
            let forged = format!("token={signed}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
            cases.push((format!("token {alg}, bad signature"), &tokens, forged, false));
        }
    }
    let mut suite = Suite::new(&h);
    let mut rows = Vec::new();
    for (name, auth, query, admitted) in &cases {
        let query = query.clone();
        let now = SystemTime::now();
        let id = suite.add_fn(name, move || {
            let request = Request {
                action: Action::Publish,
                app: "live",
                name: "cam1",
                name_query: (!query.is_empty()).then_some(query.as_str()),
                connect_query: None,
                tc_url: None,
                peer: "127.0.0.1:5000".parse().expect("address"),
                conn_id: 1,
            };
            let check = auth.check(black_box(&request), now);
            assert_eq!(matches!(check, Check::Allowed(_)), *admitted);
        });
        rows.extend(id.map(|id| (name.clone(), id)));
    }
    let results = suite.run();
    let mut table = Table::new(
        "access decision per publish (ShardAuth::check, on the shard, no I/O)",
        &["policy", "median", "min", "IQR", "passes", "allocs/op"],
    );
    for (name, id) in rows {
        let stats = results.one(id);
        table.row(vec![
            name,
            fmt_ns(stats.median),
            fmt_ns(stats.min),
            stats.iqr(),
            stats.passes(),
            fmt_allocs(stats.allocs),
        ]);
    }
    table.print(&h);
}
