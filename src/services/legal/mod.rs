//! Statute-law retrieval: a legal question in, the most relevant Civil Code articles out.
//!
//! The pipeline, per query: tokenize, run the operating point's chain of encoder blocks
//! ([`encoder`]), compare with the article and sentence index of the chain's output space
//! ([`index`]), add BM25 ([`bm25`]), combine and cut the list ([`scoring`]).
//!
//! Operating points are declared in `models/legal/manifest.toml`: each names its chain of
//! blocks (the L3 or L6 anchor, an SN-Net stitch from L3 into L6, or a CoLa chain of L6
//! layers) and the index space it is compared in; `bm25` uses no encoder at all. Articles
//! are always indexed offline with the full anchor of their space, so a cheaper point only
//! makes the query side cheaper.
//!
//! This module must not know how requests arrive; [`service`] adapts it to MQTT.

pub mod bm25;
pub mod corpus;
pub mod encoder;
pub mod index;
pub mod scoring;
pub mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use self::bm25::{Bm25, Bm25Params};
pub use self::corpus::{Article, Query};
use self::encoder::Blocks;
use self::index::SpaceIndex;
use self::scoring::SentenceMap;
pub use self::scoring::{ScoringSettings, Signals};
pub use self::service::LegalService;
use crate::engine::Engine;
use crate::models::{ModelDir, ModelError};
use crate::policy::PointSpec;

/// A query longer than this (bytes) is refused: exam questions are a few hundred bytes and
/// the encoders read at most 256 tokens anyway.
pub const MAX_QUERY_BYTES: usize = 4096;
/// The most articles one request may ask for.
pub const MAX_K: usize = 50;

/// Why the legal service could not load or answer.
#[derive(Debug, thiserror::Error)]
pub enum LegalError {
    #[error(transparent)]
    Files(#[from] ModelError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("legal model: {0}")]
    Model(String),
    #[error("corpus {path}: {message}")]
    Corpus { path: PathBuf, message: String },
    /// The request itself is wrong (empty, unknown point, ...).
    #[error("{0}")]
    BadQuery(String),
    /// The query is longer than [`MAX_QUERY_BYTES`].
    #[error("the query is {0} bytes; at most {MAX_QUERY_BYTES} are accepted")]
    TooLarge(usize),
}

impl LegalError {
    /// The stable code a client sees (`bad_request`, `too_large`, `internal`).
    pub fn code(&self) -> &'static str {
        match self {
            LegalError::BadQuery(_) => "bad_request",
            LegalError::TooLarge(_) => "too_large",
            _ => "internal",
        }
    }
}

/// An operating point: the chain of blocks the query runs through and the index it is
/// compared with; no chain means BM25 alone.
#[derive(Debug, Clone, PartialEq)]
pub struct LegalPoint {
    pub name: String,
    pub quality: Option<f64>,
    /// `l3` or `l6`; `None` for BM25.
    pub space: Option<String>,
    pub chain: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointKnobs {
    space: Option<String>,
    chain: Vec<String>,
}

/// One returned article.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub article: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heading: Option<String>,
    pub score: f32,
    /// The gap rule's answer: part of the returned set (what COLIEE scores).
    pub selected: bool,
    pub snippet: String,
}

/// A query's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    pub point: String,
    /// The top `k` articles, best first; the first `selected` ones form the answer set.
    pub hits: Vec<Hit>,
    pub encode_ms: f64,
    pub total_ms: f64,
}

/// The loaded retriever: corpus, BM25, blocks, indexes and points.
pub struct Legal {
    articles: Vec<Article>,
    bm25: Bm25,
    blocks: Blocks,
    spaces: BTreeMap<String, SpaceIndex>,
    sentences: SentenceMap,
    points: Vec<LegalPoint>,
    settings: ScoringSettings,
}

/// Article rows and sentence rows of a rebuilt index, one unit vector each.
pub type IndexRows = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// The default corpus: the COLIEE English Civil Code under the data folder.
pub fn default_corpus() -> PathBuf {
    crate::data::root().join("legal/coliee/text/civil_code_en-1to724-2.txt")
}

