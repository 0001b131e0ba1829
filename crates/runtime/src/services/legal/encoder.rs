//! The block executor: text -> token ids -> a chain of ONNX blocks -> one unit vector.
//!
//! Every operating point is a chain: an embeddings block, transformer layers (and, for an
//! SN-Net point, a stitch between the two anchors' layers), then the shared pooling block.
//! Blocks are loaded once and shared by all chains that use them.
//!
//! Blocks are loaded as varying in length along the sequence axis, so tract plans each of
//! them once, with a symbolic length, for every query (one copy of the optimized weights
//! instead of one per length), and every engine runs the exact length. Should a block plan
//! per shape after all (TensorRT builds engines per shape profile), token sequences are
//! padded to a multiple of [`SEQ_BUCKET`] with a zero mask, so it keeps a handful of plans;
//! masked positions change neither attention nor the mean pooling.

use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::{Array2, ArrayD, Axis};
use tokenizers::Tokenizer;

use super::LegalError;
use crate::engine::{ElementType, Engine, Input, Model};
use crate::models::ModelDir;

/// Sequence lengths are padded up to a multiple of this for engines that plan per shape.
pub const SEQ_BUCKET: usize = 16;

/// Every block's inputs (token ids, hidden states, mask) vary in length along this axis
/// only: an engine that plans per shape plans each block once for every length.
const SEQ_AXIS: usize = 1;

/// The hidden size of both anchors.
pub const HIDDEN: usize = 384;

/// What a block takes, from its manifest role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    /// token ids -> hidden
    Embeddings,
    /// hidden, mask -> hidden
    Layer,
    /// hidden -> hidden
    Stitch,
}

struct Block {
    kind: BlockKind,
    model: Arc<dyn Model>,
}

/// The tokenizer and every block of the model folder, by file name.
pub struct Blocks {
    tokenizer: Tokenizer,
    blocks: BTreeMap<String, Block>,
    pool: Arc<dyn Model>,
}

/// A text on its way through a chain of blocks: embeddings first, then layers and
/// stitches, then [`Encoding::finish`] pools it.
pub struct Encoding<'b> {
    blocks: &'b Blocks,
    ids: Array2<i64>,
    mask: Array2<f32>,
    hidden: Option<ArrayD<f32>>,
}

impl Encoding<'_> {
    /// Token positions each block runs over (padding included).
    pub fn positions(&self) -> usize {
        self.ids.len()
    }

    /// Runs one block of a chain checked with [`Blocks::check_chain`].
    pub fn run(&mut self, file: &str) -> Result<(), LegalError> {
        let block = &self.blocks.blocks[file];
        let mask = self.mask.view().into_dyn();
        let outputs = match (block.kind, &self.hidden) {
            (BlockKind::Embeddings, _) => {
                block.model.run(&[Input::I64(self.ids.view().into_dyn())])
            }
            (BlockKind::Layer, Some(h)) => block.model.run(&[h.view().into(), mask.into()]),
            (BlockKind::Stitch, Some(h)) => block.model.run(&[h.view().into()]),
            (_, None) => unreachable!("check_chain puts embeddings first"),
        }?;
        self.hidden = outputs.into_iter().next();
        Ok(())
    }

    /// The unit-length embedding: the pooled hidden state.
    pub fn finish(self) -> Result<Vec<f32>, LegalError> {
        let hidden = self
            .hidden
            .ok_or_else(|| LegalError::Model("a block returned nothing".into()))?;
        let pooled = self
            .blocks
            .pool
            .run(&[hidden.view().into(), self.mask.view().into_dyn().into()])?;
        let embedding = pooled
            .into_iter()
            .next()
            .ok_or_else(|| LegalError::Model("pool returned nothing".into()))?;
        Ok(embedding.index_axis(Axis(0), 0).iter().copied().collect())
    }
}

/// Token ids and the real length, padded to the chain's bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub ids: Vec<i64>,
    pub len: usize,
}

impl Blocks {
    /// Loads the tokenizer and every embeddings/layer/stitch/pool block of `dir`.
    pub fn load(dir: &ModelDir, engine: &dyn Engine) -> Result<Blocks, LegalError> {
        let tokenizer_json = dir.read_verified("tokenizer.json")?;
        let tokenizer = Tokenizer::from_bytes(&tokenizer_json)
            .map_err(|e| LegalError::Model(format!("tokenizer.json: {e}")))?;
        let mut blocks = BTreeMap::new();
        let mut pool = None;
        for entry in &dir.manifest().files {
            let kind = match entry.role.as_str() {
                "embeddings" => BlockKind::Embeddings,
                "layer" => BlockKind::Layer,
                "stitch" => BlockKind::Stitch,
                "pool" => {
                    pool = Some(dir.load_varying(engine, &entry.file, SEQ_AXIS)?);
                    continue;
                }
                _ => continue,
            };
            let model = dir.load_varying(engine, &entry.file, SEQ_AXIS)?;
            blocks.insert(entry.file.clone(), Block { kind, model });
        }
        let pool = pool.ok_or_else(|| LegalError::Model("no pool block in the manifest".into()))?;
        Ok(Blocks {
            tokenizer,
            blocks,
            pool,
        })
    }

