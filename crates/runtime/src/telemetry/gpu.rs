//! NVIDIA Jetson integrated-GPU telemetry: load and clock.
//!
//! The GPU is found as a devfreq device (`/sys/class/devfreq/17000000.ga10b` on Orin with
//! JetPack 5, `17000000.gpu` with JetPack 6, `17000000.gv11b` on Xavier), which gives the
//! clock in Hz; its load, in per-mille, is the `load` attribute of the GPU's platform device,
//! reached through the devfreq entry's `device` link. Older releases expose the load as
//! `/sys/devices/gpu.0/load`. Boards without such a GPU (Raspberry Pi, x86) report none; another
//! SoC's devfreq GPU (a Mali `*.gpu`) is reported with its clock and no load. Only reads.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::files;

/// devfreq names of Jetson integrated GPUs (JetPack 5 and older name them by chip).
const GPU_NAMES: [&str; 4] = ["gpu", "ga10b", "gv11b", "gp10b"];

/// Where the load lives when the devfreq entry has no `device/load`, relative to the root.
const LOAD_FALLBACKS: [&str; 2] = ["sys/devices/gpu.0", "sys/devices/platform/gpu.0"];

/// An integrated GPU's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Gpu {
    /// Busy fraction, 0..1 (the kernel's per-mille over 1000).
    pub load: Option<f64>,
    pub cur_freq_hz: Option<u64>,
    pub max_freq_hz: Option<u64>,
    /// The directory it was read from, relative to the root (e.g. `sys/class/devfreq/17000000.ga10b`).
    pub source: String,
}

pub(crate) fn read(root: &Path) -> Option<Gpu> {
    if let Some((name, dir)) = devfreq_entry(root) {
        let load = load_at(&dir.join("device"))
            .or_else(|| LOAD_FALLBACKS.iter().find_map(|d| load_at(&root.join(d))));
        return Some(Gpu {
            load,
            cur_freq_hz: files::number(&dir.join("cur_freq")),
            max_freq_hz: files::number(&dir.join("max_freq")),
            source: format!("sys/class/devfreq/{name}"),
        });
    }
    LOAD_FALLBACKS.iter().find_map(|dir| {
        let load = load_at(&root.join(dir))?;
        Some(Gpu {
            load: Some(load),
            cur_freq_hz: None,
            max_freq_hz: None,
            source: (*dir).to_owned(),
        })
    })
}

/// The first devfreq entry (by name) that is a Jetson GPU.
fn devfreq_entry(root: &Path) -> Option<(String, PathBuf)> {
    let entries = std::fs::read_dir(root.join("sys/class/devfreq")).ok()?;
    let mut gpus: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            GPU_NAMES
                .iter()
                .any(|gpu| name.contains(gpu))
                .then(|| (name, entry.path()))
        })
        .collect();
    gpus.sort();
    gpus.into_iter().next()
}

/// `load` in `dir` as a fraction; out-of-range values are treated as unreadable.
fn load_at(dir: &Path) -> Option<f64> {
    let per_mille: u32 = files::number(&dir.join("load"))?;
    (per_mille <= 1000).then(|| f64::from(per_mille) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn legacy_gpu0_load_without_devfreq() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sys/devices/gpu.0");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("load"), "500\n").unwrap();
        let gpu = read(root.path()).unwrap();
        assert_eq!(gpu.load, Some(0.5));
        assert_eq!(gpu.cur_freq_hz, None);
        assert_eq!(gpu.source, "sys/devices/gpu.0");
        fs::write(dir.join("load"), "1500\n").unwrap();
        assert_eq!(read(root.path()), None);
    }

    #[test]
    fn other_devfreq_devices_are_not_gpus() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sys/class/devfreq/15340000.vic");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cur_freq"), "115200000\n").unwrap();
        assert_eq!(read(root.path()), None);
    }
}
