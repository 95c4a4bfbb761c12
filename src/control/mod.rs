//! The control plane: the one place that acts on a backend, for a health
//! verdict, an operator's request, a reload or shutdown.
//!
//! [`act`] is that place: every change of a backend's mode, verdict or alarm
//! goes through it, with what follows from the change (a paced drain, closes,
//! a rebalance, the state gauges). `checks` runs the probe loop of each backend
//! and turns the health verdicts into actions; `admin` and `reload` call [`act`]
//! for operators and removed backends; `shutdown` closes everything.

mod act;
mod app;
mod checks;
mod drain;
pub mod events;
pub mod maintenance;
pub mod operator_state;
mod rebalance;
pub mod reload;
pub mod shared_state;
pub mod shutdown;

pub(crate) use act::{act_as, Action};
pub use app::App;
pub(crate) use app::Reloader;
pub(crate) use checks::spawn as spawn_checks;
