//! Text recognition with a CTC model: the character set, batch preprocessing and greedy
//! CTC decoding, as PP-OCR publishes them. Pure functions on pixels and probabilities:
//! running the model is the pipeline's job, not this module's.

use image::RgbImage;
use ndarray::{Array4, ArrayView2, s};

use crate::imaging::{resize_bilinear, write_bgr_normalized};

/// Input height of every PP-OCR recognizer.
pub const HEIGHT: u32 = 48;
/// Narrowest input width: shorter crops are padded to it.
///
/// PP-OCR's own pipeline pads every crop to at least 320 columns, but a median ICDAR 2015
/// word needs 106 columns at height 48 and 96% of them need fewer than 320, so most
/// of the recognizer's work went to padding. At 128 a crop costs about a third; the small
/// recognizer reads as well, the tiny one loses about a point on cropped words, and end to
/// end the points moved by -0.6 to +1.0 points (55.0 -> 55.2% at `cascade0.97@960`, 60.4
/// -> 60.9% at `det_small/small@960`; docs/benchmarks.md, "Narrower recognizer inputs").
pub const MIN_WIDTH: u32 = 128;
/// Widest input (PaddleX's limit): wider crops are squeezed to it, so a 100000 x 1 image
/// cannot make a multi-gigabyte tensor.
pub const MAX_WIDTH: u32 = 3200;

/// The classes a CTC recognizer predicts: blank, the dictionary, then a space.
#[derive(Debug, Clone)]
pub struct Charset {
    /// Every label, one after another: class `i` for `1 <= i <= len` is
    /// `text[ends[i - 2]..ends[i - 1]]` (from 0 for the first); class `len + 1` is a space.
    /// One string rather than a `String` per label: the small dictionary's 18 thousand
    /// labels took 1 MB as separate strings.
    text: String,
    ends: Vec<u32>,
    /// Class indices allowed when decoding is restricted to printable ASCII.
    ascii_classes: Vec<usize>,
}

impl Charset {
    /// Parses a dictionary: one character per line; `\r` line endings are tolerated.
    pub fn from_dictionary(dictionary: &str) -> Charset {
        let mut lines: Vec<&str> = dictionary
            .split('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let mut ascii_classes = vec![0];
        ascii_classes.extend(
            lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.len() == 1 && l.bytes().all(|b| (0x20..0x7f).contains(&b)))
                .map(|(i, _)| i + 1),
        );
        ascii_classes.push(lines.len() + 1);
        let mut text = String::with_capacity(lines.iter().map(|l| l.len()).sum());
        let mut ends = Vec::with_capacity(lines.len());
        for line in &lines {
            text.push_str(line);
            ends.push(text.len() as u32);
        }
        Charset {
            text,
            ends,
            ascii_classes,
        }
    }

    /// Number of classes the model must output (blank + dictionary + space).
    pub fn class_count(&self) -> usize {
        self.ends.len() + 2
    }

    fn label(&self, class: usize) -> &str {
        let count = self.ends.len();
        match class {
            c if (1..=count).contains(&c) => {
                let start = if c == 1 { 0 } else { self.ends[c - 2] as usize };
                &self.text[start..self.ends[c - 1] as usize]
            }
            c if c == count + 1 => " ",
            _ => "",
        }
    }

    /// Greedy CTC decoding of one `[T, C]` probability sequence: best class per step, merge
    /// repeats, drop blanks. Confidence is the mean probability of the kept steps (0 if none).
    pub fn decode(&self, probs: ArrayView2<'_, f32>, ascii_only: bool) -> (String, f32) {
        let mut text = String::new();
        let (mut sum, mut kept) = (0.0f64, 0usize);
        let mut previous = usize::MAX;
        for step in probs.rows() {
            let (class, p) = if ascii_only {
                best_of(self.ascii_classes.iter().map(|&c| (c, step[c])))
            } else {
                best_of(step.iter().copied().enumerate())
            };
            if class != previous && class != 0 {
                text.push_str(self.label(class));
                sum += p as f64;
                kept += 1;
            }
            previous = class;
        }
        let confidence = if kept == 0 {
            0.0
        } else {
            (sum / kept as f64) as f32
        };
        (text, confidence)
    }
}

/// The first class with the highest probability (as numpy's argmax).
fn best_of(scores: impl Iterator<Item = (usize, f32)>) -> (usize, f32) {
    scores.fold((0, f32::NEG_INFINITY), |best, (c, p)| {
        if p > best.1 { (c, p) } else { best }
    })
}

/// Width-to-height ratio, the key crops are batched by.
pub fn aspect(img: &RgbImage) -> f32 {
    img.width() as f32 / img.height() as f32
}

/// Input width for a batch whose widest crop is `needed` pixels wide at height 48.
///
/// Widths come in a few geometric steps (128, 160, 224, 288, 384, ... each about 1.25 times
/// the last, in multiples of 32) rather than exactly: an engine that plans per shape would
/// otherwise build a new plan for almost every batch of a scene. The extra right padding
/// costs at most a quarter more work on wide crops.
pub fn padded_width(needed: usize) -> usize {
    let mut width = MIN_WIDTH as usize;
    while width < needed.min(MAX_WIDTH as usize) {
        width = (width * 5 / 4).div_ceil(32) * 32;
    }
    width.min(MAX_WIDTH as usize)
}

/// The input width `crop` needs on its own (a batch takes the widest of its crops).
pub fn input_width(crop: &RgbImage) -> usize {
    padded_width((HEIGHT as f32 * aspect(crop)) as usize)
}

