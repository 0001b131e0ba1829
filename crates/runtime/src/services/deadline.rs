//! Finishing a request by its deadline: the arithmetic services share for stepping down
//! to a cheaper declared point mid-request.
//!
//! A request's cost becomes better known as it runs, and the device's load can change
//! between the controller's choice and the last stage. Services whose points are
//! sequences of stages (the legal encoder's chain of blocks, the generator's denoising
//! steps) can change course between two stages: any declared point whose stages extend
//! the ones already run (or that runs none) is still reachable, and finishing at it gives
//! exactly that point's answer. [`finish_at`] picks which; [`Meter`] keeps the running
//! averages of what stages cost that it plans with.
//!
//! This module only does arithmetic; running models and reading the clock are the
//! services' job.

use parking_lot::Mutex;
use std::time::Instant;

/// Weight of the newest sample in a meter's average. Samples come at least once per
/// request (recognizer runs by the dozen, a block or a step per stage), so a new load
/// level is learnt within a request or two.
const METER_EWMA_ALPHA: f64 = 0.2;

/// Plan to use at most this share of the time left: the meters give mean costs, and a
/// request's stages scatter around them.
pub const TIME_LEFT_SHARE: f64 = 0.9;

/// A running average of something requests cost (milliseconds per pixel of a model's
/// input, per token of a block, per denoising step, ...), learnt as they run so that it
/// follows the device's load; `None` until the first sample.
#[derive(Debug, Default)]
pub struct Meter {
    average: Mutex<Option<f64>>,
}

impl Meter {
    /// Adds a sample; non-finite or negative ones are ignored.
    pub fn record(&self, sample: f64) {
        if !sample.is_finite() || sample < 0.0 {
            return;
        }
        // A panic elsewhere cannot leave a meter half-written: the value is one f64.
        let mut average = self.average.lock();
        *average = Some(match *average {
            Some(old) => (1.0 - METER_EWMA_ALPHA) * old + METER_EWMA_ALPHA * sample,
            None => sample,
        });
    }

    pub fn average(&self) -> Option<f64> {
        *self.average.lock()
    }
}

/// Whether `predicted_ms` of work fits `time_left_ms`, keeping the margin.
pub fn fits(predicted_ms: f64, time_left_ms: f64) -> bool {
    predicted_ms <= time_left_ms * TIME_LEFT_SHARE
}

/// Milliseconds left until `deadline` (unbounded without one), less `reserve_ms` kept for
/// the work after the last stage.
pub fn ms_left(deadline: Option<Instant>, reserve_ms: f64) -> f64 {
    deadline.map_or(f64::INFINITY, |deadline| {
        deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
            * 1e3
            - reserve_ms
    })
}

/// The position of `item` (a reference into `items`) in `items`.
pub fn index_in<T>(items: &[T], item: &T) -> usize {
    items
        .iter()
        .position(|i| std::ptr::eq(i, item))
        .expect("the item is one of the items")
}

/// A declared point as a sequence of stages.
#[derive(Debug, Clone, Copy)]
pub struct Rung<'a, S> {
    /// Measured offline; points without one are never stepped down to.
    pub quality: Option<f64>,
    pub stages: &'a [S],
}

