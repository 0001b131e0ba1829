//! SVG charts for benchmarks: a quality-versus-latency (Pareto) chart of a service's
//! operating points, and a timeline of closed-loop runs (latency, chosen operating point,
//! whether it ran on fewer threads, and CPU load per request, with shaded intervals such as
//! when a CPU hog ran).
//!
//! Pure presentation: it takes numbers that were already measured and writes SVG files
//! (text stays SVG text, so no fonts are needed). It must not measure, decide which points
//! are on the Pareto front, or run any model; callers pass those results in.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

/// Pixel size of [`pareto_svg`] charts.
const PARETO_SIZE: (u32, u32) = (900, 520);
/// Pixel size of [`timeline_svg`] charts.
const TIMELINE_SIZE: (u32, u32) = (1000, 800);
const FONT: &str = "sans-serif";
/// Legend of the marks on requests that ran with fewer threads than configured.
const FEWER_THREADS: &str = "ran on fewer threads";
/// Most operating points the timeline's middle panel has rows for.
const MAX_POINT_ROWS: usize = 64;

/// Colour of the Pareto front (line and filled points).
const FRONT: RGBColor = RGBColor(31, 119, 180);
/// Colour of dominated points and their labels.
const DOMINATED: RGBColor = RGBColor(150, 150, 150);
/// Text colour of dominated points' names.
const LABEL_GREY: RGBColor = RGBColor(110, 110, 110);
/// Background colour of shaded intervals (drawn translucent).
const SHADE: RGBColor = RGBColor(255, 170, 60);
/// One colour per run, cycled; distinguishable on white and from each other.
const RUN_COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One operating point on a quality/latency chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParetoPoint {
    pub name: String,
    /// Median latency, in milliseconds.
    pub latency_ms: f64,
    /// 95th-percentile latency, in milliseconds (drawn as an error bar from the median).
    pub latency_p95_ms: f64,
    pub quality: f64,
    /// Whether no other point is both at least as fast and at least as good.
    pub on_front: bool,
}

/// One request in a closed-loop run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineSample {
    /// When the request was sent, in seconds from the start of the run.
    pub t_s: f64,
    pub latency_ms: f64,
    /// Index into [`Timeline::point_names`] of the operating point that served it.
    pub point: usize,
    /// CPU load when it was served, 0..1.
    pub cpu_load: Option<f64>,
    /// Whether it ran with fewer engine threads than configured (threads following the load).
    pub fewer_threads: bool,
}

/// The requests of one closed-loop run, drawn in one colour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineRun {
    pub label: String,
    pub samples: Vec<TimelineSample>,
}

/// Everything [`timeline_svg`] draws.
#[derive(Debug, Clone, Copy)]
pub struct Timeline<'a> {
    pub title: &'a str,
    /// Latency objective in milliseconds, drawn as a dashed line (skipped unless finite and > 0).
    pub slo_ms: f64,
    /// Operating point names; index = [`TimelineSample::point`], ordered cheapest -> best.
    pub point_names: &'a [String],
    pub runs: &'a [TimelineRun],
    /// Shaded intervals (e.g. when a CPU hog ran), in seconds.
    pub shaded: &'a [(f64, f64)],
    /// Legend text for the shaded intervals.
    pub shaded_label: &'a str,
}

/// Quality (y) against median latency (x, ms) for one service's operating points.
///
/// Every point with a finite latency and quality is drawn and labelled with its name; points
/// on the Pareto front are filled and joined by a line in latency order, dominated points are
/// hollow and grey, and a horizontal bar runs from each point's median to its p95 latency.
/// `quality_label` names the y metric (e.g. "end-to-end word accuracy").
pub fn pareto_svg(
    path: &Path,
    title: &str,
    quality_label: &str,
    points: &[ParetoPoint],
) -> Result<()> {
    let svg = render_pareto(title, quality_label, points)?;
    write_svg(path, &svg)
}

/// Three stacked panels sharing the time axis: latency per request for every run with a
/// dashed SLO line, the chosen operating point per request as a step line per run, and CPU
/// load (0..100 %) per run. Shaded intervals are light rectangles behind every panel.
pub fn timeline_svg(path: &Path, timeline: &Timeline<'_>) -> Result<()> {
    let svg = render_timeline(timeline)?;
    write_svg(path, &svg)
}

