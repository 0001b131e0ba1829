//! `edgerun bench generate`: what distillation buys on this device. Every operating point
//! of the generate service (the distilled generator at 1..4 steps, the 50-step guided
//! teacher) draws the same prompts and seeds; the table gives network evaluations, median
//! and p95 latency per image at each thread count, and the teacher's cost over each point's
//! (evaluations and wall clock, measured in the same run). Quality is the manifest's (OCR
//! word accuracy of held-out prompts, from `export/generate/evaluate.py`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::{Machine, Table, write_json};
use edgerun_runtime::latency::LatencyStats;
use edgerun_runtime::services::generate::{Generate, SAMPLE_PROMPTS as PROMPTS};

pub struct GenerateBenchSettings {
    /// The pipeline loaded once per thread count.
    pub generators: Vec<(usize, Generate)>,
    /// Images per point (prompts cycle through `PROMPTS`, seed = image index).
    pub images: usize,
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
struct PointRow {
    point: String,
    threads: usize,
    evaluations: usize,
    quality: Option<f64>,
    median_ms: f64,
    p95_ms: f64,
    /// The teacher's evaluations over this point's.
    evaluation_ratio: f64,
    /// The teacher's median wall clock over this point's (same run, same threads).
    speedup: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    images: usize,
    prompts: Vec<&'static str>,
    points: Vec<PointRow>,
}

pub fn run(settings: &GenerateBenchSettings) -> Result<()> {
    anyhow::ensure!(settings.images >= 1, "--images must be at least 1");
    let mut rows = Vec::new();
    for (threads, generate) in &settings.generators {
        let mut measured = Vec::new();
        for point in generate.points() {
            generate.generate(PROMPTS[0], Some(&point.name), 0)?; // plans are built here
            let mut ms = Vec::with_capacity(settings.images);
            for i in 0..settings.images {
                let started = Instant::now();
                generate.generate(PROMPTS[i % PROMPTS.len()], Some(&point.name), i as u64)?;
                ms.push(started.elapsed().as_secs_f64() * 1e3);
            }
            let stats = LatencyStats::of(&ms);
            measured.push((point, stats.median_ms, stats.p95_ms));
        }
        let teacher = measured
            .iter()
            .max_by_key(|(p, _, _)| p.evaluations())
            .map(|(p, median, _)| (p.evaluations() as f64, *median))
            .expect("the manifest declares points");
        for (point, median, p95) in measured {
            rows.push(PointRow {
                point: point.name.clone(),
                threads: *threads,
                evaluations: point.evaluations(),
                quality: point.quality,
                median_ms: median,
                p95_ms: p95,
                evaluation_ratio: teacher.0 / point.evaluations() as f64,
                speedup: teacher.1 / median,
            });
        }
    }
    let mut table = Table::new(&[
        "point",
        "threads",
        "evals",
        "quality",
        "median ms",
        "p95 ms",
        "evals saved",
        "speedup",
    ]);
    for r in &rows {
        table.row(vec![
            r.point.clone(),
            r.threads.to_string(),
            r.evaluations.to_string(),
            r.quality.map_or("-".into(), |q| format!("{q:.3}")),
            format!("{:.1}", r.median_ms),
            format!("{:.1}", r.p95_ms),
            format!("{:.0}x", r.evaluation_ratio),
            format!("{:.1}x", r.speedup),
        ]);
    }
    let machine = Machine::current();
    println!("{table}");
    println!(
        "{} images per point; machine: {} ({} logical cores)",
        settings.images, machine.cpu, machine.logical_cores
    );
    write_json(
        &settings.out,
        &Report {
            machine,
            images: settings.images,
            prompts: PROMPTS.to_vec(),
            points: rows,
        },
    )?;
    println!("wrote {}", settings.out.display());
    Ok(())
}
