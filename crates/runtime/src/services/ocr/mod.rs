//! Scene-text recognition: find text in a photo and read it, with PP-OCR models.
//!
//! The pipeline is detection (DB) -> perspective crops -> recognition (CTC). Recognition is
//! elastic: a tiny recognizer, a small one, or a *confidence cascade* that runs the tiny one
//! first and sends only the crops it is unsure about to the small one (the training-free
//! cascade idea: confident predictions bypass the heavier model). Every result names the
//! recognizer that produced it.
//!
//! This module takes decoded images and returns results; it does not parse requests,
//! decode files or choose operating points.

pub mod budget;
pub mod det;
pub mod points;
pub mod rec;
mod service;

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use ndarray::{Axis, s};
use serde::{Deserialize, Serialize};

use crate::engine::{ElementType, Engine, EngineError, Input, Model, Placement};
use crate::models::{ModelDir, ModelError, PointSet};
use crate::services::WarmUp;

pub use self::det::{DbParams, TextBox};
pub use self::points::OcrPoint;
pub use self::rec::Charset;
pub use self::service::{CUSTOM_POINT, OcrRequest, OcrService};

/// Why OCR failed. Bad images are rejected before they get here (see [`crate::imaging`]).
#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{model} outputs shape {shape:?}, expected {expected}")]
    UnexpectedOutput {
        model: &'static str,
        shape: Vec<usize>,
        expected: String,
    },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("crop {index} is empty ({width}x{height})")]
    EmptyCrop {
        index: usize,
        width: u32,
        height: u32,
    },
}

impl OcrError {
    /// The stable error code for responses: the caller's fault or ours.
    pub fn code(&self) -> &'static str {
        match self {
            OcrError::InvalidOption(_) | OcrError::EmptyCrop { .. } => "bad_request",
            OcrError::Model(_) | OcrError::Engine(_) | OcrError::UnexpectedOutput { .. } => {
                "internal"
            }
        }
    }
}

/// Which recognizer reads the crops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RecognizerChoice {
    Tiny,
    Small,
    /// Tiny first; crops with confidence below `threshold` are read again by small.
    Cascade {
        threshold: f32,
    },
}

/// Which detector finds the text regions: the tiny one (1.7 MB) or the small one (about
/// 5x its cost per pixel, and finds more words).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    #[default]
    Tiny,
    Small,
}

impl DetectorKind {
    pub const ALL: [DetectorKind; 2] = [DetectorKind::Tiny, DetectorKind::Small];

    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Tiny => "tiny",
            DetectorKind::Small => "small",
        }
    }

    /// `"tiny"` or `"small"`.
    pub fn from_name(name: &str) -> Option<DetectorKind> {
        DetectorKind::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Its model in `models/ocr`.
    pub fn file(self) -> &'static str {
        match self {
            DetectorKind::Tiny => "det_tiny.onnx",
            DetectorKind::Small => "det_small.onnx",
        }
    }
}

/// A recognizer, named in results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecognizerKind {
    Tiny,
    Small,
}

impl RecognizerKind {
    /// Its model in `models/ocr`.
    pub fn file(self) -> &'static str {
        match self {
            RecognizerKind::Tiny => "rec_tiny.onnx",
            RecognizerKind::Small => "rec_small.onnx",
        }
    }
}

/// Per-request settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OcrOptions {
    #[serde(default)]
    pub detector: DetectorKind,
    /// The detector sees the image with its long side at most this many pixels.
    pub det_limit: u32,
    pub db: DbParams,
    pub recognizer: RecognizerChoice,
    /// Decode only printable ASCII (for Latin-script deployments; avoids look-alike CJK).
    pub ascii_only: bool,
    /// End to end, readings below this confidence are not reported (PaddleOCR's
    /// `drop_score`): they are almost always noise, not text.
    pub min_confidence: f32,
    /// Crops per recognizer run. 1 by default: with fixed-shape plans a batch is padded to its
    /// widest crop, which costs more than it saves on a CPU, and every batch size is a plan.
    pub batch_size: usize,
}

impl Default for OcrOptions {
    fn default() -> Self {
        OcrOptions {
            detector: DetectorKind::Tiny,
            det_limit: 960,
            db: DbParams::default(),
            recognizer: RecognizerChoice::Cascade { threshold: 0.9 },
            ascii_only: false,
            min_confidence: 0.5,
            batch_size: 1,
        }
    }
}

