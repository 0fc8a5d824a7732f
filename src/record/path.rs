//! Recording file names: the operator's template, filled with names a publisher chose.
//!
//! The template is trusted (it comes from the config) and checked once at start-up
//! ([`NameTemplate::parse`]). The app and stream key are not: a publisher picks them, so they go
//! through [`safe_name`] before they touch a path, and the rendered path is checked again
//! component by component. Together these guarantee that a recording path is always
//! `record_dir/<relative path>` with every component a plain name: no `..`, no absolute path,
//! no separator, NUL or control character smuggled in through a key, and no component longer
//! than a file system accepts.
//!
//! # Template
//! Placeholders (anything else in braces is an error; braces cannot be escaped):
//!
//! | placeholder  | value                                                        |
//! |--------------|--------------------------------------------------------------|
//! | `{app}`      | the RTMP app (`live`), made safe                             |
//! | `{key}`      | the stream key without its query, made safe                  |
//! | `{start}`    | when the publish started, UTC, `YYYYMMDD-HHMMSS`             |
//! | `{start_ms}` | the same instant in Unix milliseconds                        |
//! | `{segment}`  | the segment number from 0, at least 3 digits (`000`, `001`)  |
//!
//! `/` in the template makes directories under the record dir, created as needed. The default,
//! [`DEFAULT_TEMPLATE`], gives `live/mykey-20240501-120304-000.flv`. Two recordings that render
//! the same name (a republish within the same second, or two keys that differ only in
//! characters replaced by `_`) never overwrite each other: files are created exclusively and the
//! later one gets a `-1`, `-2`... suffix before the extension ([`with_collision_suffix`]).
//!
//! # Safe names
//! [`safe_name`] refuses a name that is empty, longer than [`MAX_NAME_BYTES`], contains `/`, `\`,
//! NUL or any control character (newlines included), contains `..`, or starts with `.` (which
//! would make `.` or `..`, or a hidden file). In what remains, every character outside
//! `A-Z a-z 0-9 . _ -` becomes `_`, so names stay portable and shell-friendly. A refused key is
//! not recorded; the stream is still relayed.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The default file name template.
pub const DEFAULT_TEMPLATE: &str = "{app}/{key}-{start}-{segment}.flv";
/// Longest app or key (in bytes) that is recorded. Keys are usually a few dozen characters; this
/// stops a publisher from making file names the file system refuses (NAME_MAX is 255).
pub const MAX_NAME_BYTES: usize = 128;
/// Longest path component a template may render, leaving room under NAME_MAX (255) for a
/// collision suffix.
pub const MAX_COMPONENT_BYTES: usize = 240;
/// Longest relative path a template may render.
pub const MAX_RELATIVE_PATH_BYTES: usize = 1024;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    App,
    Key,
    Start,
    StartMs,
    Segment,
}

/// A parsed, checked file name template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    parts: Vec<Part>,
}

/// The values a template is filled with for one recording (all already safe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub app: String,
    pub key: String,
    /// `YYYYMMDD-HHMMSS`, UTC.
    pub start: String,
    pub start_ms: u64,
}

impl Names {
    /// Makes `app` and `key` safe and formats `started`. Errors name what was refused and why.
    pub fn new(app: &str, key: &str, started: SystemTime) -> Result<Names, String> {
        let app = safe_name(app).map_err(|why| format!("app {:?}: {why}", truncated(app)))?;
        let key = safe_name(key).map_err(|why| format!("key {:?}: {why}", truncated(key)))?;
        let since_epoch = started.duration_since(UNIX_EPOCH).unwrap_or_default();
        let start_ms = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        Ok(Names { app, key, start: utc_stamp(since_epoch.as_secs()), start_ms })
    }
}

/// The first characters of an untrusted name, for log lines.
fn truncated(name: &str) -> String {
    name.chars().take(64).collect()
}

