//! Text detection with a DB (differentiable binarization) model: preprocessing, the
//! post-processing that turns its probability map into text boxes, and cropping those boxes,
//! as PP-OCR publishes them. Pure functions on pixels and maps: running the model is the
//! pipeline's job, not this module's.

use image::{GrayImage, Luma, RgbImage};
use imageproc::contours::find_contours;
use imageproc::drawing::draw_polygon_mut;
use imageproc::geometric_transformations::rotate270;
use imageproc::geometry::convex_hull;
use imageproc::point::Point;
use ndarray::{Array4, ArrayView2, s};
use serde::{Deserialize, Serialize};

use crate::imaging::{
    invert_homography, perspective_transform, resize_bilinear, warp_perspective_cubic,
    write_bgr_normalized,
};

/// ImageNet statistics in the detector's BGR channel order (PP-OCR applies the RGB-ordered
/// constants to BGR pixels; the model was trained that way).
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Knobs of DB post-processing; the defaults are PP-OCR's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbParams {
    /// Pixels above this probability are text.
    pub threshold: f32,
    /// Boxes whose mean probability is below this are dropped.
    pub box_threshold: f32,
    /// Boxes grow by `area * unclip_ratio / perimeter` on every side (DB shrinks its targets).
    pub unclip_ratio: f32,
    /// Candidate regions whose shorter side is below this (map pixels) are dropped.
    pub min_size: f32,
    /// At most this many regions are scored per image.
    pub max_candidates: usize,
}

impl Default for DbParams {
    fn default() -> Self {
        DbParams {
            threshold: 0.3,
            box_threshold: 0.5,
            unclip_ratio: 1.6,
            min_size: 3.0,
            max_candidates: 1000,
        }
    }
}

/// A detected text region: corners clockwise from top-left, in image pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextBox {
    pub points: [[i32; 2]; 4],
    /// Mean text probability inside the region before unclipping.
    pub score: f32,
}

/// The detector's input size for an image: the long side at most `limit` (never upscaled),
/// each side rounded to a multiple of 32 (at least 32).
pub fn input_size(width: u32, height: u32, limit: u32) -> (u32, u32) {
    let long = width.max(height) as f64;
    let ratio = if long > limit as f64 {
        limit as f64 / long
    } else {
        1.0
    };
    let round32 = |side: u32| {
        let scaled = (side as f64 * ratio).floor();
        (((scaled / 32.0).round_ties_even() * 32.0) as u32).max(32)
    };
    (round32(width), round32(height))
}

/// The `[1, 3, H, W]` detector input for `image`.
pub fn preprocess(image: &RgbImage, limit: u32) -> Array4<f32> {
    let (w, h) = input_size(image.width(), image.height(), limit);
    let resized = resize_bilinear(image, w, h);
    let mut tensor = Array4::<f32>::zeros((1, 3, h as usize, w as usize));
    write_bgr_normalized(&resized, tensor.slice_mut(s![0, .., .., ..]), MEAN, STD);
    tensor
}

