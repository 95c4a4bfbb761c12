//! The recent events: health flips with their reason, operator actions with
//! who asked, drains started and finished with their counts, reloads with what
//! they changed. A bounded ring in memory, served at `GET /api/events` and on
//! the status page; the oldest event goes when a new one comes.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use crate::balancer::unix_now;

/// Events kept; a few hours of a busy incident.
pub const CAPACITY: usize = 512;

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A health verdict flipped (down with the reason, up).
    Health,
    /// A resource alarm raised or cleared.
    Alarm,
    /// A node entered or left maintenance mode.
    Maintenance,
    /// An operator drained, disabled or enabled a backend.
    Operator,
    /// A paced drain started or finished.
    Drain,
    /// A config reload, applied or refused.
    Reload,
}

/// One event.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Increasing from 1; a client asks for what is newer than the last it saw.
    pub id: u64,
    /// Unix time, seconds.
    pub time: f64,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub message: String,
    /// Who asked, for operator actions and reloads (`admin API from 10.0.0.5:51234`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The ring.
#[derive(Debug, Default)]
pub struct Events {
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    last_id: u64,
    items: VecDeque<Event>,
}

impl Events {
    pub(crate) fn push(
        &self,
        kind: Kind,
        backend: Option<&str>,
        message: impl Into<String>,
        by: Option<&str>,
    ) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        ring.last_id += 1;
        let event = Event {
            id: ring.last_id,
            time: unix_now(),
            kind,
            backend: backend.map(str::to_string),
            message: message.into(),
            by: by.map(str::to_string),
        };
        if ring.items.len() == CAPACITY {
            ring.items.pop_front();
        }
        ring.items.push_back(event);
    }

    /// Up to `limit` events newer than `after` (0: all), newest first.
    pub fn recent(&self, after: u64, limit: usize) -> Vec<Event> {
        let Ok(ring) = self.ring.lock() else {
            return Vec::new();
        };
        ring.items
            .iter()
            .rev()
            .take_while(|e| e.id > after)
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_bounded_and_after_an_id() {
        let events = Events::default();
        for i in 0..CAPACITY + 10 {
            events.push(Kind::Health, Some("a"), format!("flip {i}"), None);
        }
        let all = events.recent(0, usize::MAX);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].message, format!("flip {}", CAPACITY + 9));
        assert_eq!(all[0].id, (CAPACITY + 10) as u64);
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        let newer = events.recent(all[3].id, usize::MAX);
        assert_eq!(newer.len(), 3);
        assert_eq!(events.recent(0, 5).len(), 5);
    }
}
