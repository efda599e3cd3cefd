//! `LocallRelease.status`: the only state. A restarted operator resumes from it.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the release stands. Written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocallReleaseStatus {
    /// Notifications owed and not yet delivered, one per target: recorded in the same write as
    /// the change they announce, so a restart or a receiver that is down loses none; removed once
    /// delivered or given up (an Event says so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub outbox: Vec<Owed>,
    /// How many notifications this release has owed so far: the idempotency key's counter.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub notices: u64,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The release's phase.
    #[serde(default)]
    pub phase: Phase,
    /// Human-readable summary of the current phase.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Revision (hash of version and pod template) of the release in progress or last finished.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// The version being released.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub candidate_version: String,
    /// The last version that finished its release, serving traffic until the candidate takes over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<StableVersion>,
    /// The stage in progress (its name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stage: String,
    /// Index of the stage in progress in `spec.stages`.
    #[serde(default)]
    pub stage_index: u32,
    /// Index of the traffic step in progress in the stage's steps.
    #[serde(default)]
    pub step: u32,
    /// Percentage of the current stage's traffic on the candidate.
    #[serde(default)]
    pub weight: i32,
    /// The components of the version in flight, as they were when it started (empty: a release
    /// of one template).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentRef>,
    /// Components of the version in flight Ready where the release stands, e.g. `4/4`
    /// (multi-component releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components_ready: Option<String>,
    /// Every stage the candidate was deployed to, in order, with the namespace it used then:
    /// what a rollback must take back, whatever the spec says now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reached: Vec<StageRef>,
    /// When the candidate became Ready in the current stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_ready_at: Option<DateTime<Utc>>,
    /// When the current phase began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_started_at: Option<DateTime<Utc>>,
    /// When the current traffic step's weight was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<DateTime<Utc>>,
    /// Outcome of each preflight check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preflight: Vec<CheckResult>,
    /// Every Job this release ran, with its outcome and reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobRecord>,
    /// Who changed `spec.version` to the candidate version, as the API server authenticated
    /// them: from the `locall.io/requested-by` annotation the chart's admission policy sets.
    /// Absent where the API server could not tell (no policy, or written for another version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Approvals recorded for this release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalRecord>,
    /// The id of the backup taken before this release's migration (this attempt's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// The database side of the rollback plan, captured when this attempt's backup started:
    /// a later spec edit cannot change what a rollback of this attempt restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabasePlan>,
    /// What the release is waiting for now, since when and until when (absent once it ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
    /// Number of the release attempt in progress or last finished: 1 for the first release of
    /// this object, one more for every new version, revert or retry. Job names and the backup
    /// id derive from it, so no attempt ever adopts another attempt's Jobs or backup.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub sequence: u64,
    /// What happened when the release failed or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The latest measurement of each metric gate, with its verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateStatus>,
    /// Set by a `pause` request: the release waits until `resume`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Id of the last `locall.io/request` handled (each is handled once).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub handled_request: String,
    /// Retries of this revision (`retry` after a failure); part of the Job names.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// A `promote` request: the step index whose pause and gate hold are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_step: Option<u32>,
    /// A `promote-full` request: straight to 100% and past the go-live windows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promoted_full: bool,
    /// The go-live window in progress (its name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub window: String,
    /// Index of the go-live window in progress.
    #[serde(default)]
    pub window_index: u32,
    /// When the current go-live window began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_started_at: Option<DateTime<Utc>>,
    /// Kubernetes conditions: Ready, Reconciling, Stalled (kstatus semantics).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

/// A stage the candidate was deployed to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageRef {
    /// The stage's name.
    pub name: String,
    /// The namespace the candidate was deployed to in that stage.
    pub namespace: String,
    /// Replicas there.
    pub replicas: i32,
}

