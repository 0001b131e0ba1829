//! The statute text, parsed from the COLIEE file that ships in `models/legal`.
//!
//! The corpus is the service's document collection: it ships in `models/legal` (the
//! manifest's `corpus` file), and a configured path may replace it. The rules here are the ones `export/legal/common.py` uses to build the
//! shipped index, so both agree on article order and sentences.

use std::path::Path;

use super::LegalError;

/// One article of the code.
#[derive(Debug, Clone, PartialEq)]
pub struct Article {
    /// `"1"`, `"398-2"`, ...
    pub id: String,
    /// The `(heading)` line right before the article, without parentheses.
    pub heading: Option<String>,
    /// Paragraphs and items, one per line.
    pub text: String,
}

impl Article {
    /// What the encoders embed: the heading, a colon, the text.
    pub fn embedding_text(&self) -> String {
        match &self.heading {
            Some(h) => format!("{h}: {}", self.text),
            None => self.text.clone(),
        }
    }

    /// The units attentive scoring weighs: the article's paragraphs and items (its lines).
    pub fn sentences(&self) -> impl Iterator<Item = &str> {
        self.text.lines().filter(|l| !l.trim().is_empty())
    }
}

/// `Article 398-2  text` -> (`398-2`, `text`); also `Article 537(1) text`, as gold
/// articles are quoted in the query files.
pub fn article_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("Article ")?;
    let id_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    let id = &rest[..id_len];
    let valid = !id.is_empty()
        && id
            .split('-')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    valid.then(|| (id, rest[id_len..].trim()))
}

/// Part, Chapter, Section, Subsection or Division headings end the article before them.
fn structure_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let (Some(kind), Some(number)) = (words.next(), words.next()) else {
        return false;
    };
    matches!(
        kind,
        "Part" | "Chapter" | "Section" | "Subsection" | "Division"
    ) && number
        .chars()
        .all(|c| c.is_ascii_digit() || "IVXLCDM".contains(c))
}

fn heading_line(line: &str) -> bool {
    line.starts_with('(') && line.ends_with(')')
}

/// Parses the code's text: articles in order, deleted ones left out.
pub fn parse_code(text: &str) -> Vec<Article> {
    let lines: Vec<&str> = text
        .trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .collect();
    let mut articles: Vec<Article> = Vec::new();
    // Whether lines that follow belong to the last article pushed.
    let mut open = false;
    for (i, line) in lines.iter().enumerate() {
        if let Some((id, body)) = article_line(line) {
            let heading = i
                .checked_sub(1)
                .map(|p| lines[p])
                .filter(|p| heading_line(p))
                .map(|p| p[1..p.len() - 1].to_string());
            open = body != "Deleted";
            if open {
                articles.push(Article {
                    id: id.to_string(),
                    heading,
                    text: body.to_string(),
                });
            }
            continue;
        }
        let next_is_article = lines.get(i + 1).is_some_and(|n| article_line(n).is_some());
        if line.is_empty()
            || structure_line(line)
            || (heading_line(line) && next_is_article)
            || line.starts_with("Articles ")
        {
            open = false;
            continue;
        }
        if open && let Some(article) = articles.last_mut() {
            article.text.push('\n');
            article.text.push_str(line);
        }
    }
    articles
}

/// Reads and parses the code from a file.
pub fn read_code(path: &Path) -> Result<Vec<Article>, LegalError> {
    let text = std::fs::read_to_string(path).map_err(|source| LegalError::Corpus {
        path: path.to_path_buf(),
        message: source.to_string(),
    })?;
    code_from_text(&text, path)
}

/// Parses the code read from `path`; a text with no articles is an error.
pub fn code_from_text(text: &str, path: &Path) -> Result<Vec<Article>, LegalError> {
    let articles = parse_code(text);
    if articles.is_empty() {
        return Err(LegalError::Corpus {
            path: path.to_path_buf(),
            message: "no `Article N` lines found".into(),
        });
    }
    Ok(articles)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "\u{feff}Civil Code\r\nPart I General Provisions\r\nChapter I Common Provisions\r\n\
(Fundamental Principles)\r\nArticle 1  (1) Private rights must be congruent with the public welfare.\r\n\
(2) Abuse of rights is not permitted.\r\nArticle 2  This Code must be construed.\r\n\
Section 2 Mental Capacity\r\nArticle 3-2  If the person did not have mental capacity, the act is void.\r\n\
Articles 38 to 84  Deleted\r\nArticle 208  Deleted\r\n(Age)\r\nArticle 4  The age of majority is 18.\r\n";

    #[test]
    fn parses_articles_headings_and_paragraphs() {
        let articles = parse_code(CODE);
        let ids: Vec<&str> = articles.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3-2", "4"]);
        assert_eq!(
            articles[0].heading.as_deref(),
            Some("Fundamental Principles")
        );
        assert_eq!(
            articles[0].text,
            "(1) Private rights must be congruent with the public welfare.\n(2) Abuse of rights is not permitted."
        );
        assert_eq!(articles[1].heading, None);
        assert_eq!(
            articles[2].text,
            "If the person did not have mental capacity, the act is void."
        );
        assert_eq!(articles[3].heading.as_deref(), Some("Age"));
        assert_eq!(articles[0].sentences().count(), 2);
        assert_eq!(
            articles[3].embedding_text(),
            "Age: The age of majority is 18."
        );
    }
}
