//! The release engine: pure code, no client. `decide` takes the release (spec and status), an
//! observed snapshot of its children and the time, and returns the next status, the desired
//! state of the children, the Jobs to create, the Events to emit and when to look again.
//! Whole releases are driven through it tick by tick in the tests, with no cluster.

pub mod gates;
mod machine;
pub mod names;
pub mod outbox;
pub mod traffic;
pub mod validate;

#[cfg(test)]
mod tests;

use crate::api::{Approval, CheckResult, ComponentRef, JobRecord, JobTemplate, LocallReleaseSpec, LocallReleaseStatus};
use chrono::{DateTime, Utc};
use std::{collections::BTreeMap, time::Duration};

pub use machine::{decide, ANNOTATIONS_VALID, ROLLBACK_VERIFIED};

/// The release as read from the API server.
#[derive(Clone, Copy, Debug)]
pub struct Release<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a LocallReleaseSpec,
    pub status: &'a LocallReleaseStatus,
}

/// What the controller saw of the release's children this tick.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Deployments labelled with the release, by (namespace, name).
    pub deployments: BTreeMap<(String, String), DeploymentObs>,
    /// Jobs labelled with the release, by (namespace, name).
    pub jobs: BTreeMap<(String, String), JobObs>,
    /// Preflight results, computed while the release is in Pending or PreDeploy.
    pub preflight: Option<Vec<CheckResult>>,
    /// The candidate's effective share of traffic (0-100) in each stage namespace, as routed now.
    pub traffic: BTreeMap<String, i32>,
    /// The approval granted through the `locall.io/approve` annotation, if any.
    pub annotation_approval: Option<Approval>,
    /// Who changed `spec.version`, and to what, per the annotations the API server's admission
    /// policy sets (`locall.io/requested-by`, `locall.io/requested-version`).
    pub requested: Option<(String, String)>,
    /// The imperative request in the `locall.io/request` annotation, if any.
    pub request: Option<crate::api::Request>,
    /// Problems with the operator's annotations (each message names the annotation).
    pub annotation_errors: Vec<String>,
    /// Metric measurements taken this tick, by metric name, for the target named below.
    pub measurements: BTreeMap<String, gates::Measurement>,
    /// `gates::Target::key()` of what was measured.
    pub measured_target: Option<String>,
    /// The API server refused, for good (400/422), a child this status calls for.
    pub refused: Option<Refusal>,
}

/// A child the API server refused for good.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusal {
    /// Names the object and, where there is one, the release's field.
    pub message: String,
    /// The object was the candidate's own Deployment: the new version cannot run as it is, so
    /// the release fails (rolling back what had moved). Anything else (a Service, the route, a
    /// hook's Job: what a spec edit can touch mid-flight) fails a release that moved nothing
    /// yet, and holds one that did where it is, Stalled, until the spec is fixed: an edit never
    /// rolls back a healthy release.
    pub candidate: bool,
}

/// A Deployment's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentObs {
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    /// The Deployment controller has seen its latest spec.
    pub current: bool,
}

/// A Job's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobObs {
    Running,
    Succeeded,
    Failed { reason: String, message: String },
}

/// The engine's answer for one tick.
#[derive(Clone, Debug)]
pub struct Decision {
    pub status: LocallReleaseStatus,
    pub desired: Desired,
    pub jobs: Vec<JobToCreate>,
    pub events: Vec<EventOut>,
    /// Notifications to send (event, summary).
    pub notify: Vec<(crate::api::NotifyEvent, String)>,
    /// When to look again; `None` waits for a change.
    pub requeue: Option<Duration>,
}

/// The children the release should have now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub stages: Vec<StageDesired>,
    /// The spec cannot be carried out as it stands: write nothing to the children until it is
    /// fixed (the status says why, naming the field).
    pub frozen: bool,
}

/// One part of a stage: the Deployments and traffic of the release's template (`component`
/// `None`) or of one of its components.
#[derive(Clone, Debug, PartialEq)]
pub struct StageDesired {
    pub index: usize,
    pub name: String,
    pub namespace: String,
    /// The component, in a multi-component release.
    pub component: Option<String>,
    pub replicas: i32,
    pub deployments: Vec<DeploymentDesired>,
    /// `None` until the stage has a version to route to.
    pub traffic: Option<TrafficTarget>,
}

impl StageDesired {
    /// What this part's object names start with (see [`names::base`]).
    pub fn base(&self, release: &str) -> String {
        names::base(release, self.component.as_deref())
    }
}