impl NameTemplate {
    /// Parses and checks a template. The error says what is wrong with it.
    pub fn parse(template: &str) -> Result<NameTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("unmatched `}}` in record template {template:?}"));
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in record template {template:?}"))?;
            parts.push(match &after[..close] {
                "app" => Part::App,
                "key" => Part::Key,
                "start" => Part::Start,
                "start_ms" => Part::StartMs,
                "segment" => Part::Segment,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} in record template {template:?} \
                         (known: {{app}} {{key}} {{start}} {{start_ms}} {{segment}})"
                    ))
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        let parsed = NameTemplate { parts };
        if !parsed.parts.contains(&Part::Key) {
            return Err(format!(
                "record template {template:?} must contain {{key}}: every stream needs its own file"
            ));
        }
        for part in &parsed.parts {
            if let Part::Literal(text) = part {
                if let Some(c) = text.chars().find(|c| c.is_control() || *c == '\\') {
                    return Err(format!("record template {template:?} contains {c:?}"));
                }
            }
        }
        if template.starts_with('/') {
            return Err(format!("record template {template:?} must be relative to the record dir"));
        }
        // The shortest possible values show structural problems (`..`, `//`, a trailing `/`);
        // the longest show components that can never fit.
        let shortest = Names { app: "a".into(), key: "k".into(), start: "s".into(), start_ms: 0 };
        parsed
            .render(&shortest, 0)
            .map_err(|why| format!("record template {template:?}: {why}"))?;
        Ok(parsed)
    }

    /// Whether the template distinguishes segments (required when segmentation is on).
    pub fn has_segment(&self) -> bool {
        self.parts.contains(&Part::Segment)
    }

    /// The path of segment `segment` relative to the record dir. Every component is checked to be
    /// a plain, non-empty name of at most [`MAX_COMPONENT_BYTES`].
    pub fn render(&self, names: &Names, segment: u32) -> Result<PathBuf, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::App => out.push_str(&names.app),
                Part::Key => out.push_str(&names.key),
                Part::Start => out.push_str(&names.start),
                Part::StartMs => out.push_str(&names.start_ms.to_string()),
                Part::Segment => out.push_str(&format!("{segment:03}")),
            }
        }
        if out.len() > MAX_RELATIVE_PATH_BYTES {
            return Err(format!("path of {} bytes is too long", out.len()));
        }
        for component in out.split('/') {
            if component.is_empty() || component == "." || component == ".." {
                return Err(format!("path {out:?} has an empty, `.` or `..` component"));
            }
            if component.len() > MAX_COMPONENT_BYTES {
                return Err(format!("path component of {} bytes is too long", component.len()));
            }
            if component.chars().any(|c| c.is_control() || c == '\\') {
                return Err(format!("path {out:?} contains a control character"));
            }
        }
        let path = PathBuf::from(out);
        // Belt and braces: nothing above can yield anything but plain names.
        if !path.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
            return Err(format!("path {} is not a plain relative path", path.display()));
        }
        Ok(path)
    }
}

/// `name` made safe for a file name, or why it cannot be (see the module doc).
pub fn safe_name(name: &str) -> Result<String, &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("too long");
    }
    if name.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
        return Err("contains a path separator or a control character");
    }
    if name.starts_with('.') || name.contains("..") {
        return Err("starts with `.` or contains `..`");
    }
    Ok(name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect())
}

/// `path` with `-n` before the extension of its file name (`a/b-000.flv` -> `a/b-000-2.flv`):
/// the name of the `n`th recording that would otherwise overwrite another.
pub fn with_collision_suffix(path: &Path, n: u32) -> PathBuf {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return path.to_path_buf();
    };
    let renamed = match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{}-{n}{}", &name[..dot], &name[dot..]),
        _ => format!("{name}-{n}"),
    };
    path.with_file_name(renamed)
}

