//! `LocallRelease.spec`: what the user asks for. The operator never writes it.
#![allow(clippy::duplicated_attributes)] // printcolumn(...) repeats by design in the kube derive

use super::{
    analysis::{Analysis, GoLive, Notification, RollbackPlan},
    duration::Dur,
    status::LocallReleaseStatus,
    validation::{DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN},
};
use k8s_openapi::api::core::v1::{EnvVar, PodTemplateSpec};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Names that become part of Job names (stages, Jobs) or of metric keys: lowercase words joined
/// by single hyphens. Never `--`, so `--` separates them unambiguously in a Job name.
pub const NAME_PATTERN: &str = r"^[a-z0-9]+(-[a-z0-9]+)*$";

/// A Locall application and the release of its current version: pre-deployment checks and Jobs,
/// then each stage (staging, then production) with verification, optional approval and progressive
/// traffic. Changing `version` or `template` starts a new release; the last good version stays
/// recorded as stable in status.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "locall.io",
    version = "v1alpha1",
    kind = "LocallRelease",
    plural = "locallreleases",
    shortname = "lr",
    category = "locall",
    namespaced,
    status = "LocallReleaseStatus",
    doc = "A Locall application release carried from pre-deployment checks through staging into production.",
    // The version the status describes (in flight or last finished), not the spec's: a version
    // that has not been acted on is never shown as Succeeded.
    printcolumn(name = "Version", type_ = "string", json_path = ".status.candidateVersion"),
    printcolumn(name = "Stage", type_ = "string", json_path = ".status.stage"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".status.weight"),
    // Components whose version in flight is Ready where the release stands (multi-component releases).
    printcolumn(name = "Components", type_ = "string", json_path = ".status.componentsReady"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // The release's name names its Services and Deployments: a DNS-1035 label of at most 54
    // characters (see `validation::RELEASE_NAME_MAX`). At the root, where CEL can read it.
    validation = crate::api::validation::release_name_rule()
)]
#[serde(rename_all = "camelCase")]
// `namespace` is a CEL reserved word: the API server's CEL spells the property `__namespace__`.
#[x_kube(validation = Rule::new("self.stages.all(s, !has(s.__namespace__) || self.stages.exists_one(t, has(t.__namespace__) && t.__namespace__ == s.__namespace__))").message("stages: two stages must not share a namespace").field_path(".stages"))]
#[x_kube(validation = Rule::new("self.stages.filter(s, !has(s.__namespace__)).size() <= 1").message("stages: at most one stage may omit namespace (each would use the release's namespace)").field_path(".stages"))]
#[x_kube(validation = Rule::new("self.traffic.method != 'GatewayAPI' || has(self.traffic.gateway)").message("traffic.gateway is required when traffic.method is GatewayAPI").field_path(".traffic.gateway"))]
#[x_kube(validation = Rule::new("!has(self.approvals) || self.approvals.all(a, self.stages.exists(s, s.name == a.stage))").message("approvals: every approval must name a stage of this release").field_path(".approvals"))]
#[x_kube(validation = Rule::new("self.traffic.method != 'ReplicaRatio' || !has(self.traffic.gateway)").message("traffic.gateway must not be set when traffic.method is ReplicaRatio").field_path(".traffic.gateway"))]
#[x_kube(validation = Rule::new("has(self.template) != (has(self.components) && self.components.size() > 0)").message("set template (one application) or components (several): exactly one of them").field_path(".template"))]
#[x_kube(validation = Rule::new("!has(self.components) || self.components.all(c, !has(c.after) || c.after.all(a, a != c.name && self.components.exists(d, d.name == a)))").message("components[].after: name other components of this release").field_path(".components"))]
#[x_kube(validation = Rule::new("!has(self.components) || !has(self.analysis) || !has(self.analysis.metrics) || self.analysis.metrics.all(m, !has(m.component) || self.components.exists(c, c.name == m.component))").message("analysis.metrics[].component: name a component of this release").field_path(".analysis.metrics"))]
pub struct LocallReleaseSpec {
    /// The application version this release rolls out, e.g. "2.4.0". Shown as the Version column.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"))]
    pub version: String,

    /// Pod replicas of the application in each stage, unless a stage sets its own.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,

    /// The application's pod template. The operator adds its labels
    /// (`app.kubernetes.io/name`, `app.kubernetes.io/version`, `locall.io/revision`). Every
    /// container (and init container) needs an `image` and a DNS-label name. A release of
    /// several services lists `components` instead.
    #[serde(default, skip_serializing_if = "is_empty_template")]
    #[schemars(schema_with = "crate::api::validation::pod_template_schema")]
    pub template: PodTemplateSpec,

    /// The services released together as one: each with its own pod template, replicas and
    /// role in traffic (with `service`: an HTTP component whose traffic steps with the
    /// others'; without: a worker replaced once its new version is Ready). One version, one
    /// migration, one set of stages; a failure in any component rolls every component back.
    /// Instead of `template`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub components: Vec<Component>,

