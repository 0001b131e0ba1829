//! Which models each service plans ahead of requests: `serve` comes online on its default
//! points' models ([`WarmUp::DefaultPoint`]) and plans in the background those of every
//! point while they are to be measured ([`WarmUp::EveryPoint`]), or of its controller's
//! candidates ([`WarmUp::Points`]), whose models alone keep their plans once measured
//! (`release_outside`). Checked on the shipped models, through an engine that records every
//! warm-up and release.

use std::collections::BTreeMap;

use edgerun_runtime::engine::record::Recorder;
use edgerun_runtime::engine::{EngineConfig, TractEngine};
use edgerun_runtime::models::{ModelDir, default_root};
use edgerun_runtime::services::WarmUp;
use edgerun_runtime::services::generate::Generate;
use edgerun_runtime::services::legal::Legal;
use edgerun_runtime::services::ocr::OcrPipeline;

fn recorder() -> Recorder<TractEngine> {
    Recorder::new(TractEngine::new(EngineConfig::default()))
}

/// The shipped OCR pipeline on `recorder`.
fn ocr(recorder: &Recorder<TractEngine>) -> OcrPipeline {
    let dir = ModelDir::open(&default_root(), "ocr").unwrap();
    OcrPipeline::load(recorder, &dir).unwrap()
}

/// How many warm-ups each model had, by name.
fn counts(recorder: &Recorder<TractEngine>) -> BTreeMap<String, usize> {
    recorder
        .warm_ups()
        .into_iter()
        .map(|(name, shapes)| (name, shapes.len()))
        .collect()
}

fn named(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

#[test]
fn ocr_warms_its_default_cascade_first_and_the_small_detector_later() {
    let recorder = recorder();
    let pipeline = ocr(&recorder);
    assert_eq!(pipeline.point_set().default_point, "cascade0.9@960");
    pipeline.warm_up(WarmUp::DefaultPoint).unwrap();
    assert_eq!(
        counts(&recorder),
        named(&[
            ("ocr/det_tiny.onnx", 1),
            ("ocr/rec_small.onnx", 1),
            ("ocr/rec_tiny.onnx", 1),
        ])
    );
    assert_eq!(
        recorder.warm_ups()["ocr/det_tiny.onnx"],
        [[vec![1, 3, 544, 960]]]
    );
    pipeline.warm_up(WarmUp::EveryPoint).unwrap();
    assert_eq!(
        counts(&recorder),
        named(&[
            ("ocr/det_small.onnx", 1),
            ("ocr/det_tiny.onnx", 2),
            ("ocr/rec_small.onnx", 2),
            ("ocr/rec_tiny.onnx", 2),
        ])
    );
}

#[test]
fn generate_warms_the_default_generator_first() {
    let recorder = recorder();
    let generate = Generate::load(&default_root(), &recorder).unwrap();
    generate.warm_up(WarmUp::DefaultPoint).unwrap();
    assert_eq!(
        counts(&recorder),
        named(&[("generate/sid4.onnx", 1), ("generate/text_encoder.onnx", 1)])
    );
    generate.warm_up(WarmUp::EveryPoint).unwrap();
    assert_eq!(
        counts(&recorder),
        named(&[
            ("generate/sid1.onnx", 1),
            ("generate/sid4.onnx", 2),
            ("generate/teacher.onnx", 1),
            ("generate/text_encoder.onnx", 2),
        ])
    );
}

#[test]
fn legal_warms_the_default_stitched_chain_first() {
    let recorder = recorder();
    let legal = Legal::load(&default_root(), &recorder, None).unwrap();
    legal.warm_up(WarmUp::DefaultPoint).unwrap();
    let default_chain: Vec<String> = counts(&recorder).into_keys().collect();
    assert_eq!(
        default_chain,
        [
            "legal/emb_l3.onnx",
            "legal/l3_layer0.onnx",
            "legal/l6_layer1.onnx",
            "legal/l6_layer2.onnx",
            "legal/l6_layer3.onnx",
            "legal/l6_layer4.onnx",
            "legal/l6_layer5.onnx",
            "legal/pool.onnx",
            "legal/stitch_l3.1-l6.1.onnx",
        ]
    );
    legal.warm_up(WarmUp::EveryPoint).unwrap();
    let every = counts(&recorder);
    assert_eq!(every.len(), 18, "every model in models/legal: {every:?}");
    assert!(every.contains_key("legal/stitch_l3.2-l6.5.onnx"));
    assert!(every.contains_key("legal/emb_l6.onnx"));
}

#[test]
fn a_controllers_candidates_keep_their_plans_and_the_rest_are_released() {
    let recorder = recorder();
    let pipeline = ocr(&recorder);
    let candidates = ["tiny@640".to_string()];
    // The default point (cascade0.9@960) is always in scope.
    pipeline.warm_up(WarmUp::Points(&candidates)).unwrap();
    assert_eq!(
        counts(&recorder),
        named(&[
            ("ocr/det_tiny.onnx", 1),
            ("ocr/rec_small.onnx", 1),
            ("ocr/rec_tiny.onnx", 1),
        ])
    );
    pipeline.release_outside(WarmUp::Points(&candidates));
    assert_eq!(recorder.releases(), ["ocr/det_small.onnx"]);

    let recorder = self::recorder();
    let legal = Legal::load(&default_root(), &recorder, None).unwrap();
    // cola:4.5 chains emb_l6, l6_layer4, l6_layer5; the default sn:l3.1-l6.1 the rest kept.
    legal.release_outside(WarmUp::Points(&["cola:4.5".to_string()]));
    assert_eq!(
        recorder.releases(),
        [
            "legal/l3_layer1.onnx",
            "legal/l3_layer2.onnx",
            "legal/l6_layer0.onnx",
            "legal/stitch_l3.1-l6.2.onnx",
            "legal/stitch_l3.1-l6.3.onnx",
            "legal/stitch_l3.2-l6.3.onnx",
            "legal/stitch_l3.2-l6.4.onnx",
            "legal/stitch_l3.2-l6.5.onnx",
        ]
    );

    let recorder = self::recorder();
    let generate = Generate::load(&default_root(), &recorder).unwrap();
    // sid:1 runs one step of sid4, as the default sid:2 does two: sid1 and the teacher go.
    generate.release_outside(WarmUp::Points(&["sid:1".to_string()]));
    assert_eq!(
        recorder.releases(),
        ["generate/sid1.onnx", "generate/teacher.onnx"]
    );
}
