//! The control plane: the one place that acts on a backend, for a health verdict,
//! an operator's request, a reload or shutdown.

pub mod drain;
pub mod rebalance;
pub mod reload;
pub mod shutdown;
