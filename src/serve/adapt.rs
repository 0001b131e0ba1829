//! Per-service adaptation inside the server: asks the service's controller for a point
//! before each request, with the device's latest telemetry, and tells it how long the
//! request took. A service without a controller (not elastic, or not profiled on this
//! device) serves its default point, and says why in its status.
//!
//! Choosing is [`crate::policy`]'s job and reading the device is [`crate::telemetry`]'s;
//! this module only connects them to the worker threads.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::engine;
use crate::mqtt::envelope::Steering;
use crate::policy::threads::single_threaded_under_load;
use crate::policy::{Conditions, Controller, Decision, RequestPolicy};
use crate::services::ServiceError;
use crate::telemetry::{Cpu, Monitor};

/// How a service's operating point is chosen.
pub enum PointChoice {
    /// By a controller over the points profiled on this device.
    Adaptive(Box<Controller>),
    /// Always the service's default (or a request's pin), for the reason given.
    Fixed { why: String },
}

/// One service's adaptation, shared by its workers.
pub struct LanePolicy {
    controller: Option<Mutex<Controller>>,
    why_fixed: Option<String>,
    monitor: Arc<Monitor>,
    threads: ThreadUse,
    /// Requests this service runs at once.
    workers: usize,
}

impl LanePolicy {
    pub fn new(
        choice: PointChoice,
        monitor: Arc<Monitor>,
        threads: ThreadUse,
        workers: usize,
    ) -> LanePolicy {
        let (controller, why_fixed) = match choice {
            PointChoice::Adaptive(controller) => (Some(Mutex::new(*controller)), None),
            PointChoice::Fixed { why } => (None, Some(why)),
        };
        LanePolicy {
            controller,
            why_fixed,
            monitor,
            threads,
            workers,
        }
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
        let Some(controller) = &self.controller else {
            return Ok(None);
        };
        let conditions =
            Conditions::from_snapshot(&snapshot, threads, self.threads.configured, self.workers);
        let mut controller = controller.lock().expect("controller lock poisoned");
        controller.set_conditions(conditions);
        let request = RequestPolicy {
            pin: steering.point.as_deref(),
            deadline_ms: steering.deadline_ms,
            waited_ms,
        };
        controller
            .decide(&request, std::time::Instant::now())
            .map(Some)
            .map_err(|e| ServiceError::new("bad_request", e))
    }

    /// In how many milliseconds from its arrival a request is due: its own deadline, else
    /// the controller's SLO; `None` for a service without a controller and a request
    /// without a deadline.
    pub fn due_in_ms(&self, steering: &Steering) -> Option<f64> {
        steering.deadline_ms.or_else(|| {
            self.controller
                .as_ref()
                .map(|c| c.lock().expect("controller lock poisoned").config().slo_ms)
        })
    }

    /// Teaches the controller how long `point` took in the service.
    pub fn observe(&self, point: &str, service_ms: f64) {
        if let Some(controller) = &self.controller {
            controller
                .lock()
                .expect("controller lock poisoned")
                .observe(point, service_ms);
        }
    }

    /// For telemetry and status: the controller's state, or why there is none.
    pub fn state(&self) -> Value {
        match (&self.controller, &self.why_fixed) {
            (Some(controller), _) => {
                let state = controller.lock().expect("controller lock poisoned").state();
                let mut value = json!(state);
                value["adaptive"] = json!(true);
                value["threads"] = json!(self.threads.now());
                value
            }
            (None, why) => json!({"adaptive": false, "why": why, "threads": self.threads.now()}),
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
