//! The finalizer's work: children can live in other namespaces than the release (so owner
//! references cannot collect them); they are found by label and deleted.

use crate::{api::labels, api::LocallRelease, engine::names, traffic::gateway::httproute_resource};
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job, core::v1::Service};
use kube::{
    api::{Api, DeleteParams, DynamicObject, ListParams, PropagationPolicy},
    Client, ResourceExt,
};

pub async fn children(client: &Client, lr: &LocallRelease, scope: &super::scope::Scope) -> Result<(), super::Error> {
    let sel = format!("{}={}", labels::RELEASE, names::release_label(&lr.namespace().unwrap_or_default(), &lr.name_any()));
    let lp = ListParams::default().labels(&sel);
    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    let err = |e| super::act_err("clean up", "the release's children".into())(e);
    let apis = scope.apis(|| Api::<Deployment>::all(client.clone()), |ns| Api::namespaced(client.clone(), ns));
    let mut found = vec![];
    for api in apis {
        found.extend(api.list(&lp).await.map_err(err)?);
    }
    for d in found {
        let _ = Api::<Deployment>::namespaced(client.clone(), &d.namespace().unwrap_or_default()).delete(&d.name_any(), &dp).await;
    }
    let apis = scope.apis(|| Api::<Job>::all(client.clone()), |ns| Api::namespaced(client.clone(), ns));
    let mut found = vec![];
    for api in apis {
        found.extend(api.list(&lp).await.map_err(err)?);
    }
    for j in found {
        let _ = Api::<Job>::namespaced(client.clone(), &j.namespace().unwrap_or_default()).delete(&j.name_any(), &dp).await;
    }
    let apis = scope.apis(|| Api::<Service>::all(client.clone()), |ns| Api::namespaced(client.clone(), ns));
    let mut found = vec![];
    for api in apis {
        found.extend(api.list(&lp).await.map_err(err)?);
    }
    for s in found {
        let _ = Api::<Service>::namespaced(client.clone(), &s.namespace().unwrap_or_default()).delete(&s.name_any(), &dp).await;
    }
    let ar = httproute_resource();
    let apis = scope.apis(|| Api::<DynamicObject>::all_with(client.clone(), &ar), |ns| Api::namespaced_with(client.clone(), ns, &ar));
    let mut routes = vec![];
    for api in apis {
        // A cluster without the HTTPRoute CRD has no routes to clean up.
        if let Ok(list) = api.list(&lp).await {
            routes.extend(list);
        }
    }
    {
        for r in routes {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &r.namespace().unwrap_or_default(), &httproute_resource());
            // Rules another team added stay: only the release's own rule goes.
            let theirs: Vec<&serde_json::Value> = r.data["spec"]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|rule| !crate::traffic::gateway::is_ours(rule, &lr.name_any()))
                .collect();
            if theirs.is_empty() {
                let _ = api.delete(&r.name_any(), &dp).await;
            } else {
                let patch = serde_json::json!({"metadata": {"resourceVersion": r.resource_version()}, "spec": {"rules": theirs}});
                api.patch(&r.name_any(), &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.map_err(err)?;
            }
        }
    }
    Ok(())
}
