//! Traffic routing, behind one small interface with two real implementations:
//! Gateway API HTTPRoute backend weights (`gateway.rs`) and replica ratio (`replicas.rs`).
//! `apply` makes a stage's routing match the engine's target; `observe` reads back the
//! candidate's effective share, which is what the engine verifies before it moves on.

pub mod gateway;
pub mod replicas;

use crate::{
    api::{LocallRelease, TrafficMethod},
    controller::build,
    engine::{Observed, StageDesired},
};
use k8s_openapi::api::core::v1::Service;
use kube::{
    api::{Api, Patch, PatchParams},
    Client, ResourceExt,
};

/// The field manager of every write the operator makes.
pub const MANAGER: &str = "locall-operator";

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
    pub async fn apply(self, client: &Client, lr: &LocallRelease, stage: &StageDesired) -> Result<u32, kube::Error> {
        match self {
            Router::Gateway => gateway::apply(client, lr, stage).await,
            Router::ReplicaRatio => replicas::apply(client, lr, stage).await,
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

/// Applies a Service unless the one in the cluster already carries the same content hash.
pub(crate) async fn ensure_service(client: &Client, svc: Service) -> Result<u32, kube::Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let api: Api<Service> = Api::namespaced(client.clone(), &ns);
    let (svc, hash) = build::stamp(svc);
    if let Some(cur) = api.get_opt(&name).await? {
        if cur.annotations().get(build::APPLIED_HASH) == Some(&hash) {
            return Ok(0);
        }
    }
    let mut svc = svc;
    svc.metadata.managed_fields = None;
    let body = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": svc.metadata, "spec": svc.spec});
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(1)
}
