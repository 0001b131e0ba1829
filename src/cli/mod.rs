//! The command line: what the user typed ([`Cli`], parsed by clap) is kept apart from the
//! settings the runtime resolves from it ([`settings`]); each subcommand has one entry point.
//! Nothing here does inference itself.

mod bench;
mod broker;
mod generate;
mod legal;
mod ocr;
mod passwd;
mod profile;
pub mod registry;
mod request;
mod serve;
pub mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::engine::{Backend, Provider};

pub use self::bench::BenchArgs;
pub use self::generate::GenerateArgs;
pub use self::legal::LegalArgs;
pub use self::ocr::OcrArgs;
pub use self::passwd::PasswdArgs;
pub use self::profile::ProfileArgs;
pub use self::request::RequestArgs;
pub use self::serve::ServeArgs;

/// Adaptive inference runtime for edge devices.
#[derive(Debug, Parser)]
#[command(name = "edgerun", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every subcommand understands.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Models folder (default: $EDGERUN_MODELS, ./models, or the source tree's models/).
    #[arg(long, global = true, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Threads per model run [default: 1, or the config file's].
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// Keep --threads even while other processes load the cores (by default `serve` and
    /// `bench adapt` run single-threaded then).
    #[arg(long, global = true)]
    pub fixed_threads: bool,
    /// Engine for every model: tract (pure Rust), ort (ONNX Runtime, feature `ort`) or auto
    /// (measure both at start-up, keep the faster) [default: tract].
    #[arg(long, global = true, value_name = "NAME")]
    pub backend: Option<Backend>,
    /// libonnxruntime.so to load for ort [default: $ORT_DYLIB_PATH, then the system's].
    #[arg(long, global = true, value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
    /// ONNX Runtime execution providers, best first [default: cpu].
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        value_name = "tensorrt,cuda,cpu"
    )]
    pub providers: Option<Vec<Provider>>,
    /// Where TensorRT keeps its engine and timing caches.
    #[arg(long, global = true, value_name = "DIR")]
    pub tensorrt_cache: Option<PathBuf>,
    /// ONNX Runtime: models (service/file or a prefix such as `legal/`) whose MatMuls over
    /// int8-stored weights run in int8, activations quantized at run time.
    #[arg(long, global = true, value_delimiter = ',', value_name = "PREFIX,...")]
    pub ort_int8: Option<Vec<String>>,
    /// Log more (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer inference requests over MQTT (the main job; starts an embedded broker
    /// unless --broker is given).
    Serve(ServeArgs),
    /// Read the text in images (scene-text recognition).
    Ocr(OcrArgs),
    /// Find the Civil Code articles that answer a legal question.
    Legal(LegalArgs),
    /// Draw a short word as an image with a distilled few-step generator.
    Generate(GenerateArgs),
    /// Measure each operating point's latency and memory on this device; writes the profile
    /// cache `serve` adapts with, and a quality/latency Pareto chart.
    Profile(ProfileArgs),
    /// Run a benchmark: print a table and write JSON.
    Bench(BenchArgs),
    /// Ask a serving device (or the fleet) over MQTT and print the answer; retries on
    /// timeout with the same correlation data.
    Request(RequestArgs),
    /// Add a user to the embedded broker's password file (password on standard input).
    Passwd(PasswdArgs),
}

/// Recognizer choice as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecArg {
    Tiny,
    Small,
    Cascade,
}

/// Detector choice as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetArg {
    Tiny,
    Small,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(&cli.global, &args),
        Command::Ocr(args) => ocr::run(&cli.global, &args),
        Command::Legal(args) => legal::run(&cli.global, &args),
        Command::Generate(args) => generate::run(&cli.global, &args),
        Command::Profile(args) => profile::run(&cli.global, &args),
        Command::Bench(args) => bench::run(&cli.global, &args),
        Command::Request(args) => request::run(&args),
        Command::Passwd(args) => passwd::run(&args),
    }
}

/// `EX_CONFIG` of sysexits.h: the settings cannot work (an invalid configuration, or a
/// broker that refuses these credentials or certificates). The systemd unit does not
/// restart on it (`RestartPreventExitStatus`): starting again would fail the same way.
pub const EXIT_CONFIG: u8 = 78;

/// The exit code for a command that failed with `error`: [`EXIT_CONFIG`] for settings
/// that cannot work, 2 for anything else (a missing file, a broker that is away, ...).
pub fn exit_code_for(error: &anyhow::Error) -> ExitCode {
    let settings_cannot_work = error.chain().any(|cause| {
        cause.is::<crate::serve::BrokerRefused>() || cause.is::<crate::serve::config::ConfigError>()
    });
    ExitCode::from(if settings_cannot_work { EXIT_CONFIG } else { 2 })
}

/// Logs go to stderr so stdout stays machine-readable.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_exit_with_ex_config() {
        let refused = crate::serve::BrokerRefused {
            broker: "mqtts://b:8883".into(),
            reason: "invalid peer certificate: Expired".into(),
        };
        let code = |e: anyhow::Error| exit_code_for(&e);
        assert_eq!(code(refused.into()), ExitCode::from(EXIT_CONFIG));
        let invalid = crate::serve::config::ConfigError::Invalid("device".into());
        let wrapped = anyhow::Error::from(invalid).context("starting the server");
        assert_eq!(code(wrapped), ExitCode::from(EXIT_CONFIG));
        assert_eq!(code(anyhow::anyhow!("models not found")), ExitCode::from(2));
    }
}
