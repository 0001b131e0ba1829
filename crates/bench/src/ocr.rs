//! `edgerun bench ocr`: recognition accuracy and latency of every OCR operating point on the
//! shared benchmark data, end-to-end OCR on ICDAR 2015, parity with the Python reference
//! (`export/reference_ocr.py`, onnxruntime) on the same images in the same run, and the
//! declared points end to end beside RapidOCR itself (`export/rapidocr_peer.py`, the
//! pinned wheel as a user runs it): for each RapidOCR configuration, our cheapest point
//! that is at least as accurate, and the time ratio.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::points::PointQuality;
use super::{LatencyStats, Machine, Table, write_json};
use crate::data::{self, GtWord, SceneImage, WordCrop, word_key};
use edgerun_runtime::imaging;
use edgerun_runtime::services::ocr::{
    OcrOptions, OcrPipeline, OcrPoint, Recognition, RecognizerChoice, RecognizerKind, TextItem,
};

/// What to measure.
#[derive(Debug, Clone)]
pub struct OcrBenchSettings {
    /// Crops per word dataset (all if `None`).
    pub samples: Option<usize>,
    /// ICDAR 2015 end-to-end images (1..=250).
    pub e2e_images: usize,
    /// Cascade thresholds to measure; the first one is also used end to end.
    pub thresholds: Vec<f32>,
    pub ascii_only: bool,
    pub det_limit: u32,
    pub threads: usize,
    /// Run the Python reference for parity and the speed ratio.
    pub reference: Option<Reference>,
    /// Declared points to read the end-to-end images at, beside the peer.
    pub points: Vec<OcrPoint>,
    /// Run RapidOCR on the end-to-end images.
    pub peer: Option<Peer>,
    pub out: PathBuf,
}

/// How to start RapidOCR (`export/rapidocr_peer.py`).
#[derive(Debug, Clone)]
pub struct Peer {
    pub python: PathBuf,
    pub script: PathBuf,
    /// The tiny detector for RapidOCR's tiny-det configuration.
    pub tiny_detector: PathBuf,
}

impl Peer {
    /// Fails at once, before any of our points is measured, where the wheel is missing.
    fn check(&self) -> Result<()> {
        let status = Command::new(&self.python)
            .args(["-c", "import rapidocr"])
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("starting {}", self.python.display()))?;
        anyhow::ensure!(
            status.success(),
            "{} cannot import rapidocr: pip install -r export/requirements.txt, or --no-peer",
            self.python.display()
        );
        Ok(())
    }
}

/// A RapidOCR configuration's end-to-end results and the point of ours that matches it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerResult {
    pub peer: String,
    pub images: usize,
    pub word_accuracy: f64,
    pub detection_recall: f64,
    pub latency: LatencyStats,
    /// Our cheapest measured point at least as accurate, if any.
    pub matched_by: Option<PeerMatch>,
}

/// Our point that reads at least as well as a peer configuration, for less time or more.
#[derive(Debug, Clone, Serialize)]
pub struct PeerMatch {
    pub point: String,
    pub word_accuracy: f64,
    pub median_ms: f64,
    /// Our median time per image divided by the peer's (below 1: we are faster).
    pub time_ratio: f64,
}

/// How to start the Python reference.
#[derive(Debug, Clone)]
pub struct Reference {
    pub python: PathBuf,
    pub script: PathBuf,
    pub models: PathBuf,
}

/// One operating point's results on one word dataset.
#[derive(Debug, Clone, Serialize)]
pub struct WordResult {
    pub dataset: String,
    pub point: String,
    pub samples: usize,
    pub accuracy: f64,
    /// Share of crops the small recognizer read.
    pub heavy_share: f64,
    pub latency: LatencyStats,
    pub parity: Option<Parity>,
}

