//! The locall-operator: reconciles LocallReleases until SIGTERM/SIGINT.

use clap::Parser;
use locall_operator::{controller, telemetry};
use std::sync::Arc;
use tracing::info;

#[derive(Parser, Debug)]
#[command(version, about = "Carries Locall releases from pre-deployment checks through staging into production")]
struct Args {
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, env = "LOCALL_METRICS_ADDR", default_value = "127.0.0.1:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Log format: json or text.
    #[arg(long, env = "LOCALL_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Only reconcile LocallReleases matching this label selector (e.g. to split releases
    /// between operators); empty means all.
    #[arg(long, env = "LOCALL_RELEASE_SELECTOR", default_value = "")]
    release_selector: String,
    /// Prometheus base URL for metric gates (a release may name its own).
    #[arg(long, env = "LOCALL_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    telemetry::init_tracing(&args.log_format);
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(telemetry::Metrics::default());
    let addr = telemetry::serve(args.metrics_addr, metrics.clone()).await?;
    info!(%addr, "serving /metrics, /healthz, /readyz");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    let config = controller::Config { release_selector: Some(args.release_selector), prometheus_url: args.prometheus_url };
    controller::run(client, metrics, config, shutdown).await;
    info!("stopped");
    Ok(())
}
