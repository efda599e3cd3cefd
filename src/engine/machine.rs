//! The release state machine. Each tick re-reads where the release stands from its status,
//! advances as far as the observations allow, and says what the children should look like.

use super::{
    gates::{self, Outcome},
    names, now_plus, traffic,
    validate::validate,
    Decision, DeploymentDesired, Desired, EventOut, JobObs, JobToCreate, Observed, Release, StageDesired, TrafficTarget, JOB_MISSING_AFTER,
    POLL, PROGRESS_DEADLINE,
};
use crate::api::{
    conditions, ApprovalRecord, Failure, GateStatus, JobKind, JobRecord, JobState, JobTemplate, LocallReleaseStatus, MetricBreach,
    NotifyEvent, Phase, StableVersion,
};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The condition recording whether a rollback was verified.
pub const ROLLBACK_VERIFIED: &str = "RollbackVerified";
/// The condition reporting an unusable `locall.io/approve` or `locall.io/request` annotation.
pub const ANNOTATIONS_VALID: &str = "AnnotationsValid";

/// Where one Job stands.
enum JobStep {
    /// Succeeded: go on.
    Done,
    /// Not finished: stop here with this flow.
    Wait(Flow),
    /// Failed, with the message that names it and its reason.
    Failed(String),
}

/// What the gates say about moving on.
enum GateFlow {
    Hold(String),
    Stop(Flow),
}

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
    jobs: Vec<JobToCreate>,
    events: Vec<EventOut>,
    notify: Vec<(NotifyEvent, String)>,
    reason: String,
}

