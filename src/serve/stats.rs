//! Per-service counters and recent latencies, for telemetry. Counting only: what to do
//! about the numbers is not decided here.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use heapless::HistoryBuf;
use serde_json::{Value, json};

use crate::latency::LatencyStats;

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
    pub queued: AtomicUsize,
    latencies_ms: Mutex<HistoryBuf<f64, WINDOW>>,
}

impl ServiceStats {
    pub fn record_latency(&self, ms: f64) {
        self.latencies_ms
            .lock()
            .expect("stats lock poisoned")
            .write(ms);
    }

    /// Telemetry for this service: counts, queue depth, latency p50/p95 over recent requests.
    pub fn snapshot(&self) -> Value {
        let recent: Vec<f64> = self
            .latencies_ms
            .lock()
            .expect("stats lock poisoned")
            .oldest_ordered()
            .copied()
            .collect();
        let latency = LatencyStats::of(&recent);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "requests": load(&self.requests),
            "answered": load(&self.answered),
            "errors": load(&self.errors),
            "busy": load(&self.busy),
            "expired": load(&self.expired),
            "queue_depth": self.queued.load(Ordering::Relaxed),
            "latency_ms": {"p50": latency.median_ms, "p95": latency.p95_ms, "window": latency.count},
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
    }
}