impl OcrOptions {
    /// Checks every knob, so a request cannot switch the cascade off with a NaN threshold
    /// or make the detector see a 0-pixel image.
    pub fn validate(&self) -> Result<(), OcrError> {
        let fail = |message: String| Err(OcrError::InvalidOption(message));
        if let RecognizerChoice::Cascade { threshold } = self.recognizer
            && !threshold.is_finite()
        {
            return fail(format!("cascade threshold {threshold} is not a number"));
        }
        if !(32..=8192).contains(&self.det_limit) {
            return fail(format!("det_limit {} is outside 32..=8192", self.det_limit));
        }
        if !(1..=64).contains(&self.batch_size) {
            return fail(format!("batch_size {} is outside 1..=64", self.batch_size));
        }
        let db = &self.db;
        let probability = |v: f32| (0.0..=1.0).contains(&v);
        if !probability(db.threshold) || !probability(db.box_threshold) {
            return fail("DB thresholds must lie in 0..=1".into());
        }
        if !probability(self.min_confidence) {
            return fail(format!(
                "min_confidence {} is outside 0..=1",
                self.min_confidence
            ));
        }
        if !(0.0..=10.0).contains(&db.unclip_ratio) || !(0.0..=1000.0).contains(&db.min_size) {
            return fail("unclip_ratio must lie in 0..=10 and min_size in 0..=1000".into());
        }
        if db.max_candidates == 0 {
            return fail("max_candidates must be at least 1".into());
        }
        Ok(())
    }
}

/// One read word or line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recognition {
    pub text: String,
    pub confidence: f32,
    pub recognizer: RecognizerKind,
}

/// A text region found in an image and what it says.
#[derive(Debug, Clone, Serialize)]
pub struct TextItem {
    #[serde(rename = "box")]
    pub text_box: [[i32; 2]; 4],
    pub box_score: f32,
    #[serde(flatten)]
    pub recognition: Recognition,
}

/// Where the time of one request went, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub det_ms: f64,
    pub crop_ms: f64,
    pub rec_ms: f64,
    pub total_ms: f64,
}

/// The result of reading one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    pub items: Vec<TextItem>,
    /// Text regions cropped and read (including those that read as empty).
    pub crops: usize,
    /// Crops the small recognizer read (all of them for `small`, the unsure ones in a cascade).
    pub heavy_calls: usize,
    pub timings: Timings,
}

/// A recognizer model with its character set.
struct Recognizer {
    kind: RecognizerKind,
    model: Arc<dyn Model>,
    charset: Charset,
    /// Milliseconds per input column (batch x width) lately.
    cost: budget::Meter,
}

impl Recognizer {
    fn load(
        engine: &dyn Engine,
        dir: &ModelDir,
        kind: RecognizerKind,
        dictionary: &str,
    ) -> Result<Recognizer, OcrError> {
        let charset = Charset::from_dictionary(&dir.read_verified_text(dictionary)?);
        let model = dir.load(engine, kind.file())?;
        Ok(Recognizer {
            kind,
            model,
            charset,
            cost: budget::Meter::default(),
        })
    }

    /// Reads crops in batches of similar width; results come back in input order.
    fn read(
        &self,
        crops: &[&RgbImage],
        ascii_only: bool,
        batch_size: usize,
    ) -> Result<Vec<Recognition>, OcrError> {
        let mut order: Vec<usize> = (0..crops.len()).collect();
        order.sort_by(|&a, &b| rec::aspect(crops[a]).total_cmp(&rec::aspect(crops[b])));
        let mut results = vec![None; crops.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&RgbImage> = chunk.iter().map(|&i| crops[i]).collect();
            let input = rec::preprocess(&batch);
            let started = Instant::now();
            let output = self.model.run(&[Input::F32(input.view().into_dyn())])?;
            self.cost.record(
                started.elapsed().as_secs_f64() * 1e3 / (batch.len() * input.shape()[3]) as f64,
            );
            let probs = output.into_iter().next().unwrap_or_default();
            if probs.ndim() != 3
                || probs.shape()[0] != batch.len()
                || probs.shape()[2] != self.charset.class_count()
            {
                return Err(OcrError::UnexpectedOutput {
                    model: "recognizer",
                    shape: probs.shape().to_vec(),
                    expected: format!("[{}, T, {}]", batch.len(), self.charset.class_count()),
                });
            }
            for (row, &i) in chunk.iter().enumerate() {
                let (text, confidence) = self
                    .charset
                    .decode(probs.slice(s![row, .., ..]), ascii_only);
                results[i] = Some(Recognition {
                    text,
                    confidence,
                    recognizer: self.kind,
                });
            }
        }
        Ok(results.into_iter().flatten().collect())
    }
}

