//! Rebalancing after a node returns.
//!
//! When a node comes back (health) or is enabled again (operator), its peers still
//! hold the connections it lost: clients never move by themselves (the problem
//! HAProxy and Envoy users report). A rebalance waits for the slow start to end,
//! then closes a bounded share of the surplus connections of the most loaded nodes
//! with `connection.close` 320, paced over `rebalance.window`; the clients
//! reconnect and the balancer places them. Rounds repeat until the spread is
//! within `rebalance.tolerance`, at most `MAX_ROUNDS` times.
//!
//! Off by default: it closes healthy connections of clients that were never on the
//! failed node, which only clients that reconnect on a broker close can take.

use std::sync::Arc;
use std::time::Duration;

use crate::balancer::Backend;
use crate::balancer::Command;
use crate::control::app::App;
use crate::telemetry::logging;

const MAX_ROUNDS: usize = 5;
/// Time for closed clients to reconnect before the spread is measured again.
const SETTLE: Duration = Duration::from_secs(2);

/// Starts a rebalance (replacing one in progress) if the config enables it.
pub(crate) fn trigger(app: &Arc<App>, reason: &str) {
    let cfg = app.config.load();
    if !cfg.rebalance.enabled {
        return;
    }
    let token = app.shutdown.child_token();
    if let Ok(mut slot) = app.rebalance.lock() {
        if let Some(old) = slot.replace(token.clone()) {
            old.cancel();
        }
    }
    let app = Arc::clone(app);
    let reason = reason.to_string();
    tokio::spawn(async move {
        tokio::select! {
            _ = token.cancelled() => {}
            _ = run(&app, &reason) => {}
        }
    });
}

async fn run(app: &App, reason: &str) {
    // New connections already avoid a warming backend; moving clients onto it
    // before its slow start ends would send them back where they came from.
    tokio::time::sleep(app.config.load().health.slowstart.get()).await;
    for round in 1..=MAX_ROUNDS {
        let cfg = app.config.load();
        let r = &cfg.rebalance;
        let backends: Vec<Arc<Backend>> = app
            .balancer
            .backends()
            .iter()
            .filter(|b| b.usable())
            .cloned()
            .collect();
        // Stream clients sit where the broker sent them (the leader, a
        // replica): moving one would send it back to the same node.
        let placed: std::collections::HashSet<u64> = {
            let stream: Vec<&str> = cfg
                .listeners
                .iter()
                .filter(|l| l.protocol == crate::config::ListenerProtocol::Stream)
                .map(|l| l.name.as_str())
                .collect();
            app.proxy
                .clients
                .list()
                .iter()
                .filter(|c| stream.contains(&c.listener))
                .map(|c| c.id)
                .collect()
        };
        let movable: Vec<Vec<u64>> = backends
            .iter()
            .map(|b| {
                let mut ids = b.conns.ids();
                ids.retain(|id| !placed.contains(id));
                ids
            })
            .collect();
        let counts: Vec<usize> = movable.iter().map(Vec::len).collect();
        let plan = plan(&counts, r.tolerance, r.max_fraction);
        if plan.iter().all(|n| *n == 0) {
            tracing::info!(
                round,
                counts = logging::list(&counts),
                "rebalance: spread even"
            );
            return;
        }
        let total: usize = plan.iter().sum();
        tracing::info!(
            round,
            counts = logging::list(&counts),
            closing = total,
            trigger = reason,
            "rebalance"
        );
        // Newest connections first: most likely the reconnects of the last failure.
        let mut victims = Vec::new();
        for ((b, n), ids) in backends.iter().zip(&plan).zip(&movable) {
            victims.extend(ids.iter().rev().take(*n).map(|id| (Arc::clone(b), *id)));
        }
        let step = r.window.get() / victims.len().max(1) as u32;
        let text: Arc<str> = "warren: rebalancing connections across nodes, reconnect".into();
        for (i, (b, id)) in victims.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(step).await;
            }
            b.conns.send(*id, Command::Close(text.clone()));
            crate::telemetry::metrics::rebalance_close(b.name());
        }
        tokio::time::sleep(step + SETTLE).await;
    }
    tracing::warn!("rebalance: spread still uneven after {MAX_ROUNDS} rounds, giving up");
}

/// How many connections to close on each backend this round: the surplus above
/// the mean of the loaded ones, only when the spread exceeds the tolerance, and
/// at most `max_fraction` of all connections in total.
pub(crate) fn plan(counts: &[usize], tolerance: f64, max_fraction: f64) -> Vec<usize> {
    let n = counts.len();
    let total: usize = counts.iter().sum();
    if n < 2 || total == 0 {
        return vec![0; n];
    }
    let mean = total as f64 / n as f64;
    let (min, max) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    if max - min <= 1 || (max - min) as f64 <= tolerance * mean {
        return vec![0; n];
    }
    let target = mean.ceil() as usize;
    let mut plan: Vec<usize> = counts.iter().map(|c| c.saturating_sub(target)).collect();
    // Reconnects are placed by the balancer, which sends some back to the loaded
    // nodes: closing the whole surplus at once would overshoot, so this is a cap.
    let budget = ((total as f64 * max_fraction).floor() as usize).max(1);
    let mut want: usize = plan.iter().sum();
    while want > budget {
        // Trim the largest share first.
        if let Some(i) = (0..n).max_by_key(|i| plan[*i]) {
            plan[i] -= 1;
            want -= 1;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn even_spread_needs_nothing() {
        assert_eq!(plan(&[10, 10, 10], 0.2, 0.25), vec![0, 0, 0]);
        assert_eq!(plan(&[11, 10, 10], 0.2, 0.25), vec![0, 0, 0]);
        assert_eq!(plan(&[0, 0, 0], 0.2, 0.25), vec![0, 0, 0]);
        assert_eq!(plan(&[5], 0.2, 0.25), vec![0]);
    }

    #[test]
    fn returning_node_gets_the_surplus_bounded() {
        // 15/15/0: mean 10, surplus 5+5, budget 25% of 30 = 7.
        let p = plan(&[15, 15, 0], 0.2, 0.25);
        assert_eq!(p.iter().sum::<usize>(), 7);
        assert_eq!(p[2], 0);
        assert!(p[0] >= 3 && p[1] >= 3);
        // Without a cap, exactly the surplus.
        assert_eq!(plan(&[15, 15, 0], 0.2, 1.0), vec![5, 5, 0]);
    }

    #[test]
    fn within_tolerance_is_left_alone() {
        assert_eq!(plan(&[12, 10, 9], 0.4, 1.0), vec![0, 0, 0]);
        assert_ne!(plan(&[12, 10, 5], 0.4, 1.0), vec![0, 0, 0]);
    }
}
