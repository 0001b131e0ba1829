//! Image decoding with limits, and the pixel operations the vision models were trained with.
//!
//! Decoding refuses oversized or malformed input before allocating for it, so a hostile
//! header cannot exhaust memory, and turns photos upright by their EXIF orientation as
//! OpenCV's `imread` does. Resampling follows OpenCV (`INTER_LINEAR` resize, `INTER_CUBIC`
//! perspective warp, replicated borders) because PP-OCR's published preprocessing uses it:
//! a different filter changes what the recognizer reads. This module knows nothing about
//! models or requests.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use ndarray::ArrayViewMut3;

/// Default upper bound on decoded pixels (width x height): a 48-megapixel photo.
pub const DEFAULT_MAX_PIXELS: u64 = 48_000_000;

/// Why bytes could not become an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a PNG or JPEG image")]
    Unsupported,
    #[error(
        "image is {width}x{height} = {} pixels, above the limit of {max_pixels}",
        *width as u64 * *height as u64
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("malformed image: {0}")]
    Malformed(String),
}

impl ImageError {
    /// The stable error code for responses (`unsupported_media`, `too_large`, `bad_request`).
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::Unsupported => "unsupported_media",
            ImageError::TooLarge { .. } => "too_large",
            ImageError::Malformed(_) => "bad_request",
        }
    }
}

/// Decodes a PNG or JPEG into upright 8-bit RGB, checking its size from the header first.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    let malformed = |e: image::ImageError| ImageError::Malformed(e.to_string());
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Malformed(e.to_string()))?;
    if !matches!(reader.format(), Some(ImageFormat::Png | ImageFormat::Jpeg)) {
        return Err(ImageError::Unsupported);
    }
    let mut limits = Limits::default();
    // Decoded RGBA at 16 bits per channel is the worst case the decoders allocate.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(malformed)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Malformed(format!(
            "zero-size image ({width}x{height})"
        )));
    }
    if width as u64 * height as u64 > max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    let orientation = decoder.orientation().map_err(malformed)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(malformed)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// Resizes like OpenCV's `cv::resize(..., INTER_LINEAR)` on 8-bit images, bit for bit:
/// half-pixel centres, clamped edges, no antialiasing, and OpenCV's 11-bit fixed-point
/// weights and rounding (so the recognizer sees the pixels PP-OCR's Python pipeline sees).
pub fn resize_bilinear(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    assert!(width > 0 && height > 0, "resize to zero size");
    if src.dimensions() == (width, height) {
        return src.clone();
    }
    let xs = fixed_taps(src.width(), width, Edge::ClampWeights);
    let ys = fixed_taps(src.height(), height, Edge::ClampRows);
    let row_len = width as usize * 3;
    let src_row_len = src.width() as usize * 3;
    let source_row = |y: usize| &src.as_raw()[y * src_row_len..][..src_row_len];
    // Horizontally resized source rows (weights scaled by 2^11): `rows[0]` holds source
    // row `held[0]`, the top of the current pair; moving down, the old bottom becomes the
    // new top, so each source row is resized about once.
    let mut rows = [vec![0i32; row_len], vec![0i32; row_len]];
    let mut held = [usize::MAX; 2];
    let mut out = vec![0u8; row_len * height as usize];
    for (dst_row, tap) in out.chunks_exact_mut(row_len).zip(&ys) {
        if held[0] != tap.first {
            if held[1] == tap.first {
                rows.swap(0, 1);
                held.swap(0, 1);
            } else {
                horizontal_pass(source_row(tap.first), &xs, &mut rows[0]);
                held[0] = tap.first;
            }
        }
        if held[1] != tap.second {
            horizontal_pass(source_row(tap.second), &xs, &mut rows[1]);
            held[1] = tap.second;
        }
        let (b0, b1) = (tap.weights[0] as i32, tap.weights[1] as i32);
        for ((out, &top), &bottom) in dst_row.iter_mut().zip(&rows[0]).zip(&rows[1]) {
            // OpenCV's rounding of two 11-bit passes back to 8 bits.
            let v = (((b0 * (top >> 4)) >> 16) + ((b1 * (bottom >> 4)) >> 16) + 2) >> 2;
            *out = v.clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer sized to the image")
}

fn horizontal_pass(line: &[u8], xs: &[FixedTap], out: &mut [i32]) {
    for (px, tap) in out.chunks_exact_mut(3).zip(xs) {
        let (a, b) = (&line[tap.first * 3..][..3], &line[tap.second * 3..][..3]);
        let (w0, w1) = (tap.weights[0] as i32, tap.weights[1] as i32);
        for c in 0..3 {
            px[c] = a[c] as i32 * w0 + b[c] as i32 * w1;
        }
    }
}

/// One destination index's two source indices and their weights, scaled by 2^11.
struct FixedTap {
    first: usize,
    second: usize,
    weights: [i16; 2],
}

/// How taps past the first or last source pixel are handled. OpenCV treats the axes
/// differently: columns move the tap onto the edge pixel with full weight, rows keep the
/// fractional weights and read the edge row twice (the fixed-point results differ).
#[derive(Clone, Copy, PartialEq)]
enum Edge {
    ClampWeights,
    ClampRows,
}

/// OpenCV's linear taps: the position is computed in `f32` from an `f64` scale and the
/// weights round (half to even, as `cvRound`) to 11 bits.
fn fixed_taps(src: u32, dst: u32, edge: Edge) -> Vec<FixedTap> {
    const SCALE: f32 = 2048.0;
    let scale = src as f64 / dst as f64;
    let last = src as i64 - 1;
    (0..dst)
        .map(|d| {
            let pos = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let base = pos.floor();
            let mut frac = pos - base;
            let mut first = base as i64;
            if edge == Edge::ClampWeights && (first < 0 || first >= last) {
                first = first.clamp(0, last);
                frac = 0.0;
            }
            FixedTap {
                first: first.clamp(0, last) as usize,
                second: (first + 1).clamp(0, last) as usize,
                weights: [
                    ((1.0 - frac) * SCALE).round_ties_even() as i16,
                    (frac * SCALE).round_ties_even() as i16,
                ],
            }
        })
        .collect()
}

/// A 3x3 homography, row-major: `(x, y)` maps to `((m0 x + m1 y + m2) / w, (m3 x + m4 y +
/// m5) / w)` with `w = m6 x + m7 y + m8`.
pub type Homography = [f64; 9];

/// The homography taking the four points `from` onto `to`, as OpenCV's
/// `getPerspectiveTransform` solves it (an 8x8 linear system); `None` when the points are
/// degenerate (three on a line).
pub fn perspective_transform(from: [[f64; 2]; 4], to: [[f64; 2]; 4]) -> Option<Homography> {
    let mut a = [[0f64; 9]; 8];
    for i in 0..4 {
        let ([x, y], [u, v]) = (from[i], to[i]);
        a[i] = [x, y, 1.0, 0.0, 0.0, 0.0, -x * u, -y * u, u];
        a[i + 4] = [0.0, 0.0, 0.0, x, y, 1.0, -x * v, -y * v, v];
    }
    // Gaussian elimination with partial pivoting on the augmented matrix.
    for col in 0..8 {
        let pivot = (col..8).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))?;
        if a[pivot][col].abs() < f64::EPSILON {
            return None;
        }
        a.swap(col, pivot);
        let pivot_row = a[col];
        for row in a.iter_mut().skip(col + 1) {
            let factor = row[col] / pivot_row[col];
            for (value, above) in row.iter_mut().zip(pivot_row).skip(col) {
                *value -= factor * above;
            }
        }
    }
    let mut m = [0f64; 9];
    for row in (0..8).rev() {
        let known: f64 = (row + 1..8).map(|k| a[row][k] * m[k]).sum();
        m[row] = (a[row][8] - known) / a[row][row];
    }
    m[8] = 1.0;
    Some(m)
}