/// Agreement with the Python reference on the same inputs.
#[derive(Debug, Clone, Serialize)]
pub struct Parity {
    /// Share of samples whose output strings are identical.
    pub identical: f64,
    /// The reference's word accuracy (end to end: its end-to-end word accuracy).
    pub reference_accuracy: Option<f64>,
    /// End to end only: the reference's detection recall of care words.
    pub reference_detection_recall: Option<f64>,
    pub reference_latency: LatencyStats,
    /// Our median latency divided by the reference's (below 1: we are faster).
    pub latency_ratio: f64,
}

/// End-to-end results on full scene images.
#[derive(Debug, Clone, Serialize)]
pub struct EndToEndResult {
    pub dataset: String,
    pub point: String,
    pub images: usize,
    pub care_words: usize,
    /// Care words at least 70% covered by detected boxes.
    pub detection_recall: f64,
    /// Care words read correctly (case-insensitive alphanumeric) by a box covering half of them.
    pub word_accuracy: f64,
    pub boxes_per_image: f64,
    pub heavy_share: f64,
    pub latency: LatencyStats,
    pub parity: Option<Parity>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OcrBenchReport {
    pub machine: Machine,
    pub engine: String,
    pub threads: usize,
    pub ascii_only: bool,
    pub det_limit: u32,
    pub words: Vec<WordResult>,
    pub end_to_end: Option<EndToEndResult>,
    /// The declared points end to end (those asked for).
    pub points: Vec<PointQuality>,
    /// RapidOCR's configurations on the same images.
    pub peers: Vec<PeerResult>,
    /// Peak resident memory of the whole benchmark process (all models and plans loaded).
    pub peak_rss_mib: Option<f64>,
}

/// Runs the benchmark, prints the tables and writes the JSON report.
pub fn run(pipeline: &OcrPipeline, settings: &OcrBenchSettings) -> Result<OcrBenchReport> {
    for point in points(&settings.thresholds) {
        options_for(settings, point).validate()?;
    }
    if let Some(peer) = settings.peer.as_ref().filter(|_| settings.e2e_images > 0) {
        peer.check()?;
    }
    let machine = Machine::current();
    eprintln!("machine: {machine}");
    let mut words = Vec::new();
    for (name, crops) in [
        ("iiit5k", data::iiit5k()?),
        ("ic15-words", data::ic15_words()?),
    ] {
        let crops: Vec<WordCrop> = crops
            .into_iter()
            .take(settings.samples.unwrap_or(usize::MAX))
            .collect();
        let images = crops
            .iter()
            .map(|c| load(&c.path))
            .collect::<Result<Vec<_>>>()?;
        for point in points(&settings.thresholds) {
            let options = options_for(settings, point);
            eprintln!("{name}: {} ({} crops)...", point_name(point), crops.len());
            let (mut result, texts) = word_benchmark(pipeline, &options, name, &crops, &images)?;
            if let (Some(reference), "iiit5k") = (&settings.reference, name) {
                result.parity = Some(word_parity(
                    reference, settings, point, &crops, &texts, &result,
                )?);
            }
            words.push(result);
        }
    }
    let end_to_end = if settings.e2e_images > 0 {
        Some(end_to_end(pipeline, settings)?)
    } else {
        None
    };
    let (points, peers) = if settings.e2e_images > 0 {
        points_beside_peer(pipeline, settings)?
    } else {
        Default::default()
    };
    let report = OcrBenchReport {
        machine,
        engine: pipeline
            .placements()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        threads: settings.threads,
        ascii_only: settings.ascii_only,
        det_limit: settings.det_limit,
        words,
        end_to_end,
        points,
        peers,
        peak_rss_mib: super::peak_rss_mib(),
    };
    print!("{}", report_text(&report));
    write_json(&settings.out, &report)?;
    eprintln!("wrote {}", settings.out.display());
    Ok(report)
}

/// Reads and decodes an image file, naming the file in errors.
pub(super) fn load(path: &std::path::Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    imaging::decode(&bytes, imaging::DEFAULT_MAX_PIXELS)
        .with_context(|| format!("decoding {}", path.display()))
}

/// `tiny`, `small` or `cascade@0.9`: the recognizer a row of this benchmark ran (rows
/// sweep recognizers at one detector size, so they are not declared points).
fn point_name(choice: RecognizerChoice) -> String {
    match choice {
        RecognizerChoice::Tiny => "tiny".into(),
        RecognizerChoice::Small => "small".into(),
        RecognizerChoice::Cascade { threshold } => format!("cascade@{threshold}"),
    }
}

/// The operating points measured: tiny, small, and a cascade per threshold.
fn points(thresholds: &[f32]) -> Vec<RecognizerChoice> {
    let mut points = vec![RecognizerChoice::Tiny, RecognizerChoice::Small];
    points.extend(
        thresholds
            .iter()
            .map(|&threshold| RecognizerChoice::Cascade { threshold }),
    );
    points
}

fn options_for(settings: &OcrBenchSettings, point: RecognizerChoice) -> OcrOptions {
    OcrOptions {
        det_limit: settings.det_limit,
        recognizer: point,
        ascii_only: settings.ascii_only,
        ..OcrOptions::default()
    }
}

fn word_benchmark(
    pipeline: &OcrPipeline,
    options: &OcrOptions,
    dataset: &str,
    crops: &[WordCrop],
    images: &[RgbImage],
) -> Result<(WordResult, Vec<String>)> {
    let mut latencies = Vec::with_capacity(images.len());
    let (mut correct, mut heavy) = (0usize, 0usize);
    let mut texts = Vec::with_capacity(images.len());
    for (crop, image) in crops.iter().zip(images) {
        let started = Instant::now();
        let reading = pipeline.recognize(&[image], options)?.remove(0);
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        correct += usize::from(word_key(&reading.text) == word_key(&crop.label));
        heavy += usize::from(reading.recognizer == RecognizerKind::Small);
        texts.push(reading.text);
    }
    let n = crops.len().max(1) as f64;
    let result = WordResult {
        dataset: dataset.into(),
        point: point_name(options.recognizer),
        samples: crops.len(),
        accuracy: correct as f64 / n,
        heavy_share: heavy as f64 / n,
        latency: LatencyStats::of(&latencies),
        parity: None,
    };
    Ok((result, texts))
}

fn word_parity(
    reference: &Reference,
    settings: &OcrBenchSettings,
    point: RecognizerChoice,
    crops: &[WordCrop],
    texts: &[String],
    ours: &WordResult,
) -> Result<Parity> {
    let paths: Vec<PathBuf> = crops.iter().map(|c| c.path.clone()).collect();
    eprintln!("  python reference, {} crops...", paths.len());
    let records = run_reference(reference, settings, "crops", point, &paths)?;
    let mut identical = 0usize;
    let mut correct = 0usize;
    let mut latencies = Vec::new();
    for ((record, ours), crop) in records.iter().zip(texts).zip(crops) {
        let text = record.text.as_deref().unwrap_or_default();
        identical += usize::from(text == ours);
        correct += usize::from(word_key(text) == word_key(&crop.label));
        latencies.extend(record.ms);
    }
    let reference_latency = LatencyStats::of(&latencies);
    let n = crops.len().max(1) as f64;
    Ok(Parity {
        identical: identical as f64 / n,
        reference_accuracy: Some(correct as f64 / n),
        reference_detection_recall: None,
        latency_ratio: ours.latency.median_ms / reference_latency.median_ms,
        reference_latency,
    })
}

/// One line of the reference's output.
#[derive(Debug, Deserialize)]
struct ReferenceRecord {
    path: PathBuf,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    ms: Option<f64>,
    #[serde(default)]
    items: Vec<ReferenceItem>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ReferenceItem {
    #[serde(rename = "box")]
    text_box: [[i32; 2]; 4],
    text: String,
    confidence: f32,
}

impl ReferenceItem {
    fn to_item(&self) -> TextItem {
        TextItem {
            text_box: self.text_box,
            box_score: 0.0,
            recognition: Recognition {
                text: self.text.clone(),
                confidence: self.confidence,
                // Not compared: scoring looks at boxes and texts only.
                recognizer: RecognizerKind::Tiny,
            },
        }
    }
}

/// Runs `export/reference_ocr.py` over `paths` and returns its records in input order.
fn run_reference(
    reference: &Reference,
    settings: &OcrBenchSettings,
    mode: &str,
    point: RecognizerChoice,
    paths: &[PathBuf],
) -> Result<Vec<ReferenceRecord>> {
    let (rec, threshold) = match point {
        RecognizerChoice::Tiny => ("tiny", 0.0),
        RecognizerChoice::Small => ("small", 0.0),
        RecognizerChoice::Cascade { threshold } => ("cascade", threshold),
    };
    let defaults = options_for(settings, point);
    let mut command = Command::new(&reference.python);
    command
        .arg(&reference.script)
        .arg("--models")
        .arg(&reference.models)
        .args(["--mode", mode, "--rec", rec])
        .args(["--threshold", &threshold.to_string()])
        .args(["--limit", &settings.det_limit.to_string()])
        .args(["--threads", &settings.threads.to_string()])
        // Compare the same computation: our batch size, width steps and confidence floor.
        .args(["--batch", &defaults.batch_size.to_string(), "--width-steps"])
        .args(["--min-confidence", &defaults.min_confidence.to_string()]);
    if settings.ascii_only {
        command.arg("--ascii");
    }
    records_from(command, paths, "reference")
}

/// Feeds `paths` to a Python OCR process speaking the reference's JSON lines and returns
/// its records in input order; `who` names it in errors.
fn records_from(
    mut command: Command,
    paths: &[PathBuf],
    who: &str,
) -> Result<Vec<ReferenceRecord>> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {who} {:?}", command.get_program()))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    // Written from a thread: the reference answers while we feed it, and both pipes are finite.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut records = Vec::with_capacity(paths.len());
    for line in stdout.lines() {
        let line = line?;
        let record: ReferenceRecord =
            serde_json::from_str(&line).with_context(|| format!("{who} printed {line:?}"))?;
        if let Some(error) = &record.error {
            bail!("{who} failed on {}: {error}", record.path.display());
        }
        records.push(record);
    }
    writer.join().expect("writer thread")?;
    let status = child.wait()?;
    if !status.success() || records.len() != paths.len() {
        bail!(
            "{who} exited with {status} after {} of {} records",
            records.len(),
            paths.len()
        );
    }
    for (record, path) in records.iter().zip(paths) {
        if record.path != *path {
            bail!(
                "{who} answered {} for {}",
                record.path.display(),
                path.display()
            );
        }
    }
    Ok(records)
}

fn end_to_end(pipeline: &OcrPipeline, settings: &OcrBenchSettings) -> Result<EndToEndResult> {
    let scenes = data::ic15_e2e(settings.e2e_images)?;
    let point = settings
        .thresholds
        .first()
        .map(|&threshold| RecognizerChoice::Cascade { threshold })
        .unwrap_or(RecognizerChoice::Small);
    let options = options_for(settings, point);
    eprintln!(
        "ic15-e2e: {} ({} images)...",
        point_name(point),
        scenes.len()
    );
    let (mut result, all_texts) = read_scenes(pipeline, &options, &scenes)?;
    result.parity = match &settings.reference {
        Some(reference) => {
            eprintln!("  python reference, {} images...", scenes.len());
            let paths: Vec<PathBuf> = scenes.iter().map(|s| s.path.clone()).collect();
            let records = run_reference(reference, settings, "e2e", point, &paths)?;
            let mut theirs = SceneScore::default();
            for (scene, record) in scenes.iter().zip(&records) {
                let items: Vec<TextItem> =
                    record.items.iter().map(ReferenceItem::to_item).collect();
                theirs.add(scene, &items);
            }
            let identical = records
                .iter()
                .zip(&all_texts)
                .filter(|(r, ours)| r.items.iter().map(|i| &i.text).eq(ours.iter()))
                .count();
            let reference_latency =
                LatencyStats::of(&records.iter().filter_map(|r| r.ms).collect::<Vec<_>>());
            Some(Parity {
                identical: identical as f64 / scenes.len().max(1) as f64,
                reference_accuracy: Some(theirs.word_accuracy()),
                reference_detection_recall: Some(theirs.detection_recall()),
                latency_ratio: result.latency.median_ms / reference_latency.median_ms,
                reference_latency,
            })
        }
        None => None,
    };
    Ok(result)
}

/// The declared points and RapidOCR's configurations on the same end-to-end images, each
/// configuration matched with our cheapest point at least as accurate.
fn points_beside_peer(
    pipeline: &OcrPipeline,
    settings: &OcrBenchSettings,
) -> Result<(Vec<PointQuality>, Vec<PeerResult>)> {
    let scenes = data::ic15_e2e(settings.e2e_images)?;
    let ours = super::points::measure(pipeline, &settings.points, &scenes)?;
    let Some(peer) = &settings.peer else {
        return Ok((ours, Vec::new()));
    };
    let paths: Vec<PathBuf> = scenes.iter().map(|s| s.path.clone()).collect();
    let mut peers = Vec::new();
    for (name, detector) in [
        ("RapidOCR default", None),
        ("RapidOCR tiny det", Some(&peer.tiny_detector)),
    ] {
        eprintln!("{name}: {} images...", scenes.len());
        let mut command = Command::new(&peer.python);
        command
            .arg(&peer.script)
            .args(["--threads", &settings.threads.to_string()]);
        if let Some(detector) = detector {
            command.arg("--det-model").arg(detector);
        }
        let records = records_from(command, &paths, name)?;
        let mut score = SceneScore::default();
        for (scene, record) in scenes.iter().zip(&records) {
            let items: Vec<TextItem> = record.items.iter().map(ReferenceItem::to_item).collect();
            score.add(scene, &items);
        }
        let latency = LatencyStats::of(&records.iter().filter_map(|r| r.ms).collect::<Vec<_>>());
        let word_accuracy = score.word_accuracy();
        peers.push(PeerResult {
            peer: name.into(),
            images: scenes.len(),
            word_accuracy,
            detection_recall: score.detection_recall(),
            matched_by: cheapest_at_least(&ours, word_accuracy).map(|p| PeerMatch {
                point: p.name.clone(),
                word_accuracy: p.quality,
                median_ms: p.latency.median_ms,
                time_ratio: p.latency.median_ms / latency.median_ms,
            }),
            latency,
        });
    }
    Ok((ours, peers))
}

/// The point with the lowest median time among those reading at least `accuracy`.
fn cheapest_at_least(points: &[PointQuality], accuracy: f64) -> Option<&PointQuality> {
    points
        .iter()
        .filter(|p| p.quality >= accuracy)
        .min_by(|a, b| a.latency.median_ms.total_cmp(&b.latency.median_ms))
}

/// Reads every scene with `options` and scores it (no parity); also returns the texts read
/// per scene.
pub fn read_scenes(
    pipeline: &OcrPipeline,
    options: &OcrOptions,
    scenes: &[SceneImage],
) -> Result<(EndToEndResult, Vec<Vec<String>>)> {
    let mut ours = SceneScore::default();
    let (mut boxes, mut crops, mut heavy) = (0usize, 0usize, 0usize);
    let mut latencies = Vec::new();
    let mut all_texts = Vec::new();
    for scene in scenes {
        let image = load(&scene.path)?;
        let result = pipeline.read_image(&image, options)?;
        latencies.push(result.timings.total_ms);
        boxes += result.items.len();
        crops += result.crops;
        heavy += result.heavy_calls;
        ours.add(scene, &result.items);
        all_texts.push(
            result
                .items
                .iter()
                .map(|i| i.recognition.text.clone())
                .collect::<Vec<_>>(),
        );
    }
    let share = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    let result = EndToEndResult {
        dataset: "ic15-e2e".into(),
        point: point_name(options.recognizer),
        images: scenes.len(),
        care_words: ours.care,
        detection_recall: ours.detection_recall(),
        word_accuracy: ours.word_accuracy(),
        boxes_per_image: share(boxes, scenes.len()),
        heavy_share: share(heavy, crops),
        latency: LatencyStats::of(&latencies),
        parity: None,
    };
    Ok((result, all_texts))
}

/// End-to-end counts over care words.
#[derive(Debug, Default)]
struct SceneScore {
    care: usize,
    detected: usize,
    read: usize,
}

impl SceneScore {
    fn add(&mut self, scene: &SceneImage, items: &[TextItem]) {
        for word in scene.words.iter().filter(|w| w.care) {
            self.care += 1;
            self.detected += usize::from(coverage(word, items.iter()) >= 0.7);
            self.read += usize::from(word_read(word, items));
        }
    }

