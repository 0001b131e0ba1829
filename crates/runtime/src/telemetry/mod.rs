//! Live device telemetry read from procfs and sysfs: CPU load and clocks, memory, thermal
//! zones and cooling, the Jetson GPU, power rails and the Raspberry Pi's under-voltage flag.
//!
//! Everything is read under a configurable root (`/` on a device, a fixture tree in tests),
//! so one [`Sampler`] serves Jetson, Raspberry Pi and x86 alike. A source that is missing or
//! unparsable is reported as absent (`None`, an empty list), never as zero, and never
//! panics. [`Monitor`] samples on a background thread.
//!
//! This module measures; it does not decide. The few derived figures on [`Snapshot`]
//! (thermal margin, frequency cap, throttling) summarise what the kernel reports and leave
//! what to do about them to the controller.

mod cpu;
mod files;
mod gpu;
mod memory;
mod monitor;
mod power;
mod thermal;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use cpu::{CoreFrequency, Cpu};
pub use gpu::Gpu;
pub use memory::{Memory, Resident, memory_budget_mib, peak_rss_mib, resident};
pub use monitor::Monitor;
pub use power::{Power, Rail};
pub use thermal::{CoolingDevice, ThermalZone, TripPoint};

/// Below this, [`Snapshot::frequency_cap`] counts as capped.
const CAPPED_BELOW: f64 = 0.999;

/// Reads snapshots under one root; keeps the previous CPU counters for utilisation deltas.
#[derive(Debug)]
pub struct Sampler {
    root: PathBuf,
    previous: Option<cpu::Counters>,
}

impl Sampler {
    /// A sampler reading `root/proc/...` and `root/sys/...`.
    pub fn new(root: impl Into<PathBuf>) -> Sampler {
        Sampler {
            root: root.into(),
            previous: None,
        }
    }

    /// This machine's own `/proc` and `/sys`.
    pub fn live() -> Sampler {
        Sampler::new("/")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads everything once. CPU utilisation and own use are relative to the previous
    /// call, so the first snapshot has none.
    pub fn sample(&mut self) -> Snapshot {
        let root = self.root.as_path();
        Snapshot {
            cpu: cpu::read(root, &mut self.previous),
            memory: memory::read(root),
            thermal: thermal::zones(root),
            cooling: thermal::cooling_devices(root),
            gpu: gpu::read(root),
            power: power::read(root),
            undervoltage: power::undervoltage(root),
        }
    }
}

/// Everything one sample read.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    pub cpu: Cpu,
    pub memory: Memory,
    /// Thermal zones by index.
    pub thermal: Vec<ThermalZone>,
    /// Cooling devices by index.
    pub cooling: Vec<CoolingDevice>,
    /// The Jetson integrated GPU; `None` elsewhere.
    pub gpu: Option<Gpu>,
    pub power: Power,
    /// Raspberry Pi under-voltage detected (`rpi_volt`); `None` elsewhere.
    pub undervoltage: Option<bool>,
}

impl Snapshot {
    /// How many degrees the closest zone is from its throttling point: per zone the lowest
    /// `passive` or `hot` trip (else the lowest `critical`) minus its temperature, the
    /// smallest over zones. Negative when past it; `None` when no zone has both a
    /// temperature and such a trip.
    pub fn hottest_margin_c(&self) -> Option<f64> {
        self.thermal
            .iter()
            .filter_map(|zone| {
                let temp = zone.temp_c?;
                let lowest = |kinds: &[&str]| {
                    zone.trips
                        .iter()
                        .filter(|t| kinds.contains(&t.kind.as_str()))
                        .map(|t| t.temp_c)
                        .min_by(f64::total_cmp)
                };
                let limit = lowest(&["passive", "hot"]).or_else(|| lowest(&["critical"]))?;
                Some(limit - temp)
            })
            .min_by(f64::total_cmp)
    }

    /// Mean over cores of `scaling_max_freq / cpuinfo_max_freq`: 1.0 when nothing limits
    /// the clock, below 1 when a power mode, thermal or user cap does. `None` when no core
    /// reports both.
    pub fn frequency_cap(&self) -> Option<f64> {
        let ratios: Vec<f64> = self
            .cpu
            .frequencies
            .iter()
            .filter_map(|f| match (f.max_khz, f.hw_max_khz) {
                (Some(max), Some(hw)) if hw > 0 => Some(max as f64 / hw as f64),
                _ => None,
            })
            .collect();
        (!ratios.is_empty()).then(|| ratios.iter().sum::<f64>() / ratios.len() as f64)
    }

    /// Whether the CPU is held back now: a processor cooling device (type `cpufreq*`,
    /// `thermal-cpufreq*`, `cpu*`) is engaged, or [`Snapshot::frequency_cap`] is below 1.
    pub fn throttled(&self) -> bool {
        let cooling = self.cooling.iter().any(|device| {
            let kind = device.kind.as_str();
            let processor = ["cpufreq", "thermal-cpufreq", "cpu"]
                .iter()
                .any(|prefix| kind.starts_with(prefix));
            processor && device.cur_state.is_some_and(|state| state > 0)
        });
        cooling || self.frequency_cap().is_some_and(|cap| cap < CAPPED_BELOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(temp_c: Option<f64>, trips: &[(&str, f64)]) -> ThermalZone {
        ThermalZone {
            index: 0,
            kind: "z".into(),
            temp_c,
            trips: trips
                .iter()
                .map(|&(kind, temp_c)| TripPoint {
                    kind: kind.into(),
                    temp_c,
                })
                .collect(),
        }
    }

    #[test]
    fn margin_prefers_throttling_trips_over_critical() {
        let snapshot = Snapshot {
            thermal: vec![
                zone(
                    Some(50.0),
                    &[("critical", 105.0), ("passive", 95.0), ("hot", 100.0)],
                ),
                zone(Some(60.0), &[("critical", 110.0), ("active", 65.0)]),
                zone(None, &[("passive", 10.0)]),
                zone(Some(90.0), &[("active", 91.0)]),
            ],
            ..Snapshot::default()
        };
        assert_eq!(snapshot.hottest_margin_c(), Some(45.0));
        assert_eq!(Snapshot::default().hottest_margin_c(), None);
    }

    #[test]
    fn throttled_by_processor_cooling_devices_only() {
        let device = |kind: &str, cur_state| CoolingDevice {
            index: 0,
            kind: kind.into(),
            cur_state,
            max_state: Some(10),
        };
        let mut snapshot = Snapshot {
            cooling: vec![device("pwm-fan", Some(5)), device("cpufreq-cpu0", Some(0))],
            ..Snapshot::default()
        };
        assert!(!snapshot.throttled());
        snapshot.cooling.push(device("thermal-cpufreq-0", Some(2)));
        assert!(snapshot.throttled());
        snapshot.cooling = vec![device("cpu-balanced", None)];
        assert!(!snapshot.throttled());
    }
}
