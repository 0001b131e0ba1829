//! Conformance of the two engines: every model in `models/` gives the same outputs on tract
//! and on ONNX Runtime for real inputs (OCR scenes, legal questions through every encoder
//! point, prompts through every generate point), and OCR reads the same strings on both.
//!
//! Needs the cargo feature `ort` and `ORT_DYLIB_PATH` pointing at libonnxruntime 1.31 or newer
//! (`.ci/run` takes it from the `onnxruntime==1.32.0` wheel).

#![cfg(feature = "ort")]

mod common;

use std::sync::OnceLock;

use common::{load, ocr};
use edgerun::data;
use edgerun::engine::record::{OwnedInput, Recorder};
use edgerun::engine::{
    Backend, Backends, ElementType, Engine, EngineConfig, Input, Onnx, OrtConfig, OrtEngine,
    Provider, TractEngine,
};
use edgerun::models::{self, ModelDir};
use edgerun::services::generate::Generate;
use edgerun::services::legal::Legal;
use edgerun::services::ocr::{DetectorKind, OcrOptions, OcrPipeline, RecognizerChoice};
use ndarray::ArrayD;

/// Largest difference allowed between the engines' outputs, relative to the output's scale
/// (at least 1, so OCR's probabilities are compared absolutely). Observed on x86_64 with ONNX
/// Runtime 1.32.0: up to 3.8e-5 (OCR), 6e-7 (legal blocks); the engines fuse and order
/// floating-point sums differently.
const TOLERANCE: f32 = 1e-4;

/// The ONNX Runtime settings for these tests: the library from `ORT_DYLIB_PATH`.
fn ort_config(providers: &[Provider]) -> EngineConfig {
    let library = std::env::var_os("ORT_DYLIB_PATH").expect(
        "the ort tests need ORT_DYLIB_PATH=/path/to/libonnxruntime.so (see .ci/run for where \
         to get it)",
    );
    EngineConfig {
        backend: Backend::Ort,
        ort: OrtConfig {
            library: Some(library.into()),
            providers: providers.to_vec(),
            ..OrtConfig::default()
        },
        ..EngineConfig::default()
    }
}

fn ort_engine() -> &'static OrtEngine {
    static ENGINE: OnceLock<OrtEngine> = OnceLock::new();
    ENGINE.get_or_init(|| OrtEngine::new(&ort_config(&[Provider::Cpu])).expect("ONNX Runtime"))
}

fn ort_ocr() -> &'static OcrPipeline {
    static PIPELINE: OnceLock<OcrPipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        let dir = ModelDir::open(&models::default_root(), "ocr").unwrap();
        OcrPipeline::load(ort_engine(), &dir).expect("OCR models on ort")
    })
}

fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_model_gives_the_same_outputs_on_both_engines() {
    // Record real inputs by running the real OCR pipeline on tract: two street scenes (the
    // detector at two sizes, every crop through both recognizers) and a few word crops.
    let recorder = Recorder::new(TractEngine::new(EngineConfig::default()));
    let dir = ModelDir::open(&models::default_root(), "ocr").unwrap();
    let pipeline = OcrPipeline::load(&recorder, &dir).unwrap();
    // A smaller detector input than the default keeps this affordable under emulation.
    let everything_twice = OcrOptions {
        recognizer: RecognizerChoice::Cascade { threshold: 1.01 },
        det_limit: 640,
        ..OcrOptions::default()
    };
    // The small detector on the same scenes, its crops through the tiny recognizer only.
    let small_detector = OcrOptions {
        detector: DetectorKind::Small,
        recognizer: RecognizerChoice::Tiny,
        det_limit: 640,
        ..OcrOptions::default()
    };
    for scene in data::ic15_e2e(2).unwrap() {
        let image = load(&scene.path);
        pipeline.read_image(&image, &everything_twice).unwrap();
        pipeline.read_image(&image, &small_detector).unwrap();
    }
    // Two legal questions through every encoder point: every block and the pooling run.
    let legal = Legal::load(&models::default_root(), &recorder, None).unwrap();
    for point in legal.points().iter().filter(|p| p.space.is_some()) {
        for question in [
            "Is a contract made under duress voidable?",
            "The right of retention",
        ] {
            legal.embed(&point.name, question).unwrap();
        }
    }
    // Two prompts through every generate point: the text encoder, both students, the teacher.
    let generate = Generate::load(&models::default_root(), &recorder).unwrap();
    for point in generate.points() {
        for prompt in ["E", "7"] {
            generate.generate(prompt, Some(&point.name), 1).unwrap();
        }
    }
    let recorded = recorder.runs();

    let mut checked = Vec::new();
    for (dir, file) in models::all_onnx_files(&models::default_root()).unwrap() {
        let name = format!("{}/{file}", dir.manifest().service);
        let inputs = recorded
            .get(&name)
            .unwrap_or_else(|| panic!("{name} was never run: give it real inputs in this test"));
        let tract = TractEngine::new(EngineConfig::default());
        let tract = dir.load(&tract, &file).unwrap();
        let ort = dir.load(ort_engine(), &file).unwrap();
        let mut worst = 0f32;
        for input in inputs.iter().take(4) {
            let input: Vec<Input<'_>> = input.iter().map(OwnedInput::view).collect();
            let (a, b) = (tract.run(&input).unwrap(), ort.run(&input).unwrap());
            assert_eq!(a.len(), b.len(), "{name}: output count");
            for (a, b) in a.iter().zip(&b) {
                // Relative to the output's scale: hidden states of the encoder layers reach
                // magnitudes near 10, where f32 sums in another order differ by more than
                // 1e-4 absolute.
                let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
                worst = worst.max(max_abs_diff(a, b) / scale);
            }
        }
        assert!(
            worst <= TOLERANCE,
            "{name}: max |tract - ort| / scale = {worst:e}"
        );
        eprintln!(
            "{name}: {} inputs, max |tract - ort| / scale = {worst:e}",
            inputs.len().min(6)
        );
        checked.push(name);
    }
    // Four OCR models, 18 legal blocks (2 embeddings, 9 layers, 6 stitches, pooling), and
    // the generate text encoder, two students and the teacher.
    assert_eq!(checked.len(), 26, "{checked:?}");
    for name in [
        "ocr/det_tiny.onnx",
        "ocr/det_small.onnx",
        "ocr/rec_small.onnx",
        "ocr/rec_tiny.onnx",
        "generate/text_encoder.onnx",
        "generate/sid1.onnx",
        "generate/sid4.onnx",
        "generate/teacher.onnx",
    ] {
        assert!(checked.iter().any(|c| c == name), "{name} not checked");
    }
    let legal_blocks = checked.iter().filter(|c| c.starts_with("legal/")).count();
    assert_eq!(legal_blocks, 18);
}

#[test]
fn legal_queries_run_unpadded_on_ort_and_embed_as_on_tract() {
    // tract pads token sequences to 16-token buckets (it plans per shape); ONNX Runtime runs
    // the exact length. Masked positions must not matter, so both give the same vector.
    let tract = Legal::load(
        &models::default_root(),
        &TractEngine::new(EngineConfig::default()),
        None,
    )
    .unwrap();
    let recorder =
        Recorder::new(OrtEngine::new(&ort_config(&[Provider::Cpu])).expect("ONNX Runtime"));
    let ort = Legal::load(&models::default_root(), &recorder, None).unwrap();
    let question = "Is a contract made under duress voidable?";
    let tokens = tract.tokenize(question).unwrap().len();
    assert_eq!(
        tokens, 12,
        "[CLS], 10 word pieces, [SEP]: not a multiple of 16"
    );
    for point in ["l6", "sn:l3.2-l6.5"] {
        let (a, b) = (
            tract.embed(point, question).unwrap(),
            ort.embed(point, question).unwrap(),
        );
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= TOLERANCE, "{point}: max |tract - ort| = {worst:e}");
    }
    let runs = recorder.runs();
    for model in [
        "legal/emb_l6.onnx",
        "legal/l6_layer5.onnx",
        "legal/pool.onnx",
    ] {
        let shape = runs[model].last().unwrap()[0].shape().to_vec();
        assert_eq!(shape[..2], [1, tokens], "{model}: unpadded on ONNX Runtime");
    }
}

