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
    delete_all(scope.apis(|| Api::<Deployment>::all(client.clone()), |ns| Api::namespaced(client.clone(), ns)), client, &lp, &dp).await?;
    delete_all(scope.apis(|| Api::<Job>::all(client.clone()), |ns| Api::namespaced(client.clone(), ns)), client, &lp, &dp).await?;
    delete_all(scope.apis(|| Api::<Service>::all(client.clone()), |ns| Api::namespaced(client.clone(), ns)), client, &lp, &dp).await?;
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

/// Deletes what `apis` list under `lp` (a delete that fails is left for the API server's own
/// garbage collection or a later pass); a list that fails ends the cleanup with an error.
async fn delete_all<K>(apis: Vec<Api<K>>, client: &Client, lp: &ListParams, dp: &DeleteParams) -> Result<(), super::Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let mut found = vec![];
    for api in apis {
        found.extend(api.list(lp).await.map_err(|e| super::act_err("clean up", "the release's children".into())(e))?);
    }
    for o in found {
        let _ = Api::<K>::namespaced(client.clone(), &o.namespace().unwrap_or_default()).delete(&o.name_any(), dp).await;
    }
    Ok(())
}
