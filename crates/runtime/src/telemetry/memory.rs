//! Memory telemetry: system total and available memory from `/proc/meminfo`, and this
//! process's resident set (now and at its peak) from `/proc/self/status`.
//!
//! Only reads and parses; whether memory is short is for the caller to decide.

use std::path::Path;

use serde::Serialize;

use super::files;

/// System and own memory, in KiB (the kernel's "kB").
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Memory {
    /// `MemTotal` of `/proc/meminfo`.
    pub total_kib: Option<u64>,
    /// `MemAvailable` of `/proc/meminfo` (absent before Linux 3.14).
    pub available_kib: Option<u64>,
    /// `VmRSS` of `/proc/self/status`.
    pub own_rss_kib: Option<u64>,
    /// `VmHWM` of `/proc/self/status`: the peak resident set.
    pub own_peak_rss_kib: Option<u64>,
}

pub(crate) fn read(root: &Path) -> Memory {
    let meminfo = files::text(&root.join("proc/meminfo")).unwrap_or_default();
    let status = files::text(&root.join("proc/self/status")).unwrap_or_default();
    Memory {
        total_kib: kib_field(&meminfo, "MemTotal"),
        available_kib: kib_field(&meminfo, "MemAvailable"),
        own_rss_kib: kib_field(&status, "VmRSS"),
        own_peak_rss_kib: kib_field(&status, "VmHWM"),
    }
}

/// The value of a `Key:   123 kB` line, as in `/proc/meminfo` and `/proc/PID/status`.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim() != key {
            return None;
        }
        let mut words = value.split_whitespace();
        let number = words.next()?.parse().ok()?;
        match words.next() {
            None | Some("kB") => Some(number),
            Some(_) => None,
        }
    })
}

/// A process's resident set now and at its peak, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Resident {
    /// `VmRSS`.
    pub rss_kib: u64,
    /// `VmHWM`: the peak since the process started (or its mark was last reset).
    pub peak_kib: u64,
    /// `RssFile`: the part of `VmRSS` mapped from files, mostly the binary's own code and
    /// constants. Clean pages: the kernel can drop them under pressure and read them again.
    pub file_kib: u64,
}

/// The resident set of process `pid` (`None` for this one) from `/proc/PID/status`;
/// `None` off Linux or once the process is gone.
pub fn resident(pid: Option<u32>) -> Option<Resident> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".into(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    Some(Resident {
        rss_kib: kib_field(&status, "VmRSS")?,
        peak_kib: kib_field(&status, "VmHWM")?,
        file_kib: kib_field(&status, "RssFile")?,
    })
}

/// Peak resident memory of this process so far (VmHWM), in MiB; `None` off Linux.
pub fn peak_rss_mib() -> Option<f64> {
    resident(None).map(|r| r.peak_kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_by_name_in_kib() {
        let text = "MemTotal:        7763620 kB\nMemFree:  100 kB\nMemAvailable:   5120000 kB\n";
        assert_eq!(kib_field(text, "MemTotal"), Some(7_763_620));
        assert_eq!(kib_field(text, "MemAvailable"), Some(5_120_000));
        assert_eq!(kib_field(text, "Mem"), None);
        assert_eq!(kib_field("VmRSS:\tlots kB\n", "VmRSS"), None);
        assert_eq!(kib_field("VmRSS:\t12 MB\n", "VmRSS"), None);
    }

    /// This test binary's own resident set: its code is mapped from its file, so part of
    /// the resident set is file-backed, and none of it is above the peak.
    #[cfg(target_os = "linux")]
    #[test]
    fn resident_reads_the_file_backed_part() {
        let now = resident(None).unwrap();
        assert!(now.file_kib > 0 && now.file_kib < now.rss_kib, "{now:?}");
        assert!(now.rss_kib <= now.peak_kib, "{now:?}");
        assert!(resident(Some(u32::MAX)).is_none());
    }
}
