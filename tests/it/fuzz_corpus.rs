//! Replays the fuzz corpus (fuzz/corpus/<target>/) through the same checks the
//! fuzz targets run (warren::fuzz_checks), so CI keeps every input the fuzzer
//! found interesting without needing cargo fuzz. See docs/security.md.

#![forbid(unsafe_code)]

use std::path::Path;

use warren::fuzz_checks;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!(
                "{} fails its check (replay: cargo fuzz run {target} {})",
                f.display(),
                f.display()
            );
        }
    }
    eprintln!("{target}: {} corpus files replayed", files.len());
}

#[test]
fn config_corpus() {
    replay("config", fuzz_checks::config_from_yaml);
}

#[test]
fn frame_tracker_corpus() {
    replay("frame_tracker", fuzz_checks::frame_tracker);
}

#[test]
fn frame_stream_corpus() {
    replay("frame_stream", fuzz_checks::frame_stream);
}

#[test]
fn amqp10_stream_corpus() {
    replay("amqp10_stream", fuzz_checks::amqp10_stream);
}

#[test]
fn stream_rewrite_corpus() {
    replay("stream_rewrite", fuzz_checks::stream_rewrite);
}

#[test]
fn handshake_corpus() {
    replay("handshake", fuzz_checks::handshake);
}

#[test]
fn proxy_header_corpus() {
    replay("proxy_header", fuzz_checks::proxy_header);
}
