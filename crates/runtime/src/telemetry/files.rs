//! Reading the small text files of procfs and sysfs: one trimmed file, one number, and the
//! numbered entries of a directory (`cpu0`, `thermal_zone3`, `hwmon1`) in numeric order.
//!
//! Every failure (missing file, permission, I/O error, bad UTF-8, unparsable text) is
//! `None` or an empty list: the callers report the value as absent. Nothing here knows
//! what a file means.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The file's text with surrounding whitespace trimmed; `None` when it cannot be read.
pub(crate) fn text(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
}

/// The file's trimmed text parsed as a number; `None` when unreadable or not a number.
pub(crate) fn number<T: FromStr>(path: &Path) -> Option<T> {
    text(path)?.parse().ok()
}

/// The entries of `dir` named `prefix` followed by a decimal index (`cpu12` for prefix
/// `cpu`, but not `cpufreq`), sorted by that index. Empty when `dir` cannot be read.
pub(crate) fn indexed(dir: &Path, prefix: &str) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let index = index_after(name.to_str()?, prefix)?;
            Some((index, entry.path()))
        })
        .collect();
    found.sort_by_key(|(index, _)| *index);
    found
}

/// The decimal index that follows `prefix` in `name`, when all of the rest is digits.
pub(crate) fn index_after(name: &str, prefix: &str) -> Option<usize> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_needs_digits_only() {
        assert_eq!(index_after("cpu12", "cpu"), Some(12));
        assert_eq!(index_after("cpufreq", "cpu"), None);
        assert_eq!(index_after("cpu", "cpu"), None);
        assert_eq!(index_after("cpu-1", "cpu"), None);
        assert_eq!(index_after("thermal_zone3", "thermal_zone"), Some(3));
    }

    #[test]
    fn numbers_are_trimmed_and_malformed_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        let bad = dir.path().join("bad");
        fs::write(&good, "  47500\n").unwrap();
        fs::write(&bad, "47.5 degrees\n").unwrap();
        assert_eq!(number::<i64>(&good), Some(47500));
        assert_eq!(number::<i64>(&bad), None);
        assert_eq!(number::<i64>(&dir.path().join("missing")), None);
    }

    #[test]
    fn indexed_entries_sort_numerically() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["zone10", "zone2", "zone1", "zonex", "other3"] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        let indices: Vec<usize> = indexed(dir.path(), "zone")
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(indices, [1, 2, 10]);
        assert!(indexed(&dir.path().join("missing"), "zone").is_empty());
    }
}
