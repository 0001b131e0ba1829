//! The model directory: one folder per service, each with a `manifest.toml` that names every
//! file with its sha256, source and license.
//!
//! Nothing is loaded that the manifest does not name, and nothing whose bytes do not match
//! it: a missing or corrupt file is a clear error at start-up, not a wrong answer later.
//! This module only resolves and verifies files; it does not parse models (that is
//! [`crate::engine`]'s job: [`ModelDir::load`] hands it the verified bytes).

pub mod points;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::engine::{Engine, EngineError, Model, Onnx, Reread};

pub use self::points::PointSet;

/// Why a model file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("models folder {path} cannot be read: {source}")]
    RootIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model manifest {path} cannot be read: {source}")]
    ManifestIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model manifest {path} is malformed: {source}")]
    ManifestParse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{file} is not listed in {manifest}")]
    NotInManifest { file: String, manifest: PathBuf },
    #[error(
        "model file {path} is missing (run `python export/{service}.py` to produce it): {source}"
    )]
    Missing {
        path: PathBuf,
        service: String,
        source: std::io::Error,
    },
    #[error("model file {path} is not UTF-8 text")]
    NotText { path: PathBuf },
    #[error(
        "model file {path} is corrupt: sha256 {actual} does not match the manifest's {expected}"
    )]
    Corrupt {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{service} manifest: {message}")]
    InvalidPoints { service: String, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A service's `manifest.toml`, as written by its `export/` script.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub service: String,
    pub files: Vec<ManifestEntry>,
    /// What a point's `quality` measures (dataset, metric, protocol).
    #[serde(default)]
    pub quality_metric: Option<String>,
    /// The service's operating points, cheapest knobs first by convention.
    #[serde(default)]
    pub points: Vec<ManifestPoint>,
    /// The point a request gets when neither it nor a controller chooses one.
    #[serde(default)]
    pub default_point: Option<String>,
    /// The latency target, in milliseconds, the service adapts to unless configured.
    #[serde(default)]
    pub slo_ms: Option<f64>,
    /// Service-specific settings tuned offline (the legal service's scoring weights).
    #[serde(default)]
    pub settings: Option<toml::Table>,
}

/// An operating point as the export script declares it: a name, the quality measured
/// offline on the shared benchmark (absent until measured), and the service's own knobs,
/// which only the service interprets.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct ManifestPoint {
    pub name: String,
    #[serde(default)]
    pub quality: Option<f64>,
    #[serde(flatten)]
    pub knobs: toml::Table,
}

impl Manifest {
    /// Reads a manifest's TOML text (nothing is checked against the files).
    pub fn parse(text: &str) -> Result<Manifest, toml::de::Error> {
        toml::from_str(text)
    }
}

/// One file of a service's model folder.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestEntry {
    pub file: String,
    pub role: String,
    #[serde(default)]
    pub description: String,
    pub sha256: String,
    pub source: String,
    pub license: String,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub transform: Option<String>,
}

/// A service's model folder with its parsed manifest.
#[derive(Debug, Clone)]
pub struct ModelDir {
    dir: PathBuf,
    manifest: Manifest,
    manifest_sha256: String,
}

