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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use self::bm25::{Bm25, Bm25Params};
pub use self::corpus::Article;
use self::encoder::Blocks;
use self::index::SpaceIndex;
use self::scoring::SentenceMap;
pub use self::scoring::{ScoringSettings, Signals};
pub use self::service::{LegalRequest, LegalService};
use crate::engine::Engine;
use crate::models::PointSet;
use crate::models::{ModelDir, ModelError};
use crate::services::WarmUp;
use crate::services::deadline::{self, Meter, Rung};

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
    /// The point whose work the answer is.
    pub point: String,
    /// The point decided, where the query stepped down from it to meet its deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stepped_down_from: Option<String>,
    /// Whether encoder blocks ran before the query fell back to BM25 alone.
    #[serde(skip)]
    pub abandoned_work: bool,
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
    point_set: PointSet,
    settings: ScoringSettings,
    meters: Meters,
}

/// What a query's stages have cost lately, for meeting deadlines.
#[derive(Debug, Default)]
struct Meters {
    /// Milliseconds per token position, per block file.
    block_ms_per_position: BTreeMap<String, Meter>,
    /// Pooling, similarities and scoring, after the last block.
    finish_ms: Meter,
}

/// Article rows and sentence rows of a rebuilt index, one unit vector each.
pub type IndexRows = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// Questions to measure the points with on a device: statute questions of the typical
/// length of bar-exam questions (about 40 words; written for edgerun, not taken from any
/// benchmark).
pub const SAMPLE_QUERIES: &[&str] = &[
    "A, a minor of sixteen, sold a bicycle that A owned to B without obtaining the consent of \
     A's parents, who are A's statutory agents. In this case, the parents may rescind the \
     contract of sale even after B has paid the price.",
    "If the obligor fails to perform the obligation by the due date agreed in the contract, \
     the obligee may demand compensation for the damage caused by the delay, unless the \
     failure is due to grounds not attributable to the obligor.",
    "A promised in writing to give a painting to B free of charge. Before the painting was \
     delivered, A changed his mind. A may not cancel the gift because the promise was made \
     in writing.",
    "A leased a house to B. The house was completely destroyed by a fire caused by lightning, \
     without the fault of either party. In this case, the lease ends, and B is no longer \
     obliged to pay rent for the period after the fire.",
    "A person who finds a lost article and gives notice under the Lost Property Act acquires \
     its ownership if its owner is not identified within three months after the notice was \
     given.",
    "C became the surety for B's loan from A at B's request. After C paid the whole debt to A \
     in place of B, C may claim reimbursement from B of the amount paid, together with \
     interest from the day of payment and unavoidable expenses.",
    "A, who had acquired land from B, did not register the transfer. B then sold the same \
     land to C, who registered it first. In this case, A may not assert against C the \
     ownership of the land acquired from B.",
    "An agent without authority concluded a contract on behalf of the principal. If the \
     principal ratifies the contract, it takes effect retroactively from the time of the \
     contract, unless otherwise agreed, without prejudice to third parties.",
];