#[test]
fn legal_int8_matmuls_on_ort_stay_close_to_f32_and_answer_alike() {
    // Opt-in int8 arithmetic for the int8-stored weights: different numbers, measured
    // closeness. Over the 109 R05 queries the L6 embedding's cosine to f32 was >= 0.991.
    let f32_engine = OrtEngine::new(&ort_config(&[Provider::Cpu])).expect("ONNX Runtime");
    let mut config = ort_config(&[Provider::Cpu]);
    config.ort.int8_matmul = vec!["legal/".into()];
    let int8_engine = OrtEngine::new(&config).expect("ONNX Runtime");
    let layer = models::default_root().join("legal/l6_layer0.onnx");
    let placement = int8_engine
        .load(
            "legal/l6_layer0.onnx",
            Onnx::bytes(&std::fs::read(layer).unwrap()),
        )
        .unwrap()
        .placement();
    assert_eq!(placement.notes, ["6 MatMuls in int8"]);
    let exact = Legal::load(&models::default_root(), &f32_engine, None).unwrap();
    let int8 = Legal::load(&models::default_root(), &int8_engine, None).unwrap();
    for (question, gold) in [
        (
            "Is a manifestation of intention induced by fraud voidable?",
            "96",
        ),
        (
            "Can a minor rescind a contract made without the consent of a legal representative?",
            "5",
        ),
        (
            "Does a possessor in good faith acquire the fruits of the thing possessed?",
            "189",
        ),
    ] {
        let (a, b) = (
            exact.embed("l6", question).unwrap(),
            int8.embed("l6", question).unwrap(),
        );
        let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = dot / (norm(&a) * norm(&b));
        assert!(cosine >= 0.99, "{question}: cosine {cosine}");
        let top = |legal: &Legal| {
            legal.search(question, 3, Some("l6")).unwrap().hits[0]
                .article
                .clone()
        };
        assert_eq!(top(&exact), gold, "{question}");
        assert_eq!(top(&int8), gold, "{question}");
    }
}

#[test]
fn ocr_reads_identical_strings_on_both_engines() {
    let options = OcrOptions {
        recognizer: RecognizerChoice::Cascade { threshold: 0.9 },
        det_limit: 640,
        ..OcrOptions::default()
    };
    let mut items = 0;
    for scene in data::ic15_e2e(10).unwrap() {
        let image = load(&scene.path);
        let on_tract = ocr().read_image(&image, &options).unwrap();
        let on_ort = ort_ocr().read_image(&image, &options).unwrap();
        let texts = |r: &edgerun::services::ocr::ImageResult| -> Vec<String> {
            r.items.iter().map(|i| i.recognition.text.clone()).collect()
        };
        assert_eq!(texts(&on_tract), texts(&on_ort), "{}", scene.path.display());
        for (a, b) in on_tract.items.iter().zip(&on_ort.items) {
            assert_eq!(a.text_box, b.text_box, "{}", scene.path.display());
            assert_eq!(a.recognition.recognizer, b.recognition.recognizer);
            let diff = (a.recognition.confidence - b.recognition.confidence).abs();
            assert!(diff <= TOLERANCE, "confidence differs by {diff}");
        }
        items += on_tract.items.len();
    }
    // The ten scenes hold this many words read above `min_confidence` at this size: a guard
    // against comparing nothing. (17 with recognizer inputs padded to 320 columns; at 128 one
    // word's confidence falls under 0.5 on both engines.)
    assert_eq!(items, 16);

    let crops: Vec<_> = data::iiit5k()
        .unwrap()
        .into_iter()
        .step_by(150)
        .map(|word| load(&word.path))
        .collect();
    let refs: Vec<_> = crops.iter().collect();
    for recognizer in [RecognizerChoice::Tiny, RecognizerChoice::Small] {
        let options = OcrOptions {
            recognizer,
            ..OcrOptions::default()
        };
        let a = ocr().recognize(&refs, &options).unwrap();
        let b = ort_ocr().recognize(&refs, &options).unwrap();
        let texts = |r: &[edgerun::services::ocr::Recognition]| -> Vec<String> {
            r.iter().map(|r| r.text.clone()).collect()
        };
        assert_eq!(texts(&a), texts(&b), "{recognizer:?}");
        assert_eq!(a.len(), 20);
    }
}

#[test]
fn placement_names_the_engine_and_providers() {
    let placements = ort_ocr().placements();
    // det_tiny, det_small, rec_tiny, rec_small.
    let placement = &placements[2];
    assert_eq!(placement.model, "ocr/rec_tiny.onnx");
    assert_eq!(placement.engine, "ort");
    assert_eq!(placement.providers, [Provider::Cpu]);
    assert!(placement.notes.is_empty(), "{:?}", placement.notes);
    assert_eq!(
        serde_json::to_value(placement).unwrap(),
        serde_json::json!({
            "model": "ocr/rec_tiny.onnx", "engine": "ort", "providers": ["cpu"], "threads": 1
        })
    );
}

