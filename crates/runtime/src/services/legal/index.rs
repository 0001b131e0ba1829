//! The shipped embeddings of the articles and their sentences, one set per output space.
//!
//! Files (written by `export/legal/export.py` or `edgerun legal index`):
//! `index_<space>_<articles|sentences>.i8` holds int8 rows of [`HIDDEN`] values and
//! `.scale` one little-endian f32 per row; a row is `i8 * scale`. Rows are unit vectors, so
//! int8 per row costs about 1e-3 in cosine similarity and a quarter of the f32 size.

use std::path::Path;

use ndarray::Array2;

use super::LegalError;
use super::encoder::HIDDEN;
use crate::models::ModelDir;

/// Unit-vector rows, dequantized once at load.
#[derive(Debug, Clone)]
pub struct Rows {
    pub matrix: Array2<f32>,
}

impl Rows {
    /// Cosine similarity of `query` (a unit vector) with every row.
    pub fn similarities(&self, query: &[f32]) -> Vec<f32> {
        self.matrix.dot(&ndarray::ArrayView1::from(query)).to_vec()
    }

    pub fn len(&self) -> usize {
        self.matrix.nrows()
    }

    pub fn is_empty(&self) -> bool {
        self.matrix.nrows() == 0
    }

    fn load(dir: &ModelDir, stem: &str) -> Result<Rows, LegalError> {
        let values = dir.read_verified(&format!("{stem}.i8"))?;
        let scales = dir.read_verified(&format!("{stem}.scale"))?;
        let rows = scales.len() / 4;
        if scales.len() % 4 != 0 || values.len() != rows * HIDDEN {
            return Err(LegalError::Model(format!(
                "{stem}: {} bytes of values for {rows} rows of {HIDDEN}",
                values.len()
            )));
        }
        let mut matrix = Array2::zeros((rows, HIDDEN));
        for (r, (row, scale)) in matrix
            .rows_mut()
            .into_iter()
            .zip(scales.chunks_exact(4))
            .enumerate()
        {
            let scale = f32::from_le_bytes(scale.try_into().expect("4 bytes"));
            let bytes = &values[r * HIDDEN..(r + 1) * HIDDEN];
            for (v, &b) in row.into_iter().zip(bytes) {
                *v = f32::from(b as i8) * scale;
            }
        }
        Ok(Rows { matrix })
    }

    /// int8 rows and f32 scales (little-endian), the on-disk format.
    pub fn encode(rows: &[Vec<f32>]) -> (Vec<u8>, Vec<u8>) {
        let mut values = Vec::with_capacity(rows.len() * HIDDEN);
        let mut scales = Vec::with_capacity(rows.len() * 4);
        for row in rows {
            let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            values.extend(
                row.iter()
                    .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8 as u8),
            );
            scales.extend(scale.to_le_bytes());
        }
        (values, scales)
    }
}

/// The index of one output space.
#[derive(Debug, Clone)]
pub struct SpaceIndex {
    pub articles: Rows,
    pub sentences: Rows,
}

impl SpaceIndex {
    pub fn load(dir: &ModelDir, space: &str) -> Result<SpaceIndex, LegalError> {
        Ok(SpaceIndex {
            articles: Rows::load(dir, &format!("index_{space}_articles"))?,
            sentences: Rows::load(dir, &format!("index_{space}_sentences"))?,
        })
    }

    /// The index must describe the corpus being served, row for row.
    pub fn check(
        &self,
        articles: usize,
        sentences: usize,
        corpus: &Path,
    ) -> Result<(), LegalError> {
        if self.articles.len() != articles || self.sentences.len() != sentences {
            return Err(LegalError::Corpus {
                path: corpus.to_path_buf(),
                message: format!(
                    "has {articles} articles and {sentences} sentences, the index {} and {}; \
                     rebuild it with `edgerun legal index`",
                    self.articles.len(),
                    self.sentences.len()
                ),
            });
        }
        Ok(())
    }
}
