//! Every bad token the issue lists, plus the good ones, with the test keys of
//! `tests/fixtures/auth`.

use super::*;

const JWKS: &str = include_str!("../../../tests/fixtures/auth/jwks.json");
const RSA_PRIVATE: &[u8] = include_bytes!("../../../tests/fixtures/auth/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../../tests/fixtures/auth/rsa-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../../tests/fixtures/auth/ec-private.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../../../tests/fixtures/auth/ed-private.pem");
const NOW: u64 = 1_800_000_000;

fn keys() -> KeySet {
    KeySet::from_jwks(JWKS).expect("fixture JWKS")
}

fn request(kid: &str) -> MintRequest {
    MintRequest {
        kid: kid.into(),
        action: ActionClaim::Publish,
        app: "live".into(),
        name: "cam1".into(),
        ttl: Duration::from_secs(3600),
        not_before: None,
        ip: None,
    }
}

fn signer(kid: &str) -> Signer {
    let pem = match kid {
        "rsa-1" => Some(RSA_PRIVATE),
        "ec-1" => Some(EC_PRIVATE),
        "ed-1" => Some(ED_PRIVATE),
        _ => None,
    };
    signer_from_jwks(JWKS, kid, pem).expect("signer")
}

fn mint_with(kid: &str, edit: impl FnOnce(&mut MintRequest)) -> String {
    let mut r = request(kid);
    edit(&mut r);
    mint(&signer(kid), &r, NOW).expect("mint")
}

fn publish_cam1() -> TokenRequest<'static> {
    TokenRequest {
        action: Action::Publish,
        app: "live",
        name: "cam1",
        addr: "127.0.0.1".parse().unwrap(),
    }
}

fn check(token: &str) -> Result<Verified, TokenRefusal> {
    verify(&keys(), token, &publish_cam1(), NOW, 5)
}

#[test]
fn every_supported_algorithm_verifies() {
    for kid in ["hs-1", "rsa-1", "ec-1", "ed-1"] {
        let token = mint_with(kid, |_| {});
        let verified = check(&token).unwrap_or_else(|e| panic!("{kid}: {e:?}"));
        assert_eq!(verified.kid, kid);
    }
}

#[test]
fn a_forged_signature_is_refused() {
    let token = mint_with("hs-1", |_| {});
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut forged_sig = signature.to_owned().into_bytes();
    forged_sig[3] = if forged_sig[3] == b'A' { b'B' } else { b'A' };
    let forged = format!("{signed}.{}", String::from_utf8(forged_sig).unwrap());
    assert_eq!(check(&forged), Err(TokenRefusal::BadSignature));
    // Claims swapped for another token's (name cam2) under the first one's signature.
    let other = mint_with("hs-1", |r| r.name = "cam2".into());
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = other.split('.').nth(1).unwrap();
    assert_eq!(check(&parts.join(".")), Err(TokenRefusal::BadSignature));
    // Signed with a secret not in the key set, under a known kid.
    let stranger = mint(&Signer::Hmac(vec![7; 32]), &request("hs-1"), NOW).unwrap();
    assert_eq!(check(&stranger), Err(TokenRefusal::BadSignature));
}

#[test]
fn expiry_and_not_before_are_enforced_with_leeway() {
    let token = mint_with("ed-1", |r| r.ttl = Duration::from_secs(60));
    let at = |now| verify(&keys(), &token, &publish_cam1(), now, 5);
    assert!(at(NOW).is_ok());
    assert!(at(NOW + 64).is_ok(), "within the leeway");
    // A replay after expiry: the same token, a little later.
    assert_eq!(at(NOW + 66), Err(TokenRefusal::Expired));
    let future = mint_with("hs-1", |r| r.not_before = Some(NOW + 600));
    assert_eq!(check(&future), Err(TokenRefusal::NotYetValid));
    assert!(verify(&keys(), &future, &publish_cam1(), NOW + 600, 5).is_ok());
}

#[test]
fn claims_bind_action_app_name_and_address() {
    let play = mint_with("hs-1", |r| r.action = ActionClaim::Play);
    assert_eq!(check(&play), Err(TokenRefusal::WrongAction));
    let both = mint_with("hs-1", |r| r.action = ActionClaim::Both);
    assert!(check(&both).is_ok());
    let other_app = mint_with("hs-1", |r| r.app = "vod".into());
    assert_eq!(check(&other_app), Err(TokenRefusal::WrongApp));
    let other_name = mint_with("hs-1", |r| r.name = "cam2".into());
    assert_eq!(check(&other_name), Err(TokenRefusal::WrongName));
    let family = mint_with("hs-1", |r| r.name = "cam*".into());
    assert!(check(&family).is_ok(), "a glob covers a family of names");
    let prefix_only = mint_with("hs-1", |r| r.name = "cam".into());
    assert_eq!(check(&prefix_only), Err(TokenRefusal::WrongName), "exact unless globbed");
    let elsewhere = mint_with("hs-1", |r| r.ip = Some("192.0.2.0/24".into()));
    assert_eq!(check(&elsewhere), Err(TokenRefusal::WrongAddress));
    let here = mint_with("hs-1", |r| r.ip = Some("127.0.0.0/8".into()));
    assert!(check(&here).is_ok());
}

