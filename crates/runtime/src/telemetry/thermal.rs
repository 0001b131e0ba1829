//! Thermal telemetry from the Linux thermal framework (`/sys/class/thermal`): zone
//! temperatures with their trip points, and the state of cooling devices (fans, cpufreq
//! cooling). Temperatures arrive in millidegrees Celsius and leave as degrees.
//!
//! Reads only: which margin counts as too hot is decided in [`super::Snapshot`]'s helpers
//! and by the controller.

use std::path::Path;

use serde::Serialize;

use super::files;

/// Trip points beyond this index are not looked for (the kernel numbers them densely).
const MAX_TRIPS: usize = 64;

/// One thermal zone (`thermal_zoneN`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ThermalZone {
    pub index: usize,
    /// `type`, e.g. `cpu-thermal`; empty when unreadable.
    pub kind: String,
    pub temp_c: Option<f64>,
    /// Trip points with a readable temperature, in the kernel's order.
    pub trips: Vec<TripPoint>,
}

/// A temperature at which the kernel acts: `active` (fans), `passive` (throttling), `hot`,
/// `critical` (shutdown).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TripPoint {
    pub kind: String,
    pub temp_c: f64,
}

/// One cooling device (`cooling_deviceN`): a fan, or a cpufreq/devfreq clamp.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CoolingDevice {
    pub index: usize,
    /// `type`, e.g. `pwm-fan` or `cpufreq-cpu0`; empty when unreadable.
    pub kind: String,
    /// 0 is no cooling; `max_state` is the strongest.
    pub cur_state: Option<u64>,
    pub max_state: Option<u64>,
}

pub(crate) fn zones(root: &Path) -> Vec<ThermalZone> {
    files::indexed(&root.join("sys/class/thermal"), "thermal_zone")
        .into_iter()
        .map(|(index, dir)| ThermalZone {
            index,
            kind: files::text(&dir.join("type")).unwrap_or_default(),
            temp_c: millidegrees(&dir.join("temp")),
            trips: (0..MAX_TRIPS)
                .map_while(|n| {
                    let kind = files::text(&dir.join(format!("trip_point_{n}_type")))?;
                    Some((
                        kind,
                        millidegrees(&dir.join(format!("trip_point_{n}_temp"))),
                    ))
                })
                .filter_map(|(kind, temp)| {
                    Some(TripPoint {
                        kind,
                        temp_c: temp?,
                    })
                })
                .collect(),
        })
        .collect()
}

pub(crate) fn cooling_devices(root: &Path) -> Vec<CoolingDevice> {
    files::indexed(&root.join("sys/class/thermal"), "cooling_device")
        .into_iter()
        .map(|(index, dir)| CoolingDevice {
            index,
            kind: files::text(&dir.join("type")).unwrap_or_default(),
            cur_state: files::number(&dir.join("cur_state")),
            max_state: files::number(&dir.join("max_state")),
        })
        .collect()
}

fn millidegrees(path: &Path) -> Option<f64> {
    files::number::<i64>(path).map(|m| m as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn zones_sort_numerically_and_skip_unreadable_trips() {
        let root = tempfile::tempdir().unwrap();
        let thermal = root.path().join("sys/class/thermal");
        for (zone, kind, temp) in [(10, "b", "30000"), (2, "a", "not a number")] {
            let dir = thermal.join(format!("thermal_zone{zone}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
            fs::write(dir.join("temp"), temp).unwrap();
            fs::write(dir.join("trip_point_0_type"), "critical\n").unwrap();
            fs::write(dir.join("trip_point_0_temp"), "105000\n").unwrap();
            fs::write(dir.join("trip_point_1_type"), "passive\n").unwrap();
        }
        let zones = zones(root.path());
        assert_eq!(zones.len(), 2);
        assert_eq!((zones[0].index, zones[0].kind.as_str()), (2, "a"));
        assert_eq!(zones[0].temp_c, None);
        assert_eq!((zones[1].index, zones[1].temp_c), (10, Some(30.0)));
        assert_eq!(
            zones[1].trips,
            [TripPoint {
                kind: "critical".into(),
                temp_c: 105.0
            }]
        );
    }
}