/// The database part of a rollback plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabasePlan {
    /// Whether the migration changes the schema (a rollback after it restores the backup).
    pub changes_schema: bool,
    /// The restore Job, as the spec said when the backup was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::api::JobTemplate>,
    /// Set once this attempt's migration succeeded.
    #[serde(default)]
    pub migrated: bool,
}

/// What the release waits for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Wait {
    /// What is awaited, e.g. `Deployment prod/api-1a2b3c4d Ready`, `traffic 25% in production`.
    pub awaiting: String,
    /// When this wait began: every deadline runs from here.
    pub since: DateTime<Utc>,
    /// When the wait ends: the end of a pause or window, or the deadline after which the
    /// release fails. Absent when it has no end (an approval, metric gates holding on no data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// An imperative request read from the `locall.io/request` annotation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Request {
    pub action: String,
    pub id: String,
    #[serde(default)]
    pub by: String,
}

/// Why a release failed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum FailureReason {
    /// The spec cannot be carried out (a field is named in the message).
    #[default]
    InvalidSpec,
    /// A preflight check failed.
    PreflightFailed,
    /// A Job failed or disappeared.
    JobFailed,
    /// The candidate's Deployment was not Ready in time.
    DeploymentNotReady,
    /// The router did not reach a step's weight in time.
    TrafficNotShifted,
    /// A metric gate's rollback trigger breached.
    MetricBreached,
    /// A rollback or abort was requested.
    ManualRollback,
    /// The API server refused a child the spec describes (400/422: e.g. an invalid container
    /// name or label); the message names the object and the field.
    ChildRefused,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InvalidSpec => "InvalidSpec",
            FailureReason::PreflightFailed => "PreflightFailed",
            FailureReason::JobFailed => "JobFailed",
            FailureReason::DeploymentNotReady => "DeploymentNotReady",
            FailureReason::TrafficNotShifted => "TrafficNotShifted",
            FailureReason::MetricBreached => "MetricBreached",
            FailureReason::ManualRollback => "ManualRollback",
            FailureReason::ChildRefused => "ChildRefused",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The release's phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Phase {
    /// Seen, nothing started yet.
    #[default]
    Pending,
    /// Preflight checks, pre-deploy Jobs, backup and migration.
    PreDeploy,
    /// A stage before the last one (staging) is being deployed, verified and shifted.
    Staging,
    /// Waiting for a recorded approval before the next stage.
    AwaitingApproval,
    /// The last stage (production) is being deployed, verified and shifted.
    Production,
    /// At 100% in production, watched before it is declared good.
    GoLive,
    /// Done: the candidate is the stable version.
    Succeeded,
    /// Moving traffic back to the stable version and restoring what the release changed.
    RollingBack,
    /// Rolled back: the stable version serves all traffic again.
    RolledBack,
    /// Stopped before any traffic moved (a check or a Job failed, or the spec is invalid).
    Failed,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack | Phase::Failed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::PreDeploy => "PreDeploy",
            Phase::Staging => "Staging",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::Production => "Production",
            Phase::GoLive => "GoLive",
            Phase::Succeeded => "Succeeded",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The version serving traffic before this release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StableVersion {
    /// Its version string.
    pub version: String,
    /// Its revision (names its Deployments).
    pub revision: String,
    /// The namespaces it runs in (the stages it was released to). A stage added later has no
    /// stable version to shift from or roll back to. Empty (a status from before this field):
    /// every stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Its components (empty: one template).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentRef>,
}

/// A component of a version, as recorded when its release started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentRef {
    /// Its name.
    pub name: String,
    /// Whether it takes part in the traffic steps (an HTTP component).
    #[serde(default)]
    pub routed: bool,
    /// Its replicas in every stage, when it sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The components deployed before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Ready pods of this version where the release stands, e.g. `2/2`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ready: String,
}

/// The outcome of one preflight check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// What was checked, e.g. `secret demo/locall-db`.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why it passed or failed.
    pub message: String,
}

