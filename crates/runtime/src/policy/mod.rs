//! Choosing an operating point for every request.
//!
//! A service offers several operating points of different cost and quality (declared with
//! their offline quality in its model manifest). [`profile`] holds what each point costs on
//! this device, as measured by `edgerun profile`; [`pareto`] keeps only the points worth
//! choosing; [`controller`] picks, per request, the best-quality point whose predicted
//! latency meets the service's target under the device's current conditions, with
//! hysteresis so it does not flap. [`threads`] decides when model runs should give up
//! their parallelism because other processes load the cores.
//!
//! This module decides; it never runs models, reads files on the request path, or talks to
//! the network.

pub mod controller;
pub mod pareto;
pub mod profile;
pub mod threads;

pub use self::controller::{
    Conditions, Controller, Decision, Planning, PolicyConfig, PolicyError, PolicyState, Reason,
    RequestPolicy,
};
pub use self::pareto::pareto_front;
pub use self::profile::{ProfileCache, ProfileKey, ProfiledPoint, ServiceProfile};
