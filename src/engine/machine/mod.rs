//! The release state machine. Each tick re-reads where the release stands from its status,
//! advances as far as the observations allow, and says what the children should look like.
//!
//! One file per part of a release: `predeploy` (preflight, hooks, backup and migration),
//! `stages` (deploy, verify, traffic steps, approvals), `golive` (windows and metric gates),
//! `rollback` (failure and the way back), `requests` (new releases and on-demand actions),
//! `desired` (the children the status calls for). This file holds what they share.

mod desired;
mod golive;
mod predeploy;
mod requests;
mod rollback;
mod stages;

use super::{names, validate::validate, Decision, EventOut, Observed, Release};
use crate::api::{conditions, FailureReason, LocallReleaseStatus, NotifyEvent, Phase, StableVersion, Wait};
use chrono::{DateTime, TimeDelta, Utc};
use std::time::Duration;

/// The condition recording whether a rollback was verified.
pub const ROLLBACK_VERIFIED: &str = "RollbackVerified";
/// The condition reporting an unusable `locall.io/approve` or `locall.io/request` annotation.
pub const ANNOTATIONS_VALID: &str = "AnnotationsValid";

/// What one step of the machine concluded.
enum Flow {
    /// The status moved on; look again at once.
    Next,
    /// Nothing more to do until something changes, or until the given time has passed.
    Wait(Option<Duration>),
}

/// Accumulates a tick's output while the machine advances.
struct Tick<'a> {
    r: Release<'a>,
    obs: &'a Observed,
    now: DateTime<Utc>,
    st: LocallReleaseStatus,
    /// The wait recorded by the previous tick: a wait on the same thing keeps its start.
    prev_wait: Option<Wait>,
    jobs: Vec<super::JobToCreate>,
    events: Vec<EventOut>,
    notify: Vec<(NotifyEvent, String)>,
    reason: String,
    /// Set when the spec cannot be carried out as it stands: the release holds where it is,
    /// Stalled, and nothing is written to its children.
    stalled: bool,
}

