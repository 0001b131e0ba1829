//! The OCR service on real PP-OCRv6 models and real benchmark images.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use common::{fixture, load, ocr, png_header};
use edgerun::data;
use edgerun::engine::{EngineConfig, TractEngine};
use edgerun::imaging::{self, ImageError};
use edgerun::models::ModelDir;
use edgerun::services::ocr::{
    DetectorKind, OcrOptions, OcrPipeline, Recognition, RecognizerChoice, RecognizerKind,
};

/// (image under the data folder, label, tiny's reading, small's reading).
/// Every 125th IIIT5K crop and every 350th ICDAR 2015 crop; readings as the models give
/// them, mistakes included, so a change in preprocessing or decoding shows up here.
const WORDS: &[(&str, &str, &str, &str)] = &[
    (
        "ocr/iiit5k/test/1002_1.png",
        "PRIVATE",
        "PRIVATE",
        "PRIVATE",
    ),
    ("ocr/iiit5k/test/108_7.png", "About", "About", "About"),
    ("ocr/iiit5k/test/148_1.png", "Theres", "There,s", "There,s"),
    ("ocr/iiit5k/test/2013_1.png", "50", "50", "50"),
    (
        "ocr/iiit5k/test/207_12.png",
        "Nothing",
        "Nothing",
        "Nothing",
    ),
    ("ocr/iiit5k/test/2162_1.png", "GODIER", "CODIER", "GODIER"),
    (
        "ocr/iiit5k/test/224_4.png",
        "PPINANG",
        "P.PINANG",
        "P.PINANG",
    ),
    ("ocr/iiit5k/test/234_4.png", "India", "India", "India"),
    ("ocr/iiit5k/test/2475_1.png", "5", "5", "5"),
    ("ocr/iiit5k/test/2530_4.png", "Den", "Den", "Den"),
    ("ocr/iiit5k/test/261_1.png", "P", "P", "P"),
    ("ocr/iiit5k/test/30_2.png", "GLADES", "GLADES", "GLADES"),
    ("ocr/iiit5k/test/34_10.png", "a", "a", "a"),
    ("ocr/iiit5k/test/406_7.png", "Trucks", "Trucks", "Trucks"),
    ("ocr/iiit5k/test/5019_1.png", "3D", "3D", "3D"),
    ("ocr/iiit5k/test/5059_1.png", "DEFY", "DEFY", "ＤEFY"),
    ("ocr/iiit5k/test/5096_9.png", "EASTLY", "EASTLY", "EASTLY"),
    ("ocr/iiit5k/test/5162_2.png", "AUGUST", "AUGUST", "AUGUST"),
    ("ocr/iiit5k/test/529_9.png", "Sat", "Sat.", "Sat."),
    ("ocr/iiit5k/test/626_1.png", "novo", "noV0", "novo"),
    ("ocr/iiit5k/test/697_5.png", "for", "for", "for"),
    (
        "ocr/iiit5k/test/771_15.png",
        "Action",
        "Action\"",
        "Action\"",
    ),
    ("ocr/iiit5k/test/858_7.png", "FUEL", "FUEL", "FUEL"),
    ("ocr/iiit5k/test/936_1.png", "27", "27", "27"),
    (
        "ocr/ic15-words/TestSet/word_1.png",
        "JOINT",
        "JOINT",
        "JOINT",
    ),
    (
        "ocr/ic15-words/TestSet/word_351.png",
        "Points",
        "Points",
        "Points",
    ),
    ("ocr/ic15-words/TestSet/word_701.png", "BELIEVE", "", "AE"),
    (
        "ocr/ic15-words/TestSet/word_1051.png",
        "Citibank",
        "citibank",
        "citibank",
    ),
    (
        "ocr/ic15-words/TestSet/word_1401.png",
        "PARAGON",
        "PARAGON",
        "PARAGON",
    ),
    (
        "ocr/ic15-words/TestSet/word_1751.png",
        "DOROTHYPERKINS",
        "",
        "",
    ),
];

/// Crops whose tiny confidence is below 0.9 (so the cascade at 0.9 re-reads them).
const UNSURE_AT_0_9: &[&str] = &[
    "ocr/iiit5k/test/2162_1.png",
    "ocr/iiit5k/test/5019_1.png",
    "ocr/iiit5k/test/626_1.png",
    "ocr/ic15-words/TestSet/word_701.png",
    "ocr/ic15-words/TestSet/word_1051.png",
    "ocr/ic15-words/TestSet/word_1751.png",
];

