//! Text-to-image generation with distilled few-step generators.
//!
//! A prompt (a short word) becomes character ids, the text encoder turns them into tokens
//! once, and a generator network is evaluated as many times as the operating point says:
//!
//! * `renoise` points (the distilled students of `export/generate/distill.py`) start from
//!   `sigma_1 * z` and, between evaluations, re-noise the last estimate with fresh noise
//!   to the next sigma of the point's list: one to four evaluations;
//! * `euler` points (the teacher) integrate EDM's probability-flow ODE over the point's
//!   sigmas with classifier-free guidance: two evaluations per step, ~50 steps.
//!
//! Every number the pipeline needs (image size, alphabet, sigmas, guidance, noise stream)
//! comes from `models/generate/manifest.toml`, so a user's own generator exported the same
//! way runs without code changes. The noise is [`noise::Noise`]: one seed, one image.
//!
//! This module must not know how requests arrive; [`service`] adapts it to MQTT.

pub mod noise;
pub mod service;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use image::{ImageFormat, RgbImage};
use ndarray::{Array, ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use self::noise::{NOISE_NAME, Noise};
pub use self::service::{GenerateRequest, GenerateService};
use crate::engine::{ElementType, Engine, Input, Model, Placement};
use crate::models::PointSet;
use crate::models::{ModelDir, ModelError};
use crate::services::WarmUp;
use crate::services::deadline::{self, Meter, Rung};

/// Prompts for benchmarks and profiles: characters the shipped generators draw (the
/// manifest's alphabet is the authority).
pub const SAMPLE_PROMPTS: &[&str] = &["E", "D", "G", "R", "7", "K", "3", "M"];

/// Why generation could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Files(#[from] ModelError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("generate model: {0}")]
    Model(String),
    /// The prompt cannot be drawn by this model (empty, too long, unknown characters).
    #[error("{0}")]
    BadPrompt(String),
    /// The request is wrong in another way (unknown point, ...).
    #[error("{0}")]
    BadRequest(String),
}

impl GenerateError {
    /// The stable code a client sees (`bad_request` or `internal`).
    pub fn code(&self) -> &'static str {
        match self {
            GenerateError::BadPrompt(_) | GenerateError::BadRequest(_) => "bad_request",
            _ => "internal",
        }
    }
}

/// How a point turns noise into an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    /// Distilled few-step generation: denoise, re-noise to the next sigma, denoise again.
    Renoise,
    /// Deterministic Euler steps of EDM's ODE (the teacher's sampler); the last sigma is 0.
    Euler,
}

/// An operating point: which network, how often, at which noise levels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratePoint {
    pub name: String,
    pub quality: Option<f64>,
    /// The generator file (a manifest entry of role `generator`).
    pub generator: String,
    pub sampler: Sampler,
    pub sigmas: Vec<f32>,
    /// Classifier-free guidance scale; 1 evaluates the conditional model only.
    pub guidance: f32,
}

