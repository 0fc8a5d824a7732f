//! The decision order on the shard: address rules, names, then the method.

use std::collections::HashMap;

use super::token::{mint, signer_from_jwks, ActionClaim, MintRequest};
use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
}

fn authority(live: AppPolicy) -> Authority {
    let settings = Settings {
        policies: Policies { default: AppPolicy::open(), apps: vec![("live".into(), live)] },
        keys_file: Some(fixture("jwks.json")),
        keys_poll: Duration::ZERO,
        ..Settings::default()
    };
    Authority::start(settings, 1).expect("authority")
}

fn request<'a>(action: Action, name: &'a str, query: Option<&'a str>, peer: &str) -> Request<'a> {
    Request {
        action,
        app: "live",
        name,
        name_query: query,
        connect_query: None,
        tc_url: None,
        peer: format!("{peer}:5000").parse().unwrap(),
        conn_id: 1,
    }
}

fn decided(check: Check) -> Result<Grant, Refusal> {
    match check {
        Check::Allowed(grant) => Ok(grant),
        Check::Refused(refusal) => Err(refusal),
        Check::Ask(_) => panic!("no callback here"),
    }
}

fn token_for(name: &str) -> String {
    let jwks = std::fs::read_to_string(fixture("jwks.json")).unwrap();
    let signer = signer_from_jwks(&jwks, "hs-1", None).unwrap();
    let request = MintRequest {
        kid: "hs-1".into(),
        action: ActionClaim::Publish,
        app: "live".into(),
        name: name.into(),
        ttl: Duration::from_secs(600),
        not_before: None,
        ip: None,
    };
    mint(&signer, &request, token::unix_secs(SystemTime::now())).unwrap()
}

#[test]
fn address_rules_come_first_and_deny_wins() {
    let mut live = AppPolicy::open();
    live.play.addresses = AddressRules {
        allow: vec!["127.0.0.0/8".parse().unwrap()],
        deny: vec!["127.0.0.9".parse().unwrap()],
    };
    let auth = authority(live).for_shard(0);
    let now = SystemTime::now();
    assert!(decided(auth.check(&request(Action::Play, "a", None, "127.0.0.1"), now)).is_ok());
    let denied = decided(auth.check(&request(Action::Play, "a", None, "127.0.0.9"), now));
    assert_eq!(denied.unwrap_err().decider, Decider::Address);
    let outside = decided(auth.check(&request(Action::Play, "a", None, "192.0.2.1"), now));
    assert_eq!(outside.unwrap_err().decider, Decider::Address);
    assert!(decided(auth.check(&request(Action::Publish, "a", None, "192.0.2.1"), now)).is_ok());
}

#[test]
fn secret_keys_map_to_public_names() {
    let mut live = AppPolicy::open();
    live.names = HashMap::from([("sk_9f2c".to_owned(), "cam1".to_owned())]);
    let auth = authority(live).for_shard(0);
    let now = SystemTime::now();
    let grant =
        decided(auth.check(&request(Action::Publish, "sk_9f2c", None, "127.0.0.1"), now)).unwrap();
    assert_eq!(grant.public_name, "cam1");
    let direct = decided(auth.check(&request(Action::Publish, "cam1", None, "127.0.0.1"), now));
    assert_eq!(direct.unwrap_err().decider, Decider::Name, "the public name is not publishable");
    let peek = decided(auth.check(&request(Action::Play, "sk_9f2c", None, "127.0.0.1"), now));
    assert_eq!(peek.unwrap_err().decider, Decider::Name, "nor is the secret playable");
    assert!(decided(auth.check(&request(Action::Play, "cam1", None, "127.0.0.1"), now)).is_ok());
}

#[test]
fn token_policy_counts_reasons_and_decisions() {
    let mut live = AppPolicy::open();
    live.publish.method = Method::Token;
    live.play.method = Method::Deny;
    let authority = authority(live);
    let auth = authority.for_shard(0);
    let now = SystemTime::now();
    let token = format!("token={}", token_for("cam1"));
    let grant =
        decided(auth.check(&request(Action::Publish, "cam1", Some(&token), "127.0.0.1"), now))
            .unwrap();
    assert_eq!((grant.decider, grant.kid.as_deref()), (Decider::Token, Some("hs-1")));
    let missing = decided(auth.check(&request(Action::Publish, "cam1", None, "127.0.0.1"), now));
    assert_eq!(missing.unwrap_err().reason, "token refused: missing");
    let wrong =
        decided(auth.check(&request(Action::Publish, "cam2", Some(&token), "127.0.0.1"), now));
    assert_eq!(wrong.unwrap_err().reason, "token refused: wrong_name");
    let play = decided(auth.check(&request(Action::Play, "cam1", Some(&token), "127.0.0.1"), now));
    assert_eq!(play.unwrap_err().decider, Decider::Policy);
    let text = authority.report().render();
    assert!(
        text.contains("rtmp_relay_auth_tokens_refused_total{reason=\"wrong_name\"} 1"),
        "{text}"
    );
    assert!(text.contains(
        "rtmp_relay_auth_decisions_total{app=\"live\",action=\"publish\",method=\"token\",result=\"allow\"} 1"
    ), "{text}");
    assert!(!text.contains(&token_for("cam1")[..20]), "no token in metrics");
}

#[test]
fn settings_refuse_what_cannot_work() {
    let mut policies = Policies::default();
    policies.default.publish.method = Method::Token;
    let no_keys = Settings { policies: policies.clone(), ..Settings::default() };
    assert!(no_keys.validate().unwrap_err().contains("keys file"));
    policies.default.publish.method = Method::Callback;
    let no_url = Settings { policies, ..Settings::default() };
    assert!(no_url.validate().unwrap_err().contains("on_publish"));
    assert!(Settings::default().validate().is_ok());
}

#[test]
fn open_publishing_is_reported_for_the_start_up_warning() {
    let mut live = AppPolicy::open();
    live.publish.method = Method::Token;
    let authority = authority(live);
    assert_eq!(authority.publish_open_somewhere(), ["(every other app)"]);
    assert!(is_loopback("127.0.0.1".parse().unwrap()));
    assert!(is_loopback("::1".parse().unwrap()));
    assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!is_loopback("0.0.0.0".parse().unwrap()), "every interface is not loopback");
    assert!(!is_loopback("192.0.2.1".parse().unwrap()));
}
