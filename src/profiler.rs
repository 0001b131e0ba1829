//! `edgerun profile`: what each operating point of a service costs on this device.
//!
//! Every point serves the same sample requests through the service's own `handle` (so
//! decoding and pre/post-processing count, as they do for real requests), in rounds that
//! visit the points in turn so that background noise spreads over all of them alike. The
//! result feeds the profile cache ([`crate::policy::profile`]); this module measures and
//! does not decide anything.

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
}

/// Measures every declared point of `service` on `samples`; marks the Pareto front (by
/// quality and the latency its controller plans with: see [`Planning`]).
pub fn profile_service(
    service: &dyn Service,
    samples: &[Sample],
    settings: ProfileSettings,
) -> Result<Vec<ProfiledPoint>> {
    let points = service.points();
    anyhow::ensure!(
        !points.is_empty(),
        "{} declares no operating points with a measured quality",
        service.name()
    );
    anyhow::ensure!(!samples.is_empty(), "no sample requests to profile with");
    anyhow::ensure!(settings.rounds >= 1, "at least one round is needed");
    let total = (points.len() * samples.len() * (settings.rounds + 1)) as u64;
    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len} requests, {eta} left")
            .expect("valid template")
            .progress_chars("=> "),
    );
    // Serves every sample at `point`, appending each latency in milliseconds.
    let serve_all = |point: &str, latencies: &mut Vec<f64>| -> Result<()> {
        for (i, sample) in samples.iter().enumerate() {
            let started = Instant::now();
            service
                .handle(
                    sample.content_type.as_deref(),
                    &sample.payload,
                    Serving::at(point),
                )
                .with_context(|| format!("{point}, sample {i}"))?;
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
            progress.inc(1);
        }
        Ok(())
    };
    let mut latencies = vec![Vec::new(); points.len()];
    let mut peak_rss = vec![None; points.len()];
    // Round 0 warms each point up (plans for new shapes) and measures its memory alone.
    for (i, point) in points.iter().enumerate() {
        progress.set_message(format!("{} (warm-up)", point.name));
        reset_peak_rss();
        serve_all(&point.name, &mut Vec::new())?;
        peak_rss[i] = crate::bench::peak_rss_mib();
    }
    for _ in 0..settings.rounds {
        for (i, point) in points.iter().enumerate() {
            progress.set_message(point.name.clone());
            serve_all(&point.name, &mut latencies[i])?;
        }
    }
    progress.finish_and_clear();
    let mut profiled: Vec<ProfiledPoint> = points
        .iter()
        .zip(&latencies)
        .zip(peak_rss)
        .map(|((point, samples), peak)| {
            let stats = LatencyStats::of(samples);
            ProfiledPoint {
                mean_ms: stats.mean_ms,
                runs: stats.count,
                peak_rss_mib: peak,
                ..ProfiledPoint::new(&point.name, point.quality, stats.median_ms, stats.p95_ms)
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
