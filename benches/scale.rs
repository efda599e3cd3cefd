//! `make bench` (scale part): this operator and the peer, Argo Rollouts v1.10.0 (built from its Go
//! module by benches/peer/argo-rollouts), one after the other on the same local cluster in the
//! same run (the peer first: the clean slate between them then removes the peer's objects, which
//! carry no finalizer of ours, rather than ours), each holding BENCH_RELEASES (default 1000; e.g.
//! `BENCH_RELEASES=1000,10000`) equivalent objects: a one-stage, one-replica LocallRelease / a
//! one-replica Rollout with one canary step to 100%. For each: idle RSS, peak RSS (sampled every
//! 200 ms) and settled RSS, CPU seconds and wall time until every object is in its final state
//! (Succeeded / Healthy). Then, for this operator: reconcile-to-act latency (a version change
//! until the new Deployment exists, seen through one long-lived watch; the peer's: a template
//! change until its new ReplicaSet exists), next to the API server's own part (after each change,
//! a write of a ConfigMap until the same kind of watch sees it: a change -> acted holds two such),
//! writes per no-op reconcile, and restart settle (until every release was reconciled once and
//! nothing has been written for 5 s, with the writes made meanwhile). A write is any mutating
//! request (create, patch, update, delete) the operator's client sent. BENCH_SOAK_MINUTES (default
//! 0) adds a soak with releases changing, RSS sampled over time. BENCH_PEER=0 skips the peer;
//! BENCH_PEER_QPS=N runs it with `--qps N --burst 2N` instead of its defaults (40 / 80), which
//! bound its pace at 10,000 (ours has no client throttle). Last, unless BENCH_KEEP is set: the
//! time to remove all the releases with their namespaces, with the operator's CPU and requests.
//! Results: target/bench/results.json and results.md, with the ratio of each figure to the peer's.

#[path = "../tests/support/mod.rs"]
mod support;

use futures::{stream, StreamExt};
use kube::{
    api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    runtime::{watcher, WatchStreamExt},
    Client, ResourceExt,
};
use locall_operator::api::{LocallRelease, Phase};
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use support::*;

const NAMESPACES: usize = 10;
const LABEL: &str = "locall.io/bench=scale";
/// Every verb the operator's request counter knows, for "all its API requests".
const ALL_VERBS: [&str; 6] = ["get", "list", "create", "patch", "update", "delete"];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Locall,
    Peer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Locall => "locall",
            Kind::Peer => "argo_rollouts",
        }
    }
}

fn rollout_resource() -> ApiResource {
    ApiResource {
        group: "argoproj.io".into(),
        version: "v1alpha1".into(),
        api_version: "argoproj.io/v1alpha1".into(),
        kind: "Rollout".into(),
        plural: "rollouts".into(),
    }
}

fn release(ns: &str, name: &str) -> LocallRelease {
    serde_json::from_value(json!({
        "apiVersion": "locall.io/v1alpha1", "kind": "LocallRelease",
        "metadata": {"name": name, "namespace": ns, "labels": {"locall.io/bench": "scale", "locall.io/operator": "bench-scale"}},
        "spec": {"version": "1.0.0", "replicas": 1, "template": {"spec": {"containers": [{"name": "api", "image": "locall/api:1.0.0"}]}},
                 "stages": [{"name": "production"}]}
    }))
    .unwrap()
}

fn rollout(ns: &str, name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": name, "namespace": ns, "labels": {"locall.io/bench": "scale"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "api", "image": "locall/api:1.0.0"}]}},
                 "strategy": {"canary": {"steps": [{"setWeight": 100}]}}}
    }))
    .unwrap()
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

