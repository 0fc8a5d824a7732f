//! `rtmp://host[:port]/app[/instance]` URLs, as ffmpeg and OBS take them.
//!
//! The stream key is not part of the URL: the load tester appends its own keys. Everything
//! after the authority is the `app` of `connect` (nginx-rtmp and SRS use the first segment as
//! the application; a second one is what Wowza calls the instance and is kept as part of it).

use std::fmt;

/// Default RTMP port.
pub const DEFAULT_PORT: u16 = 1935;

/// A parsed RTMP server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    /// Host name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
    /// Application name sent in `connect`.
    pub app: String,
    /// `tcUrl` sent in `connect`: the URL without trailing slashes.
    pub tc_url: String,
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

impl RtmpUrl {
    pub fn parse(url: &str) -> Result<RtmpUrl, UrlError> {
        let err = |why: &str| UrlError(format!("{url:?}: {why} (expected rtmp://host[:port]/app)"));
        let rest = url
            .strip_prefix("rtmp://")
            .or_else(|| url.strip_prefix("RTMP://"))
            .ok_or_else(|| err("only rtmp:// is supported"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let app = path.trim_matches('/');
        if app.is_empty() {
            return Err(err("no application name"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| err("unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(err("junk after IPv6 address")),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(err("no host"));
        }
        let port = match port {
            Some(port) => port.parse::<u16>().map_err(|_| err("bad port"))?,
            None => DEFAULT_PORT,
        };
        Ok(RtmpUrl {
            host: host.to_owned(),
            port,
            app: app.to_owned(),
            tc_url: url.trim_end_matches('/').to_owned(),
        })
    }

    /// `host:port` for name resolution (IPv6 literals bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_and_app() {
        let url = RtmpUrl::parse("rtmp://127.0.0.1:19360/live").unwrap();
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 19360);
        assert_eq!(url.app, "live");
        assert_eq!(url.tc_url, "rtmp://127.0.0.1:19360/live");
        assert_eq!(url.authority(), "127.0.0.1:19360");

        let url = RtmpUrl::parse("rtmp://example.org/app/inst/").unwrap();
        assert_eq!((url.port, url.app.as_str()), (DEFAULT_PORT, "app/inst"));
        assert_eq!(url.tc_url, "rtmp://example.org/app/inst");

        let url = RtmpUrl::parse("rtmp://[::1]:1936/live").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 1936));
        assert_eq!(url.authority(), "[::1]:1936");
    }

    #[test]
    fn refuses_what_it_cannot_connect_to() {
        for bad in [
            "http://host/live",
            "rtmp://host",
            "rtmp://host/",
            "rtmp://:1935/live",
            "rtmp://host:99999/live",
            "rtmp://[::1/live",
        ] {
            assert!(RtmpUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