/// One revision's Deployment in a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentDesired {
    pub revision: String,
    pub version: String,
    pub replicas: i32,
    /// Built from the current spec (the candidate); otherwise only its replicas are managed,
    /// since the spec no longer holds an older version's template.
    pub from_spec: bool,
}

/// Where a stage's traffic should go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficTarget {
    pub stable: Option<String>,
    pub candidate: Option<String>,
    /// The candidate's share, 0-100.
    pub weight: i32,
    /// Replicas of the stable version (for the replica-ratio router).
    pub stable_replicas: i32,
    /// Replicas of the candidate.
    pub candidate_replicas: i32,
}

/// A Job to create; its name is deterministic.
#[derive(Clone, Debug, PartialEq)]
pub struct JobToCreate {
    pub record: JobRecord,
    pub template: JobTemplate,
    pub backup_id: Option<String>,
}

/// An Event about the release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventOut {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// One deployable part of a release: its single template (`component: None`) or a component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub component: Option<String>,
    /// Takes part in the traffic steps (has a Service).
    pub routed: bool,
    /// Its own replicas in every stage, if it sets them.
    pub replicas: Option<i32>,
    /// Components whose new version is Ready in a stage before this one is deployed there.
    pub after: Vec<String>,
}

impl Part {
    /// The one part of a release of a single template.
    pub fn single() -> Part {
        Part { component: None, routed: true, replicas: None, after: vec![] }
    }
    /// What its objects' names start with: the release's name, or `<release>-<component>`.
    pub fn base(&self, release: &str) -> String {
        names::base(release, self.component.as_deref())
    }
    /// Its replicas in a stage that runs `stage_replicas` by default.
    pub fn replicas_in(&self, stage_replicas: i32) -> i32 {
        self.replicas.unwrap_or(stage_replicas)
    }
    /// The key of its observed traffic share in a namespace.
    pub fn key(&self, namespace: &str) -> String {
        names::traffic_key(namespace, self.component.as_deref())
    }
    /// `component api: ` or nothing, to start a message with.
    pub fn label(&self) -> String {
        self.component.as_ref().map(|c| format!("component {c}: ")).unwrap_or_default()
    }
}

/// The parts a recorded component list stands for (none recorded: the single template).
pub fn parts_of(list: &[ComponentRef]) -> Vec<Part> {
    if list.is_empty() {
        return vec![Part::single()];
    }
    list.iter().map(|c| Part { component: Some(c.name.clone()), routed: c.routed, replicas: c.replicas, after: c.after.clone() }).collect()
}

/// The components a spec releases, as recorded in status when its release starts.
pub fn spec_components(spec: &LocallReleaseSpec) -> Vec<ComponentRef> {
    spec.components
        .iter()
        .map(|c| ComponentRef {
            name: c.name.clone(),
            routed: c.service.is_some(),
            replicas: c.replicas,
            after: c.after.clone(),
            ready: String::new(),
        })
        .collect()
}

/// Seconds to wait between looks while something is in flight (watches usually wake us sooner).
pub const POLL: Duration = Duration::from_secs(5);
/// How long a Deployment may take to become Ready, or traffic to shift, before the release fails.
pub const PROGRESS_DEADLINE: chrono::TimeDelta = chrono::TimeDelta::minutes(10);
/// How long a created Job may stay invisible before it counts as missing.
pub const JOB_MISSING_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

impl Decision {
    /// The act carrying this decision out was refused at `object` (`Job ns/name`, or any other
    /// object: then every Job was created, as Jobs come first). Jobs are created in order, so the
    /// refused one and those after it do not exist: neither their records in status nor their
    /// `JobCreated` Events may say otherwise.
    pub fn job_refused(&mut self, object: &str) {
        let Some(i) = self.jobs.iter().position(|j| object == format!("Job {}/{}", j.record.namespace, j.record.job_name)) else {
            return;
        };
        let gone: Vec<String> = self.jobs.drain(i..).map(|j| format!("{}/{}", j.record.namespace, j.record.job_name)).collect();
        self.status.jobs.retain(|r| !gone.contains(&format!("{}/{}", r.namespace, r.job_name)));
        self.events.retain(|ev| ev.reason != "JobCreated" || !gone.iter().any(|g| ev.message.contains(&format!("Job {g} "))));
    }
}

/// The `Ready` and `Reconciling` reason while the API server holds the release up.
pub const HELD: &str = "ChildWriteFailed";