/// The inverse homography (closed form, as OpenCV inverts 3x3 matrices); `None` when
/// singular.
pub fn invert_homography(m: &Homography) -> Option<Homography> {
    let det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6])
        + m[2] * (m[3] * m[7] - m[4] * m[6]);
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    let d = 1.0 / det;
    Some([
        (m[4] * m[8] - m[5] * m[7]) * d,
        (m[2] * m[7] - m[1] * m[8]) * d,
        (m[1] * m[5] - m[2] * m[4]) * d,
        (m[5] * m[6] - m[3] * m[8]) * d,
        (m[0] * m[8] - m[2] * m[6]) * d,
        (m[2] * m[3] - m[0] * m[5]) * d,
        (m[3] * m[7] - m[4] * m[6]) * d,
        (m[1] * m[6] - m[0] * m[7]) * d,
        (m[0] * m[4] - m[1] * m[3]) * d,
    ])
}

/// Warps like OpenCV's `warpPerspective(src, M, size, INTER_CUBIC, BORDER_REPLICATE)`, bit
/// for bit with OpenCV 5 (the pinned `opencv-python-headless`): `to_source` (the inverse of
/// `M`) maps output pixels into `src`, and OpenCV 5 evaluates it and the 4x4 cubic kernel
/// (a = -0.75) in single precision at the exact position (OpenCV 4 rounded positions to
/// 1/32 pixel and used fixed-point weights; the two differ by one grey level here and there).
pub fn warp_perspective_cubic(
    src: &RgbImage,
    width: u32,
    height: u32,
    to_source: &Homography,
) -> RgbImage {
    let m = to_source.map(|v| v as f32);
    let (src_w, src_h) = (src.width() as i64, src.height() as i64);
    let raw = src.as_raw();
    let mut out = RgbImage::new(width, height);
    for (x, y, px) in out.enumerate_pixels_mut() {
        let (x, y) = (x as f32, y as f32);
        let w = m[6] * x + m[7] * y + m[8];
        // A degenerate transform sends pixels to infinity: they read the border.
        let position = |v: f32| if v.is_nan() { 0.0 } else { v.clamp(-1e6, 1e6) };
        let sx = position((m[0] * x + m[1] * y + m[2]) / w);
        let sy = position((m[3] * x + m[4] * y + m[5]) / w);
        let (ix, iy) = (sx.floor(), sy.floor());
        let (wx, wy) = (cubic_weights(sx - ix), cubic_weights(sy - iy));
        let (ix, iy) = (ix as i64 - 1, iy as i64 - 1);
        let mut sum = [0f32; 3];
        for (r, wy) in wy.iter().enumerate() {
            let line = (iy + r as i64).clamp(0, src_h - 1) * src_w;
            for (c, wx) in wx.iter().enumerate() {
                let at = ((line + (ix + c as i64).clamp(0, src_w - 1)) * 3) as usize;
                let weight = wy * wx;
                for k in 0..3 {
                    sum[k] += raw[at + k] as f32 * weight;
                }
            }
        }
        px.0 = sum.map(|v| v.round_ties_even().clamp(0.0, 255.0) as u8);
    }
    out
}

