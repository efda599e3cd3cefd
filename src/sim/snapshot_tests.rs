//! Unit tests of the conversion from Kubernetes objects to the model snapshot.

use super::*;
use crate::sim::model::{plan, ANN_ERROR_RATE, ANN_RPS};
use k8s_openapi::api::core::v1::{PodCondition, PodStatus, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::json;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ready: Option<bool>) -> Arc<Pod> {
    let conditions =
        ready.map(|r| vec![PodCondition { type_: "Ready".into(), status: if r { "True" } else { "False" }.into(), ..Default::default() }]);
    Arc::new(Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: Some(map(labels)),
            annotations: Some(map(&[(ANN_ERROR_RATE, "0.25")])),
            ..Default::default()
        },
        status: Some(PodStatus { conditions, ..Default::default() }),
        ..Default::default()
    })
}

fn service(ns: &str, name: &str, selector: Option<&[(&str, &str)]>) -> Arc<Service> {
    Arc::new(Service {
        metadata: ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), ..Default::default() },
        spec: Some(ServiceSpec { selector: selector.map(map), ..Default::default() }),
        ..Default::default()
    })
}

fn route(ns: &str, name: &str, rps: Option<&str>, rules: serde_json::Value) -> Arc<DynamicObject> {
    let mut obj = DynamicObject::new(name, &httproute_resource()).within(ns).data(json!({ "spec": { "rules": rules } }));
    if let Some(rps) = rps {
        obj.metadata.annotations = Some(map(&[(ANN_RPS, rps)]));
    }
    Arc::new(obj)
}

const V: &str = VERSION_LABEL;

#[test]
fn pod_readiness_and_version() {
    let p = pod_info(&pod("shop", "a", &[(V, "v1")], Some(true)));
    assert!(p.ready);
    assert_eq!(p.version, "v1");
    assert_eq!(p.annotations[ANN_ERROR_RATE], "0.25");
    assert!(!pod_info(&pod("shop", "b", &[], Some(false))).ready);
    let no_conditions = pod_info(&pod("shop", "c", &[], None));
    assert!(!no_conditions.ready);
    assert_eq!(no_conditions.version, UNKNOWN_VERSION);
    let mut deleting = (*pod("shop", "d", &[(V, "v2")], Some(true))).clone();
    deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
    assert!(!pod_info(&deleting).ready);
}

#[test]
fn backend_refs_defaults_and_filters() {
    let r = route(
        "shop",
        "web",
        None,
        json!([
            { "backendRefs": [
                { "name": "stable", "port": 80 },
                { "name": "canary", "namespace": "other", "weight": 10 },
            ]},
            { "backendRefs": [
                { "name": "zero", "weight": 0 },
                { "name": "bucket", "kind": "S3Bucket", "group": "example.com" },
                { "name": "core", "kind": "Service", "group": "" },
                { "weight": 5 },
            ]},
            { "matches": [] },
        ]),
    );
    let refs = route_backend_refs(&r);
    let got: Vec<(&str, &str, u32)> = refs.iter().map(|r| (r.namespace.as_str(), r.name.as_str(), r.weight)).collect();
    assert_eq!(got, vec![("shop", "stable", 1), ("other", "canary", 10), ("shop", "zero", 0), ("shop", "core", 1),]);
}

