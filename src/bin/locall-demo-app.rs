//! `locall-demo-app`: the demo's application, for pods that are real processes (the real node of
//! tests/cluster/node), and the bounded load generator that sends it requests.
//!
//! `serve` answers every path but `/metrics` and `/healthz` after a latency drawn around
//! `LATENCY_MS`, with a 500 for a share `ERROR_RATE` of requests, and exports its own
//! `http_requests_total{service,version,code}` and `http_request_duration_seconds{service,version}`
//! (the names and labels the demo's metric gates query; Prometheus adds the pod's namespace
//! through pod discovery). The version is the pod's (`VERSION`, set from its
//! `app.kubernetes.io/version` label through the downward API).
//!
//! Called as `locall-api` (a link in the demo's image), it stands in for the tasks the release's
//! Jobs run (see [`task`]).
//!
//! `load` sends requests to a URL at a fixed rate, a bounded number of them in flight, for a
//! bounded time: e.g. a ClusterIP Service, so kube-proxy splits them between the pods.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::{Parser, Subcommand};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::Rng;

#[derive(Debug, Parser)]
#[command(name = "locall-demo-app", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP with the configured error rate and latency.
    Serve {
        #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// The `service` label (the entry point's name).
        #[arg(long, env = "SERVICE", default_value = "locall-api")]
        service: String,
        /// The `version` label.
        #[arg(long, env = "VERSION", default_value = "unknown")]
        version: String,
        /// Share of requests answered with a 500, 0 to 1.
        #[arg(long, env = "ERROR_RATE", default_value_t = 0.0, value_parser = share)]
        error_rate: f64,
        /// Typical latency in milliseconds (each request takes 0.5 to 1.5 times this).
        #[arg(long, env = "LATENCY_MS", default_value_t = 20)]
        latency_ms: u64,
    },
    /// Send requests to URL at RPS requests per second for SECONDS, at most CONCURRENCY at once.
    Load {
        url: String,
        #[arg(long, default_value_t = 50.0)]
        rps: f64,
        /// For how many seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    version: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeriesLabels {
    service: String,
    version: String,
}

struct App {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<SeriesLabels, Histogram>,
    service: String,
    version: String,
    error_rate: f64,
    latency: Duration,
}

const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

async fn answer(State(app): State<Arc<App>>) -> StatusCode {
    let start = Instant::now();
    let (factor, fail) = {
        let mut rng = rand::rng();
        (rng.random_range(0.5..1.5), rng.random_bool(app.error_rate))
    };
    tokio::time::sleep(app.latency.mul_f64(factor)).await;
    let code = if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
    let series = SeriesLabels { service: app.service.clone(), version: app.version.clone() };
    app.requests
        .get_or_create(&RequestLabels { service: series.service.clone(), version: series.version.clone(), code: code.as_u16().to_string() })
        .inc();
    app.durations.get_or_create(&series).observe(start.elapsed().as_secs_f64());
    code
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &app.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn serve(listen: SocketAddr, service: String, version: String, error_rate: f64, latency_ms: u64) -> std::io::Result<()> {
    let requests = Family::<RequestLabels, Counter>::default();
    let durations = Family::<SeriesLabels, Histogram>::new_with_constructor(|| Histogram::new(BUCKETS));
    let mut registry = Registry::default();
    registry.register("http_requests", "HTTP requests answered, by status code", requests.clone());
    registry.register("http_request_duration_seconds", "Time to answer an HTTP request", durations.clone());
    // Both outcomes exist from the start, at 0: an error-rate query sees "no errors yet" rather
    // than no data while nothing has failed.
    for code in ["200", "500"] {
        let _ = requests.get_or_create(&RequestLabels { service: service.clone(), version: version.clone(), code: code.into() });
    }
    let app = Arc::new(App { registry, requests, durations, service, version, error_rate, latency: Duration::from_millis(latency_ms) });
    eprintln!(
        "locall-demo-app {} serving on {listen}: service {}, error rate {}, latency ~{latency_ms} ms",
        app.version, app.service, app.error_rate
    );
    let router = Router::new().route("/metrics", get(metrics)).route("/healthz", get(|| async { "ok" })).fallback(answer).with_state(app);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, router).with_graceful_shutdown(terminated()).await
}

async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Sends requests at `rps` for `duration`, never more than `concurrency` in flight (a tick whose
/// slot is taken is skipped, so a slow target gets fewer requests, not a pile-up), and prints how
/// they were answered.
async fn load(url: String, rps: f64, duration: Duration, concurrency: usize) -> Result<(), String> {
    if !(rps > 0.0 && rps <= 10_000.0) {
        return Err(format!("--rps {rps}: between 0 and 10000"));
    }
    // A connection per request: kube-proxy balances connections, so kept-alive ones would pin
    // the load to the pods that happened to answer first.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).pool_max_idle_per_host(0).build().map_err(|e| e.to_string())?;
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let tally = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = Instant::now() + duration;
    let mut skipped = 0u64;
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {}
            _ = terminated() => break,
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (http, url, tally) = (http.clone(), url.clone(), tally.clone());
        tokio::spawn(async move {
            let outcome = match http.get(&url).send().await {
                Ok(r) => r.status().as_u16().to_string(),
                Err(e) if e.is_timeout() => "timeout".into(),
                Err(_) => "error".into(),
            };
            *tally.lock().unwrap().entry(outcome).or_default() += 1;
            drop(slot);
        });
    }
    let _ = slots.acquire_many(concurrency.max(1) as u32).await;
    println!("answers: {:?}; ticks skipped (all {concurrency} in flight): {skipped}", tally.lock().unwrap());
    Ok(())
}

/// Called as `locall-api ...` (a link in the image), the program stands in for the application's
/// own tasks that the release's Jobs run (tests, backup, migrate, restore, e2e, smoke): it says
/// what it was asked, takes a moment and succeeds, unless `JOB_FAIL` names the task.
fn task(args: &[String]) -> ! {
    let what = args.join(" ");
    eprintln!("locall-api {what}: running (demo application {})", std::env::var("VERSION").unwrap_or_default());
    std::thread::sleep(Duration::from_secs(1));
    if std::env::var("JOB_FAIL").is_ok_and(|f| !f.is_empty() && what.contains(&f)) {
        eprintln!("locall-api {what}: failed (JOB_FAIL={})", std::env::var("JOB_FAIL").unwrap_or_default());
        std::process::exit(1);
    }
    eprintln!("locall-api {what}: done");
    std::process::exit(0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.first().is_some_and(|a| a.rsplit('/').next() == Some("locall-api")) {
        task(&args[1..]);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match Cli::parse().command {
        Command::Serve { listen, service, version, error_rate, latency_ms } => {
            serve(listen, service, version, error_rate, latency_ms).await.map_err(|e| e.to_string())
        }
        Command::Load { url, rps, seconds, concurrency } => load(url, rps, Duration::from_secs(seconds), concurrency).await,
    };
    if let Err(e) = result {
        eprintln!("locall-demo-app: {e}");
        std::process::exit(1);
    }
}
