//! `locall-sim`: a traffic simulator standing in for the application's pods
//! in the kwok-based local test cluster.
//!
//! It watches Pods, Services and HTTPRoutes, derives from them (and from
//! `sim.locall.io/*` annotations) how much traffic each version of the
//! application receives and how it behaves, and exports the metrics a real
//! HTTP API would for Prometheus to scrape.

pub mod exporter;
pub mod kube_watch;
pub mod model;
pub mod snapshot;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use exporter::Metrics;
use kube_watch::Watchers;
use model::{Accumulator, AnnotationWarning};

/// Settings of the simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address of the `/metrics` and `/healthz` server.
    pub listen: SocketAddr,
    /// Requests/second of entry points without a `sim.locall.io/rps` annotation.
    pub default_rps: f64,
    /// Interval between two counter updates.
    pub tick: Duration,
}

/// Logs each distinct annotation problem once.
#[derive(Default)]
struct WarnOnce(HashSet<AnnotationWarning>);

impl WarnOnce {
    fn report(&mut self, warnings: Vec<AnnotationWarning>) {
        for w in warnings {
            if !self.0.contains(&w) {
                warn!(object = %w.object, annotation = %w.key, value = %w.value, "invalid annotation: {}", w.reason);
                self.0.insert(w);
            }
        }
    }
}

/// Runs the simulator until `shutdown` completes.
pub async fn run(config: SimConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    anyhow::ensure!(config.default_rps.is_finite() && config.default_rps >= 0.0, "--default-rps must be a non-negative number");
    anyhow::ensure!(!config.tick.is_zero(), "--tick-ms must be positive");
    let client = kube::Client::try_default().await.context("creating the Kubernetes client (is KUBECONFIG set?)")?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    info!(listen = %config.listen, default_rps = config.default_rps, tick = ?config.tick, "locall-sim started");

    let metrics = Arc::new(Metrics::new());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(exporter::serve(listener, metrics.clone(), async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));
    let watchers = Watchers::start(client);

    let mut accumulator = Accumulator::default();
    let mut warn_once = WarnOnce::default();
    let mut interval = tokio::time::interval(config.tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = interval.tick() => {
                let now = Instant::now();
                let dt = now.duration_since(last).as_secs_f64();
                last = now;
                let plan = model::plan(&watchers.snapshot(), config.default_rps);
                warn_once.report(plan.warnings);
                metrics.apply(&accumulator.tick(&plan.series, dt));
            }
        }
    }
    info!("shutting down");
    watchers.stop();
    let _ = stop_tx.send(true);
    server.await.context("metrics server task")?.context("metrics server")?;
    Ok(())
}
