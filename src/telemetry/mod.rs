//! What warren tells operators: metric names and recorders, and logging. A leaf:
//! it imports nothing of the crate but the config's log settings.

pub mod access;
pub mod logging;
pub mod metrics;
pub mod process;
