//! edgerun's tooling: benchmarks, their charts and the benchmark data.
//!
//! Each benchmark measures on this machine, prints a table and writes JSON; speed targets
//! live here, never in tests, and ratios are measured within one run. They drive the shipped
//! runtime ([`edgerun_runtime`]): `serve` over MQTT or the library functions it calls.
//! The runtime never depends on this crate (what a device serves needs no benchmark data).
//!
//! - [`data`]: the shared benchmark data (`EDGERUN_DATA`), for tests and benchmarks only.
//! - [`plot`]: SVG charts for benchmarks and profiles.

pub mod adapt;
pub mod data;
pub mod engines;
pub mod generate;
pub mod legal;
pub mod memory;
pub mod mqtt;
pub mod ocr;
pub mod plot;
pub mod points;
pub mod server;
pub mod startup;
pub mod throughput;

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

pub use edgerun_runtime::latency::{LatencyStats, percentile};

/// The machine a benchmark ran on, recorded with its results.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub logical_cores: usize,
    pub arch: &'static str,
    pub os: &'static str,
    /// What a process may hold here: the machine's memory, or this process's cgroup limit
    /// where lower ([`edgerun_runtime::telemetry::Memory::budget_kib`]); serving measures
    /// fewer points under a small one.
    pub memory_budget_mib: Option<f64>,
}

impl Machine {
    pub fn current() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            arch: std::env::consts::ARCH,
            os: std::env::consts::OS,
            memory_budget_mib: edgerun_runtime::telemetry::memory_budget_mib(),
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} logical cores, {}/{}",
            self.cpu, self.logical_cores, self.arch, self.os
        )?;
        if let Some(mib) = self.memory_budget_mib {
            write!(f, ", {mib:.0} MiB of memory")?;
        }
        write!(f, ")")
    }
}

pub use edgerun_runtime::telemetry::peak_rss_mib;

/// A plain-text table with aligned columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(
            cells.len(),
            self.header.len(),
            "table row does not match the header"
        );
        self.rows.push(cells);
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let columns = self.header.len();
        let width: Vec<usize> = (0..columns)
            .map(|c| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |f: &mut std::fmt::Formatter<'_>, cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&width)
                .map(|(s, w)| format!("{s:<w$}"))
                .collect();
            writeln!(f, "{}", padded.join("  ").trim_end())
        };
        line(f, &self.header)?;
        line(f, &width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>())?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

/// Writes `value` as pretty JSON, creating the folder.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    create_parent_dir(path)?;
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates the directory a result file goes into, so `--out some/new/dir/x.json` works.
fn create_parent_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["a", "long"]);
        t.row(vec!["xyz".into(), "1".into()]);
        assert_eq!(t.to_string(), "a    long\n---  ----\nxyz  1\n");
    }
}
