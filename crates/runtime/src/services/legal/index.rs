//! The shipped embeddings of the articles and their sentences, one set per output space.
//!
//! Files (written by `export/legal/export.py` or `edgerun legal index`):
//! `index_<space>_<articles|sentences>.i8` holds int8 rows of [`HIDDEN`] values and
//! `.scale` one little-endian f32 per row; a row is `i8 * scale`. Rows are unit vectors, so
//! int8 per row costs about 1e-3 in cosine similarity and a quarter of the f32 size.

use std::path::Path;

use super::LegalError;
use super::encoder::HIDDEN;
use crate::models::ModelDir;

/// Unit-vector rows, kept as stored (int8 values, one f32 scale per row): a quarter of the
/// f32 matrix (legal: 1.7 MB instead of 6.8 for both spaces), and a row is dequantized in
/// the dot product itself, `scale * sum(q * v)`, which is the same product as
/// `sum(q * v * scale)` up to f32 rounding.
#[derive(Debug, Clone)]
pub struct Rows {
    values: Vec<i8>,
    scales: Vec<f32>,
}

impl Rows {
    /// Cosine similarity of `query` (a unit vector) with every row.
    pub fn similarities(&self, query: &[f32]) -> Vec<f32> {
        (0..self.len()).map(|r| self.similarity(r, query)).collect()
    }

    /// Cosine similarity of `query` (a unit vector of [`HIDDEN`] values) with row `r`.
    pub fn similarity(&self, r: usize, query: &[f32]) -> f32 {
        let row = &self.values[r * HIDDEN..(r + 1) * HIDDEN];
        let dot: f32 = row.iter().zip(query).map(|(&v, &q)| f32::from(v) * q).sum();
        dot * self.scales[r]
    }

    pub fn len(&self) -> usize {
        self.scales.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    fn load(dir: &ModelDir, stem: &str) -> Result<Rows, LegalError> {
        let values = dir.read_verified(&format!("{stem}.i8"))?;
        let scales = dir.read_verified(&format!("{stem}.scale"))?;
        Rows::decode(&values, &scales)
            .ok_or_else(|| {
                format!(
                    "{stem}: {} bytes of values and {} of scales, not rows of {HIDDEN}",
                    values.len(),
                    scales.len()
                )
            })
            .map_err(LegalError::Model)
    }

    /// Rows from the on-disk format ([`Rows::encode`]); `None` if the sizes disagree.
    pub fn decode(values: &[u8], scales: &[u8]) -> Option<Rows> {
        let rows = scales.len() / 4;
        if !scales.len().is_multiple_of(4) || values.len() != rows * HIDDEN {
            return None;
        }
        Some(Rows {
            values: values.iter().map(|&b| b as i8).collect(),
            scales: scales
                .chunks_exact(4)
                .map(|s| f32::from_le_bytes(s.try_into().expect("4 bytes")))
                .collect(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit vector of [`HIDDEN`] values, different for each `seed`.
    fn unit(seed: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..HIDDEN)
            .map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) / 11.0)
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }

    #[test]
    fn rows_score_as_their_dequantized_f32_copies() {
        let rows: Vec<Vec<f32>> = (0..5).map(unit).collect();
        let (values, scales) = Rows::encode(&rows);
        let index = Rows::decode(&values, &scales).expect("sizes agree");
        assert_eq!(index.len(), 5);
        let query = unit(9);
        for (r, similarity) in index.similarities(&query).into_iter().enumerate() {
            let scale = f32::from_le_bytes(scales[r * 4..r * 4 + 4].try_into().unwrap());
            let dequantized: f32 = values[r * HIDDEN..(r + 1) * HIDDEN]
                .iter()
                .zip(&query)
                .map(|(&v, q)| f32::from(v as i8) * scale * q)
                .sum();
            let exact: f32 = rows[r].iter().zip(&query).map(|(a, b)| a * b).sum();
            assert!((similarity - dequantized).abs() < 1e-6, "row {r}");
            // int8 per row: about 1e-3 of cosine, as the module says.
            assert!((similarity - exact).abs() < 2e-3, "row {r}");
        }
        assert!((index.similarity(2, &rows[2]) - 1.0).abs() < 2e-3);
    }

    #[test]
    fn sizes_that_disagree_are_refused() {
        assert!(Rows::decode(&[0; HIDDEN], &[0; 8]).is_none());
        assert!(Rows::decode(&[0; HIDDEN], &[0; 3]).is_none());
        assert_eq!(
            Rows::decode(&[0; 2 * HIDDEN], &[0; 8]).map(|r| r.len()),
            Some(2)
        );
    }
}