/// A 1280x720 frame at the default detector limit (960x540, padded to multiples of 32) and
/// one word crop at the narrowest recognizer width.
pub const TYPICAL_INPUT_SHAPES: &[(&str, &[usize])] = &[
    ("det_tiny.onnx", &[1, 3, 544, 960]),
    ("det_small.onnx", &[1, 3, 544, 960]),
    (
        "rec_tiny.onnx",
        &[1, 3, rec::HEIGHT as usize, rec::MIN_WIDTH as usize],
    ),
    (
        "rec_small.onnx",
        &[1, 3, rec::HEIGHT as usize, rec::MIN_WIDTH as usize],
    ),
];

/// The loaded OCR models; share one across worker threads.
pub struct OcrPipeline {
    /// One per [`DetectorKind`], indexed by it (`kind as usize`, declaration order).
    detectors: [Arc<dyn Model>; 2],
    tiny: Recognizer,
    small: Recognizer,
    /// The operating points the manifest declares, with their knobs read.
    points: Vec<OcrPoint>,
    point_set: PointSet,
    /// What the stages have cost lately, for meeting deadlines ([`budget`]).
    meters: Meters,
}

/// The pipeline's running averages besides the recognizers' own cost per column.
#[derive(Debug, Default)]
struct Meters {
    /// Detector milliseconds per input pixel, per size, one meter per [`DetectorKind`].
    det_ms_per_pixel: [budget::DetMeter; 2],
    /// Recognizer input columns (crop widths at height 48) per image.
    columns_per_image: budget::Meter,
    /// Per declared point (same order): the share of crops its recognizer sends to the
    /// small model, learnt from the tiny recognizer's confidences.
    small_share: Vec<budget::Meter>,
}

impl OcrPipeline {
    /// Loads `models/ocr` (verifying every file) with `engine`.
    pub fn load(engine: &dyn Engine, dir: &ModelDir) -> Result<OcrPipeline, OcrError> {
        let point_set = PointSet::from_manifest(dir.manifest())?
            .ok_or_else(|| OcrError::InvalidOption("the OCR manifest declares no points".into()))?;
        let points = points::from_manifest(&point_set.points)?;
        let meters = Meters {
            small_share: points.iter().map(|_| Default::default()).collect(),
            ..Meters::default()
        };
        Ok(OcrPipeline {
            detectors: [
                dir.load(engine, DetectorKind::Tiny.file())?,
                dir.load(engine, DetectorKind::Small.file())?,
            ],
            tiny: Recognizer::load(engine, dir, RecognizerKind::Tiny, "dict_tiny.txt")?,
            small: Recognizer::load(engine, dir, RecognizerKind::Small, "dict_small.txt")?,
            points,
            point_set,
            meters,
        })
    }

    /// The operating points declared in the manifest, in its order.
    pub fn points(&self) -> &[OcrPoint] {
        &self.points
    }

    /// The manifest's declaration of those points (default point, target, qualities).
    pub fn point_set(&self) -> &PointSet {
        &self.point_set
    }

    /// Prepares the models of `scope` for a typical request ahead of time (plans built,
    /// `auto` backends measured), so the first user request does not pay for it.
    pub fn warm_up(&self, scope: WarmUp<'_>) -> Result<(), OcrError> {
        let used = self.model_files_of(scope);
        for (model, (file, shape)) in self.models().into_iter().zip(TYPICAL_INPUT_SHAPES) {
            if used.contains(file) {
                model.warm_up(&[(ElementType::F32, shape)])?;
            }
        }
        Ok(())
    }

    /// Drops the plans of the models that no point of `scope` runs.
    pub fn release_outside(&self, scope: WarmUp<'_>) {
        let used = self.model_files_of(scope);
        for (model, (file, _)) in self.models().into_iter().zip(TYPICAL_INPUT_SHAPES) {
            if !used.contains(file) {
                model.release();
            }
        }
    }