    /// The Service in front of the application in each stage namespace.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Checks run before anything else: referenced Secrets, ConfigMaps, keys and TLS certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<Preflight>,

    /// Jobs run around the deployment: pre-deploy tests and cache clear, the migration with its
    /// backup and restore, post-deploy tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,

    /// Ordered stages, e.g. staging then production. Each must finish before the next starts.
    /// Names unique; each stage in its own namespace.
    #[schemars(length(min = 1, max = 10))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub stages: Vec<Stage>,

    /// How traffic moves to the new version.
    #[serde(default)]
    pub traffic: Traffic,

    /// Metric gates from Prometheus: success criteria and rollback triggers, evaluated in
    /// staging, at every traffic step, in go-live windows and after a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,

    /// Go-live windows after 100% in production (`goLive: {}` gives the checklist's 0-15m,
    /// 15m-2h, 2h-24h). The previous version stays ready until the last window passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_live: Option<GoLive>,

    /// What verifies a rollback, beyond moving traffic back and restoring the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackPlan>,

    /// Webhooks told about RolledBack, Failed, AwaitingApproval and Succeeded. Names unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub notifications: Vec<Notification>,

    /// Approvals granted in git (GitOps): each names the stage and the version it approves.
    /// The `locall.io/approve` annotation grants one without a commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub approvals: Vec<Approval>,
}

fn default_replicas() -> i32 {
    2
}

fn is_empty_template(t: &PodTemplateSpec) -> bool {
    t == &PodTemplateSpec::default()
}

/// One service of a multi-component release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    /// Short name, unique in the release (api, worker, webhooks, web): part of its objects'
    /// names (`<release>-<component>-<revision>`) and of metric names in status.
    #[schemars(length(min = 1, max = 20), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// The component's pod template (checked by the API server when its Deployment is applied;
    /// the operator names `spec.components[i].template` when it is refused).
    #[schemars(schema_with = "crate::api::validation::component_template_schema")]
    pub template: PodTemplateSpec,
    /// Replicas in every stage (defaults to the stage's, then `spec.replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: Option<i32>,
    /// Set for an HTTP component: its Service (and, with Gateway API, its HTTPRoute
    /// `<release>-<component>`). Its traffic moves with the release's steps. Without it the
    /// component is a worker: its new version replaces the old once Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    /// Components whose new version must be Ready in a stage before this one is deployed there
    /// (e.g. workers after the api). On a rollback the order reverses: this one's new version
    /// goes before theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 20)))]
    pub after: Vec<String>,
}

/// The Service the operator manages in each stage namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The port the Service exposes and the container listens on.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations put on the Service and the HTTPRoute (for example `sim.locall.io/rps` for the
    /// local traffic simulator). Keys are qualified names (`[prefix/]name`); at most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::api::validation::annotations_schema")]
    pub annotations: BTreeMap<String, String>,
}

fn default_port() -> i32 {
    8080
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec { port: default_port(), annotations: BTreeMap::new() }
    }
}

/// Checks that must pass before any Job runs or anything is deployed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preflight {
    /// Secrets that must exist in every stage namespace, with the keys they must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<ObjectKeys>,
    /// ConfigMaps that must exist in every stage namespace, with the keys they must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_maps: Vec<ObjectKeys>,
    /// TLS Secrets (type kubernetes.io/tls) whose certificate must stay valid at least `minValidity`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub tls: Vec<TlsCheck>,
}

/// A Secret or ConfigMap and the keys it must contain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectKeys {
    /// Name of the object, looked up in each stage namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Keys that must be present (in `data` or `stringData`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// A TLS certificate that must remain valid long enough.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsCheck {
    /// Name of the kubernetes.io/tls Secret, looked up in each stage namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Minimum remaining validity of `tls.crt`, e.g. 720h for 30 days.
    pub min_validity: Dur,
}

/// Jobs run around the deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// Run in order before the migration: tests, cache clear, ... Names unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub pre_deploy: Vec<HookJob>,
    /// The database migration, with the backup taken before it and the restore a rollback uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
    /// Run in order once production is at 100%: enabling alerts, ... Names unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub post_deploy: Vec<HookJob>,
}

/// The migration step of a release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.changesSchema || has(self.restore)").message("a migration that changes the schema needs a restore Job for rollbacks").field_path(".restore"))]
pub struct Migration {
    /// Whether this migration changes the database schema. When true, a rollback after the
    /// migration ran restores the backup taken just before it.
    #[serde(default)]
    pub changes_schema: bool,
    /// Takes the backup before the migration. Its `BACKUP_ID` env var names the backup.
    pub backup: JobTemplate,
    /// Runs the migration.
    pub migrate: JobTemplate,
    /// Restores the backup (`BACKUP_ID` is set) when a release that changed the schema rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<JobTemplate>,
}

