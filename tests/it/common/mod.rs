//! Helpers shared by the end-to-end tests, one submodule per concern:
//!
//! - [`cluster`]: the three real RabbitMQ nodes started by `scripts/local-cluster`
//!   (and the namespace set of `scripts/netns-cluster`), the lock that keeps tests
//!   which disturb them apart, their management API, `rabbitmqctl` and the scripts;
//! - [`warren`]: warren in this process ([`Warren`]) or as its real binary
//!   ([`WarrenProcess`]), its config and admin API, the log it writes;
//! - [`clients`]: AMQP clients made with lapin, and raw TCP clients;
//! - [`metrics`]: a Prometheus exposition read by series;
//! - [`pyclients`]: the Python stream, MQTT and STOMP clients (tests/it/*_client.py);
//! - [`fakes`]: small TCP servers standing in for a backend or a management API.
//!
//! The nodes are found through the same environment variables the script uses
//! (`WARREN_NODE_PREFIX`, `WARREN_AMQP_BASE`, `WARREN_MGMT_BASE`), so a second set
//! of nodes can serve a second checkout. Tests fail, never skip, when the nodes
//! are missing.

// Private, their items re-exported: a module `warren` in the tests' glob imports
// would shadow the crate.
mod clients;
mod cluster;
mod fakes;
mod metrics;
mod pyclients;
mod warren;

pub use self::clients::*;
pub use self::cluster::*;
pub use self::fakes::*;
pub use self::metrics::*;
pub use self::pyclients::*;
pub use self::warren::*;

use std::path::PathBuf;

/// A name unique to this test run, for queues and connection names.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A new, empty directory under the system's temporary directory, its name
/// made unique from `prefix`.
pub fn fresh_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A free loopback port (bound and released; fine for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
