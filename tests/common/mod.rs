//! Helpers shared by the integration tests: the real models, loaded once per test binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use edgerun::engine::{EngineConfig, TractEngine};
use edgerun::imaging;
use edgerun::models::{self, ModelDir};
use edgerun::services::ocr::OcrPipeline;
use image::RgbImage;

/// The OCR models from `models/ocr`, verified and loaded with tract, shared by all tests.
pub fn ocr() -> &'static OcrPipeline {
    static PIPELINE: OnceLock<OcrPipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        let dir = ModelDir::open(&models::default_root(), "ocr").expect("models/ocr manifest");
        OcrPipeline::load(&TractEngine::new(EngineConfig::default()), &dir).expect("OCR models")
    })
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn load(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    imaging::decode(&bytes, imaging::DEFAULT_MAX_PIXELS).expect("decodable image")
}