    /// The model files the points of `scope` run.
    fn model_files_of(&self, scope: WarmUp<'_>) -> Vec<&'static str> {
        let default = &self.point_set.default_point;
        let mut files: Vec<&'static str> = self
            .points
            .iter()
            .filter(|p| scope.includes(&p.name, default))
            .flat_map(OcrPoint::model_files)
            .collect();
        files.sort_unstable();
        files.dedup();
        files
    }

    /// Where each model runs, for logs and status.
    pub fn placements(&self) -> Vec<Placement> {
        self.models()
            .iter()
            .map(|model| model.placement())
            .collect()
    }

    /// Every model, in the order of [`TYPICAL_INPUT_SHAPES`].
    fn models(&self) -> [&Arc<dyn Model>; 4] {
        let [det_tiny, det_small] = &self.detectors;
        [det_tiny, det_small, &self.tiny.model, &self.small.model]
    }

    /// Reads word crops (each image is one word or line) with the chosen recognizer(s).
    pub fn recognize(
        &self,
        crops: &[&RgbImage],
        options: &OcrOptions,
    ) -> Result<Vec<Recognition>, OcrError> {
        options.validate()?;
        if let Some((index, crop)) = crops
            .iter()
            .enumerate()
            .find(|(_, c)| c.width() == 0 || c.height() == 0)
        {
            return Err(OcrError::EmptyCrop {
                index,
                width: crop.width(),
                height: crop.height(),
            });
        }
        match options.recognizer {
            RecognizerChoice::Tiny => self
                .tiny
                .read(crops, options.ascii_only, options.batch_size),
            RecognizerChoice::Small => {
                self.small
                    .read(crops, options.ascii_only, options.batch_size)
            }
            cascade @ RecognizerChoice::Cascade { .. } => {
                let mut results = self
                    .tiny
                    .read(crops, options.ascii_only, options.batch_size)?;
                let confidences: Vec<f32> = results.iter().map(|r| r.confidence).collect();
                self.learn_small_shares(&confidences);
                let unsure = budget::small_reads(cascade, &confidences);
                self.reread_with_small(&mut results, crops, &unsure, options)?;
                Ok(results)
            }
        }
    }

    /// Replaces the readings of `crops[i]` for every `i` in `indices` with the small
    /// recognizer's.
    fn reread_with_small(
        &self,
        results: &mut [Recognition],
        crops: &[&RgbImage],
        indices: &[usize],
        options: &OcrOptions,
    ) -> Result<(), OcrError> {
        if indices.is_empty() {
            return Ok(());
        }
        let again: Vec<&RgbImage> = indices.iter().map(|&i| crops[i]).collect();
        let better = self
            .small
            .read(&again, options.ascii_only, options.batch_size)?;
        for (&i, reading) in indices.iter().zip(better) {
            results[i] = reading;
        }
        Ok(())
    }

    /// Finds the text regions of `image`.
    pub fn detect(&self, image: &RgbImage, options: &OcrOptions) -> Result<Vec<TextBox>, OcrError> {
        options.validate()?;
        let input = det::preprocess(image, options.det_limit);
        let started = Instant::now();
        let detector = options.detector as usize;
        let output = self.detectors[detector].run(&[Input::F32(input.view().into_dyn())])?;
        self.meters.det_ms_per_pixel[detector].record(
            options.det_limit,
            started.elapsed().as_secs_f64() * 1e3 / (input.len() / 3) as f64,
        );
        let prob = output.into_iter().next().unwrap_or_default();
        let (h, w) = (input.shape()[2], input.shape()[3]);
        if prob.shape() != [1, 1, h, w] {
            return Err(OcrError::UnexpectedOutput {
                model: "detector",
                shape: prob.shape().to_vec(),
                expected: format!("[1, 1, {h}, {w}]"),
            });
        }
        let map = prob.index_axis(Axis(0), 0).index_axis_move(Axis(0), 0);
        let map = map
            .into_dimensionality::<ndarray::Ix2>()
            .expect("checked rank");
        Ok(det::boxes_from_probability(
            map,
            image.dimensions(),
            &options.db,
        ))
    }

    /// Detects, crops and reads all text in `image`. Empty readings and readings below
    /// `min_confidence` are dropped.
    pub fn read_image(
        &self,
        image: &RgbImage,
        options: &OcrOptions,
    ) -> Result<ImageResult, OcrError> {
        let scene = Scene::detect(self, image, options)?;
        let recognitions = self.recognize(&scene.crop_refs(), options)?;
        Ok(scene.finish(recognitions, options))
    }

    /// Reads `image` at the declared `point` (its knobs over `base`), answering by
    /// `deadline` where that is possible (see [`budget`]): before detection, the request
    /// steps down to the best declared point no better than `point` whose predicted cost
    /// fits the time left; after it, to the best point of that detector size whose
    /// small-recognizer reads fit. Returns the result and the point it was served at
    /// (without a deadline, `point`).
    pub fn read_image_at<'p>(
        &'p self,
        image: &RgbImage,
        point: &'p OcrPoint,
        base: &OcrOptions,
        deadline: Option<Instant>,
    ) -> Result<(ImageResult, &'p OcrPoint), OcrError> {
        let Some(deadline) = deadline else {
            return Ok((self.read_image(image, &point.apply(base))?, point));
        };
        let time_left_ms = || {
            deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                * 1e3
        };
        let planned = self.plan(image.dimensions(), point, time_left_ms());
        let options = planned.apply(base);
        if planned.recognizer == RecognizerChoice::Tiny {
            return Ok((self.read_image(image, &options)?, planned));
        }
        let scene = Scene::detect(self, image, &options)?;
        let crops = scene.crop_refs();
        let widths: Vec<usize> = crops.iter().map(|c| rec::input_width(c)).collect();
        let small_cost = self.small.cost.average();
        let all_columns: usize = widths.iter().sum();
        if planned.recognizer == RecognizerChoice::Small
            && small_cost.is_none_or(|c| budget::fits(all_columns as f64 * c, time_left_ms()))
        {
            // The whole point fits: no tiny pass first.
            let recognitions = self.recognize(&crops, &options)?;
            return Ok((scene.finish(recognitions, &options), planned));
        }
        let mut results = self
            .tiny
            .read(&crops, options.ascii_only, options.batch_size)?;
        let confidences: Vec<f32> = results.iter().map(|r| r.confidence).collect();
        self.learn_small_shares(&confidences);
        let ladder = self.ladder(planned, true);
        let choices: Vec<RecognizerChoice> = ladder.iter().map(|p| p.recognizer).collect();
        let rung =
            budget::first_fitting(&choices, &confidences, &widths, small_cost, time_left_ms())
                // Nothing fits: the cheapest rung, served in full, late.
                .unwrap_or(choices.len() - 1);
        let rereads = budget::small_reads(choices[rung], &confidences);
        self.reread_with_small(&mut results, &crops, &rereads, &options)?;
        Ok((scene.finish(results, &options), ladder[rung]))
    }

