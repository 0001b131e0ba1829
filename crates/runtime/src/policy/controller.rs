//! The per-service controller: which operating point serves the next request.
//!
//! The latency of point *i* is predicted as
//!
//! ```text
//! predicted_i = profiled_i x conditions x slowdown
//! ```
//!
//! where `profiled_i` is the point's p95 on this device, or its median for a service that
//! steps down mid-request when one runs long (see [`Planning`]),
//!
//! `conditions` is what telemetry says about the device now compared with when it was
//! profiled (CPU contention from other processes, a thermally capped clock) and `slowdown` is
//! an EWMA of observed / expected service times (expected: the profiled mean under the
//! current conditions), which learns whatever telemetry misses. Each observation weighs in
//! by the share of the SLO it was expected to take, so that the cheapest points (whose
//! times are mostly fixed overheads) cannot talk the controller out of the expensive ones.
//!
//! The controller serves the best-quality point whose prediction fits the request's budget
//! (the SLO minus the time it already waited in the queue). It steps down at once when the
//! current point stops fitting, and steps up only after a better point has fitted with
//! headroom for a whole window, so noise does not make it flap.
//!
//! Decisions are pure arithmetic on a few numbers (well under a microsecond): telemetry is
//! sampled elsewhere and handed in with [`Controller::set_conditions`].

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::pareto_front;
use super::profile::ProfiledPoint;
use crate::telemetry::Snapshot;

/// Which profiled latency the controller plans a point with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Planning {
    /// The p95: the point itself must meet the target, slow requests included.
    Tail,
    /// The median: the service meets the deadline of a request that runs long by stepping
    /// down mid-request ([`crate::services::Service::meets_deadlines`]), so planning for
    /// the tail would give away quality on every typical request.
    Median,
}

impl Planning {
    pub fn for_service(meets_deadlines: bool) -> Planning {
        if meets_deadlines {
            Planning::Median
        } else {
            Planning::Tail
        }
    }

    pub fn latency_ms(self, point: &ProfiledPoint) -> f64 {
        match self {
            Planning::Tail => point.p95_ms,
            Planning::Median => point.p50_ms,
        }
    }
}

/// A service's latency target and how eagerly the controller moves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Latency target per request (queue wait included), in milliseconds.
    pub slo_ms: f64,
    /// Points of lower quality are never chosen, even when nothing else meets the SLO.
    pub min_quality: Option<f64>,
    /// A better point must have fitted (with headroom) for this long before stepping up.
    pub up_window_s: f64,
    /// Stepping up needs the better point predicted within this share of the budget.
    pub headroom: f64,
    /// Weight of the newest observation in the slowdown average.
    pub ewma_alpha: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            slo_ms: 1000.0,
            min_quality: None,
            up_window_s: 5.0,
            headroom: 0.9,
            // Per-image latencies vary (p95 is ~1.6x the median on ICDAR scenes): a slow
            // average keeps that from reading as load; telemetry reacts to load at once.
            ewma_alpha: 0.1,
        }
    }
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |m: &str| Err(PolicyError::InvalidConfig(m.into()));
        if !(self.slo_ms.is_finite() && self.slo_ms > 0.0) {
            return invalid("slo_ms must be a positive number");
        }
        if !(self.up_window_s.is_finite() && self.up_window_s >= 0.0) {
            return invalid("up_window_s must be 0 or more");
        }
        if !(self.headroom > 0.0 && self.headroom <= 1.0) {
            return invalid("headroom must lie in (0, 1]");
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return invalid("ewma_alpha must lie in (0, 1]");
        }
        if self.min_quality.is_some_and(|q| !q.is_finite()) {
            return invalid("min_quality must be a number");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid policy: {0}")]
    InvalidConfig(String),
    #[error("no operating point has been profiled")]
    NoPoints,
    #[error("no profiled point reaches min_quality {min_quality} (best: {best})")]
    NothingGoodEnough { min_quality: f64, best: f64 },
    #[error("deadline_ms {0} is not a positive number")]
    BadDeadline(f64),
}

/// How much slower than when profiled the device runs now, from telemetry alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Conditions {
    /// Other processes competing for the cores our threads need (1 = none).
    pub cpu_contention: f64,
    /// The clock's cap relative to its maximum, inverted (1 = not capped).
    pub throttle: f64,
    /// The threads per run profiled over those runs use now (1 = all of them; more while
    /// they run single-threaded under load, see [`crate::policy::threads`]). Runs with
    /// fewer threads learn a slowdown of their own.
    pub thread_ratio: f64,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            cpu_contention: 1.0,
            throttle: 1.0,
            thread_ratio: 1.0,
        }
    }
}