/// The readings of `WORDS` with these options. Several tests look at the same readings;
/// they are computed once per test binary (it matters under emulation, where each takes
/// minutes).
fn read_words(choice: RecognizerChoice, ascii_only: bool) -> Vec<Recognition> {
    type Key = (String, bool);
    static READINGS: Mutex<BTreeMap<Key, Arc<OnceLock<Vec<Recognition>>>>> =
        Mutex::new(BTreeMap::new());
    let slot = READINGS
        .lock()
        .unwrap()
        .entry((format!("{choice:?}"), ascii_only))
        .or_default()
        .clone();
    slot.get_or_init(|| {
        let images: Vec<_> = WORDS
            .iter()
            .map(|(path, ..)| load(&data::root().join(path)))
            .collect();
        let refs: Vec<_> = images.iter().collect();
        let options = OcrOptions {
            recognizer: choice,
            ascii_only,
            ..OcrOptions::default()
        };
        let readings = ocr().recognize(&refs, &options).expect("recognition");
        assert_eq!(readings.len(), WORDS.len());
        readings
    })
    .clone()
}

#[test]
fn tiny_reads_real_words_exactly() {
    let got = read_words(RecognizerChoice::Tiny, false);
    for ((path, _, tiny, _), r) in WORDS.iter().zip(&got) {
        assert_eq!(r.text, *tiny, "{path}");
        assert_eq!(r.recognizer, RecognizerKind::Tiny);
    }
}

#[test]
fn small_reads_real_words_exactly() {
    let got = read_words(RecognizerChoice::Small, false);
    for ((path, _, _, small), r) in WORDS.iter().zip(&got) {
        assert_eq!(r.text, *small, "{path}");
        assert_eq!(r.recognizer, RecognizerKind::Small);
    }
}

#[test]
fn most_sampled_words_match_their_labels() {
    // The standard protocol (case-insensitive, alphanumeric) on the small recognizer's
    // readings: all but the two hopeless ICDAR crops and the full-width "ＤＥFY".
    let got = read_words(RecognizerChoice::Small, false);
    let correct = WORDS
        .iter()
        .zip(&got)
        .filter(|((_, label, ..), r)| data::word_key(label) == data::word_key(&r.text))
        .count();
    assert_eq!(correct, WORDS.len() - 3);
}

#[test]
fn cascade_rereads_only_unsure_crops_with_small() {
    let got = read_words(RecognizerChoice::Cascade { threshold: 0.9 }, false);
    for ((path, _, tiny, small), r) in WORDS.iter().zip(&got) {
        if UNSURE_AT_0_9.contains(path) {
            assert_eq!(
                (r.recognizer, r.text.as_str()),
                (RecognizerKind::Small, *small),
                "{path}"
            );
        } else {
            assert_eq!(
                (r.recognizer, r.text.as_str()),
                (RecognizerKind::Tiny, *tiny),
                "{path}"
            );
            assert!(r.confidence >= 0.9, "{path}: {}", r.confidence);
        }
    }
    // The threshold is the knob: 0 never escalates, above 1 always does.
    let never = read_words(RecognizerChoice::Cascade { threshold: 0.0 }, false);
    assert!(never.iter().all(|r| r.recognizer == RecognizerKind::Tiny));
    let always = read_words(RecognizerChoice::Cascade { threshold: 1.01 }, false);
    assert!(always.iter().all(|r| r.recognizer == RecognizerKind::Small));
}

#[test]
fn confidences_are_stable() {
    // The Python reference's values (export/reference_ocr.py --mode crops --rec tiny
    // --width-steps), within 1e-4: resampling is bit-exact with OpenCV, and engines and CPUs
    // differ by ~1e-6.
    let got = read_words(RecognizerChoice::Tiny, false);
    let expect = [
        (0, 0.99987),
        (2, 0.94726),
        (12, 0.93335),
        (19, 0.73005),
        (27, 0.85888),
    ];
    for (i, conf) in expect {
        assert!(
            (got[i].confidence - conf).abs() < 1e-4,
            "{}: {} vs {conf}",
            WORDS[i].0,
            got[i].confidence
        );
    }
    assert_eq!(got[29].confidence, 0.0, "empty reading has zero confidence");
}

