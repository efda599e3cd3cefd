//! Pure builders: the Kubernetes objects for the engine's desired state. No client here; unit
//! tests assert on the objects produced.

use crate::{
    api::{labels, LocallRelease},
    engine::{names, DeploymentDesired, JobToCreate, StageDesired},
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        batch::v1::{Job, JobSpec},
        core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// What every child of a release carries: who owns it, for the watches and the cleanup.
pub fn common_labels(lr: &LocallRelease) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_string(), lr.name_any()),
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
        (labels::RELEASE.to_string(), names::release_label(&lr.namespace().unwrap_or_default(), &lr.name_any())),
    ])
}

/// An owner reference when the child lives in the release's namespace (they cannot cross
/// namespaces; children elsewhere are found by label and removed by the finalizer).
pub fn owner(lr: &LocallRelease, namespace: &str) -> Option<Vec<OwnerReference>> {
    (lr.namespace().as_deref() == Some(namespace)).then(|| lr.controller_owner_ref(&()).into_iter().collect())
}

fn meta(lr: &LocallRelease, name: &str, namespace: &str, extra: &[(&str, &str)]) -> ObjectMeta {
    let mut l = common_labels(lr);
    for (k, v) in extra {
        l.insert(k.to_string(), v.to_string());
    }
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(l),
        owner_references: owner(lr, namespace),
        ..Default::default()
    }
}

/// The pod template of a part: the release's, or its component's.
pub fn part_template(lr: &LocallRelease, component: Option<&str>) -> PodTemplateSpec {
    match component {
        None => lr.spec.template.clone(),
        Some(c) => lr.spec.components.iter().find(|x| x.name == c).map(|x| x.template.clone()).unwrap_or_default(),
    }
}

/// The Service spec of a part: the release's, or its component's (the release's when the
/// component no longer says).
pub fn part_service(lr: &LocallRelease, component: Option<&str>) -> crate::api::ServiceSpec {
    component
        .and_then(|c| lr.spec.components.iter().find(|x| x.name == c))
        .and_then(|x| x.service.clone())
        .unwrap_or_else(|| lr.spec.service.clone())
}

/// What selects a part's pods (with the revision, one revision's): the release's name, and the
/// component in a multi-component release.
pub fn part_selector(lr: &LocallRelease, component: Option<&str>) -> BTreeMap<String, String> {
    let mut sel = BTreeMap::from([(labels::NAME.to_string(), lr.name_any())]);
    if let Some(c) = component {
        sel.insert(labels::COMPONENT.into(), c.to_string());
    }
    sel
}

/// The container Jobs run by default: the first of the release's template, or of its first
/// component's.
pub fn job_container(lr: &LocallRelease) -> Container {
    let template = lr.spec.components.first().map(|c| &c.template).unwrap_or(&lr.spec.template);
    template.spec.as_ref().and_then(|p| p.containers.first()).cloned().unwrap_or_default()
}

/// Labels on the pods of one revision.
pub fn pod_labels(lr: &LocallRelease, revision: &str, version: &str) -> BTreeMap<String, String> {
    let mut l = common_labels(lr);
    l.insert(labels::REVISION.into(), revision.into());
    l.insert(labels::VERSION.into(), version.into());
    l
}

/// The candidate's Deployment in a stage, from the spec's pod template.
pub fn deployment(lr: &LocallRelease, stage: &StageDesired, d: &DeploymentDesired) -> Deployment {
    let name = names::deployment(&stage.base(&lr.name_any()), &d.revision);
    let component = stage.component.as_deref();
    let mut template: PodTemplateSpec = part_template(lr, component);
    let tm = template.metadata.get_or_insert_with(Default::default);
    let mut pl = tm.labels.clone().unwrap_or_default();
    pl.extend(pod_labels(lr, &d.revision, &d.version));
    pl.insert(labels::STAGE.into(), stage.name.clone());
    let mut selector = part_selector(lr, component);
    selector.insert(labels::REVISION.to_string(), d.revision.clone());
    let mut extra =
        vec![(labels::REVISION, d.revision.as_str()), (labels::VERSION, d.version.as_str()), (labels::STAGE, stage.name.as_str())];
    if let Some(c) = component {
        pl.insert(labels::COMPONENT.into(), c.to_string());
        extra.push((labels::COMPONENT, c));
    }
    tm.labels = Some(pl);
    Deployment {
        metadata: meta(lr, &name, &stage.namespace, &extra),
        spec: Some(DeploymentSpec {
            replicas: Some(d.replicas),
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            template,
            ..Default::default()
        }),
        status: None,
    }
}