impl Conditions {
    /// `threads_now` of `threads` (configured) per run, `workers` requests at once. With
    /// fair scheduling, our threads and the other load share the cores, so once both
    /// together want more than there are, each thread gets proportionally less; the profile
    /// was taken with no other load.
    pub fn from_snapshot(
        snapshot: &Snapshot,
        threads_now: usize,
        threads: usize,
        workers: usize,
    ) -> Conditions {
        let cores = snapshot.cpu.cores.max(1) as f64;
        let demand = ((threads_now * workers) as f64).clamp(1.0, cores);
        let cpu_contention = match snapshot.cpu.other_busy_cores {
            Some(other) if other.is_finite() => ((demand + other.max(0.0)) / cores).max(1.0),
            _ => 1.0,
        };
        let throttle = match snapshot.frequency_cap() {
            Some(cap) if cap.is_finite() && cap > 0.0 => (1.0 / cap).clamp(1.0, 8.0),
            _ => 1.0,
        };
        Conditions {
            cpu_contention,
            throttle,
            thread_ratio: (threads.max(1) as f64 / threads_now.max(1) as f64).max(1.0),
        }
    }

    /// The slowdown telemetry predicts (thread count aside: that one is learnt).
    pub fn factor(&self) -> f64 {
        self.cpu_contention * self.throttle
    }

    fn fewer_threads(&self) -> bool {
        self.thread_ratio > 1.0
    }
}

/// What a request asks of the controller.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestPolicy<'a> {
    /// Serve exactly this point.
    pub pin: Option<&'a str>,
    /// This request's own latency target, instead of the service's SLO.
    pub deadline_ms: Option<f64>,
    /// How long the request already waited in the queue.
    pub waited_ms: f64,
}

/// Why a point was chosen, or why the controller switched.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reason {
    /// The best point that fits, as first chosen.
    Start,
    /// The current point fits the budget; nothing better has fitted long enough.
    Steady,
    /// The current point was predicted over budget: stepped down.
    Overload { predicted_ms: f64, budget_ms: f64 },
    /// A better point fitted with headroom for the whole window: stepped up.
    Headroom { predicted_ms: f64, held_s: f64 },
    /// Nothing allowed fits: the cheapest allowed point.
    SloUnreachable { predicted_ms: f64, budget_ms: f64 },
    /// The request pinned this point.
    Pinned,
    /// The best point within the request's own deadline.
    Deadline { budget_ms: f64 },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Start => write!(f, "start: best point that fits"),
            Reason::Steady => write!(f, "steady"),
            Reason::Overload {
                predicted_ms,
                budget_ms,
            } => write!(
                f,
                "overload: predicted {predicted_ms:.0} ms > budget {budget_ms:.0} ms"
            ),
            Reason::Headroom {
                predicted_ms,
                held_s,
            } => write!(
                f,
                "headroom: better point predicted {predicted_ms:.0} ms for {held_s:.1} s"
            ),
            Reason::SloUnreachable {
                predicted_ms,
                budget_ms,
            } => write!(
                f,
                "slo unreachable: cheapest predicted {predicted_ms:.0} ms > budget {budget_ms:.0} ms"
            ),
            Reason::Pinned => write!(f, "pinned by the request"),
            Reason::Deadline { budget_ms } => write!(f, "request deadline {budget_ms:.0} ms"),
        }
    }
}

/// The point for one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub point: String,
    /// `None` for a pinned point that was never profiled.
    pub predicted_ms: Option<f64>,
    pub reason: Reason,
}

/// A change of the current point, for telemetry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Switch {
    pub from: String,
    pub to: String,
    pub reason: Reason,
    /// Seconds since the controller started.
    pub at_s: f64,
}

/// The controller's state, for telemetry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyState {
    pub point: String,
    pub slo_ms: f64,
    pub planning: Planning,
    pub predicted_ms: f64,
    pub slowdown: f64,
    pub conditions: Conditions,
    pub switches: u64,
    pub last_switch: Option<Switch>,
    /// The points it chooses among (the Pareto front above min_quality), cheapest first.
    pub candidates: Vec<String>,
}

