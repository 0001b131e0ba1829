//! Finishing a request by its deadline: how much of the small recognizer's work still fits.
//!
//! Once the detector has run, a request's remaining cost is known far better than when its
//! operating point was chosen: the number and widths of the crops are known, and so (after
//! the tiny recognizer has read them) is which crops a cascade would re-read. A request
//! served at a declared point with a deadline may therefore step down, within the same
//! detector size, to the best declared point whose remaining small-recognizer work fits
//! the time left. Its answer is then exactly that point's answer, and names it.
//!
//! Before detection, the same reasoning picks the detector size: the best declared point
//! no better than the requested one whose predicted cost (from meters of what each stage
//! has cost lately) fits the time left. The meters follow the device's load within a
//! request or two, faster than the controller's averages.
//!
//! This module holds the arithmetic (meters, predictions, the choice of rung); running the
//! models is the pipeline's job.

use parking_lot::Mutex;

pub use crate::services::deadline::{Meter, TIME_LEFT_SHARE, fits};

use super::RecognizerChoice;

/// Weight of the newest detector run in its size's average: there is one run per request,
/// and a detector size that has become slow must be seen as slow by the next request.
const DET_EWMA_ALPHA: f64 = 0.5;

/// The detector's milliseconds per input pixel at each size it runs at. Under load the
/// cost per pixel does not scale alike at every size (large inputs slowed down 3x where
/// small ones slowed down 2x on a 2-core x86 under a CPU hog), so each size keeps its own
/// average; a run at one size also moves the others by the change it saw, so that a size
/// not run lately still follows the load.
#[derive(Debug, Default)]
pub struct DetMeter {
    /// (detector size limit, milliseconds per input pixel).
    rates: Mutex<Vec<(u32, f64)>>,
}

impl DetMeter {
    pub fn record(&self, limit: u32, ms_per_pixel: f64) {
        if !ms_per_pixel.is_finite() || ms_per_pixel < 0.0 {
            return;
        }
        let mut rates = self.rates.lock();
        let Some(i) = rates.iter().position(|&(l, _)| l == limit) else {
            rates.push((limit, ms_per_pixel));
            return;
        };
        let old = rates[i].1;
        let new = (1.0 - DET_EWMA_ALPHA) * old + DET_EWMA_ALPHA * ms_per_pixel;
        if old > 0.0 {
            for (_, rate) in rates.iter_mut() {
                *rate *= new / old;
            }
        }
        rates[i].1 = new;
    }

    /// The average at `limit`; a size never run borrows the rate of the size most recently
    /// run for the first time (a guess, until it runs itself).
    pub fn ms_per_pixel(&self, limit: u32) -> Option<f64> {
        let rates = self.rates.lock();
        rates
            .iter()
            .find(|&&(l, _)| l == limit)
            .or(rates.last())
            .map(|&(_, rate)| rate)
    }
}

/// What the stages of one image are predicted to cost, from the meters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageCosts {
    pub det_ms: f64,
    /// The tiny recognizer over every crop.
    pub tiny_ms: f64,
    /// The small recognizer over every crop.
    pub small_ms: f64,
}

impl StageCosts {
    /// A point with recognizer `choice` that sends `small_share` of the crops to the small
    /// model (1 for `Small`, 0 for `Tiny`).
    pub fn total_ms(&self, choice: RecognizerChoice, small_share: f64) -> f64 {
        let rec = match choice {
            RecognizerChoice::Tiny => self.tiny_ms,
            RecognizerChoice::Small => self.small_ms,
            RecognizerChoice::Cascade { .. } => self.tiny_ms + small_share * self.small_ms,
        };
        self.det_ms + rec
    }
}

/// The crops recognizer `choice` sends to the small model once the tiny one has read
/// them all with `confidences` (every crop for `Small`, none for `Tiny`).
pub fn small_reads(choice: RecognizerChoice, confidences: &[f32]) -> Vec<usize> {
    (0..confidences.len())
        .filter(|&i| match choice {
            RecognizerChoice::Tiny => false,
            RecognizerChoice::Small => true,
            RecognizerChoice::Cascade { threshold } => confidences[i] < threshold,
        })
        .collect()
}

