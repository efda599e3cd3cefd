//! `make bench` (scale part): 100 then 1,000 LocallReleases on the local cluster, each a
//! one-stage, one-replica release carried to Succeeded by one operator (release build). Measures
//! the operator's resident memory and CPU seconds, reconcile latency (spec change -> status
//! observedGeneration updated) p50/p99, API requests per reconcile (spec change and no-op), API
//! writes per no-op reconcile, and the time to settle
//! after an operator restart. Merges its figures into target/bench/results.json.

#[path = "../tests/support/mod.rs"]
mod support;

use futures::{stream, StreamExt};
use kube::api::{Api, Patch, PatchParams};
use locall_operator::api::{LocallRelease, Phase};
use std::time::{Duration, Instant};
use support::*;

const NAMESPACES: usize = 10;
const LABEL: &str = "locall.io/bench=scale";

fn manifest(ns: &str, name: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: {name}, namespace: {ns}, labels: {{locall.io/bench: scale, locall.io/operator: bench-scale}}}}
spec:
  version: "1.0.0"
  replicas: 1
  template:
    spec: {{containers: [{{name: api, image: "locall/api:1.0.0"}}]}}
  stages: [{{name: production}}]
"#
    )
}

fn proc_stats(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (rss_kib / 1024.0, ticks / 100.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

async fn all_succeeded(client: &kube::Client, n: usize) -> bool {
    let api: Api<LocallRelease> = Api::all(client.clone());
    let list = api.list(&kube::api::ListParams::default().labels(LABEL)).await.map(|l| l.items).unwrap_or_default();
    list.len() >= n
        && list
            .iter()
            .all(|lr| lr.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded && s.observed_generation == lr.metadata.generation))
}

/// Deletes the benchmark's namespaces and waits until they are gone.
async fn remove_namespaces(client: &kube::Client) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(client.clone());
    let sel = format!("locall.io/test in ({})", (0..NAMESPACES).map(|i| format!("scale{i}")).collect::<Vec<_>>().join(","));
    let lp = kube::api::ListParams::default().labels(&sel);
    for ns in api.list(&lp).await.unwrap().items {
        let _ = api.delete(&ns.metadata.name.unwrap(), &Default::default()).await;
    }
    wait_for(Duration::from_secs(900), "the benchmark's namespaces to be deleted", || async {
        api.list(&lp).await.ok().filter(|l| l.items.is_empty()).map(|_| ())
    })
    .await;
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sizes: Vec<usize> =
        std::env::var("BENCH_RELEASES").unwrap_or_else(|_| "100,1000".into()).split(',').filter_map(|s| s.parse().ok()).collect();
    let client = client().await;
    install_crd().await;
    let mut op = Operator::start_with("bench-scale", "locall.io/operator=bench-scale", &[], &[]);
    // Releases left by an earlier run would be measured too: remove them first (the operator
    // is up, so their finalizers are honoured).
    remove_namespaces(&client).await;
    op.kill();
    let mut op = Operator::start_with("bench-scale", "locall.io/operator=bench-scale", &[], &[]);
    let namespaces: Vec<String> = {
        let mut v = vec![];
        for i in 0..NAMESPACES {
            v.push(namespace(&client, &format!("scale{i}")).await);
        }
        v
    };
    let mut results = serde_json::Map::new();
    let mut created = 0usize;
    for &n in &sizes {
        let started = Instant::now();
        let (_, cpu0) = proc_stats(op.child.id());
        stream::iter(created..n)
            .for_each_concurrent(16, |i| {
                let client = client.clone();
                let ns = namespaces[i % NAMESPACES].clone();
                async move { apply_yaml(&client, &ns, &manifest(&ns, &format!("app-{i}"))).await }
            })
            .await;
        created = n;
        wait_for(Duration::from_secs(1800), &format!("{n} releases Succeeded"), || async { all_succeeded(&client, n).await.then_some(()) })
            .await;
        let settle_all = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (rss, cpu1) = proc_stats(op.child.id());

        // Reconcile latency: a spec change (replicas) to status.observedGeneration updated, seen
        // through a watch, in steady state (the operator has finished reacting to the creations).
        let requests = || scrape(&op.metrics_addr, "locall_api_requests_total");
        let reconciles = || scrape(&op.metrics_addr, "controller_runtime_reconcile_total");
        let mut last = reconciles().await;
        for _ in 0..150 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = reconciles().await;
            if now == last {
                break;
            }
            last = now;
        }
        let (req0, rec0) = (requests().await, reconciles().await);
        let mut lat = vec![];
        for i in 0..50.min(n) {
            let ns = &namespaces[i % NAMESPACES];
            let api: Api<LocallRelease> = Api::namespaced(client.clone(), ns);
            let name = format!("app-{i}");
            let replicas = 1 + (n / 100) as i64 % 2 + 1;
            let t = Instant::now();
            let lr = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})))
                .await
                .unwrap();
            let generation = lr.metadata.generation;
            let seen = kube::runtime::wait::await_condition(api.clone(), &name, move |lr: Option<&LocallRelease>| {
                lr.and_then(|l| l.status.as_ref()).and_then(|s| s.observed_generation) >= generation
            });
            tokio::time::timeout(Duration::from_secs(60), seen).await.expect("status caught up").unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let change_requests = (requests().await - req0) / (reconciles().await - rec0);

        // No-op reconciles: an annotation change reconciles without anything to do.
        let writes0 = scrape(&op.metrics_addr, "locall_api_writes_total").await;
        let (req0, rec0) = (requests().await, reconciles().await);
        for i in 0..100.min(n) {
            let api: Api<LocallRelease> = Api::namespaced(client.clone(), &namespaces[i % NAMESPACES]);
            let patch = serde_json::json!({"metadata": {"annotations": {"bench.locall.io/touch": format!("{n}")}}});
            api.patch(&format!("app-{i}"), &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let noop_writes = scrape(&op.metrics_addr, "locall_api_writes_total").await - writes0;
        let noop_reconciles = reconciles().await - rec0;
        let noop_requests = (requests().await - req0) / noop_reconciles;

        // Restart: time until every release has been reconciled again.
        op.kill();
        let t = Instant::now();
        op = Operator::start_with("bench-scale", "locall.io/operator=bench-scale", &[], &[]);
        wait_for(Duration::from_secs(600), "the restarted operator to reconcile every release", || async {
            (scrape(&op.metrics_addr, "controller_runtime_reconcile_total").await >= n as f64).then_some(())
        })
        .await;
        let restart_settle = t.elapsed().as_secs_f64();

        let (p50, p99) = (pct(&mut lat.clone(), 0.5), pct(&mut lat, 0.99));
        println!(
            "{n} releases: all Succeeded in {settle_all:.1} s; RSS {rss:.1} MiB; CPU {:.1} s; reconcile p50 {p50:.1} ms p99 {p99:.1} ms; API requests per reconcile {change_requests:.1} (spec change) {noop_requests:.1} (no-op); no-op: {noop_writes} writes over {noop_reconciles} reconciles; restart settle {restart_settle:.1} s",
            cpu1 - cpu0
        );
        results.insert(format!("rss_mib_{n}"), rss.into());
        results.insert(format!("cpu_s_{n}"), (cpu1 - cpu0).into());
        results.insert(format!("reconcile_p50_ms_{n}"), p50.into());
        results.insert(format!("reconcile_p99_ms_{n}"), p99.into());
        results.insert(format!("all_succeeded_s_{n}"), settle_all.into());
        results.insert(format!("restart_settle_s_{n}"), restart_settle.into());
        results.insert(format!("noop_reconciles_{n}"), noop_reconciles.into());
        results.insert(format!("api_requests_per_reconcile_{n}"), change_requests.into());
        results.insert(format!("api_requests_per_noop_reconcile_{n}"), noop_requests.into());
        results
            .insert("noop_reconcile_writes".into(), (if noop_reconciles > 0.0 { noop_writes / noop_reconciles } else { f64::NAN }).into());
    }
    // BENCH_KEEP=1 leaves the releases (and stops the operator) for experiments.
    if std::env::var_os("BENCH_KEEP").is_none() {
        remove_namespaces(&client).await;
    }
    drop(op);
    let path = repo().join("target/bench/results.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut all: serde_json::Map<String, serde_json::Value> =
        std::fs::read_to_string(&path).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    all.extend(results);
    std::fs::write(&path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    println!("{}", serde_json::to_string_pretty(&all).unwrap());
}