/// An observation expected to take this share of the SLO (or more) teaches the slowdown
/// fully; cheaper ones teach in proportion.
const FULL_EVIDENCE_SHARE: f64 = 0.25;

/// The limits of the learned slowdown: beyond them an observation is a fault, not a trend.
const SLOWDOWN_RANGE: (f64, f64) = (0.2, 50.0);

/// Chooses operating points for one service. Not thread-safe by itself: a service's
/// workers share it behind a mutex (each call is far below a microsecond).
#[derive(Debug, Clone)]
pub struct Controller {
    config: PolicyConfig,
    planning: Planning,
    /// Every profiled point (pins may name any of them).
    profiled: Vec<ProfiledPoint>,
    /// Indices into `profiled`: the front above min_quality, cheapest (and worst) first.
    candidates: Vec<usize>,
    /// Index into `candidates`.
    current: usize,
    /// Learned with every configured thread per run...
    slowdown: f64,
    /// ... and with fewer, once runs have gone single-threaded under load. Kept apart so
    /// that neither regime's learning misleads the other when the thread count flips.
    fewer_threads_slowdown: Option<f64>,
    conditions: Conditions,
    /// Since when a better point has fitted with headroom.
    better_since: Option<Instant>,
    started: Instant,
    switches: u64,
    last_switch: Option<Switch>,
}