/// Samples a process's RSS every 200 ms: the peak since the last reset, and a series.
struct Sampler {
    peak_kib: Arc<AtomicU64>,
    series: Arc<Mutex<Vec<(f64, f64)>>>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let series = Arc::new(Mutex::new(vec![]));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, st) = (peak_kib.clone(), series.clone(), stop.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut last_point = -1.0f64;
            while !st.load(Ordering::Relaxed) {
                let (rss, _) = proc_stats(pid);
                p.fetch_max((rss * 1024.0) as u64, Ordering::Relaxed);
                let t = t0.elapsed().as_secs_f64();
                if t - last_point >= 10.0 {
                    s.lock().unwrap().push((t, rss));
                    last_point = t;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Sampler { peak_kib, series, stop }
    }

    fn take_peak(&self) -> f64 {
        self.peak_kib.swap(0, Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Requests that change something (create, patch, update, delete), as the operator counted them
/// on their way out: status and child writes, Events and finalizer patches alike.
async fn mutating_requests(addr: &str) -> f64 {
    api_requests(addr, &["create", "patch", "update", "delete"], None).await
}

/// How many of the benchmark's objects are in their final state.
async fn done(client: &Client, kind: Kind) -> usize {
    let lp = ListParams::default().labels(LABEL);
    match kind {
        Kind::Locall => Api::<LocallRelease>::all(client.clone())
            .list(&lp)
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|lr| {
                        lr.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded && s.observed_generation == lr.metadata.generation)
                    })
                    .count()
            })
            .unwrap_or(0),
        Kind::Peer => Api::<DynamicObject>::all_with(client.clone(), &rollout_resource())
            .list(&lp)
            .await
            .map(|l| l.items.iter().filter(|r| r.data["status"]["phase"] == "Healthy").count())
            .unwrap_or(0),
    }
}

/// Deletes the benchmark's namespaces and waits until they are gone.
async fn remove_namespaces(client: &Client) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(client.clone());
    let sel = format!("locall.io/test in ({})", (0..NAMESPACES).map(|i| format!("scale{i}")).collect::<Vec<_>>().join(","));
    let lp = ListParams::default().labels(&sel);
    for ns in api.list(&lp).await.unwrap().items {
        let _ = api.delete(&ns.name_any(), &Default::default()).await;
    }
    wait_for(Duration::from_secs(1800), "the benchmark's namespaces to be deleted", || async {
        api.list(&lp).await.ok().filter(|l| l.items.is_empty()).map(|_| ())
    })
    .await;
}

/// The peer, built (or found in the cache) by benches/peer/argo-rollouts, its CRDs applied.
fn peer() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    if std::env::var("BENCH_PEER").is_ok_and(|v| v == "0") {
        return None;
    }
    let out = Command::new(repo().join("benches/peer/argo-rollouts")).output().expect("run benches/peer/argo-rollouts");
    assert!(out.status.success(), "building the peer: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let bin = std::path::PathBuf::from(lines.next().expect("binary path"));
    let crds = std::path::PathBuf::from(lines.next().expect("CRD folder"));
    for f in std::fs::read_dir(&crds).unwrap().flatten().map(|e| e.path()) {
        if f.extension().is_some_and(|e| e == "yaml") && !f.ends_with("kustomization.yaml") {
            let (ok, _, err) = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", f.to_str().unwrap()]);
            assert!(ok, "peer CRD {}: {err}", f.display());
        }
    }
    let _ = kubectl(&["create", "namespace", "argo-rollouts"]);
    Some((bin, crds))
}

/// BENCH_PEER_QPS: the peer's client throttle, if lifted from its defaults (40 / burst 80).
fn peer_qps() -> Option<u32> {
    std::env::var("BENCH_PEER_QPS").ok().and_then(|v| v.parse().ok())
}

/// A running controller: ours (with its metrics address) or the peer.
enum Running {
    Locall(Operator),
    Peer(Child),
}

impl Running {
    fn id(&self) -> u32 {
        match self {
            Running::Locall(op) => op.child.id(),
            Running::Peer(c) => c.id(),
        }
    }

    fn metrics(&self) -> Option<String> {
        match self {
            Running::Locall(op) => Some(op.metrics_addr.clone()),
            Running::Peer(_) => None,
        }
    }

