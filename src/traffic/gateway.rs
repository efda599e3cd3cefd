//! Gateway API: one Service per revision and an HTTPRoute whose backend weights split the
//! stage's traffic between the stable version and the candidate.

use super::{ensure_service, Applied, MANAGER};
use crate::{
    api::{labels, LocallRelease},
    controller::build,
    engine::{names, StageDesired},
};
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    Client, ResourceExt,
};
use std::collections::BTreeMap;

/// The HTTPRoute resource, `gateway.networking.k8s.io/v1`.
pub fn httproute_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"), "httproutes")
}

/// Backends of the route: (service name, weight).
pub fn backends(release: &str, stage: &StageDesired) -> Vec<(String, i32)> {
    let Some(t) = &stage.traffic else { return vec![] };
    let mut out = Vec::new();
    match (&t.stable, &t.candidate) {
        (Some(s), Some(c)) => {
            out.push((names::revision_service(release, s), 100 - t.weight));
            out.push((names::revision_service(release, c), t.weight));
        }
        (Some(s), None) => out.push((names::revision_service(release, s), 100)),
        (None, Some(c)) => out.push((names::revision_service(release, c), if t.weight > 0 { 100 } else { 0 })),
        (None, None) => {}
    }
    out
}

/// The HTTPRoute for a stage (pure).
pub fn route(lr: &LocallRelease, stage: &StageDesired) -> serde_json::Value {
    let name = names::entry_service(&lr.name_any());
    let port = lr.spec.service.port;
    let refs: Vec<_> = backends(&lr.name_any(), stage)
        .into_iter()
        .map(|(svc, weight)| serde_json::json!({"kind": "Service", "name": svc, "port": port, "weight": weight}))
        .collect();
    let gw = lr.spec.traffic.gateway.clone();
    let mut parent = serde_json::json!({"name": gw.as_ref().map(|g| g.name.clone()).unwrap_or_default()});
    if let Some(ns) = gw.and_then(|g| g.namespace) {
        parent["namespace"] = ns.into();
    }
    let mut labels_map = build::common_labels(lr);
    labels_map.insert(labels::STAGE.into(), stage.name.clone());
    let mut meta = serde_json::json!({"name": name, "namespace": stage.namespace, "labels": labels_map});
    if !lr.spec.service.annotations.is_empty() {
        meta["annotations"] = serde_json::to_value(&lr.spec.service.annotations).unwrap_or_default();
    }
    if let Some(o) = build::owner(lr, &stage.namespace) {
        meta["ownerReferences"] = serde_json::to_value(o).unwrap_or_default();
    }
    serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": meta,
        "spec": {"parentRefs": [parent], "rules": [{"backendRefs": refs}]},
    })
}

pub async fn apply(client: &Client, applied: &Applied, lr: &LocallRelease, stage: &StageDesired) -> Result<u32, kube::Error> {
    let Some(t) = &stage.traffic else { return Ok(0) };
    let release = lr.name_any();
    let mut writes = 0;
    for rev in t.stable.iter().chain(t.candidate.iter()) {
        let selector = BTreeMap::from([(labels::NAME.to_string(), release.clone()), (labels::REVISION.to_string(), rev.clone())]);
        let mut svc = build::service(lr, stage, &names::revision_service(&release, rev), selector);
        svc.metadata.labels.get_or_insert_with(Default::default).insert(labels::REVISION.into(), rev.clone());
        writes += ensure_service(client, applied, svc).await?;
    }
    let mut body = route(lr, stage);
    let hash = build::content_hash(&body);
    body["metadata"]["annotations"][build::APPLIED_HASH] = hash.clone().into();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &stage.namespace, &httproute_resource());
    let name = names::entry_service(&release);
    if applied.route_hash(&stage.namespace, &name).as_ref() == Some(&hash) {
        return Ok(writes);
    }
    if let Some(cur) = api.get_opt(&name).await? {
        if cur.annotations().get(build::APPLIED_HASH) == Some(&hash) {
            return Ok(writes);
        }
    }
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(writes + 1)
}