impl Controller {
    /// A controller over `profiled` points, planned with `planning`'s latencies; it starts
    /// on the best one that fits the SLO as profiled.
    pub fn new(
        config: PolicyConfig,
        profiled: Vec<ProfiledPoint>,
        planning: Planning,
        now: Instant,
    ) -> Result<Controller, PolicyError> {
        config.validate()?;
        if profiled.is_empty() {
            return Err(PolicyError::NoPoints);
        }
        let costs: Vec<(f64, f64)> = profiled
            .iter()
            .map(|p| (planning.latency_ms(p), p.quality))
            .collect();
        let min_quality = config.min_quality.unwrap_or(f64::NEG_INFINITY);
        let candidates: Vec<usize> = pareto_front(&costs)
            .into_iter()
            .filter(|&i| profiled[i].quality >= min_quality)
            .collect();
        if candidates.is_empty() {
            let best = profiled.iter().map(|p| p.quality).fold(f64::NAN, f64::max);
            return Err(PolicyError::NothingGoodEnough { min_quality, best });
        }
        let mut controller = Controller {
            config,
            planning,
            profiled,
            candidates,
            current: 0,
            slowdown: 1.0,
            fewer_threads_slowdown: None,
            conditions: Conditions::default(),
            better_since: None,
            started: now,
            switches: 0,
            last_switch: None,
        };
        controller.current = controller
            .best_fitting(controller.config.slo_ms)
            .unwrap_or(0);
        Ok(controller)
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The current point's name.
    pub fn current(&self) -> &str {
        &self.candidate(self.current).name
    }

    /// Telemetry's latest word on the device.
    pub fn set_conditions(&mut self, conditions: Conditions) {
        self.conditions = conditions;
    }

    fn candidate(&self, index: usize) -> &ProfiledPoint {
        &self.profiled[self.candidates[index]]
    }

    fn expected_mean(&self, point: &ProfiledPoint) -> f64 {
        point.mean_ms * self.conditions.factor()
    }

    fn predict(&self, point: &ProfiledPoint) -> f64 {
        self.planning.latency_ms(point) * self.conditions.factor() * self.slowdown()
    }

    /// The learned slowdown of the thread regime runs are in now. Before runs with fewer
    /// threads have been observed, they are assumed to scale perfectly with threads: a
    /// pessimistic guess that the first observations correct.
    fn slowdown(&self) -> f64 {
        if self.conditions.fewer_threads() {
            self.fewer_threads_slowdown
                .unwrap_or(self.slowdown * self.conditions.thread_ratio)
        } else {
            self.slowdown
        }
    }

    /// The best candidate predicted within `budget_ms`.
    fn best_fitting(&self, budget_ms: f64) -> Option<usize> {
        (0..self.candidates.len())
            .rev()
            .find(|&i| self.predict(self.candidate(i)) <= budget_ms)
    }

    /// The point for the next request. A pin or a deadline decides that request alone; an
    /// ordinary request may move the current point (down at once, up after the window).
    pub fn decide(
        &mut self,
        request: &RequestPolicy<'_>,
        now: Instant,
    ) -> Result<Decision, PolicyError> {
        if let Some(pin) = request.pin {
            let predicted_ms = self
                .profiled
                .iter()
                .find(|p| p.name == pin)
                .map(|p| self.predict(p));
            return Ok(Decision {
                point: pin.to_string(),
                predicted_ms,
                reason: Reason::Pinned,
            });
        }
        if let Some(deadline) = request.deadline_ms {
            if !(deadline.is_finite() && deadline > 0.0) {
                return Err(PolicyError::BadDeadline(deadline));
            }
            let budget_ms = deadline - request.waited_ms.max(0.0);
            let (index, reason) = match self.best_fitting(budget_ms) {
                Some(i) => (i, Reason::Deadline { budget_ms }),
                None => (0, self.unreachable(budget_ms)),
            };
            return Ok(self.decision(index, reason));
        }
        let budget_ms = self.config.slo_ms - request.waited_ms.max(0.0);
        let reason = self.reconsider(budget_ms, now);
        Ok(self.decision(self.current, reason))
    }

    fn decision(&self, index: usize, reason: Reason) -> Decision {
        let point = self.candidate(index);
        Decision {
            point: point.name.clone(),
            predicted_ms: Some(self.predict(point)),
            reason,
        }
    }

    fn unreachable(&self, budget_ms: f64) -> Reason {
        Reason::SloUnreachable {
            predicted_ms: self.predict(self.candidate(0)),
            budget_ms,
        }
    }

    /// Moves the current point if it must (down) or may (up); says why it is where it is.
    fn reconsider(&mut self, budget_ms: f64, now: Instant) -> Reason {
        let predicted_ms = self.predict(self.candidate(self.current));
        if predicted_ms > budget_ms {
            self.better_since = None;
            let (target, reason) = match self.best_fitting(budget_ms) {
                Some(i) => (
                    i,
                    Reason::Overload {
                        predicted_ms,
                        budget_ms,
                    },
                ),
                None => (0, self.unreachable(budget_ms)),
            };
            if target < self.current {
                self.switch_to(target, reason.clone(), now);
            }
            return reason;
        }
        let better = self
            .best_fitting(budget_ms * self.config.headroom)
            .filter(|&i| i > self.current);
        let Some(better) = better else {
            self.better_since = None;
            return Reason::Steady;
        };
        let since = *self.better_since.get_or_insert(now);
        let held_s = (now - since).as_secs_f64();
        if held_s < self.config.up_window_s {
            return Reason::Steady;
        }
        let reason = Reason::Headroom {
            predicted_ms: self.predict(self.candidate(better)),
            held_s,
        };
        self.switch_to(better, reason.clone(), now);
        self.better_since = None;
        reason
    }

    fn switch_to(&mut self, index: usize, reason: Reason, now: Instant) {
        self.last_switch = Some(Switch {
            from: self.current().to_string(),
            to: self.candidate(index).name.clone(),
            reason,
            at_s: (now - self.started).as_secs_f64(),
        });
        self.current = index;
        self.switches += 1;
    }

    /// Learns from a served request: `service_ms` is its time in the service (queue wait
    /// excluded). Unprofiled points (pins) teach nothing.
    pub fn observe(&mut self, point: &str, service_ms: f64) {
        let Some(profiled) = self.profiled.iter().find(|p| p.name == point) else {
            return;
        };
        let expected = self.expected_mean(profiled);
        if !(service_ms.is_finite() && service_ms >= 0.0 && expected > 0.0) {
            return;
        }
        let ratio = (service_ms / expected).clamp(SLOWDOWN_RANGE.0, SLOWDOWN_RANGE.1);
        // An observation counts fully once it was expected to take a quarter of the budget,
        // and in proportion below that: a point that costs a thousandth of the SLO is all
        // fixed overheads and timer noise, and its ratio says nothing about whether the big
        // points fit.
        let evidence = (expected / (FULL_EVIDENCE_SHARE * self.config.slo_ms)).min(1.0);
        let alpha = self.config.ewma_alpha * evidence;
        let prior = self.slowdown();
        let learned = if self.conditions.fewer_threads() {
            self.fewer_threads_slowdown.get_or_insert(prior)
        } else {
            &mut self.slowdown
        };
        *learned = (1.0 - alpha) * *learned + alpha * ratio;
    }

    pub fn state(&self) -> PolicyState {
        PolicyState {
            point: self.current().to_string(),
            slo_ms: self.config.slo_ms,
            planning: self.planning,
            predicted_ms: self.predict(self.candidate(self.current)),
            slowdown: self.slowdown(),
            conditions: self.conditions,
            switches: self.switches,
            last_switch: self.last_switch.clone(),
            candidates: (0..self.candidates.len())
                .map(|i| self.candidate(i).name.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Three points: p95 = 1.25 x p50.
    fn points() -> Vec<ProfiledPoint> {
        [
            ("fast", 0.40, 40.0),
            ("mid", 0.50, 80.0),
            ("dominated", 0.45, 120.0),
            ("best", 0.60, 160.0),
        ]
        .into_iter()
        .map(|(name, quality, p50)| ProfiledPoint::new(name, quality, p50, p50 * 1.25))
        .collect()
    }

    fn config(slo_ms: f64) -> PolicyConfig {
        PolicyConfig {
            slo_ms,
            up_window_s: 5.0,
            ..PolicyConfig::default()
        }
    }

    /// Runs `n` ordinary requests `step` apart, each observed at `service_ms`; returns the
    /// points served and the time after the last.
    fn serve(
        c: &mut Controller,
        mut now: Instant,
        n: usize,
        step: Duration,
        service_ms: impl Fn(&str, usize) -> f64,
    ) -> (Vec<String>, Instant) {
        let mut served = Vec::new();
        for i in 0..n {
            let d = c.decide(&RequestPolicy::default(), now).unwrap();
            c.observe(&d.point, service_ms(&d.point, i));
            served.push(d.point);
            now += step;
        }
        (served, now)
    }

    fn p50(name: &str) -> f64 {
        points()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap()
            .p50_ms
    }

    #[test]
    fn starts_on_the_best_point_that_fits_and_skips_dominated_ones() {
        let t0 = Instant::now();
        let c = Controller::new(config(250.0), points(), Planning::Tail, t0).unwrap();
        assert_eq!(c.current(), "best");
        assert_eq!(c.state().candidates, ["fast", "mid", "best"]);
        let c = Controller::new(config(150.0), points(), Planning::Tail, t0).unwrap();
        assert_eq!(c.current(), "mid");
        let tight = Controller::new(config(1.0), points(), Planning::Tail, t0).unwrap();
        assert_eq!(tight.current(), "fast", "nothing fits: the cheapest");
        let picky = PolicyConfig {
            min_quality: Some(0.5),
            ..config(1.0)
        };
        let c = Controller::new(picky, points(), Planning::Tail, t0).unwrap();
        assert_eq!(c.state().candidates, ["mid", "best"]);
        assert_eq!(c.current(), "mid", "min_quality beats the SLO");
        let impossible = PolicyConfig {
            min_quality: Some(0.9),
            ..config(250.0)
        };
        assert!(matches!(
            Controller::new(impossible, points(), Planning::Tail, t0),
            Err(PolicyError::NothingGoodEnough { .. })
        ));
        assert_eq!(
            Controller::new(config(250.0), vec![], Planning::Tail, t0).unwrap_err(),
            PolicyError::NoPoints
        );
    }

    #[test]
    fn steps_down_at_once_on_overload_and_back_up_only_after_the_window() {
        let t0 = Instant::now();
        let step = Duration::from_millis(250);
        let mut c = Controller::new(config(300.0), points(), Planning::Tail, t0).unwrap();
        // As profiled: stays on best (p95 200 ms).
        let (served, now) = serve(&mut c, t0, 20, step, |p, _| p50(p));
        assert!(served.iter().all(|p| p == "best"), "{served:?}");
        // Everything becomes 3.5x slower (a hog the telemetry does not see): best 700 ms and
        // mid 350 ms no longer fit 300 ms, fast (175 ms) does.
        let (served, now) = serve(&mut c, now, 30, step, |p, _| p50(p) * 3.5);
        let first_down = served.iter().position(|p| p != "best").unwrap();
        assert!(first_down <= 3, "stepped down late: {served:?}");
        assert_eq!(served.last().unwrap(), "fast", "{served:?}");
        assert!(matches!(
            c.state().last_switch.unwrap().reason,
            Reason::Overload { .. }
        ));
        // Load gone: back to best, but not before the window has passed.
        let (served, _) = serve(&mut c, now, 60, step, |p, _| p50(p));
        let first_up = served.iter().position(|p| p != "fast").unwrap();
        let held = first_up as f64 * step.as_secs_f64();
        assert!(
            (5.0..8.0).contains(&held),
            "stepped up after {held} s: {served:?}"
        );
        assert_eq!(served.last().unwrap(), "best");
        assert!(matches!(
            c.state().last_switch.unwrap().reason,
            Reason::Headroom { .. }
        ));
    }

    #[test]
    fn conditions_from_telemetry_step_down_before_any_slow_request() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(250.0), points(), Planning::Tail, t0).unwrap();
        assert_eq!(c.current(), "best");
        // Two other cores' worth of load on a 2-core device, our demand 2 cores: each of our
        // threads gets half a core.
        let mut snapshot = Snapshot::default();
        snapshot.cpu.cores = 2;
        snapshot.cpu.other_busy_cores = Some(2.0);
        let conditions = Conditions::from_snapshot(&snapshot, 2, 2, 1);
        assert_eq!(conditions.cpu_contention, 2.0);
        assert_eq!(conditions.throttle, 1.0);
        c.set_conditions(conditions);
        let d = c.decide(&RequestPolicy::default(), t0).unwrap();
        assert_eq!(d.point, "mid", "160x1.25x2 = 400 > 250 >= 80x1.25x2");
        assert_eq!(
            d.reason,
            Reason::Overload {
                predicted_ms: 400.0,
                budget_ms: 250.0
            }
        );
        // Observations at the slower speed telemetry predicted teach no extra slowdown.
        c.observe("mid", 160.0);
        assert!((c.state().slowdown - 1.0).abs() < 1e-12);
        // No other load and 1 of 2 cores wanted: no contention.
        snapshot.cpu.other_busy_cores = Some(0.5);
        assert_eq!(
            Conditions::from_snapshot(&snapshot, 1, 1, 1).cpu_contention,
            1.0
        );
    }

    #[test]
    fn runs_with_fewer_threads_learn_their_own_slowdown() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(250.0), points(), Planning::Tail, t0).unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.cpu.cores = 2;
        snapshot.cpu.other_busy_cores = Some(0.0);
        let all_threads = Conditions::from_snapshot(&snapshot, 2, 2, 1);
        // One of two threads, the other core taken by other load: (1 + 1) / 2 = no contention.
        snapshot.cpu.other_busy_cores = Some(1.0);
        let one_thread = Conditions::from_snapshot(&snapshot, 1, 2, 1);
        assert_eq!(one_thread.cpu_contention, 1.0);
        assert_eq!(one_thread.thread_ratio, 2.0);
        // Learn a slowdown of 1.2 with every thread.
        for _ in 0..200 {
            c.observe("best", p50("best") * 1.2);
        }
        assert!((c.state().slowdown - 1.2).abs() < 1e-6);
        // Single-threaded, before any observation: perfect scaling is assumed (1.2 x 2).
        c.set_conditions(one_thread);
        assert!((c.state().slowdown - 2.4).abs() < 1e-6);
        let d = c.decide(&RequestPolicy::default(), t0).unwrap();
        assert_eq!(d.point, "mid", "best: 200 x 2.4 = 480 > 250");
        // It really runs 1.5x slower than profiled, and learns that...
        for _ in 0..200 {
            c.observe("mid", p50("mid") * 1.5);
        }
        assert!((c.state().slowdown - 1.5).abs() < 1e-6);
        // ... without touching what it learnt with every thread, which applies again at once.
        c.set_conditions(all_threads);
        assert!((c.state().slowdown - 1.2).abs() < 1e-6);
        c.set_conditions(one_thread);
        assert!((c.state().slowdown - 1.5).abs() < 1e-6);
    }

