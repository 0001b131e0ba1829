//! Helpers shared by the integration tests: the real models, loaded once per test binary.

#![allow(dead_code)]

pub mod mqtt;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use edgerun::engine::{EngineConfig, TractEngine};
use edgerun::imaging;
use edgerun::models::{self, ModelDir};
use edgerun::services::ocr::OcrPipeline;
use image::RgbImage;

/// The OCR models from `models/ocr`, verified and loaded with tract, shared by all tests.
pub fn ocr() -> &'static Arc<OcrPipeline> {
    static PIPELINE: OnceLock<Arc<OcrPipeline>> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        let dir = ModelDir::open(&models::default_root(), "ocr").expect("models/ocr manifest");
        let engine = TractEngine::new(EngineConfig::default());
        Arc::new(OcrPipeline::load(&engine, &dir).expect("OCR models"))
    })
}

/// A command that runs the `edgerun` binary. Where the tests themselves run under an
/// emulator (`cargo test --target aarch64-unknown-linux-gnu` under qemu-user, without
/// binfmt_misc), `EDGERUN_TEST_RUNNER` names it, e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`,
/// since the kernel cannot start a foreign binary itself.
pub fn edgerun_command() -> Command {
    let binary = env!("CARGO_BIN_EXE_edgerun");
    let runner = std::env::var("EDGERUN_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn load(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    imaging::decode(&bytes, imaging::DEFAULT_MAX_PIXELS).expect("decodable image")
}

/// A PNG whose header claims `width` x `height` (with valid CRCs) and no pixel data.
pub fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    png.extend(0u32.to_be_bytes());
    png.extend(b"IDAT");
    png.extend(crc32(b"IDAT").to_be_bytes());
    png.extend(0u32.to_be_bytes());
    png.extend(b"IEND");
    png.extend(crc32(b"IEND").to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A telemetry tree whose CPU clock cap the test sets, as the kernel shows a thermal or
/// power cap: `sys/devices/system/cpu/cpu0/cpufreq` with a hardware maximum of 2 GHz and
/// the scaling maximum the test writes. `serve` samples it like a device's `/sys`
/// (`telemetry_root`); the controller reads a cap to half the clock as runs twice as slow.
pub struct ScriptedClock {
    dir: tempfile::TempDir,
}

impl ScriptedClock {
    const MAX_KHZ: u64 = 2_000_000;

    pub fn new() -> ScriptedClock {
        let dir = tempfile::tempdir().unwrap();
        let cpufreq = dir.path().join("sys/devices/system/cpu/cpu0/cpufreq");
        std::fs::create_dir_all(&cpufreq).unwrap();
        std::fs::write(
            cpufreq.join("cpuinfo_max_freq"),
            format!("{}\n", Self::MAX_KHZ),
        )
        .unwrap();
        let clock = ScriptedClock { dir };
        clock.cap(1.0);
        clock
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Caps the clock at `share` of its maximum (1: not capped).
    pub fn cap(&self, share: f64) {
        let khz = (Self::MAX_KHZ as f64 * share).round() as u64;
        let cpufreq = self.dir.path().join("sys/devices/system/cpu/cpu0/cpufreq");
        // Written aside and renamed, so the sampler never reads half a number.
        let tmp = cpufreq.join("scaling_max_freq.tmp");
        std::fs::write(&tmp, format!("{khz}\n")).unwrap();
        std::fs::rename(&tmp, cpufreq.join("scaling_max_freq")).unwrap();
    }
}
