//! `edgerun profile`: what each operating point of a service costs on this device.
//!
//! Every point serves the same sample requests through the service's own `handle` (so
//! decoding and pre/post-processing count, as they do for real requests), in rounds that
//! visit the points in turn so that background noise spreads over all of them alike. The
//! result feeds the profile cache ([`crate::policy::profile`]); this module measures and
//! does not decide anything.
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
}

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct ProfileSettings {
    /// Passes over the samples per point; latencies are pooled over all of them.
    pub rounds: usize,
    /// Whether to draw a progress bar (an interactive `edgerun profile`).
    pub progress: bool,
}

/// A measurement that overlapped this many requests in a row is kept anyway: a device
/// that is never idle must still become adaptive.
const MAX_RETAKES: usize = 3;

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
    // Round 0 warms each point up (plans for new shapes) and measures its memory alone.
    for (i, (name, _)) in points.iter().enumerate() {
        progress.set_message(format!("{name} (warm-up)"));
        reset_peak_rss();
        serve_all(name, &mut Vec::new())?;
        peak_rss[i] = crate::bench::peak_rss_mib();
    }
    for _ in 0..settings.rounds {
        for (i, (name, _)) in points.iter().enumerate() {
            progress.set_message(name.clone());
            serve_all(name, &mut latencies[i])?;
        }
    }
    progress.finish_and_clear();
    let mut profiled: Vec<ProfiledPoint> = points
        .iter()
        .zip(&latencies)
        .zip(peak_rss)
        .map(|(((name, quality), samples), peak)| {
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
