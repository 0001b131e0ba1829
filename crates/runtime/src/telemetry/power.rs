//! Power telemetry from hwmon (`/sys/class/hwmon/hwmonN`): the INA3221 rail monitors of
//! NVIDIA Jetson modules, and the Raspberry Pi's under-voltage alarm (`rpi_volt`).
//!
//! The INA3221 driver labels its three channels (`inN_label`, N = 1..3) and reports bus
//! voltage (`inN_input`, mV) and current (`currN_input`, mA); power is their product.
//! Channels labelled `NC` are not connected. The module's input rail (`VDD_IN` on Orin,
//! `POM_5V_IN` on older Jetsons) is its total. Only reads.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::files;

/// Input rails that measure the whole module.
const TOTAL_RAILS: [&str; 2] = ["VDD_IN", "POM_5V_IN"];

/// Rails and the module's total draw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Power {
    /// INA3221 channels, by hwmon index then channel.
    pub rails: Vec<Rail>,
    /// The `VDD_IN` (or `POM_5V_IN`) rail's power; `None` without one.
    pub total_mw: Option<f64>,
}

/// One monitored power rail.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rail {
    /// The channel's label, e.g. `VDD_CPU_GPU_CV`.
    pub name: String,
    pub voltage_mv: Option<f64>,
    pub current_ma: Option<f64>,
    /// voltage x current / 1000.
    pub power_mw: Option<f64>,
}

pub(crate) fn read(root: &Path) -> Power {
    let rails: Vec<Rail> = hwmon_named(root, "ina3221")
        .flat_map(|dir| (1..=3).filter_map(move |channel| rail(&dir, channel)))
        .collect();
    let total_mw = rails
        .iter()
        .find(|r| TOTAL_RAILS.contains(&r.name.as_str()))
        .and_then(|r| r.power_mw);
    Power { rails, total_mw }
}

/// The Raspberry Pi firmware's under-voltage flag: `in0_lcrit_alarm` of `rpi_volt`.
pub(crate) fn undervoltage(root: &Path) -> Option<bool> {
    hwmon_named(root, "rpi_volt").find_map(|dir| {
        match files::number::<u8>(&dir.join("in0_lcrit_alarm"))? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    })
}

/// hwmon directories whose `name` is `name`, in index order.
fn hwmon_named<'a>(root: &Path, name: &'a str) -> impl Iterator<Item = PathBuf> + 'a {
    files::indexed(&root.join("sys/class/hwmon"), "hwmon")
        .into_iter()
        .map(|(_, dir)| dir)
        .filter(move |dir| files::text(&dir.join("name")).as_deref() == Some(name))
}

fn rail(dir: &Path, channel: u8) -> Option<Rail> {
    let name = files::text(&dir.join(format!("in{channel}_label")))?;
    if name.is_empty() || name.eq_ignore_ascii_case("NC") {
        return None;
    }
    let milli = |file: String| files::number::<i64>(&dir.join(file)).map(|v| v as f64);
    let voltage_mv = milli(format!("in{channel}_input"));
    let current_ma = milli(format!("curr{channel}_input"));
    Some(Rail {
        name,
        voltage_mv,
        current_ma,
        power_mw: voltage_mv.zip(current_ma).map(|(v, i)| v * i / 1000.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn hwmon(root: &Path, index: usize, files: &[(&str, &str)]) {
        let dir = root.join(format!("sys/class/hwmon/hwmon{index}"));
        fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn unconnected_and_unreadable_channels() {
        let root = tempfile::tempdir().unwrap();
        hwmon(
            root.path(),
            3,
            &[
                ("name", "ina3221\n"),
                ("in1_label", "VDD_GPU_SOC\n"),
                ("in1_input", "19000\n"),
                ("curr1_input", "bad\n"),
                ("in2_label", "NC\n"),
                ("in2_input", "0\n"),
                ("in7_label", "sum of shunt voltages\n"),
            ],
        );
        let power = read(root.path());
        assert_eq!(
            power.rails,
            [Rail {
                name: "VDD_GPU_SOC".into(),
                voltage_mv: Some(19000.0),
                current_ma: None,
                power_mw: None,
            }]
        );
        assert_eq!(power.total_mw, None);
    }

    #[test]
    fn undervoltage_alarm_values() {
        let root = tempfile::tempdir().unwrap();
        hwmon(
            root.path(),
            0,
            &[("name", "rpi_volt\n"), ("in0_lcrit_alarm", "1\n")],
        );
        assert_eq!(undervoltage(root.path()), Some(true));
        hwmon(root.path(), 0, &[("in0_lcrit_alarm", "2\n")]);
        assert_eq!(undervoltage(root.path()), None);
    }
}
