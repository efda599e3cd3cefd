//! `locall-sim`: exports the metrics the application's pods would, for the
//! local test cluster where pods are simulated by kwok. See `locall_operator::sim`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use locall_operator::sim::{run, SimConfig};
use tracing_subscriber::EnvFilter;

/// Traffic simulator for the local test cluster.
#[derive(Debug, Parser)]
#[command(name = "locall-sim", version)]
struct Cli {
    /// Address serving /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Requests/second of entry points without a `sim.locall.io/rps` annotation.
    #[arg(long, default_value_t = 20.0)]
    default_rps: f64,
    /// Milliseconds between two counter updates.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    tick_ms: u64,
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGTERM"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    // Several rustls providers may be compiled in; pick one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    run(SimConfig { listen: cli.listen, default_rps: cli.default_rps, tick: Duration::from_millis(cli.tick_ms) }, shutdown_signal()).await
}
