//! The end-to-end tests, as one test binary (one link instead of one per file).
//! Each module is one area, against the real RabbitMQ nodes of
//! `scripts/local-cluster` unless its doc says otherwise; [`common`] holds what
//! they share. Tests of every module run side by side, except the ones that take
//! the exclusive turn (see `common::cluster`).
//!
//!     cargo test --test it                  all of them
//!     cargo test --test it -- health::      one module
//!
//! Two binaries stay apart and use the same helpers: tests/bootstrap.rs resets and
//! re-clusters its nodes, so `scripts/test` runs it on a node set of its own
//! (docs/bootstrap.md); tests/metrics.rs checks the whole exposition of its
//! process with `promtool`, which must hold no series of other tests (in this
//! binary, the hostile tests' `warren_listener_handshake_rejected_total` shows up,
//! and src/metrics.rs gives it no HELP text, so promtool refuses it).

mod common;

mod admin;
mod amqp10;
mod bulk;
mod chaos;
mod clients;
mod config;
mod dashboard;
mod deploy;
mod drain;
mod fuzz_corpus;
mod health;
mod hostile;
mod listeners;
mod maintenance;
mod package;
mod process;
mod proxy;
mod reload;
mod rolling;
mod shared_state;
mod status_page;
mod streams;
mod tls;
mod unreachable;
