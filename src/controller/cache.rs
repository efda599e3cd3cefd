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
//! - [`SlimService`]: a Service's selector, as traffic reads it back.
//! - [`Slim`]: any object's metadata alone, for the answers to writes and to reads of metadata.
//!
//! None of them materialises `managedFields` (often half of an object's JSON): [`lean_meta`]
//! reads metadata without it, and what a type does not name is skipped unread. Parsing the
//! watches' events and the answers to requests was a third of the operator's CPU.
//!
//! `cargo bench --bench footprint` measures the bytes each holds.

use crate::api::{LocallRelease, LocallReleaseStatus};
use k8s_openapi::{
    api::apps::v1::Deployment, api::core::v1::Service, apimachinery::pkg::apis::meta::v1::ObjectMeta, NamespaceResourceScope,
};
use kube::Resource;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;

/// A LocallRelease as the release cache holds it.
#[derive(Clone, Debug, Deserialize)]
pub struct CachedRelease {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    /// The spec's compact JSON text.
    #[serde(default, deserialize_with = "compact")]
    spec: Option<Box<str>>,
    /// The status' compact JSON text.
    #[serde(default, deserialize_with = "compact")]
    status: Option<Box<str>>,
}

/// A cached release written back as the object it stands for (kube's finalizer helper names
/// the type of its patches by it): apiVersion, kind, metadata, and spec and status as they are.
impl serde::Serialize for CachedRelease {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let raw = |t: &Option<Box<str>>| -> Result<Option<Box<serde_json::value::RawValue>>, S::Error> {
            t.as_deref().map(|t| serde_json::value::RawValue::from_string(t.to_string()).map_err(S::Error::custom)).transpose()
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("apiVersion", &LocallRelease::api_version(&()))?;
        m.serialize_entry("kind", &LocallRelease::kind(&()))?;
        m.serialize_entry("metadata", &self.metadata)?;
        if let Some(spec) = raw(&self.spec)? {
            m.serialize_entry("spec", &spec)?;
        }
        if let Some(status) = raw(&self.status)? {
            m.serialize_entry("status", &status)?;
        }
        m.end()
    }
}

/// Any JSON value, kept as its text (`null` as none). The API server's JSON is compact; text
/// with whitespace is compacted, so a cache never holds more than the value needs.
fn compact<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<str>>, D::Error> {
    let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if !spaced(text) {
        return Ok(Some(text.into()));
    }
    let v: serde_json::Value = serde_json::from_str(text).map_err(serde::de::Error::custom)?;
    serde_json::to_string(&v).map(|s| Some(s.into_boxed_str())).map_err(serde::de::Error::custom)
}

/// Whether JSON text has whitespace between its tokens (inside strings does not count).
fn spaced(text: &str) -> bool {
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b) if b.is_ascii_whitespace() => return true,
            _ => {}
        }
    }
    false
}

/// Object metadata without `managedFields`, which nothing in the operator reads: every other
/// field as the API server sent it.
pub fn lean_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use std::collections::BTreeMap;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Lean {
        annotations: Option<BTreeMap<String, String>>,
        creation_timestamp: Option<Time>,
        deletion_grace_period_seconds: Option<i64>,
        deletion_timestamp: Option<Time>,
        finalizers: Option<Vec<String>>,
        generate_name: Option<String>,
        generation: Option<i64>,
        labels: Option<BTreeMap<String, String>>,
        name: Option<String>,
        namespace: Option<String>,
        owner_references: Option<Vec<OwnerReference>>,
        resource_version: Option<String>,
        self_link: Option<String>,
        uid: Option<String>,
    }
    let Some(m) = Option::<Lean>::deserialize(d)? else { return Ok(ObjectMeta::default()) };
    Ok(ObjectMeta {
        annotations: m.annotations,
        creation_timestamp: m.creation_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        deletion_timestamp: m.deletion_timestamp,
        finalizers: m.finalizers,
        generate_name: m.generate_name,
        generation: m.generation,
        labels: m.labels,
        managed_fields: None,
        name: m.name,
        namespace: m.namespace,
        owner_references: m.owner_references,
        resource_version: m.resource_version,
        self_link: m.self_link,
        uid: m.uid,
    })
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
    (impl<$($g:ident: $bound:path),*> $cached:ty, $api:ty) => {
        impl<$($g: $bound),*> Resource for $cached {
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
    ($cached:ty, $api:ty) => {
        stands_for!(impl<> $cached, $api);
    };
}

stands_for!(CachedRelease, LocallRelease);
stands_for!(SlimDeployment, Deployment);
stands_for!(SlimService, Service);

/// An object's metadata alone (without `managedFields`), the rest of it skipped unread: what
/// the operator takes from the answer to a write (its resourceVersion) or from a read of
/// annotations. `Api<Slim<K>>` sends the same requests as `Api<K>`.
#[derive(Debug, Default, Deserialize)]
pub struct Slim<K> {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(skip)]
    _kind: std::marker::PhantomData<fn() -> K>,
}

impl<K> Clone for Slim<K> {
    fn clone(&self) -> Self {
        Slim { metadata: self.metadata.clone(), _kind: std::marker::PhantomData }
    }
}

/// Any namespaced API type with a static kind.
pub trait Namespaced: Resource<DynamicType = (), Scope = NamespaceResourceScope> {}
impl<K: Resource<DynamicType = (), Scope = NamespaceResourceScope>> Namespaced for K {}

stands_for!(impl<K: Namespaced> Slim<K>, K);

/// What traffic reads back of a Service: its selector.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimService {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<SlimServiceSpec>,
}