    fn kill(&mut self) {
        match self {
            Running::Locall(op) => op.kill(),
            Running::Peer(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start(kind: Kind, peer_bin: Option<&std::path::Path>) -> Running {
    match kind {
        // Both log at warn: the peer runs with --loglevel warn.
        Kind::Locall => {
            Running::Locall(Operator::start_with("bench-scale", "locall.io/operator=bench-scale", &[], &[("RUST_LOG", "warn")]))
        }
        Kind::Peer => {
            let c = cluster();
            let log = std::fs::File::create(c.dir.join("logs/peer-argo-rollouts.log")).unwrap();
            let mut cmd = Command::new(peer_bin.unwrap());
            cmd.args(["--kubeconfig", c.kubeconfig.to_str().unwrap(), "--leader-elect=false", "--loglevel", "warn"]).args([
                "--healthzPort",
                &free_port().to_string(),
                "--metricsPort",
                &free_port().to_string(),
            ]);
            // Its client throttle (defaults --qps 40 --burst 80) bounds its pace at 10,000;
            // BENCH_PEER_QPS lifts it (burst twice that), as ours has no client throttle.
            if let Some(qps) = peer_qps() {
                cmd.args(["--qps", &qps.to_string(), "--burst", &(2 * qps).to_string()]);
            }
            cmd.stdout(log.try_clone().unwrap()).stderr(log);
            Running::Peer(cmd.spawn().expect("start the peer"))
        }
    }
}

/// One long-lived watch of the Deployments (ours) or ReplicaSets (the peer's) the benchmark's
/// objects own: when each owner's newest child was first seen.
fn watch_children(client: &Client, kind: Kind) -> Arc<Mutex<HashMap<String, (String, Instant)>>> {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    let seen: Arc<Mutex<HashMap<String, (String, Instant)>>> = Default::default();
    let s = seen.clone();
    let record = move |owner: Option<String>, ns: String, name: String| {
        if let Some(owner) = owner {
            let mut m = s.lock().unwrap();
            let key = format!("{ns}/{owner}");
            if m.get(&key).is_none_or(|(n, _)| *n != name) {
                m.insert(key, (name, Instant::now()));
            }
        }
    };
    let owner = |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| refs.first().map(|o| o.name.clone());
    match kind {
        Kind::Locall => {
            let w = watcher(Api::<Deployment>::all(client.clone()), watcher::Config::default().labels("app.kubernetes.io/managed-by"))
                .applied_objects();
            tokio::spawn(w.for_each(move |d| {
                if let Ok(d) = d {
                    record(owner(d.owner_references()), d.namespace().unwrap_or_default(), d.name_any());
                }
                async {}
            }));
        }
        Kind::Peer => {
            let w = watcher(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default().labels("rollouts-pod-template-hash"))
                .applied_objects();
            tokio::spawn(w.for_each(move |r| {
                if let Ok(r) = r {
                    record(owner(r.owner_references()), r.namespace().unwrap_or_default(), r.name_any());
                }
                async {}
            }));
        }
    }
    seen
}

/// The API server's own part of a change -> acted: a write until a watch sees it, on a ConfigMap
/// of the benchmark's (a change -> acted holds two: the change, then the child's create). Gives
/// the value of the `bench.locall.io/probe` annotation -> when the watch first saw it.
async fn watch_probe(client: &Client, ns: &str) -> Arc<Mutex<HashMap<String, Instant>>> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "bench-probe", "labels": {"bench.locall.io/probe": "true"}}})).unwrap();
    if let Err(kube::Error::Api(e)) = api.create(&PostParams::default(), &cm).await {
        assert_eq!(e.code, 409, "create the probe ConfigMap: {e}");
    }
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let s = seen.clone();
    let w = watcher(api, watcher::Config::default().labels("bench.locall.io/probe")).applied_objects();
    tokio::spawn(w.for_each(move |c| {
        if let Some(v) = c.ok().and_then(|c| c.annotations().get("bench.locall.io/probe").cloned()) {
            s.lock().unwrap().entry(v).or_insert_with(Instant::now);
        }
        async {}
    }));
    seen
}

