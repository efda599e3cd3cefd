//! The locall-operator: reconciles LocallReleases until SIGTERM/SIGINT. With `--leader-elect`,
//! only the replica holding the Lease reconciles; the others wait, ready to take over.

use clap::Parser;
use locall_operator::{controller, telemetry};
use std::sync::Arc;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(version, about = "Carries Locall releases from pre-deployment checks through staging into production")]
struct Args {
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, env = "LOCALL_METRICS_ADDR", default_value = "127.0.0.1:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Who may read /metrics: `kubernetes` (a bearer token the API server authenticates, for a
    /// user allowed `get` on the non-resource URL /metrics: TokenReview + SubjectAccessReview) or
    /// `none` (anyone who reaches the address; keep it on loopback then).
    #[arg(long, env = "LOCALL_METRICS_AUTH", default_value = "kubernetes", value_parser = ["kubernetes", "none"])]
    metrics_auth: String,
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
    /// Releases reconciled at the same time (others wait their turn; one release is never
    /// reconciled twice at once).
    #[arg(long, env = "LOCALL_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// How long a notification a release owes is retried (with backoff up to a minute) before
    /// it is given up with a Warning Event, e.g. `6h`.
    #[arg(long, env = "LOCALL_NOTIFY_RETRY_FOR", default_value = "6h")]
    notify_retry_for: locall_operator::api::Dur,
    /// URLs a release may name as its own Prometheus (`spec.analysis.prometheus`), each with the
    /// paths below it (same scheme, host and port; no user or password), comma-separated; the
    /// operator's own --prometheus-url is always allowed. Anything else is
    /// refused by preflight naming the field, and never called.
    #[arg(long, env = "LOCALL_ALLOWED_PROVIDER_URLS", value_delimiter = ',')]
    allowed_provider_urls: Vec<String>,
    /// Serve only these namespaces (comma-separated): releases in them, stages in them; one
    /// watch per namespace, so Roles in those namespaces are enough. Empty: all namespaces.
    #[arg(long, env = "LOCALL_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Elect a leader through a Lease, so that several replicas are safe: only the holder acts.
    #[arg(long, env = "LOCALL_LEADER_ELECT")]
    leader_elect: bool,
    /// The Lease's name.
    #[arg(long, env = "LOCALL_LEASE_NAME", default_value = "locall-operator")]
    lease_name: String,
    /// The Lease's namespace (the operator's own, in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds a Lease stays valid after its last renewal; a new leader takes over within this.
    #[arg(long, env = "LOCALL_LEASE_SECONDS", default_value_t = 10)]
    lease_seconds: u64,
    /// Threads that run the operator: 1 (the default) runs everything on one thread, as the
    /// operator mostly waits on the API server; more spread reconciles over that many threads,
    /// at the cost of waking threads for each other (see the README's Performance section).
    #[arg(long, env = "LOCALL_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    worker_threads: u16,
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// How the process holds memory: the allocator's settings, set once in `main` before the
/// runtime starts its threads (so they apply to them), and its upkeep on the runtime.
mod memory {
    /// No transparent huge pages for this process: each touched one is 2 MiB resident for a few
    /// small objects. mimalloc is built not to ask for them (its `no_thp`); on hosts whose THP
    /// mode is `always` (not only on request) the kernel would still hand them out. With glibc's
    /// allocator (`--no-default-features`): two arenas, and fixed mmap and trim thresholds, so
    /// the large buffers of a relist go back to the system when freed.
    pub fn configure() {
        #[cfg(target_os = "linux")]
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
        #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        }
    }

    /// glibc's allocator rarely gives freed pages back, so the footprint after the initial list
    /// of every release would stay at its peak: a periodic trim keeps it near what the caches
    /// hold (see `make bench`). mimalloc returns them itself: nothing to do.
    pub fn upkeep() {
        #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
        tokio::spawn(async {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
            loop {
                every.tick().await;
                unsafe { libc::malloc_trim(0) };
            }
        });
    }
}

fn main() -> anyhow::Result<()> {
    memory::configure();
    let args = Args::parse();
    let runtime = match args.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n.into()).enable_all().build()?,
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    memory::upkeep();
    let _ = rustls::crypto::ring::default_provider().install_default();
    telemetry::init_tracing(&args.log_format);
    let metrics = Arc::new(telemetry::Metrics::default());
    // Every API request is counted (locall_api_requests_total) on its way out.
    let counted = metrics.clone();
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        counted.api_request(req.method().as_str(), &req.uri().to_string());
        req
    });
    let client = kube::client::ClientBuilder::try_from(kube::Config::infer().await?)?.with_layer(&count).build();
    let gate = (args.metrics_auth == "kubernetes").then(|| {
        let reviewer = telemetry::auth::KubeReviewer { client: client.clone() };
        Arc::new(telemetry::auth::Gate::new(reviewer, std::time::Duration::from_secs(60)))
    });
    let addr = telemetry::serve(args.metrics_addr, metrics.clone(), gate).await?;
    info!(%addr, metrics_auth = %args.metrics_auth, "serving /metrics, /healthz, /readyz");
    let config = controller::Config {
        release_selector: Some(args.release_selector.clone()),
        prometheus_url: args.prometheus_url.clone(),
        concurrency: args.concurrency,
        notify_retry_for: args.notify_retry_for.get(),
        policy: controller::preflight::Policy {
            provider_urls: args
                .allowed_provider_urls
                .iter()
                .cloned()
                .chain(args.prometheus_url.clone())
                .filter(|u| !u.is_empty())
                .collect(),
            scope: controller::scope::Scope(args.watch_namespaces.iter().filter(|n| !n.is_empty()).cloned().collect()),
        },
    };

    if !args.leader_elect {
        controller::run(client, metrics, config, shutdown_signal()).await;
        info!("stopped");
        return Ok(());
    }

    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_seconds)
        .with_grace((args.lease_seconds / 3).max(1))
        .build()
        .await?;
    let (mut leader, task) = manager.watch().await;
    info!(%identity, lease = %args.lease_name, "waiting for leadership");
    let elected = tokio::select! {
        _ = shutdown_signal() => false,
        res = leader.wait_for(|is_leader| *is_leader) => res.is_ok(),
    };
    if !elected {
        drop(leader);
        let _ = task.await;
        return Ok(());
    }
    info!(%identity, "leading: reconciling");
    let mut lost = leader.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {},
            _ = lost.wait_for(|is_leader| !*is_leader) => { warn!("lost leadership: stopping"); },
        }
    };
    controller::run(client, metrics, config, stop).await;
    let still_leader = *leader.borrow();
    // Closing the channel releases the Lease, so a standby replica takes over at once.
    drop(leader);
    let _ = task.await;
    info!("stopped");
    if !still_leader {
        // Leadership was lost to another replica: exit non-zero so the pod restarts as a standby.
        std::process::exit(1);
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "locall-operator".into())
}