impl SlimService {
    /// Keeps of the metadata what traffic and cleanup read: name, namespace, the resourceVersion
    /// (is the cache as new as the last write?), the release label and the applied hash; the
    /// watch cache holds Services slimmed so.
    pub fn slim(&mut self) {
        let m = std::mem::take(&mut self.metadata);
        self.metadata = ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            resource_version: m.resource_version,
            labels: super::kept(m.labels, &[crate::api::labels::RELEASE]),
            annotations: super::kept(m.annotations, &[super::build::APPLIED_HASH]),
            ..Default::default()
        };
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimServiceSpec {
    #[serde(default)]
    pub selector: Option<std::collections::BTreeMap<String, String>>,
}

/// What observe and act read of a Deployment.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimDeployment {
    #[serde(default, deserialize_with = "lean_meta")]
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
        let cached: CachedRelease = serde_json::from_str(&release_json().to_string()).unwrap();
        let back = cached.release().unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&typed).unwrap());
        // The revision (a hash of the typed template) does not move: no restart on upgrade.
        assert_eq!(crate::engine::names::revision(&back.spec), crate::engine::names::revision(&typed.spec));
    }

    #[test]
    fn a_cached_release_serialises_as_the_release_it_stands_for() {
        // As the API server sent it, field for field (the typed release would add its defaults).
        let cached: CachedRelease = serde_json::from_str(&release_json().to_string()).unwrap();
        assert_eq!(serde_json::to_value(&cached).unwrap(), release_json());
    }

    #[test]
    fn a_release_without_status_has_none_and_an_unreadable_spec_names_the_field() {
        let mut v = release_json();
        v.as_object_mut().unwrap().remove("status");
        let cached: CachedRelease = serde_json::from_str(&v.to_string()).unwrap();
        assert!(cached.release().unwrap().status.is_none());
        v["spec"]["replicas"] = json!("two");
        let cached: CachedRelease = serde_json::from_str(&v.to_string()).unwrap();
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

    /// Metadata as the API server sends it: with managedFields, which the operator never reads.
    fn meta_json() -> serde_json::Value {
        json!({"name": "api-1a2b", "namespace": "calls", "uid": "u-1", "resourceVersion": "42", "generation": 3,
               "creationTimestamp": "2026-12-01T08:00:00Z", "deletionTimestamp": "2026-12-01T09:00:00Z",
               "labels": {"locall.io/release": "calls.api"}, "annotations": {"locall.io/applied-hash": "h"},
               "finalizers": ["locall.io/cleanup"],
               "ownerReferences": [{"apiVersion": "locall.io/v1alpha1", "kind": "LocallRelease", "name": "api", "uid": "u-0"}],
               "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "fieldsType": "FieldsV1",
                                  "fieldsV1": {"f:status": {"f:readyReplicas": {}}}}]})
    }

    #[test]
    fn lean_metadata_is_the_metadata_without_managed_fields() {
        let full: ObjectMeta = serde_json::from_value(meta_json()).unwrap();
        assert!(full.managed_fields.is_some());
        let d: SlimDeployment = serde_json::from_str(&json!({"metadata": meta_json()}).to_string()).unwrap();
        assert_eq!(d.metadata, ObjectMeta { managed_fields: None, ..full.clone() });
        let cached: CachedRelease = serde_json::from_str(&json!({"metadata": meta_json(), "spec": {}}).to_string()).unwrap();
        assert_eq!(cached.metadata, ObjectMeta { managed_fields: None, ..full });
    }

    #[test]
    fn a_write_answer_is_read_for_its_metadata_and_a_service_for_its_selector() {
        let answer = json!({"apiVersion": "v1", "kind": "Service", "metadata": meta_json(),
                            "spec": {"selector": {"app": "api", "locall.io/revision": "1a2b"}, "ports": [{"port": 80}]},
                            "status": {"loadBalancer": {}}});
        let slim: Slim<Service> = serde_json::from_str(&answer.to_string()).unwrap();
        assert_eq!(slim.metadata.resource_version.as_deref(), Some("42"));
        assert!(slim.metadata.managed_fields.is_none());
        let svc: SlimService = serde_json::from_str(&answer.to_string()).unwrap();
        let sel = svc.spec.unwrap().selector.unwrap();
        assert_eq!(sel.get("locall.io/revision").map(String::as_str), Some("1a2b"));
        // The same requests as the type it stands for.
        assert_eq!(Slim::<Service>::url_path(&(), Some("calls")), Service::url_path(&(), Some("calls")));
        assert_eq!(SlimService::url_path(&(), Some("calls")), Service::url_path(&(), Some("calls")));
    }

    #[test]
    fn only_whitespace_between_tokens_counts_as_spacing() {
        assert!(!spaced(r#"{"message":"waiting for Deployment a/b","q":"say \"hi there\"","e":"\\"}"#));
        assert!(spaced(r#"{"message":"a b", "x":1}"#));
        assert!(spaced(r#"{"e":"\\" ,"x":1}"#));
    }

    #[test]
    fn a_cached_spec_is_kept_compact_whatever_the_spacing_it_came_with() {
        let spaced = "{\"metadata\": {\"name\": \"api\"}, \"spec\": {\"version\": \"2.0.0\",\n  \"replicas\": 2}, \"status\": null}";
        let cached: CachedRelease = serde_json::from_str(spaced).unwrap();
        let spec = cached.spec.as_deref().unwrap();
        assert!(!spec.contains(char::is_whitespace), "{spec}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(spec).unwrap(), json!({"version": "2.0.0", "replicas": 2}));
        assert!(cached.status.is_none());
    }
}