impl ModelDir {
    /// Opens `root/service` and reads its manifest.
    pub fn open(root: &Path, service: &str) -> Result<ModelDir, ModelError> {
        let dir = root.join(service);
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::ManifestIo {
            path: path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text).map_err(|source| ModelError::ManifestParse {
            path,
            source: Box::new(source),
        })?;
        Ok(ModelDir {
            dir,
            manifest,
            manifest_sha256: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }

    /// sha256 of the manifest's text: changes whenever a model or an operating point does.
    pub fn manifest_sha256(&self) -> &str {
        &self.manifest_sha256
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads a verified ONNX file with `engine`, named `service/file` (the key of per-model
    /// engine settings). The engine may read the file again later, checked against the
    /// same sha256 ([`Onnx::reread`]): a file changed on disk then fails that plan rather
    /// than mix two models.
    pub fn load(&self, engine: &dyn Engine, file: &str) -> Result<Arc<dyn Model>, ModelError> {
        self.load_with(file, |name, onnx| engine.load(name, onnx))
    }

    /// [`ModelDir::load`] for a model whose inputs vary in length along `axis`
    /// ([`Engine::load_varying`]).
    pub fn load_varying(
        &self,
        engine: &dyn Engine,
        file: &str,
        axis: usize,
    ) -> Result<Arc<dyn Model>, ModelError> {
        self.load_with(file, |name, onnx| engine.load_varying(name, onnx, axis))
    }

    /// Hands `load` the model's name, its verified bytes and a reread of them: the file
    /// read again, verified, whenever the engine asks.
    fn load_with(
        &self,
        file: &str,
        load: impl FnOnce(&str, Onnx<'_>) -> Result<Arc<dyn Model>, EngineError>,
    ) -> Result<Arc<dyn Model>, ModelError> {
        let name = format!("{}/{file}", self.manifest.service);
        let bytes = self.read_verified(file)?;
        let reread: Reread = {
            let (dir, file) = (self.clone(), file.to_string());
            Arc::new(move || dir.read_verified(&file).map_err(|e| e.to_string()))
        };
        let onnx = Onnx {
            bytes: &bytes,
            reread: Some(&reread),
        };
        Ok(load(&name, onnx)?)
    }

    /// The contents of `file`, read and checked against its sha256.
    pub fn read_verified(&self, file: &str) -> Result<Vec<u8>, ModelError> {
        let entry = self
            .manifest
            .files
            .iter()
            .find(|e| e.file == file)
            .ok_or_else(|| ModelError::NotInManifest {
                file: file.to_string(),
                manifest: self.dir.join("manifest.toml"),
            })?;
        let path = self.dir.join(&entry.file);
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Missing {
            path: path.clone(),
            service: self.manifest.service.clone(),
            source,
        })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&entry.sha256) {
            return Err(ModelError::Corrupt {
                path,
                expected: entry.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// The verified contents of a UTF-8 text file (dictionaries, tokenizers).
    pub fn read_verified_text(&self, file: &str) -> Result<String, ModelError> {
        String::from_utf8(self.read_verified(file)?).map_err(|_| ModelError::NotText {
            path: self.dir.join(file),
        })
    }
}

/// Every ONNX file named by a service manifest under `root`, with its folder: services in
/// name order, files in manifest order.
pub fn all_onnx_files(root: &Path) -> Result<Vec<(ModelDir, String)>, ModelError> {
    let entries = std::fs::read_dir(root).map_err(|source| ModelError::RootIo {
        path: root.to_path_buf(),
        source,
    })?;
    let mut services: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.toml").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    services.sort();
    let mut found = Vec::new();
    for service in services {
        let dir = ModelDir::open(root, &service)?;
        for entry in &dir.manifest().files {
            if entry.file.ends_with(".onnx") {
                found.push((dir.clone(), entry.file.clone()));
            }
        }
    }
    Ok(found)
}

/// The models folder to use, the first of: `EDGERUN_MODELS`; `./models` if it exists;
/// `../share/edgerun/models` beside the running binary (an installed package:
/// `/usr/bin/edgerun` finds `/usr/share/edgerun/models`); the `models/` of the source tree
/// this binary was built from.
pub fn default_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("EDGERUN_MODELS") {
        return PathBuf::from(dir);
    }
    let local = PathBuf::from("models");
    if local.join("ocr").is_dir() {
        return local;
    }
    let installed = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("share/edgerun/models")));
    if let Some(dir) = installed.filter(|d| d.join("ocr").is_dir()) {
        return dir;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_dir(content: &[u8]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("svc");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.bin"), content).unwrap();
        // sha256("hello")
        std::fs::write(
            dir.join("manifest.toml"),
            r#"service = "svc"
[[files]]
file = "a.bin"
role = "test"
sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
source = "test"
license = "CC0-1.0"
"#,
        )
        .unwrap();
        tmp
    }

    #[test]
    fn verifies_matching_file() {
        let tmp = write_dir(b"hello");
        let dir = ModelDir::open(tmp.path(), "svc").unwrap();
        assert_eq!(dir.read_verified("a.bin").unwrap(), b"hello");
        assert_eq!(dir.read_verified_text("a.bin").unwrap(), "hello");
    }

    #[test]
    fn corrupt_file_is_reported_with_both_hashes() {
        let tmp = write_dir(b"hellO");
        let dir = ModelDir::open(tmp.path(), "svc").unwrap();
        let err = dir.read_verified("a.bin").unwrap_err();
        assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("is corrupt"), "{text}");
        assert!(text.contains("2cf24dba5fb0a30e"), "{text}");
    }

    #[test]
    fn missing_file_and_unlisted_file_are_errors() {
        let tmp = write_dir(b"hello");
        std::fs::remove_file(tmp.path().join("svc/a.bin")).unwrap();
        let dir = ModelDir::open(tmp.path(), "svc").unwrap();
        let err = dir.read_verified("a.bin").unwrap_err();
        assert!(matches!(err, ModelError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("export/svc.py"), "{err}");
        let err = dir.read_verified("b.bin").unwrap_err();
        assert!(matches!(err, ModelError::NotInManifest { .. }), "{err}");
    }

    /// An engine reads a model's file again for a new shape; a file changed on disk since
    /// it was loaded fails that plan with the corrupt-file error, and plans built from the
    /// original bytes go on serving.
    #[test]
    fn a_model_file_changed_on_disk_fails_the_next_plan() {
        use crate::engine::{EngineConfig, Input, TractEngine};
        let onnx = std::fs::read(default_root().join("ocr/rec_tiny.onnx")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("svc");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("rec.onnx"), &onnx).unwrap();
        let manifest = format!(
            "service = \"svc\"\n[[files]]\nfile = \"rec.onnx\"\nrole = \"test\"\n\
             sha256 = \"{}\"\nsource = \"test\"\nlicense = \"Apache-2.0\"\n",
            hex::encode(Sha256::digest(&onnx))
        );
        std::fs::write(dir.join("manifest.toml"), manifest).unwrap();
        let models = ModelDir::open(tmp.path(), "svc").unwrap();
        let model = models
            .load(&TractEngine::new(EngineConfig::default()), "rec.onnx")
            .unwrap();
        let image = |width| ndarray::Array4::<f32>::zeros((1, 3, 48, width)).into_dyn();
        let run = |width| model.run(&[Input::F32(image(width).view())]);
        assert_eq!(run(320).unwrap()[0].shape(), &[1, 40, 6906]);
        std::fs::write(dir.join("rec.onnx"), &onnx[..onnx.len() / 2]).unwrap();
        let err = run(416).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "model svc/rec.onnx failed: cannot build a plan for shapes \
                 [(F32, [1, 3, 48, 416])]: model file "
            ) && err.contains("rec.onnx is corrupt: sha256 "),
            "{err}"
        );
        assert_eq!(run(320).unwrap()[0].shape(), &[1, 40, 6906]);
    }

    #[test]
    fn missing_manifest_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = ModelDir::open(tmp.path(), "nothing").unwrap_err();
        assert!(matches!(err, ModelError::ManifestIo { .. }), "{err}");
    }
}
