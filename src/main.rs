//! The `edgerun` binary: parse the command line, hand it to the library, report errors.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    library_errors_without_backtraces();
    edgerun::allocator::configure();
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

/// Keeps `RUST_BACKTRACE=1` in the environment from making library errors capture
/// backtraces (unless `RUST_LIB_BACKTRACE` says otherwise): tract's optimizer passes use
/// `anyhow` errors for ordinary outcomes while planning, and capturing a backtrace for each
/// made start-up of all four services about 0.3 s slower on a 2-core machine. Errors are
/// printed without backtraces anyway; panics still print theirs as `RUST_BACKTRACE` says.
fn library_errors_without_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the first thing `main` does, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}
