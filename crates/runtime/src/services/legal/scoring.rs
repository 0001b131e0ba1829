//! From per-article signals to a ranked, cut list: hybrid score, attentive sentence scoring
//! and the score-gap rule that decides how many articles to return.
//!
//! * **Hybrid**: `w * bm25 / max(bm25) + (1 - w) * dense`, so the lexical half lies in
//!   [0, 1] like a cosine similarity.
//! * **Attentive** (after Paraformer, Nguyen et al. 2022: the query attends over an
//!   article's sentences): `dense = (1 - l) * cos(q, article) + l * sum_j a_j cos(q, s_j)`,
//!   with `a = softmax(cos(q, s_j) / t)` over the article's sentences. That is the query's
//!   similarity to the attention-pooled sentence vector, so an article whose one relevant
//!   paragraph is drowned by the rest still scores.
//! * **Score gap**: the top article, then every following one whose score is within `gap`
//!   of the top, at most `max_returned`. COLIEE's F2 rewards recall four times as much as
//!   precision, so returning a close second pays.
//!
//! This module is pure arithmetic over vectors: no models, no I/O.

use serde::{Deserialize, Serialize};

/// The knobs of scoring, tuned on the training years by `edgerun bench legal --tune` and
/// stored in the manifest's `[settings]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringSettings {
    /// Weight of normalised BM25 in the hybrid score (0 = dense only, 1 = BM25 only).
    pub bm25_weight: f32,
    /// Weight of attentive sentence scoring inside the dense score (0 = article vector only).
    pub sentence_weight: f32,
    /// Softmax temperature of the sentence attention.
    pub temperature: f32,
    /// Articles scoring within this of the top one are returned too.
    pub gap: f32,
    /// At most this many articles are returned by the gap rule.
    pub max_returned: usize,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        ScoringSettings {
            bm25_weight: 0.5,
            sentence_weight: 0.5,
            temperature: 0.05,
            gap: 0.02,
            max_returned: 3,
        }
    }
}

/// What one query scored against every article, before combination.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// BM25 per article.
    pub bm25: Vec<f32>,
    /// Cosine similarity of the query to each article's vector (none for a lexical point).
    pub article_cosine: Option<Vec<f32>>,
    /// Cosine similarity of the query to each sentence, in index order.
    pub sentence_cosine: Option<Vec<f32>>,
}

/// Which sentences belong to which article: `ranges[a]` indexes the sentence rows of `a`.
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceMap {
    pub ranges: Vec<std::ops::Range<usize>>,
}

/// The attention-pooled sentence score of each article.
pub fn attentive(sentence_cosine: &[f32], map: &SentenceMap, temperature: f32) -> Vec<f32> {
    map.ranges
        .iter()
        .map(|range| {
            let sims = &sentence_cosine[range.clone()];
            let Some(max) = sims.iter().copied().reduce(f32::max) else {
                return 0.0;
            };
            let weights: Vec<f32> = sims
                .iter()
                .map(|s| ((s - max) / temperature).exp())
                .collect();
            let total: f32 = weights.iter().sum();
            sims.iter().zip(&weights).map(|(s, w)| s * w).sum::<f32>() / total
        })
        .collect()
}

/// One combined score per article.
pub fn combine(signals: &Signals, map: &SentenceMap, settings: &ScoringSettings) -> Vec<f32> {
    let max_bm25 = signals.bm25.iter().copied().fold(0.0, f32::max);
    let lexical: Vec<f32> = signals
        .bm25
        .iter()
        .map(|s| if max_bm25 > 0.0 { s / max_bm25 } else { 0.0 })
        .collect();
    let Some(article_cosine) = &signals.article_cosine else {
        return lexical;
    };
    let dense: Vec<f32> = match (&signals.sentence_cosine, settings.sentence_weight) {
        (Some(sentences), l) if l > 0.0 => {
            let att = attentive(sentences, map, settings.temperature);
            article_cosine
                .iter()
                .zip(att)
                .map(|(a, s)| (1.0 - l) * a + l * s)
                .collect()
        }
        _ => article_cosine.clone(),
    };
    let w = settings.bm25_weight;
    lexical
        .iter()
        .zip(dense)
        .map(|(b, d)| w * b + (1.0 - w) * d)
        .collect()
}

/// Article indices by descending score (ties by index, for reproducible answers).
pub fn ranked(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

/// How many of the top of `order` the gap rule returns (at least one).
pub fn returned_count(scores: &[f32], order: &[usize], settings: &ScoringSettings) -> usize {
    let Some(&top) = order.first() else {
        return 0;
    };
    order
        .iter()
        .take(settings.max_returned.max(1))
        .take_while(|&&i| scores[top] - scores[i] <= settings.gap)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_weights_the_most_similar_sentence() {
        let map = SentenceMap {
            ranges: vec![0..2, 2..3, 3..3],
        };
        let sims = [0.9, 0.1, 0.4];
        let att = attentive(&sims, &map, 0.1);
        // weights e^0 and e^-8 -> 0.9 * 0.999665 + 0.1 * 0.000335 = 0.899732
        assert!((att[0] - 0.899732).abs() < 1e-5, "{att:?}");
        assert!((att[1] - 0.4).abs() < 1e-6);
        assert_eq!(att[2], 0.0);
    }

    #[test]
    fn hybrid_normalises_bm25_and_the_gap_rule_cuts() {
        let map = SentenceMap {
            ranges: vec![0..1, 1..2, 2..3],
        };
        let signals = Signals {
            bm25: vec![4.0, 2.0, 0.0],
            article_cosine: Some(vec![0.5, 0.7, 0.2]),
            sentence_cosine: None,
        };
        let settings = ScoringSettings {
            bm25_weight: 0.5,
            sentence_weight: 0.0,
            gap: 0.2,
            max_returned: 3,
            ..ScoringSettings::default()
        };
        let scores = combine(&signals, &map, &settings);
        let expected = [0.75, 0.6, 0.1];
        for (s, e) in scores.iter().zip(expected) {
            assert!((s - e).abs() < 1e-6, "{scores:?}");
        }
        let order = ranked(&scores);
        assert_eq!(order, [0, 1, 2]);
        assert_eq!(returned_count(&scores, &order, &settings), 2);
        let tight = ScoringSettings {
            gap: 0.1,
            ..settings
        };
        assert_eq!(returned_count(&scores, &order, &tight), 1);
        let lexical = Signals {
            article_cosine: None,
            ..signals
        };
        assert_eq!(combine(&lexical, &map, &settings), [1.0, 0.5, 0.0]);
    }
}