/// One tick of the engine: see the module docs.
pub fn decide(r: Release<'_>, obs: &Observed, now: DateTime<Utc>) -> Decision {
    let mut t = Tick {
        r,
        obs,
        now,
        st: r.status.clone(),
        prev_wait: None,
        jobs: vec![],
        events: vec![],
        notify: vec![],
        reason: String::new(),
        stalled: false,
    };
    t.prev_wait = t.st.wait.take();
    let revision = names::revision(r.spec);
    let problems = validate(r.spec, r.namespace);
    // A rollback that is owed finishes (traffic and database) before the next release starts.
    if t.st.revision != revision && t.st.phase != Phase::RollingBack {
        t.start_release(revision.clone());
    } else if problems.is_empty()
        && t.st.phase == Phase::Failed
        && t.st.failure.as_ref().is_some_and(|f| f.reason == FailureReason::InvalidSpec && !f.traffic_moved)
    {
        // The spec was fixed: the release that could not start starts now, as a new attempt.
        t.start_release(revision.clone());
    }
    // This tick's measurements, if they are about what the gates watch now.
    if let (Some(_), Some(target)) = (&r.spec.analysis, super::gates::target(&r, &t.st)) {
        if obs.measured_target.as_deref() == Some(target.key().as_str()) {
            super::gates::fold(&super::gates::metrics(r.spec, r.name), &mut t.st.gates, &target, &obs.measurements, now);
        }
    }
    t.st.observed_generation = r.generation;

    if let Some(req) = obs.request.as_ref().filter(|q| q.id != t.st.handled_request && !q.id.is_empty()) {
        t.handle_request(req);
    }
    if let Some(refusal) = obs.refused.as_ref().filter(|_| !t.st.phase.is_terminal()) {
        if refusal.candidate || t.st.phase == Phase::RollingBack || !t.needs_undo() {
            t.fail(FailureReason::ChildRefused, &refusal.message);
        } else {
            t.stalled = true;
            t.reason = FailureReason::ChildRefused.as_str().into();
            t.st.message = format!("holding {} where it is until the spec is fixed: {}", t.st.candidate_version, refusal.message);
            t.await_until("a spec the API server accepts", None);
        }
    }
    let mut requeue = None;
    let rolling_back = t.st.phase == Phase::RollingBack;
    if !problems.is_empty() && !t.st.phase.is_terminal() && !rolling_back {
        let msg = problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ");
        if t.needs_undo() {
            // Never roll back a healthy release over an edit: hold where it is until fixed.
            t.stalled = true;
            t.reason = "InvalidSpec".into();
            t.st.message = format!("invalid spec, holding {} where it is until it is fixed: {msg}", t.st.candidate_version);
            t.await_until("a valid spec", None);
        } else {
            t.fail(FailureReason::InvalidSpec, &format!("invalid spec: {msg}"));
        }
    }
    if !t.stalled && (problems.is_empty() || rolling_back) {
        for _ in 0..64 {
            match t.step() {
                Flow::Next => continue,
                Flow::Wait(d) => {
                    requeue = d;
                    break;
                }
            }
        }
    }
    if t.stalled {
        requeue = Some(super::POLL.max(Duration::from_secs(30)));
    }
    if t.st.phase.is_terminal() {
        t.st.wait = None;
    } else if t.st.wait.is_none() {
        // Every branch that waits says on what; this only guards the status against a gap.
        t.await_until(&format!("the next step of {}", t.st.phase), None);
    }
    t.count_ready();
    let frozen = t.stalled || (!problems.is_empty() && !rolling_back);
    let desired = t.desired(frozen);
    let reason = if t.reason.is_empty() { t.st.phase.as_str().to_string() } else { t.reason.clone() };
    t.st.conditions = conditions::for_phase(&t.st.conditions, t.st.phase, &reason, &t.st.message, r.generation, now);
    if t.stalled {
        for (ty, on) in [(conditions::STALLED, true), (conditions::RECONCILING, false)] {
            let (why, msg) = if on { (reason.as_str(), t.st.message.as_str()) } else { ("InvalidSpec", "") };
            let c = conditions::upsert(&t.st.conditions, ty, on, why, msg, r.generation, now);
            conditions::set(&mut t.st.conditions, c);
        }
    }
    // A bad annotation is reported until it is fixed; the condition appears only once one was bad.
    let had = t.st.conditions.iter().any(|c| c.type_ == ANNOTATIONS_VALID);
    if !obs.annotation_errors.is_empty() || had {
        let (ok, reason) = if obs.annotation_errors.is_empty() { (true, "Valid") } else { (false, "InvalidAnnotation") };
        let c = conditions::upsert(&t.st.conditions, ANNOTATIONS_VALID, ok, reason, &obs.annotation_errors.join("; "), r.generation, now);
        conditions::set(&mut t.st.conditions, c);
    }
    // What is announced is owed in the same status write as the change itself.
    super::outbox::owe(&mut t.st, r.spec, &t.notify, now, &mut t.events);
    Decision { status: t.st, desired, jobs: t.jobs, events: t.events, notify: t.notify, requeue }
}

