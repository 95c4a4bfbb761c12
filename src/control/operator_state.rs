//! This instance's view of the shared operator state (see `shared_state`,
//! which reads and writes it in the cluster).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::balancer::unix_now;

/// What an operator wants of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Intent {
    Drain,
    Disable,
    Enable,
    /// In maintenance, led by one warren: the others only stop routing to it.
    Maintenance,
}

impl Intent {
    /// The name stored in the parameter and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Drain => "drain",
            Intent::Disable => "disable",
            Intent::Enable => "enable",
            Intent::Maintenance => "maintenance",
        }
    }
}

/// One backend's entry in the parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub intent: Intent,
    /// Unix time of the write, in seconds.
    pub at: f64,
    pub by: String,
}

impl Entry {
    pub(crate) fn newer_than(&self, other: &Entry) -> bool {
        self.at > other.at || (self.at == other.at && self.by > other.by)
    }
}

/// This instance's view of the shared state.
#[derive(Debug, Default)]
pub struct SharedState {
    /// The entry applied or written last, per backend.
    pub(crate) applied: Mutex<HashMap<String, Entry>>,
    reachable: AtomicBool,
    /// Unix time of the last successful read, as f64 bits (0: never).
    last_ok: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What `GET /api/backends` shows of the shared state for one backend.
#[derive(Debug, Serialize)]
pub struct View {
    /// The store answered the last read.
    pub reachable: bool,
    /// Unix time of the last successful read (absent: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_read: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The entry in force for this backend (the last known one while unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<Entry>,
}

impl SharedState {
    /// (reachable, unix time of the last successful read).
    pub fn status(&self) -> (bool, f64) {
        (
            self.reachable.load(Ordering::Relaxed),
            f64::from_bits(self.last_ok.load(Ordering::Relaxed)),
        )
    }

    pub fn view(&self, backend: &str) -> View {
        let (reachable, last) = self.status();
        View {
            reachable,
            last_read: (last > 0.0).then_some(last),
            error: self.last_error.lock().ok().and_then(|e| e.clone()),
            entry: self
                .applied
                .lock()
                .ok()
                .and_then(|a| a.get(backend).cloned()),
        }
    }

    pub(crate) fn mark(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.reachable.store(true, Ordering::Relaxed);
                self.last_ok.store(unix_now().to_bits(), Ordering::Relaxed);
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
            }
            Err(e) => {
                if self.reachable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "shared operator state unreachable; keeping the last known state");
                }
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e);
                }
            }
        }
    }
}
