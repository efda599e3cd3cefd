//! Failure and the way back: traffic to the stable version at once in every stage the candidate
//! reached, the database restored from this attempt's own backup when its migration changed the
//! schema, then the rollback verified.

use super::{add_std, Flow, Tick, ROLLBACK_VERIFIED};
use crate::api::{conditions, Failure, FailureReason, JobKind, Phase};
use crate::engine::{gates, gates::Outcome, names, names::Slot, POLL, PROGRESS_DEADLINE};
use chrono::{DateTime, Utc};
use std::time::Duration;

impl Tick<'_> {
    /// Whether anything of the candidate must be undone: traffic it received while a stable
    /// version was there to take it back, or a schema change.
    pub(super) fn needs_undo(&self) -> bool {
        let traffic_moved = self.st.reached.len() > 1 || self.st.weight > 0;
        let stable_took_traffic = self.st.reached.iter().any(|s| self.stable_in(&s.namespace).is_some());
        traffic_moved && stable_took_traffic || self.schema_changed()
    }

    /// This attempt's migration changed the schema (as the plan captured at its backup says).
    fn schema_changed(&self) -> bool {
        self.st.database.as_ref().is_some_and(|d| d.migrated && d.changes_schema)
    }

    pub(super) fn fail(&mut self, reason: FailureReason, message: &str) {
        if matches!(self.st.phase, Phase::RollingBack) {
            self.reason = reason.as_str().into();
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
        self.reason = reason.as_str().into();
        if undo {
            self.set_phase(Phase::RollingBack, format!("{message}; rolling back"));
        } else {
            self.set_phase(Phase::Failed, message.to_string());
        }
    }

    pub(super) fn rolling_back(&mut self) -> Flow {
        self.reason = self.st.failure.as_ref().map(|f| f.reason.as_str().to_string()).unwrap_or_default();
        // 1. All traffic back on the stable version, verified in every stage that received it.
        if self.st.failure.as_ref().is_some_and(|f| f.traffic_restored_at.is_none()) {
            let parts = self.parts();
            let pending: Vec<String> = self
                .st
                .reached
                .iter()
                .map(|s| s.namespace.clone())
                .filter(|ns| {
                    parts
                        .iter()
                        .filter(|p| p.routed && self.has_stable_part(ns, p))
                        .any(|p| self.obs.traffic.get(&p.key(ns)).copied() != Some(0))
                })
                .collect();
            if !pending.is_empty() {
                self.st.message = format!("moving all traffic back to the stable version in {}", pending.join(", "));
                self.await_until(&format!("all traffic back on the stable version in {}", pending.join(", ")), None);
                return Flow::Wait(Some(Duration::from_secs(1)));
            }
            let now = self.now;
            if let Some(f) = self.st.failure.as_mut() {
                f.traffic_restored_at = Some(now);
            }
            let to = self.stable().map(|s| s.version.clone()).unwrap_or_else(|| "none".into());
            self.event(false, "TrafficRestored", format!("all traffic back on {to}"));
            self.st.weight = 0;
        }
        // 2. The database, when this attempt's migration changed the schema: from this
        //    attempt's backup, with the restore Job captured when that backup was taken.
        if self.schema_changed() {
            if let Some(tpl) = self.st.database.as_ref().and_then(|d| d.restore.clone()) {
                let ns = self.r.namespace.to_string();
                if let Some(flow) = self.run_job(JobKind::Restore, "restore", "", &ns, &tpl, Slot::Restore) {
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
        // 3. Verify the restored version: every part of it Ready where the candidate went, the
        //    rollback's Jobs, then the metric gates.
        if self.st.failure.as_ref().is_some_and(|f| f.verified_at.is_none()) {
            if let Some(flow) = self.stable_parts_ready() {
                return flow;
            }
            let ns = self.r.namespace.to_string();
            let verify = self.r.spec.rollback.as_ref().map(|p| p.verify.clone()).unwrap_or_default();
            for v in &verify {
                match self.job_step(JobKind::Verify, &v.name, "rollback", &ns, &v.job, Slot::RollbackVerify(&v.name)) {
                    super::predeploy::JobStep::Done => {}
                    super::predeploy::JobStep::Wait(flow) => return flow,
                    // The traffic is back, but the rollback is not verified: reported, not undone.
                    super::predeploy::JobStep::Failed(_) => {
                        return self.rollback_verified(false, &format!("rollback verification Job {} failed", v.name))
                    }
                }
            }
            let restored = self.st.failure.as_ref().and_then(|f| f.traffic_restored_at).unwrap_or(self.now);
            match (self.r.spec.analysis.as_ref(), gates::target(&self.r, &self.st)) {
                (Some(a), Some(t)) if !a.dry_run => {
                    match gates::outcome(&gates::metrics(self.r.spec, self.r.name), &self.st.gates, &t, Some(restored)) {
                        Outcome::Pass => return self.rollback_verified(true, &format!("metric gates pass on {}", t.version)),
                        Outcome::Breach(g) => {
                            return self.rollback_verified(false, &format!("{} still breaches on {}: {}", g.metric, t.version, g.message))
                        }
                        Outcome::Hold(why) => {
                            let limit: DateTime<Utc> = add_std(restored, a.interval.get().saturating_mul(10));
                            if self.now >= limit {
                                return self
                                    .rollback_verified(false, &format!("metric gates did not pass on {} ({})", t.version, why.join("; ")));
                            }
                            self.st.message = format!("verifying the rollback: {}", why.join("; "));
                            self.await_until(&format!("metric gates on {} after the rollback", t.version), Some(limit));
                            return Flow::Wait(self.next_measure().or(Some(POLL)));
                        }
                    }
                }
                _ => return self.rollback_verified(true, "traffic restored; no metric gates to check"),
            }
        }
        let msg = self.st.failure.as_ref().map(|f| f.message.clone()).unwrap_or_default();
        let to = self.stable().map(|s| s.version.clone()).unwrap_or_else(|| "nothing".into());
        self.set_phase(Phase::RolledBack, format!("rolled back to {to}: {msg}"));
        Flow::Next
    }

    /// Waits until the stable version's Deployment of every part is Ready in every stage the
    /// candidate reached (where the stable version runs): `None` once they are. Not Ready in
    /// time: the rollback is reported unverified, naming the part.
    fn stable_parts_ready(&mut self) -> Option<Flow> {
        let stable = self.stable()?.clone();
        let parts = crate::engine::parts_of(&stable.components);
        let reached = self.st.reached.clone();
        for s in reached.iter().filter(|s| stable.namespaces.is_empty() || stable.namespaces.contains(&s.namespace)) {
            for part in &parts {
                let n = part.replicas_in(s.replicas);
                if self.ready(&s.namespace, part, &stable.revision) >= n {
                    continue;
                }
                let dep = names::deployment(&part.base(self.r.name), &stable.revision);
                let label = part.label();
                let on = format!("{label}Deployment {}/{dep} of {} Ready again ({n} replicas)", s.namespace, stable.version);
                if self.await_deadline(&on, PROGRESS_DEADLINE) {
                    let minutes = PROGRESS_DEADLINE.num_minutes();
                    let msg =
                        format!("{label}Deployment {}/{dep} of {} was not Ready within {minutes} minutes", s.namespace, stable.version);
                    return Some(self.rollback_verified(false, &msg));
                }
                self.st.message = format!("verifying the rollback: {on}");
                return Some(Flow::Wait(Some(POLL)));
            }
        }
        None
    }

    /// Fails the release naming the component at fault, when one is.
    pub(super) fn fail_in(&mut self, component: Option<&str>, reason: FailureReason, message: &str) {
        let had = self.st.failure.is_some() && self.st.phase == Phase::RollingBack;
        self.fail(reason, message);
        if let (false, Some(f)) = (had, self.st.failure.as_mut()) {
            f.component = component.map(str::to_string);
        }
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
}

fn failure(reason: FailureReason, message: &str, stage: &str, at: DateTime<Utc>, traffic_moved: bool) -> Failure {
    Failure {
        reason,
        message: message.into(),
        stage: stage.into(),
        component: None,
        at,
        traffic_moved,
        traffic_restored_at: None,
        database_restored_at: None,
        metric: None,
        verified_at: None,
    }
}