impl Legal {
    /// Loads `models/legal` with `engine` and the corpus at `corpus`.
    pub fn load(
        models_root: &Path,
        engine: &dyn Engine,
        corpus: &Path,
    ) -> Result<Legal, LegalError> {
        let dir = ModelDir::open(models_root, "legal")?;
        let articles = corpus::read_code(corpus)?;
        let mut ranges = Vec::with_capacity(articles.len());
        let mut start = 0;
        for a in &articles {
            let n = a.sentences().count();
            ranges.push(start..start + n);
            start += n;
        }
        let sentences = SentenceMap { ranges };
        let mut spaces = BTreeMap::new();
        for space in ["l3", "l6"] {
            let index = SpaceIndex::load(&dir, space)?;
            index.check(articles.len(), start, corpus)?;
            spaces.insert(space.to_string(), index);
        }
        let blocks = Blocks::load(&dir, engine)?;
        let mut points = Vec::new();
        for p in &dir.manifest().points {
            let knobs: PointKnobs = toml::Value::Table(p.knobs.clone())
                .try_into()
                .map_err(|e| LegalError::Model(format!("manifest point {:?}: {e}", p.name)))?;
            if knobs.space.is_some() {
                blocks.check_chain(&knobs.chain)?;
            }
            if let Some(space) = &knobs.space
                && !spaces.contains_key(space)
            {
                return Err(LegalError::Model(format!(
                    "point {:?}: unknown space {space:?}",
                    p.name
                )));
            }
            points.push(LegalPoint {
                name: p.name.clone(),
                quality: p.quality,
                space: knobs.space,
                chain: knobs.chain,
            });
        }
        let settings = match dir.manifest().settings.clone() {
            Some(table) => toml::Value::Table(table)
                .try_into()
                .map_err(|e| LegalError::Model(format!("manifest [settings]: {e}")))?,
            None => ScoringSettings::default(),
        };
        let bm25 = Bm25::new(
            articles.iter().map(Article::embedding_text),
            Bm25Params::default(),
        );
        Ok(Legal {
            articles,
            bm25,
            blocks,
            spaces,
            sentences,
            points,
            settings,
        })
    }

    pub fn articles(&self) -> &[Article] {
        &self.articles
    }

    pub fn points(&self) -> &[LegalPoint] {
        &self.points
    }

    pub fn settings(&self) -> &ScoringSettings {
        &self.settings
    }

    pub fn sentence_map(&self) -> &SentenceMap {
        &self.sentences
    }

    /// The points the controller may choose among (those with a measured quality).
    pub fn point_specs(&self) -> Vec<PointSpec> {
        self.points
            .iter()
            .filter_map(|p| {
                p.quality.map(|quality| PointSpec {
                    name: p.name.clone(),
                    quality,
                })
            })
            .collect()
    }

    /// The point named `name`, or the best-quality one when `None`.
    pub fn point(&self, name: Option<&str>) -> Result<&LegalPoint, LegalError> {
        match name {
            Some(name) => self.points.iter().find(|p| p.name == name).ok_or_else(|| {
                let known: Vec<&str> = self.points.iter().map(|p| p.name.as_str()).collect();
                LegalError::BadQuery(format!(
                    "unknown point {name:?} (known: {})",
                    known.join(", ")
                ))
            }),
            None => self
                .points
                .iter()
                .max_by(|a, b| {
                    a.quality
                        .unwrap_or(0.0)
                        .total_cmp(&b.quality.unwrap_or(0.0))
                })
                .ok_or_else(|| LegalError::Model("the manifest declares no points".into())),
        }
    }

    /// Checks a query's text: not empty, not too long.
    pub fn check_query(query: &str) -> Result<&str, LegalError> {
        let trimmed = query.trim();
        if trimmed.is_empty() {
            return Err(LegalError::BadQuery("the query is empty".into()));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(LegalError::TooLarge(query.len()));
        }
        Ok(trimmed)
    }

