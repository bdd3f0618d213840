//! `demo-upstream`: JSON echo server with a scriptable answer, for tests.

use clap::Parser;
use std::net::SocketAddr;

/// Echo server: answers every request with a JSON echo (or the scripted
/// answer) and records what it received; see the testbed README.
#[derive(Parser)]
struct Args {
    /// Address of the proxied listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the control listener (script, recorded requests, stats).
    #[arg(long)]
    control: Option<SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    testbed::demo_upstream::server::run(args.listen, args.control).await
}
