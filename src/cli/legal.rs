//! `edgerun legal "QUESTION"`: prints the most relevant Civil Code articles as JSON, and
//! `edgerun legal index`: rebuilds the article index with this build's encoders.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use super::GlobalArgs;
use super::settings::{Runtime, Warm};
use crate::services::legal::index::Rows;
use crate::services::legal::service::DEFAULT_K;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LegalArgs {
    #[command(subcommand)]
    pub command: Option<LegalCommand>,
    /// The legal question, in English.
    #[arg(value_name = "QUESTION")]
    pub query: Option<String>,
    /// How many articles to list.
    #[arg(short, default_value_t = DEFAULT_K)]
    pub k: usize,
    /// Operating point (see `models/legal/manifest.toml`); the best one by default.
    #[arg(long, value_name = "NAME")]
    pub point: Option<String>,
    /// Another copy of the statute text (default: the Civil Code in models/legal).
    #[arg(long, global = true, value_name = "FILE")]
    pub corpus: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum LegalCommand {
    /// Embeds every article and sentence with each space's anchor and writes the index
    /// files (the format of the shipped `index_*` files), reporting how far they are from
    /// the shipped index.
    Index {
        /// Where to write the index files.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Only the first N articles (a quick check).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
}

pub fn run(global: &GlobalArgs, args: &LegalArgs) -> Result<ExitCode> {
    let runtime = Runtime::from_args(global)?;
    let legal = runtime.legal(args.corpus.as_deref(), Warm::Cold)?;
    match &args.command {
        Some(LegalCommand::Index { out, limit }) => {
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            for space in ["l3", "l6"] {
                let (articles, sentences) = legal.build_index(space, *limit)?;
                let shipped = legal.index(space).expect("both spaces load");
                let worst = articles
                    .iter()
                    .enumerate()
                    .map(|(r, built)| 1.0 - shipped.articles.similarity(r, built))
                    .fold(0.0f32, f32::max);
                for (kind, rows) in [("articles", &articles), ("sentences", &sentences)] {
                    let (values, scales) = Rows::encode(rows);
                    let stem = out.join(format!("index_{space}_{kind}"));
                    std::fs::write(stem.with_extension("i8"), values)?;
                    std::fs::write(stem.with_extension("scale"), scales)?;
                }
                println!(
                    "{}",
                    json!({"space": space, "articles": articles.len(), "sentences": sentences.len(),
                           "max_cosine_distance_to_shipped": worst})
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let Some(query) = &args.query else {
                bail!("give a question: edgerun legal \"QUESTION\" (or `edgerun legal index`)");
            };
            match legal.search(query, args.k, args.point.as_deref()) {
                Ok(answer) => {
                    let mut out = std::io::stdout().lock();
                    serde_json::to_writer(&mut out, &answer)?;
                    writeln!(out)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!(
                        "{}",
                        json!({"error": {"code": e.code(), "message": e.to_string()}})
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
