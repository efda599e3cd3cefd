//! Gateway API: one Service per revision and an HTTPRoute whose backend weights split the
//! stage's traffic between the stable version and the candidate.
//!
//! The route is shared ground: other teams may add their own rules (an `/admin` path, a header
//! match) with their own field manager. `spec.rules` is an atomic list, so applying ours would
//! wipe theirs: the operator creates the route once by server-side apply, and from then on
//! changes only its own rule (named [`RULE`]), leaving every other rule, and every field of its
//! own rule but `backendRefs`, as it finds them, guarded by the resourceVersion it read.

use super::{ensure_service, WriteError, Written, MANAGER};
use crate::{
    api::{labels, LocallRelease},
    controller::build,
    engine::{names, StageDesired},
};
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    Client, ResourceExt,
};

/// The HTTPRoute resource, `gateway.networking.k8s.io/v1`.
pub fn httproute_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"), "httproutes")
}

/// The name of the operator's rule in the stage's HTTPRoute.
pub const RULE: &str = "locall-release";

/// Backends of the route: (service name, weight).
pub fn backends(release: &str, stage: &StageDesired) -> Vec<(String, i32)> {
    let Some(t) = &stage.traffic else { return vec![] };
    let release = &stage.base(release);
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
    let name = names::entry_service(&stage.base(&lr.name_any()));
    let service = build::part_service(lr, stage.component.as_deref());
    let port = service.port;
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
    if let Some(c) = &stage.component {
        labels_map.insert(labels::COMPONENT.into(), c.clone());
    }
    let mut meta = serde_json::json!({"name": name, "namespace": stage.namespace, "labels": labels_map});
    if !service.annotations.is_empty() {
        meta["annotations"] = serde_json::to_value(&service.annotations).unwrap_or_default();
    }
    if let Some(o) = build::owner(lr, &stage.namespace) {
        meta["ownerReferences"] = serde_json::to_value(o).unwrap_or_default();
    }
    serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": meta,
        "spec": {"parentRefs": [parent], "rules": [{"name": RULE, "backendRefs": refs}]},
    })
}

/// Whether a rule of the route is the operator's: named [`RULE`], or (a route written before
/// rules had names) unnamed with every backend one of this release's revision Services.
pub(crate) fn is_ours(rule: &serde_json::Value, release: &str) -> bool {
    if let Some(name) = rule["name"].as_str() {
        return name == RULE;
    }
    let refs = rule["backendRefs"].as_array().map(Vec::as_slice).unwrap_or_default();
    !refs.is_empty() && refs.iter().all(|b| b["name"].as_str().is_some_and(|n| names::is_revision_service(release, n)))
}

/// The rules of `current` with the operator's rule carrying `ours`' backends (pure): every other
/// rule, and every other field of the operator's rule, is kept as it is. No rule of ours yet:
/// ours goes first.
pub fn merged_rules(current: &serde_json::Value, ours: &serde_json::Value, release: &str) -> serde_json::Value {
    let mut rules: Vec<serde_json::Value> = current["spec"]["rules"].as_array().cloned().unwrap_or_default();
    let mine = ours["spec"]["rules"][0].clone();
    match rules.iter_mut().find(|r| is_ours(r, release)) {
        Some(r) => {
            r["name"] = RULE.into();
            r["backendRefs"] = mine["backendRefs"].clone();
        }
        None => rules.insert(0, mine),
    }
    serde_json::Value::Array(rules)
}

pub async fn apply(client: &Client, written: &Written, lr: &LocallRelease, stage: &StageDesired) -> Result<u32, WriteError> {
    let Some(t) = &stage.traffic else { return Ok(0) };
    let release = stage.base(&lr.name_any());
    let mut writes = 0;
    for rev in t.stable.iter().chain(t.candidate.iter()) {
        let mut selector = build::part_selector(lr, stage.component.as_deref());
        selector.insert(labels::REVISION.to_string(), rev.clone());
        let mut svc = build::service(lr, stage, &names::revision_service(&release, rev), selector);
        svc.metadata.labels.get_or_insert_with(Default::default).insert(labels::REVISION.into(), rev.clone());
        writes += ensure_service(client, written, svc).await?;
    }
    let mut body = route(lr, stage);
    let hash = build::content_hash(&body);
    body["metadata"]["annotations"][build::APPLIED_HASH] = hash.clone().into();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &stage.namespace, &httproute_resource());
    let name = names::entry_service(&release);
    let err = |e| WriteError::on("HTTPRoute", &stage.namespace, &name)(e);
    // Written in this reconcile: that answer is the route as it stands (its resourceVersion
    // still guards the change below).
    let cur = match written.route(&stage.namespace, &name) {
        Some(cur) => cur,
        None => {
            if written.applied.route_hash(&stage.namespace, &name).as_ref() == Some(&hash) {
                return Ok(writes);
            }
            let Some(cur) = api.get_opt(&name).await.map_err(err)? else {
                let answer = api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await.map_err(err)?;
                written.wrote_route(&stage.namespace, &name, answer);
                return Ok(writes + 1);
            };
            cur
        }
    };
    if cur.annotations().get(build::APPLIED_HASH) == Some(&hash) {
        return Ok(writes);
    }
    // Only our rule's backends, our parent, labels and annotations change; a concurrent change
    // (resourceVersion) makes this a conflict, retried on fresh state.
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": cur.resource_version(),
            "labels": body["metadata"]["labels"],
            "annotations": body["metadata"]["annotations"],
        },
        "spec": {"parentRefs": body["spec"]["parentRefs"], "rules": merged_rules(&cur.data, &body, &release)},
    });
    let pp = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    let answer = api.patch(&name, &pp, &Patch::Merge(&patch)).await.map_err(err)?;
    written.wrote_route(&stage.namespace, &name, answer);
    Ok(writes + 1)
}

