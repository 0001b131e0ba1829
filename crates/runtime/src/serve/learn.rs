//! Zero-configuration adaptation: measuring a service's operating points in the background
//! of `serve` when no valid profile of this device exists, then handing its lane a
//! controller over what was measured, and keeping the measurements in the profile cache
//! so that the next start adapts at once.
//!
//! Requests keep being answered meanwhile, at the service's default point. A measurement
//! that overlapped a request is taken again ([`Activity`]), so that serving does not
//! inflate what the profile says a point costs. Measuring is [`crate::profiler`]'s job and
//! storing [`crate::policy::profile`]'s; this module schedules them.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::adapt::LanePolicy;
use crate::policy::profile::{self, ProfileKey, ServiceProfile};
use crate::policy::{Controller, Planning, PolicyConfig};
use crate::profiler::{Activity, ProfileSettings, Sample, profile_service};
use crate::services::{Service, WarmUp};

/// What a lane needs to become adaptive by itself.
pub struct Learning {
    /// The controller's settings once measured (its SLO dates requests meanwhile).
    pub policy: PolicyConfig,
    pub samples: Vec<Sample>,
    /// What the samples are, for the profile's record.
    pub inputs: String,
    pub settings: ProfileSettings,
    /// Where the profile cache lives and what its numbers depend on.
    pub cache: std::path::PathBuf,
    pub key: ProfileKey,
    pub manifest_sha256: String,
    /// Why no stored profile could be used (missing, or measured with other settings).
    pub reason: String,
}

impl Learning {
    /// What status says while the points are measured.
    pub fn why_measuring(&self) -> String {
        format!(
            "measuring this device's operating points ({}); serving the default point meanwhile",
            self.reason
        )
    }
}

/// One lane to measure.
pub struct LearnJob {
    pub service: Arc<dyn Service>,
    pub policy: Arc<LanePolicy>,
    pub learning: Box<Learning>,
}

/// Measures each job's points in turn, installs a controller in its lane and stores the
/// profile; calls `changed` after each lane changes (so that the status is published
/// again). Stops between two measurements once `activity` says so. Blocks: the caller
/// gives it a background thread.
pub fn run(jobs: Vec<LearnJob>, activity: &Activity, changed: impl Fn()) {
    for job in jobs {
        let name = job.service.name();
        match learn(&job, activity) {
            Ok(controller) => {
                let candidates = controller.state().candidates;
                tracing::info!(
                    "{name}: measured; adaptive over {candidates:?}, starting at {}",
                    controller.current()
                );
                job.policy.install(controller);
                // Measuring planned every point; the controller chooses among these.
                job.service.release_outside(WarmUp::Points(&candidates));
                crate::allocator::return_free_memory();
            }
            Err(e) if activity.is_stopping() => {
                tracing::debug!("{name}: measuring stopped: {e:#}");
                return;
            }
            Err(e) => {
                tracing::warn!("{name}: measuring its points failed: {e:#}");
                job.policy
                    .stay_fixed(format!("measuring its points failed: {e:#}"));
                // Held at its default now, as a server started with `--no-adapt` is.
                job.service.release_outside(WarmUp::DefaultPoint);
                crate::allocator::return_free_memory();
            }
        }
        changed();
    }
}

fn learn(job: &LearnJob, activity: &Activity) -> Result<Controller> {
    let learning = &job.learning;
    let service = job.service.as_ref();
    let points = profile_service(
        service,
        &learning.samples,
        learning.settings,
        Some(activity),
    )?;
    let metric = service.points().and_then(|p| p.metric.clone());
    let measured = ServiceProfile {
        manifest_sha256: learning.manifest_sha256.clone(),
        quality_metric: metric,
        inputs: learning.inputs.clone(),
        points: points.clone(),
    };
    profile::store(&learning.cache, &learning.key, service.name(), measured)
        .context("storing the profile")?;
    Ok(Controller::new(
        learning.policy.clone(),
        points,
        Planning::for_service(service.meets_deadlines()),
        Instant::now(),
    )?)
}
