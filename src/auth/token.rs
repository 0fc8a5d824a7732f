//! Signed, expiring tokens (JWT), verified on the shard: pure code over the token, the keys
//! and the time given, no I/O.
//!
//! A key set comes from a JWKS file: every key names its `kid` and one algorithm (its `alg`, or
//! the one its type implies: `oct` HS256, `RSA` RS256, `EC` P-256 ES256, `OKP` Ed25519 EdDSA).
//! A token is verified only with the key its header's `kid` names, and only if the header's
//! `alg` is that key's algorithm: `alg: none` and algorithm confusion (an HS256 token "signed"
//! with an RSA public key) are refused before any signature check.
//!
//! Claims: `exp` (required) and `nbf` (optional), Unix seconds; `action` (`publish`, `play`
//! or `both`); `app` and `name` (exact, or a glob where `*` matches any run of characters);
//! optional `ip` (an address or CIDR block the client must be in).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::policy::{glob_matches, Cidr};
use super::Action;

/// Shortest HS256 secret accepted: a guessable secret makes every token forgeable.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Why a token was refused. Logged and counted; never sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRefusal {
    /// No token where the policy needs one.
    Missing,
    /// Over `max_token_bytes` (a limit).
    TooLarge,
    /// In the stream name and in the tcUrl, different.
    Conflicting,
    /// Not a JWT, or claims of the wrong shape.
    Malformed,
    /// `alg: none`.
    AlgNone,
    /// The header's `alg` is not the algorithm of the key its `kid` names.
    AlgorithmMismatch,
    /// No key with that `kid` (or no `kid`).
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAction,
    WrongApp,
    WrongName,
    /// The client's address is outside the token's `ip` claim.
    WrongAddress,
}

impl TokenRefusal {
    pub const ALL: [TokenRefusal; 14] = [
        TokenRefusal::Missing,
        TokenRefusal::TooLarge,
        TokenRefusal::Conflicting,
        TokenRefusal::Malformed,
        TokenRefusal::AlgNone,
        TokenRefusal::AlgorithmMismatch,
        TokenRefusal::UnknownKid,
        TokenRefusal::BadSignature,
        TokenRefusal::Expired,
        TokenRefusal::NotYetValid,
        TokenRefusal::WrongAction,
        TokenRefusal::WrongApp,
        TokenRefusal::WrongName,
        TokenRefusal::WrongAddress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenRefusal::Missing => "missing",
            TokenRefusal::TooLarge => "too_large",
            TokenRefusal::Conflicting => "conflicting",
            TokenRefusal::Malformed => "malformed",
            TokenRefusal::AlgNone => "alg_none",
            TokenRefusal::AlgorithmMismatch => "algorithm_mismatch",
            TokenRefusal::UnknownKid => "unknown_kid",
            TokenRefusal::BadSignature => "bad_signature",
            TokenRefusal::Expired => "expired",
            TokenRefusal::NotYetValid => "not_yet_valid",
            TokenRefusal::WrongAction => "wrong_action",
            TokenRefusal::WrongApp => "wrong_app",
            TokenRefusal::WrongName => "wrong_name",
            TokenRefusal::WrongAddress => "wrong_address",
        }
    }

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// The `action` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ActionClaim {
    Publish,
    Play,
    Both,
}

impl ActionClaim {
    fn allows(self, action: Action) -> bool {
        matches!(
            (self, action),
            (ActionClaim::Both, _)
                | (ActionClaim::Publish, Action::Publish)
                | (ActionClaim::Play, Action::Play)
        )
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    pub action: ActionClaim,
    pub app: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// One verification key.
struct Key {
    algorithm: Algorithm,
    decoding: DecodingKey,
}

/// The keys tokens are verified with, by `kid`.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Kids only: the keys (HS256 secrets among them) never reach a log.
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

fn algorithm_of(jwk: &Jwk) -> Result<Algorithm, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return Err("unsupported key type or curve (oct, RSA, EC P-256, OKP Ed25519)".into()),
    };
    let named = match jwk.common.key_algorithm {
        None => return Ok(implied),
        Some(KeyAlgorithm::HS256) => Algorithm::HS256,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(other) => {
            return Err(format!("unsupported alg {other:?} (HS256, RS256, ES256, EdDSA)"))
        }
    };
    if named != implied {
        return Err(format!("alg {named:?} does not fit the key type ({implied:?})"));
    }
    Ok(named)
}

impl KeySet {
    /// Parses a JWKS document. Every key needs a unique `kid`; HS256 secrets must be at least
    /// [`MIN_HMAC_SECRET_BYTES`] long. Errors name the key, never its material.
    pub fn from_jwks(text: &str) -> Result<KeySet, String> {
        let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = HashMap::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone().ok_or_else(|| format!("key {i} has no kid"))?;
            let algorithm = algorithm_of(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
            if let AlgorithmParameters::OctetKey(oct) = &jwk.algorithm {
                let len = base64_decoded_len(&oct.value);
                if len < MIN_HMAC_SECRET_BYTES {
                    return Err(format!(
                        "key {kid:?}: an HS256 secret of {len} bytes is too short (at least \
                         {MIN_HMAC_SECRET_BYTES})"
                    ));
                }
            }
            let decoding = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
            if keys.insert(kid.clone(), Key { algorithm, decoding }).is_some() {
                return Err(format!("kid {kid:?} appears twice"));
            }
        }
        Ok(KeySet { keys })
    }