fn write_svg(path: &Path, svg: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .with_context(|| format!("creating directory {}", parent.display()))?;
    }
    fs::write(path, svg).with_context(|| format!("writing chart {}", path.display()))
}

/// `lo..hi` widened by `frac` of its span on both sides; a zero span gets a small width.
fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let span = hi - lo;
    let span = if span > 0.0 {
        span
    } else if hi.abs() > 0.0 {
        hi.abs() * 0.2
    } else {
        1.0
    };
    (lo - span * frac, hi + span * frac)
}

/// Smallest and largest of `values`, or `None` when it is empty.
fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values.into_iter().fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// A range for a non-negative quantity: from 0 (unless data is negative) to a little above the max.
fn from_zero(lo: f64, hi: f64) -> (f64, f64) {
    let (plo, phi) = padded(lo.min(0.0), hi, 0.06);
    (if lo >= 0.0 { 0.0 } else { plo }, phi)
}

/// An axis tick without float noise or a needless ".0" ("20", "0.85").
fn fmt_tick(v: &f64) -> String {
    let v = (v * 1e6).round() / 1e6;
    if v == 0.0 {
        "0".to_string()
    } else {
        format!("{v}")
    }
}

/// A number of milliseconds without needless decimals ("50", "12.5").
fn fmt_ms(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{}", (v * 100.0).round() / 100.0)
    }
}

fn render_pareto(title: &str, quality_label: &str, points: &[ParetoPoint]) -> Result<String> {
    if points.is_empty() {
        bail!("pareto chart {title:?}: no operating points to plot");
    }
    let valid: Vec<&ParetoPoint> = points
        .iter()
        .filter(|p| p.latency_ms.is_finite() && p.quality.is_finite())
        .collect();
    if valid.is_empty() {
        bail!(
            "pareto chart {title:?}: none of the {} operating points has a finite latency and quality",
            points.len()
        );
    }
    let p95 = |p: &ParetoPoint| {
        (p.latency_p95_ms.is_finite() && p.latency_p95_ms >= p.latency_ms)
            .then_some(p.latency_p95_ms)
    };

    let (x_lo, x_hi) = min_max(
        valid
            .iter()
            .flat_map(|p| [Some(p.latency_ms), p95(p)])
            .flatten(),
    )
    .expect("at least one valid point");
    let (x_lo, x_hi) = from_zero(x_lo, x_hi);
    let (q_lo, q_hi) = min_max(valid.iter().map(|p| p.quality)).expect("at least one valid point");
    let (y_lo, y_hi) = padded(q_lo, q_hi, 0.12);

    let mut front: Vec<&ParetoPoint> = valid.iter().copied().filter(|p| p.on_front).collect();
    front.sort_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms));
    let dominated: Vec<&ParetoPoint> = valid.iter().copied().filter(|p| !p.on_front).collect();
    let bars: Vec<(f64, f64, f64)> = valid
        .iter()
        .filter_map(|p| p95(p).map(|hi| (p.latency_ms, hi, p.quality)))
        .collect();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PARETO_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
        chart
            .configure_mesh()
            .x_desc("median latency (ms)")
            .x_label_formatter(&fmt_tick)
            .y_label_formatter(&fmt_tick)
            .y_desc(quality_label)
            .light_line_style(BLACK.mix(0.05))
            .bold_line_style(BLACK.mix(0.15))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()?;

        if !bars.is_empty() {
            let bar_style = BLACK.mix(0.45).stroke_width(1);
            chart
                .draw_series(
                    bars.iter()
                        .map(|&(lo, hi, q)| PathElement::new(vec![(lo, q), (hi, q)], bar_style)),
                )?
                .label("p50 to p95 latency")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], bar_style));
            chart.draw_series(bars.iter().map(|&(_, hi, q)| {
                EmptyElement::at((hi, q)) + PathElement::new(vec![(0, -4), (0, 4)], bar_style)
            }))?;
        }

        if !front.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    front.iter().map(|p| (p.latency_ms, p.quality)),
                    FRONT.stroke_width(2),
                ))?
                .label("Pareto front")
                .legend(|(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (18, 0)], FRONT.stroke_width(2))
                        + Circle::new((9, 0), 4, FRONT.filled())
                });
            chart.draw_series(
                front
                    .iter()
                    .map(|p| Circle::new((p.latency_ms, p.quality), 5, FRONT.filled())),
            )?;
        }
        if !dominated.is_empty() {
            chart
                .draw_series(
                    dominated.iter().map(|p| {
                        Circle::new((p.latency_ms, p.quality), 5, DOMINATED.stroke_width(2))
                    }),
                )?
                .label("dominated")
                .legend(|(x, y)| Circle::new((x + 9, y), 4, DOMINATED.stroke_width(2)));
        }

        // Names above each point; those in the right quarter end at the point instead of
        // starting there, so they stay inside the chart.
        let right_quarter = x_lo + 0.75 * (x_hi - x_lo);
        chart.draw_series(valid.iter().map(|p| {
            let colour: &'static RGBColor = if p.on_front { &BLACK } else { &LABEL_GREY };
            let (hpos, dx) = if p.latency_ms > right_quarter {
                (HPos::Right, -7)
            } else {
                (HPos::Left, 7)
            };
            let style = TextStyle::from((FONT, 12).into_font())
                .color(colour)
                .pos(Pos::new(hpos, VPos::Bottom));
            EmptyElement::at((p.latency_ms, p.quality)) + Text::new(p.name.clone(), (dx, -5), style)
        }))?;

        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 13))
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// Vertical offset of run `i` of `n_runs` on the operating-point panel, so that runs
/// choosing the same point stay visible.
fn run_offset(i: usize, n_runs: usize) -> f64 {
    if n_runs > 1 {
        -0.15 + 0.3 * i as f64 / (n_runs - 1) as f64
    } else {
        0.0
    }
}