/// A named Job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookJob {
    /// Short name, unique in its list; part of the Job's name: lowercase words joined by single hyphens.
    #[schemars(length(min = 1, max = 20), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// What the Job runs.
    #[serde(flatten)]
    pub job: JobTemplate,
}

/// What a Job runs. By default it uses the application's first container: its image and env.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTemplate {
    /// Container image; defaults to the application's first container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Command (entrypoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables, added to the application container's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Retries before the Job counts as failed (the Job's backoffLimit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,
    /// How long the Job may run before it counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Labels added to the Job's pods: keys qualified names (`[prefix/]name`), values label
    /// values (at most 63 characters of `[A-Za-z0-9-_.]`, alphanumeric at both ends); at most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::api::validation::labels_schema")]
    pub pod_labels: BTreeMap<String, String>,
    /// Annotations added to the Job's pods. Keys are qualified names (`[prefix/]name`); at most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::api::validation::annotations_schema")]
    pub pod_annotations: BTreeMap<String, String>,
}

/// One stage of the release, e.g. staging or production.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.steps) || self.steps.size() == 0 || self.steps[self.steps.size() - 1].weight == 100").message("the last step's weight must be 100").field_path(".steps"))]
#[x_kube(validation = Rule::new("!has(self.steps) || self.steps.size() < 2 || self.steps.all(s, self.steps.filter(t, t.weight == s.weight).size() == 1)").message("step weights must not repeat").field_path(".steps"))]
#[x_kube(validation = Rule::new("!has(self.approvers) || self.approval").message("approvers: set approval: true as well").field_path(".approvers"))]
pub struct Stage {
    /// Stage name, unique in the release: staging, production, ... Lowercase words joined by
    /// single hyphens (part of Job names).
    #[schemars(length(min = 1, max = 20), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Namespace the stage's Deployments, Service and HTTPRoute live in (defaults to the
    /// release's). No two stages share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub namespace: Option<String>,
    /// Replicas in this stage (defaults to `spec.replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: Option<i32>,
    /// Whether the stage waits for a recorded approval before it starts.
    #[serde(default)]
    pub approval: bool,
    /// Who may approve the stage and how many of them (needs `approval: true`). Group
    /// membership is checked by the API server through the chart's approval policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Approvers>,
    /// Jobs that verify the stage once the new version is deployed there (e.g. the e2e suite),
    /// run in order before traffic moves. Names unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub verify: Vec<HookJob>,
    /// Traffic steps: the new version's share and how long to hold it. Empty means 100% at once.
    /// Weights must increase and the last must be 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub steps: Vec<Step>,
}

/// One traffic step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Percentage of the stage's traffic sent to the new version, 1 to 100.
    #[schemars(range(min = 1, max = 100))]
    pub weight: i32,
    /// How long to hold this weight before the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Dur>,
}

/// How traffic moves between versions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    /// `GatewayAPI`: HTTPRoute backend weights (needs `gateway`). `ReplicaRatio`: no mesh, one
    /// Service over both versions, the weight approximated by the ratio of Ready replicas.
    #[serde(default)]
    pub method: TrafficMethod,
    /// The Gateway the HTTPRoute attaches to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRef>,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic { method: TrafficMethod::ReplicaRatio, gateway: None }
    }
}

/// The traffic method.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum TrafficMethod {
    /// Gateway API HTTPRoute backend weights.
    #[serde(rename = "GatewayAPI")]
    GatewayApi,
    /// Ratio of Ready replicas behind one Service.
    #[default]
    ReplicaRatio,
}

/// A Gateway API parent reference.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// Gateway name: an object name (DNS subdomain: lowercase dot-separated DNS labels).
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Gateway namespace (defaults to each stage's namespace): a DNS label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub namespace: Option<String>,
}

/// Who may approve a stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approvers {
    /// Distinct approvers needed before the stage starts (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 5))]
    pub required: u8,
    /// The groups (as the API server authenticates them) whose members may approve; any
    /// authenticated user when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 1, max = 253)))]
    pub groups: Vec<String>,
}

fn one() -> u8 {
    1
}

/// An approval recorded in git for one stage of one version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// The stage approved.
    #[schemars(length(min = 1))]
    pub stage: String,
    /// The version approved; an approval never carries over to another version.
    #[schemars(length(min = 1))]
    pub version: String,
    /// Who approved.
    #[schemars(length(min = 1))]
    pub by: String,
}

impl LocallReleaseSpec {
    /// The namespace of stage `i`, defaulting to the release's own.
    pub fn stage_namespace<'a>(&'a self, i: usize, release_ns: &'a str) -> &'a str {
        self.stages[i].namespace.as_deref().unwrap_or(release_ns)
    }
    pub fn stage_replicas(&self, i: usize) -> i32 {
        self.stages[i].replicas.unwrap_or(self.replicas)
    }
}