/// The status to show while the API server holds the release up with `problem` (a namespace
/// missing, a permission, a child it refuses where the engine cannot act on it): everything
/// else as it was, `Ready=False` and `Reconciling=True` saying what the problem is, so neither
/// the conditions nor `kubectl get lr` claim a spec that has not been carried out.
pub fn held(st: &LocallReleaseStatus, problem: &str, generation: Option<i64>, now: DateTime<Utc>) -> LocallReleaseStatus {
    use crate::api::conditions;
    let mut st = st.clone();
    for (ty, on) in [(conditions::READY, false), (conditions::RECONCILING, true)] {
        let c = conditions::upsert(&st.conditions, ty, on, HELD, problem, generation, now);
        conditions::set(&mut st.conditions, c);
    }
    st
}

/// The candidate revision a snapshot is taken for: the spec's, unless a rollback under way must
/// finish first (then the one in status). `decide` starts a new release on exactly this rule.
pub fn candidate_revision(spec: &LocallReleaseSpec, status: &LocallReleaseStatus) -> String {
    if status.phase == crate::api::Phase::RollingBack {
        status.revision.clone()
    } else {
        names::revision(spec)
    }
}

/// The stages whose traffic a snapshot reads: every stage of the spec (in the namespace the
/// candidate went to, if it went), then those the candidate reached that the spec no longer
/// lists. (name, namespace, replicas, index in the spec).
pub fn stages_in_play(r: &Release<'_>) -> Vec<(String, String, i32, Option<usize>)> {
    let spec = r.spec;
    let mut list: Vec<_> = spec
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let ns = gates::stage_namespace(r, r.status, &s.name).unwrap_or_else(|| spec.stage_namespace(i, r.namespace).to_string());
            (s.name.clone(), ns, spec.stage_replicas(i), Some(i))
        })
        .collect();
    for s in &r.status.reached {
        if !spec.stages.iter().any(|x| x.name == s.name) {
            list.push((s.name.clone(), s.namespace.clone(), s.replicas, None));
        }
    }
    list
}

/// The measurements due now for what the gates watch: the target and its queries.
pub fn measurements_due(r: &Release<'_>, now: DateTime<Utc>) -> Option<(gates::Target, Vec<gates::Request>)> {
    r.spec.analysis.as_ref()?;
    let t = gates::target(r, r.status)?;
    let due = gates::due(&gates::metrics(r.spec, r.name), &r.status.gates, &t, now);
    (!due.is_empty()).then_some((t, due))
}

impl Decision {
    /// When the controller looks again: at the engine's word (at least 100 ms later), else in
    /// a minute, or only on a change once the release has ended.
    pub fn next_look(&self) -> Option<Duration> {
        match self.requeue {
            Some(d) => Some(d.max(Duration::from_millis(100))),
            None if self.status.phase.is_terminal() => None,
            None => Some(Duration::from_secs(60)),
        }
    }
}

/// `now + d`, saturating at the end of representable time: a pause of a thousand years waits,
/// it does not overflow.
pub(crate) fn now_plus(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    machine::add_std(now, d)
}

#[cfg(test)]
mod time_tests {
    use chrono::{DateTime, Utc};

    #[test]
    fn time_arithmetic_saturates_instead_of_panicking() {
        let now = Utc::now();
        assert_eq!(super::now_plus(now, std::time::Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(super::now_plus(DateTime::<Utc>::MAX_UTC, std::time::Duration::from_secs(1)), DateTime::<Utc>::MAX_UTC);
    }
}

#[cfg(test)]
mod held_tests {
    use super::*;
    use crate::api::{conditions, Phase};

    #[test]
    fn a_held_release_says_why_and_a_second_identical_problem_changes_nothing() {
        let now = Utc::now();
        let mut st = LocallReleaseStatus { phase: Phase::Succeeded, candidate_version: "1.0.0".into(), ..Default::default() };
        st.conditions = conditions::for_phase(&[], Phase::Succeeded, "Succeeded", "1.0.0 released", Some(1), now);
        let problem = "could not apply Deployment gone/api-1: namespaces \"gone\" not found";
        let held = held(&st, problem, Some(2), now);
        assert_eq!((held.phase, held.candidate_version.as_str()), (Phase::Succeeded, "1.0.0"), "nothing else changes");
        let ready = held.conditions.iter().find(|c| c.type_ == conditions::READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str(), ready.message.as_str()), ("False", HELD, problem));
        let reconciling = held.conditions.iter().find(|c| c.type_ == conditions::RECONCILING).unwrap();
        assert_eq!(reconciling.status, "True");
        // The next failing reconcile computes the same status: no write.
        assert_eq!(super::held(&held, problem, Some(2), now + chrono::TimeDelta::seconds(30)), held);
    }
}
