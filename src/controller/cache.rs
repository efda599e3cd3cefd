//! What the operator's watch caches hold per release and per child: as little as a reconcile
//! reads, because at ten thousand releases the caches are most of the operator's memory.
//!
//! - [`CachedRelease`]: a release as its watch delivers it, with metadata parsed (what triggers
//!   a reconcile) and spec and status kept as their compact JSON text. The typed spec is about
//!   5.5 KB in memory for a one-container release whose JSON is 300 bytes (every optional field
//!   of a pod template is inline in the k8s-openapi structs); a reconcile parses it back
//!   ([`CachedRelease::release`]), microseconds beside the requests it makes. One release whose
//!   spec the operator cannot read fails alone, with an error naming it, instead of failing the
//!   watch's list for every release.
//! - [`SlimDeployment`]: a Deployment with only the fields observe and act read.
//!
//! `cargo bench --bench footprint` measures the bytes each holds.

use crate::api::{LocallRelease, LocallReleaseStatus};
use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::ObjectMeta, NamespaceResourceScope};
use kube::Resource;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;

/// A LocallRelease as the release cache holds it.
#[derive(Clone, Debug, Deserialize)]
pub struct CachedRelease {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec's compact JSON text.
    #[serde(default, deserialize_with = "compact")]
    spec: Option<Box<str>>,
    /// The status' compact JSON text.
    #[serde(default, deserialize_with = "compact")]
    status: Option<Box<str>>,
}

/// Any JSON value, kept as its compact text (`null` as none).
fn compact<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<str>>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    serde_json::to_string(&v).map(|s| Some(s.into_boxed_str())).map_err(serde::de::Error::custom)
}

/// A cached release whose spec or status the operator cannot read.
#[derive(Debug, thiserror::Error)]
#[error("{field} of this release cannot be read: {source}")]
pub struct Unreadable {
    pub field: &'static str,
    #[source]
    pub source: serde_json::Error,
}

impl CachedRelease {
    /// The release, typed, as a reconcile reads it.
    pub fn release(&self) -> Result<LocallRelease, Unreadable> {
        // A release without a spec reads as an empty one (which names what it lacks).
        let spec = serde_json::from_str(self.spec.as_deref().unwrap_or("{}")).map_err(|source| Unreadable { field: "spec", source })?;
        let status = match &self.status {
            Some(s) => Some(serde_json::from_str::<LocallReleaseStatus>(s).map_err(|source| Unreadable { field: "status", source })?),
            None => None,
        };
        Ok(LocallRelease { metadata: self.metadata.clone(), spec, status })
    }
}

/// A cache type is the API type it stands for, to the API server and to kube-runtime: same kind,
/// group, version and plural, namespaced, its own metadata.
macro_rules! stands_for {
    ($cached:ty, $api:ty) => {
        impl Resource for $cached {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                <$api>::kind(&())
            }
            fn group(_: &()) -> Cow<'_, str> {
                <$api>::group(&())
            }
            fn version(_: &()) -> Cow<'_, str> {
                <$api>::version(&())
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                <$api>::api_version(&())
            }
            fn plural(_: &()) -> Cow<'_, str> {
                <$api>::plural(&())
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

stands_for!(CachedRelease, LocallRelease);
stands_for!(SlimDeployment, Deployment);

/// What observe and act read of a Deployment.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimDeployment {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<SlimDeploymentSpec>,
    #[serde(default)]
    pub status: Option<SlimDeploymentStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SlimDeploymentSpec {
    #[serde(default)]
    pub replicas: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SlimDeploymentStatus {
    #[serde(default)]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub ready_replicas: Option<i32>,
    #[serde(default)]
    pub updated_replicas: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn release_json() -> serde_json::Value {
        json!({
            "apiVersion": "locall.io/v1alpha1", "kind": "LocallRelease",
            "metadata": {"name": "api", "namespace": "calls", "generation": 3, "labels": {"team": "calls"}},
            "spec": {"version": "2.0.0", "replicas": 2,
                     "template": {"spec": {"containers": [{"name": "api", "image": "locall/api:2.0.0", "ports": [{"containerPort": 8080}]}]}},
                     "stages": [{"name": "production", "steps": [{"weight": 10, "pause": "5m"}]}]},
            "status": {"phase": "Production", "weight": 10, "candidateVersion": "2.0.0"}
        })
    }

    #[test]
    fn a_cached_release_reads_back_as_the_release_the_api_server_sent() {
        let typed: LocallRelease = serde_json::from_value(release_json()).unwrap();
        let cached: CachedRelease = serde_json::from_value(release_json()).unwrap();
        let back = cached.release().unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&typed).unwrap());
        // The revision (a hash of the typed template) does not move: no restart on upgrade.
        assert_eq!(crate::engine::names::revision(&back.spec), crate::engine::names::revision(&typed.spec));
    }

    #[test]
    fn a_release_without_status_has_none_and_an_unreadable_spec_names_the_field() {
        let mut v = release_json();
        v.as_object_mut().unwrap().remove("status");
        let cached: CachedRelease = serde_json::from_value(v.clone()).unwrap();
        assert!(cached.release().unwrap().status.is_none());
        v["spec"]["replicas"] = json!("two");
        let cached: CachedRelease = serde_json::from_value(v).unwrap();
        let err = cached.release().unwrap_err();
        assert_eq!(err.field, "spec");
        assert!(err.to_string().starts_with("spec of this release cannot be read"), "{err}");
    }

    #[test]
    fn a_slim_deployment_keeps_replicas_and_status_counters_only() {
        let d: SlimDeployment = serde_json::from_value(json!({
            "metadata": {"name": "api-1a2b", "namespace": "calls"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": [{"name": "a", "image": "i"}]}}},
            "status": {"observedGeneration": 2, "readyReplicas": 1, "updatedReplicas": 3, "availableReplicas": 1}
        }))
        .unwrap();
        assert_eq!(d.spec.unwrap().replicas, Some(3));
        let s = d.status.unwrap();
        assert_eq!((s.observed_generation, s.ready_replicas, s.updated_replicas), (Some(2), Some(1), Some(3)));
    }
}