/// Which point a request should finish at, once `done` stages of point `current` have run
/// and `time_left_ms` remain: `current` while its remaining stages are predicted to fit;
/// else the best point no better than `decided` that is still reachable (its stages
/// extend the ones run, or it runs none) and fits; where none fits, the reachable one
/// with the least work left. A stage whose cost is not known yet (`stage_ms` gives
/// `None`) counts as free: a request cannot plan with costs it has never seen.
pub fn finish_at<S: PartialEq>(
    rungs: &[Rung<'_, S>],
    decided: usize,
    current: usize,
    done: usize,
    time_left_ms: f64,
    stage_ms: impl Fn(&S) -> Option<f64>,
) -> usize {
    let run = &rungs[current].stages[..done];
    let work_left = |i: usize| -> f64 {
        let stages = rungs[i].stages;
        let from = if stages.is_empty() { 0 } else { done };
        stages[from..].iter().filter_map(&stage_ms).sum()
    };
    if fits(work_left(current), time_left_ms) {
        return current;
    }
    let ceiling = rungs[decided].quality.unwrap_or(f64::INFINITY);
    let reachable = |i: usize| {
        let stages = rungs[i].stages;
        stages.is_empty() || (stages.len() >= done && stages[..done] == *run)
    };
    // (index, quality, work left) of the measured points it may step down to.
    let mut choices: Vec<(usize, f64, f64)> = (0..rungs.len())
        .filter(|&i| i != current && reachable(i))
        .filter_map(|i| Some((i, rungs[i].quality?, work_left(i))))
        .filter(|c| c.1 <= ceiling)
        .collect();
    // Best first; among equals, the one with less work left.
    choices.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.total_cmp(&b.2)));
    if let Some(c) = choices.iter().find(|c| fits(c.2, time_left_ms)) {
        return c.0;
    }
    choices
        .iter()
        .map(|c| (c.0, c.2))
        .chain([(current, work_left(current))])
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(current, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_keeps_a_running_average() {
        let meter = Meter::default();
        assert_eq!(meter.average(), None);
        meter.record(0.1);
        assert_eq!(meter.average(), Some(0.1));
        meter.record(0.2);
        assert!((meter.average().unwrap() - 0.12).abs() < 1e-12);
        meter.record(f64::NAN);
        meter.record(-1.0);
        assert!((meter.average().unwrap() - 0.12).abs() < 1e-12);
    }

    /// The legal encoder's shape: a full chain, two CoLa chains that skip its middle
    /// layers, a stitched chain from another model, and BM25 (no blocks).
    fn chains() -> Vec<(Option<f64>, Vec<&'static str>)> {
        vec![
            (Some(0.60), vec![]),
            (Some(0.65), vec!["e6", "a", "d"]),
            (Some(0.66), vec!["e6", "a", "b", "d"]),
            (Some(0.67), vec!["e6", "a", "b", "c", "d"]),
            (Some(0.68), vec!["e3", "x", "s", "c", "d"]),
            (None, vec!["e6", "a", "b", "c", "d", "d"]),
        ]
    }

    fn rungs<'a>(chains: &'a [(Option<f64>, Vec<&'static str>)]) -> Vec<Rung<'a, &'static str>> {
        chains
            .iter()
            .map(|(quality, stages)| Rung {
                quality: *quality,
                stages,
            })
            .collect()
    }

    /// Every block costs 10 ms but the embeddings, which cost 1.
    fn cost(stage: &&str) -> Option<f64> {
        Some(if stage.starts_with('e') { 1.0 } else { 10.0 })
    }

    #[test]
    fn steps_down_to_points_that_extend_what_ran() {
        let chains = chains();
        let r = rungs(&chains);
        // Before anything ran, plenty of time: the decided point.
        assert_eq!(finish_at(&r, 3, 3, 0, 1000.0, cost), 3);
        // 35 ms left before the first block of the full chain (41 ms of work): the best
        // chain that fits 0.9 x 35 = 31.5 ms is the one skipping c (31 ms); never the
        // better stitched point, whatever the time.
        assert_eq!(finish_at(&r, 3, 3, 0, 35.0, cost), 2);
        assert_eq!(finish_at(&r, 3, 3, 0, 1e9, cost), 3);
        // e6, a and b have run: the chain without c needs d alone (10 ms).
        assert_eq!(finish_at(&r, 3, 3, 3, 15.0, cost), 2);
        // Only 5 ms left: nothing with blocks fits; BM25 (no blocks left) does.
        assert_eq!(finish_at(&r, 3, 3, 3, 5.0, cost), 0);
        // From the stitched point, whose blocks share nothing with the others' prefix
        // once e3 ran: itself or BM25.
        assert_eq!(finish_at(&r, 4, 4, 1, 25.0, cost), 0);
        assert_eq!(finish_at(&r, 4, 4, 1, 100.0, cost), 4);
        // An unmeasured decided point (a pin) is finished as decided when it fits...
        assert_eq!(finish_at(&r, 5, 5, 2, 1000.0, cost), 5);
        // ... and otherwise steps down to a measured point that extends what ran.
        assert_eq!(finish_at(&r, 5, 5, 2, 25.0, cost), 2);
    }

    #[test]
    fn with_nothing_fitting_it_finishes_with_the_least_work_and_unknown_costs_are_free() {
        let chains = vec![(Some(0.7), vec!["a", "b"]), (Some(0.6), vec!["a"])];
        let r = rungs(&chains);
        assert_eq!(finish_at(&r, 0, 0, 1, 0.0, cost), 1);
        assert_eq!(finish_at(&r, 0, 0, 1, 0.0, |_: &&str| None), 0);
    }
}
