//! How many threads a model run should use while other processes load the CPU.
//!
//! A parallel run splits each kernel across its threads and waits for the slowest one. When
//! other processes keep busy the cores those threads need, a thread that shares its core
//! stalls every kernel. On a 2-core x86 VM under a 2-thread CPU hog, OCR at small@960 took
//! a median 732-738 ms with 2 threads and 406-465 ms with one (222 and 300 ms idle), with
//! half the tail. So while the cores are contended, runs go single-threaded.
//!
//! This module only decides; the engine applies it ([`crate::engine::set_single_threaded`]).

use crate::telemetry::Cpu;

/// Go single-threaded when fewer than `threads - GO_SINGLE_BELOW` cores are left over by
/// other processes...
const GO_SINGLE_BELOW: f64 = 0.5;
/// ... and back to every thread once `threads - GO_PARALLEL_FROM` are: the gap keeps a load
/// near the threshold from flipping it on every sample.
const GO_PARALLEL_FROM: f64 = 0.25;

/// Whether runs configured for `threads` threads should go single-threaded, given the CPU's
/// latest sample and whether they are single-threaded now. Without a reading of other
/// processes' load, they keep their threads.
pub fn single_threaded_under_load(cpu: &Cpu, threads: usize, single_now: bool) -> bool {
    let other = match cpu.other_busy_cores {
        Some(other) if other.is_finite() && cpu.cores > 0 => other.max(0.0),
        _ => return false,
    };
    if threads <= 1 {
        return false;
    }
    let spare = cpu.cores as f64 - other;
    let wanted = threads.min(cpu.cores) as f64;
    if single_now {
        spare < wanted - GO_PARALLEL_FROM
    } else {
        spare < wanted - GO_SINGLE_BELOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(cores: usize, other: Option<f64>) -> Cpu {
        Cpu {
            cores,
            other_busy_cores: other,
            ..Cpu::default()
        }
    }

    #[test]
    fn goes_single_under_a_hog_and_back_when_it_stops() {
        // 2 cores, 2 threads: a hog on both cores leaves nothing spare.
        assert!(single_threaded_under_load(&cpu(2, Some(1.9)), 2, false));
        // While single-threaded, the hog takes the core we left: still contended.
        assert!(single_threaded_under_load(&cpu(2, Some(1.3)), 2, true));
        // The hog stopped.
        assert!(!single_threaded_under_load(&cpu(2, Some(0.1)), 2, true));
    }

    #[test]
    fn a_load_near_the_threshold_does_not_flip_it() {
        // 1.6 cores spare: between the two thresholds (1.5 and 1.75), so it stays put.
        assert!(!single_threaded_under_load(&cpu(2, Some(0.4)), 2, false));
        assert!(single_threaded_under_load(&cpu(2, Some(0.4)), 2, true));
        assert!(single_threaded_under_load(&cpu(2, Some(0.6)), 2, false));
        assert!(!single_threaded_under_load(&cpu(2, Some(0.2)), 2, true));
    }

    #[test]
    fn spare_cores_beyond_our_threads_absorb_other_load() {
        // 8 cores, 2 threads: 5 busy elsewhere still leaves 3.
        assert!(!single_threaded_under_load(&cpu(8, Some(5.0)), 2, false));
        assert!(single_threaded_under_load(&cpu(8, Some(6.8)), 2, false));
    }

    #[test]
    fn one_thread_or_no_reading_changes_nothing() {
        assert!(!single_threaded_under_load(&cpu(2, Some(2.0)), 1, false));
        assert!(!single_threaded_under_load(&cpu(2, None), 2, false));
        assert!(!single_threaded_under_load(
            &cpu(2, Some(f64::NAN)),
            2,
            true
        ));
        assert!(!single_threaded_under_load(&cpu(0, Some(1.0)), 2, false));
    }
}