/// The first rung of `ladder` (best first) whose small-model reads fit `time_left_ms`,
/// given the tiny reader's `confidences`, each crop's input `widths` and the small
/// model's cost per column; `None` when not even the last rung fits. Without a cost
/// estimate yet, the first rung is taken: there is nothing to plan with.
pub fn first_fitting(
    ladder: &[RecognizerChoice],
    confidences: &[f32],
    widths: &[usize],
    small_ms_per_column: Option<f64>,
    time_left_ms: f64,
) -> Option<usize> {
    let Some(per_column) = small_ms_per_column else {
        return (!ladder.is_empty()).then_some(0);
    };
    ladder.iter().position(|&choice| {
        let columns: usize = small_reads(choice, confidences)
            .into_iter()
            .map(|i| widths[i])
            .sum();
        columns == 0 || fits(columns as f64 * per_column, time_left_ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: RecognizerChoice = RecognizerChoice::Small;
    const C97: RecognizerChoice = RecognizerChoice::Cascade { threshold: 0.97 };
    const C90: RecognizerChoice = RecognizerChoice::Cascade { threshold: 0.9 };
    const TINY: RecognizerChoice = RecognizerChoice::Tiny;

    #[test]
    fn each_detector_size_keeps_its_rate_and_follows_the_others() {
        let meter = DetMeter::default();
        assert_eq!(meter.ms_per_pixel(960), None);
        meter.record(960, 1.0);
        assert_eq!(
            meter.ms_per_pixel(1280),
            Some(1.0),
            "unseen: another size's"
        );
        meter.record(1280, 2.0);
        assert_eq!(meter.ms_per_pixel(960), Some(1.0));
        assert_eq!(meter.ms_per_pixel(1280), Some(2.0));
        // 960 slows down: its average goes 1 -> 1.5, and 1280's moves by the same 1.5x.
        meter.record(960, 2.0);
        assert_eq!(meter.ms_per_pixel(960), Some(1.5));
        assert_eq!(meter.ms_per_pixel(1280), Some(3.0));
        meter.record(1280, f64::NAN);
        assert_eq!(meter.ms_per_pixel(1280), Some(3.0));
    }

    #[test]
    fn a_point_costs_detection_and_its_recognizer_passes() {
        let costs = StageCosts {
            det_ms: 100.0,
            tiny_ms: 20.0,
            small_ms: 80.0,
        };
        assert_eq!(costs.total_ms(TINY, 0.0), 120.0);
        assert_eq!(costs.total_ms(SMALL, 1.0), 180.0);
        assert_eq!(costs.total_ms(C90, 0.25), 140.0);
        assert!(fits(180.0, 200.0));
        assert!(!fits(180.1, 200.0));
    }

    #[test]
    fn each_recognizer_sends_its_own_crops_to_the_small_model() {
        let confidences = [0.99, 0.95, 0.5, 0.97];
        assert_eq!(small_reads(SMALL, &confidences), [0, 1, 2, 3]);
        assert_eq!(small_reads(C97, &confidences), [1, 2]);
        assert_eq!(small_reads(C90, &confidences), [2]);
        assert!(small_reads(TINY, &confidences).is_empty());
    }

    #[test]
    fn steps_down_the_ladder_until_the_small_reads_fit() {
        let ladder = [SMALL, C97, C90, TINY];
        let confidences = [0.99, 0.95, 0.5, 0.97];
        let widths = [320, 320, 640, 320];
        // 0.1 ms per column: small on all 1600 columns = 160 ms, cascade 0.97 = 96 ms,
        // cascade 0.9 = 64 ms; 90% of the time left is planned.
        let fit = |left: f64| first_fitting(&ladder, &confidences, &widths, Some(0.1), left);
        assert_eq!(fit(178.0), Some(0));
        assert_eq!(fit(177.0), Some(1));
        assert_eq!(fit(107.0), Some(1));
        assert_eq!(fit(106.0), Some(2));
        assert_eq!(fit(71.2), Some(2));
        assert_eq!(fit(71.0), Some(3));
        assert_eq!(fit(-5.0), Some(3), "tiny alone needs no small reads");
        assert_eq!(
            first_fitting(&ladder[..3], &confidences, &widths, Some(0.1), 10.0),
            None
        );
        assert_eq!(
            first_fitting(&ladder, &confidences, &widths, None, 0.0),
            Some(0),
            "no estimate yet: the requested rung"
        );
        let sure = [0.99; 4];
        assert_eq!(
            first_fitting(&ladder[1..], &sure, &widths, Some(0.1), 0.0),
            Some(0),
            "a cascade with nothing to re-read costs nothing more"
        );
    }
}
