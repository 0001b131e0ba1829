//! `edgerun passwd FILE USER`: adds a user to the embedded broker's password file (the
//! password from the first line of standard input, or `EDGERUN_MQTT_PASSWORD`), stored as
//! an Argon2 hash; `serve` reads the file through `embedded_password_file`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Args;

use crate::mqtt::broker;
use crate::mqtt::connect::PASSWORD_ENV;

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// The password file (created if missing; the user's old line is replaced).
    pub file: PathBuf,
    /// The user to add.
    pub user: String,
}

pub fn run(args: &PasswdArgs) -> Result<ExitCode> {
    let password = match std::env::var(PASSWORD_ENV) {
        Ok(password) => password,
        Err(_) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    let path = broker::add_user(&args.file, &args.user, &password).map_err(|e| anyhow!(e))?;
    eprintln!("edgerun passwd: {} in {}", args.user, path.display());
    Ok(ExitCode::SUCCESS)
}
