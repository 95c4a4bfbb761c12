#![no_main]
#![forbid(unsafe_code)]
//! See warren::fuzz_checks::stream_rewrite (the replay test runs the same check).

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzz_checks::stream_rewrite(data));