#[test]
fn ascii_mode_avoids_full_width_look_alikes() {
    let image = load(&data::root().join("ocr/iiit5k/test/5059_1.png"));
    let options = OcrOptions {
        recognizer: RecognizerChoice::Small,
        ascii_only: true,
        ..OcrOptions::default()
    };
    let r = ocr().recognize(&[&image], &options).unwrap().remove(0);
    assert_eq!(r.text, "DEFY");
}

#[test]
fn batched_recognition_matches_one_by_one() {
    let images: Vec<_> = WORDS[..12]
        .iter()
        .map(|(path, ..)| load(&data::root().join(path)))
        .collect();
    let refs: Vec<_> = images.iter().collect();
    let options = OcrOptions {
        recognizer: RecognizerChoice::Tiny,
        batch_size: 4,
        ..OcrOptions::default()
    };
    let batched = ocr().recognize(&refs, &options).unwrap();
    for ((path, _, tiny, _), r) in WORDS.iter().zip(&batched) {
        assert_eq!(r.text, *tiny, "{path}");
    }
}

#[test]
fn reads_a_rendered_sign_line_by_line() {
    let image = load(&fixture("sign.png"));
    for (choice, recognizer) in [
        (
            RecognizerChoice::Cascade { threshold: 0.9 },
            RecognizerKind::Tiny,
        ),
        (RecognizerChoice::Small, RecognizerKind::Small),
    ] {
        let options = OcrOptions {
            recognizer: choice,
            ..OcrOptions::default()
        };
        let result = ocr().read_image(&image, &options).unwrap();
        let texts: Vec<_> = result
            .items
            .iter()
            .map(|i| i.recognition.text.as_str())
            .collect();
        assert_eq!(texts, ["EDGE RUNTIME", "OPEN 24 HOURS", "EXIT 42"]);
        assert!(
            result
                .items
                .iter()
                .all(|i| i.recognition.recognizer == recognizer)
        );
        // Boxes around the rendered ink boxes [40,40,444,81], [150,160,514,195],
        // [360,262,581,308], within 3 px of the measured ones.
        let expected = [
            [[41, 33], [448, 33], [448, 87], [41, 87]],
            [[148, 151], [516, 151], [516, 203], [148, 203]],
            [[359, 253], [585, 253], [585, 317], [359, 317]],
        ];
        for (item, want) in result.items.iter().zip(expected) {
            for (p, q) in item.text_box.iter().zip(want) {
                assert!(
                    (p[0] - q[0]).abs() <= 3 && (p[1] - q[1]).abs() <= 3,
                    "{:?} vs {want:?}",
                    item.text_box
                );
            }
        }
    }
}

#[test]
fn reads_a_rendered_word_crop() {
    let image = load(&fixture("sign_word.png"));
    let r = ocr()
        .recognize(&[&image], &OcrOptions::default())
        .unwrap()
        .remove(0);
    assert_eq!(r.text, "Station");
    assert_eq!(r.recognizer, RecognizerKind::Tiny);
    assert!(r.confidence > 0.99);
}

#[test]
fn reads_a_real_street_scene() {
    // ICDAR 2015 img_5: a road sign with "Speed Regulating Strips Ahead", one word per line.
    let image = load(&data::root().join("ocr/ic15-e2e/Imgs/img_5.jpg"));
    let result = ocr().read_image(&image, &OcrOptions::default()).unwrap();
    let texts: Vec<_> = result
        .items
        .iter()
        .map(|i| i.recognition.text.as_str())
        .collect();
    assert_eq!(&texts[..4], ["Speed", "Regulating", "Strips", "Ahead"]);
    assert!(texts.len() <= 5, "{texts:?}");
    let first = result.items[0].text_box;
    assert!(
        (first[0][0] - 615).abs() <= 3 && (first[0][1] - 71).abs() <= 3,
        "{first:?}"
    );
    assert!(result.timings.total_ms >= result.timings.det_ms);
}

