//! Memory telemetry: system total and available memory from `/proc/meminfo`, the memory
//! limit of this process's control group (a container's `--memory`, a systemd unit's
//! `MemoryMax=`), and this process's resident set (now and at its peak) from
//! `/proc/self/status`.
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
    /// The lowest memory limit of this process's cgroup and the groups above it
    /// (`memory.max` on cgroup v2, `memory.limit_in_bytes` on v1); `None` where none is set.
    pub limit_kib: Option<u64>,
}

impl Memory {
    /// What this process may hold in all: the system's memory, or its cgroup's limit where
    /// that is lower (beyond it the kernel kills the process, however much is free).
    pub fn budget_kib(&self) -> Option<u64> {
        match (self.total_kib, self.limit_kib) {
            (Some(total), Some(limit)) => Some(total.min(limit)),
            (total, limit) => total.or(limit),
        }
    }
}

pub(crate) fn read(root: &Path) -> Memory {
    let meminfo = files::text(&root.join("proc/meminfo")).unwrap_or_default();
    let status = files::text(&root.join("proc/self/status")).unwrap_or_default();
    Memory {
        total_kib: kib_field(&meminfo, "MemTotal"),
        available_kib: kib_field(&meminfo, "MemAvailable"),
        own_rss_kib: kib_field(&status, "VmRSS"),
        own_peak_rss_kib: kib_field(&status, "VmHWM"),
        limit_kib: cgroup_limit_kib(root),
    }
}

/// The lowest memory limit on the path of this process's memory cgroup, in KiB.
fn cgroup_limit_kib(root: &Path) -> Option<u64> {
    let membership = files::text(&root.join("proc/self/cgroup"))?;
    let (hierarchy, limit_file, path) = memory_cgroup(&membership)?;
    let mount = root.join(hierarchy);
    // In a container the cgroup namespace shows its own group as `/`, the mount's root.
    ancestors(path)
        .filter_map(|group| files::text(&mount.join(group).join(limit_file)))
        .filter_map(|text| limit_bytes(&text))
        .min()
        .map(|bytes| bytes / 1024)
}

/// Where this process's memory cgroup lives, from `/proc/self/cgroup`: the hierarchy's
/// mount (under the root), its limit file, and the group's path. cgroup v1's `memory`
/// controller wins where both versions are mounted, since it then holds the limits.
fn memory_cgroup(membership: &str) -> Option<(&'static str, &'static str, &str)> {
    let entries = membership.lines().filter_map(|line| {
        let mut fields = line.splitn(3, ':');
        Some((fields.next()?, fields.next()?, fields.next()?))
    });
    let mut unified = None;
    for (id, controllers, path) in entries {
        if controllers.split(',').any(|c| c == "memory") {
            return Some(("sys/fs/cgroup/memory", "memory.limit_in_bytes", path));
        }
        if id == "0" && controllers.is_empty() {
            unified = Some(("sys/fs/cgroup", "memory.max", path));
        }
    }
    unified
}

/// `/a/b` and the groups above it, relative to the mount: `a/b`, `a`, and the root (``).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let path = path.trim_matches('/');
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let group = next?;
        next = match group.rfind('/') {
            Some(at) => Some(&group[..at]),
            None if group.is_empty() => None,
            None => Some(""),
        };
        Some(group)
    })
}

/// A limit file's bytes: `None` for v2's `max` and for v1's "unlimited" (the largest page
/// count the kernel stores, about 2^63 bytes).
fn limit_bytes(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 60).then_some(bytes)
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

/// What this process may hold in all, in MiB ([`Memory::budget_kib`] of this machine);
/// `None` where neither the system's memory nor a limit can be read.
pub fn memory_budget_mib() -> Option<f64> {
    read(Path::new("/"))
        .budget_kib()
        .map(|kib| kib as f64 / 1024.0)
}

/// Peak resident memory of this process so far (VmHWM), in MiB; `None` off Linux.
pub fn peak_rss_mib() -> Option<f64> {
    resident(None).map(|r| r.peak_kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cgroup_of_either_version() {
        let v1 = "12:pids:/user.slice\n4:memory:/system.slice/edgerun.service\n0::/x\n";
        assert_eq!(
            memory_cgroup(v1),
            Some((
                "sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "/system.slice/edgerun.service"
            ))
        );
        let v1_joint = "3:cpu,memory:/docker/abc\n";
        assert_eq!(memory_cgroup(v1_joint).map(|m| m.2), Some("/docker/abc"));
        let v2 = "0::/system.slice/edgerun.service\n";
        assert_eq!(
            memory_cgroup(v2),
            Some((
                "sys/fs/cgroup",
                "memory.max",
                "/system.slice/edgerun.service"
            ))
        );
        assert_eq!(memory_cgroup("5:cpuset:/\n"), None);
    }

    #[test]
    fn a_group_and_those_above_it() {
        let groups: Vec<&str> = ancestors("/system.slice/edgerun.service").collect();
        assert_eq!(groups, ["system.slice/edgerun.service", "system.slice", ""]);
        assert_eq!(ancestors("/").collect::<Vec<_>>(), [""]);
    }

    #[test]
    fn limits_in_bytes_and_no_limit() {
        assert_eq!(limit_bytes("367001600\n"), Some(367_001_600));
        assert_eq!(limit_bytes("max\n"), None);
        assert_eq!(limit_bytes("9223372036854771712\n"), None);
    }

    #[test]
    fn the_budget_is_the_lower_of_the_system_and_the_cgroup_limit() {
        let memory = |total_kib, limit_kib| Memory {
            total_kib,
            limit_kib,
            ..Memory::default()
        };
        assert_eq!(memory(Some(8_000_000), None).budget_kib(), Some(8_000_000));
        assert_eq!(
            memory(Some(8_000_000), Some(358_400)).budget_kib(),
            Some(358_400)
        );
        assert_eq!(
            memory(Some(358_400), Some(8_000_000)).budget_kib(),
            Some(358_400)
        );
        assert_eq!(memory(None, None).budget_kib(), None);
    }

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
