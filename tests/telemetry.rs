//! Telemetry read from captured-style procfs/sysfs trees (tests/fixtures/jetson-orin-nano,
//! tests/fixtures/raspberry-pi-5; see tests/fixtures/README.md), from an empty root, from
//! malformed files, and from this machine.
//!
//! Expected values are worked out by hand from the fixture files.

#![cfg(target_os = "linux")]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgerun::telemetry::{
    CoolingDevice, CoreFrequency, Monitor, Rail, Sampler, Snapshot, ThermalZone, TripPoint,
};
use tempfile::TempDir;

const ORIN: &str = "jetson-orin-nano";
const PI: &str = "raspberry-pi-5";

fn fixture(board: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(board)
}

/// A writable copy of a fixture tree, its relative symbolic links kept as links.
fn copy_of(board: &str) -> TempDir {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                let link = fs::read_link(entry.path()).unwrap();
                std::os::unix::fs::symlink(link, &target).unwrap();
            } else if kind.is_dir() {
                copy(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&fixture(board), dir.path());
    dir
}

/// Replaces a file in one step (write, then rename), so a concurrent reader never sees it
/// half-written.
fn replace(path: &Path, text: &str) {
    let staged = path.with_extension("staged");
    fs::write(&staged, text).unwrap();
    fs::rename(&staged, path).unwrap();
}

/// Moves the copy on to the fixture's second sample (`next/`).
fn advance(root: &Path) {
    for file in ["proc/self/stat", "proc/stat"] {
        let text = fs::read_to_string(root.join("next").join(file)).unwrap();
        replace(&root.join(file), &text);
    }
}

fn assert_close(actual: Option<f64>, expected: f64) {
    let actual = actual.unwrap_or_else(|| panic!("expected {expected}, got None"));
    assert!(
        (actual - expected).abs() < 1e-9,
        "expected {expected}, got {actual}"
    );
}

fn assert_all_close(actual: &[Option<f64>], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert_close(*a, *e);
    }
}

fn core(core: usize, cur: u64, max: u64, hw_max: u64, governor: &str) -> CoreFrequency {
    CoreFrequency {
        core,
        cur_khz: Some(cur),
        max_khz: Some(max),
        hw_max_khz: Some(hw_max),
        governor: Some(governor.into()),
    }
}

fn trip(kind: &str, temp_c: f64) -> TripPoint {
    TripPoint {
        kind: kind.into(),
        temp_c,
    }
}

fn rail(name: &str, voltage_mv: f64, current_ma: f64) -> Rail {
    Rail {
        name: name.into(),
        voltage_mv: Some(voltage_mv),
        current_ma: Some(current_ma),
        power_mw: Some(voltage_mv * current_ma / 1000.0),
    }
}

#[test]
fn orin_nano_first_sample() {
    let s = Sampler::new(fixture(ORIN)).sample();

    assert_eq!(s.cpu.cores, 6);
    let mut expected: Vec<CoreFrequency> = (0..4)
        .map(|c| core(c, 1_510_400, 1_510_400, 1_510_400, "schedutil"))
        .collect();
    // The second cluster (policy4: cpu4, cpu5) is capped below what the hardware can do.
    expected.extend((4..6).map(|c| core(c, 1_190_400, 1_190_400, 1_510_400, "schedutil")));
    assert_eq!(s.cpu.frequencies, expected);
    assert_close(
        s.frequency_cap(),
        (4.0 + 2.0 * 1_190_400.0 / 1_510_400.0) / 6.0,
    );
    assert!(s.throttled(), "a capped cluster counts as throttled");

    // No previous sample: nothing relative to it.
    assert_eq!(s.cpu.utilisation, None);
    assert_eq!(s.cpu.per_core_utilisation, vec![None; 6]);
    assert_eq!(s.cpu.own_cores, None);
    assert_eq!(s.cpu.other_busy_cores, None);

    assert_eq!(s.memory.total_kib, Some(7_763_620));
    assert_eq!(s.memory.available_kib, Some(5_894_312));
    assert_eq!(s.memory.own_rss_kib, Some(398_212));
    assert_eq!(s.memory.own_peak_rss_kib, Some(412_880));

    let throttle = vec![trip("critical", 104.5), trip("passive", 99.0)];
    let zone = |index, kind: &str, temp_c, trips: &[TripPoint]| ThermalZone {
        index,
        kind: kind.into(),
        temp_c: Some(temp_c),
        trips: trips.to_vec(),
    };
    let tj_trips = vec![
        trip("critical", 104.5),
        trip("active", 46.0),
        trip("active", 60.0),
        trip("active", 80.0),
    ];
    assert_eq!(
        s.thermal,
        [
            zone(0, "cpu-thermal", 47.5, &throttle),
            zone(1, "gpu-thermal", 46.312, &throttle),
            zone(2, "soc0-thermal", 45.843, &throttle),
            zone(3, "tj-thermal", 48.093, &tj_trips),
        ]
    );
    // cpu-thermal is closest to its passive trip: 99 - 47.5. (tj-thermal has only
    // active trips and a critical one: 104.5 - 48.093, further away.)
    assert_eq!(s.hottest_margin_c(), Some(51.5));

    assert_eq!(
        s.cooling,
        [CoolingDevice {
            index: 0,
            kind: "pwm-fan".into(),
            cur_state: Some(3),
            max_state: Some(10),
        }]
    );

    let gpu = s.gpu.as_ref().expect("Orin has a GPU");
    assert_close(gpu.load, 0.253);
    assert_eq!(gpu.cur_freq_hz, Some(306_000_000));
    assert_eq!(gpu.max_freq_hz, Some(624_750_000));
    assert_eq!(gpu.source, "sys/class/devfreq/17000000.ga10b");

    assert_eq!(
        s.power.rails,
        [
            rail("VDD_IN", 5032.0, 968.0),
            rail("VDD_CPU_GPU_CV", 5024.0, 184.0),
            rail("VDD_SOC", 5024.0, 288.0),
        ]
    );
    assert_close(s.power.total_mw, 5032.0 * 968.0 / 1000.0);
    assert_eq!(s.undervoltage, None);
}