/// Reads the candidate's share from the HTTPRoute's backend weights (from the API server, or
/// from the answer to this reconcile's write of the route).
pub async fn observe(client: &Client, lr: &LocallRelease, written: &Written, stage: &StageDesired) -> Result<Option<i32>, kube::Error> {
    let base = stage.base(&lr.name_any());
    let Some(route) = written.read_route(client, &stage.namespace, &names::entry_service(&base)).await? else { return Ok(None) };
    let candidate = stage.traffic.as_ref().and_then(|t| t.candidate.clone()).map(|c| names::revision_service(&base, &c));
    Ok(Some(candidate_share(&route.data, &base, candidate.as_deref())))
}

/// Whether the stage's HTTPRoute has a backend with weight on the revision's Service.
pub async fn routes_to(
    client: &Client,
    lr: &LocallRelease,
    written: &Written,
    namespace: &str,
    component: Option<&str>,
    revision: &str,
) -> Result<bool, kube::Error> {
    let base = names::base(&lr.name_any(), component);
    let Some(route) = written.read_route(client, namespace, &names::entry_service(&base)).await? else { return Ok(false) };
    Ok(weight_on(&route.data, &names::revision_service(&base, revision)) > 0)
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

/// round(100 * candidate weight / total weight) over the backends of the operator's rule (pure):
/// what other rules route is not the release's traffic split.
pub fn candidate_share(route: &serde_json::Value, release: &str, candidate: Option<&str>) -> i32 {
    let mut total = 0i64;
    let mut cand = 0i64;
    let rules = route["spec"]["rules"].as_array().map(Vec::as_slice).unwrap_or_default();
    let ours: Vec<&serde_json::Value> = rules.iter().filter(|r| is_ours(r, release)).collect();
    for rule in if ours.is_empty() { rules.iter().collect() } else { ours } {
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
            component: None,
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
        assert_eq!(candidate_share(&r, "api", Some("api-c2")), 25);
        assert_eq!(candidate_share(&route(&lr, &stage(Some("s1"), None, 0)), "api", Some("api-c2")), 0);
        assert_eq!(candidate_share(&route(&lr, &stage(None, Some("c2"), 100)), "api", Some("api-c2")), 100);
        assert_eq!(weight_on(&r, "api-c2"), 25);
        assert_eq!(weight_on(&route(&lr, &stage(Some("s1"), None, 0)), "api-c2"), 0, "a superseded candidate has no weight left");
    }

    #[test]
    fn another_teams_rules_survive_a_weight_change_and_do_not_count_in_the_split() {
        let lr: LocallRelease = serde_yaml::from_str(
            r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {name: api, namespace: prod}
spec:
  version: "2"
  template: {spec: {containers: [{name: a, image: a}]}}
  stages: [{name: production}]
  traffic: {method: GatewayAPI, gateway: {name: public}}
"#,
        )
        .unwrap();
        let admin = serde_json::json!({"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-team", "value": "ops"}]}}],
            "backendRefs": [{"kind": "Service", "name": "admin", "port": 80, "weight": 1}]});
        // A route written before rules had names, with another team's rule after ours.
        let mut current = route(&lr, &stage(Some("5d8f0a1b"), Some("c2e4a6b8"), 10));
        current["spec"]["rules"][0].as_object_mut().unwrap().remove("name");
        current["spec"]["rules"][0]["timeouts"] = serde_json::json!({"request": "10s"});
        current["spec"]["rules"].as_array_mut().unwrap().push(admin.clone());
        assert_eq!(candidate_share(&current, "api", Some("api-c2e4a6b8")), 10, "the /admin backend is not part of the split");
        let next = route(&lr, &stage(Some("5d8f0a1b"), Some("c2e4a6b8"), 50));
        let rules = merged_rules(&current, &next, "api");
        assert_eq!(rules.as_array().unwrap().len(), 2);
        assert_eq!(rules[1], admin, "the other team's rule is untouched");
        assert_eq!(rules[0]["name"], RULE);
        assert_eq!(rules[0]["timeouts"]["request"], "10s", "fields of our rule other than backendRefs are kept");
        assert_eq!(rules[0]["backendRefs"][1]["weight"], 50);
        // A route with only someone else's rule: ours is added in front.
        let theirs = serde_json::json!({"spec": {"rules": [admin.clone()]}});
        let rules = merged_rules(&theirs, &next, "api");
        assert_eq!((rules[0]["name"].as_str(), &rules[1]), (Some(RULE), &admin));
    }
}
