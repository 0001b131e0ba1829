//! The `edgerun` binary: parse the command line, hand it to the library, report errors.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = edgerun::cli::Cli::parse();
    edgerun::cli::init_logging(cli.global.verbose);
    match edgerun::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("edgerun: error: {err:#}");
            edgerun::cli::exit_code_for(&err)
        }
    }
}
