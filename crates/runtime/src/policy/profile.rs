//! The profile cache: what each operating point costs on this device, as measured by
//! `edgerun profile`, kept as JSON so that `serve` can start adapting at once.
//!
//! A profile is only valid for the device, build and engine settings it was measured with;
//! [`ProfileKey`] records them, and a cache whose key differs is refused with the reason
//! rather than silently trusted. This module reads and writes the cache; measuring is
//! [`crate::profiler`]'s job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The cache format; bumped when fields change meaning.
pub const FORMAT: u32 = 3;

/// What a profile's numbers depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileKey {
    pub edgerun_version: String,
    /// How the binary was built: `release` or `debug`, and its optional features.
    pub build: String,
    pub arch: String,
    pub cpu: String,
    pub logical_cores: usize,
    /// Engine threads per model run.
    pub threads: usize,
    /// `tract`, `ort` or `auto`, with per-model overrides, as configured.
    pub backend: String,
    /// The memory budget ([`memory_class_mib`]): under a small one the heaviest points
    /// go unmeasured ([`crate::profiler::MEASURING_SHARE`]), so a device given more memory
    /// measures again.
    #[serde(default)]
    pub memory_class_mib: Option<u64>,
}

/// A memory budget as the profile is keyed by: rounded down to a power of two MiB or one
/// and a half times one (256, 384, 512, 768, ...), so that the few MiB a kernel update
/// takes from `MemTotal` keep the profile.
pub fn memory_class_mib(budget_mib: f64) -> u64 {
    let mib = budget_mib.max(1.0) as u64;
    let power = 1 << mib.ilog2();
    let between = power + power / 2;
    if mib >= between { between } else { power }
}

/// One operating point as measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfiledPoint {
    pub name: String,
    /// The offline quality from the manifest, copied so the cache is self-contained.
    pub quality: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// The mean: what observed latencies average to under profiled conditions (latencies
    /// are skewed, so the median would read as a permanent slowdown).
    pub mean_ms: f64,
    #[serde(default)]
    pub runs: usize,
    /// Peak resident memory of the process while this point ran (all models loaded).
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
    /// Whether the point is on the quality/latency Pareto front (only those are chosen).
    #[serde(default)]
    pub on_front: bool,
}

impl ProfiledPoint {
    pub fn new(name: &str, quality: f64, p50_ms: f64, p95_ms: f64) -> ProfiledPoint {
        ProfiledPoint {
            name: name.to_string(),
            quality,
            p50_ms,
            p95_ms,
            mean_ms: p50_ms,
            runs: 0,
            peak_rss_mib: None,
            on_front: false,
        }
    }
}

/// One service's measured points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceProfile {
    /// sha256 of the service's manifest when measured: new models or points invalidate it.
    pub manifest_sha256: String,
    #[serde(default)]
    pub quality_metric: Option<String>,
    /// What the inputs were (for the record).
    pub inputs: String,
    pub points: Vec<ProfiledPoint>,
}

/// The whole cache file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileCache {
    pub format: u32,
    pub key: ProfileKey,
    /// Seconds since the Unix epoch.
    pub measured_at: u64,
    pub services: BTreeMap<String, ServiceProfile>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("no profile at {path} yet")]
    Missing { path: PathBuf },
    #[error("cannot read the profile {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the profile {path} is malformed: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the profile {path} was measured {what}")]
    Stale { path: PathBuf, what: String },
}

impl ProfileCache {
    pub fn new(key: ProfileKey) -> ProfileCache {
        ProfileCache {
            format: FORMAT,
            key,
            measured_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            services: BTreeMap::new(),
        }
    }

