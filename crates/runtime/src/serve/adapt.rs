//! Per-service adaptation inside the server: asks the service's controller for a point
//! before each request, with the device's latest telemetry, and tells it how long the
//! request took. A service without a controller yet (its points are being measured on
//! this device) or without one at all (not elastic, or adaptation turned off) serves its
//! default point, and says why in its status.
//!
//! Choosing is [`crate::policy`]'s job and reading the device is [`crate::telemetry`]'s;
//! this module only connects them to the worker threads.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{Value, json};

use super::learn::Learning;
use crate::engine;
use crate::mqtt::envelope::Steering;
use crate::policy::threads::single_threaded_under_load;
use crate::policy::{Conditions, Controller, Decision, RequestPolicy};
use crate::services::{ServiceError, WarmUp};
use crate::telemetry::{Cpu, Monitor};

/// How a service's operating point is chosen.
pub enum PointChoice {
    /// By a controller over the points profiled on this device.
    Adaptive(Box<Controller>),
    /// The default point until the points have been measured in the background, then by
    /// a controller over those measurements.
    Learn(Box<Learning>),
    /// Always the service's default (or a request's pin), for the reason given.
    Fixed { why: String },
}

impl PointChoice {
    /// The points beyond the default that requests may be served at without asking for
    /// them, whose models are worth planning ahead: a controller's candidates, every point
    /// while they are still to be measured, none for a service held at its default.
    pub fn plan_ahead(&self) -> Option<PlanAhead> {
        match self {
            PointChoice::Adaptive(controller) => {
                Some(PlanAhead::Candidates(controller.state().candidates))
            }
            PointChoice::Learn(_) => Some(PlanAhead::EveryPoint),
            PointChoice::Fixed { .. } => None,
        }
    }
}

/// What [`PointChoice::plan_ahead`] plans.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanAhead {
    EveryPoint,
    Candidates(Vec<String>),
}

impl PlanAhead {
    pub fn scope(&self) -> WarmUp<'_> {
        match self {
            PlanAhead::EveryPoint => WarmUp::EveryPoint,
            PlanAhead::Candidates(points) => WarmUp::Points(points),
        }
    }
}

/// What a lane chooses with now.
enum Chooser {
    Controller(Box<Controller>),
    /// The default point, for this reason; `slo_ms` still dates requests, so a service
    /// that meets deadlines does while its points are measured.
    Default {
        why: String,
        slo_ms: Option<f64>,
    },
}

/// One service's adaptation, shared by its workers.
pub struct LanePolicy {
    chooser: Mutex<Chooser>,
    monitor: Arc<Monitor>,
    threads: ThreadUse,
    /// Requests this service runs at once.
    workers: usize,
}

impl LanePolicy {
    /// A lane's policy; a `Learn` choice starts at the default point (its measuring is
    /// started by the server, which then calls [`LanePolicy::install`]).
    pub fn new(
        choice: &PointChoice,
        monitor: Arc<Monitor>,
        threads: ThreadUse,
        workers: usize,
    ) -> LanePolicy {
        let chooser = match choice {
            PointChoice::Adaptive(controller) => Chooser::Controller(controller.clone()),
            PointChoice::Learn(learning) => Chooser::Default {
                why: learning.why_measuring(),
                slo_ms: Some(learning.policy.slo_ms),
            },
            PointChoice::Fixed { why } => Chooser::Default {
                why: why.clone(),
                slo_ms: None,
            },
        };
        LanePolicy {
            chooser: Mutex::new(chooser),
            monitor,
            threads,
            workers,
        }
    }

