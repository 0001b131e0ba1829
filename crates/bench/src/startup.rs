//! `edgerun bench startup`: zero configuration, measured from outside. `edgerun serve`
//! (this binary, with the same global flags) starts with an empty profile cache and the
//! services asked for, on its embedded broker; requests go to the services in turn, one at
//! a time, timed at the client, while the server measures its points in the background.
//! The report says when each service's status first said adaptive (and its `slo_ms`), and
//! that every request meanwhile was answered. Nothing here serves or decides.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::server::{DEVICE, Server, ServerSpec, policy_of};
use super::{Machine, Table, write_json};
use edgerun_runtime::latency::LatencyStats;
use edgerun_runtime::mqtt::client::Reply;
use edgerun_runtime::profiler::Sample;

#[derive(Debug, Clone)]
pub struct StartupSettings {
    pub services: Vec<String>,
    /// Those of `services` with operating points: the ones that must become adaptive.
    pub elastic: Vec<String>,
    /// The profile cache; removed first.
    pub profile: PathBuf,
    pub global_args: Vec<String>,
    /// How long to wait for every service to become adaptive.
    pub within: Duration,
    pub out: PathBuf,
}

/// One service's start.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStartup {
    pub service: String,
    /// Its target, as its status published it.
    pub slo_ms: Option<f64>,
    /// Seconds from starting the server to the first status saying adaptive.
    pub adaptive_after_s: Option<f64>,
    pub requests: usize,
    /// Requests answered with a result (not an error, not lost).
    pub answered: usize,
    pub errors: Vec<String>,
    pub latency: LatencyStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct StartupReport {
    pub machine: Machine,
    /// Seconds from starting the server to its first `online` status.
    pub online_after_s: Option<f64>,
    pub all_adaptive_after_s: Option<f64>,
    pub services: Vec<ServiceStartup>,
}

/// Starts the server with an empty cache and sends `requests` (service, request), cycled,
/// until every service is adaptive or `settings.within` has passed.
pub fn run(requests: &[(String, Sample)], settings: &StartupSettings) -> Result<StartupReport> {
    anyhow::ensure!(!requests.is_empty(), "no requests");
    let machine = Machine::current();
    if settings.profile.exists() {
        std::fs::remove_file(&settings.profile)?;
    }
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    eprintln!(
        "machine: {machine}; starting {} with an empty profile cache",
        settings.services.join(",")
    );
    let report = tokio.block_on(measure(requests, settings, machine))?;
    print!("{}", report_text(&report));
    write_json(&settings.out, &report)?;
    eprintln!("wrote {}", settings.out.display());
    Ok(report)
}

async fn measure(
    requests: &[(String, Sample)],
    settings: &StartupSettings,
    machine: Machine,
) -> Result<StartupReport> {
    let spec = ServerSpec {
        services: settings.services.join(","),
        slo: None,
        profile: settings.profile.clone(),
        global_args: settings.global_args.clone(),
        serve_args: Vec::new(),
        log: settings.out.with_extension("serve.log"),
    };
    let started = Instant::now();
    let server = Server::spawn(&spec)?;
    let mut watcher = server.watch("startup-watch", "status").await?;
    let mut client = server.connect("startup-client").await?;
    let mut services: Vec<ServiceStartup> = settings
        .services
        .iter()
        .map(|name| ServiceStartup {
            service: name.clone(),
            slo_ms: None,
            adaptive_after_s: None,
            requests: 0,
            answered: 0,
            errors: Vec::new(),
            latency: LatencyStats::of(&[]),
        })
        .collect();
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); services.len()];
    let mut online_after_s = None;
    let elastic = |s: &ServiceStartup| settings.elastic.contains(&s.service);
    let mut next = 0usize;
    while started.elapsed() < settings.within {
        // What the statuses said since the last request.
        while let Some((_, status)) = watcher.next_answer(Duration::from_millis(1)).await {
            if status["online"] != true {
                continue;
            }
            let at = started.elapsed().as_secs_f64();
            online_after_s.get_or_insert(at);
            for s in &mut services {
                let policy = policy_of(&status, &s.service);
                s.slo_ms = s.slo_ms.or(policy["slo_ms"].as_f64());
                if policy["adaptive"] == true {
                    s.adaptive_after_s.get_or_insert(at);
                }
            }
        }
        if services
            .iter()
            .filter(|s| elastic(s))
            .all(|s| s.adaptive_after_s.is_some())
        {
            break;
        }
        let (service, sample) = &requests[next % requests.len()];
        let id = next.to_string();
        next += 1;
        let Some(index) = services.iter().position(|s| &s.service == service) else {
            continue;
        };
        let payload = sample.wire_bytes();
        let topic = format!("edgerun/{DEVICE}/{service}/request");
        let sent = Instant::now();
        client
            .send(&topic, &id, payload, sample.content_type.as_deref(), None)
            .await?;
        let answer = loop {
            match client.next_answer(Duration::from_secs(60)).await {
                Some((answer_id, body)) if answer_id == id => break Some(body),
                Some(_) => continue,
                None => break None,
            }
        };
        let s = &mut services[index];
        s.requests += 1;
        match answer.as_ref().map(Reply::of) {
            None => s.errors.push("no answer within 60 s".into()),
            Some(Reply { error: Some(e), .. }) => s.errors.push(e.code),
            Some(_) => {
                s.answered += 1;
                latencies[index].push(sent.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    client.disconnect().await;
    watcher.disconnect().await;
    server.stop();
    for (s, l) in services.iter_mut().zip(&latencies) {
        s.latency = LatencyStats::of(l);
    }
    let all_adaptive_after_s = services
        .iter()
        .filter(|s| elastic(s))
        .map(|s| s.adaptive_after_s)
        .try_fold(0.0f64, |max, t| t.map(|t| max.max(t)));
    Ok(StartupReport {
        machine,
        online_after_s,
        all_adaptive_after_s,
        services,
    })
}

pub fn report_text(report: &StartupReport) -> String {
    let mut table = Table::new(&[
        "service",
        "slo ms",
        "adaptive after s",
        "requests",
        "answered",
        "errors",
        "p50 ms",
        "p95 ms",
    ]);
    for s in &report.services {
        table.row(vec![
            s.service.clone(),
            s.slo_ms.map_or("-".into(), |ms| format!("{ms:.0}")),
            s.adaptive_after_s.map_or("-".into(), |t| format!("{t:.1}")),
            s.requests.to_string(),
            s.answered.to_string(),
            s.errors.len().to_string(),
            format!("{:.0}", s.latency.median_ms),
            format!("{:.0}", s.latency.p95_ms),
        ]);
    }
    let when = |t: Option<f64>| t.map_or("never".into(), |t| format!("{t:.1} s"));
    format!(
        "machine: {}\nonline after {}; every service adaptive after {}\n{table}",
        report.machine,
        when(report.online_after_s),
        when(report.all_adaptive_after_s),
    )
}