    #[test]
    fn the_cheapest_points_barely_move_the_learned_slowdown() {
        let t0 = Instant::now();
        let points = vec![
            ProfiledPoint::new("bm25", 0.6, 0.1, 0.1),
            ProfiledPoint::new("encoder", 0.7, 20.0, 22.0),
        ];
        let mut c = Controller::new(config(30.0), points, Planning::Median, t0).unwrap();
        // bm25 answers 5x slower than profiled (0.5 ms: overheads, not load), 100 times.
        for _ in 0..100 {
            c.observe("bm25", 0.5);
        }
        // Its evidence is 0.1 / (0.25 x 30) = 1/75 of a full observation's: the slowdown
        // moves from 1 towards 5 by 1 - (1 - 0.1/75)^100 = 12.5% of the way.
        let expected = 1.0 + 4.0 * (1.0 - (1.0 - 0.1 / 75.0f64).powi(100));
        assert!(
            (c.state().slowdown - expected).abs() < 1e-9,
            "{}",
            c.state().slowdown
        );
        assert_eq!(
            c.decide(&RequestPolicy::default(), t0).unwrap().point,
            "encoder"
        );
        // The encoder itself 1.2x slower counts fully (20 ms >= a quarter of 30).
        for _ in 0..200 {
            c.observe("encoder", 24.0);
        }
        assert!((c.state().slowdown - 1.2).abs() < 1e-6);
    }

