//! `edgerun generate "TEXT" -o out.png`: draws a prompt with a distilled generator and
//! prints what was made (point, seed, evaluations, timing) as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use super::GlobalArgs;
use super::settings::{Runtime, Warm};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to draw: for the shipped models one character, a capital or a digit (the
    /// alphabet and length are in `models/generate/manifest.toml`).
    #[arg(value_name = "TEXT")]
    pub prompt: String,
    /// Where to write the PNG.
    #[arg(short, long, value_name = "FILE")]
    pub out: PathBuf,
    /// Generator evaluations (1..4); the manifest's default point when neither this nor
    /// --point is given.
    #[arg(long, value_name = "N", conflicts_with = "point")]
    pub steps: Option<usize>,
    /// Operating point by name (`teacher:50` runs the undistilled teacher).
    #[arg(long, value_name = "NAME")]
    pub point: Option<String>,
    /// Noise seed: the same seed and prompt give the same image.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(global: &GlobalArgs, args: &GenerateArgs) -> Result<ExitCode> {
    let runtime = Runtime::from_args(global)?;
    let generate = runtime.generate(Warm::Cold)?;
    let point = match args.steps {
        Some(steps) => Some(generate.point_with_steps(steps)?.name.clone()),
        None => args.point.clone(),
    };
    let generated = generate.generate(&args.prompt, point.as_deref(), args.seed)?;
    generated
        .image
        .save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let report = json!({
        "prompt": generated.prompt,
        "out": args.out,
        "point": generated.point,
        "seed": generated.seed,
        "evaluations": generated.evaluations,
        "total_ms": generated.total_ms,
    });
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}
