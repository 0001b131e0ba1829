//! Okapi BM25 over the articles: the lexical half of the hybrid score.
//!
//! Terms are lowercase alphanumeric runs, English stopwords dropped, Snowball-stemmed
//! (`rust-stemmers`). Scores use Lucene's idf, `ln(1 + (N - df + 0.5) / (df + 0.5))`, which
//! never goes negative for common terms. No crate on crates.io offers a small, maintained
//! BM25 over an in-memory corpus without pulling a search engine, so this is the formula,
//! written out.

use std::collections::HashMap;

use rust_stemmers::{Algorithm, Stemmer};

/// BM25's two parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation.
    pub k1: f32,
    /// Length normalisation (0 = none, 1 = full).
    pub b: f32,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Bm25Params { k1: 1.2, b: 0.75 }
    }
}

/// Words too common to say anything about which article is meant.
const STOPWORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// Text -> terms.
pub struct Analyzer {
    stemmer: Stemmer,
}

impl Default for Analyzer {
    fn default() -> Self {
        Analyzer {
            stemmer: Stemmer::create(Algorithm::English),
        }
    }
}

impl Analyzer {
    pub fn terms(&self, text: &str) -> Vec<String> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .filter(|w| STOPWORDS.binary_search(&w.as_str()).is_err())
            .map(|w| self.stemmer.stem(&w).into_owned())
            .collect()
    }
}

/// An inverted index of documents, scored with BM25.
pub struct Bm25 {
    analyzer: Analyzer,
    params: Bm25Params,
    /// term -> (document, term frequency)
    postings: HashMap<String, Vec<(usize, u32)>>,
    lengths: Vec<f32>,
    average_length: f32,
}

impl Bm25 {
    pub fn new(documents: impl IntoIterator<Item = impl AsRef<str>>, params: Bm25Params) -> Bm25 {
        let analyzer = Analyzer::default();
        let mut postings: HashMap<String, Vec<(usize, u32)>> = HashMap::new();
        let mut lengths = Vec::new();
        for (doc, text) in documents.into_iter().enumerate() {
            let terms = analyzer.terms(text.as_ref());
            lengths.push(terms.len() as f32);
            let mut counts: HashMap<String, u32> = HashMap::new();
            for term in terms {
                *counts.entry(term).or_default() += 1;
            }
            for (term, tf) in counts {
                postings.entry(term).or_default().push((doc, tf));
            }
        }
        let average_length = lengths.iter().sum::<f32>() / lengths.len().max(1) as f32;
        Bm25 {
            analyzer,
            params,
            postings,
            lengths,
            average_length,
        }
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    fn idf(&self, document_frequency: usize) -> f32 {
        let n = self.lengths.len() as f32;
        let df = document_frequency as f32;
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }

    /// One score per document (0 where no query term occurs). A repeated query term counts
    /// once per occurrence, as in the original formulation.
    pub fn scores(&self, query: &str) -> Vec<f32> {
        let Bm25Params { k1, b } = self.params;
        let mut scores = vec![0.0; self.lengths.len()];
        for term in self.analyzer.terms(query) {
            let Some(postings) = self.postings.get(&term) else {
                continue;
            };
            let idf = self.idf(postings.len());
            for &(doc, tf) in postings {
                let tf = tf as f32;
                let norm = 1.0 - b + b * self.lengths[doc] / self.average_length;
                scores[doc] += idf * tf * (k1 + 1.0) / (tf + k1 * norm);
            }
        }
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopwords_are_sorted_for_binary_search() {
        assert!(STOPWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn analyzer_lowercases_drops_stopwords_and_stems() {
        let terms = Analyzer::default().terms("The Lessor's rights: terminating the leases!");
        assert_eq!(terms, ["lessor", "s", "right", "termin", "leas"]);
    }

    #[test]
    fn scores_match_hand_computed_values() {
        // Three documents; lengths after analysis 2, 3 and 1 terms, average 2.
        let docs = ["lease land", "lease lease house", "contract"];
        let bm25 = Bm25::new(docs, Bm25Params { k1: 1.2, b: 0.75 });
        let scores = bm25.scores("lease");
        // df(leas) = 2, N = 3: idf = ln(1 + 1.5 / 2.5) = ln 1.6 = 0.470004.
        // doc 0: tf 1, norm = 0.25 + 0.75 * 2/2 = 1     -> 0.470004 * 2.2 / 2.2 = 0.470004
        // doc 1: tf 2, norm = 0.25 + 0.75 * 3/2 = 1.375 -> 0.470004 * 4.4 / 3.65 = 0.566580
        let expected = [0.470004, 0.566580, 0.0];
        for (s, e) in scores.iter().zip(expected) {
            assert!((s - e).abs() < 1e-5, "{scores:?}");
        }
        // df(contract) = 1: idf = ln(1 + 2.5 / 1.5) = 0.980829; doc 2 length 1,
        // norm = 0.25 + 0.375 = 0.625 -> 0.980829 * 2.2 / (1 + 0.75) = 1.233043.
        let scores = bm25.scores("contracts");
        assert!((scores[2] - 1.233043).abs() < 1e-5, "{scores:?}");
        assert_eq!(scores[0], 0.0);
    }
}