#[test]
fn a_provider_that_cannot_load_is_reported_not_silently_replaced() {
    // The PyPI library is CPU-only: CUDA and TensorRT cannot be registered.
    let dir = ModelDir::open(&models::default_root(), "ocr").unwrap();
    let engine = OrtEngine::new(&ort_config(&[Provider::Cuda, Provider::Cpu])).unwrap();
    let model = dir.load(&engine, "rec_tiny.onnx").unwrap();
    let placement = model.placement();
    assert_eq!(placement.providers, [Provider::Cpu]);
    assert_eq!(placement.notes.len(), 1);
    assert!(
        placement.notes[0].starts_with("cuda unavailable: "),
        "{:?}",
        placement.notes
    );
    assert!(placement.to_string().contains("; cuda unavailable: "));

    // Without cpu in the list, nothing may run on the CPU behind the user's back.
    let engine = OrtEngine::new(&ort_config(&[Provider::Tensorrt, Provider::Cuda])).unwrap();
    let err = dir
        .load(&engine, "rec_tiny.onnx")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("cannot load model ocr/rec_tiny.onnx: none of the execution providers"),
        "{err}"
    );
    assert!(err.contains("tensorrt unavailable: ") && err.contains("cuda unavailable: "));
}

#[test]
fn one_library_per_process() {
    ort_engine();
    let mut config = ort_config(&[Provider::Cpu]);
    config.ort.library = Some("/elsewhere/libonnxruntime.so".into());
    let err = OrtEngine::new(&config).err().unwrap().to_string();
    assert!(
        err.starts_with("ONNX Runtime is already loaded from "),
        "{err}"
    );
}

#[test]
fn auto_measures_both_engines_and_keeps_one() {
    ort_engine();
    let mut config = ort_config(&[Provider::Cpu]);
    config.backend = Backend::Auto;
    config
        .models
        .insert("ocr/det_tiny.onnx".into(), Backend::Tract);
    let engines = Backends::new(config).unwrap();
    let dir = ModelDir::open(&models::default_root(), "ocr").unwrap();

    let model = dir.load(&engines, "rec_tiny.onnx").unwrap();
    assert_eq!(model.placement().notes, ["auto: not measured yet"]);
    model
        .warm_up(&[(ElementType::F32, &[1, 3, 48, 320])])
        .unwrap();
    let placement = model.placement();
    let note = placement.notes.last().unwrap();
    assert!(
        note.starts_with(&format!("auto chose {}: ", placement.engine)),
        "{note}"
    );
    assert!(
        note.contains("tract ") && note.contains(" vs ort "),
        "{note}"
    );
    assert!(
        note.ends_with("(median of 5 at [[1, 3, 48, 320]])"),
        "{note}"
    );
    // Whether to pad inputs follows the chosen engine.
    assert_eq!(model.plans_per_shape(), placement.engine == "tract");

    // A per-model setting wins over the default.
    let detector = dir.load(&engines, "det_tiny.onnx").unwrap();
    assert_eq!(detector.placement().engine, "tract");
    assert!(detector.placement().notes.is_empty());
}

#[test]
fn overlapping_requests_open_another_session_that_answers_alike() {
    // A model of its own (the shared pipeline's are run by the other tests at the same time).
    let dir = ModelDir::open(&models::default_root(), "ocr").unwrap();
    let model = dir.load(ort_engine(), "rec_tiny.onnx").unwrap();
    let crop = ArrayD::from_shape_fn(vec![1, 3, 48, 128], |i| {
        let (c, y, x) = (i[1] as f32, i[2] as f32, i[3] as f32);
        ((x * 0.37 + y * 0.11 + c).sin() * 0.8).clamp(-1.0, 1.0)
    });
    let input = [Input::F32(crop.view())];
    let alone = model.run(&input).unwrap();
    assert_eq!(
        model.instances(),
        1,
        "one request at a time needs one session"
    );
    let cores = std::thread::available_parallelism().unwrap().get();
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                start.wait();
                for _ in 0..40 {
                    let overlapping = model.run(&input).unwrap();
                    // Same kernels and the same packed weights: the same bits.
                    assert_eq!(overlapping, alone);
                }
            });
        }
    });
    assert_eq!(model.instances(), cores.min(2));
}
