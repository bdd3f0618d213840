//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A self-hosted Softprobe-compatible backend for transparent-cache: records the filter's extract
/// spans (`POST /v1/traces`) into an embedded store and answers its lookups (`POST /v1/inject`).
#[derive(Debug, Parser)]
#[command(name = "backend", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `backend=debug,warn`, ...); `RUST_LOG` overrides it.
    #[arg(long, default_value = "info", global = true)]
    pub log_level: String,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Write every recording as one JSON document to standard output (the server must be stopped;
    /// while it runs use `GET /admin/export`).
    Export(StoreArgs),
    /// Add the recordings of an export document (a file, or `-` for standard input) to the store
    /// (the server must be stopped; while it runs use `POST /admin/import`).
    Import(ImportArgs),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the store is and how it is keyed.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data folder holding the store (default: the user's data directory +
    /// `transparent-cache/backend`, else `./.data`).
    #[arg(long, value_name = "DIR", default_value_os_t = default_data_dir())]
    pub data: PathBuf,
    /// Match key configuration file, TOML or JSON by extension (see README).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Size cap of the stored recordings in bytes; the oldest are evicted beyond it.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub max_store_bytes: u64,
}

/// `serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4318")]
    pub listen: SocketAddr,
    /// Store flags.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Largest accepted request body in bytes (after gzip decompression too); larger ones get 413.
    /// Imports (`POST /admin/import`) stream and may be of any size; each recording in them is
    /// held to this limit.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// File holding the token `/admin/*` requires (`authorization: Bearer <token>`); else the
    /// `BACKEND_ADMIN_TOKEN` environment variable. Needed to listen on a non-loopback address.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// File holding the key `/v1/inject` and `/v1/traces` require (the filter's `api_key`); else
    /// the `BACKEND_INGEST_KEY` environment variable. Needed to listen on a non-loopback address.
    #[arg(long, value_name = "FILE")]
    pub ingest_key_file: Option<PathBuf>,
}

/// `import` flags.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Store flags.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The export document; `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Largest recording accepted from the document, in bytes of its JSON form.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_recording_bytes: u64,
}

/// The user's data directory + `transparent-cache/backend`, else `./.data`.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("transparent-cache").join("backend"))
        .unwrap_or_else(|| PathBuf::from(".data"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent_and_has_defaults() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from(["backend", "serve"]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:4318");
        assert_eq!(args.max_body_bytes, 16 << 20);
        assert_eq!(args.store.max_store_bytes, 1 << 30);
        assert_eq!(cli.log_format, LogFormat::Text);
    }
}