    /// Token ids of `text` ([CLS] ... [SEP], truncated as the tokenizer file says).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, LegalError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| LegalError::Model(format!("tokenizer: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// [`SEQ_BUCKET`] if any block of `chain` (or pooling) plans per shape, else 1. Asked
    /// per call: an `auto` backend settles on an engine only when it is warmed up.
    fn bucket(&self, chain: &[String]) -> usize {
        let plans_per_shape = chain
            .iter()
            .map(|file| &self.blocks[file].model)
            .chain([&self.pool])
            .any(|model| model.plans_per_shape());
        if plans_per_shape { SEQ_BUCKET } else { 1 }
    }

    fn padded(&self, text: &str, bucket: usize) -> Result<Tokens, LegalError> {
        let ids = self.tokenize(text)?;
        let len = ids.len();
        let padded = len.div_ceil(bucket) * bucket;
        let mut ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        ids.resize(padded, 0);
        Ok(Tokens { ids, len })
    }

    /// Checks that every file of `chain` is a loaded block and that the chain starts with
    /// embeddings and has none after.
    pub fn check_chain(&self, chain: &[String]) -> Result<(), LegalError> {
        for (i, file) in chain.iter().enumerate() {
            let block = self
                .blocks
                .get(file)
                .ok_or_else(|| LegalError::Model(format!("chain names {file:?}, not a block")))?;
            if (i == 0) != (block.kind == BlockKind::Embeddings) {
                return Err(LegalError::Model(format!(
                    "chain {chain:?} must start with one embeddings block"
                )));
            }
        }
        if chain.is_empty() {
            return Err(LegalError::Model("empty chain".into()));
        }
        Ok(())
    }

    /// The unit-length embedding of `text` along `chain` (checked with [`Blocks::check_chain`]).
    pub fn embed(&self, chain: &[String], text: &str) -> Result<Vec<f32>, LegalError> {
        let mut encoding = self.start(chain, text)?;
        for file in chain {
            encoding.run(file)?;
        }
        encoding.finish()
    }

    /// Tokenizes `text`, padded for `chain`'s blocks, to be run through blocks one at a
    /// time ([`Encoding::run`]): a request can then change course between two blocks.
    pub fn start(&self, chain: &[String], text: &str) -> Result<Encoding<'_>, LegalError> {
        let tokens = self.padded(text, self.bucket(chain))?;
        let seq = tokens.ids.len();
        let ids = Array2::from_shape_vec((1, seq), tokens.ids).expect("shape matches");
        let mut mask = Array2::<f32>::zeros((1, seq));
        mask.slice_mut(ndarray::s![.., ..tokens.len]).fill(1.0);
        Ok(Encoding {
            blocks: self,
            ids,
            mask,
            hidden: None,
        })
    }

    /// Drops the plans of every block not in `used` (file names).
    pub fn release_except(&self, used: &std::collections::BTreeSet<&str>) {
        for (file, block) in &self.blocks {
            if !used.contains(file.as_str()) {
                block.model.release();
            }
        }
    }

    /// Plans every block of `chain` for the typical query lengths ahead of the first request.
    pub fn warm_up(&self, chain: &[String], lengths: &[usize]) -> Result<(), LegalError> {
        let bucket = self.bucket(chain);
        for &len in lengths {
            let seq = len.div_ceil(bucket) * bucket;
            let hidden = [1, seq, HIDDEN];
            let mask = [1, seq];
            for file in chain {
                let block = &self.blocks[file];
                let shapes: Vec<(ElementType, &[usize])> = match block.kind {
                    BlockKind::Embeddings => vec![(ElementType::I64, &mask)],
                    BlockKind::Layer => {
                        vec![(ElementType::F32, &hidden), (ElementType::F32, &mask)]
                    }
                    BlockKind::Stitch => vec![(ElementType::F32, &hidden)],
                };
                block.model.warm_up(&shapes)?;
            }
            self.pool
                .warm_up(&[(ElementType::F32, &hidden), (ElementType::F32, &mask)])?;
        }
        Ok(())
    }
}
