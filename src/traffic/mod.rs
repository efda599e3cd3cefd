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
    runtime::reflector::{ObjectRef, Store},
    Client, ResourceExt,
};
use std::{collections::HashMap, sync::Mutex};

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
    pub async fn apply(
        self,
        client: &Client,
        applied: &Applied,
        written: &Written,
        lr: &LocallRelease,
        stage: &StageDesired,
    ) -> Result<u32, WriteError> {
        match self {
            Router::Gateway => gateway::apply(client, applied, written, lr, stage).await,
            Router::ReplicaRatio => replicas::apply(client, applied, written, lr, stage).await,
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
    /// Whether the stage router in `namespace`, read from the API server (or from the answer to
    /// this reconcile's write of it), still sends any traffic to `revision`: a Deployment is
    /// deleted only once this says no.
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

/// Watch caches of the metadata of the Services and HTTPRoutes the operator applied: what
/// content hash each carries, so an unchanged object costs no request at all.
#[derive(Clone, Default)]
pub struct Applied {
    pub services: Option<Store<PartialObjectMeta<Service>>>,
    pub routes: Option<Store<PartialObjectMeta<DynamicObject>>>,
}

impl Applied {
    fn service_hash(&self, ns: &str, name: &str) -> Option<String> {
        let meta = self.services.as_ref()?.get(&ObjectRef::new(name).within(ns))?;
        meta.annotations().get(build::APPLIED_HASH).cloned()
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
/// a few milliseconds). Made afresh for every reconcile; the next one reads the API server.
#[derive(Default)]
pub struct Written(Mutex<Answers>);

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
    fn key(ns: &str, name: &str) -> (String, String) {
        (ns.to_string(), name.to_string())
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers> {
        // A panic elsewhere while the lock was held leaves nothing half-written in these maps.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn service(&self, ns: &str, name: &str) -> Option<SlimService> {
        self.answers().services.get(&Self::key(ns, name)).cloned()
    }

    pub(crate) fn route(&self, ns: &str, name: &str) -> Option<DynamicObject> {
        self.answers().routes.get(&Self::key(ns, name)).cloned()
    }

    /// The Service as this reconcile's write of it answered, or as the API server has it now.
    pub(crate) async fn read_service(&self, client: &Client, ns: &str, name: &str) -> Result<Option<SlimService>, kube::Error> {
        match self.service(ns, name) {
            Some(svc) => Ok(Some(svc)),
            None => Api::<SlimService>::namespaced(client.clone(), ns).get_opt(name).await,
        }
    }

    /// The HTTPRoute as this reconcile's write of it answered, or as the API server has it now.
    pub(crate) async fn read_route(&self, client: &Client, ns: &str, name: &str) -> Result<Option<DynamicObject>, kube::Error> {
        match self.route(ns, name) {
            Some(route) => Ok(Some(route)),
            None => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &gateway::httproute_resource()).get_opt(name).await,
        }
    }

    fn wrote_service(&self, ns: &str, name: &str, answer: SlimService) {
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
/// of what this reconcile wrote, then of the watch cache, of the API server when neither says so).
pub(crate) async fn ensure_service(client: &Client, applied: &Applied, written: &Written, svc: Service) -> Result<u32, WriteError> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let err = |e| WriteError::on("Service", &ns, &name)(e);
    // Its annotations and selector are all this reads of the Service.
    let api: Api<SlimService> = Api::namespaced(client.clone(), &ns);
    let (svc, hash) = build::stamp(svc);
    let carries = |s: &SlimService| s.annotations().get(build::APPLIED_HASH) == Some(&hash);
    match written.service(&ns, &name) {
        // Written in this reconcile: that answer is the Service as it stands.
        Some(w) if carries(&w) => return Ok(0),
        Some(_) => {}
        None => {
            if applied.service_hash(&ns, &name).as_ref() == Some(&hash) {
                return Ok(0);
            }
            if api.get_opt(&name).await.map_err(err)?.is_some_and(|cur| carries(&cur)) {
                return Ok(0);
            }
        }
    }
    let mut svc = svc;
    svc.metadata.managed_fields = None;
    let body = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": svc.metadata, "spec": svc.spec});
    let answer = api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await.map_err(err)?;
    written.wrote_service(&ns, &name, answer);
    Ok(1)
}