/// One probe: the ConfigMap's annotation set to `value`, the time until the watch saw it (ms).
async fn probe(client: &Client, ns: &str, seen: &Mutex<HashMap<String, Instant>>, value: &str) -> f64 {
    use k8s_openapi::api::core::v1::ConfigMap;
    let t = Instant::now();
    let patch = json!({"metadata": {"annotations": {"bench.locall.io/probe": value}}});
    Api::<ConfigMap>::namespaced(client.clone(), ns).patch("bench-probe", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    loop {
        if let Some(at) = seen.lock().unwrap().get(value) {
            return at.saturating_duration_since(t).as_secs_f64() * 1000.0;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the probe's write was not seen in a minute");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sizes: Vec<usize> =
        std::env::var("BENCH_RELEASES").unwrap_or_else(|_| "1000".into()).split(',').filter_map(|s| s.parse().ok()).collect();
    let soak_minutes: u64 = std::env::var("BENCH_SOAK_MINUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let client = client().await;
    install_crd().await;
    // Every object runs one pod: a local cluster without room for them all would measure
    // releases waiting for pods the scheduler cannot place ("Too many pods"), not the operator.
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let room: i64 = nodes
        .items
        .iter()
        .filter_map(|n| {
            // A count, written "1000" or "1k" by the API server.
            let q = &n.status.as_ref()?.allocatable.as_ref()?.get("pods")?.0;
            match q.strip_suffix('k') {
                Some(k) => k.parse::<i64>().ok().map(|k| k * 1000),
                None => q.parse::<i64>().ok(),
            }
        })
        .sum();
    let need = largest as i64 + 200;
    assert!(
        room >= need,
        "the local cluster has room for {room} pods, {largest} objects need about {need}: start it with CLUSTER_NODES={} \
         (tests/cluster/down --purge; CLUSTER_NODES=... tests/cluster/up), each kwok node holds 1,000",
        need / 1000 + 1
    );
    let peer = peer();
    let mut results = serde_json::Map::new();
    let mut md = vec![];
    // The peer first: removing its objects is the namespace controller's work alone, where ours
    // (each through its finalizer) would put that wait between the two parts of the run.
    let kinds: Vec<Kind> = if peer.is_some() { vec![Kind::Peer, Kind::Locall] } else { vec![Kind::Locall] };
    for &kind in &kinds {
        let k = kind.name();
        // A clean slate: no objects of an earlier run (our operator honours their finalizers).
        {
            let _op = start(Kind::Locall, None);
            remove_namespaces(&client).await;
        }
        let mut child = start(kind, peer.as_ref().map(|p| p.0.as_path()));
        let metrics = child.metrics();
        let sampler = Sampler::start(child.id());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (idle, _) = proc_stats(child.id());
        results.insert(format!("{k}_idle_rss_mib"), idle.into());
        let namespaces: Vec<String> = {
            let mut v = vec![];
            for i in 0..NAMESPACES {
                v.push(namespace(&client, &format!("scale{i}")).await);
            }
            v
        };
        let children = watch_children(&client, kind);
        let probes = watch_probe(&client, &namespaces[0]).await;
        let mut created = 0usize;
        for &n in &sizes {
            sampler.take_peak();
            let started = Instant::now();
            let (_, cpu0) = proc_stats(child.id());
            // Where the CPU goes: the operator's reconciles and requests while these objects settle.
            let all_requests = |addr: String| async move {
                (scrape(&addr, "controller_runtime_reconcile_total").await, api_requests(&addr, &ALL_VERBS, None).await)
            };
            let counted0 = match (kind, metrics.clone()) {
                (Kind::Locall, Some(addr)) => Some(all_requests(addr).await),
                _ => None,
            };
            let fresh = (n - created).max(1) as f64;
            stream::iter(created..n)
                .for_each_concurrent(32, |i| {
                    let client = client.clone();
                    let ns = namespaces[i % NAMESPACES].clone();
                    async move {
                        let name = format!("app-{i}");
                        match kind {
                            Kind::Locall => Api::<LocallRelease>::namespaced(client, &ns)
                                .create(&PostParams::default(), &release(&ns, &name))
                                .await
                                .map(|_| ()),
                            Kind::Peer => Api::<DynamicObject>::namespaced_with(client, &ns, &rollout_resource())
                                .create(&PostParams::default(), &rollout(&ns, &name))
                                .await
                                .map(|_| ()),
                        }
                        .unwrap_or_else(|e| panic!("create {ns}/{name}: {e}"))
                    }
                })
                .await;
            created = n;
            let mut last_print = Instant::now();
            loop {
                let d = done(&client, kind).await;
                if d >= n {
                    break;
                }
                if last_print.elapsed() > Duration::from_secs(60) {
                    println!("{k}: {d}/{n} done after {:.0} s", started.elapsed().as_secs_f64());
                    last_print = Instant::now();
                }
                assert!(started.elapsed() < Duration::from_secs(7200), "{k}: only {d} of {n} done after two hours");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let all_done = started.elapsed().as_secs_f64();
            let (_, cpu1) = proc_stats(child.id());
            tokio::time::sleep(Duration::from_secs(15)).await;
            let (settled, _) = proc_stats(child.id());
            let peak = sampler.take_peak().max(settled);
            println!(
                "{k} {n}: all done in {all_done:.1} s, CPU {:.1} s, RSS settled {settled:.1} MiB, peak {peak:.1} MiB (idle {idle:.1})",
                cpu1 - cpu0
            );
            results.insert(format!("{k}_settled_rss_mib_{n}"), settled.into());
            results.insert(format!("{k}_peak_rss_mib_{n}"), peak.into());
            results.insert(format!("{k}_cpu_s_{n}"), (cpu1 - cpu0).into());
            results.insert(format!("{k}_all_done_s_{n}"), all_done.into());
            if let (Some((r0, q0)), Some(addr)) = (counted0, metrics.clone()) {
                let (r1, q1) = all_requests(addr).await;
                let (reconciles, requests) = (r1 - r0, q1 - q0);
                println!("locall {n}: {:.2} reconciles and {:.2} API requests per new release", reconciles / fresh, requests / fresh);
                results.insert(format!("locall_reconciles_per_release_{n}"), (reconciles / fresh).into());
                results.insert(format!("locall_requests_per_release_{n}"), (requests / fresh).into());
            }

            // Reconcile-to-act: a change until the new child exists, through the one watch.
            let (mut lat, mut floor) = (vec![], vec![]);
            for i in 0..100.min(n) {
                let ns = &namespaces[i % NAMESPACES];
                let name = format!("app-{i}");
                let key = format!("{ns}/{name}");
                let before = children.lock().unwrap().get(&key).map(|(c, _)| c.clone());
                let t = Instant::now();
                let version = format!("1.{n}.{i}");
                match kind {
                    Kind::Locall => {
                        let patch = json!({"spec": {"version": version}});
                        Api::<LocallRelease>::namespaced(client.clone(), ns)
                            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                            .await
                            .map(|_| ())
                    }
                    Kind::Peer => {
                        let patch = json!({"spec": {"template": {"metadata": {"annotations": {"version": version}}}}});
                        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &rollout_resource())
                            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                            .await
                            .map(|_| ())
                    }
                }
                .unwrap();
                let acted = loop {
                    if let Some((c, at)) = children.lock().unwrap().get(&key).cloned() {
                        if Some(&c) != before.as_ref() {
                            break at;
                        }
                    }
                    assert!(t.elapsed() < Duration::from_secs(120), "{k}: {key} did not act on the change in 2 minutes");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                lat.push(acted.saturating_duration_since(t).as_secs_f64() * 1000.0);
                // The API server's part, at the same moment: one write until a watch sees it.
                floor.push(probe(&client, &namespaces[0], &probes, &format!("{k}-{n}-{i}")).await);
            }
            let (p50, p99) = (pct(&mut lat.clone(), 0.5), pct(&mut lat, 0.99));
            println!("{k} {n}: change -> acted p50 {p50:.1} ms p99 {p99:.1} ms over {} changes", 100.min(n));
            results.insert(format!("{k}_act_p50_ms_{n}"), p50.into());
            results.insert(format!("{k}_act_p99_ms_{n}"), p99.into());
            let (f50, f99) = (pct(&mut floor.clone(), 0.5), pct(&mut floor, 0.99));
            println!("{k} {n}: API server write -> watch p50 {f50:.1} ms p99 {f99:.1} ms (two in each change -> acted)");
            results.insert(format!("{k}_write_watch_p50_ms_{n}"), f50.into());
            results.insert(format!("{k}_write_watch_p99_ms_{n}"), f99.into());
            // Let the changed objects finish before the next figure.
            wait_for(Duration::from_secs(900), "the changed objects to finish", || async {
                (done(&client, kind).await >= n).then_some(())
            })
            .await;

            if let (Kind::Locall, Some(addr)) = (kind, metrics.as_deref()) {
                // No-op reconciles: an annotation change reconciles with nothing to do.
                let reconciles = || scrape(addr, "controller_runtime_reconcile_total");
                let writes = || mutating_requests(addr);
                let (w0, r0) = (writes().await, reconciles().await);
                for i in 0..100.min(n) {
                    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &namespaces[i % NAMESPACES]);
                    let patch = json!({"metadata": {"annotations": {"bench.locall.io/touch": format!("{n}")}}});
                    api.patch(&format!("app-{i}"), &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                let noop = reconciles().await - r0;
                let per = if noop > 0.0 { (writes().await - w0) / noop } else { f64::NAN };
                results.insert(format!("locall_writes_per_noop_reconcile_{n}"), per.into());
                println!("locall {n}: {per} writes per no-op reconcile over {noop} reconciles");
            }
        }
        if kind == Kind::Locall {
            // Restart settle: SIGKILL, start again, until every release was reconciled once and
            // nothing was written for 5 s; the writes made meanwhile, every mutating request the
            // operator sent (0 wanted: all settled).
            drop(sampler);
            child.kill();
            let n = created;
            let t = Instant::now();
            child = start(Kind::Locall, None);
            let addr = child.metrics().unwrap();
            let mut quiet_since = (f64::NAN, Instant::now());
            let settle = loop {
                let (rec, writes) = (scrape(&addr, "controller_runtime_reconcile_total").await, mutating_requests(&addr).await);
                if writes != quiet_since.0 {
                    quiet_since = (writes, Instant::now());
                }
                if rec >= n as f64 && quiet_since.1.elapsed() >= Duration::from_secs(5) {
                    break (quiet_since.1.saturating_duration_since(t).as_secs_f64(), writes);
                }
                assert!(t.elapsed() < Duration::from_secs(900), "the restarted operator did not settle in 15 minutes");
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            println!("locall {n}: restart settled in {:.1} s with {} writes", settle.0, settle.1);
            results.insert(format!("locall_restart_settle_s_{n}"), settle.0.into());
            results.insert(format!("locall_restart_writes_{n}"), settle.1.into());
            if soak_minutes > 0 {
                let sampler = Sampler::start(child.id());
                let t = Instant::now();
                let mut round = 0usize;
                while t.elapsed() < Duration::from_secs(soak_minutes * 60) {
                    for j in 0..10 {
                        let i = (round * 10 + j) % n;
                        let api: Api<LocallRelease> = Api::namespaced(client.clone(), &namespaces[i % NAMESPACES]);
                        let patch = json!({"spec": {"version": format!("2.{round}.{j}")}});
                        let _ = api.patch(&format!("app-{i}"), &PatchParams::default(), &Patch::Merge(patch)).await;
                    }
                    round += 1;
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                let series = sampler.series.lock().unwrap().clone();
                results.insert("locall_soak_rss_mib".into(), json!(series.iter().map(|(t, r)| json!([t.round(), r])).collect::<Vec<_>>()));
                md.push(format!(
                    "\nSoak, {soak_minutes} min, {n} releases, 10 version changes every 10 s ({} changes):\n\n| minute | RSS MiB |\n|---|---|\n{}",
                    round * 10,
                    series.iter().filter(|(t, _)| (*t as u64) % 60 < 10).map(|(t, r)| format!("| {:.0} | {r:.1} |", t / 60.0)).collect::<Vec<_>>().join("\n")
                ));
            }
        }
        child.kill();
        write_results(&results, &md, &sizes);
    }
    // BENCH_KEEP=1 leaves the objects for experiments. Removing them is a figure of ours too:
    // every release through its finalizer, with its namespace, as a tenant leaving would.
    if std::env::var_os("BENCH_KEEP").is_none() {
        let op = start(Kind::Locall, None);
        let addr = op.metrics().unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (q0, (_, cpu0), t) = (api_requests(&addr, &ALL_VERBS, None).await, proc_stats(op.id()), Instant::now());
        remove_namespaces(&client).await;
        let (q1, (_, cpu1), took) = (api_requests(&addr, &ALL_VERBS, None).await, proc_stats(op.id()), t.elapsed().as_secs_f64());
        let n = sizes.iter().copied().max().unwrap_or(0);
        let line = format!(
            "\nRemoving the {n} releases with their namespaces: {took:.0} s until the namespaces were gone; the operator's CPU {:.1} s and {} API requests meanwhile (each release's finalizer).\n",
            cpu1 - cpu0,
            q1 - q0
        );
        println!("{line}");
        results.insert("locall_delete_all_s".into(), took.into());
        results.insert("locall_delete_all_cpu_s".into(), (cpu1 - cpu0).into());
        results.insert("locall_delete_all_requests".into(), (q1 - q0).into());
        md.push(line);
        write_results(&results, &md, &sizes);
    }
}

/// target/bench/results.json (merged into what earlier runs wrote) and results.md: the figures
/// of this run so far, with their ratios to the peer. Written after each operator, so a long run
/// stopped during its cleanup keeps them.
fn write_results(results: &serde_json::Map<String, Value>, md: &[String], sizes: &[usize]) {
    let mut results = results.clone();
    let figures = results.clone();
    let get = |key: &str| figures.get(key).and_then(Value::as_f64);
    let mut table =
        vec!["| figure | releases | locall-operator | Argo Rollouts v1.10.0 | ratio |".to_string(), "|---|---|---|---|---|".to_string()];
    let mut ratios = vec![];
    let mut rows: Vec<(&str, String, String)> = vec![("idle RSS MiB", String::new(), "idle_rss_mib".into())];
    for n in sizes {
        for (what, key) in [
            ("peak RSS MiB", "peak_rss_mib"),
            ("settled RSS MiB", "settled_rss_mib"),
            ("CPU s to final state", "cpu_s"),
            ("wall s to final state", "all_done_s"),
            ("change -> acted p50 ms", "act_p50_ms"),
            ("change -> acted p99 ms", "act_p99_ms"),
            ("API server write -> watch p50 ms (meanwhile)", "write_watch_p50_ms"),
            ("API server write -> watch p99 ms (meanwhile)", "write_watch_p99_ms"),
            ("reconciles per new release (ours)", "reconciles_per_release"),
            ("API requests per new release (ours)", "requests_per_release"),
        ] {
            rows.push((what, n.to_string(), format!("{key}_{n}")));
        }
    }
    for (what, n, key) in rows {
        let ours = get(&format!("locall_{key}"));
        let theirs = get(&format!("argo_rollouts_{key}"));
        let ratio = ours.zip(theirs).map(|(a, b)| a / b);
        if let Some(r) = ratio {
            ratios.push((format!("ratio_{key}"), r));
        }
        let f = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        table.push(format!(
            "| {what} | {n} | {} | {} | {} |",
            f(ours),
            f(theirs),
            ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into())
        ));
    }
    for (k, r) in ratios {
        results.insert(k, r.into());
    }
    let path = repo().join("target/bench/results.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut all: serde_json::Map<String, Value> =
        std::fs::read_to_string(&path).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    all.extend(results);
    std::fs::write(&path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let mut text = format!(
        "# Scale, side by side ({date}, {cores} cores, {host})\n\nSame local cluster, same run, one after the other (the peer first). Equivalent objects: a one-stage, one-replica LocallRelease; a one-replica Rollout with one canary step to 100%. Ratio = locall-operator / peer. The peer's client throttle: {}.\n\n{}\n",
        match peer_qps() {
            Some(q) => format!("--qps {q} --burst {} (BENCH_PEER_QPS)", 2 * q),
            None => "its defaults, --qps 40 --burst 80".into(),
        },
        table.join("\n")
    );
    for n in sizes {
        if let (Some(s), Some(w)) = (get(&format!("locall_restart_settle_s_{n}")), get(&format!("locall_restart_writes_{n}"))) {
            text.push_str(&format!("\nRestart settle ({n} releases): {s:.1} s until every release was reconciled and nothing written for 5 s; {w} mutating API requests meanwhile (status, children, Events, finalizers).\n"));
        }
        if let Some(w) = get(&format!("locall_writes_per_noop_reconcile_{n}")) {
            text.push_str(&format!("Mutating API requests per no-op reconcile ({n} releases): {w}.\n"));
        }
    }
    text.push_str(&md.join("\n"));
    std::fs::write(repo().join("target/bench/results.md"), &text).unwrap();
    println!("{text}");
}