    fn detection_recall(&self) -> f64 {
        self.detected as f64 / self.care.max(1) as f64
    }

    fn word_accuracy(&self) -> f64 {
        self.read as f64 / self.care.max(1) as f64
    }
}

/// Share of the word's area inside at least one of `items`' boxes (sampled per pixel).
fn coverage<'a>(word: &GtWord, items: impl Iterator<Item = &'a TextItem> + Clone) -> f64 {
    let xs = word.quad.iter().map(|p| p[0]);
    let ys = word.quad.iter().map(|p| p[1]);
    let (x0, x1) = (
        xs.clone().fold(f64::MAX, f64::min),
        xs.fold(f64::MIN, f64::max),
    );
    let (y0, y1) = (
        ys.clone().fold(f64::MAX, f64::min),
        ys.fold(f64::MIN, f64::max),
    );
    let (mut inside, mut covered) = (0usize, 0usize);
    for y in y0.floor() as i64..y1.ceil() as i64 {
        for x in x0.floor() as i64..x1.ceil() as i64 {
            let p = [x as f64 + 0.5, y as f64 + 0.5];
            if !point_in_quad(p, &word.quad) {
                continue;
            }
            inside += 1;
            let in_box = |item: &TextItem| {
                point_in_quad(p, &item.text_box.map(|[x, y]| [x as f64, y as f64]))
            };
            covered += usize::from(items.clone().any(in_box));
        }
    }
    if inside == 0 {
        0.0
    } else {
        covered as f64 / inside as f64
    }
}