#[test]
fn the_small_detector_reads_lines_the_tiny_one_garbles() {
    // ICDAR 2015 img_10, a notice in three lines. At 960 with the default cascade, the tiny
    // detector's boxes read "yourvolume", "youpassby" and "areos."; the small detector's
    // boxes are tighter and all three lines read right.
    let image = load(&data::root().join("ocr/ic15-e2e/Imgs/img_10.jpg"));
    let read = |detector| {
        let options = OcrOptions {
            detector,
            ..OcrOptions::default()
        };
        let result = ocr().read_image(&image, &options).unwrap();
        let lines: Vec<(String, [i32; 2])> = result
            .items
            .iter()
            .map(|i| (i.recognition.text.clone(), i.text_box[0]))
            .collect();
        lines
    };
    let texts = |lines: &[(String, [i32; 2])]| -> Vec<String> {
        lines.iter().map(|(t, _)| t.clone()).collect()
    };
    let tiny = read(DetectorKind::Tiny);
    assert_eq!(
        texts(&tiny),
        [
            "Please lower yourvolume",
            "when youpassby",
            "residential areos."
        ]
    );
    let small = read(DetectorKind::Small);
    assert_eq!(
        texts(&small),
        [
            "Please lower your volume",
            "when you pass by",
            "residential areas."
        ]
    );
    // Top-left corners within 3 pixels of what the small detector gave when this was written.
    for ((_, corner), expected) in small.iter().zip([[38, 20], [33, 52], [35, 84]]) {
        assert!(
            (corner[0] - expected[0]).abs() <= 3 && (corner[1] - expected[1]).abs() <= 3,
            "{corner:?} vs {expected:?}"
        );
    }
}

#[test]
fn bad_images_are_clear_errors() {
    let max = imaging::DEFAULT_MAX_PIXELS;
    let err = imaging::decode(b"%PDF-1.4 not an image", max).unwrap_err();
    assert_eq!(err.code(), "unsupported_media", "{err}");
    let err = imaging::decode(&png_header(0, 0), max).unwrap_err();
    assert_eq!(err.code(), "bad_request", "{err}");
    let err = imaging::decode(&png_header(20_000, 20_000), max).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 20_000,
                height: 20_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "image is 20000x20000 = 400000000 pixels, above the limit of 48000000"
    );
    assert!(imaging::decode(&[], max).is_err());
}

#[test]
fn corrupt_model_file_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let src = edgerun::models::default_root().join("ocr");
    let dst = tmp.path().join("ocr");
    std::fs::create_dir(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    let mut bytes = std::fs::read(dst.join("rec_small.onnx")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(dst.join("rec_small.onnx"), bytes).unwrap();
    let engine = TractEngine::new(EngineConfig::default());
    let dir = ModelDir::open(tmp.path(), "ocr").unwrap();
    let err = OcrPipeline::load(&engine, &dir)
        .err()
        .expect("corrupt file refused");
    assert!(
        err.to_string().contains("rec_small.onnx is corrupt"),
        "{err}"
    );

    std::fs::remove_file(dst.join("det_tiny.onnx")).unwrap();
    let err = OcrPipeline::load(&engine, &dir)
        .err()
        .expect("missing file refused");
    assert!(
        err.to_string().contains("det_tiny.onnx is missing"),
        "{err}"
    );
}

#[test]
fn two_intra_op_threads_read_the_same() {
    let engine = TractEngine::new(EngineConfig {
        threads: 2,
        ..EngineConfig::default()
    });
    let dir = ModelDir::open(&edgerun::models::default_root(), "ocr").unwrap();
    let pipeline = OcrPipeline::load(&engine, &dir).unwrap();
    let image = load(&fixture("sign.png"));
    let options = OcrOptions {
        recognizer: RecognizerChoice::Small,
        ..OcrOptions::default()
    };
    let two = pipeline.read_image(&image, &options).unwrap();
    let one = ocr().read_image(&image, &options).unwrap();
    assert_eq!(two.items.len(), one.items.len());
    for (a, b) in two.items.iter().zip(&one.items) {
        assert_eq!(a.text_box, b.text_box);
        assert_eq!(a.recognition.text, b.recognition.text);
        assert!((a.recognition.confidence - b.recognition.confidence).abs() < 1e-4);
    }
}

#[test]
fn degenerate_images_are_read_without_panicking() {
    let options = OcrOptions::default();
    // A 1x1 image, a 100000x1 line (squeezed to the widest recognizer input) and a
    // 1x5000 column: no text, no error, no panic.
    for (w, h) in [(1, 1), (100_000, 1), (1, 5_000)] {
        let image = image::RgbImage::from_pixel(w, h, image::Rgb([200, 200, 200]));
        let result = ocr().read_image(&image, &options).unwrap();
        assert!(result.items.is_empty(), "{w}x{h}: {:?}", result.items);
        let reading = ocr().recognize(&[&image], &options).unwrap().remove(0);
        assert!(reading.confidence <= 1.0, "{w}x{h}");
    }
    let empty = image::RgbImage::new(0, 0);
    let err = ocr().recognize(&[&empty], &options).unwrap_err();
    assert_eq!(err.code(), "bad_request", "{err}");
}

#[test]
fn invalid_options_are_rejected() {
    let image = load(&fixture("sign_word.png"));
    let nan = OcrOptions {
        recognizer: RecognizerChoice::Cascade {
            threshold: f32::NAN,
        },
        ..OcrOptions::default()
    };
    let err = ocr().recognize(&[&image], &nan).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid option: cascade threshold NaN is not a number"
    );
    assert_eq!(err.code(), "bad_request");
    let tiny_limit = OcrOptions {
        det_limit: 0,
        ..OcrOptions::default()
    };
    assert!(ocr().read_image(&image, &tiny_limit).is_err());
}