/// Reads the candidate's share from the HTTPRoute's backend weights.
pub async fn observe(client: &Client, lr: &LocallRelease, stage: &StageDesired) -> Result<Option<i32>, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &stage.namespace, &httproute_resource());
    let Some(route) = api.get_opt(&names::entry_service(&lr.name_any())).await? else { return Ok(None) };
    let candidate = stage.traffic.as_ref().and_then(|t| t.candidate.clone()).map(|c| names::revision_service(&lr.name_any(), &c));
    Ok(Some(candidate_share(&route.data, candidate.as_deref())))
}

/// Whether the stage's HTTPRoute has a backend with weight on the revision's Service.
pub async fn routes_to(client: &Client, lr: &LocallRelease, namespace: &str, revision: &str) -> Result<bool, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &httproute_resource());
    let Some(route) = api.get_opt(&names::entry_service(&lr.name_any())).await? else { return Ok(false) };
    Ok(weight_on(&route.data, &names::revision_service(&lr.name_any(), revision)) > 0)
}

/// The total weight of a route's backends naming `service` (pure).
pub fn weight_on(route: &serde_json::Value, service: &str) -> i64 {
    let mut w = 0;
    for rule in route["spec"]["rules"].as_array().into_iter().flatten() {
        for b in rule["backendRefs"].as_array().into_iter().flatten() {
            if b["name"].as_str() == Some(service) {
                w += b["weight"].as_i64().unwrap_or(1).max(0);
            }
        }
    }
    w
}

/// round(100 * candidate weight / total weight) over the route's backends (pure).
pub fn candidate_share(route: &serde_json::Value, candidate: Option<&str>) -> i32 {
    let mut total = 0i64;
    let mut cand = 0i64;
    for rule in route["spec"]["rules"].as_array().into_iter().flatten() {
        for b in rule["backendRefs"].as_array().into_iter().flatten() {
            let w = b["weight"].as_i64().unwrap_or(1).max(0);
            total += w;
            if Some(b["name"].as_str().unwrap_or_default()) == candidate {
                cand += w;
            }
        }
    }
    if total == 0 {
        0
    } else {
        ((200 * cand + total) / (2 * total)) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::TrafficTarget;

    fn stage(stable: Option<&str>, cand: Option<&str>, weight: i32) -> StageDesired {
        StageDesired {
            index: 1,
            name: "production".into(),
            namespace: "prod".into(),
            replicas: 3,
            deployments: vec![],
            traffic: Some(TrafficTarget {
                stable: stable.map(Into::into),
                candidate: cand.map(Into::into),
                weight,
                stable_replicas: 3,
                candidate_replicas: 3,
            }),
        }
    }

    #[test]
    fn weights_split_between_stable_and_candidate_and_read_back() {
        let lr: LocallRelease = serde_yaml::from_str(
            r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {name: api, namespace: prod}
spec:
  version: "2"
  template: {spec: {containers: [{name: a, image: a}]}}
  stages: [{name: production}]
  traffic: {method: GatewayAPI, gateway: {name: public, namespace: infra}}
"#,
        )
        .unwrap();
        let r = route(&lr, &stage(Some("s1"), Some("c2"), 25));
        let refs = r["spec"]["rules"][0]["backendRefs"].as_array().unwrap();
        assert_eq!((refs[0]["name"].as_str(), refs[0]["weight"].as_i64()), (Some("api-s1"), Some(75)));
        assert_eq!((refs[1]["name"].as_str(), refs[1]["weight"].as_i64()), (Some("api-c2"), Some(25)));
        assert_eq!(r["spec"]["parentRefs"][0]["namespace"], "infra");
        assert_eq!(candidate_share(&r, Some("api-c2")), 25);
        assert_eq!(candidate_share(&route(&lr, &stage(Some("s1"), None, 0)), Some("api-c2")), 0);
        assert_eq!(candidate_share(&route(&lr, &stage(None, Some("c2"), 100)), Some("api-c2")), 100);
        assert_eq!(weight_on(&r, "api-c2"), 25);
        assert_eq!(weight_on(&route(&lr, &stage(Some("s1"), None, 0)), "api-c2"), 0, "a superseded candidate has no weight left");
    }
}