/// What a Job is for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum JobKind {
    PreDeploy,
    Backup,
    Migrate,
    Verify,
    PostDeploy,
    Restore,
}

/// A Job's state as the operator last saw it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// One Job of this release. Its name is deterministic, so it is never created twice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// The hook's name, e.g. `tests`, `migrate`, `e2e`.
    pub name: String,
    /// What the Job is for.
    pub kind: JobKind,
    /// The stage it belongs to (verify Jobs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stage: String,
    /// The Job object's name.
    pub job_name: String,
    /// The Job object's namespace.
    pub namespace: String,
    /// Its state.
    pub state: JobState,
    /// The reason it ended as it did (from the Job's conditions).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The message that came with it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the operator created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// An approval, as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    /// The stage approved.
    pub stage: String,
    /// Who approved.
    pub by: String,
    /// When the operator recorded it.
    pub at: DateTime<Utc>,
    /// Where it came from: `spec` (git) or `annotation` (`locall.io/approve`).
    pub source: String,
}

/// Why the release failed or rolled back, for the investigation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// Short machine-readable reason, e.g. `JobFailed`, `PreflightFailed`.
    pub reason: FailureReason,
    /// What failed, in words.
    pub message: String,
    /// The stage it failed in, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stage: String,
    /// The component that failed, in a multi-component release, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// When the failure was detected.
    pub at: DateTime<Utc>,
    /// Whether traffic had moved to the candidate when it failed.
    #[serde(default)]
    pub traffic_moved: bool,
    /// When all traffic was back on the stable version (rollbacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_restored_at: Option<DateTime<Utc>>,
    /// When the database restore finished (rollbacks after a schema change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_restored_at: Option<DateTime<Utc>>,
    /// The metric that triggered the rollback, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricBreach>,
    /// When the rollback was verified (or found wanting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<DateTime<Utc>>,
}

/// Which metric crossed which threshold, where, with which values.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricBreach {
    /// The metric's name.
    pub metric: String,
    /// Where: `stage production, step 2 (25%)` or `go-live window 0-15m`.
    pub context: String,
    /// The rollback trigger, e.g. `> 0.05`.
    pub threshold: String,
    /// The breaching values, oldest first.
    pub values: Vec<f64>,
    /// When the first of the consecutive breaching measurements was taken.
    pub first_breach_at: DateTime<Utc>,
}

/// A gate's verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    /// The success criterion holds.
    Pass,
    /// The rollback trigger holds.
    Fail,
    /// Neither: between the thresholds.
    Inconclusive,
    /// No data, or too small a sample.
    NoData,
    /// Prometheus unreachable or the query failed.
    Error,
}

/// The latest measurement of one metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    /// The metric.
    pub metric: String,
    /// What was measured: `<stage>/<version>`.
    pub target: String,
    /// The value measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The sample size measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<f64>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why.
    pub message: String,
    /// When it was measured.
    pub measured_at: DateTime<Utc>,
    /// Rollback-trigger breaches in a row.
    #[serde(default)]
    pub breaches: u32,
    /// The breaching values in the current run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breach_values: Vec<f64>,
    /// When the current run of breaches began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_breach_at: Option<DateTime<Utc>>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// A notification owed to one target, with what it announces (as it was when it happened).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Owed {
    /// Idempotency key, stable across retries and restarts: the CloudEvents `id`, the `id` of
    /// the JSON payload and the `Idempotency-Key` header (with the release's uid in front).
    pub id: String,
    /// The target: `spec.notifications[].name`.
    pub target: String,
    /// What happened.
    pub event: crate::api::NotifyEvent,
    /// The version it is about.
    pub version: String,
    /// The stable version at the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<String>,
    /// The phase it announces.
    pub phase: Phase,
    /// The message at the time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When it became owed.
    pub since: DateTime<Utc>,
    /// Delivery attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not before this time (after a failed attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<DateTime<Utc>>,
    /// Why the last attempt failed (URLs reduced to scheme and host).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}