    pub fn from_file(path: &Path) -> Result<KeySet, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
        KeySet::from_jwks(&text).map_err(|e| format!("keys file {}: {e}", path.display()))
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn base64_decoded_len(b64: &str) -> usize {
    b64.trim_end_matches('=').len() * 3 / 4
}

/// The key set in force, replaced whole on reload. Shards read it through [`KeyView`]: one
/// atomic load per check; the lock is taken only when the generation changed, to clone an
/// `Arc`.
#[derive(Debug)]
pub struct KeyStore {
    path: Option<PathBuf>,
    generation: AtomicU64,
    current: Mutex<Arc<KeySet>>,
}

impl KeyStore {
    pub fn new(path: Option<PathBuf>, keys: KeySet) -> Self {
        Self { path, generation: AtomicU64::new(1), current: Mutex::new(Arc::new(keys)) }
    }

    /// Loads the file named at start-up.
    pub fn load(path: PathBuf) -> Result<Self, String> {
        let keys = KeySet::from_file(&path)?;
        Ok(Self::new(Some(path), keys))
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.current.lock().map(|k| k.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Replaces the keys. Call off the shards (it is called with what a file read gave).
    pub fn replace(&self, keys: KeySet) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(keys);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Re-reads the keys file; on error the keys in force stay. Blocking file I/O: call it
    /// from a thread that may block (the key watcher, the main thread), never from a shard.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else { return Ok(self.current().len()) };
        let keys = KeySet::from_file(path)?;
        let n = keys.len();
        self.replace(keys);
        Ok(n)
    }
}

/// One shard's cached view of the [`KeyStore`].
#[derive(Debug)]
pub struct KeyView {
    store: Arc<KeyStore>,
    cached: std::cell::RefCell<(u64, Arc<KeySet>)>,
}

impl KeyView {
    pub fn new(store: Arc<KeyStore>) -> Self {
        let cached = std::cell::RefCell::new((store.generation(), store.current()));
        Self { store, cached }
    }

    pub fn keys(&self) -> Arc<KeySet> {
        let generation = self.store.generation();
        let mut cached = self.cached.borrow_mut();
        if cached.0 != generation {
            *cached = (generation, self.store.current());
        }
        cached.1.clone()
    }
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub kid: String,
    pub exp: u64,
}

/// What a token is checked against.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    pub action: Action,
    pub app: &'a str,
    pub name: &'a str,
    pub addr: IpAddr,
}

/// Verifies `token` for `request` at `now` (Unix seconds), allowing `leeway_secs` of clock
/// skew on `exp` and `nbf`.
pub fn verify(
    keys: &KeySet,
    token: &str,
    request: &TokenRequest<'_>,
    now: u64,
    leeway_secs: u64,
) -> Result<Verified, TokenRefusal> {
    let header = match jsonwebtoken::decode_header(token) {
        Ok(header) => header,
        Err(_) => return Err(classify_bad_header(token)),
    };
    let kid = header.kid.as_deref().ok_or(TokenRefusal::UnknownKid)?;
    let key = keys.keys.get(kid).ok_or(TokenRefusal::UnknownKid)?;
    if header.alg != key.algorithm {
        return Err(TokenRefusal::AlgorithmMismatch);
    }
    let mut validation = Validation::new(key.algorithm);
    // Times are checked below against the `now` given, not the library's clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature => TokenRefusal::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                TokenRefusal::AlgorithmMismatch
            }
            _ => TokenRefusal::Malformed,
        }
    })?;
    let claims = data.claims;
    if now > claims.exp.saturating_add(leeway_secs) {
        return Err(TokenRefusal::Expired);
    }
    if claims.nbf.is_some_and(|nbf| now.saturating_add(leeway_secs) < nbf) {
        return Err(TokenRefusal::NotYetValid);
    }
    if !claims.action.allows(request.action) {
        return Err(TokenRefusal::WrongAction);
    }
    if !glob_matches(&claims.app, request.app) {
        return Err(TokenRefusal::WrongApp);
    }
    if !glob_matches(&claims.name, request.name) {
        return Err(TokenRefusal::WrongName);
    }
    if let Some(ip) = &claims.ip {
        let block: Cidr = ip.parse().map_err(|_| TokenRefusal::Malformed)?;
        if !block.contains(request.addr) {
            return Err(TokenRefusal::WrongAddress);
        }
    }
    Ok(Verified { kid: kid.to_owned(), exp: claims.exp })
}

