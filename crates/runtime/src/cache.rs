//! Where edgerun keeps what it measures or builds on a device (profiles, TensorRT engines),
//! so that a restart does not pay for it again. Only paths are decided here.

use std::path::PathBuf;

/// `$CACHE_DIRECTORY` (systemd's `CacheDirectory=`), else `$XDG_CACHE_HOME/edgerun`, else
/// `~/.cache/edgerun`, else `edgerun` in the temporary folder.
pub fn dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dirs) = var("CACHE_DIRECTORY") {
        // systemd lists one folder per `CacheDirectory=` entry, separated by ':'.
        let dirs = dirs.to_string_lossy().into_owned();
        return PathBuf::from(dirs.split(':').next().unwrap_or_default());
    }
    var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("edgerun")
}