    /// The best point of `point`'s ladder predicted to fit `time_left_ms` on an image of
    /// `size`, from the meters (an unmeasured stage counts as free: there is nothing to
    /// plan with yet); the cheapest when none fits.
    fn plan<'p>(
        &'p self,
        size: (u32, u32),
        point: &'p OcrPoint,
        time_left_ms: f64,
    ) -> &'p OcrPoint {
        let columns = self.meters.columns_per_image.average().unwrap_or(0.0);
        let pass_ms = |r: &Recognizer| r.cost.average().unwrap_or(0.0) * columns;
        let ladder = self.ladder(point, false);
        let fitting = ladder.iter().copied().find(|p| {
            let (w, h) = det::input_size(size.0, size.1, p.det_limit);
            let costs = budget::StageCosts {
                det_ms: self.meters.det_ms_per_pixel[p.detector as usize]
                    .ms_per_pixel(p.det_limit)
                    .unwrap_or(0.0)
                    * f64::from(w)
                    * f64::from(h),
                tiny_ms: pass_ms(&self.tiny),
                small_ms: pass_ms(&self.small),
            };
            budget::fits(
                costs.total_ms(p.recognizer, self.small_share(p)),
                time_left_ms,
            )
        });
        fitting.unwrap_or(ladder[ladder.len() - 1])
    }

    /// The share of crops `point`'s recognizer sends to the small model, as learnt; a
    /// cascade not yet seen counts as re-reading everything.
    fn small_share(&self, point: &OcrPoint) -> f64 {
        match point.recognizer {
            RecognizerChoice::Tiny => 0.0,
            RecognizerChoice::Small => 1.0,
            RecognizerChoice::Cascade { .. } => self
                .points
                .iter()
                .position(|p| p.name == point.name)
                .and_then(|i| self.meters.small_share[i].average())
                .unwrap_or(1.0),
        }
    }

    /// Teaches every cascade point's meter what share of these crops (read by the tiny
    /// recognizer with `confidences`) it would send to the small model.
    fn learn_small_shares(&self, confidences: &[f32]) {
        if confidences.is_empty() {
            return;
        }
        for (point, meter) in self.points.iter().zip(&self.meters.small_share) {
            if let RecognizerChoice::Cascade { .. } = point.recognizer {
                let reads = budget::small_reads(point.recognizer, confidences).len();
                meter.record(reads as f64 / confidences.len() as f64);
            }
        }
    }

    /// The points a request at `point` may step down to, best first and starting with
    /// `point`: the declared points with a measured quality no better than its own and a
    /// detector no heavier and no larger (the same detector at the same size, once
    /// `detected`). A heavier or larger detector is never a step down, even with a lighter
    /// recognizer.
    fn ladder<'p>(&'p self, point: &'p OcrPoint, detected: bool) -> Vec<&'p OcrPoint> {
        let mut below: Vec<&OcrPoint> = match point.quality {
            Some(quality) => self
                .points
                .iter()
                .filter(|p| p.name != point.name)
                .filter(|p| {
                    if detected {
                        p.detector == point.detector && p.det_limit == point.det_limit
                    } else {
                        p.detector <= point.detector && p.det_limit <= point.det_limit
                    }
                })
                .filter(|p| p.quality.is_some_and(|q| q <= quality))
                .collect(),
            None => Vec::new(),
        };
        let quality = |p: &OcrPoint| p.quality.unwrap_or(f64::NEG_INFINITY);
        below.sort_by(|a, b| quality(b).total_cmp(&quality(a)));
        std::iter::once(point).chain(below).collect()
    }
}

