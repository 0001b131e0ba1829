//! `edgerun profile`: what each operating point of a service costs on this device.
//!
//! Every point serves the same sample requests through the service's own `handle` (so
//! decoding and pre/post-processing count, as they do for real requests), in rounds that
//! visit the points in turn so that background noise spreads over all of them alike. The
//! result feeds the profile cache ([`crate::policy::profile`]); this module measures and
//! chooses nothing for requests. What it leaves unmeasured: points its warm-up shows
//! clearly dominated, and points past what the process's memory allows
//! ([`room_to_measure`]).
//!
//! Inside `serve` it measures while requests are served: [`Activity`] tells it when a
//! request overlapped a measurement, which is then taken again.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::latency::LatencyStats;
use crate::policy::{Planning, ProfiledPoint, pareto_front};
use crate::services::{Payload, Service, Serving};

/// A request to measure with.
#[derive(Debug, Clone)]
pub struct Sample {
    pub content_type: Option<String>,
    pub payload: Payload,
}

impl Sample {
    /// An image file as a raw request (its content type left to sniffing, as a client
    /// that sends bare bytes would).
    pub fn image_file(path: &std::path::Path) -> Result<Sample> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Sample {
            content_type: None,
            payload: Payload::Raw(bytes.into()),
        })
    }

    /// The payload as a client publishes it.
    pub fn wire_bytes(&self) -> Vec<u8> {
        match &self.payload {
            Payload::Json(value) => value.to_string().into_bytes(),
            Payload::Raw(bytes) => bytes.to_vec(),
        }
    }
}

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct ProfileSettings {
    /// Passes over the samples per point; latencies are pooled over all of them.
    pub rounds: usize,
    /// Whether to draw a progress bar (an interactive `edgerun profile`).
    pub progress: bool,
    /// Skip the timed rounds of points the warm-up already shows dominated (at least
    /// [`CLEARLY_DOMINATED`] times slower than a point of no lower quality): they would
    /// never be chosen, and measuring them only delays adapting. They are left out of the
    /// result.
    pub skip_dominated: bool,
    /// What the process may hold in all ([`crate::telemetry::Memory::budget_kib`]), in MiB:
    /// once its peak so far passes [`MEASURING_SHARE`] of it, the points not yet run are
    /// left out ([`warm_up_order`]: the default first, then cheapest first). `None`: every
    /// point.
    pub memory_budget_mib: Option<f64>,
}

/// The share of the memory budget that the process's peak may have reached for a further
/// point to be measured. A further point may need a good deal more than every point
/// before it: in a lone `edgerun profile` of OCR, each larger detector size raised the
/// peak by up to 36% over the points before it (145 -> 185 -> 249 -> 333 MiB), so a
/// further point is measured only while the peak is below 1 / 1.43 of the budget.
pub const MEASURING_SHARE: f64 = 0.7;

/// The order in which the points are first run: the default point first (a server runs
/// it anyway, so it costs no memory that serving does not), then the others as the
/// manifest lists them, cheapest first. Indices into `names`.
pub fn warm_up_order(names: &[&str], default: Option<&str>) -> Vec<usize> {
    let first = default.and_then(|d| names.iter().position(|&n| n == d));
    first
        .into_iter()
        .chain((0..names.len()).filter(|&i| Some(i) != first))
        .collect()
}

/// Whether a point may still be measured with the process's peak at `peak_mib`.
pub fn room_to_measure(peak_mib: Option<f64>, budget_mib: Option<f64>) -> bool {
    match (peak_mib, budget_mib) {
        (Some(peak), Some(budget)) => peak < budget * MEASURING_SHARE,
        _ => true,
    }
}

/// How much slower in the warm-up pass (its fastest sample) than a point of no lower
/// quality makes a point not worth timing; the warm-up is noisy, so only a wide margin is
/// safe.
pub const CLEARLY_DOMINATED: f64 = 3.0;

/// The points (indices) whose warm-up latency is at least [`CLEARLY_DOMINATED`] times that
/// of another point of no lower quality.
pub fn clearly_dominated(warm_up_ms: &[f64], qualities: &[f64]) -> Vec<usize> {
    (0..warm_up_ms.len())
        .filter(|&i| {
            (0..warm_up_ms.len()).any(|j| {
                j != i
                    && qualities[j] >= qualities[i]
                    && warm_up_ms[j] * CLEARLY_DOMINATED <= warm_up_ms[i]
            })
        })
        .collect()
}

/// A measurement that overlapped a request is taken again once, and then kept: a device
/// that is never idle must still become adaptive (the controller's learning corrects what
/// the overlap inflated).
const MAX_RETAKES: usize = 1;

/// What else the process is doing while it measures: requests in service, and whether
/// to stop.
#[derive(Debug, Default)]
pub struct Activity {
    in_service: AtomicUsize,
    begun: AtomicU64,
    stopping: AtomicBool,
}