/// A care word counts as read when a box covering at least half of it has the word among
/// its whitespace-separated tokens (boxes are often whole lines).
fn word_read(word: &GtWord, items: &[TextItem]) -> bool {
    let key = word_key(&word.text);
    !key.is_empty()
        && items.iter().any(|item| {
            item.recognition
                .text
                .split_whitespace()
                .any(|token| word_key(token) == key)
                && coverage(word, std::iter::once(item)) >= 0.5
        })
}

/// Crossing-number test.
fn point_in_quad(p: [f64; 2], quad: &[[f64; 2]; 4]) -> bool {
    let mut inside = false;
    for i in 0..4 {
        let (a, b) = (quad[i], quad[(i + 3) % 4]);
        if (a[1] > p[1]) != (b[1] > p[1]) {
            let x = a[0] + (p[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0]);
            if p[0] < x {
                inside = !inside;
            }
        }
    }
    inside
}

fn report_text(report: &OcrBenchReport) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "OCR benchmark on {} - {}, ascii_only={}",
        report.machine, report.engine, report.ascii_only
    );
    let pct = |v: f64| format!("{:.1}%", v * 100.0);
    let ms = |v: f64| format!("{v:.1}");
    let mut table = Table::new(&[
        "dataset",
        "point",
        "n",
        "word acc",
        "heavy",
        "p50 ms",
        "p95 ms",
        "py acc",
        "identical",
        "py p50 ms",
        "ours/py",
    ]);
    for w in &report.words {
        let mut row = vec![
            w.dataset.clone(),
            w.point.clone(),
            w.samples.to_string(),
            pct(w.accuracy),
            pct(w.heavy_share),
            ms(w.latency.median_ms),
            ms(w.latency.p95_ms),
        ];
        match &w.parity {
            Some(p) => row.extend([
                p.reference_accuracy.map(pct).unwrap_or_default(),
                pct(p.identical),
                ms(p.reference_latency.median_ms),
                format!("{:.2}", p.latency_ratio),
            ]),
            None => row.extend(["-".into(), "-".into(), "-".into(), "-".into()]),
        }
        table.row(row);
    }
    let _ = writeln!(text, "{table}");
    if let Some(e) = &report.end_to_end {
        let mut table = Table::new(&[
            "dataset",
            "point",
            "images",
            "care words",
            "det recall",
            "e2e word acc",
            "boxes/img",
            "heavy",
            "p50 ms/img",
            "p95 ms/img",
            "py det recall",
            "py e2e acc",
            "identical",
            "py p50 ms",
            "ours/py",
        ]);
        let mut row = vec![
            e.dataset.clone(),
            e.point.clone(),
            e.images.to_string(),
            e.care_words.to_string(),
            pct(e.detection_recall),
            pct(e.word_accuracy),
            format!("{:.1}", e.boxes_per_image),
            pct(e.heavy_share),
            ms(e.latency.median_ms),
            ms(e.latency.p95_ms),
        ];
        match &e.parity {
            Some(p) => row.extend([
                p.reference_detection_recall.map(pct).unwrap_or_default(),
                p.reference_accuracy.map(pct).unwrap_or_default(),
                pct(p.identical),
                ms(p.reference_latency.median_ms),
                format!("{:.2}", p.latency_ratio),
            ]),
            None => row.extend(std::iter::repeat_n("-".to_string(), 5)),
        }
        table.row(row);
        let _ = writeln!(text, "{table}");
    }
    if !report.points.is_empty() {
        let mut table = Table::new(&["ic15-e2e point", "word acc", "det recall", "p50 ms/img"]);
        for p in &report.points {
            table.row(vec![
                p.name.clone(),
                pct(p.quality),
                pct(p.detection_recall),
                ms(p.latency.median_ms),
            ]);
        }
        let _ = writeln!(text, "{table}");
    }
    if !report.peers.is_empty() {
        let mut table = Table::new(&[
            "peer",
            "word acc",
            "det recall",
            "p50 ms/img",
            "our cheapest at least as accurate",
            "its acc",
            "its p50 ms",
            "ours/peer",
        ]);
        for peer in &report.peers {
            let mut row = vec![
                peer.peer.clone(),
                pct(peer.word_accuracy),
                pct(peer.detection_recall),
                ms(peer.latency.median_ms),
            ];
            match &peer.matched_by {
                Some(m) => row.extend([
                    m.point.clone(),
                    pct(m.word_accuracy),
                    ms(m.median_ms),
                    format!("{:.2}", m.time_ratio),
                ]),
                None => row.extend(["none".into(), "-".into(), "-".into(), "-".into()]),
            }
            table.row(row);
        }
        let _ = writeln!(text, "{table}");
    }
    if let Some(mib) = report.peak_rss_mib {
        let _ = writeln!(text, "peak resident memory: {mib:.0} MiB");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(points: [[i32; 2]; 4], text: &str) -> TextItem {
        TextItem {
            text_box: points,
            box_score: 1.0,
            recognition: Recognition {
                text: text.into(),
                confidence: 1.0,
                recognizer: RecognizerKind::Tiny,
            },
        }
    }

    fn word(quad: [[f64; 2]; 4], text: &str) -> GtWord {
        GtWord {
            quad,
            text: text.into(),
            care: true,
        }
    }

    #[test]
    fn report_table_lines_up_with_its_header() {
        let latency = |median_ms| LatencyStats {
            count: 1,
            median_ms,
            p95_ms: median_ms,
            mean_ms: median_ms,
        };
        let parity = Parity {
            identical: 0.5,
            reference_accuracy: Some(0.25),
            reference_detection_recall: Some(0.75),
            reference_latency: latency(100.0),
            latency_ratio: 2.0,
        };
        let report = OcrBenchReport {
            machine: Machine {
                cpu: "cpu".into(),
                logical_cores: 2,
                arch: "x86_64",
                os: "linux",
                memory_budget_mib: Some(1024.0),
            },
            engine: "tract".into(),
            threads: 1,
            ascii_only: true,
            det_limit: 960,
            words: vec![],
            end_to_end: Some(EndToEndResult {
                dataset: "ic15-e2e".into(),
                point: "cascade@0.9".into(),
                images: 1,
                care_words: 4,
                detection_recall: 1.0,
                word_accuracy: 0.5,
                boxes_per_image: 3.0,
                heavy_share: 0.0,
                latency: latency(200.0),
                parity: Some(parity),
            }),
            points: vec![],
            peers: vec![],
            peak_rss_mib: None,
        };
        let text = report_text(&report);
        let lines: Vec<&str> = text.lines().collect();
        let e2e_header = lines
            .iter()
            .position(|l| l.starts_with("dataset   point"))
            .unwrap();
        let header = lines[e2e_header];
        let row = lines[e2e_header + 2];
        let column = |name: &str| header.find(name).unwrap();
        assert_eq!(&row[column("py det recall")..][..5], "75.0%");
        assert_eq!(&row[column("py e2e acc")..][..5], "25.0%");
        assert_eq!(&row[column("identical")..][..5], "50.0%");
        assert!(row.ends_with("100.0      2.00"), "{row}");
    }

    #[test]
    fn the_cheapest_point_at_least_as_accurate_matches_a_peer() {
        let point = |name: &str, quality: f64, median_ms: f64| PointQuality {
            name: name.into(),
            quality,
            detection_recall: 0.0,
            heavy_share: 0.0,
            latency: LatencyStats {
                count: 1,
                median_ms,
                p95_ms: median_ms,
                mean_ms: median_ms,
            },
        };
        let points = [
            point("fast", 0.50, 100.0),
            point("good", 0.60, 300.0),
            point("best", 0.62, 900.0),
            point("good-cheaper", 0.61, 250.0),
        ];
        let name = |accuracy| cheapest_at_least(&points, accuracy).map(|p| p.name.as_str());
        assert_eq!(name(0.55), Some("good-cheaper"));
        assert_eq!(
            name(0.60),
            Some("good-cheaper"),
            "ties count as at least as accurate"
        );
        assert_eq!(name(0.62), Some("best"));
        assert_eq!(name(0.40), Some("fast"));
        assert_eq!(name(0.63), None);
    }

    #[test]
    fn coverage_counts_the_covered_share_of_the_word() {
        let w = word([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]], "x");
        let left = item([[0, 0], [5, 0], [5, 10], [0, 10]], "a");
        let all = item([[-1, -1], [20, -1], [20, 20], [-1, 20]], "b");
        assert!((coverage(&w, [left.clone()].iter()) - 0.5).abs() < 1e-9);
        assert!((coverage(&w, [all.clone()].iter()) - 1.0).abs() < 1e-9);
        assert_eq!(coverage(&w, [].iter()), 0.0);
    }

    #[test]
    fn word_is_read_from_a_token_of_a_covering_line() {
        let w = word(
            [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]],
            "Exit,",
        );
        let line = item([[-1, -1], [50, -1], [50, 20], [-1, 20]], "EXIT 42");
        let elsewhere = item([[30, 30], [50, 30], [50, 40], [30, 40]], "exit");
        assert!(word_read(&w, &[line]));
        assert!(!word_read(&w, &[elsewhere]));
        let partial = item([[-1, -1], [50, -1], [50, 20], [-1, 20]], "EXITS");
        assert!(!word_read(&w, &[partial]));
    }
}