/// A header the library would not parse: `alg: none` (which it does not know) or garbage.
fn classify_bad_header(token: &str) -> TokenRefusal {
    use base64::Engine;
    let Some(header) = token.split('.').next() else { return TokenRefusal::Malformed };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return TokenRefusal::Malformed;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return TokenRefusal::Malformed;
    };
    match value.get("alg").and_then(|a| a.as_str()) {
        Some(alg) if alg.eq_ignore_ascii_case("none") => TokenRefusal::AlgNone,
        _ => TokenRefusal::Malformed,
    }
}

/// Unix seconds of `now`.
pub fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How to sign a minted token.
pub enum Signer {
    /// The HS256 secret of a JWKS `oct` key.
    Hmac(Vec<u8>),
    /// A PKCS#8 / PEM private key for RS256, ES256 or EdDSA.
    Pem(Algorithm, Vec<u8>),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signer::Hmac(_) => "Signer::Hmac(..)",
            Signer::Pem(..) => "Signer::Pem(..)",
        })
    }
}

/// What a token is minted for.
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub kid: String,
    pub action: ActionClaim,
    pub app: String,
    pub name: String,
    pub ttl: Duration,
    pub not_before: Option<u64>,
    pub ip: Option<String>,
}

/// The HS256 secret of the `oct` key `kid` in a JWKS document, or the algorithm the JWKS names
/// for an asymmetric `kid` (whose private key must then come from a PEM file).
pub fn signer_from_jwks(
    jwks: &str,
    kid: &str,
    private_pem: Option<&[u8]>,
) -> Result<Signer, String> {
    let set: JwkSet = serde_json::from_str(jwks).map_err(|e| format!("not a JWKS: {e}"))?;
    let jwk = set
        .keys
        .iter()
        .find(|k| k.common.key_id.as_deref() == Some(kid))
        .ok_or_else(|| format!("no key with kid {kid:?} in the keys file"))?;
    let algorithm = algorithm_of(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
    match (&jwk.algorithm, private_pem) {
        (AlgorithmParameters::OctetKey(oct), _) => {
            use base64::Engine;
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(oct.value.trim_end_matches('='))
                .map_err(|_| format!("key {kid:?}: k is not base64url"))?;
            Ok(Signer::Hmac(secret))
        }
        (_, Some(pem)) => Ok(Signer::Pem(algorithm, pem.to_vec())),
        (_, None) => Err(format!(
            "key {kid:?} is {algorithm:?}: its private key is not in the keys file; give it with \
             --private-key FILE.pem"
        )),
    }
}

/// Signs a token for `request`, valid from now (Unix seconds) for its TTL.
pub fn mint(signer: &Signer, request: &MintRequest, now: u64) -> Result<String, String> {
    let (algorithm, key) = match signer {
        Signer::Hmac(secret) => (Algorithm::HS256, EncodingKey::from_secret(secret)),
        Signer::Pem(algorithm, pem) => {
            let key = match algorithm {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
                Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
                other => return Err(format!("cannot sign {other:?} with a PEM key")),
            }
            .map_err(|e| format!("private key: {e}"))?;
            (*algorithm, key)
        }
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(request.kid.clone());
    if let Some(ip) = &request.ip {
        ip.parse::<Cidr>()?;
    }
    let claims = Claims {
        exp: now.saturating_add(request.ttl.as_secs().max(1)),
        nbf: request.not_before,
        iat: Some(now),
        action: request.action,
        app: request.app.clone(),
        name: request.name.clone(),
        ip: request.ip.clone(),
    };
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing failed: {e}"))
}

/// `key=value` pairs of a query string, in order (no percent-decoding: tokens are base64url
/// and dots).
fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The `token` parameter of a query.
pub fn token_in(query: &str) -> Option<&str> {
    pairs(query).find(|(k, _)| *k == "token").map(|(_, v)| v)
}

/// The query without its `token` parameter (what a callback is shown), `None` if nothing is
/// left.
pub fn without_token(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split_once('=').map_or(*p, |(k, _)| k) != "token")
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// A tcUrl with its query's `token` removed, for logs and callbacks.
pub fn redact_url(url: &str) -> String {
    match url.split_once('?') {
        Some((base, query)) => match without_token(query) {
            Some(rest) => format!("{base}?{rest}"),
            None => base.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The one token a client presented: in the stream name's query or in the tcUrl's (or the
/// app's, which is where a tcUrl query lands). Two that differ are refused.
pub fn presented<'a>(
    name_query: Option<&'a str>,
    connect_query: Option<&'a str>,
    max_bytes: usize,
) -> Result<Option<&'a str>, TokenRefusal> {
    let in_name = name_query.and_then(token_in).filter(|t| !t.is_empty());
    let in_url = connect_query.and_then(token_in).filter(|t| !t.is_empty());
    let token = match (in_name, in_url) {
        (Some(a), Some(b)) if a != b => return Err(TokenRefusal::Conflicting),
        (a, b) => a.or(b),
    };
    if token.is_some_and(|t| t.len() > max_bytes) {
        return Err(TokenRefusal::TooLarge);
    }
    Ok(token)
}

#[cfg(test)]
mod tests;