impl GeneratePoint {
    /// Network evaluations per image (what distillation saves).
    pub fn evaluations(&self) -> usize {
        let steps = match self.sampler {
            Sampler::Renoise => self.sigmas.len(),
            Sampler::Euler => self.sigmas.len() - 1,
        };
        if self.guidance == 1.0 {
            steps
        } else {
            2 * steps
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointKnobs {
    generator: String,
    sampler: Sampler,
    sigmas: Vec<f32>,
    #[serde(default = "no_guidance")]
    guidance: f32,
}

fn no_guidance() -> f32 {
    1.0
}

/// The manifest's `[settings]`: what the networks were trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSettings {
    /// The characters a prompt may use, in id order (id 0 pads; an all-pad prompt is the
    /// unconditional one that guidance contrasts against).
    pub alphabet: String,
    pub min_len: usize,
    pub max_len: usize,
    /// Prompts are upper-cased first when the model only knows capitals.
    pub uppercase: bool,
    pub height: usize,
    pub width: usize,
    /// Values the generator outputs for black and white.
    pub output_range: [f32; 2],
    /// The noise stream ([`NOISE_NAME`]).
    pub noise: String,
}

/// A generated image and how it was made.
#[derive(Debug, Clone)]
pub struct Generated {
    pub image: RgbImage,
    pub prompt: String,
    /// The point whose work the image is.
    pub point: String,
    /// The point decided, where generation stopped early to meet the deadline.
    pub stepped_down_from: Option<String>,
    pub seed: u64,
    pub evaluations: usize,
    pub total_ms: f64,
}

impl Generated {
    pub fn png(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .expect("encoding a PNG in memory cannot fail");
        bytes
    }
}

/// The loaded generation pipeline.
pub struct Generate {
    settings: GenerateSettings,
    text_encoder: Arc<dyn Model>,
    generators: BTreeMap<String, Arc<dyn Model>>,
    points: Vec<GeneratePoint>,
    point_set: PointSet,
    /// Milliseconds per evaluation of each generator lately, for meeting deadlines.
    meters: BTreeMap<String, Meter>,
}

impl Generate {
    /// Loads `models/generate` (or another folder of the same layout) with `engine`.
    pub fn load(models_root: &Path, engine: &dyn Engine) -> Result<Generate, GenerateError> {
        let dir = ModelDir::open(models_root, "generate")?;
        let manifest = dir.manifest();
        let settings: GenerateSettings = match manifest.settings.clone() {
            Some(table) => toml::Value::Table(table)
                .try_into()
                .map_err(|e| GenerateError::Model(format!("manifest [settings]: {e}")))?,
            None => {
                return Err(GenerateError::Model(
                    "the manifest has no [settings]".into(),
                ));
            }
        };
        if settings.noise != NOISE_NAME {
            return Err(GenerateError::Model(format!(
                "noise stream {:?} is not supported (only {NOISE_NAME:?})",
                settings.noise
            )));
        }
        let mut text_encoder = None;
        let mut generators = BTreeMap::new();
        for entry in &manifest.files {
            match entry.role.as_str() {
                "text_encoder" => text_encoder = Some(dir.load(engine, &entry.file)?),
                "generator" => {
                    generators.insert(entry.file.clone(), dir.load(engine, &entry.file)?);
                }
                _ => {}
            }
        }
        let text_encoder = text_encoder
            .ok_or_else(|| GenerateError::Model("no file of role text_encoder".into()))?;
        let mut points = Vec::new();
        for p in &manifest.points {
            let knobs: PointKnobs = toml::Value::Table(p.knobs.clone())
                .try_into()
                .map_err(|e| GenerateError::Model(format!("manifest point {:?}: {e}", p.name)))?;
            let bad = |why: &str| GenerateError::Model(format!("point {:?}: {why}", p.name));
            if !generators.contains_key(&knobs.generator) {
                return Err(bad(&format!("unknown generator {:?}", knobs.generator)));
            }
            let valid_sigmas = match knobs.sampler {
                Sampler::Renoise => !knobs.sigmas.is_empty(),
                Sampler::Euler => knobs.sigmas.len() >= 2 && knobs.sigmas.last() == Some(&0.0),
            };
            if !valid_sigmas || knobs.sigmas.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
                return Err(bad("bad sigmas"));
            }
            points.push(GeneratePoint {
                name: p.name.clone(),
                quality: p.quality,
                generator: knobs.generator,
                sampler: knobs.sampler,
                sigmas: knobs.sigmas,
                guidance: knobs.guidance,
            });
        }
        let point_set = PointSet::from_manifest(manifest)?
            .ok_or_else(|| GenerateError::Model("the manifest declares no points".into()))?;
        let meters = generators
            .keys()
            .map(|g| (g.clone(), Meter::default()))
            .collect();
        Ok(Generate {
            settings,
            text_encoder,
            generators,
            points,
            point_set,
            meters,
        })
    }

    pub fn settings(&self) -> &GenerateSettings {
        &self.settings
    }

    pub fn points(&self) -> &[GeneratePoint] {
        &self.points
    }

    /// The manifest's declaration of the points (default point, target, qualities).
    pub fn point_set(&self) -> &PointSet {
        &self.point_set
    }

    /// The point named `name`, or the manifest's default when `None`.
    pub fn point(&self, name: Option<&str>) -> Result<&GeneratePoint, GenerateError> {
        let name = name.unwrap_or(&self.point_set.default_point);
        self.points.iter().find(|p| p.name == name).ok_or_else(|| {
            GenerateError::BadRequest(format!(
                "unknown point {name:?} (known: {})",
                self.point_set.names().join(", ")
            ))
        })
    }

    /// The renoise point with `steps` evaluations (the CLI's `--steps`).
    pub fn point_with_steps(&self, steps: usize) -> Result<&GeneratePoint, GenerateError> {
        self.points
            .iter()
            .filter(|p| p.sampler == Sampler::Renoise && p.sigmas.len() == steps)
            .max_by(|a, b| {
                a.quality
                    .unwrap_or(0.0)
                    .total_cmp(&b.quality.unwrap_or(0.0))
            })
            .ok_or_else(|| {
                let mut counts: Vec<usize> = self
                    .points
                    .iter()
                    .filter(|p| p.sampler == Sampler::Renoise)
                    .map(|p| p.sigmas.len())
                    .collect();
                counts.sort_unstable();
                counts.dedup();
                GenerateError::BadRequest(format!(
                    "no generator runs in {steps} steps (available: {counts:?})"
                ))
            })
    }

    /// The prompt as the model sees it: trimmed, upper-cased where the model knows only
    /// capitals, and checked against its length and alphabet.
    pub fn normalize_prompt(&self, prompt: &str) -> Result<String, GenerateError> {
        let s = &self.settings;
        let text = prompt.trim();
        let text = if s.uppercase {
            text.to_uppercase()
        } else {
            text.to_string()
        };
        let length = text.chars().count();
        if length == 0 {
            return Err(GenerateError::BadPrompt("the prompt is empty".into()));
        }
        if length < s.min_len || length > s.max_len {
            let allowed = if s.min_len == s.max_len {
                format!("exactly {}", s.min_len)
            } else {
                format!("{} to {}", s.min_len, s.max_len)
            };
            return Err(GenerateError::BadPrompt(format!(
                "the prompt {text:?} has {length} characters; this model draws {allowed}"
            )));
        }
        let unknown: String = text.chars().filter(|c| !s.alphabet.contains(*c)).collect();
        if !unknown.is_empty() {
            return Err(GenerateError::BadPrompt(format!(
                "the prompt {text:?} has characters this model cannot draw: {unknown:?} \
                 (it knows {:?})",
                s.alphabet
            )));
        }
        Ok(text)
    }

    /// Character ids of a normalised prompt, padded with 0; `""` is the empty prompt.
    fn prompt_ids(&self, text: &str) -> ArrayD<i64> {
        let mut ids = vec![0i64; self.settings.max_len];
        for (slot, c) in ids.iter_mut().zip(text.chars()) {
            let index = self.settings.alphabet.chars().position(|a| a == c);
            *slot = index.map_or(0, |i| i as i64 + 1);
        }
        Array::from_shape_vec(IxDyn(&[1, self.settings.max_len]), ids).expect("ids shape")
    }

    fn encode(&self, text: &str) -> Result<ArrayD<f32>, GenerateError> {
        let ids = self.prompt_ids(text);
        let mut out = self.text_encoder.run(&[Input::I64(ids.view())])?;
        Ok(out.remove(0))
    }

    /// One denoiser evaluation: the estimate of the clean image from `x` at `sigma`.
    fn denoise(
        &self,
        model: &dyn Model,
        x: &ArrayD<f32>,
        sigma: f32,
        tokens: &ArrayD<f32>,
    ) -> Result<ArrayD<f32>, GenerateError> {
        let sigma = Array::from_elem(IxDyn(&[1]), sigma);
        let mut out = model.run(&[
            Input::F32(x.view()),
            Input::F32(sigma.view()),
            Input::F32(tokens.view()),
        ])?;
        Ok(out.remove(0))
    }

    /// Draws `prompt` at `point` (the default when `None`) from the noise of `seed`.
    pub fn generate(
        &self,
        prompt: &str,
        point: Option<&str>,
        seed: u64,
    ) -> Result<Generated, GenerateError> {
        self.generate_by(prompt, point, seed, None)
    }

    /// Like [`Generate::generate`], due by `deadline`: a few-step point whose next step
    /// would run late stops after the steps it has taken, which is exactly the answer of
    /// the declared point with those steps (`sid:4` stopped after two is `sid:2`: the same
    /// generator, noise levels and noise stream); the answer names both points.
    pub fn generate_by(
        &self,
        prompt: &str,
        point: Option<&str>,
        seed: u64,
        deadline: Option<Instant>,
    ) -> Result<Generated, GenerateError> {
        let started = Instant::now();
        let text = self.normalize_prompt(prompt)?;
        let decided = self.point(point)?;
        let (served, x) = match decided.sampler {
            Sampler::Renoise => self.renoise_by(&text, decided, seed, deadline)?,
            Sampler::Euler => (decided, self.euler(&text, decided, seed)?),
        };
        Ok(Generated {
            image: self.to_image(&x),
            prompt: text,
            point: served.name.clone(),
            stepped_down_from: (served.name != decided.name).then(|| decided.name.clone()),
            seed,
            evaluations: served.evaluations(),
            total_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Re-noise sampling from `decided`, choosing before each step whether to go on
    /// ([`deadline::finish_at`] over the re-noise points, whose steps are their generator
    /// at their noise levels); the point whose steps it took, and the image.
    fn renoise_by<'p>(
        &'p self,
        text: &str,
        decided: &'p GeneratePoint,
        seed: u64,
        deadline: Option<Instant>,
    ) -> Result<(&'p GeneratePoint, ArrayD<f32>), GenerateError> {
        let stages: Vec<Vec<(&str, f32)>> = self
            .points
            .iter()
            .map(|p| {
                p.sigmas
                    .iter()
                    .map(|&s| (p.generator.as_str(), s))
                    .collect()
            })
            .collect();
        // Only re-noise points are steps of one another.
        let rungs: Vec<Rung<'_, (&str, f32)>> = self
            .points
            .iter()
            .zip(&stages)
            .map(|(p, stages)| Rung {
                quality: p.quality.filter(|_| p.sampler == Sampler::Renoise),
                stages,
            })
            .collect();
        let decided_index = deadline::index_in(&self.points, decided);
        let tokens = self.encode(text)?;
        let mut noise = Noise::new(seed);
        let (mut current, mut done) = (decided_index, 0);
        let mut x: Option<ArrayD<f32>> = None;
        // Every image teaches the meters, with a deadline or not.
        loop {
            let time_left_ms = deadline::ms_left(deadline, 0.0);
            current =
                deadline::finish_at(&rungs, decided_index, current, done, time_left_ms, |s| {
                    self.meters.get(s.0)?.average()
                });
            let point = &self.points[current];
            let Some(&sigma) = point.sigmas.get(done) else {
                let x = x.expect("every re-noise point takes a step, and the first always runs");
                return Ok((point, x));
            };
            let step = Instant::now();
            let z = self.noise(&mut noise) * sigma;
            let x_t = match x {
                None => z,
                Some(estimate) => estimate + z,
            };
            let model = self.generators[&point.generator].as_ref();
            x = Some(self.denoise(model, &x_t, sigma, &tokens)?);
            if let Some(meter) = self.meters.get(&point.generator) {
                meter.record(step.elapsed().as_secs_f64() * 1e3);
            }
            done += 1;
        }
    }

    /// The next image's worth of standard normal noise from `noise`.
    fn noise(&self, noise: &mut Noise) -> ArrayD<f32> {
        let shape = [1, 3, self.settings.height, self.settings.width];
        let z = noise.take(shape.iter().product());
        Array::from_shape_vec(IxDyn(&shape), z).expect("noise shape")
    }

    /// Euler steps of the teacher's ODE for a normalised prompt (values in
    /// `output_range`), with classifier-free guidance where the point asks for it.
    fn euler(
        &self,
        text: &str,
        point: &GeneratePoint,
        seed: u64,
    ) -> Result<ArrayD<f32>, GenerateError> {
        let model = self.generators[&point.generator].as_ref();
        let tokens = self.encode(text)?;
        let empty = if point.guidance == 1.0 {
            None
        } else {
            Some(self.encode("")?)
        };
        let mut x = self.noise(&mut Noise::new(seed)) * point.sigmas[0];
        for pair in point.sigmas.windows(2) {
            let (sigma, next) = (pair[0], pair[1]);
            let mut d = self.denoise(model, &x, sigma, &tokens)?;
            if let Some(empty) = &empty {
                let u = self.denoise(model, &x, sigma, empty)?;
                d = &u + &((&d - &u) * point.guidance);
            }
            x = if next == 0.0 {
                d
            } else {
                let slope = (&x - &d) / sigma;
                x + slope * (next - sigma)
            };
        }
        Ok(x)
    }

    /// Maps the output range to 0..=255 (clamped, rounded half away from zero, as the
    /// Python reference does) and lays out NCHW as an RGB image.
    pub fn to_image(&self, x: &ArrayD<f32>) -> RgbImage {
        let (h, w) = (self.settings.height, self.settings.width);
        let [lo, hi] = self.settings.output_range;
        let level = |v: f32| {
            let unit = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
            (unit * 255.0 + 0.5).floor() as u8
        };
        RgbImage::from_fn(w as u32, h as u32, |col, row| {
            let at = |c: usize| level(x[[0, c, row as usize, col as usize]]);
            image::Rgb([at(0), at(1), at(2)])
        })
    }

    /// Plans the networks of `scope`'s points for their request shape, so that the first
    /// request is not slow.
    pub fn warm_up(&self, scope: WarmUp<'_>) -> Result<(), GenerateError> {
        let s = &self.settings;
        self.text_encoder
            .warm_up(&[(ElementType::I64, &[1, s.max_len])])?;
        let tokens = self.encode("")?;
        let used = self.generators_of(scope);
        for (file, model) in &self.generators {
            if !used.contains(&file) {
                continue;
            }
            model.warm_up(&[
                (ElementType::F32, &[1, 3, s.height, s.width]),
                (ElementType::F32, &[1]),
                (ElementType::F32, tokens.shape()),
            ])?;
        }
        Ok(())
    }

    /// Drops the plans of the generators that no point of `scope` runs.
    pub fn release_outside(&self, scope: WarmUp<'_>) {
        let used = self.generators_of(scope);
        for (file, model) in &self.generators {
            if !used.contains(&file) {
                model.release();
            }
        }
    }

    /// The generator files the points of `scope` run.
    fn generators_of(&self, scope: WarmUp<'_>) -> Vec<&String> {
        let default = &self.point_set.default_point;
        self.points
            .iter()
            .filter(|p| scope.includes(&p.name, default))
            .map(|p| &p.generator)
            .collect()
    }

    /// Where each network runs.
    pub fn placements(&self) -> Vec<Placement> {
        std::iter::once(&self.text_encoder)
            .chain(self.generators.values())
            .map(|m| m.placement())
            .collect()
    }
}
