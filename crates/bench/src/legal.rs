//! `edgerun bench legal`: COLIEE statute retrieval on the test year (R05), per operating
//! point and per scoring variant.
//!
//! For every point it reports macro F2 / precision / recall of the returned set (the gap
//! rule's cut), recall at 1/3/5 (share of gold articles in the top k, macro-averaged) and
//! the median latency per query (tokenize + encode + BM25 + similarities) at each thread
//! count. Scoring variants (BM25 alone, dense alone, with attentive sentence scoring,
//! hybrid, hybrid with attentive scoring) are each tuned on the training years and
//! evaluated on R05 with the full L6 point; the tuned hybrid-with-attention settings are
//! what `export/legal/export.py --points-only` writes into the manifest.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Machine, Table, create_parent_dir, write_json};
use crate::data;
use crate::data::Query;
use crate::plot::{ParetoPoint, pareto_svg};
use edgerun_runtime::latency::LatencyStats;
use edgerun_runtime::policy::pareto_front;
use edgerun_runtime::services::legal::scoring::{self, ScoringSettings, Signals};
use edgerun_runtime::services::legal::{Legal, LegalPoint};

/// The quality the manifest's points carry.
pub const QUALITY_METRIC: &str = "COLIEE 2024 (R05) statute retrieval: macro F2 of the returned article set (score-gap rule), 109 queries";

pub struct LegalBenchSettings {
    /// One loaded retriever per thread count, in the order to measure.
    pub retrievers: Vec<(usize, Legal)>,
    /// Exam years the scoring knobs are tuned on. Only years the encoders were not trained
    /// on give honest settings: on its own training queries a fine-tuned encoder is more
    /// confident than on new ones, and a gap tuned there returns too few articles.
    pub tune_years: Vec<String>,
    pub out: PathBuf,
    pub svg: PathBuf,
    /// Where to write every query's raw signals under the full L6 point (JSON Lines), for
    /// offline scoring research such as `export/legal/rerank_probe.py`.
    pub signals_out: Option<PathBuf>,
}

/// Retrieval quality over a query set.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Quality {
    pub f2: f64,
    pub precision: f64,
    pub recall: f64,
    pub r1: f64,
    pub r3: f64,
    pub r5: f64,
}

#[derive(Debug, Serialize)]
struct PointRow {
    name: String,
    /// Encoder layers a query runs through (0 for BM25).
    layers: usize,
    quality: Quality,
    /// Median latency per query, ms, by thread count.
    median_ms: Vec<(usize, f64)>,
    p95_ms: Vec<(usize, f64)>,
    on_front: bool,
}

#[derive(Debug, Serialize)]
struct VariantRow {
    name: &'static str,
    settings: ScoringSettings,
    train_f2: f64,
    r05: Quality,
}

#[derive(Debug, Serialize)]
struct PointQuality {
    name: String,
    quality: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    metric: &'static str,
    /// Read by export/legal/export.py --points-only: the manifest's points and settings.
    points: Vec<PointQuality>,
    settings: ScoringSettings,
    rows: Vec<PointRow>,
    variants: Vec<VariantRow>,
    /// Spearman correlation of cost and F2: over the SN-Net family (anchors and stitches),
    /// cost = layers run; over the points on the Pareto front, cost = median latency.
    spearman_snnet: Option<f64>,
    spearman_front: Option<f64>,
}

/// P, R, F2 of one returned set against the gold articles.
pub fn f2(returned: &[&str], gold: &[String]) -> (f64, f64, f64) {
    let hits = returned
        .iter()
        .filter(|r| gold.iter().any(|g| g == *r))
        .count() as f64;
    if hits == 0.0 {
        return (0.0, 0.0, 0.0);
    }
    let p = hits / returned.len() as f64;
    let r = hits / gold.len() as f64;
    (p, r, 5.0 * p * r / (4.0 * p + r))
}

/// Macro-averaged quality of `signals` (one per query) under `settings`.
pub fn evaluate(
    legal: &Legal,
    queries: &[Query],
    signals: &[Signals],
    settings: &ScoringSettings,
) -> Quality {
    let map = legal.sentence_map();
    let ids: Vec<&str> = legal.articles().iter().map(|a| a.id.as_str()).collect();
    let mut total = Quality::default();
    for (query, signals) in queries.iter().zip(signals) {
        let scores = scoring::combine(signals, map, settings);
        let order = scoring::ranked(&scores);
        let n = scoring::returned_count(&scores, &order, settings);
        let returned: Vec<&str> = order[..n].iter().map(|&i| ids[i]).collect();
        let (p, r, f) = f2(&returned, &query.gold);
        let recall_at = |k: usize| {
            let top: Vec<&str> = order[..k].iter().map(|&i| ids[i]).collect();
            f2(&top, &query.gold).1
        };
        total.f2 += f;
        total.precision += p;
        total.recall += r;
        total.r1 += recall_at(1);
        total.r3 += recall_at(3);
        total.r5 += recall_at(5);
    }
    let n = queries.len().max(1) as f64;
    Quality {
        f2: total.f2 / n,
        precision: total.precision / n,
        recall: total.recall / n,
        r1: total.r1 / n,
        r3: total.r3 / n,
        r5: total.r5 / n,
    }
}

