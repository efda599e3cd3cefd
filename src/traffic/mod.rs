//! Traffic routing, behind one small interface with two real implementations:
//! Gateway API HTTPRoute backend weights (`gateway.rs`) and replica ratio (`replicas.rs`).
//! `apply` makes a stage's routing match the engine's target; `observe` reads back the
//! candidate's effective share, which is what the engine verifies before it moves on.

pub mod gateway;
pub mod replicas;

use crate::{
    api::{LocallRelease, TrafficMethod},
    controller::{build, cache::SlimService},
    engine::{Observed, StageDesired},
};
use k8s_openapi::api::core::v1::Service;
use kube::{
    api::{Api, DynamicObject, PartialObjectMeta, Patch, PatchParams},
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
    Client, ResourceExt,
};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

/// The field manager of every write the operator makes.
pub const MANAGER: &str = "locall-operator";

/// A write (or the read before it) that failed, with the object it was for, e.g.
/// `Service prod/locall-api-5d8f`: the condition and the Event name it.
#[derive(Debug, thiserror::Error)]
#[error("{object}: {source}")]
pub struct WriteError {
    pub object: String,
    #[source]
    pub source: kube::Error,
}

impl WriteError {
    /// Tags a kube error with the object it concerns: `kind namespace/name`.
    pub fn on(kind: &str, namespace: &str, name: &str) -> impl FnOnce(kube::Error) -> WriteError {
        let object = format!("{kind} {namespace}/{name}");
        move |source| WriteError { object, source }
    }
}

/// A stage's router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Router {
    Gateway,
    ReplicaRatio,
}

impl Router {
    pub fn for_method(m: TrafficMethod) -> Self {
        match m {
            TrafficMethod::GatewayApi => Router::Gateway,
            TrafficMethod::ReplicaRatio => Router::ReplicaRatio,
        }
    }

    /// Makes the stage's routing match its target. Returns the number of writes made.
    pub async fn apply(self, client: &Client, written: &Written, lr: &LocallRelease, stage: &StageDesired) -> Result<u32, WriteError> {
        match self {
            Router::Gateway => gateway::apply(client, written, lr, stage).await,
            Router::ReplicaRatio => replicas::apply(client, written, lr, stage).await,
        }
    }

    /// The candidate's effective share (0-100) of the stage's traffic as routed now.
    pub async fn observe(
        self,
        client: &Client,
        lr: &LocallRelease,
        written: &Written,
        stage: &StageDesired,
        obs: &Observed,
    ) -> Result<Option<i32>, kube::Error> {
        match self {
            Router::Gateway => gateway::observe(client, lr, written, stage).await,
            Router::ReplicaRatio => replicas::observe(client, lr, written, stage, obs).await,
        }
    }
}

impl Router {
    /// Whether the stage router in `namespace`, read from the answer to this reconcile's write of
    /// it, a watch cache that can be believed ([`Applied`]) or the API server, still sends any
    /// traffic to `revision`: a Deployment is deleted only once this says no.
    pub async fn routes_to(
        self,
        client: &Client,
        lr: &LocallRelease,
        written: &Written,
        namespace: &str,
        component: Option<&str>,
        revision: &str,
    ) -> Result<bool, kube::Error> {
        match self {
            Router::Gateway => gateway::routes_to(client, lr, written, namespace, component, revision).await,
            Router::ReplicaRatio => replicas::routes_to(client, lr, written, namespace, component, revision).await,
        }
    }
}

/// resourceVersions by namespace and name; None: absent.
type Versions = HashMap<(String, String), Option<String>>;

