//! `backend`: see the library docs and `backend --help`.

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = backend::cli::Cli::parse();
    backend::logging::init(cli.log_format, &cli.log_level);
    match backend::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "backend failed");
            eprintln!("backend: {e:#}");
            ExitCode::FAILURE
        }
    }
}