    #[test]
    fn never_flaps_on_noise() {
        let t0 = Instant::now();
        let step = Duration::from_millis(100);
        // SLO between mid and best with room: best fits as profiled (200 <= 250).
        let mut c = Controller::new(config(250.0), points(), Planning::Tail, t0).unwrap();
        // +-15% deterministic noise around the profiled median, 2 minutes.
        let noise =
            |p: &str, i: usize| p50(p) * (1.0 + 0.15 * ((i * 7919 % 13) as f64 / 6.0 - 1.0));
        let (served, _) = serve(&mut c, t0, 1200, step, noise);
        assert!(served.iter().all(|p| p == "best"));
        assert_eq!(c.state().switches, 0);
        // The same noise on a lower point close to its limit: mid predicted 100 ms against an
        // SLO of 120 ms, best out of reach.
        let mut c = Controller::new(config(120.0), points(), Planning::Tail, t0).unwrap();
        assert_eq!(c.current(), "mid");
        let (served, _) = serve(&mut c, t0, 1200, step, noise);
        let changes = served.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(changes, 0, "{served:?}");
    }

    #[test]
    fn pins_and_deadlines_decide_one_request_without_moving_the_point() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(250.0), points(), Planning::Tail, t0).unwrap();
        let pinned = c
            .decide(
                &RequestPolicy {
                    pin: Some("dominated"),
                    ..RequestPolicy::default()
                },
                t0,
            )
            .unwrap();
        assert_eq!(pinned.point, "dominated");
        assert_eq!(pinned.reason, Reason::Pinned);
        assert_eq!(pinned.predicted_ms, Some(150.0));
        let unknown = c
            .decide(
                &RequestPolicy {
                    pin: Some("custom"),
                    ..RequestPolicy::default()
                },
                t0,
            )
            .unwrap();
        assert_eq!(
            (unknown.point.as_str(), unknown.predicted_ms),
            ("custom", None)
        );
        let deadline = |ms: f64, waited_ms: f64| RequestPolicy {
            deadline_ms: Some(ms),
            waited_ms,
            ..RequestPolicy::default()
        };
        let d = c.decide(&deadline(120.0, 0.0), t0).unwrap();
        assert_eq!(d.point, "mid");
        assert_eq!(d.reason, Reason::Deadline { budget_ms: 120.0 });
        let d = c.decide(&deadline(120.0, 30.0), t0).unwrap();
        assert_eq!(d.point, "fast", "queue wait counts against the deadline");
        let d = c.decide(&deadline(10.0, 0.0), t0).unwrap();
        assert_eq!(d.point, "fast");
        assert!(matches!(d.reason, Reason::SloUnreachable { .. }));
        assert!(matches!(
            c.decide(&deadline(f64::NAN, 0.0), t0),
            Err(PolicyError::BadDeadline(_))
        ));
        assert_eq!(
            c.current(),
            "best",
            "pins and deadlines do not move the point"
        );
        assert_eq!(c.state().switches, 0);
        // A long queue wait is an overload like any other.
        let d = c
            .decide(
                &RequestPolicy {
                    waited_ms: 100.0,
                    ..RequestPolicy::default()
                },
                t0,
            )
            .unwrap();
        assert_eq!(d.point, "mid");
    }

    #[test]
    fn bad_configs_are_rejected() {
        for bad in [
            PolicyConfig {
                slo_ms: 0.0,
                ..PolicyConfig::default()
            },
            PolicyConfig {
                headroom: 1.5,
                ..PolicyConfig::default()
            },
            PolicyConfig {
                ewma_alpha: 0.0,
                ..PolicyConfig::default()
            },
            PolicyConfig {
                up_window_s: f64::NAN,
                ..PolicyConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