/// The legend box of a timeline panel, top right.
fn timeline_legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 12))
        .draw()
        .map_err(|e| anyhow::anyhow!("drawing a legend: {e}"))
}

fn run_colour(i: usize) -> RGBColor {
    RUN_COLOURS[i % RUN_COLOURS.len()]
}

/// Draws the shaded intervals, clipped to `x_lo..x_hi`, behind a panel; the first panel also
/// gives them a legend entry.
fn draw_shaded<DB, X, Y>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, Y>>,
    shaded: &[(f64, f64)],
    (x_lo, x_hi): (f64, f64),
    (y_lo, y_hi): (f64, f64),
    label: Option<&str>,
) -> Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let rects: Vec<(f64, f64)> = shaded
        .iter()
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|&(a, b)| (a.min(b).max(x_lo), a.max(b).min(x_hi)))
        .filter(|(a, b)| b > a)
        .collect();
    if rects.is_empty() {
        return Ok(());
    }
    let fill = SHADE.mix(0.22).filled();
    let anno = chart
        .draw_series(
            rects
                .iter()
                .map(|&(a, b)| Rectangle::new([(a, y_lo), (b, y_hi)], fill)),
        )
        .map_err(|e| anyhow::anyhow!("drawing shaded intervals: {e}"))?;
    if let Some(label) = label {
        let label = if label.is_empty() { "shaded" } else { label };
        anno.label(label).legend(move |(x, y)| {
            Rectangle::new([(x, y - 6), (x + 18, y + 6)], SHADE.mix(0.4).filled())
        });
    }
    Ok(())
}