/// A Service in a stage with the given name and selector.
pub fn service(lr: &LocallRelease, stage: &StageDesired, name: &str, selector: BTreeMap<String, String>) -> Service {
    let mut extra = vec![(labels::STAGE, stage.name.as_str())];
    if let Some(c) = stage.component.as_deref() {
        extra.push((labels::COMPONENT, c));
    }
    let mut m = meta(lr, name, &stage.namespace, &extra);
    let spec = part_service(lr, stage.component.as_deref());
    if !spec.annotations.is_empty() {
        m.annotations = Some(spec.annotations.clone());
    }
    let port = spec.port;
    Service {
        metadata: m,
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                target_port: Some(IntOrString::Int(port)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// A hook Job. It runs the application's first container image and env unless the hook says
/// otherwise; `BACKUP_ID` names the backup for backup, migrate and restore Jobs.
pub fn job(lr: &LocallRelease, j: &JobToCreate) -> Job {
    let app = job_container(lr);
    let t = &j.template;
    let mut env = app.env.clone().unwrap_or_default();
    env.extend(t.env.iter().cloned());
    if let Some(id) = &j.backup_id {
        env.push(EnvVar { name: "BACKUP_ID".into(), value: Some(id.clone()), ..Default::default() });
    }
    env.push(EnvVar { name: "LOCALL_VERSION".into(), value: Some(lr.spec.version.clone()), ..Default::default() });
    let container = Container {
        name: j.record.name.clone(),
        image: t.image.clone().or(app.image.clone()),
        command: (!t.command.is_empty()).then(|| t.command.clone()),
        args: (!t.args.is_empty()).then(|| t.args.clone()),
        env: Some(env),
        env_from: app.env_from.clone(),
        ..Default::default()
    };
    let kind = format!("{:?}", j.record.kind);
    let rev = names::revision(&lr.spec);
    let mut pod_labels = t.pod_labels.clone();
    pod_labels.extend(common_labels(lr));
    pod_labels.insert(labels::JOB_KIND.into(), kind.clone());
    let mut m = meta(lr, &j.record.job_name, &j.record.namespace, &[(labels::JOB_KIND, &kind), (labels::REVISION, &rev)]);
    if !j.record.stage.is_empty() {
        m.labels.get_or_insert_with(Default::default).insert(labels::STAGE.into(), j.record.stage.clone());
    }
    let app_spec = lr.spec.components.first().map(|c| &c.template).unwrap_or(&lr.spec.template).spec.clone().unwrap_or_default();
    Job {
        metadata: m,
        spec: Some(JobSpec {
            backoff_limit: Some(t.retries.unwrap_or(0)),
            active_deadline_seconds: t.timeout.as_ref().map(|d| d.get().as_secs().max(1) as i64),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!t.pod_annotations.is_empty()).then(|| t.pod_annotations.clone()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".into()),
                    service_account_name: app_spec.service_account_name,
                    image_pull_secrets: app_spec.image_pull_secrets,
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// A stable hash of an object's content, stored on it so an unchanged object is never rewritten.
pub fn content_hash<T: serde::Serialize>(obj: &T) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    Sha256::digest(&bytes).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Annotation holding `content_hash` of what the operator last applied.
pub const APPLIED_HASH: &str = "locall.io/applied-hash";

/// Stamps the content hash on an object's annotations.
pub fn stamp<K: Resource + serde::Serialize>(mut obj: K) -> (K, String) {
    let h = content_hash(&obj);
    obj.meta_mut().annotations.get_or_insert_with(Default::default).insert(APPLIED_HASH.into(), h.clone());
    (obj, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{JobKind, JobRecord, JobState, JobTemplate};

    fn lr() -> LocallRelease {
        let mut lr: LocallRelease = serde_yaml::from_str(
            r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {name: api, namespace: prod, uid: "1234"}
spec:
  version: "2.0.0"
  template:
    metadata: {annotations: {sim.locall.io/error-rate: "0.01"}}
    spec: {containers: [{name: api, image: "api:2", env: [{name: A, value: "1"}]}]}
  stages: [{name: staging, namespace: stg}, {name: production}]
"#,
        )
        .unwrap();
        lr.metadata.uid = Some("1234".into());
        lr
    }

    fn stage(ns: &str) -> StageDesired {
        StageDesired {
            index: 0,
            name: "staging".into(),
            namespace: ns.into(),
            component: None,
            replicas: 2,
            deployments: vec![],
            traffic: None,
        }
    }

    #[test]
    fn deployment_carries_labels_selector_and_owner_only_in_its_namespace() {
        let lr = lr();
        let d = DeploymentDesired { revision: "abcd1234".into(), version: "2.0.0".into(), replicas: 3, from_spec: true };
        let dep = deployment(&lr, &stage("stg"), &d);
        assert_eq!(dep.metadata.name.as_deref(), Some("api-abcd1234"));
        assert!(dep.metadata.owner_references.is_none(), "no owner reference across namespaces");
        let pod_labels = dep.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(pod_labels["app.kubernetes.io/version"], "2.0.0");
        assert_eq!(pod_labels["locall.io/release"], "prod.api");
        let sel = dep.spec.as_ref().unwrap().selector.match_labels.as_ref().unwrap();
        assert!(sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "selector matches the pods");
        let annotations = dep.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
        assert_eq!(annotations["sim.locall.io/error-rate"], "0.01", "user's pod annotations kept");
        let dep = deployment(&lr, &stage("prod"), &d);
        assert_eq!(dep.metadata.owner_references.unwrap()[0].uid, "1234");
    }

    #[test]
    fn job_inherits_image_and_env_and_gets_the_backup_id() {
        let lr = lr();
        let j = JobToCreate {
            record: JobRecord {
                name: "migrate".into(),
                kind: JobKind::Migrate,
                stage: String::new(),
                job_name: "api-abcd1234-migrate".into(),
                namespace: "prod".into(),
                state: JobState::Running,
                reason: String::new(),
                message: String::new(),
                started_at: None,
                finished_at: None,
            },
            template: JobTemplate { command: vec!["migrate".into()], ..Default::default() },
            backup_id: Some("api-abcd1234-backup".into()),
        };
        let job = job(&lr, &j);
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("api:2"));
        let env: Vec<_> = c.env.as_ref().unwrap().iter().map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or(""))).collect();
        assert!(env.contains(&("A", "1")) && env.contains(&("BACKUP_ID", "api-abcd1234-backup")), "{env:?}");
    }
}
