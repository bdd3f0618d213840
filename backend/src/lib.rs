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
pub mod pipe;
pub mod recording;
pub mod server;
pub mod state;
pub mod store;
pub mod writer;

use anyhow::Context as _;

use crate::cli::{Cli, Command, ImportArgs, StoreArgs};
use crate::config::BackendConfig;
use crate::store::Store;

/// Opens the store the flags describe, with the configured match key.
pub fn open_store(args: &StoreArgs) -> anyhow::Result<Store> {
    let config = match &args.config {
        Some(path) => BackendConfig::load(path)?,
        None => BackendConfig::default(),
    };
    let store = Store::open(&args.data, config.match_key, args.max_store_bytes).map_err(|e| {
        let why = match &e {
            store::StoreError::Db(db) => match db.as_ref() {
                redb::Error::DatabaseAlreadyOpen => {
                    " (a running server holds it: use the admin API instead)"
                }
                redb::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                    " (the user running the backend may not write there: give it the folder, \
                     e.g. a volume with `fsGroup`, or choose another with --data)"
                }
                _ => "",
            },
            _ => "",
        };
        anyhow::Error::new(e).context(format!(
            "cannot open the store in {}{why}",
            args.data.display()
        ))
    })?;
    Ok(store.with_retention(config.retention.to_retention()))
}

fn export(args: &StoreArgs) -> anyhow::Result<()> {
    let store = open_store(args)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let count = export::write(&store, &mut out).context("cannot write the export")?;
    tracing::info!(exported = count, "export done");
    Ok(())
}

fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store)?;
    let reader: Box<dyn std::io::Read> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("cannot read {}", args.file.display()))?,
        )
    };
    let done = export::import(reader, args.max_recording_bytes, &mut |batch| {
        store.insert(batch)
    })?;
    tracing::info!(
        imported = done.imported,
        evicted = done.evicted,
        replaced = done.replaced,
        "import done"
    );
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