/// OpenCV's cubic convolution weights (a = -0.75) for the four pixels around a position
/// `t` in [0, 1) past the second of them.
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let w0 = ((A * (t + 1.0) - 5.0 * A) * (t + 1.0) + 8.0 * A) * (t + 1.0) - 4.0 * A;
    let w1 = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
    let w2 = ((A + 2.0) * (1.0 - t) - (A + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0;
    [w0, w1, w2, 1.0 - w0 - w1 - w2]
}

/// Writes `img` into a `[3, h, w]` tensor in BGR channel order as `(x / 255 - mean) / std`,
/// with `mean` and `std` given per output channel (B, G, R). Pixels beyond the image stay
/// untouched, so the caller decides the padding value.
pub fn write_bgr_normalized(
    img: &RgbImage,
    mut out: ArrayViewMut3<'_, f32>,
    mean: [f32; 3],
    std: [f32; 3],
) {
    let (h, w) = (out.shape()[1], out.shape()[2]);
    let (img_w, img_h) = (img.width() as usize, img.height() as usize);
    assert!(img_h <= h && img_w <= w, "image larger than its tensor");
    for (channel, mut plane) in out.outer_iter_mut().enumerate() {
        // 8-bit input has 256 possible values: look them up rather than divide per pixel.
        let table: Vec<f32> = (0..=255u8)
            .map(|v| (v as f32 / 255.0 - mean[channel]) / std[channel])
            .collect();
        let rgb = 2 - channel;
        for (row, mut target) in img
            .as_raw()
            .chunks_exact(img_w * 3)
            .zip(plane.outer_iter_mut())
        {
            for (px, value) in row.chunks_exact(3).zip(target.iter_mut()) {
                *value = table[px[rgb] as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use ndarray::Array3;

    fn encode_png(img: &RgbImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        bytes
    }

    #[test]
    fn decodes_png_to_rgb() {
        let img = RgbImage::from_pixel(7, 3, Rgb([10, 20, 30]));
        let decoded = decode(&encode_png(&img), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(decoded.dimensions(), (7, 3));
        assert_eq!(decoded.get_pixel(6, 2), &Rgb([10, 20, 30]));
    }

    #[test]
    fn rejects_text_as_unsupported() {
        let err = decode(b"this is not an image", DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(matches!(err, ImageError::Unsupported), "{err}");
        assert_eq!(err.code(), "unsupported_media");
    }

    #[test]
    fn rejects_truncated_png_as_malformed() {
        let bytes = encode_png(&RgbImage::from_pixel(64, 64, Rgb([1, 2, 3])));
        let err = decode(&bytes[..bytes.len() / 2], DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(matches!(err, ImageError::Malformed(_)), "{err}");
        assert_eq!(err.code(), "bad_request");
    }

    #[test]
    fn rejects_too_many_pixels_from_the_header() {
        let bytes = encode_png(&RgbImage::new(100, 100));
        let err = decode(&bytes, 9_999).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooLarge {
                    width: 100,
                    height: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "image is 100x100 = 10000 pixels, above the limit of 9999"
        );
    }

    #[test]
    fn cubic_weights_match_opencv() {
        // OpenCV's interpolateCubic at t = 0.5 (a = -0.75): -0.09375, 0.59375, 0.59375, -0.09375.
        assert_eq!(cubic_weights(0.5), [-0.09375, 0.59375, 0.59375, -0.09375]);
        // Integer positions sample exactly one pixel.
        assert_eq!(cubic_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn identity_warp_copies_and_shift_replicates_borders() {
        let mut src = RgbImage::new(4, 3);
        for (x, y, p) in src.enumerate_pixels_mut() {
            *p = Rgb([(x * 40 + y) as u8, 7, 200]);
        }
        let identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        assert_eq!(warp_perspective_cubic(&src, 4, 3, &identity), src);
        let shift = [1.0, 0.0, -5.0, 0.0, 1.0, 10.0, 0.0, 0.0, 1.0];
        let shifted = warp_perspective_cubic(&src, 2, 1, &shift);
        assert_eq!(shifted.get_pixel(0, 0), src.get_pixel(0, 2));
        assert_eq!(shifted.get_pixel(1, 0), src.get_pixel(0, 2));
    }

    #[test]
    fn perspective_transform_maps_the_corners_and_inverts() {
        let from = [[3.0, 4.0], [50.0, 9.0], [47.0, 30.0], [1.0, 26.0]];
        let to = [[0.0, 0.0], [46.0, 0.0], [46.0, 22.0], [0.0, 22.0]];
        let m = perspective_transform(from, to).unwrap();
        let inverse = invert_homography(&m).unwrap();
        let apply = |m: &Homography, [x, y]: [f64; 2]| {
            let w = m[6] * x + m[7] * y + m[8];
            [
                (m[0] * x + m[1] * y + m[2]) / w,
                (m[3] * x + m[4] * y + m[5]) / w,
            ]
        };
        for (a, b) in from.iter().zip(&to) {
            let (there, back) = (apply(&m, *a), apply(&inverse, *b));
            for k in 0..2 {
                assert!((there[k] - b[k]).abs() < 1e-9 && (back[k] - a[k]).abs() < 1e-9);
            }
        }
        let collinear = [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]];
        assert!(perspective_transform(collinear, to).is_none());
    }

    #[test]
    fn bilinear_matches_opencv_on_a_ramp() {
        // A 4-pixel ramp 0, 100, 200, 250 resized to 2: OpenCV gives 50 and 225
        // (centres at source 0.5 and 2.5).
        let mut src = RgbImage::new(4, 1);
        for (x, v) in [0u8, 100, 200, 250].into_iter().enumerate() {
            src.put_pixel(x as u32, 0, Rgb([v, v, v]));
        }
        let out = resize_bilinear(&src, 2, 1);
        assert_eq!(out.get_pixel(0, 0).0[0], 50);
        assert_eq!(out.get_pixel(1, 0).0[0], 225);
        // Upscaling 2 -> 4 of (0, 200): OpenCV gives 0, 50, 150, 200 (edges clamp).
        let mut src = RgbImage::new(2, 1);
        src.put_pixel(1, 0, Rgb([200, 200, 200]));
        let out = resize_bilinear(&src, 4, 1);
        let row: Vec<u8> = (0..4).map(|x| out.get_pixel(x, 0).0[0]).collect();
        assert_eq!(row, vec![0, 50, 150, 200]);
    }

    #[test]
    fn bilinear_is_bit_exact_with_opencv() {
        // cv2.resize results, written by export/opencv_fixtures.py.
        let dir = opencv_fixtures();
        let mut compared = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(sizes) = name
                .strip_prefix("cv2_")
                .and_then(|n| n.strip_suffix(".png"))
            else {
                continue;
            };
            let (source, target) = sizes.split_once("_to_").unwrap();
            let src = image::open(dir.join(format!("src_{source}.png")))
                .unwrap()
                .into_rgb8();
            let want = image::open(dir.join(&name)).unwrap().into_rgb8();
            let got = resize_bilinear(&src, want.width(), want.height());
            assert_eq!(format!("{}x{}", got.width(), got.height()), target);
            assert_same_pixels(&got, &want, &name);
            compared += 1;
        }
        assert_eq!(compared, 8);
    }

    fn opencv_fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/opencv")
    }

    fn assert_same_pixels(got: &RgbImage, want: &RgbImage, what: &str) {
        assert_eq!(got.dimensions(), want.dimensions(), "{what}");
        let differing = got
            .pixels()
            .zip(want.pixels())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{what}: {differing} pixels differ from OpenCV"
        );
    }

    #[test]
    fn perspective_crops_are_bit_exact_with_opencv() {
        // cv2.getPerspectiveTransform + cv2.warpPerspective(INTER_CUBIC, BORDER_REPLICATE)
        // crops of quadrilaterals, written by export/opencv_fixtures.py.
        let dir = opencv_fixtures();
        let src = image::open(dir.join("warp_src.png")).unwrap().into_rgb8();
        let quads: Vec<[[f64; 2]; 4]> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("warp_quads.json")).unwrap())
                .unwrap();
        assert_eq!(quads.len(), 6);
        for (i, quad) in quads.iter().enumerate() {
            let want = image::open(dir.join(format!("warp_{i}.png")))
                .unwrap()
                .into_rgb8();
            let (w, h) = (want.width() as f64, want.height() as f64);
            let to_crop =
                perspective_transform(*quad, [[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]]).unwrap();
            let to_source = invert_homography(&to_crop).unwrap();
            let got = warp_perspective_cubic(&src, want.width(), want.height(), &to_source);
            assert_same_pixels(&got, &want, &format!("crop {i}"));
        }
    }

    #[test]
    fn normalization_is_bgr_with_per_channel_stats() {
        let img = RgbImage::from_pixel(2, 1, Rgb([255, 0, 51]));
        let mut t = Array3::<f32>::from_elem((3, 2, 3), -9.0);
        write_bgr_normalized(&img, t.view_mut(), [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]);
        // Channel 0 is blue (51 -> 0.2 -> -0.6), channel 2 is red (255 -> 1.0).
        assert!((t[[0, 0, 0]] - (-0.6)).abs() < 1e-6);
        assert!((t[[1, 0, 1]] - (-1.0)).abs() < 1e-6);
        assert!((t[[2, 0, 0]] - 1.0).abs() < 1e-6);
        // Padding is left alone.
        assert_eq!(t[[0, 0, 2]], -9.0);
        assert_eq!(t[[2, 1, 0]], -9.0);
    }
}
