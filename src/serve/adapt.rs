//! Per-service adaptation inside the server: asks the service's controller for a point
//! before each request, with the device's latest telemetry, and tells it how long the
//! request took. A service without a controller (not elastic, or not profiled on this
//! device) serves its default point, and says why in its status.
//!
//! Choosing is [`crate::policy`]'s job and reading the device is [`crate::telemetry`]'s;
//! this module only connects them to the worker threads.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::mqtt::envelope::Steering;
use crate::policy::{Conditions, Controller, Decision, RequestPolicy};
use crate::services::ServiceError;
use crate::telemetry::Monitor;

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
    /// The cores this service keeps busy while it runs (engine threads x workers).
    demand_cores: f64,
}

impl LanePolicy {
    pub fn new(choice: PointChoice, monitor: Arc<Monitor>, demand_cores: f64) -> LanePolicy {
        let (controller, why_fixed) = match choice {
            PointChoice::Adaptive(controller) => (Some(Mutex::new(*controller)), None),
            PointChoice::Fixed { why } => (None, Some(why)),
        };
        LanePolicy {
            controller,
            why_fixed,
            monitor,
            demand_cores,
        }
    }

    /// The point for a request that waited `waited_ms` in the queue; `None` means the
    /// service's default (no controller and no pin).
    pub fn decide(
        &self,
        steering: &Steering,
        waited_ms: f64,
    ) -> Result<Option<Decision>, ServiceError> {
        let Some(controller) = &self.controller else {
            return Ok(None);
        };
        let conditions = Conditions::from_snapshot(&self.monitor.latest(), self.demand_cores);
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
                value
            }
            (None, why) => json!({"adaptive": false, "why": why}),
        }
    }
}
