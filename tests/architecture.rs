//! Keeps the layering of `src/lib.rs` true: `runtime -> conn -> stream -> rtmp_proto`, with the
//! protocol crate free of IO, clocks and randomness.

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