/// `YYYYMMDD-HHMMSS` (UTC) for `secs` since the Unix epoch.
pub fn utc_stamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// (year, month, day) of the proleptic Gregorian calendar for `days` since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn names(app: &str, key: &str) -> Names {
        Names::new(app, key, UNIX_EPOCH + Duration::from_millis(1_714_564_984_123))
            .expect("safe names")
    }

    #[test]
    fn default_template_renders_app_key_start_segment() {
        let template = NameTemplate::parse(DEFAULT_TEMPLATE).expect("valid");
        assert!(template.has_segment());
        let path = template.render(&names("live", "cam1"), 7).expect("renders");
        assert_eq!(path, Path::new("live/cam1-20240501-120304-007.flv"));
        let path = template.render(&names("live", "cam1"), 1234).expect("renders");
        assert_eq!(path, Path::new("live/cam1-20240501-120304-1234.flv"));
        let ms = NameTemplate::parse("{key}.{start_ms}.flv").expect("valid");
        assert_eq!(
            ms.render(&names("live", "k"), 0).expect("renders"),
            Path::new("k.1714564984123.flv")
        );
    }

    #[test]
    fn hostile_keys_are_refused() {
        for key in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/../../b",
            "/abs",
            "a/b",
            "a\\b",
            "nul\0byte",
            "new\nline",
            "cr\rx",
            "tab\tx",
            "del\u{7f}x",
            ".hidden",
            "x..y",
            &"k".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert!(safe_name(key).is_err(), "{key:?} must be refused");
        }
        assert!(safe_name(&"k".repeat(MAX_NAME_BYTES)).is_ok());
    }

    #[test]
    fn odd_but_harmless_keys_are_made_safe() {
        assert_eq!(safe_name("cam-1_a.b").as_deref(), Ok("cam-1_a.b"));
        assert_eq!(safe_name("my key?x=1&y").as_deref(), Ok("my_key_x_1_y"));
        assert_eq!(safe_name("caméra").as_deref(), Ok("cam_ra"));
        assert_eq!(safe_name("a:b*c|d\"e<f>g").as_deref(), Ok("a_b_c_d_e_f_g"));
        assert_eq!(safe_name("~root").as_deref(), Ok("_root"));
    }

    #[test]
    fn names_report_which_part_was_refused() {
        let err = Names::new("live", "../x", UNIX_EPOCH).expect_err("refused");
        assert!(err.starts_with("key \"../x\""), "{err}");
        let err = Names::new("a/b", "k", UNIX_EPOCH).expect_err("refused");
        assert!(err.starts_with("app"), "{err}");
    }

    #[test]
    fn bad_templates_are_refused() {
        for template in [
            "",
            "{app}/recording.flv",
            "/abs/{key}.flv",
            "../{key}.flv",
            "{app}/../{key}.flv",
            "{app}//{key}.flv",
            "{app}/./{key}.flv",
            "{key}/",
            "{key}.{unknown}",
            "{key",
            "key}",
            "{key}\n.flv",
            "a\\{key}.flv",
            &format!("{}{{key}}", "x".repeat(MAX_COMPONENT_BYTES)),
        ] {
            assert!(NameTemplate::parse(template).is_err(), "{template:?} must be refused");
        }
        assert!(NameTemplate::parse("{key}").is_ok());
        assert!(!NameTemplate::parse("{key}.flv").expect("valid").has_segment());
    }

    #[test]
    fn rendered_paths_stay_under_the_dir_and_within_limits() {
        let template = NameTemplate::parse(&format!("{}{{key}}", "x".repeat(200))).expect("valid");
        // A long (allowed) key can still push a component over the limit: refused, not cut.
        assert!(template.render(&names("live", &"k".repeat(MAX_NAME_BYTES)), 0).is_err());
        assert!(template.render(&names("live", "k"), 0).is_ok());
    }

    #[test]
    fn collision_suffix_goes_before_the_extension() {
        assert_eq!(
            with_collision_suffix(Path::new("live/a-000.flv"), 2),
            Path::new("live/a-000-2.flv")
        );
        assert_eq!(with_collision_suffix(Path::new("live/a"), 1), Path::new("live/a-1"));
        assert_eq!(with_collision_suffix(Path::new("a.b.flv"), 3), Path::new("a.b-3.flv"));
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000"); // leap day of a century leap year
        assert_eq!(utc_stamp(1_714_564_984), "20240501-120304");
        assert_eq!(utc_stamp(4_102_444_799), "20991231-235959");
    }
}