/// Watch caches of the Services (their selectors) and of the HTTPRoutes' metadata the operator
/// applied: what content hash each carries, so an unchanged object costs no request at all, and
/// what a Service selects, so reading the traffic back costs none either.
///
/// A cache lags the API server by milliseconds, and the next reconcile may come sooner than the
/// echo of this one's write: a Service's cached copy is believed only once it shows the latest
/// state of that Service this process learnt from the API server (the answer to its write, or
/// to a read), and a Service the cache lacks is believed absent only once the cache has listed.
/// Otherwise the API server is asked, as before.
#[derive(Clone, Default)]
pub struct Applied {
    pub services: Option<Store<SlimService>>,
    pub routes: Option<Store<PartialObjectMeta<DynamicObject>>>,
    /// Set once the Service cache has listed.
    pub services_listed: Arc<AtomicBool>,
    /// Services whose latest state, as this process learnt it from the API server, their cache
    /// has not shown yet: the resourceVersion, or None for a Service found absent.
    learnt: Arc<Mutex<Versions>>,
}

impl Applied {
    pub fn new(services: Store<SlimService>, routes: Store<PartialObjectMeta<DynamicObject>>, services_listed: Arc<AtomicBool>) -> Self {
        Applied { services: Some(services), routes: Some(routes), services_listed, learnt: Default::default() }
    }

    /// The Service as its cache has it, when the cache can be believed: `Some(None)` is a
    /// Service that does not exist; None means ask the API server.
    fn cached_service(&self, ns: &str, name: &str) -> Option<Option<SlimService>> {
        let store = self.services.as_ref()?;
        let cached = store.get(&ObjectRef::new(name).within(ns));
        if cached.is_none() && !self.services_listed.load(Ordering::Acquire) {
            return None;
        }
        let mut learnt = self.learnt.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !learnt.is_empty() {
            let key = (ns.to_string(), name.to_string());
            if let Some(version) = learnt.get(&key) {
                if cached.as_ref().and_then(|s| s.metadata.resource_version.as_ref()) != version.as_ref() {
                    return None;
                }
                // Caught up: from here on the cache is at least as new as what was learnt.
                learnt.remove(&key);
            }
        }
        Some(cached.map(|s| (*s).clone()))
    }

    /// The Service as the API server just answered (None: it does not exist).
    fn learnt_service(&self, ns: &str, name: &str, svc: Option<&SlimService>) {
        let version = svc.and_then(|s| s.metadata.resource_version.clone());
        self.learnt.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert((ns.to_string(), name.to_string()), version);
    }

    /// Called with each Service watch event once the cache holds it: what was learnt of that
    /// Service is forgotten when the cache now shows it (a Service written and then no longer
    /// read would otherwise be remembered for the life of the process).
    pub fn caught_up(&self, event: &watcher::Event<SlimService>) {
        let (svc, version) = match event {
            watcher::Event::Apply(svc) => (svc, svc.metadata.resource_version.as_ref()),
            watcher::Event::Delete(svc) => (svc, None),
            // A relist's objects reach the cache only at its end: read time catches those up.
            _ => return,
        };
        let mut learnt = self.learnt.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if learnt.is_empty() {
            return;
        }
        let key = (svc.metadata.namespace.clone().unwrap_or_default(), svc.metadata.name.clone().unwrap_or_default());
        if learnt.get(&key).is_some_and(|v| v.as_ref() == version) {
            learnt.remove(&key);
        }
    }

    fn route_hash(&self, ns: &str, name: &str) -> Option<String> {
        let store = self.routes.as_ref()?;
        let meta = store.get(&ObjectRef::new_with(name, gateway::httproute_resource()).within(ns))?;
        meta.annotations().get(build::APPLIED_HASH).cloned()
    }
}

/// What one reconcile wrote, as the API server answered each write: the answer is the object
/// as stored, so the reconcile's later passes read a router back from it instead of asking
/// again, and do not write again what they have just written (the watch caches lag a write by
/// a few milliseconds). Made afresh for every reconcile, over the watch caches ([`Applied`]) it
/// reads what it did not write from.
#[derive(Default)]
pub struct Written {
    answers: Mutex<Answers>,
    pub(crate) applied: Applied,
}

