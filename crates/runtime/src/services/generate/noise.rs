//! Seeded Gaussian noise that any language can reproduce bit for bit.
//!
//! A generator's output is a function of its prompt and its noise, so "the same seed gives
//! the same image" must hold between this runtime, the Python reference of `export/` and
//! any client that wants to check a result. Library samplers (ziggurat in `rand_distr`,
//! numpy's PCG64 with its own normal method) are hard to match elsewhere, so the stream is
//! specified here instead, in a few lines: SplitMix64 for the integers (Steele, Lea and
//! Flood, 2014; the constants of Java's `SplittableRandom`), the top 53 bits as a uniform
//! in [0, 1), and the Box–Muller transform on pairs. The manifest names it
//! `splitmix64-box-muller`; `export/generate/common.py` has the numpy twin.
//!
//! Not for anything that needs unpredictability: it is a reproducible noise source.

use std::f64::consts::TAU;

/// The name the model manifest uses for this stream.
pub const NOISE_NAME: &str = "splitmix64-box-muller";

/// A stream of standard normal samples from a 64-bit seed.
#[derive(Debug, Clone)]
pub struct Noise {
    state: u64,
    spare: Option<f64>,
}

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// The next standard normal sample. Box–Muller makes two from two uniforms; the cosine
    /// one comes first.
    pub fn next_normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - u lies in (0, 1], so the logarithm is finite
        let radius = (-2.0 * (1.0 - self.next_unit()).ln()).sqrt();
        let angle = TAU * self.next_unit();
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }

    /// `n` samples as `f32`, in order.
    pub fn take(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_normal() as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_published_sequence() {
        // The first outputs for seed 1234567 as listed with the reference implementation
        // (Vigna, prng.di.unimi.it/splitmix64.c).
        let mut noise = Noise::new(1_234_567);
        let first: Vec<u64> = (0..3).map(|_| noise.next_u64()).collect();
        assert_eq!(
            first,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn samples_are_standard_normal_and_reproducible() {
        let a = Noise::new(7).take(20_000);
        assert_eq!(a, Noise::new(7).take(20_000));
        assert_ne!(a[..8], Noise::new(8).take(8)[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        // standard errors: 0.007 for the mean, 0.01 for the variance
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.04, "variance {var}");
    }
}