#[test]
fn orin_nano_second_sample_gives_utilisation_and_own_share() {
    let root = copy_of(ORIN);
    let mut sampler = Sampler::new(root.path());
    let first = sampler.sample();
    assert_eq!(first.cpu.utilisation, None);
    advance(root.path());
    let s = sampler.sample();

    // Per core, 100 ticks passed; busy (all but idle and iowait): 60 25 10 5 100 0.
    assert_all_close(
        &s.cpu.per_core_utilisation,
        &[0.6, 0.25, 0.1, 0.05, 1.0, 0.0],
    );
    assert_close(s.cpu.utilisation, 200.0 / 600.0);
    // utime +124, stime +26: 150 ticks, while one core had 600 / 6 = 100.
    assert_close(s.cpu.own_cores, 1.5);
    // 200 busy ticks are 2 cores' worth; this process was 1.5 of them.
    assert_close(s.cpu.other_busy_cores, 0.5);

    // Sampling again without change: no ticks passed, so no utilisation (not zero).
    let again = sampler.sample();
    assert_eq!(again.cpu.utilisation, None);
    assert_eq!(again.cpu.own_cores, None);
}

#[test]
fn raspberry_pi_5_first_sample() {
    let s = Sampler::new(fixture(PI)).sample();

    assert_eq!(s.cpu.cores, 4);
    let expected: Vec<CoreFrequency> = (0..4)
        .map(|c| core(c, 1_500_000, 2_400_000, 2_400_000, "ondemand"))
        .collect();
    assert_eq!(s.cpu.frequencies, expected);
    assert_eq!(s.frequency_cap(), Some(1.0));

    assert_eq!(s.memory.total_kib, Some(8_245_952));
    assert_eq!(s.memory.available_kib, Some(7_398_016));
    assert_eq!(s.memory.own_rss_kib, Some(288_516));
    assert_eq!(s.memory.own_peak_rss_kib, Some(301_244));
    // A unit with `MemoryMax=512M` under a slice without a limit: the budget is the unit's.
    assert_eq!(s.memory.limit_kib, Some(524_288));
    assert_eq!(s.memory.budget_kib(), Some(524_288));

    assert_eq!(
        s.thermal,
        [ThermalZone {
            index: 0,
            kind: "cpu-thermal".into(),
            temp_c: Some(52.65),
            trips: vec![
                trip("critical", 110.0),
                trip("active", 50.0),
                trip("active", 60.0),
                trip("active", 67.5),
                trip("active", 75.0),
            ],
        }]
    );
    // Only fan (active) trips and a critical one: the margin is to critical.
    assert_close(s.hottest_margin_c(), 110.0 - 52.65);
    assert_eq!(
        s.cooling,
        [CoolingDevice {
            index: 0,
            kind: "pwm-fan".into(),
            cur_state: Some(1),
            max_state: Some(4),
        }]
    );
    // A spinning fan is not CPU throttling, and nothing caps the clock.
    assert!(!s.throttled());

    assert_eq!(s.gpu, None);
    assert!(s.power.rails.is_empty());
    assert_eq!(s.power.total_mw, None);
    assert_eq!(s.undervoltage, Some(false));

    // Absent is null in JSON, not 0.
    let json = serde_json::to_value(&s).unwrap();
    assert!(json["gpu"].is_null());
    assert!(json["power"]["total_mw"].is_null());
    assert!(json["cpu"]["utilisation"].is_null());
    assert_eq!(json["undervoltage"], false);
}

#[test]
fn raspberry_pi_5_second_sample_with_an_odd_command_name() {
    // proc/self/stat names the command "edge (run) 2": fields count from the last ')'.
    let root = copy_of(PI);
    let mut sampler = Sampler::new(root.path());
    sampler.sample();
    advance(root.path());
    let s = sampler.sample();

    assert_all_close(&s.cpu.per_core_utilisation, &[0.5, 0.3, 0.2, 0.0]);
    assert_close(s.cpu.utilisation, 0.25);
    // utime +65, stime +15: 80 ticks against 400 / 4 = 100 per core.
    assert_close(s.cpu.own_cores, 0.8);
    assert_close(s.cpu.other_busy_cores, 0.25 * 4.0 - 0.8);
}

