//! Stages: approval, deployment at full size, verification Jobs, then the traffic steps.
//! A stage is found by its name in the spec, never by a stored index: stages may be added,
//! removed or reordered while a release runs.

use super::{add_std, until, Flow, Tick};
use crate::api::{ApprovalRecord, FailureReason, JobKind, Phase, StageRef};
use crate::engine::{gates, names, names::Slot, traffic, POLL, PROGRESS_DEADLINE};
use std::time::Duration;

impl Tick<'_> {
    /// Index in the spec of the stage in progress.
    pub(super) fn current_stage(&self) -> Option<usize> {
        self.r.spec.stages.iter().position(|s| s.name == self.st.stage)
    }

    /// The namespace of spec stage `i`: where the candidate went, if it did, else the spec's.
    pub(super) fn stage_namespace(&self, i: usize) -> String {
        gates::stage_namespace(&self.current(), &self.st, &self.r.spec.stages[i].name)
            .unwrap_or_else(|| self.r.spec.stage_namespace(i, self.r.namespace).to_string())
    }

    fn stage_phase(&self, i: usize) -> Phase {
        if i + 1 == self.r.spec.stages.len() {
            Phase::Production
        } else {
            Phase::Staging
        }
    }

    pub(super) fn enter_first_stage(&mut self) {
        if self.r.spec.stages.is_empty() {
            // Admission requires a stage; an object from before that rule ends here, not in a panic.
            self.fail(FailureReason::InvalidSpec, "spec.stages: at least one stage is required");
            return;
        }
        self.enter_stage(0);
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
        if stage.approval && self.approvals_of(&stage.name) < required_approvals(stage) {
            let msg = format!("stage {} of {} waits for approval", stage.name, self.st.candidate_version);
            self.set_phase(Phase::AwaitingApproval, msg);
        } else {
            let msg = format!("deploying {} to stage {}", self.st.candidate_version, stage.name);
            self.set_phase(self.stage_phase(i), msg);
        }
    }

    pub(super) fn awaiting_approval(&mut self) -> Flow {
        let Some(i) = self.current_stage() else {
            let msg = format!("spec.stages: stage {:?}, awaiting approval, is no longer in the spec", self.st.stage);
            return self.hold_for_spec(msg);
        };
        let stage = self.r.spec.stages[i].name.clone();
        let version = self.st.candidate_version.clone();
        if !self.r.spec.stages[i].approval {
            // The approval requirement was lifted meanwhile.
            self.enter_stage(i);
            return Flow::Next;
        }
        // Each distinct approver counts once; the stage starts once enough have approved.
        let required = required_approvals(&self.r.spec.stages[i]);
        let from_spec = self.r.spec.approvals.iter().filter(|a| a.stage == stage && a.version == version).map(|a| (a.by.clone(), "spec"));
        let from_annotation =
            self.obs.annotation_approval.iter().filter(|a| a.stage == stage && a.version == version).map(|a| (a.by.clone(), "annotation"));
        let new: Vec<(String, &str)> = from_spec.chain(from_annotation).collect();
        for (by, source) in new {
            if by.is_empty() || self.st.approvals.iter().any(|a| a.stage == stage && a.by == by) {
                continue;
            }
            self.st.approvals.push(ApprovalRecord { stage: stage.clone(), by: by.clone(), at: self.now, source: source.into() });
            let count = self.approvals_of(&stage);
            let of = if required > 1 { format!(", {count} of {required}") } else { String::new() };
            self.event(false, "Approved", format!("stage {stage} of {version} approved by {by} ({source}{of})"));
        }
        let count = self.approvals_of(&stage);
        if count < required {
            let what = if count == 0 {
                format!("approval of stage {stage} for {version}")
            } else {
                let by: Vec<&str> = self.st.approvals.iter().filter(|a| a.stage == stage).map(|a| a.by.as_str()).collect();
                format!("approval of stage {stage} for {version} by {} more (approved by {})", required - count, by.join(", "))
            };
            self.await_until(&what, None);
            return Flow::Wait(None);
        }
        self.enter_stage(i);
        Flow::Next
    }

    /// Distinct approvers recorded for a stage of this attempt.
    fn approvals_of(&self, stage: &str) -> usize {
        self.st.approvals.iter().filter(|a| a.stage == stage).count()
    }

    pub(super) fn stage(&mut self) -> Flow {
        let Some(i) = self.current_stage() else {
            let msg = format!(
                "spec.stages: stage {:?}, where {} is at {}%, was removed from the spec; put it back, or request a rollback",
                self.st.stage, self.st.candidate_version, self.st.weight
            );
            return self.hold_for_spec(msg);
        };
        let stage = self.r.spec.stages[i].clone();
        let ns = self.stage_namespace(i);
        let spec_ns = self.r.spec.stage_namespace(i, self.r.namespace).to_string();
        if ns != spec_ns {
            let msg = format!(
                "spec.stages[{i}].namespace: changed from {ns} to {spec_ns} while {} is deployed there; put it back, or request a rollback",
                self.st.candidate_version
            );
            return self.hold_for_spec(msg);
        }
        let replicas = self.r.spec.stage_replicas(i);
        if !self.st.reached.iter().any(|s| s.name == stage.name) {
            self.st.reached.push(StageRef { name: stage.name.clone(), namespace: ns.clone(), replicas });
        }
        let version = self.st.candidate_version.clone();

        // 1. The candidate is deployed at full size and Ready, before verification or traffic:
        //    every part of it, in the order the parts state.
        if self.st.stage_ready_at.is_none() {
            for part in self.parts() {
                let n = part.replicas_in(replicas);
                let dep = names::deployment(&part.base(self.r.name), &self.st.revision);
                let ready =
                    self.obs.deployments.get(&(ns.clone(), dep.clone())).is_some_and(|d| d.current && d.ready >= n && d.updated >= n);
                if !ready {
                    let label = part.label();
                    let on = format!("{label}Deployment {ns}/{dep} Ready ({n} replicas)");
                    if self.await_deadline(&on, PROGRESS_DEADLINE) {
                        let minutes = PROGRESS_DEADLINE.num_minutes();
                        let msg = format!("{label}Deployment {ns}/{dep} was not Ready within {minutes} minutes");
                        self.fail_in(part.component.as_deref(), FailureReason::DeploymentNotReady, &msg);
                        return Flow::Next;
                    }
                    self.st.message = format!("{label}waiting for Deployment {ns}/{dep} to be Ready ({n} replicas)");
                    return Flow::Wait(Some(POLL));
                }
            }
            self.st.stage_ready_at = Some(self.now);
            let what = if self.st.components.is_empty() {
                format!("{replicas} replicas")
            } else {
                format!("{} components", self.st.components.len())
            };
            self.event(false, "Deployed", format!("{version} Ready in stage {} ({what})", stage.name));
        }
        // 2. Verification Jobs, in order.
        for v in &stage.verify {
            let slot = Slot::Verify { stage: &stage.name, name: &v.name };
            if let Some(f) = self.run_job(JobKind::Verify, &v.name, &stage.name, &ns, &v.job, slot) {
                return f;
            }
        }
        // 3. Traffic steps: reach the weight (verified on the router), then hold it.
        let weights = self.weights(i, &ns);
        let step = (self.st.step as usize).min(weights.len() - 1);
        let (weight, pause) = weights[step];
        let method = self.r.spec.traffic.method;
        let routed: Vec<_> = self.parts().into_iter().filter(|p| p.routed).collect();
        if weight > self.st.weight {
            // More traffic only to a candidate that is Ready now (it may have been deleted or
            // have lost pods since the stage started): as many pods as serve the current weight.
            for part in &routed {
                let n = part.replicas_in(replicas);
                let has_stable = self.has_stable_part(&ns, part);
                let dep = names::deployment(&part.base(self.r.name), &self.st.revision);
                let need = traffic::candidate_replicas(method, n, self.st.weight, has_stable).max(1);
                let ready = self.ready(&ns, part, &self.st.revision);
                if ready < need {
                    let label = part.label();
                    let on = format!("{label}Deployment {ns}/{dep} Ready before traffic rises to {weight}% in stage {}", stage.name);
                    if self.await_deadline(&on, PROGRESS_DEADLINE) {
                        let minutes = PROGRESS_DEADLINE.num_minutes();
                        let msg = format!("{label}Deployment {ns}/{dep} was not Ready again within {minutes} minutes");
                        self.fail_in(part.component.as_deref(), FailureReason::DeploymentNotReady, &msg);
                        return Flow::Next;
                    }
                    self.st.message = format!(
                        "stage {}: {label}waiting for Deployment {ns}/{dep} to be Ready ({ready}/{need}) before {weight}%",
                        stage.name
                    );
                    return Flow::Wait(Some(POLL));
                }
            }
        }
        self.st.weight = weight;
        // Every HTTP part at the same weight, as read back from its router.
        let wants: Vec<(String, i32)> = routed
            .iter()
            .map(|part| {
                let n = part.replicas_in(replicas);
                let has_stable = self.has_stable_part(&ns, part);
                let c = traffic::candidate_replicas(method, n, weight, has_stable);
                (part.key(&ns), traffic::effective_weight(method, n, c, weight, has_stable))
            })
            .collect();
        let want = wants.first().map_or(weight, |w| w.1);
        if self.st.step_started_at.is_none() {
            let behind = wants.iter().find(|(key, w)| self.obs.traffic.get(key).copied() != Some(*w));
            if let Some((key, want)) = behind {
                let want = *want;
                let seen = self.obs.traffic.get(key).copied();
                let on = format!("traffic {want}% on {version} in stage {} (step {}/{})", stage.name, step + 1, weights.len());
                if self.await_deadline(&on, PROGRESS_DEADLINE) {
                    let part = key.split_once('/').map(|(_, c)| format!(" for component {c}")).unwrap_or_default();
                    let msg = format!("stage {}: traffic did not reach {want}%{part} in time (last seen {seen:?})", stage.name);
                    let component = key.split_once('/').map(|(_, c)| c.to_string());
                    self.fail_in(component.as_deref(), FailureReason::TrafficNotShifted, &msg);
                    return Flow::Next;
                }
                self.st.message = format!("stage {}: shifting {weight}% of traffic to {version}", stage.name);
                return Flow::Wait(Some(Duration::from_secs(2)));
            }
            self.st.step_started_at = Some(self.now);
            let msg = format!("stage {}: {want}% of traffic on {version} (step {}/{})", stage.name, step + 1, weights.len());
            self.event(false, "TrafficShifted", msg);
        }
        let since = self.st.step_started_at.unwrap_or(self.now);
        let context = format!("stage {}, step {}/{} ({weight}%)", stage.name, step + 1, weights.len());
        let gate = self.gates(&context, Some(since));
        if let Some(super::golive::GateFlow::Stop(f)) = gate {
            return f;
        }
        let next_measure = self.next_measure();
        let promoted = self.st.promoted_full || self.st.promoted_step == Some(step as u32);
        if let Some(p) = pause.filter(|_| !promoted) {
            let end = add_std(since, p);
            if self.now < end {
                self.st.message = format!("stage {}: holding {weight}% until {}", stage.name, end.format("%Y-%m-%d %H:%M:%S"));
                self.await_until(&format!("pause at {weight}% in stage {} (step {}/{})", stage.name, step + 1, weights.len()), Some(end));
                let wait = until(self.now, end);
                return Flow::Wait(Some(next_measure.map_or(wait, |m| m.min(wait))));
            }
        }
        // At the very last step the go-live windows take over the watching, if there are any.
        let watched_after = i + 1 == self.r.spec.stages.len()
            && step + 1 == weights.len()
            && self.r.spec.go_live.as_ref().is_some_and(|g| !g.effective().is_empty());
        if let (Some(super::golive::GateFlow::Hold(why)), false) = (&gate, watched_after || promoted) {
            self.st.message = format!("stage {}: holding {weight}%: metric gates not passed ({why})", stage.name);
            self.reason = "GateHold".into();
            self.await_until(&format!("metric gates at {weight}% in stage {}", stage.name), None);
            return Flow::Wait(next_measure.or(Some(POLL)));
        }
        if step + 1 < weights.len() {
            self.st.step = if self.st.promoted_full { weights.len() as u32 - 1 } else { step as u32 + 1 };
            self.st.promoted_step = None;
            self.st.step_started_at = None;
            return Flow::Next;
        }
        // The stage is at 100%.
        if i + 1 < self.r.spec.stages.len() {
            self.event(false, "StageComplete", format!("stage {} runs {version}", stage.name));
            self.enter_stage(i + 1);
            return Flow::Next;
        }
        let release_ns = self.r.namespace.to_string();
        let post = self.r.spec.hooks.as_ref().map(|h| h.post_deploy.clone()).unwrap_or_default();
        for h in &post {
            if let Some(f) = self.run_job(JobKind::PostDeploy, &h.name, "", &release_ns, &h.job, Slot::PostDeploy(&h.name)) {
                return f;
            }
        }
        self.set_phase(Phase::GoLive, format!("{version} serves all production traffic"));
        Flow::Next
    }

    /// The stage's steps as (weight, pause). The very first release in a stage has nothing to
    /// shift from.
    fn weights(&self, i: usize, ns: &str) -> Vec<(i32, Option<Duration>)> {
        let stage = &self.r.spec.stages[i];
        if self.stable_in(ns).is_none() || stage.steps.is_empty() {
            return vec![(100, None)];
        }
        stage.steps.iter().map(|s| (s.weight.clamp(1, 100), s.pause.as_ref().map(|d| d.get()))).collect()
    }

    /// Whether the stable version runs this part in namespace `ns` (a component added since has none).
    pub(super) fn has_stable_part(&self, ns: &str, part: &crate::engine::Part) -> bool {
        self.stable_in(ns).is_some_and(|s| crate::engine::parts_of(&s.components).iter().any(|p| p.component == part.component))
    }

    /// Whether the verification Jobs of spec stage `i` succeeded (for this attempt).
    pub(super) fn verify_done(&self, i: usize) -> bool {
        let stage = &self.r.spec.stages[i];
        stage.verify.iter().all(|v| {
            let slot = Slot::Verify { stage: &stage.name, name: &v.name };
            self.job_succeeded(&names::job(self.r.name, &self.attempt(), &slot.suffix()))
        })
    }
}

/// Distinct approvers a stage needs (1 unless `approvers.required` says more).
fn required_approvals(stage: &crate::api::Stage) -> usize {
    stage.approvers.as_ref().map_or(1, |a| a.required.max(1) as usize)
}
