//! The finalizer's work: children can live in other namespaces than the release (so owner
//! references cannot collect them); they are found by label and deleted.
//!
//! Only in the namespaces where they can be: the release's own, its stages' (spec), those its
//! status recorded (stages reached, the stable version's, its Jobs'), and any where the watch
//! caches hold a child of it (a stage removed from the spec since); a cluster-wide list per kind
//! made deleting N releases cost O(N^2) in the API server. Not in namespaces being deleted,
//! whose contents the namespace controller removes. Deleting releases with their namespaces
//! goes at the cluster's pace (pods, Deployments, then releases; about 4-5 releases a second
//! at 10,000 on the local cluster), not the finalizer's: README, Performance.

use crate::{api::labels, api::LocallRelease, engine::names, traffic::gateway::httproute_resource};
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job, core::v1::Service};
use kube::{
    api::{Api, DeleteParams, DynamicObject, ListParams, PropagationPolicy},
    Client, ResourceExt,
};
use std::collections::BTreeSet;

/// Where the release's children can be: see the module's comment. `cached` are the namespaces
/// of the children the watch caches hold; the result keeps only namespaces the operator serves
/// and that are not `being_deleted`: the namespace controller removes everything in those, so
/// listing and deleting there only adds to its load (deleting 2,000 releases with their
/// namespaces, these were 4 lists and about 1 delete of each release's 5 requests).
pub fn namespaces(
    lr: &LocallRelease,
    cached: impl IntoIterator<Item = String>,
    scope: &super::scope::Scope,
    being_deleted: impl Fn(&str) -> bool,
) -> BTreeSet<String> {
    let own = lr.namespace().unwrap_or_default();
    let mut set: BTreeSet<String> = cached.into_iter().collect();
    set.insert(own.clone());
    set.extend((0..lr.spec.stages.len()).map(|i| lr.spec.stage_namespace(i, &own).to_string()));
    if let Some(st) = &lr.status {
        set.extend(st.reached.iter().map(|r| r.namespace.clone()));
        set.extend(st.stable.iter().flat_map(|s| s.namespaces.iter().cloned()));
        set.extend(st.jobs.iter().map(|j| j.namespace.clone()));
    }
    set.retain(|ns| !ns.is_empty() && scope.serves(ns) && !being_deleted(ns));
    set
}

pub async fn children(ctx: &super::Context, lr: &LocallRelease) -> Result<(), super::Error> {
    let client = &ctx.client;
    let value = names::release_label(&lr.namespace().unwrap_or_default(), &lr.name_any());
    let labelled = |m: &kube::api::ObjectMeta| m.labels.as_ref().and_then(|l| l.get(labels::RELEASE)) == Some(&value);
    let mut cached: Vec<String> = ctx.deployment_index.get(&value).into_iter().chain(ctx.job_index.get(&value)).map(|(ns, _)| ns).collect();
    if let Some(store) = &ctx.applied.services {
        cached.extend(store.state().iter().filter(|m| labelled(&m.metadata)).filter_map(|m| m.metadata.namespace.clone()));
    }
    if let Some(store) = &ctx.applied.routes {
        cached.extend(store.state().iter().filter(|m| labelled(&m.metadata)).filter_map(|m| m.metadata.namespace.clone()));
    }
    // Seen by the Namespace metadata watch (an operator watching all namespaces); where it has
    // not seen the deletion yet, or does not run, the namespace is searched as any other.
    let being_deleted = |ns: &str| {
        ctx.namespaces.get(&kube::runtime::reflector::ObjectRef::new(ns)).is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    };
    let namespaces = namespaces(lr, cached, &ctx.policy.scope, being_deleted);
    let sel = format!("{}={}", labels::RELEASE, value);
    let lp = ListParams::default().labels(&sel);
    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    let err = |e| super::act_err("clean up", "the release's children".into())(e);
    delete_all(namespaces.iter().map(|ns| Api::<Deployment>::namespaced(client.clone(), ns)).collect(), client, &lp, &dp).await?;
    delete_all(namespaces.iter().map(|ns| Api::<Job>::namespaced(client.clone(), ns)).collect(), client, &lp, &dp).await?;
    delete_all(namespaces.iter().map(|ns| Api::<Service>::namespaced(client.clone(), ns)).collect(), client, &lp, &dp).await?;
    let ar = httproute_resource();
    let mut routes = vec![];
    for ns in &namespaces {
        // A cluster without the HTTPRoute CRD has no routes to clean up.
        if let Ok(list) = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar).list(&lp).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::scope::Scope;

    fn release() -> LocallRelease {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "locall.io/v1alpha1", "kind": "LocallRelease",
            "metadata": {"name": "api", "namespace": "calls"},
            "spec": {"version": "2.0.0",
                     "template": {"spec": {"containers": [{"name": "api", "image": "locall/api:2.0.0"}]}},
                     "stages": [{"name": "staging", "namespace": "calls-staging"}, {"name": "production"}]},
            "status": {"reached": [{"name": "canary", "namespace": "calls-canary", "replicas": 1}],
                       "stable": {"version": "1.0.0", "revision": "abc", "namespaces": ["calls-old"]},
                       "jobs": [{"name": "migrate", "kind": "Migrate", "jobName": "api-migrate", "namespace": "calls-jobs", "state": "Succeeded"}]}
        }))
        .unwrap()
    }

    #[test]
    fn children_are_sought_wherever_spec_status_or_the_caches_put_them() {
        let got = namespaces(&release(), ["calls-removed-stage".to_string()], &Scope::default(), |_| false);
        let want = ["calls", "calls-canary", "calls-jobs", "calls-old", "calls-removed-stage", "calls-staging"];
        assert_eq!(got.iter().map(String::as_str).collect::<Vec<_>>(), want);
    }

    #[test]
    fn only_namespaces_the_operator_serves_are_sought() {
        let scope = Scope(vec!["calls".into(), "calls-old".into(), "elsewhere".into()]);
        let got = namespaces(&release(), ["calls-removed-stage".to_string()], &scope, |_| false);
        assert_eq!(got.iter().map(String::as_str).collect::<Vec<_>>(), ["calls", "calls-old"]);
    }

    #[test]
    fn namespaces_being_deleted_are_left_to_the_namespace_controller() {
        // The release's own namespace is being deleted (with the release in it): its staging
        // namespace, which stays, is still cleaned up.
        let got = namespaces(&release(), [], &Scope::default(), |ns| ns == "calls" || ns == "calls-old");
        assert_eq!(got.iter().map(String::as_str).collect::<Vec<_>>(), ["calls-canary", "calls-jobs", "calls-staging"]);
    }
}
