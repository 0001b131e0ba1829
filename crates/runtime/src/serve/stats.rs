//! Per-service counters and recent latencies, for telemetry. Counting only: what to do
//! about the numbers is not decided here.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use heapless::HistoryBuf;
use serde_json::{Value, json};

use crate::latency::{LatencyStats, percentile};

/// How many recent latencies the percentiles are computed over.
const WINDOW: usize = 512;

/// What happened to a service's requests since start-up.
#[derive(Default)]
pub struct ServiceStats {
    pub requests: AtomicU64,
    pub answered: AtomicU64,
    pub errors: AtomicU64,
    pub busy: AtomicU64,
    pub expired: AtomicU64,
    /// Copies of requests answered from the replay cache or joined to their original
    /// in flight, instead of being computed again.
    pub replayed: AtomicU64,
    /// Requests whose handling panicked (answered `internal`).
    pub panics: AtomicU64,
    /// Worker loops that unwound and were started again.
    pub restarts: AtomicU64,
    pub queued: AtomicUsize,
    latencies_ms: Mutex<HistoryBuf<f64, WINDOW>>,
    /// What choosing the point cost per request (decide, then observe), in microseconds.
    decisions_us: Mutex<HistoryBuf<f64, WINDOW>>,
}

impl ServiceStats {
    pub fn record_latency(&self, ms: f64) {
        self.latencies_ms.lock().write(ms);
    }

    pub fn record_decision(&self, us: f64) {
        self.decisions_us.lock().write(us);
    }

    /// Telemetry for this service: counts, queue depth, latency p50/p95 over recent requests.
    pub fn snapshot(&self) -> Value {
        let recent: Vec<f64> = self.latencies_ms.lock().oldest_ordered().copied().collect();
        let latency = LatencyStats::of(&recent);
        let mut decisions: Vec<f64> = self.decisions_us.lock().oldest_ordered().copied().collect();
        decisions.sort_by(f64::total_cmp);
        let decision_us = decisions.last().map(|&max| {
            json!({"p50": percentile(&decisions, 50.0), "p99": percentile(&decisions, 99.0), "max": max})
        });
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "requests": load(&self.requests),
            "answered": load(&self.answered),
            "errors": load(&self.errors),
            "busy": load(&self.busy),
            "expired": load(&self.expired),
            "replayed": load(&self.replayed),
            "panics": load(&self.panics),
            "worker_restarts": load(&self.restarts),
            "queue_depth": self.queued.load(Ordering::Relaxed),
            "latency_ms": {"p50": latency.median_ms, "p95": latency.p95_ms, "window": latency.count},
            "decision_us": decision_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reports_counts_and_percentiles() {
        let stats = ServiceStats::default();
        stats.requests.fetch_add(3, Ordering::Relaxed);
        stats.busy.fetch_add(1, Ordering::Relaxed);
        for ms in [10.0, 20.0, 30.0] {
            stats.record_latency(ms);
        }
        let s = stats.snapshot();
        assert_eq!(s["requests"], 3);
        assert_eq!(s["busy"], 1);
        assert_eq!(s["latency_ms"]["p50"], 20.0);
        assert_eq!(s["latency_ms"]["window"], 3);
        assert_eq!(s["decision_us"], Value::Null, "no decisions yet");
        for us in [3.0, 1.0, 2.0] {
            stats.record_decision(us);
        }
        let s = stats.snapshot();
        assert_eq!(s["decision_us"]["p50"], 2.0);
        assert_eq!(s["decision_us"]["max"], 3.0);
    }
}