    /// BM25 and, for an encoder point, the cosine similarities to articles and sentences.
    pub fn signals(&self, point: &LegalPoint, query: &str) -> Result<Signals, LegalError> {
        let bm25 = self.bm25.scores(query);
        let Some(space) = &point.space else {
            return Ok(Signals {
                bm25,
                ..Signals::default()
            });
        };
        let embedding = self.blocks.embed(&point.chain, query)?;
        let index = &self.spaces[space];
        Ok(Signals {
            bm25,
            article_cosine: Some(index.articles.similarities(&embedding)),
            sentence_cosine: Some(index.sentences.similarities(&embedding)),
        })
    }

    /// Answers `query` at `point` (the best one when `None`) with the top `k` articles.
    pub fn search(&self, query: &str, k: usize, point: Option<&str>) -> Result<Answer, LegalError> {
        let start = Instant::now();
        let query = Self::check_query(query)?;
        if k == 0 || k > MAX_K {
            return Err(LegalError::BadQuery(format!(
                "k must be 1..={MAX_K}, not {k}"
            )));
        }
        let point = self.point(point)?;
        let signals = self.signals(point, query)?;
        let encode_ms = start.elapsed().as_secs_f64() * 1e3;
        let scores = scoring::combine(&signals, &self.sentences, &self.settings);
        let order = scoring::ranked(&scores);
        let selected = scoring::returned_count(&scores, &order, &self.settings);
        let hits = order
            .iter()
            .take(k)
            .enumerate()
            .map(|(rank, &i)| {
                let a = &self.articles[i];
                Hit {
                    article: a.id.clone(),
                    heading: a.heading.clone(),
                    score: scores[i],
                    selected: rank < selected,
                    snippet: snippet(&a.text, 160),
                }
            })
            .collect();
        Ok(Answer {
            point: point.name.clone(),
            hits,
            encode_ms,
            total_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Embeds every article and sentence with the full anchor of each space (what
    /// `edgerun legal index` writes; the shipped index was made the same way in Python).
    pub fn build_index(&self, space: &str, limit: Option<usize>) -> Result<IndexRows, LegalError> {
        let anchor = self
            .points
            .iter()
            .find(|p| p.name == space)
            .ok_or_else(|| LegalError::Model(format!("no anchor point {space:?}")))?;
        let articles = self.articles.iter().take(limit.unwrap_or(usize::MAX));
        let article_vectors = articles
            .clone()
            .map(|a| self.blocks.embed(&anchor.chain, &a.embedding_text()))
            .collect::<Result<Vec<_>, _>>()?;
        let sentence_vectors = articles
            .flat_map(|a| a.sentences())
            .map(|s| self.blocks.embed(&anchor.chain, s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((article_vectors, sentence_vectors))
    }

    /// The shipped index rows of `space` (articles, sentences), for comparison.
    pub fn index(&self, space: &str) -> Option<&SpaceIndex> {
        self.spaces.get(space)
    }

    /// Prepares the plans of every point's chain for typical query lengths.
    pub fn warm_up(&self) -> Result<(), LegalError> {
        for p in &self.points {
            if p.space.is_some() {
                self.blocks.warm_up(&p.chain, &[32, 48, 64])?;
            }
        }
        Ok(())
    }

    /// Token ids of `text`, as the encoders see them.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, LegalError> {
        self.blocks.tokenize(text)
    }

    /// The embedding of `text` at `point` (an encoder point).
    pub fn embed(&self, point: &str, text: &str) -> Result<Vec<f32>, LegalError> {
        let point = self.point(Some(point))?;
        if point.space.is_none() {
            return Err(LegalError::BadQuery(format!(
                "point {:?} has no encoder",
                point.name
            )));
        }
        self.blocks.embed(&point.chain, text)
    }
}

/// The first `chars` characters of `text`, on one line, with an ellipsis when cut.
fn snippet(text: &str, chars: usize) -> String {
    let flat = text.replace('\n', " ");
    match flat.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}...", &flat[..cut]),
        None => flat,
    }
}