    pub fn load(path: &Path) -> Result<ProfileCache, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ProfileError::Missing { path: path.into() }
            } else {
                ProfileError::Io {
                    path: path.into(),
                    source,
                }
            }
        })?;
        serde_json::from_str(&text).map_err(|source| ProfileError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Writes the cache atomically (a temporary file renamed into place), creating the folder.
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let io = |source| ProfileError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let json = serde_json::to_string_pretty(self).expect("profiles always serialize");
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json + "\n").map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The profile of `service`, if it was measured with `key` and the manifest whose
    /// sha256 is `manifest_sha256`.
    pub fn valid_for(
        &self,
        path: &Path,
        key: &ProfileKey,
        service: &str,
        manifest_sha256: &str,
    ) -> Result<&ServiceProfile, ProfileError> {
        let stale = |what: String| ProfileError::Stale {
            path: path.into(),
            what,
        };
        if self.format != FORMAT {
            return Err(stale(format!("in format {} (now {FORMAT})", self.format)));
        }
        if &self.key != key {
            return Err(stale(format!(
                "with other settings ({:?}; now {:?})",
                self.key, key
            )));
        }
        let profile = self
            .services
            .get(service)
            .ok_or_else(|| stale(format!("without the {service} service")))?;
        if profile.manifest_sha256 != manifest_sha256 {
            return Err(stale(format!("with another {service} manifest")));
        }
        Ok(profile)
    }
}

/// Stores `service`'s profile in the cache at `path`, keeping the other services' where
/// they were measured with the same `key` (and dropping them where not).
pub fn store(
    path: &Path,
    key: &ProfileKey,
    service: &str,
    profile: ServiceProfile,
) -> Result<(), ProfileError> {
    let mut cache = match ProfileCache::load(path) {
        Ok(cache) if &cache.key == key && cache.format == FORMAT => cache,
        _ => ProfileCache::new(key.clone()),
    };
    cache.services.insert(service.to_string(), profile);
    cache.save(path)
}

/// The profile cache's default path.
pub fn default_path() -> PathBuf {
    crate::cache::dir().join("profile.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ProfileKey {
        ProfileKey {
            edgerun_version: "0.1.0".into(),
            build: "release".into(),
            arch: "aarch64".into(),
            cpu: "Cortex-A76".into(),
            logical_cores: 4,
            threads: 2,
            backend: "tract".into(),
            memory_class_mib: Some(8192),
        }
    }

    #[test]
    fn memory_budgets_fall_in_power_of_two_classes() {
        assert_eq!(memory_class_mib(350.0), 256);
        assert_eq!(memory_class_mib(500.0), 384);
        assert_eq!(memory_class_mib(512.0), 512);
        // An 8 GB Raspberry Pi (MemTotal 7.4 GiB) and a 24 GiB VM.
        assert_eq!(memory_class_mib(7_763_620.0 / 1024.0), 6144);
        assert_eq!(memory_class_mib(24_105.0), 16_384);
        assert_eq!(memory_class_mib(0.0), 1);
    }

    #[test]
    fn round_trips_and_checks_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/profile.json");
        let mut cache = ProfileCache::new(key());
        let mut point = ProfiledPoint::new("tiny@640", 0.5, 40.5, 52.25);
        point.runs = 20;
        point.peak_rss_mib = Some(180.5);
        point.on_front = true;
        cache.services.insert(
            "ocr".into(),
            ServiceProfile {
                manifest_sha256: "abc".into(),
                quality_metric: Some("word accuracy".into()),
                inputs: "20 images".into(),
                points: vec![point],
            },
        );
        cache.save(&path).unwrap();
        let back = ProfileCache::load(&path).unwrap();
        assert_eq!(back, cache);
        let ocr = back.valid_for(&path, &key(), "ocr", "abc").unwrap();
        assert_eq!(ocr.points[0].p95_ms, 52.25);
        assert_eq!(ocr.points[0].peak_rss_mib, Some(180.5));

        let other = ProfileKey {
            threads: 1,
            ..key()
        };
        let err = back.valid_for(&path, &other, "ocr", "abc").unwrap_err();
        assert!(err.to_string().contains("other settings"), "{err}");
        let err = back.valid_for(&path, &key(), "ocr", "def").unwrap_err();
        assert!(err.to_string().contains("another ocr manifest"), "{err}");
        let err = back.valid_for(&path, &key(), "legal", "abc").unwrap_err();
        assert!(
            err.to_string().contains("without the legal service"),
            "{err}"
        );
    }

    #[test]
    fn missing_and_malformed_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.json");
        let err = ProfileCache::load(&path).unwrap_err();
        assert!(err.to_string().contains("no profile at"), "{err}");
        std::fs::write(&path, "{\"format\": 1}").unwrap();
        let err = ProfileCache::load(&path).unwrap_err();
        assert!(matches!(err, ProfileError::Parse { .. }), "{err}");
    }
}
