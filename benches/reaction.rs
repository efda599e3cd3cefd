//! `make bench`: how fast a bad release is rolled back, on the local cluster with real
//! Prometheus. N releases (BENCH_FAILURES, default 20) each get a good version, then a bad one
//! (8% errors); for each, the time from the first sample at which the rollback query crosses its
//! threshold in Prometheus to all traffic back on the previous version (status
//! `failure.trafficRestoredAt`). Writes target/bench/results.json and results.md.

#[path = "../tests/support/mod.rs"]
mod support;

use kube::api::Api;
use locall_operator::api::{LocallRelease, Phase};
use std::time::Duration;
use support::*;

const INTERVAL_S: u64 = 2;
const QUERY: &str = r#"sum(rate(http_requests_total{namespace="{{namespace}}",version="{{version}}",code=~"5.."}[10s])) / sum(rate(http_requests_total{namespace="{{namespace}}",version="{{version}}"}[10s]))"#;

fn manifest(ns: &str, version: &str, error_rate: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}}}
spec:
  version: "{version}"
  replicas: 2
  service: {{port: 8080, annotations: {{sim.locall.io/rps: "100"}}}}
  template:
    metadata: {{annotations: {{sim.locall.io/error-rate: "{error_rate}"}}}}
    spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}
  stages: [{{name: production, steps: [{{weight: 50, pause: 30s}}, {{weight: 100}}]}}]
  traffic: {{method: GatewayAPI, gateway: {{name: public}}}}
  analysis:
    interval: {INTERVAL_S}s
    metrics:
    - name: error-rate
      query: '{QUERY}'
      rollback: {{op: ">", value: 0.05}}
      consecutive: 1
"#
    )
}

/// Seconds from the first breaching evaluation of the query in Prometheus to traffic restored.
async fn one(i: usize) -> Result<f64, String> {
    let client = client().await;
    let ns = namespace(&client, &format!("bench-{i}")).await;
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0", "0")).await;
    wait_for(Duration::from_secs(300), "v1", || async {
        api.get_opt("locall-api").await.ok().flatten()?.status.filter(|s| s.phase == Phase::Succeeded).map(|_| ())
    })
    .await;
    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0", "0.08")).await;
    let st = wait_for(Duration::from_secs(300), "the rollback", || async {
        api.get_opt("locall-api").await.ok().flatten()?.status.filter(|s| s.candidate_version == "2.0.0" && s.phase == Phase::RolledBack)
    })
    .await;
    let f = st.failure.ok_or("no failure recorded")?;
    let restored = f.traffic_restored_at.ok_or("traffic not restored")?;
    let started = st.phase_started_at.unwrap_or(restored) - chrono::Duration::minutes(5);
    // Scan Prometheus at 100 ms resolution for the first moment the query exceeded the trigger.
    let q = QUERY.replace("{{namespace}}", &ns).replace("{{version}}", "2.0.0");
    let prom = prometheus_http_query::Client::try_from(cluster().prometheus_url.as_str()).map_err(|e| e.to_string())?;
    let from = (restored - chrono::Duration::seconds(60)).max(started);
    let res = prom
        .query_range(format!("({q}) > 0.05"), from.timestamp(), restored.timestamp() + 1, 0.1)
        .get()
        .await
        .map_err(|e| e.to_string())?;
    let first = res
        .data()
        .as_matrix()
        .and_then(|m| m.first())
        .and_then(|s| s.samples().first())
        .map(|s| s.timestamp())
        .ok_or("Prometheus never saw the breach")?;
    let restored_s = restored.timestamp_millis() as f64 / 1000.0;
    Ok(restored_s - first)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_FAILURES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    shared_operator();
    install_crd().await;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(one(i))).collect();
    let mut times = vec![];
    let mut errors = vec![];
    for t in tasks {
        match t.await.expect("task") {
            Ok(s) => times.push(s),
            Err(e) => errors.push(e),
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    let machine = format!("{} cores, {} GiB", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), mem_gib());
    let json = serde_json::json!({
        "reaction_p50_s": p50,
        "reaction_p99_s": p99,
        "reaction_samples_s": times,
        "reaction_failures": errors,
        "analysis_interval_s": INTERVAL_S,
        "target_s": INTERVAL_S + 2,
        "injected_failures": n,
        "machine": machine,
        "command": "make bench",
        "wall_s": started.elapsed().as_secs_f64(),
    });
    let dir = repo().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let md = format!(
        "| measure | value | target |\n|---|---|---|\n| reaction p50 (first breaching sample in Prometheus -> traffic restored) | {p50:.2} s | <= {} s |\n| reaction p99 | {p99:.2} s | <= {} s |\n| injected failures | {} ({} measured) | |\n| analysis interval | {INTERVAL_S} s | |\n\nMachine: {machine}. Command: `make bench`.\n",
        INTERVAL_S + 2,
        INTERVAL_S + 2,
        n,
        times.len()
    );
    std::fs::write(dir.join("results.md"), &md).unwrap();
    println!("{md}");
    if !errors.is_empty() {
        eprintln!("{} of {n} runs could not be measured: {errors:?}", errors.len());
        std::process::exit(1);
    }
}

fn mem_gib() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| k / 1024 / 1024)
        .unwrap_or(0)
}