/// `t + d`, saturating at the end of representable time instead of overflowing.
pub(crate) fn add(t: DateTime<Utc>, d: TimeDelta) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t + d` for a std duration, saturating.
pub(crate) fn add_std(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    add(t, TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX))
}

/// How long from `now` until `t` (zero when it has passed).
fn until(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (t - now).to_std().unwrap_or_default()
}

impl<'a> Tick<'a> {
    fn event(&mut self, warning: bool, reason: &str, message: String) {
        self.events.push(EventOut { warning, reason: reason.into(), message });
    }

    fn set_phase(&mut self, phase: Phase, message: String) {
        if self.st.phase != phase {
            self.st.phase = phase;
            self.st.phase_started_at = Some(self.now);
            self.event(matches!(phase, Phase::Failed | Phase::RollingBack | Phase::RolledBack), phase.as_str(), message.clone());
            let n = match phase {
                Phase::AwaitingApproval => Some(NotifyEvent::AwaitingApproval),
                Phase::Succeeded => Some(NotifyEvent::Succeeded),
                Phase::RolledBack => Some(NotifyEvent::RolledBack),
                Phase::Failed => Some(NotifyEvent::Failed),
                _ => None,
            };
            if let Some(n) = n {
                self.notify.push((n, message.clone()));
            }
        }
        self.st.message = message;
    }

    /// Records what the release waits on. A wait on the same thing as at the previous tick keeps
    /// its start, so deadlines run from the moment the wait began, across ticks and restarts.
    fn await_since(&mut self, on: &str) -> DateTime<Utc> {
        let since = match (&self.prev_wait, &self.st.wait) {
            (_, Some(w)) if w.awaiting == on => w.since,
            (Some(w), _) if w.awaiting == on => w.since,
            _ => self.now,
        };
        self.st.wait = Some(Wait { awaiting: on.to_string(), since, until: None });
        since
    }

    /// Waits on `on` until a known time (the end of a pause or window), or with no end.
    fn await_until(&mut self, on: &str, until: Option<DateTime<Utc>>) {
        self.await_since(on);
        if let Some(w) = self.st.wait.as_mut() {
            w.until = until;
        }
    }

    /// Waits on `on` for at most `limit` from when the wait began: true once that has passed.
    fn await_deadline(&mut self, on: &str, limit: TimeDelta) -> bool {
        let since = self.await_since(on);
        let deadline = add(since, limit);
        if let Some(w) = self.st.wait.as_mut() {
            w.until = Some(deadline);
        }
        self.now >= deadline
    }

    fn step(&mut self) -> Flow {
        if self.st.paused && !self.st.phase.is_terminal() && self.st.phase != Phase::RollingBack {
            self.st.message = "paused (a `resume` request in the locall.io/request annotation continues it)".into();
            self.reason = "Paused".into();
            self.await_until("a resume request (paused)", None);
            return Flow::Wait(None);
        }
        match self.st.phase {
            Phase::Pending => {
                let from = self.st.stable.as_ref().map(|s| s.version.clone()).unwrap_or_else(|| "nothing".into());
                self.set_phase(Phase::PreDeploy, format!("releasing {} (from {from})", self.st.candidate_version));
                Flow::Next
            }
            Phase::PreDeploy => self.pre_deploy(),
            Phase::AwaitingApproval => self.awaiting_approval(),
            Phase::Staging | Phase::Production => self.stage(),
            Phase::GoLive => self.go_live(),
            Phase::RollingBack => self.rolling_back(),
            Phase::Succeeded | Phase::RolledBack | Phase::Failed => Flow::Wait(None),
        }
    }

    /// The stable version, unless it is the very revision being released.
    fn stable(&self) -> Option<&StableVersion> {
        self.st.stable.as_ref().filter(|s| s.revision != self.st.revision)
    }

    /// The release as this tick has moved it so far (its status is the one being computed).
    fn current(&self) -> Release<'_> {
        Release { status: &self.st, ..self.r }
    }

    /// Ready pods of a part's Deployment of a revision in a namespace, as observed.
    fn ready(&self, ns: &str, part: &super::Part, revision: &str) -> i32 {
        let dep = names::deployment(&part.base(self.r.name), revision);
        self.obs.deployments.get(&(ns.to_string(), dep)).map_or(0, |d| d.ready)
    }

    /// Each component's Ready pods of the version in flight where the release stands (the
    /// current stage, else the last one reached), and how many components are Ready.
    fn count_ready(&mut self) {
        if self.st.components.is_empty() {
            self.st.components_ready = None;
            return;
        }
        let at = self.st.reached.iter().find(|s| s.name == self.st.stage).or(self.st.reached.last()).cloned();
        let mut ready = 0;
        let parts = self.parts();
        for (c, part) in self.st.components.clone().iter().zip(parts.iter()) {
            let text = match &at {
                Some(s) => {
                    let n = part.replicas_in(s.replicas);
                    let r = self.ready(&s.namespace, part, &self.st.revision);
                    if r >= n {
                        ready += 1;
                    }
                    format!("{}/{n}", r.min(n))
                }
                None => String::new(),
            };
            if let Some(x) = self.st.components.iter_mut().find(|x| x.name == c.name) {
                x.ready = text;
            }
        }
        self.st.components_ready = Some(format!("{ready}/{}", self.st.components.len()));
    }

    /// The parts of the version in flight, as recorded when it started.
    fn parts(&self) -> Vec<super::Part> {
        super::parts_of(&self.st.components)
    }

    /// The stable version where it runs in namespace `ns` (not a stage added since).
    fn stable_in(&self, ns: &str) -> Option<&StableVersion> {
        self.stable().filter(|s| s.namespaces.is_empty() || s.namespaces.iter().any(|n| n == ns))
    }

    /// The attempt part of this release's Job names and backup id.
    fn attempt(&self) -> String {
        names::attempt(&self.st.revision, self.st.sequence)
    }

    /// Whether the spec still describes the release in flight (its version and template).
    fn spec_is_current(&self) -> bool {
        names::revision(self.r.spec) == self.st.revision
    }

    /// Holds the release where it is: the spec no longer allows it to go on safely.
    fn hold_for_spec(&mut self, message: String) -> Flow {
        self.stalled = true;
        self.reason = "SpecConflict".into();
        self.st.message = message;
        self.await_until("a spec that matches the release in flight", None);
        Flow::Wait(Some(Duration::from_secs(30)))
    }
}