impl Legal {
    /// Loads `models/legal` with `engine`. The articles come from the statute text that ships
    /// there (manifest role `corpus`, checked against its sha256) unless `corpus` names
    /// another copy; either must be the text the shipped index was built from.
    pub fn load(
        models_root: &Path,
        engine: &dyn Engine,
        corpus: Option<&Path>,
    ) -> Result<Legal, LegalError> {
        let dir = ModelDir::open(models_root, "legal")?;
        let (articles, corpus) = match corpus {
            Some(path) => (corpus::read_code(path)?, path.to_path_buf()),
            None => shipped_code(&dir)?,
        };
        let corpus = corpus.as_path();
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
        let meters = Meters {
            block_ms_per_position: dir
                .manifest()
                .points
                .iter()
                .flat_map(|p| p.knobs.get("chain").and_then(toml::Value::as_array))
                .flatten()
                .filter_map(|f| Some((f.as_str()?.to_string(), Meter::default())))
                .collect(),
            finish_ms: Meter::default(),
        };
        let point_set = PointSet::from_manifest(dir.manifest())?
            .ok_or_else(|| LegalError::Model("the manifest declares no points".into()))?;
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
            point_set,
            settings,
            meters,
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

    /// The manifest's declaration of the points (default point, target, qualities).
    pub fn point_set(&self) -> &PointSet {
        &self.point_set
    }

    /// The point named `name`, or the manifest's default when `None`.
    pub fn point(&self, name: Option<&str>) -> Result<&LegalPoint, LegalError> {
        let name = name.unwrap_or(&self.point_set.default_point);
        self.points.iter().find(|p| p.name == name).ok_or_else(|| {
            LegalError::BadQuery(format!(
                "unknown point {name:?} (known: {})",
                self.point_set.names().join(", ")
            ))
        })
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
        let embedding = match point.space {
            Some(_) => Some(self.blocks.embed(&point.chain, query)?),
            None => None,
        };
        Ok(self.signals_of(point, query, embedding))
    }

    fn signals_of(&self, point: &LegalPoint, query: &str, embedding: Option<Vec<f32>>) -> Signals {
        let bm25 = self.bm25.scores(query);
        match (&point.space, embedding) {
            (Some(space), Some(embedding)) => {
                let index = &self.spaces[space];
                Signals {
                    bm25,
                    article_cosine: Some(index.articles.similarities(&embedding)),
                    sentence_cosine: Some(index.sentences.similarities(&embedding)),
                }
            }
            _ => Signals {
                bm25,
                ..Signals::default()
            },
        }
    }

    /// Answers `query` at `point` (the default when `None`) with the top `k` articles.
    pub fn search(&self, query: &str, k: usize, point: Option<&str>) -> Result<Answer, LegalError> {
        self.search_by(query, k, point, None)
    }

    /// Like [`Legal::search`], due by `deadline`: between two blocks of the encoder chain,
    /// a query that would run late finishes at the best cheaper declared point its blocks
    /// so far still lead to (a CoLa chain that skips the remaining middle layers, a stitch
    /// that joins later, or BM25 alone), and its answer names both points.
    pub fn search_by(
        &self,
        query: &str,
        k: usize,
        point: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<Answer, LegalError> {
        let start = Instant::now();
        let query = Self::check_query(query)?;
        if k == 0 || k > MAX_K {
            return Err(LegalError::BadQuery(format!(
                "k must be 1..={MAX_K}, not {k}"
            )));
        }
        let decided = self.point(point)?;
        let (served, embedding, abandoned_work) = self.encode_by(decided, query, deadline)?;
        let encode_ms = start.elapsed().as_secs_f64() * 1e3;
        let finishing = Instant::now();
        let signals = self.signals_of(served, query, embedding);
        let scores = scoring::combine(&signals, &self.sentences, &self.settings);
        let order = scoring::ranked(&scores);
        let selected = scoring::returned_count(&scores, &order, &self.settings);
        if served.space.is_some() {
            self.meters
                .finish_ms
                .record(finishing.elapsed().as_secs_f64() * 1e3);
        }
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
            point: served.name.clone(),
            stepped_down_from: (served.name != decided.name).then(|| decided.name.clone()),
            abandoned_work,
            hits,
            encode_ms,
            total_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// The query's embedding along `decided`'s chain or, where the deadline says so, along
    /// a cheaper point's ([`deadline::finish_at`]); the point it was computed at, and
    /// whether blocks ran that the point does not use (a fall-back to BM25 alone).
    fn encode_by<'p>(
        &'p self,
        decided: &'p LegalPoint,
        query: &str,
        deadline: Option<Instant>,
    ) -> Result<(&'p LegalPoint, Option<Vec<f32>>, bool), LegalError> {
        if decided.space.is_none() {
            return Ok((decided, None, false));
        }
        let rungs: Vec<Rung<'_, String>> = self
            .points
            .iter()
            .map(|p| Rung {
                quality: p.quality,
                stages: &p.chain,
            })
            .collect();
        let decided_index = deadline::index_in(&self.points, decided);
        let mut encoding = self.blocks.start(&decided.chain, query)?;
        let positions = encoding.positions() as f64;
        let (mut current, mut done) = (decided_index, 0);
        // Every query teaches the meters, with a deadline or not.
        loop {
            let finishing_ms = self.meters.finish_ms.average().unwrap_or(0.0);
            let time_left_ms = deadline::ms_left(deadline, finishing_ms);
            current =
                deadline::finish_at(&rungs, decided_index, current, done, time_left_ms, |f| {
                    Some(self.meters.block_ms_per_position.get(f)?.average()? * positions)
                });
            let point = &self.points[current];
            if point.space.is_none() {
                return Ok((point, None, done > 0));
            }
            let Some(file) = point.chain.get(done) else {
                return Ok((point, Some(encoding.finish()?), false));
            };
            let started = Instant::now();
            encoding.run(file)?;
            if let Some(meter) = self.meters.block_ms_per_position.get(file) {
                meter.record(started.elapsed().as_secs_f64() * 1e3 / positions);
            }
            done += 1;
        }
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

    /// Prepares the plans of the chains of `scope`'s points for typical query lengths.
    pub fn warm_up(&self, scope: WarmUp<'_>) -> Result<(), LegalError> {
        for p in &self.points {
            if p.space.is_some() && scope.includes(&p.name, &self.point_set.default_point) {
                self.blocks.warm_up(&p.chain, &[32, 48, 64])?;
            }
        }
        Ok(())
    }

    /// Drops the plans of the blocks that no point of `scope` chains.
    pub fn release_outside(&self, scope: WarmUp<'_>) {
        let default = &self.point_set.default_point;
        let used: BTreeSet<&str> = self
            .points
            .iter()
            .filter(|p| scope.includes(&p.name, default))
            .flat_map(|p| p.chain.iter().map(String::as_str))
            .collect();
        self.blocks.release_except(&used);
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

/// The statute text in `models/legal`: the manifest's `corpus` file, read through its sha256.
fn shipped_code(dir: &ModelDir) -> Result<(Vec<Article>, PathBuf), LegalError> {
    let file = dir
        .manifest()
        .files
        .iter()
        .find(|f| f.role == "corpus")
        .ok_or_else(|| LegalError::Model("the manifest lists no `corpus` file".into()))?;
    let path = dir.dir().join(&file.file);
    let text = dir.read_verified_text(&file.file)?;
    Ok((corpus::code_from_text(&text, &path)?, path))
}