/// Grid search of the scoring settings for the best macro F2 on `queries`, over the grid
/// `grid` allows (a variant fixes some knobs).
fn tune(
    legal: &Legal,
    queries: &[Query],
    signals: &[Signals],
    grid: &Grid,
) -> (ScoringSettings, f64) {
    let mut best = (ScoringSettings::default(), f64::MIN);
    for &bm25_weight in &grid.bm25_weight {
        for &sentence_weight in &grid.sentence_weight {
            let temperatures: &[f32] = if sentence_weight > 0.0 {
                &grid.temperature
            } else {
                &[0.05]
            };
            for &temperature in temperatures {
                for &gap in &grid.gap {
                    let settings = ScoringSettings {
                        bm25_weight,
                        sentence_weight,
                        temperature,
                        gap,
                        max_returned: 3,
                    };
                    let f2 = evaluate(legal, queries, signals, &settings).f2;
                    if f2 > best.1 + 1e-9 {
                        best = (settings, f2);
                    }
                }
            }
        }
    }
    best
}

struct Grid {
    bm25_weight: Vec<f32>,
    sentence_weight: Vec<f32>,
    temperature: Vec<f32>,
    gap: Vec<f32>,
}

fn spearman(xs: &[f64], ys: &[f64]) -> Option<f64> {
    if xs.len() < 3 {
        return None;
    }
    let rank = |v: &[f64]| {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut ranks = vec![0.0; v.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
                j += 1;
            }
            for &k in &order[i..=j] {
                ranks[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        ranks
    };
    let (rx, ry) = (rank(xs), rank(ys));
    let mean = (xs.len() as f64 - 1.0) / 2.0;
    let cov: f64 = rx
        .iter()
        .zip(&ry)
        .map(|(a, b)| (a - mean) * (b - mean))
        .sum();
    let vx: f64 = rx.iter().map(|a| (a - mean).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - mean).powi(2)).sum();
    (vx > 0.0 && vy > 0.0).then(|| cov / (vx * vy).sqrt())
}

fn signals_of(
    legal: &Legal,
    point: &LegalPoint,
    queries: &[Query],
) -> Result<(Vec<Signals>, Vec<f64>)> {
    let mut signals = Vec::with_capacity(queries.len());
    let mut ms = Vec::with_capacity(queries.len());
    for q in queries {
        let start = Instant::now();
        signals.push(legal.signals(point, &q.text)?);
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok((signals, ms))
}

/// The JSON Lines file of `--signals-out`: a header line naming the articles (in signal
/// order) and each article's sentence rows, then one line per query.
fn write_signals<'a>(
    path: &std::path::Path,
    legal: &Legal,
    point: &LegalPoint,
    sets: impl IntoIterator<Item = (&'a Vec<Query>, &'a Vec<Signals>)>,
) -> Result<()> {
    use std::io::Write;
    create_parent_dir(path)?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let header = serde_json::json!({
        "point": point.name,
        "articles": legal.articles().iter().map(|a| &a.id).collect::<Vec<_>>(),
        "sentence_ranges": legal.sentence_map().ranges.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
    });
    writeln!(out, "{header}")?;
    for (queries, signals) in sets {
        for (query, s) in queries.iter().zip(signals) {
            let line = serde_json::json!({
                "id": query.id,
                "gold": query.gold,
                "bm25": s.bm25,
                "article_cosine": s.article_cosine,
                "sentence_cosine": s.sentence_cosine,
            });
            writeln!(out, "{line}")?;
        }
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn layers(point: &LegalPoint) -> usize {
    point.chain.iter().filter(|f| f.contains("_layer")).count()
}

pub fn run(settings: &LegalBenchSettings) -> Result<()> {
    let (_, legal) = settings
        .retrievers
        .first()
        .context("no thread counts to measure")?;
    let test = data::coliee_queries(&["R05"])?;
    let years: Vec<&str> = settings.tune_years.iter().map(String::as_str).collect();
    let train = data::coliee_queries(&years)?;
    eprintln!(
        "bench legal on {}: {} test queries (R05), scoring tuned on {} queries ({})",
        Machine::current(),
        test.len(),
        train.len(),
        years.join(",")
    );

    // Scoring variants, tuned with the full L6 point.
    let l6 = legal.point(Some("l6"))?.clone();
    let (train_signals, _) = signals_of(legal, &l6, &train)?;
    let (test_l6, _) = signals_of(legal, &l6, &test)?;
    if let Some(path) = &settings.signals_out {
        write_signals(
            path,
            legal,
            &l6,
            [(&train, &train_signals), (&test, &test_l6)],
        )?;
        eprintln!("wrote {}", path.display());
    }
    let lexical = |s: &[Signals]| -> Vec<Signals> {
        s.iter()
            .map(|s| Signals {
                bm25: s.bm25.clone(),
                ..Signals::default()
            })
            .collect()
    };
    let weights: Vec<f32> = (0..=10).map(|i| i as f32 / 10.0).collect();
    let gaps = Vec::from([0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08]);
    let all_sentence = Vec::from([0.25, 0.5, 0.75, 1.0]);
    let temperatures = Vec::from([0.02, 0.05, 0.1]);
    let variants: [(&'static str, Grid, bool); 5] = [
        (
            "bm25",
            Grid {
                bm25_weight: vec![1.0],
                sentence_weight: vec![0.0],
                temperature: vec![0.05],
                gap: gaps.clone(),
            },
            true,
        ),
        (
            "dense",
            Grid {
                bm25_weight: vec![0.0],
                sentence_weight: vec![0.0],
                temperature: vec![0.05],
                gap: gaps.clone(),
            },
            false,
        ),
        (
            "dense+attentive",
            Grid {
                bm25_weight: vec![0.0],
                sentence_weight: all_sentence.clone(),
                temperature: temperatures.clone(),
                gap: gaps.clone(),
            },
            false,
        ),
        (
            "hybrid",
            Grid {
                bm25_weight: weights.clone(),
                sentence_weight: vec![0.0],
                temperature: vec![0.05],
                gap: gaps.clone(),
            },
            false,
        ),
        (
            "hybrid+attentive",
            Grid {
                bm25_weight: weights,
                sentence_weight: all_sentence,
                temperature: temperatures,
                gap: gaps,
            },
            false,
        ),
    ];
    let mut variant_rows = Vec::new();
    for (name, grid, lexical_only) in variants {
        let (train_s, test_s) = if lexical_only {
            (lexical(&train_signals), lexical(&test_l6))
        } else {
            (train_signals.clone(), test_l6.clone())
        };
        let (tuned, train_f2) = tune(legal, &train, &train_s, &grid);
        let r05 = evaluate(legal, &test, &test_s, &tuned);
        variant_rows.push(VariantRow {
            name,
            settings: tuned,
            train_f2,
            r05,
        });
    }
    let chosen = variant_rows.last().expect("five variants").settings;

    // Operating points at the chosen settings, latency at every thread count.
    let mut rows: Vec<PointRow> = Vec::new();
    for point in legal.points() {
        let (signals, _) = if point.name == l6.name {
            (test_l6.clone(), Vec::new())
        } else {
            signals_of(legal, point, &test)?
        };
        let quality = evaluate(legal, &test, &signals, &chosen);
        let mut median_ms = Vec::new();
        let mut p95_ms = Vec::new();
        for (threads, retriever) in &settings.retrievers {
            // One pass to plan every shape, then the timed pass.
            signals_of(retriever, point, &test)?;
            let (_, ms) = signals_of(retriever, point, &test)?;
            let stats = LatencyStats::of(&ms);
            median_ms.push((*threads, stats.median_ms));
            p95_ms.push((*threads, stats.p95_ms));
        }
        rows.push(PointRow {
            name: point.name.clone(),
            layers: layers(point),
            quality,
            median_ms,
            p95_ms,
            on_front: false,
        });
    }
    let front = pareto_front(
        &rows
            .iter()
            .map(|r| (r.median_ms[0].1, r.quality.f2))
            .collect::<Vec<_>>(),
    );
    for i in front {
        rows[i].on_front = true;
    }
    let family: Vec<&PointRow> = rows
        .iter()
        .filter(|r| r.name == "l3" || r.name == "l6" || r.name.starts_with("sn:"))
        .collect();
    // Cost as layers run: deterministic, where the latencies of points a layer apart are
    // within run-to-run noise of each other.
    let spearman_snnet = spearman(
        &family.iter().map(|r| r.layers as f64).collect::<Vec<_>>(),
        &family.iter().map(|r| r.quality.f2).collect::<Vec<_>>(),
    );
    let on_front: Vec<&PointRow> = rows.iter().filter(|r| r.on_front).collect();
    let spearman_front = spearman(
        &on_front
            .iter()
            .map(|r| r.median_ms[0].1)
            .collect::<Vec<_>>(),
        &on_front.iter().map(|r| r.quality.f2).collect::<Vec<_>>(),
    );

    let mut table = Table::new(&[
        "variant (l6)",
        "tune F2",
        "R05 F2",
        "P",
        "R",
        "R@1",
        "R@5",
        "settings",
    ]);
    for v in &variant_rows {
        let s = v.settings;
        table.row(vec![
            v.name.into(),
            format!("{:.3}", v.train_f2),
            format!("{:.3}", v.r05.f2),
            format!("{:.3}", v.r05.precision),
            format!("{:.3}", v.r05.recall),
            format!("{:.3}", v.r05.r1),
            format!("{:.3}", v.r05.r5),
            format!(
                "w={} l={} t={} gap={}",
                s.bm25_weight, s.sentence_weight, s.temperature, s.gap
            ),
        ]);
    }
    println!("{table}");
    let threads: Vec<String> = settings
        .retrievers
        .iter()
        .map(|(t, _)| format!("ms@{t}t"))
        .collect();
    let mut header = vec!["point", "layers", "F2", "P", "R", "R@1", "R@3", "R@5"];
    header.extend(threads.iter().map(String::as_str));
    header.push("front");
    let mut table = Table::new(&header);
    for r in &rows {
        let q = r.quality;
        let mut cells = vec![
            r.name.clone(),
            r.layers.to_string(),
            format!("{:.3}", q.f2),
            format!("{:.3}", q.precision),
            format!("{:.3}", q.recall),
            format!("{:.3}", q.r1),
            format!("{:.3}", q.r3),
            format!("{:.3}", q.r5),
        ];
        cells.extend(r.median_ms.iter().map(|(_, ms)| format!("{ms:.1}")));
        cells.push(if r.on_front {
            "*".into()
        } else {
            String::new()
        });
        table.row(cells);
    }
    println!("{table}");
    println!(
        "Spearman(cost, F2): SN-Net family by layers {}, Pareto front by latency {}",
        spearman_snnet.map_or("n/a".into(), |s| format!("{s:.2}")),
        spearman_front.map_or("n/a".into(), |s| format!("{s:.2}"))
    );

    let chart: Vec<ParetoPoint> = rows
        .iter()
        .map(|r| ParetoPoint {
            name: r.name.clone(),
            latency_ms: r.median_ms[0].1,
            latency_p95_ms: r.p95_ms[0].1,
            quality: r.quality.f2,
            on_front: r.on_front,
        })
        .collect();
    pareto_svg(
        &settings.svg,
        &format!(
            "legal: R05 F2 vs latency ({} thread(s))",
            settings.retrievers[0].0
        ),
        "macro F2 (R05)",
        &chart,
    )?;
    let report = Report {
        machine: Machine::current().to_string(),
        metric: QUALITY_METRIC,
        points: rows
            .iter()
            .map(|r| PointQuality {
                name: r.name.clone(),
                quality: (r.quality.f2 * 1e4).round() / 1e4,
            })
            .collect(),
        settings: chosen,
        rows,
        variants: variant_rows,
        spearman_snnet,
        spearman_front,
    };
    write_json(&settings.out, &report)?;
    eprintln!(
        "wrote {} and {}",
        settings.out.display(),
        settings.svg.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f2_weighs_recall_four_times() {
        let gold = vec!["1".to_string(), "2".to_string()];
        assert_eq!(f2(&["3"], &gold), (0.0, 0.0, 0.0));
        let (p, r, f) = f2(&["1"], &gold);
        assert_eq!((p, r), (1.0, 0.5));
        assert!((f - 5.0 * 0.5 / 4.5).abs() < 1e-12);
        let (p, r, f) = f2(&["1", "2", "3"], &gold);
        assert!((p - 2.0 / 3.0).abs() < 1e-12 && r == 1.0);
        assert!((f - (10.0 / 3.0) / (8.0 / 3.0 + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn spearman_of_monotone_and_reversed_ranks() {
        assert_eq!(
            spearman(&[1.0, 2.0, 3.0, 4.0], &[0.1, 0.2, 0.5, 0.9]),
            Some(1.0)
        );
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&[1.0, 2.0], &[1.0, 2.0]), None);
    }
}