/// Text boxes from a `[H, W]` probability map, scaled to an image of `image_size`, sorted
/// in reading order (top to bottom, then left to right within a line).
pub fn boxes_from_probability(
    prob: ArrayView2<'_, f32>,
    image_size: (u32, u32),
    params: &DbParams,
) -> Vec<TextBox> {
    let (map_h, map_w) = prob.dim();
    let bitmap = GrayImage::from_fn(map_w as u32, map_h as u32, |x, y| {
        Luma([if prob[[y as usize, x as usize]] > params.threshold {
            255
        } else {
            0
        }])
    });
    let scale_x = image_size.0 as f64 / map_w as f64;
    let scale_y = image_size.1 as f64 / map_h as f64;
    let mut boxes = Vec::new();
    for contour in find_contours::<i32>(&bitmap)
        .iter()
        .take(params.max_candidates)
    {
        let rect = Rect::enclosing(&contour.points);
        if rect.short_side() < params.min_size as f64 {
            continue;
        }
        let score = mean_inside(prob, &rect.corners);
        if score < params.box_threshold {
            continue;
        }
        let Some(grown) = rect.unclip(params.unclip_ratio as f64) else {
            continue;
        };
        if grown.short_side() < params.min_size as f64 + 2.0 {
            continue;
        }
        // Scaling keeps the corner order; corners are clipped to the image.
        let points = grown.corners.map(|[x, y]| {
            [
                ((x * scale_x).round_ties_even() as i32).clamp(0, image_size.0 as i32 - 1),
                ((y * scale_y).round_ties_even() as i32).clamp(0, image_size.1 as i32 - 1),
            ]
        });
        let side = |a: [i32; 2], b: [i32; 2]| {
            (((a[0] - b[0]) as f64).powi(2) + ((a[1] - b[1]) as f64).powi(2)).sqrt() as i32
        };
        if side(points[0], points[1]) <= 3 || side(points[0], points[3]) <= 3 {
            continue;
        }
        boxes.push(TextBox { points, score });
    }
    sort_reading_order(&mut boxes);
    boxes
}

/// A rotated rectangle as corners `[tl, tr, br, bl]`.
#[derive(Debug, Clone, Copy)]
struct Rect {
    corners: [[f64; 2]; 4],
}

