//! CPU telemetry: utilisation from `/proc/stat` deltas, this process's share from
//! `/proc/self/stat`, and per-core frequency limits and governors from cpufreq in sysfs.
//!
//! Utilisation needs two samples, so the caller keeps the [`Counters`] of the previous one.
//! Every ratio is between tick counts of the same kernel clock, so neither a wall clock nor
//! USER_HZ is needed. Nothing here decides what a busy or capped CPU means for the runtime.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::files;

/// CPU load and frequency state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cpu {
    /// Cores the kernel knows (`sys/devices/system/cpu/cpuN`, else the `cpuN` lines of
    /// `proc/stat`); 0 when neither can be read.
    pub cores: usize,
    /// Busy fraction of all online cores since the previous sample, 0..1; `None` on the
    /// first sample or when the counters did not advance.
    pub utilisation: Option<f64>,
    /// Busy fraction per core since the previous sample, in the order of `frequencies`
    /// (ascending core index).
    pub per_core_utilisation: Vec<Option<f64>>,
    /// How many cores' worth of CPU time this process used since the previous sample.
    pub own_cores: Option<f64>,
    /// How many cores' worth everything else used: `utilisation * online cores - own_cores`,
    /// never below 0.
    pub other_busy_cores: Option<f64>,
    /// Frequency limits and governor per core, in ascending core index.
    pub frequencies: Vec<CoreFrequency>,
}

/// One core's cpufreq state (all frequencies in kHz).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CoreFrequency {
    pub core: usize,
    /// `scaling_cur_freq`.
    pub cur_khz: Option<u64>,
    /// `scaling_max_freq`: the limit in force now (power mode, thermal or user caps).
    pub max_khz: Option<u64>,
    /// `cpuinfo_max_freq`: what the hardware can do.
    pub hw_max_khz: Option<u64>,
    /// `scaling_governor`.
    pub governor: Option<String>,
}

/// Tick counters of one `cpu` line of `/proc/stat`, split into busy and idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticks {
    /// user + nice + system + irq + softirq + steal.
    busy: u64,
    /// idle + iowait.
    idle: u64,
}

/// What one sample keeps for the next: the `/proc/stat` counters and this process's ticks.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counters {
    aggregate: Option<Ticks>,
    cores: BTreeMap<usize, Ticks>,
    own_ticks: Option<u64>,
}

/// Reads the CPU state under `root`; `previous` is the last sample's counters and is
/// replaced by this sample's.
pub(crate) fn read(root: &Path, previous: &mut Option<Counters>) -> Cpu {
    let mut now = files::text(&root.join("proc/stat"))
        .map(|text| parse_stat(&text))
        .unwrap_or_default();
    now.own_ticks = files::text(&root.join("proc/self/stat")).and_then(|t| parse_own_ticks(&t));

    let cpu_dir = root.join("sys/devices/system/cpu");
    let mut indices: Vec<usize> = files::indexed(&cpu_dir, "cpu")
        .into_iter()
        .filter(|(_, path)| path.is_dir())
        .map(|(index, _)| index)
        .collect();
    if indices.is_empty() {
        indices = now.cores.keys().copied().collect();
    }

    let frequencies = indices
        .iter()
        .map(|&core| {
            let dir = cpu_dir.join(format!("cpu{core}/cpufreq"));
            CoreFrequency {
                core,
                cur_khz: files::number(&dir.join("scaling_cur_freq")),
                max_khz: files::number(&dir.join("scaling_max_freq")),
                hw_max_khz: files::number(&dir.join("cpuinfo_max_freq")),
                governor: files::text(&dir.join("scaling_governor")).filter(|g| !g.is_empty()),
            }
        })
        .collect();

    let before = previous.as_ref();
    let utilisation = busy_fraction(before.and_then(|p| p.aggregate), now.aggregate);
    let per_core_utilisation = indices
        .iter()
        .map(|core| {
            busy_fraction(
                before.and_then(|p| p.cores.get(core).copied()),
                now.cores.get(core).copied(),
            )
        })
        .collect();

    // Online cores: the per-core lines the aggregate line adds up.
    let online = now.cores.len();
    let own_cores = own_cores(before, &now, online);
    let other_busy_cores = match (utilisation, own_cores) {
        (Some(busy), Some(own)) => Some((busy * online as f64 - own).max(0.0)),
        _ => None,
    };

    *previous = Some(now);
    Cpu {
        cores: indices.len(),
        utilisation,
        per_core_utilisation,
        own_cores,
        other_busy_cores,
        frequencies,
    }
}

/// Busy and total ticks that passed between two readings of one `cpu` line.
///
/// iowait may go backwards on some kernels (proc(5) calls it unreliable), so the idle
/// delta is clamped at 0 rather than taken as a counter reset; busy counters only grow, and
/// a busy counter that went backwards means a reset, reported as `None`.
fn elapsed(before: Ticks, now: Ticks) -> Option<(u64, u64)> {
    let busy = now.busy.checked_sub(before.busy)?;
    let idle = now.idle.saturating_sub(before.idle);
    Some((busy, busy.checked_add(idle)?))
}

fn busy_fraction(before: Option<Ticks>, now: Option<Ticks>) -> Option<f64> {
    let (busy, total) = elapsed(before?, now?)?;
    (total > 0).then(|| busy as f64 / total as f64)
}

/// This process's ticks over the ticks one core had in the same time.
fn own_cores(before: Option<&Counters>, now: &Counters, online: usize) -> Option<f64> {
    let before = before?;
    let own = now.own_ticks?.checked_sub(before.own_ticks?)?;
    let (_, total) = elapsed(before.aggregate?, now.aggregate?)?;
    if total == 0 || online == 0 {
        return None;
    }
    Some(own as f64 / (total as f64 / online as f64))
}

