//! `rtmp-relay token`: mints a token for operators and tests.
//!
//! ```text
//! rtmp-relay token --keys jwks.json --kid k1 --action publish --app live --name cam1 --ttl 1h
//! rtmp-relay token --keys jwks.json --kid k1 --action publish --app live --name cam1 \
//!     --url rtmp://host/live/cam1
//! ```
//! The token (or, with `--url`, the URL with `?token=`) is printed on stdout. HS256 keys sign
//! with the secret in the JWKS; RS256, ES256 and EdDSA keys need `--private-key FILE.pem`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Parser;

use super::token::{self, ActionClaim, MintRequest};

/// Mint a signed token for `rtmp://host/APP/NAME?token=...` (or OBS's key field).
#[derive(Debug, Parser)]
#[command(name = "rtmp-relay token")]
pub struct TokenArgs {
    /// The JWKS file the server verifies with.
    #[arg(long)]
    pub keys: PathBuf,
    /// Which key signs (its `kid`).
    #[arg(long)]
    pub kid: String,
    /// PKCS#8 PEM private key, for RS256, ES256 and EdDSA kids.
    #[arg(long)]
    pub private_key: Option<PathBuf>,
    /// publish, play or both.
    #[arg(long)]
    pub action: ActionClaim,
    /// The app (a glob: `*` matches any run of characters).
    #[arg(long)]
    pub app: String,
    /// The stream name (exact, or a glob such as `cam*` for a family of streams).
    #[arg(long)]
    pub name: String,
    /// How long it is valid: `90s`, `15m`, `1h`, `7d`, or seconds.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Not valid before this many seconds from now.
    #[arg(long)]
    pub not_before_secs: Option<u64>,
    /// Only for clients in this address block (CIDR or one address).
    #[arg(long)]
    pub ip: Option<String>,
    /// Print this URL with the token appended as `?token=` (or `&token=`).
    #[arg(long)]
    pub url: Option<String>,
}

/// `90s`, `15m`, `1h`, `7d` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 =
        digits.parse().map_err(|_| format!("{text:?} is not a duration (90s, 15m, 1h, 7d)"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .filter(|s| *s > 0)
    .ok_or_else(|| format!("{text:?} is not a positive duration (90s, 15m, 1h, 7d)"))?;
    Ok(Duration::from_secs(secs))
}

/// What `rtmp-relay token ARGS` prints, or why it cannot.
pub fn run(args: TokenArgs, now: SystemTime) -> Result<String, String> {
    let jwks = std::fs::read_to_string(&args.keys)
        .map_err(|e| format!("cannot read {}: {e}", args.keys.display()))?;
    let pem = match &args.private_key {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
        }
        None => None,
    };
    let signer = token::signer_from_jwks(&jwks, &args.kid, pem.as_deref())?;
    let now = token::unix_secs(now);
    let request = MintRequest {
        kid: args.kid,
        action: args.action,
        app: args.app,
        name: args.name,
        ttl: args.ttl,
        not_before: args.not_before_secs.map(|s| now + s),
        ip: args.ip,
    };
    let token = token::mint(&signer, &request, now)?;
    Ok(match args.url {
        Some(url) => {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}token={token}")
        }
        None => token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        for bad in ["", "h", "0s", "1y", "-5s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mints_a_url_the_server_accepts() {
        let keys = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth/jwks.json");
        let args = TokenArgs::parse_from([
            "token",
            "--keys",
            keys.to_str().unwrap(),
            "--kid",
            "hs-1",
            "--action",
            "publish",
            "--app",
            "live",
            "--name",
            "cam1",
            "--ttl",
            "10m",
            "--url",
            "rtmp://h/live/cam1",
        ]);
        let url = run(args, SystemTime::now()).unwrap();
        let token = url.strip_prefix("rtmp://h/live/cam1?token=").expect("url form");
        let set = token::KeySet::from_file(&keys).unwrap();
        let request = token::TokenRequest {
            action: super::super::Action::Publish,
            app: "live",
            name: "cam1",
            addr: "127.0.0.1".parse().unwrap(),
        };
        assert!(
            token::verify(&set, token, &request, token::unix_secs(SystemTime::now()), 0).is_ok()
        );
        let asymmetric = TokenArgs::parse_from([
            "token",
            "--keys",
            keys.to_str().unwrap(),
            "--kid",
            "ed-1",
            "--action",
            "play",
            "--app",
            "live",
            "--name",
            "cam1",
        ]);
        assert!(run(asymmetric, SystemTime::now()).unwrap_err().contains("--private-key"));
    }
}
