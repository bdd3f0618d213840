//! # backend
//!
//! A self-hosted backend speaking the Softprobe proxy protocol, so the whole transparent cache
//! runs on one machine: the filter records misses into it (`POST /v1/traces`) and it serves them
//! back as hits (`POST /v1/inject`). Recordings live in an embedded, durable redb store.
//! Decoding and encoding of the OTLP spans is filter-core's codec.
#![forbid(unsafe_code)]
pub mod admin;
pub mod auth;
pub mod body;
pub mod cli;
pub mod config;
pub mod error;
pub mod export;
pub mod key;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod recording;
pub mod server;
pub mod state;
pub mod store;
pub mod writer;

use std::io::{Read as _, Write as _};

use anyhow::Context as _;

use crate::cli::{Cli, Command, ImportArgs, StoreArgs};
use crate::config::BackendConfig;
use crate::export::ExportDocument;
use crate::store::Store;

/// Opens the store the flags describe, with the configured match key.
pub fn open_store(args: &StoreArgs) -> anyhow::Result<Store> {
    let config = match &args.config {
        Some(path) => BackendConfig::load(path)?,
        None => BackendConfig::default(),
    };
    Store::open(&args.data, config.match_key, args.max_store_bytes).with_context(|| {
        format!(
            "cannot open the store in {} (a running server holds it: use the admin API instead)",
            args.data.display()
        )
    })
}

fn export(args: &StoreArgs) -> anyhow::Result<()> {
    let store = open_store(args)?;
    let doc = ExportDocument::new(store.all()?);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &doc).context("cannot write the export")?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
    }
    let doc = ExportDocument::parse(&bytes).map_err(anyhow::Error::msg)?;
    let store = open_store(&args.store)?;
    let count = doc.recordings.len();
    let inserted = store.insert(doc.recordings)?;
    tracing::info!(imported = count, evicted = inserted.evicted, "import done");
    Ok(())
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => server::serve(args).await,
        Command::Export(args) => export(&args),
        Command::Import(args) => import(&args),
    }
}