/// The `[N, 3, 48, W]` input for a batch of crops: each resized to height 48 keeping its
/// aspect, normalised to [-1, 1], right-padded with 0. W is [`padded_width`] of the widest.
pub fn preprocess(crops: &[&RgbImage]) -> Array4<f32> {
    let width = crops
        .iter()
        .map(|c| input_width(c))
        .max()
        .unwrap_or(MIN_WIDTH as usize);
    let mut batch = Array4::<f32>::zeros((crops.len(), 3, HEIGHT as usize, width));
    for (i, crop) in crops.iter().enumerate() {
        let resized_w = ((HEIGHT as f32 * aspect(crop)).ceil() as usize).clamp(1, width);
        let resized = resize_bilinear(crop, resized_w as u32, HEIGHT);
        write_bgr_normalized(
            &resized,
            batch.slice_mut(s![i, .., .., ..]),
            [0.5; 3],
            [0.5; 3],
        );
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use ndarray::Array2;

    fn charset() -> Charset {
        Charset::from_dictionary("a\r\nb\r\nc\r\n")
    }

    /// One-hot-ish steps: each step puts `p` on its class and spreads the rest.
    fn steps(classes: &[(usize, f32)], n_classes: usize) -> Array2<f32> {
        let mut m = Array2::<f32>::zeros((classes.len(), n_classes));
        for (t, &(c, p)) in classes.iter().enumerate() {
            m.row_mut(t).fill((1.0 - p) / (n_classes - 1) as f32);
            m[[t, c]] = p;
        }
        m
    }

    #[test]
    fn dictionary_strips_carriage_returns_and_adds_blank_and_space() {
        let cs = charset();
        assert_eq!(cs.class_count(), 5);
        assert_eq!(cs.label(1), "a");
        assert_eq!(cs.label(3), "c");
        assert_eq!(cs.label(4), " ");
        assert_eq!(cs.label(0), "");
        assert_eq!(cs.label(5), "");
        let wide = Charset::from_dictionary("x\né\n漢字\n\ny\n");
        let labels: Vec<&str> = (0..7).map(|c| wide.label(c)).collect();
        assert_eq!(labels, ["", "x", "é", "漢字", "", "y", " "]);
    }

    #[test]
    fn ctc_merges_repeats_and_drops_blanks() {
        let cs = charset();
        // a a _ a b b _ _ c <space> c  ->  "aab c c" ... repeats merge only when adjacent.
        let seq = [
            (1, 0.9),
            (1, 0.7),
            (0, 0.99),
            (1, 0.8),
            (2, 0.6),
            (2, 0.9),
            (0, 0.9),
            (0, 0.9),
            (3, 0.5),
            (4, 0.6),
            (3, 0.7),
        ];
        let (text, conf) = cs.decode(steps(&seq, 5).view(), false);
        assert_eq!(text, "aabc c");
        // Kept steps are the first of each run: 0.9, 0.8, 0.6, 0.5, 0.6, 0.7.
        let expected = (0.9 + 0.8 + 0.6 + 0.5 + 0.6 + 0.7) / 6.0;
        assert!((conf - expected).abs() < 1e-6, "{conf} vs {expected}");
    }

    #[test]
    fn all_blank_decodes_to_empty_with_zero_confidence() {
        let (text, conf) = charset().decode(steps(&[(0, 0.9), (0, 0.8)], 5).view(), false);
        assert_eq!(text, "");
        assert_eq!(conf, 0.0);
    }

    #[test]
    fn ascii_mode_skips_non_ascii_classes() {
        let cs = Charset::from_dictionary("x\né\ny\n");
        // Step 0 prefers 'é' (class 2) with 'y' second; ASCII mode must take 'y'.
        let mut m = Array2::<f32>::zeros((1, 5));
        m[[0, 2]] = 0.6;
        m[[0, 3]] = 0.3;
        m[[0, 0]] = 0.1;
        assert_eq!(cs.decode(m.view(), false).0, "é");
        let (text, conf) = cs.decode(m.view(), true);
        assert_eq!(text, "y");
        assert!((conf - 0.3).abs() < 1e-6);
    }

    #[test]
    fn widths_come_in_geometric_steps() {
        let steps: Vec<usize> = [0, 128, 129, 160, 161, 224, 300, 1000, 3000, 1 << 40]
            .into_iter()
            .map(padded_width)
            .collect();
        assert_eq!(
            steps,
            vec![128, 128, 160, 160, 224, 224, 384, 1216, 3008, 3200]
        );
    }

    #[test]
    fn batch_is_padded_to_the_widest_crop_and_at_least_128() {
        let short = RgbImage::from_pixel(20, 10, Rgb([255, 255, 255])); // -> 96 x 48
        let long = RgbImage::from_pixel(90, 10, Rgb([0, 0, 0])); // ratio 9 -> 432 x 48
        let t = preprocess(&[&short]);
        assert_eq!(t.shape(), &[1, 3, 48, 128]);
        assert_eq!(t[[0, 0, 10, 95]], 1.0);
        assert_eq!(t[[0, 0, 10, 96]], 0.0);
        let t = preprocess(&[&short, &long]);
        assert_eq!(t.shape(), &[2, 3, 48, 480]);
        assert_eq!(t[[1, 2, 47, 431]], -1.0);
        assert_eq!(t[[1, 2, 47, 432]], 0.0);
        assert_eq!(t[[0, 1, 0, 120]], 0.0);
    }

    #[test]
    fn extreme_aspect_ratios_are_squeezed_to_the_widest_input() {
        let line = RgbImage::from_pixel(100_000, 1, Rgb([9, 9, 9]));
        let t = preprocess(&[&line]);
        assert_eq!(t.shape(), &[1, 3, 48, MAX_WIDTH as usize]);
        assert!((t[[0, 0, 47, MAX_WIDTH as usize - 1]] - (9.0 / 127.5 - 1.0)).abs() < 1e-6);
    }
}
