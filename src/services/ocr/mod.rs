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
use crate::models::{ModelDir, ModelError};

pub use self::det::{DbParams, TextBox};
pub use self::points::OcrPoint;
pub use self::rec::Charset;
pub use self::service::{OcrService, point_name};

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

/// A recognizer, named in results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecognizerKind {
    Tiny,
    Small,
}

/// Per-request settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OcrOptions {
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
}

impl Recognizer {
    fn load(
        engine: &dyn Engine,
        dir: &ModelDir,
        kind: RecognizerKind,
        model: &str,
        dictionary: &str,
    ) -> Result<Recognizer, OcrError> {
        let charset = Charset::from_dictionary(&dir.read_verified_text(dictionary)?);
        let model = dir.load(engine, model)?;
        Ok(Recognizer {
            kind,
            model,
            charset,
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
            let output = self.model.run(&[Input::F32(input.view().into_dyn())])?;
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
    detector: Arc<dyn Model>,
    tiny: Recognizer,
    small: Recognizer,
    /// The operating points the manifest declares.
    points: Vec<OcrPoint>,
}

impl OcrPipeline {
    /// Loads `models/ocr` (verifying every file) with `engine`.
    pub fn load(engine: &dyn Engine, dir: &ModelDir) -> Result<OcrPipeline, OcrError> {
        Ok(OcrPipeline {
            detector: dir.load(engine, "det_tiny.onnx")?,
            tiny: Recognizer::load(
                engine,
                dir,
                RecognizerKind::Tiny,
                "rec_tiny.onnx",
                "dict_tiny.txt",
            )?,
            small: Recognizer::load(
                engine,
                dir,
                RecognizerKind::Small,
                "rec_small.onnx",
                "dict_small.txt",
            )?,
            points: points::from_manifest(&dir.manifest().points)?,
        })
    }

    /// The operating points declared in the manifest, in its order.
    pub fn points(&self) -> &[OcrPoint] {
        &self.points
    }

    /// Prepares every model for a typical request ahead of time (plans built, `auto`
    /// backends measured), so the first user request does not pay for it.
    pub fn warm_up(&self) -> Result<(), OcrError> {
        let models = [&self.detector, &self.tiny.model, &self.small.model];
        for (model, (_, shape)) in models.into_iter().zip(TYPICAL_INPUT_SHAPES) {
            model.warm_up(&[(ElementType::F32, shape)])?;
        }
        Ok(())
    }

    /// Where each model runs, for logs and status.
    pub fn placements(&self) -> Vec<Placement> {
        [&self.detector, &self.tiny.model, &self.small.model]
            .iter()
            .map(|model| model.placement())
            .collect()
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
        let read = |r: &Recognizer, crops: &[&RgbImage]| {
            r.read(crops, options.ascii_only, options.batch_size)
        };
        match options.recognizer {
            RecognizerChoice::Tiny => read(&self.tiny, crops),
            RecognizerChoice::Small => read(&self.small, crops),
            RecognizerChoice::Cascade { threshold } => {
                let mut results = read(&self.tiny, crops)?;
                let unsure: Vec<usize> = (0..results.len())
                    .filter(|&i| results[i].confidence < threshold)
                    .collect();
                if !unsure.is_empty() {
                    let again: Vec<&RgbImage> = unsure.iter().map(|&i| crops[i]).collect();
                    for (i, better) in unsure.into_iter().zip(read(&self.small, &again)?) {
                        results[i] = better;
                    }
                }
                Ok(results)
            }
        }
    }

    /// Finds the text regions of `image`.
    pub fn detect(&self, image: &RgbImage, options: &OcrOptions) -> Result<Vec<TextBox>, OcrError> {
        options.validate()?;
        let input = det::preprocess(image, options.det_limit);
        let output = self.detector.run(&[Input::F32(input.view().into_dyn())])?;
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
        let start = Instant::now();
        let boxes = self.detect(image, options)?;
        let det_done = Instant::now();
        let (boxes, crops): (Vec<TextBox>, Vec<RgbImage>) = boxes
            .into_iter()
            .filter_map(|b| det::crop(image, &b).map(|c| (b, c)))
            .unzip();
        let crops_done = Instant::now();
        let crop_refs: Vec<&RgbImage> = crops.iter().collect();
        let recognitions = self.recognize(&crop_refs, options)?;
        let end = Instant::now();
        let heavy_calls = recognitions
            .iter()
            .filter(|r| r.recognizer == RecognizerKind::Small)
            .count();
        let items = boxes
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
        Ok(ImageResult {
            items,
            crops: crops.len(),
            heavy_calls,
            timings: Timings {
                det_ms: ms(start, det_done),
                crop_ms: ms(det_done, crops_done),
                rec_ms: ms(crops_done, end),
                total_ms: ms(start, end),
            },
        })
    }
}
