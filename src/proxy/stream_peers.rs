//! What each backend advertises to stream clients, learned from the open
//! responses that go through warren (`stream_route` reads it to tell which
//! backend a broker of a metadata response is).

use std::collections::HashMap;
use std::sync::Mutex;

/// What each backend advertised in the open responses that went by:
/// backend name to (host, port).
#[derive(Debug, Default)]
pub(crate) struct Peers {
    learned: Mutex<HashMap<String, (String, u32)>>,
}

impl Peers {
    pub(crate) fn learn(&self, backend: &str, host: String, port: u32) {
        let mut l = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        if l.get(backend) != Some(&(host.clone(), port)) {
            tracing::debug!(backend, host = %host, port, "stream node advertises");
            l.insert(backend.to_string(), (host, port));
        }
    }

    pub(crate) fn backend_of(&self, host: &str, port: u32) -> Option<String> {
        let l = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        l.iter()
            .find(|(_, (h, p))| h.eq_ignore_ascii_case(host) && *p == port)
            .map(|(b, _)| b.clone())
    }
}
