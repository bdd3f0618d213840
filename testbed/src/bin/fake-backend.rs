//! `fake-backend`: a Softprobe backend that answers well or badly on command.

use clap::Parser;
use std::net::SocketAddr;

/// Serves `POST /v1/inject` and `POST /v1/traces` with behaviours set through
/// the control listener; see the testbed README.
#[derive(Parser)]
struct Args {
    /// Address of the backend listener.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Address of the control listener (behaviours, received requests).
    #[arg(long)]
    control: Option<SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    testbed::fake_backend::server::run(args.listen, args.control).await
}
