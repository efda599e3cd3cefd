//! Observe: what the cluster holds of a release's children, read from the watch caches,
//! turned into the engine's snapshot.

use super::cache::SlimDeployment as Deployment;
use crate::{
    api::{labels, Approval, LocallRelease},
    engine::{names, DeploymentObs, JobObs},
};
use k8s_openapi::api::batch::v1::Job;
use kube::{
    runtime::{
        reflector::{ObjectRef, Store},
        watcher::Event,
    },
    ResourceExt,
};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, RwLock},
};

/// A watch cache's children by their release label: (namespace, name) of each. Kept from the
/// same watch events as the cache, so a reconcile finds its release's children without
/// scanning every child of every release (which made each reconcile cost O(releases)).
#[derive(Clone, Default)]
pub struct ByRelease {
    map: Arc<RwLock<Keys>>,
    /// A relist in progress: it replaces the map once done, as the cache's own relist does.
    relist: Arc<RwLock<Option<Keys>>>,
}

/// Release label -> (namespace, name) of each child.
type Keys = HashMap<String, BTreeSet<(String, String)>>;

impl ByRelease {
    /// Follows one watch event (of the stream that fills the cache).
    pub fn apply<K: kube::Resource>(&self, event: &Event<K>) {
        let entry = |o: &K| {
            let release = o.meta().labels.as_ref()?.get(labels::RELEASE)?.clone();
            Some((release, (o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default())))
        };
        match event {
            Event::Init => *self.relist.write().unwrap() = Some(HashMap::new()),
            Event::InitApply(o) => {
                if let (Some(m), Some((r, key))) = (self.relist.write().unwrap().as_mut(), entry(o)) {
                    m.entry(r).or_default().insert(key);
                }
            }
            Event::InitDone => {
                if let Some(m) = self.relist.write().unwrap().take() {
                    *self.map.write().unwrap() = m;
                }
            }
            Event::Apply(o) => {
                if let Some((r, key)) = entry(o) {
                    self.map.write().unwrap().entry(r).or_default().insert(key);
                }
            }
            Event::Delete(o) => {
                if let Some((r, key)) = entry(o) {
                    let mut map = self.map.write().unwrap();
                    if let Some(set) = map.get_mut(&r) {
                        set.remove(&key);
                        if set.is_empty() {
                            map.remove(&r);
                        }
                    }
                }
            }
        }
    }

    pub fn get(&self, release: &str) -> Vec<(String, String)> {
        self.map.read().unwrap().get(release).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }
}

/// The release's children in a store (looked up through the index, checked against the cache).
fn owned<K: kube::Resource<DynamicType = ()> + Clone>(store: &Store<K>, index: &ByRelease, lr: &LocallRelease) -> Vec<Arc<K>> {
    let value = names::release_label(&lr.namespace().unwrap_or_default(), &lr.name_any());
    index
        .get(&value)
        .into_iter()
        .filter_map(|(ns, name)| store.get(&ObjectRef::new(&name).within(&ns)))
        .filter(|o| o.labels().get(labels::RELEASE) == Some(&value))
        .collect()
}

pub fn deployments(store: &Store<Deployment>, index: &ByRelease, lr: &LocallRelease) -> BTreeMap<(String, String), DeploymentObs> {
    owned(store, index, lr)
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

pub fn jobs(store: &Store<Job>, index: &ByRelease, lr: &LocallRelease) -> BTreeMap<(String, String), JobObs> {
    owned(store, index, lr).into_iter().map(|j| ((j.namespace().unwrap_or_default(), j.name_any()), job_state(&j))).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher::Event};

    fn dep(ns: &str, name: &str, release: &str) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "labels": {labels::RELEASE: release}}
        }))
        .unwrap()
    }

    fn release(ns: &str, name: &str) -> LocallRelease {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "locall.io/v1alpha1", "kind": "LocallRelease", "metadata": {"name": name, "namespace": ns},
            "spec": {"version": "1", "template": {"spec": {"containers": []}}, "stages": [{"name": "production"}]}
        }))
        .unwrap()
    }

    /// The index follows the cache through a list, changes and a relist: a release finds its
    /// children in any namespace, and none of another release's or of what was deleted.
    #[test]
    fn a_release_finds_exactly_its_children_through_lists_and_relists() {
        let (store, mut writer) = reflector::store::<Deployment>();
        let index = ByRelease::default();
        let mut feed = |e: Event<Deployment>| {
            index.apply(&e);
            writer.apply_watcher_event(&e);
        };
        let names = |lr: &LocallRelease| deployments(&store, &index, lr).into_keys().collect::<Vec<_>>();
        let key = |ns: &str, n: &str| (ns.to_string(), n.to_string());
        let (a, b) = (release("team", "a"), release("team", "b"));
        feed(Event::Init);
        feed(Event::InitApply(dep("team", "a-1", "team.a")));
        feed(Event::InitApply(dep("staging", "a-1", "team.a")));
        feed(Event::InitApply(dep("team", "b-1", "team.b")));
        assert!(names(&a).is_empty(), "nothing before the list is done");
        feed(Event::InitDone);
        assert_eq!(names(&a), vec![key("staging", "a-1"), key("team", "a-1")]);
        feed(Event::Apply(dep("team", "a-2", "team.a")));
        feed(Event::Delete(dep("staging", "a-1", "team.a")));
        assert_eq!(names(&a), vec![key("team", "a-1"), key("team", "a-2")]);
        assert_eq!(names(&b), vec![key("team", "b-1")]);
        // A relist that no longer holds a-1 and b-1.
        feed(Event::Init);
        feed(Event::InitApply(dep("team", "a-2", "team.a")));
        feed(Event::InitDone);
        assert_eq!(names(&a), vec![key("team", "a-2")]);
        assert!(names(&b).is_empty());
    }
}