impl Activity {
    /// A request starts being served; it is over when the guard drops.
    pub fn serving(&self) -> ServingGuard<'_> {
        self.in_service.fetch_add(1, Ordering::SeqCst);
        self.begun.fetch_add(1, Ordering::SeqCst);
        ServingGuard(self)
    }

    /// Asks measuring to stop at the next sample.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether no request is being served now, in any service.
    pub fn is_idle(&self) -> bool {
        self.in_service.load(Ordering::SeqCst) == 0
    }

    /// A mark to compare with after a measurement: `None` while a request is in service.
    fn quiet_mark(&self) -> Option<u64> {
        let begun = self.begun.load(Ordering::SeqCst);
        (self.in_service.load(Ordering::SeqCst) == 0).then_some(begun)
    }
}

/// Marks one request in service ([`Activity::serving`]).
pub struct ServingGuard<'a>(&'a Activity);

impl Drop for ServingGuard<'_> {
    fn drop(&mut self) {
        self.0.in_service.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Measures every declared point of `service` on `samples`; marks the Pareto front (by
/// quality and the latency its controller plans with: see [`Planning`]).
/// Where `activity` is given, a measurement that overlapped a request is taken again (up
/// to [`MAX_RETAKES`] times), and measuring stops with an error once it says so.
pub fn profile_service(
    service: &dyn Service,
    samples: &[Sample],
    settings: ProfileSettings,
    activity: Option<&Activity>,
) -> Result<Vec<ProfiledPoint>> {
    let points = service.points().map(|p| p.measured()).unwrap_or_default();
    anyhow::ensure!(
        !points.is_empty(),
        "{} declares no operating points with a measured quality",
        service.name()
    );
    anyhow::ensure!(!samples.is_empty(), "no sample requests to profile with");
    anyhow::ensure!(settings.rounds >= 1, "at least one round is needed");
    let total = (points.len() * samples.len() * (settings.rounds + 1)) as u64;
    let progress = if settings.progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    let progress = progress.with_style(
        ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len} requests, {eta} left")
            .expect("valid template")
            .progress_chars("=> "),
    );
    // Serves every sample at `point`, appending each latency in milliseconds.
    let serve_all = |point: &str, latencies: &mut Vec<f64>| -> Result<()> {
        for (i, sample) in samples.iter().enumerate() {
            let mut retakes = 0;
            let ms = loop {
                if activity.is_some_and(Activity::is_stopping) {
                    anyhow::bail!("stopped");
                }
                let mark = activity.map(Activity::quiet_mark);
                let started = Instant::now();
                service
                    .answer(
                        sample.content_type.as_deref(),
                        &sample.payload,
                        Serving::at(point),
                    )
                    .with_context(|| format!("{point}, sample {i}"))?;
                let ms = started.elapsed().as_secs_f64() * 1e3;
                let overlapped = mark.is_some_and(|before| {
                    before.is_none() || before != activity.and_then(Activity::quiet_mark)
                });
                if !overlapped || retakes == MAX_RETAKES {
                    break ms;
                }
                retakes += 1;
            };
            latencies.push(ms);
            progress.inc(1);
        }
        Ok(())
    };
    let mut latencies = vec![Vec::new(); points.len()];
    let mut peak_rss = vec![None; points.len()];
    let mut warm_up_ms = vec![0.0; points.len()];
    let names: Vec<&str> = points.iter().map(|p| p.0.as_str()).collect();
    let default = service.points().map(|p| p.default_point.clone());
    let order = warm_up_order(&names, default.as_deref());
    let mut unmeasured: &[usize] = &[];
    // Round 0 warms each point up (plans for new shapes) and measures its memory alone.
    for (step, &i) in order.iter().enumerate() {
        let name = names[i];
        let peak = crate::telemetry::peak_rss_mib();
        if !room_to_measure(peak, settings.memory_budget_mib) {
            unmeasured = &order[step..];
            let left: Vec<&str> = unmeasured.iter().map(|&j| names[j]).collect();
            tracing::warn!(
                "{}: not measuring {left:?}: the peak so far, {:.0} MiB, is past {:.0}% of \
                 the {:.0} MiB this process may hold",
                service.name(),
                peak.unwrap_or_default(),
                MEASURING_SHARE * 100.0,
                settings.memory_budget_mib.unwrap_or_default(),
            );
            break;
        }
        progress.set_message(format!("{name} (warm-up)"));
        // Inside a server the mark is the process's, which telemetry reports: left alone,
        // the reading then covers everything so far.
        if activity.is_none() {
            reset_peak_rss();
        }
        let mut warm_up = Vec::new();
        serve_all(name, &mut warm_up)?;
        // The fastest sample: the first of a new shape also pays for building its plans.
        warm_up_ms[i] = warm_up.iter().copied().fold(f64::INFINITY, f64::min);
        peak_rss[i] = crate::telemetry::peak_rss_mib();
    }
    anyhow::ensure!(
        unmeasured.len() < points.len(),
        "no room in memory to measure any point (the peak so far is past {:.0}% of the \
         {:.0} MiB this process may hold)",
        MEASURING_SHARE * 100.0,
        settings.memory_budget_mib.unwrap_or_default()
    );
    let warmed: Vec<usize> = order
        .iter()
        .copied()
        .filter(|i| !unmeasured.contains(i))
        .collect();
    let mut skipped: Vec<usize> = unmeasured.to_vec();
    if settings.skip_dominated {
        let warm_up: Vec<f64> = warmed.iter().map(|&i| warm_up_ms[i]).collect();
        let qualities: Vec<f64> = warmed.iter().map(|&i| points[i].1).collect();
        let dominated = clearly_dominated(&warm_up, &qualities);
        skipped.extend(dominated.into_iter().map(|at| warmed[at]));
    }
    for _ in 0..settings.rounds {
        for (i, (name, _)) in points.iter().enumerate() {
            if skipped.contains(&i) {
                progress.inc(samples.len() as u64);
                continue;
            }
            progress.set_message(name.clone());
            serve_all(name, &mut latencies[i])?;
        }
    }
    progress.finish_and_clear();
    let mut profiled: Vec<ProfiledPoint> = points
        .iter()
        .zip(&latencies)
        .zip(peak_rss)
        .enumerate()
        .filter(|(i, _)| !skipped.contains(i))
        .map(|(_, (((name, quality), samples), peak))| {
            let stats = LatencyStats::of(samples);
            ProfiledPoint {
                mean_ms: stats.mean_ms,
                runs: stats.count,
                peak_rss_mib: peak,
                ..ProfiledPoint::new(name, *quality, stats.median_ms, stats.p95_ms)
            }
        })
        .collect();
    let planning = Planning::for_service(service.meets_deadlines());
    let costs: Vec<(f64, f64)> = profiled
        .iter()
        .map(|p| (planning.latency_ms(p), p.quality))
        .collect();
    for i in pareto_front(&costs) {
        profiled[i].on_front = true;
    }
    Ok(profiled)
}

/// Resets the kernel's peak-RSS mark (VmHWM) so the next reading covers only what follows;
/// where that is not possible (not Linux, or an emulator) the reading covers the whole run.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_is_idle_only_with_no_request_in_service() {
        let activity = Activity::default();
        assert!(activity.is_idle());
        let first = activity.serving();
        let second = activity.serving();
        drop(first);
        assert!(!activity.is_idle());
        drop(second);
        assert!(activity.is_idle());
    }

    #[test]
    fn a_point_is_measured_while_the_peak_is_below_its_share_of_the_budget() {
        assert!(room_to_measure(Some(240.0), Some(350.0)));
        assert!(!room_to_measure(Some(245.0), Some(350.0)));
        assert!(!room_to_measure(Some(300.0), Some(350.0)));
        // Nothing known: measure.
        assert!(room_to_measure(None, Some(350.0)));
        assert!(room_to_measure(Some(300.0), None));
    }

    #[test]
    fn the_default_point_is_run_first_then_the_manifests_order() {
        let names = ["tiny@640", "small@640", "cascade0.9@960", "small@1280"];
        assert_eq!(warm_up_order(&names, Some("cascade0.9@960")), [2, 0, 1, 3]);
        assert_eq!(warm_up_order(&names, Some("tiny@640")), [0, 1, 2, 3]);
        // A default that is not among the measured points: the manifest's order.
        assert_eq!(warm_up_order(&names, Some("custom")), [0, 1, 2, 3]);
        assert_eq!(warm_up_order(&names, None), [0, 1, 2, 3]);
    }

    #[test]
    fn samples_go_out_as_json_text_or_their_own_bytes() {
        let json = Sample {
            content_type: None,
            payload: Payload::Json(serde_json::json!({"query": "lease"})),
        };
        assert_eq!(json.wire_bytes(), br#"{"query":"lease"}"#);
        let raw = Sample {
            content_type: Some("image/png".into()),
            payload: Payload::Raw(vec![0x89, b'P'].into()),
        };
        assert_eq!(raw.wire_bytes(), [0x89, b'P']);
    }

    #[test]
    fn only_points_far_slower_than_a_better_one_are_skipped() {
        // A 50-step teacher (worst, slowest), a one-step point, a four-step point.
        let warm_up_ms = [1000.0, 10.0, 40.0];
        let qualities = [0.52, 0.77, 0.79];
        assert_eq!(clearly_dominated(&warm_up_ms, &qualities), [0]);
        // 2.9x slower than a better point is within the warm-up's noise: kept.
        assert!(clearly_dominated(&[29.0, 10.0], &[0.5, 0.6]).is_empty());
        assert_eq!(clearly_dominated(&[30.0, 10.0], &[0.5, 0.6]), [0]);
        // Slower but better is never dominated.
        assert!(clearly_dominated(&[100.0, 10.0], &[0.7, 0.6]).is_empty());
    }
}