#[test]
fn empty_root_reports_everything_absent() {
    let root = tempfile::tempdir().unwrap();
    for dir in [
        root.path().to_path_buf(),
        root.path().join("does-not-exist"),
    ] {
        let mut sampler = Sampler::new(&dir);
        for _ in 0..2 {
            let s = sampler.sample();
            assert_eq!(s, Snapshot::default());
            assert_eq!(s.cpu.cores, 0);
            assert_eq!(s.memory.total_kib, None);
            assert_eq!(s.hottest_margin_c(), None);
            assert_eq!(s.frequency_cap(), None);
            assert!(!s.throttled());
        }
    }
}

#[test]
fn malformed_values_are_absent() {
    let root = copy_of(ORIN);
    let r = root.path();
    let sys = |p: &str| r.join("sys").join(p);
    fs::write(sys("class/thermal/thermal_zone0/temp"), "garbage\n").unwrap();
    fs::write(sys("class/thermal/cooling_device0/cur_state"), "-1\n").unwrap();
    fs::write(
        sys("devices/system/cpu/cpufreq/policy4/scaling_max_freq"),
        "",
    )
    .unwrap();
    fs::write(sys("devices/platform/17000000.ga10b/load"), "n/a\n").unwrap();
    fs::write(sys("class/hwmon/hwmon1/in1_input"), "5.0V\n").unwrap();
    fs::write(r.join("proc/meminfo"), "MemTotal: lots kB\nMemAvailable:\n").unwrap();
    fs::write(r.join("proc/self/stat"), "4242 (edgerun) S 1 2").unwrap();
    fs::write(r.join("proc/stat"), "cpu  1 2 x 4\ncpu0 1 2\n").unwrap();

    let mut sampler = Sampler::new(r);
    sampler.sample();
    advance(r);
    let s = sampler.sample();

    assert_eq!(s.thermal[0].temp_c, None);
    assert_eq!(s.thermal[1].temp_c, Some(46.312));
    assert_eq!(s.cooling[0].cur_state, None);
    assert_eq!(s.cpu.frequencies[4].max_khz, None);
    assert_eq!(s.cpu.frequencies[4].cur_khz, Some(1_190_400));
    // Only cpu0..3 have both limits now, and they are uncapped.
    assert_eq!(s.frequency_cap(), Some(1.0));
    let gpu = s.gpu.unwrap();
    assert_eq!(gpu.load, None);
    assert_eq!(gpu.cur_freq_hz, Some(306_000_000));
    assert_eq!(s.power.rails[0].voltage_mv, None);
    assert_eq!(s.power.rails[0].power_mw, None);
    assert_eq!(s.power.total_mw, None, "VDD_IN has no power, so no total");
    assert_eq!(s.memory.total_kib, None);
    assert_eq!(s.memory.available_kib, None);
    // The previous counters were unreadable: no utilisation from them.
    assert_eq!(s.cpu.utilisation, None);
    assert_eq!(s.cpu.own_cores, None);
    assert_eq!(s.cpu.cores, 6);
}

#[test]
fn live_machine_has_cores_and_memory() {
    let mut sampler = Sampler::live();
    let s = sampler.sample();
    assert!(s.cpu.cores >= 1, "{:?}", s.cpu);
    assert!(s.memory.total_kib.is_some_and(|kib| kib > 0));
    // Utilisation only from the second sample on; whatever it is, it is a fraction.
    let s = sampler.sample();
    if let Some(u) = s.cpu.utilisation {
        assert!((0.0..=1.0).contains(&u), "{u}");
    }
}

#[test]
fn monitor_has_a_snapshot_at_once_and_stops_promptly() {
    let started = Instant::now();
    let monitor = Monitor::start(Sampler::new(fixture(PI)), Duration::from_secs(3600));
    assert_eq!(monitor.latest().cpu.cores, 4);
    assert_eq!(monitor.latest().undervoltage, Some(false));
    drop(monitor);
    // Dropping does not wait out the hour.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn monitor_keeps_sampling() {
    let root = copy_of(ORIN);
    // Long enough that a snapshot showing the change stays the latest while polled.
    let monitor = Monitor::start(Sampler::new(root.path()), Duration::from_millis(100));
    let first = monitor.latest();
    assert_eq!(first.cpu.cores, 6);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Arc::ptr_eq(&first, &monitor.latest()) {
        assert!(Instant::now() < deadline, "no new snapshot");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Once the counters move, a later snapshot shows it.
    advance(root.path());
    while monitor.latest().cpu.utilisation.is_none() {
        assert!(Instant::now() < deadline, "no utilisation");
        std::thread::sleep(Duration::from_millis(1));
    }
}