#[test]
fn a_request_steps_down_to_meet_its_deadline() {
    use edgerun::services::ocr::{ImageResult, OcrService};
    use edgerun::services::{Payload, Service, Serving};
    use std::time::{Duration, Instant};

    // A pipeline of its own: what it has learnt about its stages' costs decides.
    let dir = ModelDir::open(&edgerun::models::default_root(), "ocr").unwrap();
    let engine = TractEngine::new(EngineConfig::default());
    let pipeline = Arc::new(OcrPipeline::load(&engine, &dir).unwrap());
    let path = data::root().join("ocr/ic15-e2e/Imgs/img_5.jpg");
    let image = load(&path);
    let point = |name: &str| {
        let found = pipeline.points().iter().find(|p| p.name == name);
        found.unwrap().clone()
    };
    let (best, cheapest) = (point("small@1280"), point("tiny@640"));
    let base = OcrOptions::default();
    let texts = |r: &ImageResult| -> Vec<String> {
        r.items.iter().map(|i| i.recognition.text.clone()).collect()
    };
    let full = texts(&pipeline.read_image(&image, &best.apply(&base)).unwrap());
    let cheap = texts(&pipeline.read_image(&image, &cheapest.apply(&base)).unwrap());
    assert_eq!(&full[..4], ["Speed", "Regulating", "Strips", "Ahead"]);
    assert_ne!(full, cheap, "the two points read this scene differently");

    let at = |deadline: Option<Instant>| {
        let (result, served) = pipeline
            .read_image_at(&image, &best, &base, deadline)
            .unwrap();
        (texts(&result), served.name.clone())
    };
    // A deadline already passed leaves time for nothing: the cheapest point, whose answer
    // is exactly that point's.
    assert_eq!(at(Some(Instant::now())), (cheap.clone(), "tiny@640".into()));
    // An hour is time enough, and no deadline means exactly the point asked for.
    let relaxed = Some(Instant::now() + Duration::from_secs(3600));
    assert_eq!(at(relaxed), (full.clone(), "small@1280".into()));
    assert_eq!(at(None), (full, "small@1280".into()));
    // From the small detector's best point the ladder reaches down to the tiny detector
    // (before detection nothing is spent yet); with time enough, the point asked for.
    let top = point("det_small/small@1280");
    let from_top = |deadline: Option<Instant>| {
        let (result, served) = pipeline
            .read_image_at(&image, &top, &base, deadline)
            .unwrap();
        (texts(&result), served.name.clone())
    };
    assert_eq!(
        from_top(Some(Instant::now())),
        (cheap.clone(), "tiny@640".into())
    );
    let (_, served) = from_top(relaxed);
    assert_eq!(served, "det_small/small@1280");

    // The service names both points in its answer.
    let service = OcrService::new(pipeline.clone(), OcrOptions::default(), 1 << 26);
    let payload = Payload::Raw(std::fs::read(&path).unwrap().into());
    let serving = Serving {
        point: Some("small@1280"),
        deadline: Some(Instant::now()),
    };
    let answer = service.handle(None, &payload, serving).unwrap();
    assert_eq!(answer["point"], "tiny@640");
    assert_eq!(answer["stepped_down_from"], "small@1280");
    let pinned = service
        .handle(None, &payload, Serving::at("small@1280"))
        .unwrap();
    assert_eq!(pinned["point"], "small@1280");
    assert!(pinned.get("stepped_down_from").is_none());
    assert!(service.meets_deadlines());
}
