//! Measuring a service's points within the memory the process may hold: the default point
//! runs first, and a further point runs only while the process's peak is below
//! `MEASURING_SHARE` of the budget. The service here is made up: each point touches a
//! known amount of memory, so that the peak moves by what the test says. It has a process
//! of its own (this file holds one test), so nothing else moves the peak meanwhile.

use std::collections::HashMap;
use std::sync::Mutex;

use edgerun::models::{Manifest, PointSet};
use edgerun::profiler::{MEASURING_SHARE, ProfileSettings, Sample, profile_service};
use edgerun::services::{Handled, Output, Payload, Served, Service, ServiceError, Serving};
use edgerun::telemetry::peak_rss_mib;
use serde_json::{Value, json};

/// Three points, cheapest first as manifests list them; `default` is the default point.
const MANIFEST: &str = r#"
service = "hungry"
files = []
default_point = "default"
slo_ms = 1000.0

[[points]]
name = "small"
quality = 0.3

[[points]]
name = "default"
quality = 0.5

[[points]]
name = "large"
quality = 0.8
"#;

const MIB: usize = 1 << 20;

/// Runs each point by writing to a fresh buffer of the point's size, and counts the runs.
struct Hungry {
    points: PointSet,
    runs: Mutex<HashMap<String, usize>>,
}

impl Hungry {
    fn new() -> Hungry {
        let manifest = Manifest::parse(MANIFEST).unwrap();
        Hungry {
            points: PointSet::from_manifest(&manifest).unwrap().unwrap(),
            runs: Mutex::new(HashMap::new()),
        }
    }

    fn runs(&self, point: &str) -> usize {
        self.runs.lock().unwrap().get(point).copied().unwrap_or(0)
    }
}

impl Service for Hungry {
    fn name(&self) -> &'static str {
        "hungry"
    }

    fn answer(
        &self,
        _content_type: Option<&str>,
        _payload: &Payload,
        serving: Serving<'_>,
    ) -> Result<Handled, ServiceError> {
        let point = serving.point.unwrap_or("default");
        let touched = match point {
            "default" => 8 * MIB,
            "small" => 64 * MIB,
            _ => MIB,
        };
        // Written, not only reserved: every page becomes resident.
        let buffer = std::hint::black_box(vec![1u8; touched]);
        drop(buffer);
        *self
            .runs
            .lock()
            .unwrap()
            .entry(point.to_string())
            .or_default() += 1;
        Ok(Handled {
            output: Output::Json(json!({"point": point})),
            served: Served::default(),
        })
    }

    fn points(&self) -> Option<&PointSet> {
        Some(&self.points)
    }

    fn describe(&self) -> Value {
        json!({})
    }
}

fn settings(memory_budget_mib: Option<f64>) -> ProfileSettings {
    ProfileSettings {
        rounds: 1,
        progress: false,
        skip_dominated: false,
        memory_budget_mib,
    }
}

fn names(points: &[edgerun::policy::ProfiledPoint]) -> Vec<&str> {
    points.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn measuring_leaves_out_the_points_past_the_memory_budget() {
    let samples = [Sample {
        content_type: None,
        payload: Payload::Json(json!({})),
    }];
    // Room until the peak is 32 MiB above where it is now: the default point (8 MiB)
    // leaves room, `small` (64 MiB) uses it up, so `large` is never run.
    let service = Hungry::new();
    let peak = peak_rss_mib().expect("Linux reports the peak resident set");
    let budget = (peak + 32.0) / MEASURING_SHARE;
    let measured = profile_service(&service, &samples, settings(Some(budget)), None).unwrap();
    assert_eq!(names(&measured), ["small", "default"]);
    // A warm-up run and one timed round each.
    assert_eq!(service.runs("default"), 2);
    assert_eq!(service.runs("small"), 2);
    assert_eq!(service.runs("large"), 0);

    // No budget known: every point.
    let service = Hungry::new();
    let measured = profile_service(&service, &samples, settings(None), None).unwrap();
    assert_eq!(names(&measured), ["small", "default", "large"]);
    assert_eq!(service.runs("large"), 2);

    // No room even for the default point: a clear error, and nothing run.
    let service = Hungry::new();
    let error = profile_service(&service, &samples, settings(Some(1.0)), None).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("no room in memory to measure any point"),
        "{error:#}"
    );
    assert_eq!(service.runs("default") + service.runs("small"), 0);
}
