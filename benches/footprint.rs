//! `cargo bench --bench footprint`: heap bytes this operator holds per release, measured with a
//! counting allocator, for each thing it keeps per release: the cached LocallRelease (the
//! scale bench's one-stage release, Succeeded, as the watch delivers it without managedFields),
//! the slimmed Deployment (each beside the typed object it replaces), the Service (metadata and
//! selector), the per-release metric series. No cluster: the
//! objects are built here as the API server would send them, the status by the engine itself
//! (`plan`). Prints a table and writes target/bench/footprint.json.

use k8s_openapi::api::apps::v1::Deployment;
use locall_operator::{
    api::LocallRelease,
    controller::cache::{CachedRelease, SlimDeployment, SlimService},
    plan::{plan, Options},
    telemetry::Metrics,
};
use serde_json::{json, Value};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        atomic::{AtomicIsize, Ordering},
        Arc,
    },
};

struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HELD.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HELD.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        HELD.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

const N: usize = 2_000;

/// Bytes held per item after `make` built N of them (and kept them).
fn per_item<T>(make: impl Fn(usize) -> T) -> f64 {
    let before = HELD.load(Ordering::Relaxed);
    let kept: Vec<T> = (0..N).map(&make).collect();
    let after = HELD.load(Ordering::Relaxed);
    drop(kept);
    (after - before) as f64 / N as f64
}

fn meta(ns: &str, name: &str, i: usize) -> Value {
    json!({"name": name, "namespace": ns, "uid": format!("5d3c9a7e-1b2f-4c8d-9e0a-{i:012}"), "resourceVersion": format!("{}", 100000 + i),
           "generation": 1, "creationTimestamp": "2026-12-01T04:00:00Z"})
}

fn release_json(i: usize) -> Value {
    let (ns, name) = (format!("bench-{}", i % 10), format!("r{i:05}"));
    let mut m = meta(&ns, &name, i);
    m["labels"] = json!({"locall.io/bench": "scale", "locall.io/operator": "bench-scale"});
    m["finalizers"] = json!(["locall.io/cleanup"]);
    json!({
        "apiVersion": "locall.io/v1alpha1", "kind": "LocallRelease", "metadata": m,
        "spec": {"version": "1.0.0", "replicas": 1, "template": {"spec": {"containers": [{"name": "api", "image": "locall/api:1.0.0"}]}},
                 "stages": [{"name": "production"}]}
    })
}

fn main() {
    // The engine's own status for the release once Succeeded (first version).
    let lr: LocallRelease = serde_json::from_value(release_json(0)).unwrap();
    let t = plan(&lr, &Options { first: true, ..Default::default() }).unwrap();
    let status = serde_json::to_value(&t.status).unwrap();
    let full = |i: usize| {
        let mut v = release_json(i);
        v["status"] = status.clone();
        v
    };
    let json_len = serde_json::to_string(&full(0)).unwrap().len();
    let jsons: Vec<String> = (0..N).map(|i| serde_json::to_string(&full(i)).unwrap()).collect();

    // Measured one after the other, in this order.
    let mut rows: Vec<(&str, f64)> = vec![
        ("release as cached (CachedRelease)", per_item(|i| Arc::new(serde_json::from_str::<CachedRelease>(&jsons[i]).unwrap()))),
        ("  the same release typed (LocallRelease)", per_item(|i| Arc::new(serde_json::from_str::<LocallRelease>(&jsons[i]).unwrap()))),
        ("    its typed spec alone", per_item(|i| serde_json::from_str::<LocallRelease>(&jsons[i]).unwrap().spec)),
        ("    its typed status alone", per_item(|i| serde_json::from_str::<LocallRelease>(&jsons[i]).unwrap().status)),
        ("  the same release as compact JSON text", per_item(|i| jsons[i].clone().into_boxed_str())),
    ];

    let dep = |i: usize| -> Deployment {
        let mut m = meta(&format!("bench-{}", i % 10), &format!("r{i:05}-abc12345"), i);
        m["labels"] = json!({"locall.io/release": format!("bench-{}.r{i:05}", i % 10), "locall.io/revision": "abc12345", "app.kubernetes.io/managed-by": "locall-operator"});
        m["annotations"] = json!({"locall.io/applied-hash": "0123456789abcdef"});
        serde_json::from_value(
            json!({"metadata": m, "spec": {"replicas": 1}, "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1}}),
        )
        .unwrap()
    };
    let dep_json = |i: usize| serde_json::to_value(dep(i)).unwrap();
    rows.push((
        "Deployment as cached (SlimDeployment)",
        per_item(|i| Arc::new(serde_json::from_value::<SlimDeployment>(dep_json(i)).unwrap())),
    ));
    rows.push(("  the same Deployment typed (k8s-openapi)", per_item(|i| Arc::new(dep(i)))));
    let svc = |i: usize| -> SlimService {
        let mut m = meta(&format!("bench-{}", i % 10), &format!("r{i:05}"), i);
        m["labels"] = json!({"locall.io/release": format!("bench-{}.r{i:05}", i % 10), "app.kubernetes.io/managed-by": "locall-operator"});
        m["annotations"] = json!({"locall.io/applied-hash": "0123456789abcdef"});
        let selector = json!({"app.kubernetes.io/name": format!("r{i:05}"), "locall.io/revision": "abc12345"});
        let mut svc: SlimService = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service", "metadata": m,
            "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080}], "type": "ClusterIP"}}))
        .unwrap();
        svc.slim();
        svc
    };
    rows.push(("Service as cached (SlimService: metadata, selector)", per_item(|i| Arc::new(svc(i)))));

    let metrics = Metrics::default();
    let before = HELD.load(Ordering::Relaxed);
    let releases: Vec<LocallRelease> = jsons.iter().map(|j| serde_json::from_str(j).unwrap()).collect();
    let held_releases = HELD.load(Ordering::Relaxed) - before;
    let before = HELD.load(Ordering::Relaxed);
    for lr in &releases {
        metrics.observe_release(lr, lr.status.as_ref().unwrap());
    }
    rows.push(("metric series (phase, weight)", (HELD.load(Ordering::Relaxed) - before) as f64 / N as f64));
    drop(releases);
    let _ = held_releases;

    let mut out = format!("heap bytes per release ({N} of each kept; release JSON {json_len} bytes)\n");
    if std::env::var("FOOTPRINT_SIZES").is_ok() {
        use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
        use std::mem::size_of;
        out += &format!(
            "size_of: LocallRelease {} spec {} status {} PodTemplateSpec {} PodSpec {} Container {} ObjectMeta {} Deployment {}\n",
            size_of::<LocallRelease>(),
            size_of::<locall_operator::api::LocallReleaseSpec>(),
            size_of::<locall_operator::api::LocallReleaseStatus>(),
            size_of::<PodTemplateSpec>(),
            size_of::<PodSpec>(),
            size_of::<Container>(),
            size_of::<kube::api::ObjectMeta>(),
            size_of::<Deployment>()
        );
    }
    for (what, b) in &rows {
        out += &format!("{what:<55} {b:>9.0}\n");
    }
    print!("{out}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let j: serde_json::Map<String, Value> = rows.iter().map(|(w, b)| (w.trim().to_string(), json!(b.round()))).collect();
    let _ = std::fs::write(
        dir.join("footprint.json"),
        serde_json::to_string_pretty(&json!({"release_json_bytes": json_len, "heap_bytes_per_release": j})).unwrap(),
    );
}
