//! Traffic routing, behind one small interface with two real implementations:
//! Gateway API HTTPRoute backend weights (`gateway.rs`) and replica ratio (`replicas.rs`).
//! `apply` makes a stage's routing match the engine's target; `observe` reads back the
//! candidate's effective share, which is what the engine verifies before it moves on.

pub mod gateway;
pub mod replicas;

use crate::{
    api::{LocallRelease, TrafficMethod},
    controller::{build, cache::Slim},
    engine::{Observed, StageDesired},
};
use k8s_openapi::api::core::v1::Service;
use kube::{
    api::{Api, DynamicObject, PartialObjectMeta, Patch, PatchParams},
    runtime::reflector::{ObjectRef, Store},
    Client, ResourceExt,
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
    pub async fn apply(self, client: &Client, applied: &Applied, lr: &LocallRelease, stage: &StageDesired) -> Result<u32, WriteError> {
        match self {
            Router::Gateway => gateway::apply(client, applied, lr, stage).await,
            Router::ReplicaRatio => replicas::apply(client, applied, lr, stage).await,
        }
    }

    /// The candidate's effective share (0-100) of the stage's traffic as routed now.
    pub async fn observe(
        self,
        client: &Client,
        lr: &LocallRelease,
        stage: &StageDesired,
        obs: &Observed,
    ) -> Result<Option<i32>, kube::Error> {
        match self {
            Router::Gateway => gateway::observe(client, lr, stage).await,
            Router::ReplicaRatio => replicas::observe(client, lr, stage, obs).await,
        }
    }
}

impl Router {
    /// Whether the stage router in `namespace`, read from the API server, still sends any
    /// traffic to `revision`: a Deployment is deleted only once this says no.
    pub async fn routes_to(
        self,
        client: &Client,
        lr: &LocallRelease,
        namespace: &str,
        component: Option<&str>,
        revision: &str,
    ) -> Result<bool, kube::Error> {
        match self {
            Router::Gateway => gateway::routes_to(client, lr, namespace, component, revision).await,
            Router::ReplicaRatio => replicas::routes_to(client, lr, namespace, component, revision).await,
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

/// Applies a Service unless the one in the cluster already carries the same content hash (asked
/// of the watch cache first, of the API server when the cache does not say so).
pub(crate) async fn ensure_service(client: &Client, applied: &Applied, svc: Service) -> Result<u32, WriteError> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let err = |e| WriteError::on("Service", &ns, &name)(e);
    // Its annotations are all this reads of the Service, and nothing of the answer to the write.
    let api: Api<Slim<Service>> = Api::namespaced(client.clone(), &ns);
    let (svc, hash) = build::stamp(svc);
    if applied.service_hash(&ns, &name).as_ref() == Some(&hash) {
        return Ok(0);
    }
    if let Some(cur) = api.get_opt(&name).await.map_err(err)? {
        if cur.annotations().get(build::APPLIED_HASH) == Some(&hash) {
            return Ok(0);
        }
    }
    let mut svc = svc;
    svc.metadata.managed_fields = None;
    let body = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": svc.metadata, "spec": svc.spec});
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await.map_err(err)?;
    Ok(1)
}
