//! The shared benchmark data, for tests and benchmarks; the runtime never reads it.
//!
//! Everything is found through [`root`] (env `EDGERUN_DATA`, default `../shared/data`), and
//! nothing is copied into the repository (the statute text the legal service serves ships
//! in `models/legal`, and a test checks it is this data's, byte for byte).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edgerun_runtime::services::legal::corpus::article_line;

/// The data folder: `EDGERUN_DATA`, else `../shared/data`.
pub fn root() -> PathBuf {
    std::env::var_os("EDGERUN_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"))
}

/// A cropped word image and its label.
#[derive(Debug, Clone)]
pub struct WordCrop {
    pub path: PathBuf,
    pub label: String,
}

/// IIIT5K-Words test set (3000 crops).
pub fn iiit5k() -> Result<Vec<WordCrop>> {
    read_tags(&root().join("ocr/iiit5k"))
}

/// ICDAR 2015 word recognition test set (2077 crops).
pub fn ic15_words() -> Result<Vec<WordCrop>> {
    read_tags(&root().join("ocr/ic15-words"))
}

/// Reads `test.tags`: `relative/path.png LABEL` per line (labels may contain spaces).
fn read_tags(dir: &Path) -> Result<Vec<WordCrop>> {
    let tags = dir.join("test.tags");
    let text = std::fs::read_to_string(&tags)
        .with_context(|| format!("reading {} (set EDGERUN_DATA?)", tags.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (path, label) = line
                .split_once(' ')
                .with_context(|| format!("{}: bad line {line:?}", tags.display()))?;
            Ok(WordCrop {
                path: dir.join(path),
                label: label.to_string(),
            })
        })
        .collect()
}

/// A ground-truth word of an end-to-end image.
#[derive(Debug, Clone)]
pub struct GtWord {
    pub quad: [[f64; 2]; 4],
    pub text: String,
    /// `false` for `###` (don't care) regions.
    pub care: bool,
}

/// A full scene image with its ground-truth words.
#[derive(Debug, Clone)]
pub struct SceneImage {
    pub path: PathBuf,
    pub words: Vec<GtWord>,
}

/// ICDAR 2015 end-to-end test images `img_1..img_count` (at most 250 here).
pub fn ic15_e2e(count: usize) -> Result<Vec<SceneImage>> {
    let dir = root().join("ocr/ic15-e2e");
    (1..=count)
        .map(|n| {
            let gt = dir.join(format!("Gts/gt_img_{n}.txt"));
            let text = std::fs::read_to_string(&gt)
                .with_context(|| format!("reading {} (set EDGERUN_DATA?)", gt.display()))?;
            let words = text
                .trim_start_matches('\u{feff}')
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| parse_gt_line(l).with_context(|| format!("{}: {l:?}", gt.display())))
                .collect::<Result<_>>()?;
            Ok(SceneImage {
                path: dir.join(format!("Imgs/img_{n}.jpg")),
                words,
            })
        })
        .collect()
}

/// `x1,y1,...,x4,y4,TEXT` where TEXT may itself contain commas.
fn parse_gt_line(line: &str) -> Result<GtWord> {
    let fields: Vec<&str> = line.trim_end_matches('\r').splitn(9, ',').collect();
    if fields.len() != 9 {
        bail!("expected 8 coordinates and a text");
    }
    let mut quad = [[0.0; 2]; 4];
    for i in 0..8 {
        quad[i / 2][i % 2] = fields[i].trim().parse()?;
    }
    let text = fields[8].to_string();
    Ok(GtWord {
        quad,
        care: text != "###",
        text,
    })
}

/// The standard recognition protocol's comparison key: lower-case ASCII letters and digits only.
pub fn word_key(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// COLIEE Task 3 years for training and tuning; R05 is the test year.
pub const COLIEE_TRAIN_YEARS: &[&str] = &[
    "H18", "H19", "H20", "H21", "H22", "H23", "H24", "H25", "H26", "H27", "H28", "H29", "H30",
    "R01", "R02", "R03", "R04",
];

/// The COLIEE statute-retrieval queries of the given exam years, with their gold articles.
pub fn coliee_queries(years: &[&str]) -> Result<Vec<Query>> {
    let mut queries = Vec::new();
    for year in years {
        let path = root().join(format!("legal/coliee/train/riteval_{year}_en.xml"));
        let xml = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (set EDGERUN_DATA?)", path.display()))?;
        let parsed = parse_queries(&xml).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        queries.extend(parsed);
    }
    if queries.is_empty() {
        bail!("no COLIEE queries for {years:?}");
    }
    Ok(queries)
}

/// An exam query with its gold articles.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub id: String,
    pub text: String,
    pub gold: Vec<String>,
}

/// Parses a COLIEE `riteval_*.xml` file: `<pair id><t1>gold articles</t1><t2>query</t2>`.
pub fn parse_queries(xml: &str) -> Result<Vec<Query>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let mut queries = Vec::new();
    for pair in doc.descendants().filter(|n| n.has_tag_name("pair")) {
        let id = pair.attribute("id").ok_or("a <pair> without id")?;
        let child_text = |tag: &str| {
            pair.children()
                .find(|c| c.has_tag_name(tag))
                .and_then(|c| c.text())
                .ok_or_else(|| format!("{id}: no <{tag}>"))
        };
        let gold = child_text("t1")?
            .lines()
            .filter_map(|l| article_line(l.trim()))
            .map(|(id, _)| id.to_string())
            .collect();
        queries.push(Query {
            id: id.to_string(),
            text: child_text("t2")?.trim().to_string(),
            gold,
        });
    }
    Ok(queries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queries_with_gold_articles() {
        let xml = "<?xml version=\"1.0\"?><dataset><pair id=\"R05-01-A\" label=\"Y\"><t1>\n(Heading)\n\
Article 537(1) If one party promises...\n(2) The validity...\nArticle 3-2 If the person...\n</t1>\
<t2>\nThe validity of a contract.\n</t2></pair></dataset>";
        let queries = parse_queries(xml).unwrap();
        assert_eq!(queries.len(), 1);
        assert_eq!(queries[0].id, "R05-01-A");
        assert_eq!(queries[0].text, "The validity of a contract.");
        assert_eq!(queries[0].gold, ["537", "3-2"]);
    }

    #[test]
    fn gt_text_may_contain_commas() {
        let w = parse_gt_line("1,2,3,4,5,6,7,8,a,b").unwrap();
        assert_eq!(w.text, "a,b");
        assert_eq!(w.quad[3], [7.0, 8.0]);
        assert!(w.care);
        assert!(!parse_gt_line("1,2,3,4,5,6,7,8,###").unwrap().care);
        assert!(parse_gt_line("1,2,3").is_err());
    }

    #[test]
    fn word_key_is_case_insensitive_alphanumeric() {
        assert_eq!(word_key("Don't-STOP 42!"), "dontstop42");
        assert_eq!(word_key("é-"), "");
    }
}
