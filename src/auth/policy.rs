//! Per-app policy: the method each action needs, address rules, and the static map of secret
//! publish keys to public names. Pure data and pure functions; built once at start-up.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::Action;

/// How an action (publish or play) is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Anyone (today's behaviour; the default so the quick start works).
    Open,
    /// A valid signed token.
    Token,
    /// The HTTP callback's answer.
    Callback,
    /// A valid token admits; without one, the callback decides.
    TokenOrCallback,
    /// No one.
    Deny,
}

impl Method {
    pub const ALL: [Method; 5] =
        [Method::Open, Method::Token, Method::Callback, Method::TokenOrCallback, Method::Deny];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Open => "open",
            Method::Token => "token",
            Method::Callback => "callback",
            Method::TokenOrCallback => "token-or-callback",
            Method::Deny => "deny",
        }
    }

    pub fn uses_callback(self) -> bool {
        matches!(self, Method::Callback | Method::TokenOrCallback)
    }

    pub fn uses_token(self) -> bool {
        matches!(self, Method::Token | Method::TokenOrCallback)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| {
            format!("unknown access method {s:?}: open, token, callback, token-or-callback, deny")
        })
    }
}

/// What a callback failure (5xx, timeout, refused connection, garbage, over the concurrency
/// cap) means for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailPolicy {
    Allow,
    Deny,
}

impl FromStr for FailPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(FailPolicy::Allow),
            "deny" => Ok(FailPolicy::Deny),
            _ => Err(format!("unknown fail policy {s:?}: allow or deny")),
        }
    }
}

/// An address block: `203.0.113.0/24`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, addr: IpAddr) -> bool {
        // An IPv4 client seen on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr =
            addr.trim().parse().map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Address rules for one action: a client in `deny` is refused; with a non-empty `allow`, a
/// client outside it is refused too. Deny wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressRules {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl AddressRules {
    pub fn admits(&self, addr: IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(addr)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(addr))
    }
}

/// How one action of one app is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionPolicy {
    pub method: Method,
    pub addresses: AddressRules,
    pub fail: FailPolicy,
}

impl ActionPolicy {
    pub fn open() -> Self {
        Self { method: Method::Open, addresses: AddressRules::default(), fail: FailPolicy::Deny }
    }
}

/// One app's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPolicy {
    pub publish: ActionPolicy,
    pub play: ActionPolicy,
    /// Secret publish key -> public name players use.
    pub names: HashMap<String, String>,
}

impl AppPolicy {
    pub fn open() -> Self {
        Self { publish: ActionPolicy::open(), play: ActionPolicy::open(), names: HashMap::new() }
    }

    pub fn action(&self, action: Action) -> &ActionPolicy {
        match action {
            Action::Publish => &self.publish,
            Action::Play => &self.play,
        }
    }

    /// Whether `name` is a public name some secret key maps to.
    pub fn is_public_name(&self, name: &str) -> bool {
        self.names.values().any(|public| public == name)
    }
}

/// Every app's policy, and the policy of apps without a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    pub default: AppPolicy,
    /// (app, policy), in a fixed order: the position is the app's metrics label index.
    pub apps: Vec<(String, AppPolicy)>,
}

impl Default for Policies {
    fn default() -> Self {
        Self { default: AppPolicy::open(), apps: Vec::new() }
    }
}

impl Policies {
    /// The policy for `app` and its metrics label index (`apps.len()` for the default).
    pub fn for_app(&self, app: &str) -> (&AppPolicy, usize) {
        match self.apps.iter().position(|(name, _)| name == app) {
            Some(i) => (&self.apps[i].1, i),
            None => (&self.default, self.apps.len()),
        }
    }

    /// Label values for `app`: configured apps by name, every other app as `_default` (apps
    /// are client-chosen strings; labels must stay bounded).
    pub fn app_labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self.apps.iter().map(|(name, _)| name.clone()).collect();
        labels.push("_default".into());
        labels
    }

    pub fn all(&self) -> impl Iterator<Item = &AppPolicy> {
        std::iter::once(&self.default).chain(self.apps.iter().map(|(_, p)| p))
    }

    pub fn any_method(&self, test: impl Fn(Method) -> bool) -> bool {
        self.all().any(|p| test(p.publish.method) || test(p.play.method))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_contain_what_they_should() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()), "v4-mapped v6");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn deny_wins_over_allow() {
        let rules = AddressRules {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            deny: vec!["127.0.0.2".parse().unwrap()],
        };
        assert!(rules.admits("127.0.0.1".parse().unwrap()));
        assert!(!rules.admits("127.0.0.2".parse().unwrap()), "denied though allowed");
        assert!(!rules.admits("192.0.2.1".parse().unwrap()), "outside the allow list");
        assert!(AddressRules::default().admits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn globs() {
        assert!(glob_matches("cam1", "cam1"));
        assert!(!glob_matches("cam1", "cam10"));
        assert!(glob_matches("cam*", "cam10"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("team-*-hd", "team-a-hd"));
        assert!(!glob_matches("team-*-hd", "team-a-sd"));
        assert!(!glob_matches("cam*", "dog"));
        assert!(glob_matches("a*a", "aa"));
        assert!(!glob_matches("a*a", "a"));
    }

    #[test]
    fn methods_parse_by_name() {
        for m in Method::ALL {
            assert_eq!(m.as_str().parse::<Method>().unwrap(), m);
        }
        assert!("tokens".parse::<Method>().unwrap_err().contains("token-or-callback"));
    }
}