/// The `cpu` and `cpuN` lines of `/proc/stat`; malformed lines are skipped.
pub(crate) fn parse_stat(text: &str) -> Counters {
    let mut counters = Counters::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(label) = fields.next() else { continue };
        let Some(rest) = label.strip_prefix("cpu") else {
            continue;
        };
        let Some(ticks) = parse_ticks(fields) else {
            continue;
        };
        if rest.is_empty() {
            counters.aggregate = Some(ticks);
        } else if let Some(core) = files::index_after(label, "cpu") {
            counters.cores.insert(core, ticks);
        }
    }
    counters
}

/// user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
/// already counted in user and nice, so it is left out. Kernels before 2.6.11 print fewer
/// columns; at least the first four are needed.
fn parse_ticks<'a>(fields: impl Iterator<Item = &'a str>) -> Option<Ticks> {
    let mut values = [0u64; 8];
    let mut count = 0;
    for (slot, field) in values.iter_mut().zip(fields) {
        *slot = field.parse().ok()?;
        count += 1;
    }
    if count < 4 {
        return None;
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = values;
    Some(Ticks {
        busy: [user, nice, system, irq, softirq, steal]
            .into_iter()
            .try_fold(0u64, u64::checked_add)?,
        idle: idle.checked_add(iowait)?,
    })
}

/// utime + stime (fields 14 and 15) of `/proc/self/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted from
/// after the last `)`.
pub(crate) fn parse_own_ticks(text: &str) -> Option<u64> {
    let (_, after_comm) = text.rsplit_once(')')?;
    // After the name come field 3 (state) onwards: utime is field 14, index 11 here.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_split_busy_and_idle() {
        let stat = "cpu  10 1 5 100 4 2 3 0 7 0\n\
                    cpu0 6 1 3 50 2 1 2 0 7 0\n\
                    cpu1 4 0 2 50 2 1 1 0 0 0\n\
                    intr 12345 0 0\n\
                    ctxt 999\n";
        let c = parse_stat(stat);
        assert_eq!(
            c.aggregate,
            Some(Ticks {
                busy: 10 + 1 + 5 + 2 + 3,
                idle: 104
            })
        );
        assert_eq!(c.cores.len(), 2);
        assert_eq!(c.cores[&1], Ticks { busy: 8, idle: 52 });
    }

    #[test]
    fn short_and_malformed_stat_lines() {
        // Four columns (old kernels) are enough; fewer or non-numeric are skipped.
        let c = parse_stat("cpu 1 2 3 4\ncpu0 1 2 x 4 5\ncpu1 1 2 3\ncpufreq 1 2 3 4\n");
        assert_eq!(c.aggregate, Some(Ticks { busy: 6, idle: 4 }));
        assert!(c.cores.is_empty());
    }

    #[test]
    fn own_ticks_parse_after_the_last_parenthesis() {
        let stat = "4242 (we) ird (name) R 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1200 345 0 0 20 0 8 0 5000 100000 2000 18446744073709551615";
        assert_eq!(parse_own_ticks(stat), Some(1545));
        assert_eq!(
            parse_own_ticks("1 (edgerun) S 0 1 1 0 -1 0 0 0 0 0 7 x"),
            None
        );
        assert_eq!(parse_own_ticks("1 (edgerun) S 0 1"), None);
        assert_eq!(parse_own_ticks("garbage"), None);
    }

    #[test]
    fn fraction_needs_progress_and_survives_iowait_going_back() {
        let a = Ticks {
            busy: 100,
            idle: 300,
        };
        assert_eq!(busy_fraction(Some(a), Some(a)), None);
        assert_eq!(busy_fraction(None, Some(a)), None);
        // idle+iowait fell by 2 (iowait going backwards): idle delta counts as 0.
        let b = Ticks {
            busy: 150,
            idle: 298,
        };
        assert_eq!(busy_fraction(Some(a), Some(b)), Some(1.0));
        // Busy went backwards: a reset, not a negative load.
        assert_eq!(busy_fraction(Some(b), Some(a)), None);
    }

    #[test]
    fn other_busy_cores_is_clamped_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let proc_dir = dir.path().join("proc/self");
        std::fs::create_dir_all(&proc_dir).unwrap();
        let write = |stat: &str, own: u64| {
            std::fs::write(dir.path().join("proc/stat"), stat).unwrap();
            let line = format!("7 (t) R 1 1 1 0 -1 0 0 0 0 0 {own} 0 0 0 20 0 1 0 1 1 1");
            std::fs::write(proc_dir.join("stat"), line).unwrap();
        };
        let mut previous = None;
        write("cpu 0 0 0 0\ncpu0 0 0 0 0\ncpu1 0 0 0 0\n", 0);
        let first = read(dir.path(), &mut previous);
        assert_eq!(first.cores, 2);
        assert_eq!(first.utilisation, None);
        assert_eq!(first.per_core_utilisation, [None, None]);
        // 50 busy ticks in 200, but this process claims 60 (sampled a moment later).
        write("cpu 50 0 0 150\ncpu0 50 0 0 50\ncpu1 0 0 0 100\n", 60);
        let second = read(dir.path(), &mut previous);
        assert_eq!(second.utilisation, Some(0.25));
        assert_eq!(second.per_core_utilisation, [Some(0.5), Some(0.0)]);
        assert_eq!(second.own_cores, Some(0.6));
        assert_eq!(second.other_busy_cores, Some(0.0));
    }
}