impl Rect {
    /// The minimum-area rectangle around a contour, in exact (unrounded) coordinates.
    ///
    /// Rotating calipers over the convex hull: the best rectangle has a side on a hull edge.
    /// (imageproc's `min_area_rect` rounds corners outward to integers, which grows and skews
    /// small rotated boxes by a pixel or two and changes what the recognizer reads.)
    fn enclosing(points: &[Point<i32>]) -> Rect {
        let hull: Vec<[f64; 2]> = convex_hull(points.to_vec())
            .into_iter()
            .map(|p| [p.x as f64, p.y as f64])
            .collect();
        if hull.len() < 3 {
            // Nothing, a point or a segment: a degenerate rectangle along it.
            let a = hull.first().copied().unwrap_or_default();
            let b = hull.last().copied().unwrap_or_default();
            return Rect {
                corners: order_corners([a, b, b, a]),
            };
        }
        let mut best = (f64::MAX, [[0.0; 2]; 4]);
        for i in 0..hull.len() {
            let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
            let len = distance(a, b);
            if len == 0.0 {
                continue;
            }
            let u = [(b[0] - a[0]) / len, (b[1] - a[1]) / len];
            let v = [-u[1], u[0]];
            let project = |p: &[f64; 2], d: [f64; 2]| p[0] * d[0] + p[1] * d[1];
            let (mut u0, mut u1, mut v0, mut v1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
            for p in &hull {
                let (pu, pv) = (project(p, u), project(p, v));
                (u0, u1, v0, v1) = (u0.min(pu), u1.max(pu), v0.min(pv), v1.max(pv));
            }
            let area = (u1 - u0) * (v1 - v0);
            if area < best.0 {
                let corner = |cu: f64, cv: f64| [cu * u[0] + cv * v[0], cu * u[1] + cv * v[1]];
                best = (
                    area,
                    [
                        corner(u0, v0),
                        corner(u1, v0),
                        corner(u1, v1),
                        corner(u0, v1),
                    ],
                );
            }
        }
        Rect {
            corners: order_corners(best.1),
        }
    }

    fn width(&self) -> f64 {
        distance(self.corners[0], self.corners[1])
    }

    fn height(&self) -> f64 {
        distance(self.corners[0], self.corners[3])
    }

    fn short_side(&self) -> f64 {
        self.width().min(self.height())
    }

    /// Grows the rectangle by `area * ratio / perimeter` on every side as PP-OCR does: its
    /// corners truncated to integers, offset with round joins as Clipper (pyclipper)
    /// computes it, then the minimum-area rectangle around that polygon. `None` where
    /// Clipper gives nothing (fewer than three distinct corners).
    fn unclip(&self, ratio: f64) -> Option<Rect> {
        let (w, h) = (self.width(), self.height());
        let perimeter = 2.0 * (w + h);
        if perimeter <= 0.0 {
            return None;
        }
        // pyclipper truncates coordinates to integers. Corners that are integers in exact
        // arithmetic (and in OpenCV's float32 box) can land a hair below here.
        let truncate = |v: f64| {
            let nearest = v.round();
            if (v - nearest).abs() < 1e-4 {
                nearest as i64
            } else {
                v as i64
            }
        };
        let corners = self.corners.map(|[x, y]| [truncate(x), truncate(y)]);
        let grown = round_offset(&corners, w * h * ratio / perimeter);
        (!grown.is_empty()).then(|| Rect::enclosing(&grown))
    }
}

/// Clipper's arc tolerance default (pyclipper's `PyclipperOffset()`), in pixels.
const ARC_TOLERANCE: f64 = 0.25;

/// The outline of a closed polygon grown by `delta` with round joins, vertices rounded to
/// integers: Clipper 6.4's `ClipperOffset` (what pyclipper runs), without its final union,
/// which only removes points inside the outline and so leaves the enclosing rectangle
/// unchanged. Empty when the polygon has fewer than three distinct points.
fn round_offset(polygon: &[[i64; 2]], delta: f64) -> Vec<Point<i32>> {
    let mut path: Vec<[f64; 2]> = Vec::with_capacity(polygon.len());
    for p in polygon {
        if path.last() != Some(&[p[0] as f64, p[1] as f64]) {
            path.push([p[0] as f64, p[1] as f64]);
        }
    }
    while path.len() > 1 && path.first() == path.last() {
        path.pop();
    }
    if path.len() < 3 {
        return Vec::new();
    }
    // Clipper grows polygons of positive orientation (its area sign) outward.
    let area: f64 = (0..path.len())
        .map(|i| {
            let (a, b) = (path[(i + path.len() - 1) % path.len()], path[i]);
            (a[0] + b[0]) * (a[1] - b[1])
        })
        .sum::<f64>()
        * -0.5;
    if area < 0.0 {
        path.reverse();
    }
    // Below one pixel of offset Clipper tightens the tolerance in proportion.
    let tolerance = ARC_TOLERANCE * delta.abs().min(1.0);
    let steps = (std::f64::consts::PI / (1.0 - tolerance / delta.abs()).acos())
        .min(delta.abs() * std::f64::consts::PI);
    let step = std::f64::consts::TAU / steps;
    let (step_sin, step_cos) = (step.sin() * delta.signum(), step.cos());
    let steps_per_radian = steps / std::f64::consts::TAU;

    let n = path.len();
    let normals: Vec<[f64; 2]> = (0..n)
        .map(|j| {
            let (a, b) = (path[j], path[(j + 1) % n]);
            let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
            let len = (dx * dx + dy * dy).sqrt();
            [dy / len, -dx / len]
        })
        .collect();
    let at = |p: [f64; 2], normal: [f64; 2]| {
        Point::new(
            (p[0] + normal[0] * delta).round() as i32,
            (p[1] + normal[1] * delta).round() as i32,
        )
    };
    let mut out = Vec::new();
    for j in 0..n {
        let (p, before, after) = (path[j], normals[(j + n - 1) % n], normals[j]);
        let sin = before[0] * after[1] - after[0] * before[1];
        let cos = before[0] * after[0] + before[1] * after[1];
        if (sin * delta).abs() < 1.0 && cos > 0.0 {
            // Nearly straight on: one point.
            out.push(at(p, before));
            continue;
        }
        let sin = sin.clamp(-1.0, 1.0);
        if sin * delta < 0.0 {
            // A concave corner: its points lie inside the outline.
            out.extend([
                at(p, before),
                Point::new(p[0] as i32, p[1] as i32),
                at(p, after),
            ]);
            continue;
        }
        let arc_steps = ((steps_per_radian * sin.atan2(cos).abs()).round() as usize).max(1);
        let mut normal = before;
        for _ in 0..arc_steps {
            out.push(at(p, normal));
            normal = [
                normal[0] * step_cos - step_sin * normal[1],
                normal[0] * step_sin + normal[1] * step_cos,
            ];
        }
        out.push(at(p, after));
    }
    out
}

fn distance(a: [f64; 2], b: [f64; 2]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Mean probability inside a quadrilateral (its pixels as a filled polygon).
fn mean_inside(prob: ArrayView2<'_, f32>, corners: &[[f64; 2]; 4]) -> f32 {
    let (h, w) = prob.dim();
    let clamp = |v: f64, hi: usize| (v as i64).clamp(0, hi as i64 - 1) as usize;
    let xmin = clamp(
        corners
            .iter()
            .map(|p| p[0])
            .fold(f64::MAX, f64::min)
            .floor(),
        w,
    );
    let xmax = clamp(
        corners.iter().map(|p| p[0]).fold(f64::MIN, f64::max).ceil(),
        w,
    );
    let ymin = clamp(
        corners
            .iter()
            .map(|p| p[1])
            .fold(f64::MAX, f64::min)
            .floor(),
        h,
    );
    let ymax = clamp(
        corners.iter().map(|p| p[1]).fold(f64::MIN, f64::max).ceil(),
        h,
    );
    let mut mask = GrayImage::new((xmax - xmin + 1) as u32, (ymax - ymin + 1) as u32);
    let polygon: Vec<Point<i32>> = corners
        .iter()
        .map(|p| Point::new(p[0] as i32 - xmin as i32, p[1] as i32 - ymin as i32))
        .collect();
    draw_polygon_mut(&mut mask, &polygon, Luma([1]));
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (x, y, m) in mask.enumerate_pixels() {
        if m.0[0] != 0 {
            sum += prob[[ymin + y as usize, xmin + x as usize]] as f64;
            count += 1;
        }
    }
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}

/// Orders four corners as top-left, top-right, bottom-right, bottom-left: the two leftmost
/// points are the left side, and within each side the upper one comes first.
fn order_corners(mut points: [[f64; 2]; 4]) -> [[f64; 2]; 4] {
    points.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (left, right) = points.split_at_mut(2);
    left.sort_by(|a, b| a[1].total_cmp(&b[1]));
    right.sort_by(|a, b| a[1].total_cmp(&b[1]));
    [left[0], right[0], right[1], left[1]]
}

/// Top to bottom; boxes whose tops are within 10 pixels count as one line, left to right.
fn sort_reading_order(boxes: &mut [TextBox]) {
    boxes.sort_by_key(|b| (b.points[0][1], b.points[0][0]));
    for i in 0..boxes.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            let (a, b) = (boxes[j].points[0], boxes[j + 1].points[0]);
            if (b[1] - a[1]).abs() < 10 && b[0] < a[0] {
                boxes.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
}

/// Cuts the box out of the image with a perspective warp; crops at least 1.5 times taller
/// than wide are turned upright (rotated 90 degrees counter-clockwise) for the recognizer.
pub fn crop(image: &RgbImage, text_box: &TextBox) -> Option<RgbImage> {
    let p = text_box.points.map(|[x, y]| [x as f64, y as f64]);
    let width = distance(p[0], p[1]).max(distance(p[2], p[3])) as u32;
    let height = distance(p[0], p[3]).max(distance(p[1], p[2])) as u32;
    if width == 0 || height == 0 {
        return None;
    }
    let (w, h) = (width as f64, height as f64);
    // As OpenCV: the image-to-crop transform, inverted, gives where crop pixels sample.
    let to_crop = perspective_transform(p, [[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])?;
    let to_image = invert_homography(&to_crop)?;
    let mut out = warp_perspective_cubic(image, width, height, &to_image);
    if height as f32 / width as f32 >= 1.5 {
        out = rotate270(&out);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use ndarray::Array2;

    /// A probability map with filled rectangles of the given probability.
    fn map_with(h: usize, w: usize, rects: &[(usize, usize, usize, usize, f32)]) -> Array2<f32> {
        let mut m = Array2::<f32>::zeros((h, w));
        for &(x0, y0, x1, y1, p) in rects {
            m.slice_mut(s![y0..y1, x0..x1]).fill(p);
        }
        m
    }

    #[test]
    fn input_size_limits_the_long_side_and_rounds_to_32() {
        assert_eq!(input_size(1280, 720, 960), (960, 544));
        assert_eq!(input_size(100, 40, 960), (96, 32));
        assert_eq!(input_size(10, 10, 960), (32, 32));
        assert_eq!(input_size(720, 1280, 640), (352, 640));
    }

    #[test]
    fn preprocess_shape_and_values() {
        let img = RgbImage::from_pixel(64, 32, Rgb([255, 128, 0]));
        let t = preprocess(&img, 960);
        assert_eq!(t.shape(), &[1, 3, 32, 64]);
        // Channel 0 is blue (0) normalised with the first mean/std.
        assert!((t[[0, 0, 5, 5]] - (0.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((t[[0, 2, 5, 5]] - (1.0 - 0.406) / 0.225).abs() < 1e-5);
    }

    #[test]
    fn one_axis_aligned_region_becomes_one_unclipped_box() {
        // Region x 20..60, y 10..20 (contour pixels 20..=59, 10..=19): min-area rect
        // 39 x 9, unclip distance 39*9*1.6/(2*48) = 5.85.
        let prob = map_with(40, 100, &[(20, 10, 60, 20, 0.9)]);
        let boxes = boxes_from_probability(prob.view(), (100, 40), &DbParams::default());
        assert_eq!(boxes.len(), 1);
        let b = &boxes[0];
        assert!((b.score - 0.9).abs() < 1e-6, "{}", b.score);
        assert_eq!(b.points, [[14, 4], [65, 4], [65, 25], [14, 25]]);
    }

    #[test]
    fn coordinates_scale_to_the_original_image() {
        let prob = map_with(40, 100, &[(20, 10, 60, 20, 0.9)]);
        let boxes = boxes_from_probability(prob.view(), (200, 80), &DbParams::default());
        assert_eq!(boxes[0].points, [[28, 8], [130, 8], [130, 50], [28, 50]]);
    }

    #[test]
    fn weak_small_and_faint_regions_are_dropped() {
        let prob = map_with(
            60,
            100,
            &[
                (10, 10, 50, 20, 0.45), // above threshold 0.3 but box score < 0.5
                (70, 10, 72, 30, 0.9),  // 2 pixels wide: shorter side < 3
                (10, 40, 50, 50, 0.2),  // below the binarisation threshold
            ],
        );
        let boxes = boxes_from_probability(prob.view(), (100, 60), &DbParams::default());
        assert!(boxes.is_empty(), "{boxes:?}");
    }

    #[test]
    fn boxes_come_in_reading_order() {
        // Two words on one line (tops 3 px apart, right one higher) and one line below.
        let prob = map_with(
            80,
            200,
            &[
                (120, 10, 180, 22, 0.8),
                (20, 13, 80, 25, 0.8),
                (20, 50, 120, 62, 0.8),
            ],
        );
        let boxes = boxes_from_probability(prob.view(), (200, 80), &DbParams::default());
        let top_lefts: Vec<[i32; 2]> = boxes.iter().map(|b| b.points[0]).collect();
        assert_eq!(top_lefts, [[13, 6], [113, 3], [12, 42]]);
    }

    #[test]
    fn rotated_region_gives_a_rotated_box() {
        // A band along the diagonal, 8 pixels tall: the box follows it at 45 degrees.
        let mut prob = Array2::<f32>::zeros((100, 100));
        for i in 10..90usize {
            for t in 0..8usize {
                prob[[i + t, i]] = 0.9;
            }
        }
        let boxes = boxes_from_probability(prob.view(), (100, 100), &DbParams::default());
        assert_eq!(boxes.len(), 1);
        // export/reference_ocr.py gives the same box but [1, 14] for the last corner: its
        // float32 rectangle puts it at x = 0.5000005 where the exact value is 0.5.
        assert_eq!(boxes[0].points, [[10, 4], [98, 92], [88, 99], [0, 14]]);
    }

    #[test]
    fn corners_are_ordered_after_growing_a_steep_box() {
        // A 10 x 4 rectangle tilted by 65 degrees: growing it moves a different corner to the
        // far left, and the order must follow (top-left first, clockwise).
        let (c, s) = (65f64.to_radians().cos(), 65f64.to_radians().sin());
        let corner = |x: f64, y: f64| [x * c - y * s, x * s + y * c];
        let rect = Rect {
            corners: order_corners([
                corner(-5.0, -2.0),
                corner(5.0, -2.0),
                corner(5.0, 2.0),
                corner(-5.0, 2.0),
            ]),
        };
        let grown = rect.unclip(1.6).unwrap();
        assert_eq!(grown.corners, order_corners(grown.corners));
        let [tl, tr, br, bl] = grown.corners;
        assert!(
            tl[0] <= tr[0].min(br[0]) && bl[0] <= tr[0].min(br[0]),
            "{:?}",
            grown.corners
        );
        assert!(tl[1] < bl[1] && tr[1] < br[1], "{:?}", grown.corners);
    }

    #[test]
    fn round_offset_gives_pyclippers_outline() {
        // pyclipper 1.4: PyclipperOffset().AddPath(10x5 rectangle, JT_ROUND,
        // ET_CLOSEDPOLYGON).Execute(2.0) gives these 8 points (in another order); its final
        // union also drops the collinear (10, 7), (0, -2), (-2, 5) and (12, 0) kept here.
        let rect = [[0, 0], [10, 0], [10, 5], [0, 5]];
        let mut got: Vec<(i32, i32)> = round_offset(&rect, 2.0)
            .iter()
            .map(|p| (p.x, p.y))
            .collect();
        got.sort();
        let mut want = vec![
            (12, -1),
            (12, 5),
            (11, 7),
            (0, 7),
            (-2, 6),
            (-2, 0),
            (-1, -2),
            (10, -2),
            (10, 7),
            (0, -2),
            (-2, 5),
            (12, 0),
        ];
        want.sort();
        assert_eq!(got, want);
        // Fewer than three distinct corners: Clipper gives nothing.
        assert!(round_offset(&[[1, 1], [1, 1], [4, 1], [1, 1]], 2.0).is_empty());
    }

    #[test]
    fn degenerate_contours_give_degenerate_rects() {
        assert_eq!(Rect::enclosing(&[]).short_side(), 0.0);
        let line = [Point::new(3, 4), Point::new(9, 4)];
        let rect = Rect::enclosing(&line);
        assert_eq!((rect.width(), rect.height()), (6.0, 0.0));
    }

    #[test]
    fn crop_cuts_the_box_and_turns_tall_crops_upright() {
        let mut img = RgbImage::from_pixel(50, 50, Rgb([0, 0, 0]));
        for y in 10..20 {
            for x in 5..45 {
                img.put_pixel(x, y, Rgb([200, 100, 50]));
            }
        }
        let wide = TextBox {
            points: [[5, 10], [45, 10], [45, 20], [5, 20]],
            score: 1.0,
        };
        let c = crop(&img, &wide).unwrap();
        assert_eq!(c.dimensions(), (40, 10));
        assert_eq!(c.get_pixel(20, 5), &Rgb([200, 100, 50]));
        let tall = TextBox {
            points: [[5, 5], [15, 5], [15, 45], [5, 45]],
            score: 1.0,
        };
        assert_eq!(crop(&img, &tall).unwrap().dimensions(), (40, 10));
        let flat = TextBox {
            points: [[5, 5], [15, 5], [15, 5], [5, 5]],
            score: 1.0,
        };
        assert!(crop(&img, &flat).is_none());
    }
}
