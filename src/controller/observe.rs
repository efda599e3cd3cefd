//! Observe: what the cluster holds of a release's children, read from the watch caches,
//! turned into the engine's snapshot.

use crate::{
    api::{labels, Approval, LocallRelease},
    engine::{names, DeploymentObs, JobObs},
};
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job};
use kube::{runtime::reflector::Store, ResourceExt};
use std::collections::BTreeMap;

/// The release's children in a store, by (namespace, name).
fn owned<K: kube::Resource<DynamicType = ()> + Clone>(store: &Store<K>, lr: &LocallRelease) -> Vec<std::sync::Arc<K>> {
    let value = names::release_label(&lr.namespace().unwrap_or_default(), &lr.name_any());
    store.state().into_iter().filter(|o| o.labels().get(labels::RELEASE) == Some(&value)).collect()
}

pub fn deployments(store: &Store<Deployment>, lr: &LocallRelease) -> BTreeMap<(String, String), DeploymentObs> {
    owned(store, lr)
        .into_iter()
        .map(|d| {
            let key = (d.namespace().unwrap_or_default(), d.name_any());
            let generation = d.metadata.generation.unwrap_or(0);
            let s = d.status.clone().unwrap_or_default();
            let obs = DeploymentObs {
                replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                ready: s.ready_replicas.unwrap_or(0),
                updated: s.updated_replicas.unwrap_or(0),
                current: s.observed_generation.unwrap_or(0) >= generation,
            };
            (key, obs)
        })
        .collect()
}

pub fn jobs(store: &Store<Job>, lr: &LocallRelease) -> BTreeMap<(String, String), JobObs> {
    owned(store, lr).into_iter().map(|j| ((j.namespace().unwrap_or_default(), j.name_any()), job_state(&j))).collect()
}

/// A Job's state from its conditions (pure).
pub fn job_state(j: &Job) -> JobObs {
    let conds = j.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    for c in &conds {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return JobObs::Succeeded,
            "Failed" => {
                return JobObs::Failed {
                    reason: c.reason.clone().unwrap_or_else(|| "Failed".into()),
                    message: c.message.clone().unwrap_or_default(),
                }
            }
            _ => {}
        }
    }
    JobObs::Running
}

/// The approval granted through the annotation, if it parses.
pub fn annotation_approval(lr: &LocallRelease) -> Result<Option<Approval>, String> {
    match lr.annotations().get(labels::APPROVE) {
        None => Ok(None),
        Some(v) => serde_json::from_str::<Approval>(v)
            .map(Some)
            .map_err(|e| format!("metadata.annotations[{}]: expected {{\"stage\":..,\"version\":..,\"by\":..}}: {e}", labels::APPROVE)),
    }
}

/// Who changed `spec.version`, and to what, as the chart's admission policy recorded it.
pub fn requested(lr: &LocallRelease) -> Option<(String, String)> {
    let a = lr.annotations();
    a.get(labels::REQUESTED_BY).zip(a.get(labels::REQUESTED_VERSION)).map(|(by, v)| (by.clone(), v.clone()))
}

/// The imperative request in the annotation, if it parses.
pub fn request(lr: &LocallRelease) -> Result<Option<crate::api::Request>, String> {
    match lr.annotations().get(labels::REQUEST) {
        None => Ok(None),
        Some(v) => serde_json::from_str(v)
            .map(Some)
            .map_err(|e| format!("metadata.annotations[{}]: expected {{\"action\":..,\"id\":..,\"by\":..}}: {e}", labels::REQUEST)),
    }
}
