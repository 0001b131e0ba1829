//! The `edgerun` binary as a user runs it.

mod common;

use common::{fixture, png_header};
use serde_json::Value;

fn edgerun(args: &[&str]) -> (i32, Vec<Value>, String) {
    run(common::edgerun_command().args(args))
}

/// Runs `command` and parses its stdout as JSON lines: (exit code, lines, stderr).
fn run(command: &mut std::process::Command) -> (i32, Vec<Value>, String) {
    let out = command.output().expect("run edgerun");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The texts of one image's result, in reading order.
fn texts(result: &Value) -> Vec<&str> {
    result["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect()
}

#[test]
fn ocr_prints_one_json_object_per_image() {
    let sign = fixture("sign.png");
    let (code, lines, stderr) = edgerun(&["ocr", sign.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 1);
    let result = &lines[0];
    assert_eq!(result["image"], sign.to_str().unwrap());
    assert_eq!(
        (result["width"].as_u64(), result["height"].as_u64()),
        (Some(640), Some(360))
    );
    assert_eq!(texts(result), ["EDGE RUNTIME", "OPEN 24 HOURS", "EXIT 42"]);
    assert_eq!(
        result["point"], "cascade0.9@960",
        "the manifest's default point"
    );
    let first = &result["items"][0];
    assert_eq!(first["recognizer"], "tiny");
    assert_eq!(first["box"].as_array().unwrap().len(), 4);
    assert!(first["confidence"].as_f64().unwrap() > 0.9);
    for key in ["det_ms", "crop_ms", "rec_ms", "total_ms", "decode_ms"] {
        assert!(result["timings"][key].as_f64().is_some(), "{key}");
    }
}

#[test]
fn ocr_runs_at_a_named_point_and_names_the_point_its_knobs_make() {
    let sign = fixture("sign.png");
    let sign = sign.to_str().unwrap();
    // Reading knobs from the manifest is unit-tested in crates/runtime/src/services/ocr/points.rs; here,
    // that the binary applies and names them (each run loads the models: slow under an
    // emulator, so two runs and a refusal).
    for (args, point) in [
        (&["--point", "small@1280", "--rec", "tiny"][..], "tiny@1280"),
        (&["--rec", "small", "--det-limit", "700"][..], "custom"),
    ] {
        let (code, lines, stderr) = edgerun(&[&["ocr", sign][..], args].concat());
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert_eq!(lines[0]["point"], point, "{args:?}");
        assert_eq!(
            texts(&lines[0]),
            ["EDGE RUNTIME", "OPEN 24 HOURS", "EXIT 42"]
        );
    }
    let (code, _, stderr) = edgerun(&["ocr", sign, "--point", "huge"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("unknown OCR point \"huge\" (known: tiny@640, cascade0.9@640,"),
        "{stderr}"
    );
}

#[test]
fn crops_mode_reads_each_image_as_one_word() {
    let word = fixture("sign_word.png");
    let (code, lines, stderr) = edgerun(&[
        "ocr",
        "--crops",
        "--rec",
        "small",
        word.to_str().unwrap(),
        word.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["text"], "Station");
        assert_eq!(line["recognizer"], "small");
    }
}

#[test]
fn bad_files_get_error_objects_and_exit_code_1() {
    let tmp = tempfile::tempdir().unwrap();
    let huge = tmp.path().join("huge.png");
    std::fs::write(&huge, png_header(20_000, 20_000)).unwrap();
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "just text").unwrap();
    let missing = tmp.path().join("missing.jpg");
    let sign = fixture("sign_word.png");
    let (code, lines, _) = edgerun(&[
        "ocr",
        "--crops",
        huge.to_str().unwrap(),
        text.to_str().unwrap(),
        missing.to_str().unwrap(),
        sign.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    let codes: Vec<&str> = lines
        .iter()
        .map(|l| l["error"]["code"].as_str().unwrap_or("ok"))
        .collect();
    assert_eq!(codes, ["too_large", "unsupported_media", "not_found", "ok"]);
    assert_eq!(
        lines[3]["text"], "Station",
        "good images after bad ones are still read"
    );
}

#[test]
fn extreme_images_and_options_are_answered_not_crashed_on() {
    let tmp = tempfile::tempdir().unwrap();
    let line = tmp.path().join("line.png");
    image::RgbImage::from_pixel(100_000, 1, image::Rgb([255, 255, 255]))
        .save(&line)
        .unwrap();
    let (code, lines, stderr) = edgerun(&["ocr", "--crops", line.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines[0]["image"], line.to_str().unwrap());
    assert!(lines[0]["text"].is_string());
    let (code, _, stderr) = edgerun(&["ocr", "--threshold", "NaN", line.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cascade threshold NaN is not a number"),
        "{stderr}"
    );
    let (code, lines, _) = edgerun(&["ocr", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(lines[0]["error"]["code"], "bad_request");
}

#[test]
fn a_missing_models_folder_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, lines, stderr) = edgerun(&[
        "--models",
        tmp.path().to_str().unwrap(),
        "ocr",
        fixture("sign.png").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(lines.is_empty());
    assert!(stderr.contains("manifest.toml cannot be read"), "{stderr}");
}

#[test]
fn engine_choices_that_cannot_work_are_clear_errors() {
    let sign = fixture("sign.png");
    let sign = sign.to_str().unwrap();
    let (code, _, stderr) = edgerun(&["--backend", "gpu", "ocr", sign]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("unknown backend \"gpu\" (expected tract, ort or auto)"),
        "{stderr}"
    );
    let (code, _, stderr) = edgerun(&["--providers", "npu", "ocr", sign]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("unknown execution provider \"npu\""),
        "{stderr}"
    );

    let (code, lines, stderr) = edgerun(&[
        "--backend",
        "ort",
        "--ort-lib",
        "/nonexistent/libonnxruntime.so",
        "ocr",
        sign,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(lines.is_empty());
    let expected = if cfg!(feature = "ort") {
        "ONNX Runtime cannot be loaded from /nonexistent/libonnxruntime.so: "
    } else {
        "this edgerun was built without ONNX Runtime support"
    };
    assert!(stderr.contains(expected), "{stderr}");
}

/// With the `ort` feature, the binary reads the same text through ONNX Runtime, and `auto`
/// says which engine it kept for each model.
#[cfg(feature = "ort")]
#[test]
fn ocr_on_ort_and_auto_reads_the_same_text() {
    let sign = fixture("sign.png");
    let sign = sign.to_str().unwrap();
    for backend in ["ort", "auto"] {
        let (code, lines, stderr) = edgerun(&["-v", "--backend", backend, "ocr", sign]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            texts(&lines[0]),
            ["EDGE RUNTIME", "OPEN 24 HOURS", "EXIT 42"]
        );
        let expected = match backend {
            "ort" => "ocr/rec_tiny.onnx: ort (cpu, 1 thread(s))",
            _ => "ocr/rec_tiny.onnx: ",
        };
        assert!(stderr.contains(expected), "{stderr}");
        if backend == "auto" {
            assert!(stderr.contains("auto chose "), "{stderr}");
        }
    }
}

#[test]
fn profile_measures_every_point_and_writes_the_cache_and_the_front() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, svg) = (
        dir.path().join("profile.json"),
        dir.path().join("front.svg"),
    );
    // One word as the whole image keeps this cheap under an emulator: a small detector input
    // and one crop per request, at every point.
    let word = fixture("sign_word.png");
    let out = common::edgerun_command()
        .args(["profile", "--rounds", "1", "--images"])
        .args([&word, &word])
        .arg("--out")
        .arg(&cache)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run edgerun");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let manifest =
        edgerun::models::ModelDir::open(&edgerun::models::default_root(), "ocr").unwrap();
    let declared = &manifest.manifest().points;
    let profile: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(profile["key"]["threads"], 1);
    assert_eq!(profile["key"]["backend"], "tract");
    let ocr = &profile["services"]["ocr"];
    assert_eq!(ocr["manifest_sha256"], manifest.manifest_sha256());
    assert_eq!(ocr["inputs"], "2 images given");
    let points = ocr["points"].as_array().unwrap();
    assert_eq!(points.len(), declared.len());
    let table = String::from_utf8(out.stdout).unwrap();
    let chart = std::fs::read_to_string(&svg).unwrap();
    for (p, d) in points.iter().zip(declared) {
        assert_eq!(p["name"], d.name.as_str());
        assert_eq!(p["quality"].as_f64(), d.quality);
        assert_eq!(p["runs"], 2, "one round over two images");
        let (p50, p95) = (p["p50_ms"].as_f64().unwrap(), p["p95_ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p95 >= p50, "{p}");
        assert!(
            table.contains(&d.name) && chart.contains(&d.name),
            "{}",
            d.name
        );
        // On the front exactly when no other point is at least as fast and as good, and
        // better in one. OCR meets deadlines by stepping down, so its controller plans
        // (and its front is drawn) on median latencies.
        let dominated = points.iter().any(|q| {
            let (q50, qq) = (
                q["p50_ms"].as_f64().unwrap(),
                q["quality"].as_f64().unwrap(),
            );
            let pq = p["quality"].as_f64().unwrap();
            q50 <= p50 && qq >= pq && (q50 < p50 || qq > pq)
        });
        assert_eq!(p["on_front"], !dominated, "{p}");
    }
}

#[test]
fn generate_writes_the_reference_png_and_refuses_bad_prompts() {
    // The first parity case of tests/fixtures/generate (drawn by ONNX Runtime in the export).
    let cases: Value =
        serde_json::from_slice(&std::fs::read(fixture("generate/cases.json")).unwrap()).unwrap();
    let case = &cases[0];
    let dir = std::env::temp_dir().join(format!("edgerun-cli-generate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.png");
    let seed = case["seed"].to_string();
    let (code, lines, stderr) = edgerun(&[
        "generate",
        case["prompt"].as_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--point",
        case["point"].as_str().unwrap(),
        "--seed",
        &seed,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines[0]["point"], case["point"]);
    let got = common::load(&out);
    let expected = common::load(&fixture(&format!(
        "generate/{}",
        case["file"].as_str().unwrap()
    )));
    let worst = got
        .as_raw()
        .iter()
        .zip(expected.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 1, "largest difference {worst} grey levels");
    // --steps picks the distilled generator with that many evaluations
    let (code, lines, stderr) =
        edgerun(&["generate", "K", "-o", out.to_str().unwrap(), "--steps", "2"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines[0]["evaluations"], 2);
    let (code, _, stderr) = edgerun(&["generate", "0", "-o", out.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("has characters this model cannot draw: \"0\""),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn legal_prints_the_ranked_articles_and_answers_bad_queries_with_an_error_object() {
    // What a device serves ships in models/: the benchmark data folder is not needed.
    let (code, lines, stderr) = run(common::edgerun_command()
        .env("EDGERUN_DATA", "/nonexistent/edgerun-data")
        .args([
            "legal",
            "Is a manifestation of intention induced by fraud voidable?",
            "-k",
            "2",
            "--point",
            "l6",
        ]));
    assert_eq!(code, 0, "{stderr}");
    let answer = &lines[0];
    assert_eq!(answer["point"], "l6");
    assert_eq!(answer["hits"].as_array().unwrap().len(), 2, "{answer}");
    assert_eq!(answer["hits"][0]["article"], "96");
    assert_eq!(answer["hits"][0]["heading"], "Fraud or Duress");
    let (code, lines, _) = edgerun(&["legal", "   "]);
    assert_eq!(code, 1);
    assert_eq!(lines[0]["error"]["code"], "bad_request");
    assert_eq!(lines[0]["error"]["message"], "the query is empty");
}