#[test]
fn routes_and_unrouted_services_become_entry_points() {
    let pods = vec![
        pod("shop", "s1", &[("app", "web"), ("track", "stable"), (V, "v1")], Some(true)),
        pod("shop", "s2", &[("app", "web"), ("track", "stable"), (V, "v1")], Some(true)),
        pod("shop", "c1", &[("app", "web"), ("track", "canary"), (V, "v2")], Some(true)),
        pod("shop", "c2", &[("app", "web"), ("track", "canary"), (V, "v2")], Some(false)),
        pod("other", "x", &[("app", "web"), ("track", "stable"), (V, "v9")], Some(true)),
        pod("shop", "api", &[("app", "api"), (V, "v3")], Some(true)),
    ];
    let services = vec![
        service("shop", "web-stable", Some(&[("app", "web"), ("track", "stable")])),
        service("shop", "web-canary", Some(&[("app", "web"), ("track", "canary")])),
        // Same name as the route: the route is the entry point.
        service("shop", "web", Some(&[("app", "web")])),
        service("shop", "api", Some(&[("app", "api")])),
        service("shop", "headless", None),
        service("shop", "empty-selector", Some(&[])),
    ];
    let routes = vec![route(
        "shop",
        "web",
        Some("100"),
        json!([{ "backendRefs": [
            { "name": "web-stable", "weight": 90 },
            { "name": "web-canary", "weight": 10 },
            { "name": "missing", "weight": 0 },
        ]}]),
    )];
    let snap = build_snapshot(&pods, &services, &routes);
    let names: Vec<(&str, EntryKind)> = snap.entry_points.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(names, vec![("web", EntryKind::Route), ("api", EntryKind::Service)]);
    let web = &snap.entry_points[0];
    assert_eq!(web.annotations[ANN_RPS], "100");
    let backend_pods: Vec<Vec<&str>> = web.backends.iter().map(|b| b.pods.iter().map(|p| p.name.as_str()).collect()).collect();
    assert_eq!(backend_pods, vec![vec!["s1", "s2"], vec!["c1", "c2"], vec![]]);
    assert_eq!(snap.entry_points[1].backends[0].pods.len(), 1);

    let p = plan(&snap, 20.0);
    let rates: Vec<(&str, &str, f64, f64)> =
        p.series.iter().map(|s| (s.key.service.as_str(), s.key.version.as_str(), s.rps, s.error_rate)).collect();
    assert_eq!(rates, vec![("api", "v3", 20.0, 0.25), ("web", "v1", 90.0, 0.25), ("web", "v2", 10.0, 0.25),]);
}

#[test]
fn route_to_missing_service_is_unavailable() {
    let routes = vec![route("shop", "web", Some("10"), json!([{ "backendRefs": [{ "name": "gone" }] }]))];
    let p = plan(&build_snapshot(&[], &[], &routes), 20.0);
    assert_eq!(p.series.len(), 1);
    assert!(p.series[0].unavailable);
    assert_eq!(p.series[0].rps, 10.0);
}

#[test]
fn worker_pods_are_one_entry_point_per_application_component() {
    let worker = |name: &str, version: &str, rps: Option<&str>| {
        let mut p = (*pod(
            "shop",
            name,
            &[(V, version), ("app.kubernetes.io/name", "platform"), ("app.kubernetes.io/component", "worker")],
            Some(true),
        ))
        .clone();
        if let Some(rps) = rps {
            p.metadata.annotations.get_or_insert_with(Default::default).insert(crate::sim::model::ANN_WORKER_RPS.into(), rps.into());
        }
        Arc::new(p)
    };
    let pods = vec![worker("w-1", "v1", Some("20")), worker("w-2", "v2", Some("20")), worker("other", "v1", None)];
    let snap = build_snapshot(&pods, &[], &[]);
    assert_eq!(snap.entry_points.len(), 1, "only pods that say they take work");
    let ep = &snap.entry_points[0];
    assert_eq!((ep.namespace.as_str(), ep.name.as_str()), ("shop", "platform-worker"));
    assert_eq!(ep.annotations[ANN_RPS], "20");
    assert_eq!(ep.backends[0].pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["w-1", "w-2"]);
    // Both versions share the work, each series labelled with its version.
    let rates = plan(&snap, 0.0);
    assert_eq!(rates.series.iter().map(|s| (s.key.version.as_str(), s.rps)).collect::<Vec<_>>(), [("v1", 10.0), ("v2", 10.0)]);
}