fn render_timeline(tl: &Timeline<'_>) -> Result<String> {
    let title = tl.title;
    if tl.runs.is_empty() {
        bail!("timeline chart {title:?}: no runs to plot");
    }
    // Each run's usable samples, in time order.
    let runs: Vec<(&str, Vec<&TimelineSample>)> = tl
        .runs
        .iter()
        .map(|run| {
            let mut samples: Vec<&TimelineSample> = run
                .samples
                .iter()
                .filter(|s| s.t_s.is_finite() && s.latency_ms.is_finite())
                .collect();
            samples.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
            (run.label.as_str(), samples)
        })
        .collect();
    let all = || runs.iter().flat_map(|(_, s)| s.iter().copied());
    let Some((t_min, t_max)) = min_max(all().map(|s| s.t_s)) else {
        bail!(
            "timeline chart {title:?}: none of the {} runs has a sample with finite time and latency",
            runs.len()
        );
    };

    // Shared time axis: from 0 (unless samples are earlier) to the last sample or interval end.
    let shaded_ends = tl
        .shaded
        .iter()
        .flat_map(|&(a, b)| [a, b])
        .filter(|v| v.is_finite());
    let t_hi = shaded_ends.fold(t_max, f64::max);
    let t_lo = t_min.min(0.0);
    let (_, t_hi) = padded(t_lo, t_hi, 0.02);
    let x = (t_lo, t_hi);

    let slo = (tl.slo_ms.is_finite() && tl.slo_ms > 0.0).then_some(tl.slo_ms);
    let (_, lat_max) = min_max(all().map(|s| s.latency_ms)).expect("at least one sample");
    let lat_y = from_zero(0.0, lat_max.max(slo.unwrap_or(0.0)));

    // One row per operating point; an absurd index (a caller's bug) is not drawn rather than
    // allocating a row for every index below it.
    let n_points = all()
        .map(|s| s.point.saturating_add(1))
        .filter(|&n| n <= MAX_POINT_ROWS)
        .chain([tl.point_names.len().min(MAX_POINT_ROWS), 1])
        .max()
        .unwrap_or(1);
    let point_y = PointAxis { n: n_points }.bounds();
    let point_name = |i: usize| {
        tl.point_names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("#{i}"))
    };
    // The same y label width on every panel keeps their time axes aligned.
    let longest_name = (0..n_points)
        .map(|i| point_name(i).chars().count())
        .max()
        .unwrap_or(0);
    let y_area = (longest_name as u32 * 6 + 40).clamp(70, 220);

    let cpu_y = (0.0, 100.0);
    let has_cpu = all().any(|s| s.cpu_load.is_some_and(f64::is_finite));

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, TIMELINE_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.titled(title, (FONT, 22))?;
        let (_, h) = body.dim_in_pixel();
        let panels =
            body.split_by_breakpoints([] as [i32; 0], [h as i32 * 42 / 100, h as i32 * 71 / 100]);

        // (1) Latency per request.
        {
            let mut chart = panel(&panels[0], y_area, false, x, lat_y)?;
            chart
                .configure_mesh()
                .y_desc("latency (ms)")
                .x_label_formatter(&fmt_tick)
                .y_label_formatter(&fmt_tick)
                .light_line_style(BLACK.mix(0.04))
                .bold_line_style(BLACK.mix(0.12))
                .label_style((FONT, 12))
                .axis_desc_style((FONT, 13))
                .draw()?;
            draw_shaded(&mut chart, tl.shaded, x, lat_y, Some(tl.shaded_label))?;
            for (i, (label, samples)) in runs.iter().enumerate() {
                let colour = run_colour(i);
                chart
                    .draw_series(
                        samples.iter().map(|s| {
                            Circle::new((s.t_s, s.latency_ms), 2, colour.mix(0.7).filled())
                        }),
                    )?
                    .label(*label)
                    .legend(move |(x, y)| Circle::new((x + 9, y), 4, colour.filled()));
            }
            if let Some(slo) = slo {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x.0, slo), (x.1, slo)],
                        8,
                        5,
                        BLACK.stroke_width(2),
                    ))?
                    .label(format!("SLO {} ms", fmt_ms(slo)))
                    .legend(|(x, y)| {
                        EmptyElement::at((x, y))
                            + PathElement::new(vec![(0, 0), (7, 0)], BLACK.stroke_width(2))
                            + PathElement::new(vec![(11, 0), (18, 0)], BLACK.stroke_width(2))
                    });
            }
            timeline_legend(&mut chart)?;
        }

        // (2) Chosen operating point, one step line per run, offset a little so that runs
        // choosing the same point stay visible.
        {
            let fmt_point = |v: &f64| {
                let i = v.round();
                if i >= 0.0 && (v - i).abs() < 1e-6 {
                    point_name(i as usize)
                } else {
                    String::new()
                }
            };
            let mut chart = ChartBuilder::on(&panels[1])
                .margin_left(8)
                .margin_right(16)
                .margin_top(6)
                .margin_bottom(4)
                .x_label_area_size(24)
                .y_label_area_size(y_area)
                .build_cartesian_2d(x.0..x.1, PointAxis { n: n_points })?;
            chart
                .configure_mesh()
                .y_desc("operating point")
                .x_label_formatter(&fmt_tick)
                .y_label_formatter(&fmt_point)
                .light_line_style(BLACK.mix(0.04))
                .bold_line_style(BLACK.mix(0.12))
                .label_style((FONT, 12))
                .axis_desc_style((FONT, 13))
                .draw()?;
            draw_shaded(&mut chart, tl.shaded, x, point_y, None)?;
            let n_runs = runs.len();
            let mut labelled = false;
            for (i, (_, samples)) in runs.iter().enumerate() {
                let offset = run_offset(i, n_runs);
                let drawn = || samples.iter().filter(|s| s.point < n_points);
                let mut steps = Vec::with_capacity(samples.len() * 2);
                for s in drawn() {
                    let y = s.point as f64 + offset;
                    if let Some(&(_, prev)) = steps.last() {
                        steps.push((s.t_s, prev));
                    }
                    steps.push((s.t_s, y));
                }
                chart.draw_series(LineSeries::new(steps, run_colour(i).stroke_width(2)))?;
                // Requests that ran on fewer threads than configured: a hollow square on the
                // line, so a reader sees when the engine went single-threaded.
                let style = run_colour(i).stroke_width(1);
                let mut marks = drawn()
                    .filter(|s| s.fewer_threads)
                    .map(|s| (s.t_s, s.point as f64 + offset))
                    .peekable();
                if marks.peek().is_none() {
                    continue;
                }
                let anno = chart.draw_series(marks.map(move |xy| {
                    EmptyElement::at(xy) + Rectangle::new([(-3, -3), (3, 3)], style)
                }))?;
                if !labelled {
                    labelled = true;
                    anno.label(FEWER_THREADS).legend(|(x, y)| {
                        Rectangle::new([(x + 6, y - 3), (x + 12, y + 3)], BLACK.stroke_width(1))
                    });
                }
            }
            if labelled {
                timeline_legend(&mut chart)?;
            }
        }

        // (3) CPU load.
        {
            let mut chart = panel(&panels[2], y_area, true, x, cpu_y)?;
            chart
                .configure_mesh()
                .x_desc("time (s)")
                .y_desc("CPU load (%)")
                .y_labels(6)
                .x_label_formatter(&fmt_tick)
                .y_label_formatter(&fmt_tick)
                .light_line_style(BLACK.mix(0.04))
                .bold_line_style(BLACK.mix(0.12))
                .label_style((FONT, 12))
                .axis_desc_style((FONT, 13))
                .draw()?;
            draw_shaded(&mut chart, tl.shaded, x, cpu_y, None)?;
            for (i, (_, samples)) in runs.iter().enumerate() {
                let load = samples.iter().filter_map(|s| {
                    s.cpu_load
                        .filter(|l| l.is_finite())
                        .map(|l| (s.t_s, (l * 100.0).clamp(0.0, 100.0)))
                });
                chart.draw_series(LineSeries::new(load, run_colour(i).stroke_width(2)))?;
            }
            if !has_cpu {
                let style = TextStyle::from((FONT, 14).into_font())
                    .color(&DOMINATED)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                chart.plotting_area().draw(&Text::new(
                    "no CPU load recorded",
                    ((x.0 + x.1) / 2.0, 50.0),
                    style,
                ))?;
            }
        }
        root.present()?;
    }
    Ok(svg)
}

type LinearChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A linear chart on one timeline panel; only the bottom panel gets room for the time label.
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    y_area: u32,
    bottom: bool,
    (x_lo, x_hi): (f64, f64),
    (y_lo, y_hi): (f64, f64),
) -> Result<LinearChart<'a, DB>>
where
    DB::ErrorType: 'static,
{
    ChartBuilder::on(area)
        .margin_left(8)
        .margin_right(16)
        .margin_top(6)
        .margin_bottom(4)
        .x_label_area_size(if bottom { 42 } else { 24 })
        .y_label_area_size(y_area)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(|e| anyhow::anyhow!("laying out a timeline panel: {e}"))
}

/// The y axis of the operating-point panel: indices `0..n` with half a step of room either
/// side, one tick (and grid line) per index and none in between.
struct PointAxis {
    n: usize,
}

impl PointAxis {
    fn bounds(&self) -> (f64, f64) {
        (-0.5, self.n as f64 - 0.5)
    }
}

impl Ranged for PointAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = self.bounds();
        let frac = (value - lo) / (hi - lo);
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            (0..self.n).map(|i| i as f64).collect()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        let (lo, hi) = self.bounds();
        lo..hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn point(name: &str, latency_ms: f64, p95: f64, quality: f64, on_front: bool) -> ParetoPoint {
        ParetoPoint {
            name: name.to_string(),
            latency_ms,
            latency_p95_ms: p95,
            quality,
            on_front,
        }
    }

    fn points() -> Vec<ParetoPoint> {
        vec![
            point("det320-rec-small", 18.0, 24.0, 0.71, true),
            point("det480-rec-small", 31.0, 40.0, 0.80, true),
            point("det640-rec-base", 62.0, 75.0, 0.86, true),
            point("det480-rec-base", 45.0, 70.0, 0.78, false),
            point("det640-rec-small", 70.0, f64::NAN, 0.79, false),
        ]
    }

    fn point_names() -> Vec<String> {
        ["det320-rec-small", "det480-rec-small", "det640-rec-base"]
            .map(String::from)
            .to_vec()
    }

    /// Two 20 s runs at 10 requests per second; a CPU hog from 6 s to 12 s.
    fn runs() -> Vec<TimelineRun> {
        let run = |label: &str, adaptive: bool| TimelineRun {
            label: label.to_string(),
            samples: (0..200)
                .map(|i| {
                    let t_s = i as f64 * 0.1;
                    let hog = (6.0..12.0).contains(&t_s);
                    let point = match (adaptive, hog) {
                        (false, _) => 2,
                        (true, true) => 0,
                        (true, false) => 2,
                    };
                    let base = [12.0, 20.0, 38.0][point];
                    let latency_ms = if hog { base * 2.2 } else { base } + (i % 7) as f64;
                    TimelineSample {
                        t_s,
                        latency_ms,
                        point,
                        cpu_load: Some(if hog {
                            0.97
                        } else {
                            0.35 + (i % 5) as f64 * 0.02
                        }),
                        fewer_threads: adaptive && hog,
                    }
                })
                .collect(),
        };
        vec![run("fixed best", false), run("adaptive", true)]
    }

    fn timeline<'a>(names: &'a [String], runs: &'a [TimelineRun]) -> Timeline<'a> {
        Timeline {
            title: "ocr: adaptive vs fixed under a CPU hog",
            slo_ms: 50.0,
            point_names: names,
            runs,
            shaded: &[(6.0, 12.0)],
            shaded_label: "CPU hog",
        }
    }

    fn assert_svg(svg: &str) {
        assert!(
            svg.starts_with("<svg") || svg.starts_with("<?xml"),
            "{}",
            &svg[..80]
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(
            !svg.contains("NaN") && !svg.contains("inf"),
            "non-finite value leaked"
        );
    }

    #[test]
    fn pareto_chart_has_title_names_and_front_line() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("charts/nested/ocr-pareto.svg");
        let mut pts = points();
        pts.push(point("broken", f64::NAN, 1.0, 0.5, false));
        pareto_svg(
            &path,
            "ocr: quality vs latency (this device)",
            "end-to-end word accuracy",
            &pts,
        )
        .unwrap();
        let svg = fs::read_to_string(&path).unwrap();
        assert_svg(&svg);
        assert!(svg.contains("ocr: quality vs latency (this device)"));
        assert!(svg.contains("end-to-end word accuracy"));
        assert!(svg.contains("median latency (ms)"));
        for p in &points() {
            assert!(
                svg.contains(&format!(">\n{}\n</text>", p.name)),
                "{} missing",
                p.name
            );
        }
        assert!(
            !svg.contains("broken"),
            "a point with NaN latency must be skipped"
        );
        assert!(svg.contains("Pareto front") && svg.contains("dominated"));

        // The front: one polyline in the front colour through exactly its three points.
        let front = format!("stroke=\"{}\"", "#1F77B4");
        let front_lines: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains(&front))
            .collect();
        assert!(
            front_lines.iter().any(|l| {
                let pts = l
                    .split("points=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                pts.split_whitespace().count() == 3
            }),
            "no front polyline through 3 points: {front_lines:?}"
        );
    }

    #[test]
    fn pareto_rejects_empty_and_all_non_finite_input() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("empty.svg");
        let err = pareto_svg(&path, "t", "q", &[]).unwrap_err().to_string();
        assert!(err.contains("no operating points"), "{err}");
        assert!(!path.exists());

        let nan = [
            point("x", f64::NAN, f64::NAN, 0.5, true),
            point("y", 3.0, 4.0, f64::INFINITY, true),
        ];
        let err = pareto_svg(&path, "t", "q", &nan).unwrap_err().to_string();
        assert!(err.contains("finite"), "{err}");
    }

    #[test]
    fn pareto_single_point_and_identical_points_render() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("one.svg");
        pareto_svg(
            &path,
            "one",
            "accuracy",
            &[point("only", 10.0, 10.0, 0.5, true)],
        )
        .unwrap();
        assert_svg(&fs::read_to_string(&path).unwrap());
        let same = [
            point("a", 0.0, 0.0, 0.0, true),
            point("b", 0.0, 0.0, 0.0, false),
        ];
        pareto_svg(&path, "same", "accuracy", &same).unwrap();
        assert_svg(&fs::read_to_string(&path).unwrap());
    }

    #[test]
    fn timeline_chart_has_panels_legend_and_slo() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("new-dir/timeline.svg");
        let names = point_names();
        let mut runs = runs();
        runs[1].samples.push(TimelineSample {
            t_s: f64::NAN,
            latency_ms: 1.0,
            point: 0,
            cpu_load: Some(f64::NAN),
            fewer_threads: true,
        });
        runs[1].samples[3].cpu_load = Some(f64::INFINITY);
        runs[1].samples[4].cpu_load = None;
        timeline_svg(&path, &timeline(&names, &runs)).unwrap();
        let svg = fs::read_to_string(&path).unwrap();
        assert_svg(&svg);
        for text in [
            "ocr: adaptive vs fixed under a CPU hog",
            "SLO 50 ms",
            "fixed best",
            "adaptive",
            "CPU hog",
            "latency (ms)",
            "operating point",
            "CPU load (%)",
            "time (s)",
        ] {
            assert!(svg.contains(text), "{text:?} missing");
        }
        for name in &names {
            assert!(
                svg.contains(&format!(">\n{name}\n</text>")),
                "point name {name} missing"
            );
        }
        // One shaded rectangle per panel, plus its legend swatch.
        let shade = format!("fill=\"{}\"", "#FFAA3C");
        assert_eq!(
            svg.lines()
                .filter(|l| l.starts_with("<rect") && l.contains(&shade))
                .count(),
            4
        );
        assert!(!svg.contains("no CPU load recorded"));
        // The adaptive run's 60 requests under the hog ran on fewer threads: one hollow
        // square each in its colour (the NaN-time sample is not drawn), plus one legend entry.
        assert!(svg.contains(FEWER_THREADS));
        let adaptive = format!("stroke=\"{}\"", "#FF7F0E");
        assert_eq!(
            svg.lines()
                .filter(|l| l.starts_with("<rect") && l.contains(&adaptive))
                .count(),
            60
        );
    }

    #[test]
    fn timeline_without_cpu_load_or_slo_still_renders() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("t.svg");
        let mut runs = runs();
        for s in runs.iter_mut().flat_map(|r| r.samples.iter_mut()) {
            s.cpu_load = None;
            s.fewer_threads = false;
            s.point = 5; // beyond the names: labelled by index
        }
        runs[0].samples[0].point = usize::MAX; // a caller's bug: not drawn, no huge axis
        let tl = Timeline {
            slo_ms: f64::NAN,
            point_names: &[],
            shaded: &[],
            ..timeline(&[], &runs)
        };
        timeline_svg(&path, &tl).unwrap();
        let svg = fs::read_to_string(&path).unwrap();
        assert_svg(&svg);
        assert!(svg.contains("no CPU load recorded"));
        assert!(svg.contains(">\n#5\n</text>"));
        assert!(!svg.contains("SLO") && !svg.contains(">\nCPU hog\n</text>"));
        assert!(!svg.contains(FEWER_THREADS));
    }

    #[test]
    fn timeline_rejects_empty_input() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("t.svg");
        let names = point_names();
        let err = timeline_svg(&path, &timeline(&names, &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no runs"), "{err}");
        let empty = [TimelineRun {
            label: "r".into(),
            samples: vec![],
        }];
        let err = timeline_svg(&path, &timeline(&names, &empty))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no runs") || err.contains("has a sample"),
            "{err}"
        );
        assert!(!path.exists());
    }
}
