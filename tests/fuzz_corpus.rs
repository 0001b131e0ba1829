//! The fuzzers' corpora, replayed on stable: every input `cargo fuzz` kept (minimized,
//! under `fuzz/corpus/TARGET/`) and every crash it found and we fixed (under
//! `fuzz/regressions/TARGET/`) goes through the same target body as under the fuzzer,
//! whose assertions say what must hold of the result.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::Path;

fn inputs(folder: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(folder)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut inputs: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn every_corpus_input_passes_its_target() {
    let mut counts = Vec::new();
    for (name, target) in targets::TARGETS {
        let corpus = inputs("corpus", name);
        let regressions = inputs("regressions", name);
        for (file, data) in corpus.iter().chain(&regressions) {
            let outcome = std::panic::catch_unwind(|| target(data));
            assert!(
                outcome.is_ok(),
                "{name}: fuzz/*/{name}/{file} fails its target"
            );
        }
        counts.push((*name, corpus.len()));
    }
    // Every target has a corpus worth replaying: the seeds alone are a few inputs each.
    for (name, count) in &counts {
        assert!(*count >= 5, "{name}: only {count} corpus inputs");
    }
}