/// The answers one reconcile holds, by namespace and name.
#[derive(Default)]
struct Answers {
    services: HashMap<(String, String), SlimService>,
    routes: HashMap<(String, String), DynamicObject>,
    /// The content hash of each Deployment applied.
    deployments: HashMap<(String, String), String>,
    /// The size given to each older version's Deployment.
    scaled: HashMap<(String, String), i32>,
}

impl Written {
    pub fn over(applied: Applied) -> Self {
        Written { answers: Default::default(), applied }
    }

    fn key(ns: &str, name: &str) -> (String, String) {
        (ns.to_string(), name.to_string())
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers> {
        // A panic elsewhere while the lock was held leaves nothing half-written in these maps.
        self.answers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn service(&self, ns: &str, name: &str) -> Option<SlimService> {
        self.answers().services.get(&Self::key(ns, name)).cloned()
    }

    pub(crate) fn route(&self, ns: &str, name: &str) -> Option<DynamicObject> {
        self.answers().routes.get(&Self::key(ns, name)).cloned()
    }

    /// The Service as this reconcile's write of it answered, or as its cache has it (when it can
    /// be believed), or as the API server has it now.
    pub(crate) async fn read_service(&self, client: &Client, ns: &str, name: &str) -> Result<Option<SlimService>, kube::Error> {
        if let Some(svc) = self.service(ns, name) {
            return Ok(Some(svc));
        }
        if let Some(cached) = self.applied.cached_service(ns, name) {
            return Ok(cached);
        }
        let svc = Api::<SlimService>::namespaced(client.clone(), ns).get_opt(name).await?;
        self.applied.learnt_service(ns, name, svc.as_ref());
        Ok(svc)
    }

    /// The HTTPRoute as this reconcile's write of it answered, or as the API server has it now.
    pub(crate) async fn read_route(&self, client: &Client, ns: &str, name: &str) -> Result<Option<DynamicObject>, kube::Error> {
        match self.route(ns, name) {
            Some(route) => Ok(Some(route)),
            None => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &gateway::httproute_resource()).get_opt(name).await,
        }
    }

    fn wrote_service(&self, ns: &str, name: &str, answer: SlimService) {
        self.applied.learnt_service(ns, name, Some(&answer));
        self.answers().services.insert(Self::key(ns, name), answer);
    }

    fn wrote_route(&self, ns: &str, name: &str, answer: DynamicObject) {
        self.answers().routes.insert(Self::key(ns, name), answer);
    }

    /// The content hash of the Deployment this reconcile applied, if it did.
    pub fn deployment_hash(&self, ns: &str, name: &str) -> Option<String> {
        self.answers().deployments.get(&Self::key(ns, name)).cloned()
    }

    pub fn wrote_deployment(&self, ns: &str, name: &str, hash: &str) {
        self.answers().deployments.insert(Self::key(ns, name), hash.to_string());
    }

    /// The size this reconcile gave an older version's Deployment, if it did.
    pub fn scaled(&self, ns: &str, name: &str) -> Option<i32> {
        self.answers().scaled.get(&Self::key(ns, name)).copied()
    }

    pub fn wrote_scale(&self, ns: &str, name: &str, replicas: i32) {
        self.answers().scaled.insert(Self::key(ns, name), replicas);
    }
}

/// Applies a Service unless the one in the cluster already carries the same content hash (asked
/// of what this reconcile wrote, then of the watch cache, of the API server when the cache
/// cannot be believed).
pub(crate) async fn ensure_service(client: &Client, written: &Written, svc: Service) -> Result<u32, WriteError> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let err = |e| WriteError::on("Service", &ns, &name)(e);
    // Its annotations and selector are all this reads of the Service.
    let api: Api<SlimService> = Api::namespaced(client.clone(), &ns);
    let (svc, hash) = build::stamp(svc);
    let carries = |s: &SlimService| s.annotations().get(build::APPLIED_HASH) == Some(&hash);
    // Written in this reconcile, cached and believed, or read: the Service as it stands.
    if written.read_service(client, &ns, &name).await.map_err(err)?.is_some_and(|cur| carries(&cur)) {
        return Ok(0);
    }
    let mut svc = svc;
    svc.metadata.managed_fields = None;
    let body = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": svc.metadata, "spec": svc.spec});
    let answer = api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await.map_err(err)?;
    written.wrote_service(&ns, &name, answer);
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher::Event};

    fn service(version: &str, revision: &str) -> SlimService {
        let mut svc = SlimService::default();
        svc.metadata.name = Some("app".into());
        svc.metadata.namespace = Some("prod".into());
        svc.metadata.resource_version = Some(version.into());
        svc.spec = Some(crate::controller::cache::SlimServiceSpec {
            selector: Some([(crate::api::labels::REVISION.to_string(), revision.to_string())].into()),
        });
        svc
    }

    fn applied() -> (Applied, reflector::store::Writer<SlimService>) {
        let (services, writer) = reflector::store::<SlimService>();
        let routes = reflector::store::Writer::<PartialObjectMeta<DynamicObject>>::new(gateway::httproute_resource()).as_reader();
        (Applied::new(services, routes, Default::default()), writer)
    }

    fn revision(svc: Option<SlimService>) -> Option<String> {
        svc?.spec?.selector?.get(crate::api::labels::REVISION).cloned()
    }

    #[test]
    fn a_service_the_cache_lacks_is_absent_only_once_the_cache_has_listed() {
        let (applied, _writer) = applied();
        assert!(applied.cached_service("prod", "app").is_none(), "asks the API server");
        applied.services_listed.store(true, Ordering::Release);
        assert_eq!(applied.cached_service("prod", "app").map(revision), Some(None));
    }

    #[test]
    fn the_cache_is_not_read_until_it_shows_what_this_process_wrote_or_read() {
        let (applied, mut writer) = applied();
        applied.services_listed.store(true, Ordering::Release);
        writer.apply_watcher_event(&Event::Apply(service("7", "old")));
        assert_eq!(applied.cached_service("prod", "app").map(revision), Some(Some("old".into())));
        // Our write answered with version 8; its echo is still on the way.
        applied.learnt_service("prod", "app", Some(&service("8", "new")));
        assert!(applied.cached_service("prod", "app").is_none(), "a cache behind the write would say the old selector");
        writer.apply_watcher_event(&Event::Apply(service("8", "new")));
        assert_eq!(applied.cached_service("prod", "app").map(revision), Some(Some("new".into())));
        // Caught up once: later changes by anyone come through the cache.
        writer.apply_watcher_event(&Event::Apply(service("9", "edited")));
        assert_eq!(applied.cached_service("prod", "app").map(revision), Some(Some("edited".into())));
        // Read as deleted from the API server, still in the cache: not believed until it goes.
        applied.learnt_service("prod", "app", None);
        assert!(applied.cached_service("prod", "app").is_none());
        writer.apply_watcher_event(&Event::Delete(service("9", "edited")));
        assert_eq!(applied.cached_service("prod", "app").map(revision), Some(None));
        assert!(applied.learnt.lock().unwrap().is_empty(), "nothing kept once the cache caught up");
    }

    #[test]
    fn what_was_learnt_of_a_service_is_let_go_once_its_watch_delivers_it() {
        let (applied, mut writer) = applied();
        // Written, then never read again (the release ended in the same reconcile).
        applied.learnt_service("prod", "app", Some(&service("8", "new")));
        let echo = Event::Apply(service("7", "old"));
        writer.apply_watcher_event(&echo);
        applied.caught_up(&echo);
        assert_eq!(applied.learnt.lock().unwrap().len(), 1, "an older version does not catch up");
        let echo = Event::Apply(service("8", "new"));
        writer.apply_watcher_event(&echo);
        applied.caught_up(&echo);
        assert!(applied.learnt.lock().unwrap().is_empty());
        applied.learnt_service("prod", "app", None);
        let gone = Event::Delete(service("8", "new"));
        writer.apply_watcher_event(&gone);
        applied.caught_up(&gone);
        assert!(applied.learnt.lock().unwrap().is_empty());
    }
}
