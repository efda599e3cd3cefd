//! Pre-deployment: preflight checks, the pre-deploy hooks, the backup and the migration; and
//! the Job driver every part of a release uses.

use super::{Flow, Tick};
use crate::api::{DatabasePlan, FailureReason, JobKind, JobRecord, JobState, JobTemplate};
use crate::engine::{names, names::Slot, JobObs, JobToCreate, JOB_MISSING_AFTER, POLL};
use std::time::Duration;

/// Where one Job stands.
pub(super) enum JobStep {
    /// Succeeded: go on.
    Done,
    /// Not finished: stop here with this flow.
    Wait(Flow),
    /// Failed, with the message that names it.
    Failed(String),
}

impl Tick<'_> {
    pub(super) fn pre_deploy(&mut self) -> Flow {
        if self.st.preflight.is_empty() || self.st.preflight.iter().any(|c| !c.passed) {
            let Some(results) = &self.obs.preflight else {
                self.await_until("preflight checks", None);
                return Flow::Wait(Some(POLL));
            };
            self.st.preflight = results.clone();
            let failed: Vec<_> = results.iter().filter(|c| !c.passed).map(|c| c.message.clone()).collect();
            if !failed.is_empty() {
                self.fail(FailureReason::PreflightFailed, &format!("preflight failed: {}", failed.join("; ")));
                return Flow::Next;
            }
            if !results.is_empty() {
                self.event(false, "PreflightPassed", format!("{} preflight checks passed", results.len()));
            }
        }
        let ns = self.r.namespace.to_string();
        let hooks = self.r.spec.hooks.clone().unwrap_or_default();
        for h in &hooks.pre_deploy {
            if let Some(f) = self.run_job(JobKind::PreDeploy, &h.name, "", &ns, &h.job, Slot::PreDeploy(&h.name)) {
                return f;
            }
        }
        if let Some(m) = &hooks.migration {
            // The rollback plan of this attempt is fixed when its backup starts.
            if self.st.backup_id.is_none() || self.st.database.is_none() {
                self.st.backup_id = Some(names::job(self.r.name, &self.attempt(), &Slot::Backup.suffix()));
                self.st.database = Some(DatabasePlan { changes_schema: m.changes_schema, restore: m.restore.clone(), migrated: false });
            }
            if let Some(f) = self.run_job(JobKind::Backup, "backup", "", &ns, &m.backup, Slot::Backup) {
                return f;
            }
            if let Some(f) = self.run_job(JobKind::Migrate, "migrate", "", &ns, &m.migrate, Slot::Migrate) {
                return f;
            }
            if let Some(db) = self.st.database.as_mut() {
                db.migrated = true;
            }
        }
        self.enter_first_stage();
        Flow::Next
    }

    /// Drives one Job and fails the release if it fails: `None` when it has succeeded (go on),
    /// `Some(flow)` when the caller must stop here.
    pub(super) fn run_job(&mut self, kind: JobKind, name: &str, stage: &str, ns: &str, tpl: &JobTemplate, slot: Slot) -> Option<Flow> {
        match self.job_step(kind, name, stage, ns, tpl, slot) {
            JobStep::Done => None,
            JobStep::Wait(flow) => Some(flow),
            JobStep::Failed(msg) => {
                self.fail(FailureReason::JobFailed, &msg);
                Some(Flow::Next)
            }
        }
    }

    /// Drives one Job: creates it once, follows it, records its outcome, and says where it stands;
    /// what a failure means is the caller's to decide.
    pub(super) fn job_step(&mut self, kind: JobKind, name: &str, stage: &str, ns: &str, tpl: &JobTemplate, slot: Slot) -> JobStep {
        let job_name = names::job(self.r.name, &self.attempt(), &slot.suffix());
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
        let waiting = format!("Job {ns}/{job_name} ({kind:?} {name})");
        let rec = &mut self.st.jobs[idx];
        match (rec.state, observed) {
            (JobState::Succeeded, _) => JobStep::Done,
            (JobState::Failed, _) => JobStep::Failed(job_failure_message(rec)),
            (JobState::Running, Some(JobObs::Succeeded)) => {
                rec.state = JobState::Succeeded;
                rec.reason = "Complete".into();
                rec.finished_at = Some(self.now);
                self.event(false, "JobSucceeded", format!("{waiting} succeeded"));
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
                self.st.message = format!("waiting for {waiting}");
                self.await_until(&waiting, None);
                JobStep::Wait(Flow::Wait(Some(POLL)))
            }
            (JobState::Running, None) => {
                let since = rec.started_at.unwrap_or(self.now);
                if self.now.signed_duration_since(since) > JOB_MISSING_AFTER {
                    rec.state = JobState::Failed;
                    rec.reason = "JobMissing".into();
                    rec.message = "the Job disappeared before it finished; it is not created again".into();
                    rec.finished_at = Some(self.now);
                    return JobStep::Failed(job_failure_message(rec));
                }
                self.st.message = format!("waiting for {waiting}");
                self.await_until(&waiting, None);
                JobStep::Wait(Flow::Wait(Some(Duration::from_secs(2))))
            }
        }
    }

    pub(super) fn job_succeeded(&self, job_name: &str) -> bool {
        self.st.jobs.iter().any(|j| j.job_name == job_name && j.state == JobState::Succeeded)
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