    /// The chooser. A panic while it is held leaves it usable (parking_lot locks do not
    /// poison): every change to it is one assignment, so it always holds a whole value.
    fn chooser(&self) -> MutexGuard<'_, Chooser> {
        self.chooser.lock()
    }

    /// From now on, choose with `controller` (its points were just measured).
    pub fn install(&self, controller: Controller) {
        *self.chooser() = Chooser::Controller(Box::new(controller));
    }

    /// Keep serving the default point, for this reason (measuring failed, say).
    pub fn stay_fixed(&self, why: String) {
        let mut chooser = self.chooser();
        let slo_ms = match &*chooser {
            Chooser::Default { slo_ms, .. } => *slo_ms,
            Chooser::Controller(c) => Some(c.config().slo_ms),
        };
        *chooser = Chooser::Default { why, slo_ms };
    }

    /// The engine threads model runs use now.
    pub fn threads_now(&self) -> usize {
        self.threads.now()
    }

    /// The point for a request that waited `waited_ms` in the queue; `None` means the
    /// service's default (no controller and no pin).
    pub fn decide(
        &self,
        steering: &Steering,
        waited_ms: f64,
    ) -> Result<Option<Decision>, ServiceError> {
        let snapshot = self.monitor.latest();
        let threads = self.threads.follow(&snapshot.cpu);
        let mut chooser = self.chooser();
        let Chooser::Controller(controller) = &mut *chooser else {
            return Ok(None);
        };
        let conditions =
            Conditions::from_snapshot(&snapshot, threads, self.threads.configured, self.workers);
        controller.set_conditions(conditions);
        let request = RequestPolicy {
            pin: steering.point.as_deref(),
            deadline_ms: steering.deadline_ms,
            waited_ms,
        };
        controller
            .decide(&request, Instant::now())
            .map(Some)
            .map_err(|e| ServiceError::new("bad_request", e))
    }

    /// In how many milliseconds from its arrival a request is due: its own deadline, else
    /// the service's SLO; `None` for a service without a target and a request without a
    /// deadline.
    pub fn due_in_ms(&self, steering: &Steering) -> Option<f64> {
        steering.deadline_ms.or_else(|| match &*self.chooser() {
            Chooser::Controller(c) => Some(c.config().slo_ms),
            Chooser::Default { slo_ms, .. } => *slo_ms,
        })
    }

    /// Teaches the controller how long `point` took in the service.
    pub fn observe(&self, point: &str, service_ms: f64) {
        if let Chooser::Controller(controller) = &mut *self.chooser() {
            controller.observe(point, service_ms);
        }
    }

    /// For telemetry and status: the controller's state, or why there is none.
    pub fn state(&self) -> Value {
        match &*self.chooser() {
            Chooser::Controller(controller) => {
                let mut value = json!(controller.state());
                value["adaptive"] = json!(true);
                value["threads"] = json!(self.threads.now());
                value
            }
            Chooser::Default { why, slo_ms } => json!({
                "adaptive": false,
                "why": why,
                "slo_ms": slo_ms,
                "threads": self.threads.now(),
            }),
        }
    }
}

/// How many threads model runs use: the configured count, or (when adapting) one while
/// other processes load the cores they need ([`single_threaded_under_load`]).
#[derive(Debug, Clone, Copy)]
pub struct ThreadUse {
    pub configured: usize,
    pub adapt: bool,
}

impl ThreadUse {
    /// Applies the CPU's latest sample to the engine; returns the threads runs now use.
    pub fn follow(&self, cpu: &Cpu) -> usize {
        if self.adapt {
            let single =
                single_threaded_under_load(cpu, self.configured, engine::single_threaded());
            engine::set_single_threaded(single);
        }
        self.now()
    }

    /// The threads runs use now.
    pub fn now(&self) -> usize {
        if self.adapt && engine::single_threaded() {
            1
        } else {
            self.configured
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::{Planning, PolicyConfig, ProfiledPoint};
    use crate::telemetry::Sampler;

    #[test]
    fn a_panic_while_the_controller_is_held_leaves_it_serving() {
        let points = vec![
            ProfiledPoint::new("fast", 0.5, 10.0, 12.0),
            ProfiledPoint::new("good", 0.9, 40.0, 45.0),
            ProfiledPoint::new("slow", 0.8, 60.0, 65.0),
        ];
        let config = PolicyConfig {
            slo_ms: 100.0,
            ..PolicyConfig::default()
        };
        let controller =
            Controller::new(config, points, Planning::for_service(false), Instant::now()).unwrap();
        // A tree without /proc: the sampler reads nothing, the controller sees an idle device.
        let empty = tempfile::tempdir().unwrap();
        let monitor = Arc::new(Monitor::start(
            Sampler::new(empty.path()),
            Duration::from_secs(3600),
        ));
        let threads = ThreadUse {
            configured: 1,
            adapt: false,
        };
        let choice = PointChoice::Adaptive(Box::new(controller));
        // "slow" is no better than "good" and slower: the controller never chooses it.
        assert_eq!(
            choice.plan_ahead(),
            Some(PlanAhead::Candidates(vec!["fast".into(), "good".into()]))
        );
        let scope = choice.plan_ahead().unwrap();
        assert!(scope.scope().includes("good", "default"));
        assert!(!scope.scope().includes("slow", "default"));
        assert!(scope.scope().includes("default", "default"));
        let fixed = PointChoice::Fixed {
            why: "pinned".into(),
        };
        assert_eq!(fixed.plan_ahead(), None);
        let policy = Arc::new(LanePolicy::new(&choice, monitor, threads, 1));
        let holder = policy.clone();
        let panicked = std::thread::spawn(move || {
            let _held = holder.chooser();
            panic!("failing while the controller is locked");
        })
        .join();
        assert!(panicked.is_err());
        let decision = policy.decide(&Steering::default(), 0.0).unwrap().unwrap();
        assert_eq!(decision.point, "good");
        policy.observe("good", 41.0);
        assert_eq!(policy.state()["adaptive"], true);
        assert_eq!(policy.due_in_ms(&Steering::default()), Some(100.0));
    }
}
