//! Pure conversion from the reflector stores' contents (Pods, Services,
//! HTTPRoutes) to the model's [`Snapshot`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ApiResource, DynamicObject};
use kube::ResourceExt;

use super::model::{Backend, EntryKind, EntryPoint, PodInfo, Snapshot, ANN_RPS, ANN_WORKER_RPS, UNKNOWN_VERSION, VERSION_LABEL};

/// API group of HTTPRoute.
pub const HTTPROUTE_GROUP: &str = "gateway.networking.k8s.io";
/// API version of HTTPRoute.
pub const HTTPROUTE_VERSION: &str = "v1";
/// Kind of HTTPRoute.
pub const HTTPROUTE_KIND: &str = "HTTPRoute";

/// The `ApiResource` of `gateway.networking.k8s.io/v1` HTTPRoute.
pub fn httproute_resource() -> ApiResource {
    ApiResource {
        group: HTTPROUTE_GROUP.into(),
        version: HTTPROUTE_VERSION.into(),
        api_version: format!("{HTTPROUTE_GROUP}/{HTTPROUTE_VERSION}"),
        kind: HTTPROUTE_KIND.into(),
        plural: "httproutes".into(),
    }
}

/// A `backendRefs` entry of an HTTPRoute that points at a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteBackendRef {
    /// Namespace of the Service (defaults to the route's namespace).
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// Weight (absent = 1, negative or invalid = 0).
    pub weight: u32,
}

/// All Service `backendRefs` of all rules of an HTTPRoute; references to other
/// kinds (or groups) are ignored.
pub fn route_backend_refs(route: &DynamicObject) -> Vec<RouteBackendRef> {
    let route_ns = route.namespace().unwrap_or_default();
    let rules = route.data.pointer("/spec/rules").and_then(|r| r.as_array());
    let refs = rules.into_iter().flatten().flat_map(|rule| rule.get("backendRefs").and_then(|b| b.as_array()).into_iter().flatten());
    refs.filter_map(|r| {
        let kind = r.get("kind").and_then(|k| k.as_str()).unwrap_or("Service");
        let group = r.get("group").and_then(|g| g.as_str()).unwrap_or("");
        if kind != "Service" || !(group.is_empty() || group == "core") {
            return None;
        }
        let weight = match r.get("weight") {
            None | Some(serde_json::Value::Null) => 1,
            Some(w) => w.as_u64().map_or(0, |w| w.min(u64::from(u32::MAX)) as u32),
        };
        Some(RouteBackendRef {
            namespace: r.get("namespace").and_then(|n| n.as_str()).unwrap_or(&route_ns).to_string(),
            name: r.get("name")?.as_str()?.to_string(),
            weight,
        })
    })
    .collect()
}

/// Converts a Pod: Ready when its Ready condition is True and it is not being deleted.
pub fn pod_info(pod: &Pod) -> PodInfo {
    let ready = pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let version = pod.labels().get(VERSION_LABEL).filter(|v| !v.is_empty()).map_or(UNKNOWN_VERSION, String::as_str);
    PodInfo {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        version: version.to_string(),
        ready,
        annotations: pod.annotations().clone(),
    }
}

fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty())
}

/// Builds the snapshot: every HTTPRoute is an entry point over its Service
/// backends, then every Service with a selector that no HTTPRoute references
/// (and that does not share namespace/name with an HTTPRoute) is one too.
pub fn build_snapshot(pods: &[Arc<Pod>], services: &[Arc<Service>], routes: &[Arc<DynamicObject>]) -> Snapshot {
    let mut pods_by_ns: HashMap<String, Vec<(&Pod, PodInfo)>> = HashMap::new();
    for pod in pods {
        let info = pod_info(pod);
        pods_by_ns.entry(info.namespace.clone()).or_default().push((pod.as_ref(), info));
    }
    let services_by_key: HashMap<(String, String), &Service> =
        services.iter().map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s.as_ref())).collect();
    let selected_pods = |svc: &Service| -> Vec<PodInfo> {
        let (Some(sel), Some(ns_pods)) = (selector(svc), pods_by_ns.get(&svc.namespace().unwrap_or_default())) else {
            return Vec::new();
        };
        ns_pods
            .iter()
            .filter(|(pod, _)| {
                let labels = pod.labels();
                sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(|(_, info)| info.clone())
            .collect()
    };

    let mut routes: Vec<&DynamicObject> = routes.iter().map(|r| r.as_ref()).collect();
    routes.sort_by_key(|r| (r.namespace(), r.name_any()));
    let mut referenced = HashSet::new();
    let mut route_names = HashSet::new();
    let mut entry_points = Vec::new();
    for route in routes {
        let namespace = route.namespace().unwrap_or_default();
        route_names.insert((namespace.clone(), route.name_any()));
        let backends = route_backend_refs(route)
            .into_iter()
            .map(|r| {
                let key = (r.namespace, r.name);
                let pods = services_by_key.get(&key).map(|svc| selected_pods(svc)).unwrap_or_default();
                referenced.insert(key);
                Backend { weight: r.weight, pods }
            })
            .collect();
        entry_points.push(EntryPoint {
            namespace,
            name: route.name_any(),
            kind: EntryKind::Route,
            annotations: route.annotations().clone(),
            backends,
        });
    }

    let mut services: Vec<&Service> = services.iter().map(|s| s.as_ref()).collect();
    services.sort_by_key(|s| (s.namespace(), s.name_any()));
    for svc in services {
        let key = (svc.namespace().unwrap_or_default(), svc.name_any());
        if selector(svc).is_none() || referenced.contains(&key) || route_names.contains(&key) {
            continue;
        }
        entry_points.push(EntryPoint {
            namespace: key.0,
            name: key.1,
            kind: EntryKind::Service,
            annotations: svc.annotations().clone(),
            backends: vec![Backend { weight: 1, pods: selected_pods(svc) }],
        });
    }
    // Workers: pods that say how much work they take, grouped by application and component,
    // every version of them sharing the work.
    let mut workers: BTreeMap<(String, String), (String, Vec<PodInfo>)> = BTreeMap::new();
    for (pod, info) in pods_by_ns.values().flatten() {
        let Some(rps) = pod.annotations().get(ANN_WORKER_RPS) else { continue };
        let labels = pod.labels();
        let (Some(app), Some(component)) = (labels.get("app.kubernetes.io/name"), labels.get("app.kubernetes.io/component")) else {
            continue;
        };
        let key = (info.namespace.clone(), format!("{app}-{component}"));
        let entry = workers.entry(key).or_insert_with(|| (rps.clone(), Vec::new()));
        entry.1.push(info.clone());
    }
    for ((namespace, name), (rps, mut pods)) in workers {
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        entry_points.push(EntryPoint {
            namespace,
            name,
            kind: EntryKind::Service,
            annotations: BTreeMap::from([(ANN_RPS.to_string(), rps)]),
            backends: vec![Backend { weight: 1, pods }],
        });
    }
    Snapshot { entry_points }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