/// An image after detection and cropping: what recognition works on.
struct Scene {
    boxes: Vec<TextBox>,
    crops: Vec<RgbImage>,
    start: Instant,
    det_done: Instant,
    crops_done: Instant,
}

impl Scene {
    fn detect(
        pipeline: &OcrPipeline,
        image: &RgbImage,
        options: &OcrOptions,
    ) -> Result<Scene, OcrError> {
        let start = Instant::now();
        let boxes = pipeline.detect(image, options)?;
        let det_done = Instant::now();
        let (boxes, crops): (Vec<TextBox>, Vec<RgbImage>) = boxes
            .into_iter()
            .filter_map(|b| det::crop(image, &b).map(|c| (b, c)))
            .unzip();
        let columns: usize = crops.iter().map(rec::input_width).sum();
        pipeline.meters.columns_per_image.record(columns as f64);
        Ok(Scene {
            boxes,
            crops,
            start,
            det_done,
            crops_done: Instant::now(),
        })
    }

    fn crop_refs(&self) -> Vec<&RgbImage> {
        self.crops.iter().collect()
    }

    /// The result, given one recognition per crop. Empty readings and readings below
    /// `min_confidence` are dropped.
    fn finish(self, recognitions: Vec<Recognition>, options: &OcrOptions) -> ImageResult {
        let end = Instant::now();
        let heavy_calls = recognitions
            .iter()
            .filter(|r| r.recognizer == RecognizerKind::Small)
            .count();
        let crops = self.crops.len();
        let items = self
            .boxes
            .into_iter()
            .zip(recognitions)
            .filter(|(_, r)| !r.text.is_empty() && r.confidence >= options.min_confidence)
            .map(|(b, recognition)| TextItem {
                text_box: b.points,
                box_score: b.score,
                recognition,
            })
            .collect();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        ImageResult {
            items,
            crops,
            heavy_calls,
            timings: Timings {
                det_ms: ms(self.start, self.det_done),
                crop_ms: ms(self.det_done, self.crops_done),
                rec_ms: ms(self.crops_done, end),
                total_ms: ms(self.start, end),
            },
        }
    }
}