/// One tick of the engine: see the module docs.
pub fn decide(r: Release<'_>, obs: &Observed, now: DateTime<Utc>) -> Decision {
    let mut t = Tick { r, obs, now, st: r.status.clone(), jobs: vec![], events: vec![], notify: vec![], reason: String::new() };
    let revision = names::revision(r.spec);
    if t.st.revision != revision {
        t.start_release(revision);
    }
    // This tick's measurements, if they are about what the gates watch now.
    if let (Some(a), Some(target)) = (&r.spec.analysis, gates::target(&r, &t.st)) {
        if obs.measured_target.as_deref() == Some(target.key().as_str()) {
            gates::fold(&a.metrics, &mut t.st.gates, &target, &obs.measurements, now);
        }
    }
    t.st.observed_generation = r.generation;

    if let Some(req) = obs.request.as_ref().filter(|q| q.id != t.st.handled_request && !q.id.is_empty()) {
        t.handle_request(req);
    }
    let problems = validate(r.spec);
    let mut requeue = None;
    if !problems.is_empty() && !t.st.phase.is_terminal() {
        let msg = problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ");
        t.fail("InvalidSpec", &format!("invalid spec: {msg}"));
    }
    if problems.is_empty() || t.st.phase == Phase::RollingBack {
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
    let desired = t.desired();
    let reason = if t.reason.is_empty() { t.st.phase.as_str().to_string() } else { t.reason.clone() };
    t.st.conditions = conditions::for_phase(&t.st.conditions, t.st.phase, &reason, &t.st.message, r.generation, now);
    // A bad annotation is reported until it is fixed; the condition appears only once one was bad.
    let had = t.st.conditions.iter().any(|c| c.type_ == ANNOTATIONS_VALID);
    if !obs.annotation_errors.is_empty() || had {
        let (ok, reason) = if obs.annotation_errors.is_empty() { (true, "Valid") } else { (false, "InvalidAnnotation") };
        let c = conditions::upsert(&t.st.conditions, ANNOTATIONS_VALID, ok, reason, &obs.annotation_errors.join("; "), r.generation, now);
        conditions::set(&mut t.st.conditions, c);
    }
    Decision { status: t.st, desired, jobs: t.jobs, events: t.events, notify: t.notify, requeue }
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

    /// A new revision of the spec: a new release starts from the last good version.
    fn start_release(&mut self, revision: String) {
        let s = &mut self.st;
        let version = self.r.spec.version.clone();
        if !s.revision.is_empty() && !s.phase.is_terminal() {
            let old = s.candidate_version.clone();
            self.events.push(EventOut {
                warning: true,
                reason: "Superseded".into(),
                message: format!("release of {old} superseded by {version} before it finished"),
            });
        }
        let stable = self.st.stable.clone();
        let mut conditions = std::mem::take(&mut self.st.conditions);
        conditions.retain(|c| c.type_ != ROLLBACK_VERIFIED);
        let handled_request = std::mem::take(&mut self.st.handled_request);
        self.st = LocallReleaseStatus { revision, candidate_version: version, stable, conditions, handled_request, ..Default::default() };
        self.st.phase_started_at = Some(self.now);
    }

    fn handle_request(&mut self, req: &crate::api::Request) {
        self.st.handled_request = req.id.clone();
        let by = if req.by.is_empty() { "someone".to_string() } else { req.by.clone() };
        let active = !self.st.phase.is_terminal();
        match req.action.as_str() {
            "rollback" | "abort" if active => {
                self.event(true, "RollbackRequested", format!("{} requested by {by}", req.action));
                self.fail("ManualRollback", &format!("{} requested by {by}", req.action));
            }
            "retry" if matches!(self.st.phase, Phase::Failed | Phase::RolledBack) => {
                let attempt = self.st.attempt + 1;
                let revision = self.st.revision.clone();
                self.start_release(revision);
                self.st.attempt = attempt;
                self.st.handled_request = req.id.clone();
                self.event(false, "RetryRequested", format!("retry {attempt} of {} requested by {by}", self.r.spec.version));
            }
            "pause" if active => {
                self.st.paused = true;
                self.event(false, "Paused", format!("paused by {by}"));
            }
            "resume" if self.st.paused => {
                self.st.paused = false;
                self.event(false, "Resumed", format!("resumed by {by}"));
            }
            "promote" if active => {
                self.st.promoted_step = Some(self.st.step);
                self.event(false, "PromoteRequested", format!("promote past step {} requested by {by}", self.st.step + 1));
            }
            "promote-full" if active => {
                self.st.promoted_full = true;
                self.event(false, "PromoteRequested", format!("full promotion requested by {by}"));
            }
            other => self.event(true, "RequestIgnored", format!("request {other:?} by {by} does not apply in phase {}", self.st.phase)),
        }
    }

    fn step(&mut self) -> Flow {
        if self.st.paused && !self.st.phase.is_terminal() && self.st.phase != Phase::RollingBack {
            self.st.message = "paused (a `resume` request in the locall.io/request annotation continues it)".into();
            self.reason = "Paused".into();
            return Flow::Wait(None);
        }
        match self.st.phase {
            Phase::Pending => {
                let from = self.st.stable.as_ref().map(|s| s.version.clone()).unwrap_or_else(|| "nothing".into());
                self.set_phase(Phase::PreDeploy, format!("releasing {} (from {from})", self.r.spec.version));
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

    // ---- pre-deploy ----

    fn pre_deploy(&mut self) -> Flow {
        if self.st.preflight.is_empty() || self.st.preflight.iter().any(|c| !c.passed) {
            let Some(results) = &self.obs.preflight else { return Flow::Wait(Some(POLL)) };
            self.st.preflight = results.clone();
            let failed: Vec<_> = results.iter().filter(|c| !c.passed).map(|c| c.message.clone()).collect();
            if !failed.is_empty() {
                self.fail("PreflightFailed", &format!("preflight failed: {}", failed.join("; ")));
                return Flow::Next;
            }
            if !results.is_empty() {
                self.event(false, "PreflightPassed", format!("{} preflight checks passed", results.len()));
            }
        }
        let ns = self.r.namespace.to_string();
        let hooks = self.r.spec.hooks.clone().unwrap_or_default();
        for h in &hooks.pre_deploy {
            match self.run_job(JobKind::PreDeploy, &h.name, "", &ns, &h.job, &format!("pre-{}", h.name)) {
                Some(f) => return f,
                None => continue,
            }
        }
        if let Some(m) = &hooks.migration {
            let backup_id = names::job(self.r.name, &self.st.revision, "backup");
            if self.st.backup_id.is_none() {
                self.st.backup_id = Some(backup_id);
            }
            if let Some(f) = self.run_job(JobKind::Backup, "backup", "", &ns, &m.backup, "backup") {
                return f;
            }
            if let Some(f) = self.run_job(JobKind::Migrate, "migrate", "", &ns, &m.migrate, "migrate") {
                return f;
            }
        }
        self.enter_stage(0);
        Flow::Next
    }

    /// Drives one Job and fails the release if it fails: `None` when it has succeeded (go on),
    /// `Some(flow)` when the caller must stop here.
    fn run_job(&mut self, kind: JobKind, name: &str, stage: &str, ns: &str, tpl: &JobTemplate, suffix: &str) -> Option<Flow> {
        match self.job_step(kind, name, stage, ns, tpl, suffix) {
            JobStep::Done => None,
            JobStep::Wait(flow) => Some(flow),
            JobStep::Failed(msg) => {
                self.fail("JobFailed", &msg);
                Some(Flow::Next)
            }
        }
    }

    /// Drives one Job: creates it once, follows it, records its outcome, and says where it stands;
    /// what a failure means is the caller's to decide.
    fn job_step(&mut self, kind: JobKind, name: &str, stage: &str, ns: &str, tpl: &JobTemplate, suffix: &str) -> JobStep {
        let job_name = names::job(self.r.name, &self.job_rev(), suffix);
        let idx = self.st.jobs.iter().position(|j| j.job_name == job_name && j.namespace == ns);
        let observed = self.obs.jobs.get(&(ns.to_string(), job_name.clone()));
        let idx = match idx {
            Some(i) => i,
            None => {
                // Not recorded yet. If it exists (created before a restart), adopt it; else create it.
                let record = JobRecord {
                    name: name.into(),
                    kind,
                    stage: stage.into(),
                    job_name: job_name.clone(),
                    namespace: ns.into(),
                    state: JobState::Running,
                    reason: String::new(),
                    message: String::new(),
                    started_at: Some(self.now),
                    finished_at: None,
                };
                if observed.is_none() {
                    let backup_id = match kind {
                        JobKind::Backup | JobKind::Migrate | JobKind::Restore => self.st.backup_id.clone(),
                        _ => None,
                    };
                    self.jobs.push(JobToCreate { record: record.clone(), template: tpl.clone(), backup_id });
                    self.event(false, "JobCreated", format!("created Job {ns}/{job_name} ({kind:?} {name})"));
                }
                self.st.jobs.push(record);
                self.st.jobs.len() - 1
            }
        };
        let rec = &mut self.st.jobs[idx];
        match (rec.state, observed) {
            (JobState::Succeeded, _) => JobStep::Done,
            (JobState::Failed, _) => JobStep::Failed(job_failure_message(rec)),
            (JobState::Running, Some(JobObs::Succeeded)) => {
                rec.state = JobState::Succeeded;
                rec.reason = "Complete".into();
                rec.finished_at = Some(self.now);
                let m = format!("Job {ns}/{job_name} ({kind:?} {name}) succeeded");
                self.event(false, "JobSucceeded", m);
                JobStep::Done
            }
            (JobState::Running, Some(JobObs::Failed { reason, message })) => {
                rec.state = JobState::Failed;
                rec.reason = reason.clone();
                rec.message = message.clone();
                rec.finished_at = Some(self.now);
                JobStep::Failed(job_failure_message(rec))
            }
            (JobState::Running, Some(JobObs::Running)) => {
                self.st.message = format!("waiting for Job {ns}/{job_name} ({kind:?} {name})");
                JobStep::Wait(Flow::Wait(Some(POLL)))
            }
            (JobState::Running, None) => {
                let since = rec.started_at.unwrap_or(self.now);
                if self.now - since > JOB_MISSING_AFTER {
                    rec.state = JobState::Failed;
                    rec.reason = "JobMissing".into();
                    rec.message = "the Job disappeared before it finished; it is not created again".into();
                    rec.finished_at = Some(self.now);
                    return JobStep::Failed(job_failure_message(rec));
                }
                self.st.message = format!("waiting for Job {ns}/{job_name} ({kind:?} {name})");
                JobStep::Wait(Flow::Wait(Some(Duration::from_secs(2))))
            }
        }
    }

    // ---- stages ----

    fn stage_phase(&self, i: usize) -> Phase {
        if i + 1 == self.r.spec.stages.len() {
            Phase::Production
        } else {
            Phase::Staging
        }
    }

    fn enter_stage(&mut self, i: usize) {
        let stage = &self.r.spec.stages[i];
        self.st.stage_index = i as u32;
        self.st.stage = stage.name.clone();
        self.st.step = 0;
        self.st.weight = 0;
        self.st.step_started_at = None;
        self.st.stage_ready_at = None;
        self.st.promoted_step = None;
        if stage.approval && !self.st.approvals.iter().any(|a| a.stage == stage.name) {
            let msg = format!("stage {} of {} waits for approval", stage.name, self.r.spec.version);
            self.set_phase(Phase::AwaitingApproval, msg);
        } else {
            let msg = format!("deploying {} to stage {}", self.r.spec.version, stage.name);
            self.set_phase(self.stage_phase(i), msg);
        }
    }

    fn awaiting_approval(&mut self) -> Flow {
        let i = self.st.stage_index as usize;
        let stage = self.r.spec.stages[i].name.clone();
        let version = self.r.spec.version.clone();
        let from_spec = self.r.spec.approvals.iter().find(|a| a.stage == stage && a.version == version).map(|a| (a.by.clone(), "spec"));
        let from_annotation = || {
            self.obs.annotation_approval.as_ref().filter(|a| a.stage == stage && a.version == version).map(|a| (a.by.clone(), "annotation"))
        };
        let Some((by, source)) = from_spec.or_else(from_annotation) else {
            return Flow::Wait(None);
        };
        self.st.approvals.push(ApprovalRecord { stage: stage.clone(), by: by.clone(), at: self.now, source: source.into() });
        self.event(false, "Approved", format!("stage {stage} of {version} approved by {by} ({source})"));
        self.enter_stage(i);
        Flow::Next
    }

    fn stage_namespace(&self, i: usize) -> String {
        self.r.spec.stage_namespace(i, self.r.namespace).to_string()
    }

    fn stage(&mut self) -> Flow {
        let i = self.st.stage_index as usize;
        let ns = self.stage_namespace(i);
        let stage = self.r.spec.stages[i].clone();
        let replicas = self.r.spec.stage_replicas(i);
        self.st.candidate_stages = self.st.candidate_stages.max(i as u32 + 1);

        // 1. The candidate is deployed at full size and Ready, before verification or traffic.
        if self.st.stage_ready_at.is_none() {
            let dep = names::deployment(self.r.name, &self.st.revision);
            let ready = self
                .obs
                .deployments
                .get(&(ns.clone(), dep.clone()))
                .is_some_and(|d| d.current && d.ready >= replicas && d.updated >= replicas);
            if !ready {
                let started = self.st.phase_started_at.unwrap_or(self.now);
                if self.now - started > PROGRESS_DEADLINE {
                    self.fail(
                        "DeploymentNotReady",
                        &format!("Deployment {ns}/{dep} was not Ready within {} minutes", PROGRESS_DEADLINE.num_minutes()),
                    );
                    return Flow::Next;
                }
                self.st.message = format!("waiting for Deployment {ns}/{dep} to be Ready ({replicas} replicas)");
                return Flow::Wait(Some(POLL));
            }
            self.st.stage_ready_at = Some(self.now);
            self.event(false, "Deployed", format!("{} Ready in stage {} ({replicas} replicas)", self.r.spec.version, stage.name));
        }
        // 2. Verification Jobs, in order.
        for v in &stage.verify {
            let suffix = format!("{}-{}", stage.name, v.name);
            if let Some(f) = self.run_job(JobKind::Verify, &v.name, &stage.name, &ns, &v.job, &suffix) {
                return f;
            }
        }
        // 3. Traffic steps: reach the weight (verified on the router), then hold it.
        let weights = self.weights(i);
        let step = (self.st.step as usize).min(weights.len() - 1);
        let (weight, pause) = weights[step];
        self.st.weight = weight;
        let has_stable = self.stable().is_some();
        let method = self.r.spec.traffic.method;
        let c = traffic::candidate_replicas(method, replicas, weight, has_stable);
        let want = traffic::effective_weight(method, replicas, c, weight, has_stable);
        if self.st.step_started_at.is_none() {
            let seen = self.obs.traffic.get(&ns).copied();
            if seen != Some(want) {
                let since = self.st.stage_ready_at.unwrap_or(self.now);
                if self.now - since > PROGRESS_DEADLINE + PROGRESS_DEADLINE {
                    self.fail(
                        "TrafficNotShifted",
                        &format!("stage {}: traffic did not reach {want}% in time (last seen {seen:?})", stage.name),
                    );
                    return Flow::Next;
                }
                self.st.message = format!("stage {}: shifting {weight}% of traffic to {}", stage.name, self.r.spec.version);
                return Flow::Wait(Some(Duration::from_secs(2)));
            }
            self.st.step_started_at = Some(self.now);
            self.event(
                false,
                "TrafficShifted",
                format!("stage {}: {want}% of traffic on {} (step {}/{})", stage.name, self.r.spec.version, step + 1, weights.len()),
            );
        }
        let since = self.st.step_started_at.unwrap_or(self.now);
        let context = format!("stage {}, step {}/{} ({weight}%)", stage.name, step + 1, weights.len());
        let gate = self.gates(&context, Some(since));
        if let Some(GateFlow::Stop(f)) = gate {
            return f;
        }
        let next_measure = self.next_measure();
        let promoted = self.st.promoted_full || self.st.promoted_step == Some(step as u32);
        if let Some(p) = pause.filter(|_| !promoted) {
            let until = now_plus(since, p);
            if self.now < until {
                self.st.message = format!("stage {}: holding {weight}% until {}", stage.name, until.format("%H:%M:%S"));
                let wait = (until - self.now).to_std().unwrap_or_default();
                return Flow::Wait(Some(next_measure.map_or(wait, |m| m.min(wait))));
            }
        }
        // At the very last step the go-live windows take over the watching, if there are any.
        let watched_after = i + 1 == self.r.spec.stages.len()
            && step + 1 == weights.len()
            && self.r.spec.go_live.as_ref().is_some_and(|g| !g.effective().is_empty());
        if let (Some(GateFlow::Hold(why)), false) = (&gate, watched_after || promoted) {
            self.st.message = format!("stage {}: holding {weight}%: metric gates not passed ({why})", stage.name);
            self.reason = "GateHold".into();
            return Flow::Wait(next_measure.or(Some(super::POLL)));
        }
        if step + 1 < weights.len() {
            self.st.step = if self.st.promoted_full { weights.len() as u32 - 1 } else { step as u32 + 1 };
            self.st.promoted_step = None;
            self.st.step_started_at = None;
            return Flow::Next;
        }
        // The stage is at 100%.
        if i + 1 < self.r.spec.stages.len() {
            self.event(false, "StageComplete", format!("stage {} runs {}", stage.name, self.r.spec.version));
            self.enter_stage(i + 1);
            return Flow::Next;
        }
        let release_ns = self.r.namespace.to_string();
        let post = self.r.spec.hooks.as_ref().map(|h| h.post_deploy.clone()).unwrap_or_default();
        for h in &post {
            if let Some(f) = self.run_job(JobKind::PostDeploy, &h.name, "", &release_ns, &h.job, &format!("post-{}", h.name)) {
                return f;
            }
        }
        self.set_phase(Phase::GoLive, format!("{} serves all production traffic", self.r.spec.version));
        Flow::Next
    }

    /// The stable version, unless it is the very revision being released.
    fn stable(&self) -> Option<&StableVersion> {
        self.st.stable.as_ref().filter(|s| s.revision != self.st.revision)
    }

    /// The stage's steps as (weight, pause). The very first release has nothing to shift from.
    fn weights(&self, i: usize) -> Vec<(i32, Option<Duration>)> {
        let stage = &self.r.spec.stages[i];
        if self.stable().is_none() || stage.steps.is_empty() {
            return vec![(100, None)];
        }
        stage.steps.iter().map(|s| (s.weight, s.pause.as_ref().map(|d| d.get()))).collect()
    }

    /// The revision part of Job names: a retry gets fresh names, so it really runs again.
    fn job_rev(&self) -> String {
        if self.st.attempt == 0 {
            self.st.revision.clone()
        } else {
            format!("{}-r{}", self.st.revision, self.st.attempt)
        }
    }

    fn job_succeeded(&self, job_name: &str) -> bool {
        self.st.jobs.iter().any(|j| j.job_name == job_name && j.state == JobState::Succeeded)
    }

    fn go_live(&mut self) -> Flow {
        let windows = if self.st.promoted_full { vec![] } else { self.r.spec.go_live.clone().map(|g| g.effective()).unwrap_or_default() };
        while let Some(w) = windows.get(self.st.window_index as usize) {
            if self.st.window_started_at.is_none() {
                self.st.window = w.name.clone();
                self.st.window_started_at = Some(self.now);
                self.event(
                    false,
                    "GoLiveWindow",
                    format!("watching {} in go-live window {} for {}", self.r.spec.version, w.name, w.duration),
                );
            }
            let context = format!("go-live window {}", w.name);
            let gate = self.gates(&context, None);
            if let Some(GateFlow::Stop(f)) = gate {
                return f;
            }
            let until = now_plus(self.st.window_started_at.unwrap_or(self.now), w.duration.get());
            let next_measure = self.next_measure();
            if self.now < until {
                self.st.message = format!("go-live window {}: watching {} until {}", w.name, self.r.spec.version, until.format("%H:%M:%S"));
                let wait = (until - self.now).to_std().unwrap_or_default();
                return Flow::Wait(Some(next_measure.map_or(wait, |m| m.min(wait))));
            }
            if let Some(GateFlow::Hold(why)) = gate {
                self.st.message = format!("go-live window {}: holding: metric gates not passed ({why})", w.name);
                self.reason = "GateHold".into();
                return Flow::Wait(next_measure.or(Some(super::POLL)));
            }
            self.event(false, "GoLiveWindowPassed", format!("go-live window {} passed", w.name));
            self.st.window_index += 1;
            self.st.window_started_at = None;
        }
        self.st.stable = Some(StableVersion { version: self.r.spec.version.clone(), revision: self.st.revision.clone() });
        self.set_phase(Phase::Succeeded, format!("{} released", self.r.spec.version));
        self.reason = "Succeeded".into();
        Flow::Next
    }

    /// The gates for the current target: `None` when there are none or they pass, a hold with
    /// its reasons, or a stop (rollback) on a breach. Dry-run reports and never acts.
    fn gates(&mut self, context: &str, since: Option<DateTime<Utc>>) -> Option<GateFlow> {
        let a = self.r.spec.analysis.as_ref()?;
        let t = gates::target(&self.r, &self.st)?;
        match gates::outcome(&a.metrics, &self.st.gates, &t, since) {
            Outcome::Pass => None,
            Outcome::Hold(_) if a.dry_run => None,
            Outcome::Hold(why) => Some(GateFlow::Hold(why.join("; "))),
            Outcome::Breach(g) if a.dry_run => {
                if self.obs.measured_target.is_some() && self.obs.measurements.contains_key(&g.metric) {
                    let msg = format!("dry run: {} would roll back: {} in {context}", g.metric, g.message);
                    self.event(true, "DryRunBreach", msg);
                }
                None
            }
            Outcome::Breach(g) => {
                self.fail_on_metric(&g, context);
                Some(GateFlow::Stop(Flow::Next))
            }
        }
    }

    fn next_measure(&self) -> Option<Duration> {
        let a = self.r.spec.analysis.as_ref()?;
        let t = gates::target(&self.r, &self.st)?;
        Some(gates::next_due(&a.metrics, &self.st.gates, &t, self.now).max(Duration::from_millis(200)))
    }

    fn fail_on_metric(&mut self, g: &GateStatus, context: &str) {
        let metric = self.r.spec.analysis.as_ref().and_then(|a| a.metrics.iter().find(|m| m.name == g.metric));
        let threshold = metric.and_then(|m| m.rollback.as_ref()).map(|t| t.to_string()).unwrap_or_default();
        let values = g.breach_values.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(", ");
        let msg = format!(
            "metric {} breached its rollback trigger {threshold} {} times in a row in {context} (values {values})",
            g.metric, g.breaches
        );
        self.fail("MetricBreached", &msg);
        if let Some(f) = self.st.failure.as_mut() {
            f.metric = Some(MetricBreach {
                metric: g.metric.clone(),
                context: context.into(),
                threshold,
                values: g.breach_values.clone(),
                first_breach_at: g.first_breach_at.unwrap_or(g.measured_at),
            });
        }
    }

    // ---- failure and rollback ----

    /// Whether anything of the candidate must be undone: traffic it received while a stable
    /// version was there to take it back, or a schema change.
    fn needs_undo(&self) -> bool {
        let traffic_moved = self.st.stage_index > 0 || self.st.weight > 0;
        traffic_moved && self.stable().is_some() || self.schema_changed()
    }

    fn schema_changed(&self) -> bool {
        let changes = self.r.spec.hooks.as_ref().and_then(|h| h.migration.as_ref()).is_some_and(|m| m.changes_schema);
        changes && self.st.jobs.iter().any(|j| j.kind == JobKind::Migrate && j.state == JobState::Succeeded)
    }

    fn fail(&mut self, reason: &str, message: &str) {
        if matches!(self.st.phase, Phase::RollingBack) {
            self.reason = reason.into();
            self.st.failure.get_or_insert_with(|| failure(reason, message, "", self.now, false));
            self.set_phase(Phase::Failed, format!("rollback failed: {message}"));
            return;
        }
        let undo = self.needs_undo();
        let stage = if matches!(self.st.phase, Phase::Staging | Phase::Production | Phase::AwaitingApproval | Phase::GoLive) {
            self.st.stage.clone()
        } else {
            String::new()
        };
        self.st.failure = Some(failure(reason, message, &stage, self.now, undo));
        self.reason = reason.into();
        if undo {
            self.set_phase(Phase::RollingBack, format!("{message}; rolling back"));
        } else {
            self.set_phase(Phase::Failed, message.to_string());
        }
    }

    fn rolling_back(&mut self) -> Flow {
        self.reason = self.st.failure.as_ref().map(|f| f.reason.clone()).unwrap_or_default();
        // 1. All traffic back on the stable version, verified in every stage that received it.
        if self.st.failure.as_ref().is_some_and(|f| f.traffic_restored_at.is_none()) {
            let has_stable = self.stable().is_some();
            let pending: Vec<String> = (0..self.st.candidate_stages as usize)
                .map(|i| self.stage_namespace(i))
                .filter(|ns| has_stable && self.obs.traffic.get(ns).copied() != Some(0))
                .collect();
            if !pending.is_empty() {
                self.st.message = format!("moving all traffic back to the stable version in {}", pending.join(", "));
                return Flow::Wait(Some(Duration::from_secs(1)));
            }
            let now = self.now;
            if let Some(f) = self.st.failure.as_mut() {
                f.traffic_restored_at = Some(now);
            }
            let to = self.st.stable.as_ref().map(|s| s.version.clone()).unwrap_or_else(|| "none".into());
            self.event(false, "TrafficRestored", format!("all traffic back on {to}"));
            self.st.weight = 0;
        }
        // 2. The database, when the release changed its schema.
        if self.schema_changed() {
            let restore = self.r.spec.hooks.as_ref().and_then(|h| h.migration.as_ref()).and_then(|m| m.restore.clone());
            if let Some(tpl) = restore {
                let ns = self.r.namespace.to_string();
                if let Some(flow) = self.run_job(JobKind::Restore, "restore", "", &ns, &tpl, "restore") {
                    return flow;
                }
                if self.st.failure.as_ref().is_some_and(|f| f.database_restored_at.is_none()) {
                    let now = self.now;
                    if let Some(f) = self.st.failure.as_mut() {
                        f.database_restored_at = Some(now);
                    }
                    let id = self.st.backup_id.clone().unwrap_or_default();
                    self.event(false, "DatabaseRestored", format!("database restored from backup {id}"));
                }
            }
        }
        // 3. Verify the restored version: the rollback's Jobs, then the metric gates.
        if self.st.failure.as_ref().is_some_and(|f| f.verified_at.is_none()) {
            let ns = self.r.namespace.to_string();
            let verify = self.r.spec.rollback.as_ref().map(|p| p.verify.clone()).unwrap_or_default();
            for v in &verify {
                match self.job_step(JobKind::Verify, &v.name, "rollback", &ns, &v.job, &format!("rollback-{}", v.name)) {
                    JobStep::Done => {}
                    JobStep::Wait(flow) => return flow,
                    // The traffic is back, but the rollback is not verified: reported, not undone.
                    JobStep::Failed(_) => return self.rollback_verified(false, &format!("rollback verification Job {} failed", v.name)),
                }
            }
            let restored = self.st.failure.as_ref().and_then(|f| f.traffic_restored_at).unwrap_or(self.now);
            match (self.r.spec.analysis.as_ref(), gates::target(&self.r, &self.st)) {
                (Some(a), Some(t)) if !a.dry_run => match gates::outcome(&a.metrics, &self.st.gates, &t, Some(restored)) {
                    Outcome::Pass => return self.rollback_verified(true, &format!("metric gates pass on {}", t.version)),
                    Outcome::Breach(g) => {
                        return self.rollback_verified(false, &format!("{} still breaches on {}: {}", g.metric, t.version, g.message))
                    }
                    Outcome::Hold(why) => {
                        let limit = now_plus(restored, a.interval.get() * 10);
                        if self.now >= limit {
                            return self
                                .rollback_verified(false, &format!("metric gates did not pass on {} ({})", t.version, why.join("; ")));
                        }
                        self.st.message = format!("verifying the rollback: {}", why.join("; "));
                        return Flow::Wait(self.next_measure().or(Some(super::POLL)));
                    }
                },
                _ => return self.rollback_verified(true, "traffic restored; no metric gates to check"),
            }
        }
        let msg = self.st.failure.as_ref().map(|f| f.message.clone()).unwrap_or_default();
        let to = self.st.stable.as_ref().map(|s| s.version.clone()).unwrap_or_else(|| "nothing".into());
        self.set_phase(Phase::RolledBack, format!("rolled back to {to}: {msg}"));
        Flow::Next
    }

    fn rollback_verified(&mut self, ok: bool, message: &str) -> Flow {
        let now = self.now;
        if let Some(f) = self.st.failure.as_mut() {
            f.verified_at = Some(now);
        }
        let reason = if ok { "RollbackVerified" } else { "RollbackFailed" };
        let c = conditions::upsert(&self.st.conditions, ROLLBACK_VERIFIED, ok, reason, message, self.r.generation, now);
        conditions::set(&mut self.st.conditions, c);
        self.event(!ok, reason, message.to_string());
        Flow::Next
    }

    // ---- desired children ----

    fn desired(&self) -> Desired {
        let spec = self.r.spec;
        let method = spec.traffic.method;
        let cand_rev = &self.st.revision;
        let succeeded = self.st.phase == Phase::Succeeded;
        let stable = if succeeded { None } else { self.stable().cloned() };
        let mut stages = Vec::new();
        for (i, stage) in spec.stages.iter().enumerate() {
            let namespace = spec.stage_namespace(i, self.r.namespace).to_string();
            let n = spec.stage_replicas(i);
            let deployed = (i as u32) < self.st.candidate_stages || succeeded;
            let current = i == self.st.stage_index as usize && matches!(self.st.phase, Phase::Staging | Phase::Production);
            let (weight, cand_replicas) = match self.st.phase {
                _ if !deployed => (0, 0),
                Phase::Succeeded | Phase::GoLive => (100, n),
                // A failed candidate is scaled to zero but kept for inspection.
                Phase::RollingBack | Phase::RolledBack | Phase::Failed => (0, 0),
                _ if current && self.st.stage_ready_at.is_some() && self.verify_done(i) => {
                    (self.st.weight, traffic::candidate_replicas(method, n, self.st.weight, stable.is_some()))
                }
                _ if current => (0, n),
                _ => (100, n),
            };
            let mut deployments = Vec::new();
            if let Some(s) = &stable {
                deployments.push(DeploymentDesired {
                    revision: s.revision.clone(),
                    version: s.version.clone(),
                    replicas: n,
                    from_spec: false,
                });
            }
            if deployed {
                deployments.push(DeploymentDesired {
                    revision: cand_rev.clone(),
                    version: spec.version.clone(),
                    replicas: cand_replicas,
                    from_spec: true,
                });
            }
            let traffic = (stable.is_some() || deployed).then(|| TrafficTarget {
                stable: stable.as_ref().map(|s| s.revision.clone()),
                candidate: deployed.then(|| cand_rev.clone()),
                weight,
                stable_replicas: if stable.is_some() { n } else { 0 },
                candidate_replicas: cand_replicas,
            });
            stages.push(StageDesired { index: i, name: stage.name.clone(), namespace, replicas: n, deployments, traffic });
        }
        Desired { stages }
    }

    fn verify_done(&self, i: usize) -> bool {
        let stage = &self.r.spec.stages[i];
        stage.verify.iter().all(|v| self.job_succeeded(&names::job(self.r.name, &self.job_rev(), &format!("{}-{}", stage.name, v.name))))
    }
}

fn failure(reason: &str, message: &str, stage: &str, at: DateTime<Utc>, traffic_moved: bool) -> Failure {
    Failure {
        reason: reason.into(),
        message: message.into(),
        stage: stage.into(),
        at,
        traffic_moved,
        traffic_restored_at: None,
        database_restored_at: None,
        metric: None,
        verified_at: None,
    }
}

fn job_failure_message(j: &JobRecord) -> String {
    let mut m = format!("Job {}/{} ({:?} {}) failed", j.namespace, j.job_name, j.kind, j.name);
    if !j.reason.is_empty() {
        m.push_str(&format!(": {}", j.reason));
    }
    if !j.message.is_empty() {
        m.push_str(&format!(" ({})", j.message));
    }
    m
}
