//! Keeps the layering of `src/lib.rs` true: every `crate::` import in `src/` points down the
//! list `service, runtime, config, relay, conn, auth, stream, record`, leaves (`frame`,
//! `metrics`, `telemetry`, `tls`)
//! import nothing from the crate, and the protocol crate stays free of IO, clocks and
//! randomness.

use std::collections::BTreeSet;
use std::path::Path;

fn rust_sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source file");
            out.push((path.display().to_string(), text));
        }
    }
}

/// Lines of non-test code (comments stripped) that mention any of `forbidden`. Unit tests sit
/// at the end of each file after `#[cfg(test)]`; tests may use threads and clocks.
fn offenders(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    let mut found = Vec::new();
    for (path, text) in files {
        for (number, line) in text.lines().enumerate() {
            if line.trim() == "#[cfg(test)]" {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                if code.contains(word) {
                    found.push(format!("{path}:{}: {word}: {}", number + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn protocol_crate_does_no_io_and_reads_no_clock() {
    let found = offenders(
        "proto/src",
        &[
            "glommio",
            "std::net",
            "std::fs",
            "std::io::Read",
            "std::io::Write",
            "Instant::now",
            "SystemTime",
            "std::thread",
            "unsafe ",
        ],
    );
    assert!(found.is_empty(), "rtmp-proto must stay sans-IO:\n{}", found.join("\n"));
}

#[test]
fn protocol_crate_depends_on_bytes_and_crypto_only() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/Cargo.toml"))
            .expect("proto manifest");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("dependencies section");
    let names: Vec<&str> = deps
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split(['=', '.']).next().map(str::trim))
        .collect();
    assert_eq!(names, ["bytes", "hmac", "sha2"], "rtmp-proto dependencies");
}

#[test]
fn streams_know_nothing_of_sockets_or_connections() {
    let found = offenders(
        "src/stream",
        &["crate::conn", "crate::runtime", "glommio::net", "std::net::Tcp", "libc::"],
    );
    assert!(
        found.is_empty(),
        "src/stream must not reach up or into sockets:\n{}",
        found.join("\n")
    );
}

#[test]
fn connections_do_not_reach_into_the_runtime() {
    let found = offenders("src/conn", &["crate::runtime"]);
    assert!(found.is_empty(), "src/conn must not depend on the runtime:\n{}", found.join("\n"));
}

/// `src/lib.rs`'s order: a module may import only modules after it. Leaves import nothing.
const LAYERS: &[&str] =
    &["service", "runtime", "config", "relay", "conn", "auth", "stream", "record"];
const LEAVES: &[&str] = &["frame", "metrics", "telemetry", "tls"];

/// The top-level module a file under `src/` belongs to (`None` for the crate roots).
fn module_of(relative: &str) -> Option<String> {
    let first = relative.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The top-level modules named by every `crate::` path in `code`, including each item of a
/// `crate::{a::X, b::{Y, Z}}` group.
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        // `rtmp_crate::` or `my_crate::` are other paths.
        let before = rest[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            rest = after;
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            let mut ident = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => item_start = true,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && item_start {
                    if c.is_alphanumeric() || c == '_' {
                        ident.push(c);
                    } else if !ident.is_empty() {
                        found.push(std::mem::take(&mut ident));
                        item_start = false;
                    }
                }
            }
        } else {
            let ident: String =
                after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.push(ident);
        }
        rest = after;
    }
    found
}

/// (from, to, where) for every import between two top-level modules of `files` (relative
/// path, text), in non-test code.
fn module_edges(files: &[(String, String)]) -> BTreeSet<(String, String, String)> {
    let mut edges = BTreeSet::new();
    for (path, text) in files {
        let Some(from) = module_of(path) else { continue };
        for (number, line) in text.lines().enumerate() {
            if line.trim() == "#[cfg(test)]" {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for to in crate_paths(code) {
                if to != from && to != "self" {
                    edges.insert((from.clone(), to, format!("{path}:{}", number + 1)));
                }
            }
        }
    }
    edges
}

/// Imports that break the layering, as readable lines.
fn back_edges(edges: &BTreeSet<(String, String, String)>) -> Vec<String> {
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut wrong = Vec::new();
    for (from, to, at) in edges {
        let allowed = match (rank(from), rank(to)) {
            _ if LEAVES.contains(&from.as_str()) => false,
            (Some(f), Some(t)) => t > f,
            (Some(_), None) => LEAVES.contains(&to.as_str()),
            (None, _) => false,
        };
        if !allowed {
            wrong.push(format!("{at}: {from} -> {to}"));
        }
    }
    wrong
}

fn src_files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_sources(&root, &mut files);
    let prefix = format!("{}/", root.display());
    files.into_iter().map(|(p, t)| (p.trim_start_matches(&prefix).to_string(), t)).collect()
}

#[test]
fn every_import_points_down_the_layers() {
    let files = src_files();
    let modules: BTreeSet<String> = files.iter().filter_map(|(p, _)| module_of(p)).collect();
    for module in &modules {
        assert!(
            LAYERS.contains(&module.as_str()) || LEAVES.contains(&module.as_str()),
            "module {module} is in neither LAYERS nor LEAVES: place it in src/lib.rs's order"
        );
    }
    let edges = module_edges(&files);
    assert!(edges.len() > 10, "the scan found too few imports to be working: {edges:?}");
    let wrong = back_edges(&edges);
    assert!(wrong.is_empty(), "imports against src/lib.rs's layering:\n{}", wrong.join("\n"));
}

#[test]
fn the_layering_check_catches_a_back_edge_and_a_grouped_import() {
    let files = vec![
        (
            "stream/queue.rs".to_string(),
            "use crate::metrics::Counter;\nuse crate::frame::Frame;".to_string(),
        ),
        ("conn/mod.rs".to_string(), "use crate::{stream::{A, B}, config::Config};".to_string()),
        (
            "metrics/mod.rs".to_string(),
            "// crate::record in a comment\nfn f() { crate::telemetry::init(\"\", false) }"
                .to_string(),
        ),
        ("record/mod.rs".to_string(), "#[cfg(test)]\nuse crate::runtime::X;".to_string()),
    ];
    let wrong = back_edges(&module_edges(&files));
    assert_eq!(
        wrong,
        ["conn/mod.rs:1: conn -> config", "metrics/mod.rs:2: metrics -> telemetry"],
        "an import up the list and an import from a leaf are caught; tests and comments are not"
    );
}