#[test]
fn unknown_kid_and_missing_kid_are_refused() {
    let mut r = request("hs-1");
    r.kid = "gone".into();
    let token = mint(&signer("hs-1"), &r, NOW).unwrap();
    assert_eq!(check(&token), Err(TokenRefusal::UnknownKid));
    let mut header = Header::new(Algorithm::HS256);
    header.kid = None;
    let claims = Claims {
        exp: NOW + 60,
        nbf: None,
        iat: None,
        action: ActionClaim::Publish,
        app: "live".into(),
        name: "cam1".into(),
        ip: None,
    };
    let Signer::Hmac(secret) = signer("hs-1") else { unreachable!() };
    let no_kid =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret)).unwrap();
    assert_eq!(check(&no_kid), Err(TokenRefusal::UnknownKid));
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn alg_none_is_refused() {
    let claims = format!(
        "{{\"exp\":{},\"action\":\"publish\",\"app\":\"live\",\"name\":\"cam1\"}}",
        NOW + 60
    );
    for alg in ["none", "None", "NONE"] {
        let header = format!("{{\"alg\":\"{alg}\",\"kid\":\"hs-1\",\"typ\":\"JWT\"}}");
        let token = format!("{}.{}.", b64(header.as_bytes()), b64(claims.as_bytes()));
        assert_eq!(check(&token), Err(TokenRefusal::AlgNone), "{alg}");
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion: the verifier holds an RSA public key; the attacker HMACs with it.
    let header = Header { kid: Some("rsa-1".into()), ..Header::new(Algorithm::HS256) };
    let claims = Claims {
        exp: NOW + 60,
        nbf: None,
        iat: None,
        action: ActionClaim::Publish,
        app: "live".into(),
        name: "cam1".into(),
        ip: None,
    };
    let token =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(RSA_PUBLIC)).unwrap();
    assert_eq!(check(&token), Err(TokenRefusal::AlgorithmMismatch));
    // And an RS256 header under the HS256 kid.
    let rs = mint_with("rsa-1", |_| {});
    let mut parts: Vec<String> = rs.split('.').map(str::to_owned).collect();
    parts[0] = b64(b"{\"alg\":\"RS256\",\"kid\":\"hs-1\"}");
    assert_eq!(check(&parts.join(".")), Err(TokenRefusal::AlgorithmMismatch));
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    for junk in ["", ".", "..", "a.b.c", "not-a-jwt", "\u{0}\u{1}", "e30.e30.e30"] {
        let refused = check(junk).expect_err(junk);
        assert!(
            matches!(refused, TokenRefusal::Malformed | TokenRefusal::UnknownKid),
            "{junk:?}: {refused:?}"
        );
    }
    // Right signature, wrong claim shapes.
    let header = Header { kid: Some("hs-1".into()), ..Header::new(Algorithm::HS256) };
    let Signer::Hmac(secret) = signer("hs-1") else { unreachable!() };
    let odd = serde_json::json!({"exp": "soon", "action": "publish", "app": "live", "name": "x"});
    let token = jsonwebtoken::encode(&header, &odd, &EncodingKey::from_secret(&secret)).unwrap();
    assert_eq!(check(&token), Err(TokenRefusal::Malformed));
    let bad_ip = mint_with("hs-1", |r| r.ip = None);
    assert!(check(&bad_ip).is_ok());
}

#[test]
fn where_the_token_comes_from() {
    assert_eq!(presented(Some("token=abc&x=1"), None, 100), Ok(Some("abc")));
    assert_eq!(presented(None, Some("token=abc"), 100), Ok(Some("abc")));
    assert_eq!(presented(Some("token=abc"), Some("token=abc"), 100), Ok(Some("abc")));
    assert_eq!(
        presented(Some("token=abc"), Some("token=xyz"), 100),
        Err(TokenRefusal::Conflicting)
    );
    assert_eq!(presented(Some("x=1"), None, 100), Ok(None));
    let huge = format!("token={}", "a".repeat(1 << 20));
    assert_eq!(presented(Some(&huge), None, 4096), Err(TokenRefusal::TooLarge));
    assert_eq!(without_token("token=abc&x=1&y"), Some("x=1&y".into()));
    assert_eq!(without_token("token=abc"), None);
    assert_eq!(redact_url("rtmp://h/live?token=abc&k=v"), "rtmp://h/live?k=v");
    assert_eq!(redact_url("rtmp://h/live?token=abc"), "rtmp://h/live");
}

#[test]
fn key_files_are_checked() {
    assert_eq!(keys().len(), 4);
    let short = r#"{"keys":[{"kty":"oct","kid":"k","k":"c2hvcnQ"}]}"#;
    assert!(KeySet::from_jwks(short).unwrap_err().contains("too short"));
    let twice = format!(
        r#"{{"keys":[{0},{0}]}}"#,
        r#"{"kty":"oct","kid":"k","k":"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE"}"#
    );
    assert!(KeySet::from_jwks(&twice).unwrap_err().contains("twice"));
    let no_kid = r#"{"keys":[{"kty":"oct","k":"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE"}]}"#;
    assert!(KeySet::from_jwks(no_kid).unwrap_err().contains("no kid"));
    let mismatched = r#"{"keys":[{"kty":"oct","kid":"k","alg":"RS256","k":"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE"}]}"#;
    assert!(KeySet::from_jwks(mismatched).is_err());
    assert!(KeySet::from_jwks("{").is_err());
    // Errors never quote key material.
    let err = KeySet::from_jwks(short).unwrap_err();
    assert!(!err.contains("c2hvcnQ"), "{err}");
}

#[test]
fn a_store_reload_swaps_keys_for_every_view() {
    let store = Arc::new(KeyStore::new(None, keys()));
    let view = KeyView::new(store.clone());
    assert!(view.keys().contains("hs-1"));
    store.replace(KeySet::from_jwks(r#"{"keys":[]}"#).unwrap());
    assert!(!view.keys().contains("hs-1"), "the view follows the generation");
}
