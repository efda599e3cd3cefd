//! The children the status calls for: each stage's Deployments and where its traffic goes, part
//! by part (the release's template, or each of its components).

use super::Tick;
use crate::api::{Phase, StableVersion};
use crate::engine::{names, parts_of, traffic, DeploymentDesired, Desired, Part, StageDesired, TrafficTarget};

/// What every part of one stage shares.
struct StageView {
    index: usize,
    name: String,
    namespace: String,
    replicas: i32,
    reached: bool,
    current: bool,
    verified: bool,
}

impl Tick<'_> {
    /// `frozen`: the spec cannot be carried out as it stands; nothing is written until it is fixed.
    pub(super) fn desired(&self, frozen: bool) -> Desired {
        if frozen {
            return Desired { stages: vec![], frozen: true };
        }
        let phase = self.st.phase;
        let succeeded = phase == Phase::Succeeded;
        let cand_parts = self.parts();
        let stable_parts = self.stable().map(|s| parts_of(&s.components)).unwrap_or_default();
        // Every part of the candidate, then those only the stable version has.
        let mut all = cand_parts.clone();
        for p in &stable_parts {
            if !all.iter().any(|q| q.component == p.component) {
                all.push(p.clone());
            }
        }
        // The stages reached but no longer in the spec stay: their traffic is still ours to manage.
        let list = crate::engine::stages_in_play(&self.current());
        let mut stages = Vec::new();
        for (index, (name, namespace, n, spec_index)) in list.into_iter().enumerate() {
            // After a success, where it was released (a stage added since waits for the next
            // release; a status from before `reached` was recorded means every stage).
            let reached = self.st.reached.iter().any(|s| s.name == name) || (succeeded && self.st.reached.is_empty());
            let current = name == self.st.stage && matches!(phase, Phase::Staging | Phase::Production);
            let verified = spec_index.is_none_or(|i| self.verify_done(i));
            let view = StageView { index, name, namespace, replicas: n, reached, current, verified };
            for part in &all {
                let in_cand = cand_parts.iter().any(|q| q.component == part.component);
                let in_stable = stable_parts.iter().any(|q| q.component == part.component);
                let s = if part.routed {
                    self.routed_part(&view, part, in_cand, in_stable)
                } else {
                    self.worker_part(&view, part, in_cand, in_stable)
                };
                stages.push(s);
            }
        }
        Desired { stages, frozen: false }
    }

    /// Whether the candidate's Deployment of a part was built from the current spec.
    fn builds_from_spec(&self) -> bool {
        // Only the spec of the release in flight may build its Deployment: while a rollback
        // finishes under a newer spec, the candidate is only scaled. A failed candidate is only
        // scaled, never built again: its template may be what the API server refused.
        self.spec_is_current() && !matches!(self.st.phase, Phase::RollingBack | Phase::RolledBack | Phase::Failed)
    }

    /// The stable version where it runs in `namespace`, when it has this part.
    fn stable_here(&self, namespace: &str, in_stable: bool) -> Option<StableVersion> {
        if self.st.phase == Phase::Succeeded || !in_stable {
            return None;
        }
        self.stable().filter(|s| s.namespaces.is_empty() || s.namespaces.iter().any(|n| n == namespace)).cloned()
    }

    /// While the stage deploys, a part waits for the parts it comes after: their new version
    /// Ready there first.
    fn waits_for_others(&self, v: &StageView, part: &Part) -> bool {
        if !v.current || self.st.stage_ready_at.is_some() {
            return false;
        }
        let parts = self.parts();
        part.after.iter().any(|a| {
            parts.iter().find(|p| p.component.as_deref() == Some(a.as_str())).is_some_and(|p| {
                let want = p.replicas_in(v.replicas);
                self.ready(&v.namespace, p, &self.st.revision) < want
            })
        })
    }

    /// On the way back the order reverses: a part's new version stays until the new version
    /// of every part that came after it is gone. Then its replicas (never more than it has).
    fn undo_in_order(&self, v: &StageView, part: &Part, n: i32) -> i32 {
        let Some(me) = part.component.as_deref() else { return 0 };
        let later_still_up =
            self.parts().iter().filter(|p| p.after.iter().any(|a| a == me)).any(|p| self.candidate_replicas_seen(v, p) > 0);
        if !later_still_up {
            return 0;
        }
        self.candidate_replicas_seen(v, part).min(n)
    }

    /// The replicas the candidate's Deployment of a part has in a stage, as observed.
    fn candidate_replicas_seen(&self, v: &StageView, part: &Part) -> i32 {
        let dep = names::deployment(&part.base(self.r.name), &self.st.revision);
        self.obs.deployments.get(&(v.namespace.clone(), dep)).map_or(0, |d| d.replicas)
    }

    /// What every part starts from: its entry in the stage (no Deployment, no traffic yet), the
    /// candidate's Deployment at full size, and whether the candidate is the stable revision
    /// itself where it runs (a revert to it).
    fn part_start(&self, v: &StageView, part: &Part, in_cand: bool) -> (StageDesired, DeploymentDesired, bool) {
        let n = part.replicas_in(v.replicas);
        let out = StageDesired {
            index: v.index,
            name: v.name.clone(),
            namespace: v.namespace.clone(),
            component: part.component.clone(),
            replicas: n,
            deployments: vec![],
            traffic: None,
        };
        let candidate = DeploymentDesired {
            revision: self.st.revision.clone(),
            version: self.st.candidate_version.clone(),
            replicas: n,
            from_spec: self.builds_from_spec(),
        };
        let runs_here = |s: &&StableVersion| s.namespaces.is_empty() || s.namespaces.contains(&v.namespace);
        let same = in_cand && self.st.stable.as_ref().filter(runs_here).is_some_and(|s| s.revision == self.st.revision);
        (out, candidate, same)
    }

    /// A part that takes traffic: both versions side by side, the traffic stepping between them.
    fn routed_part(&self, v: &StageView, part: &Part, in_cand: bool, in_stable: bool) -> StageDesired {
        let method = self.r.spec.traffic.method;
        let cand_rev = &self.st.revision;
        let phase = self.st.phase;
        let n = part.replicas_in(v.replicas);
        let key = part.key(&v.namespace);
        let seen = self.obs.traffic.get(&key).copied().unwrap_or(0);
        let reached = v.reached && in_cand;
        let stable = self.stable_here(&v.namespace, in_stable);
        let (mut out, candidate, same) = self.part_start(v, part, in_cand);
        // Never more traffic than now to a candidate with no Ready pod (deleted by hand, or
        // scaled down by a reconcile whose status write was lost): it waits for its pods.
        let ready = self.ready(&v.namespace, part, cand_rev);
        let cap = |w: i32| if w > 0 && ready == 0 { w.min(seen) } else { w };
        if same {
            // With no Ready pod yet, the route is left as it is: whatever serves now (a
            // version superseded mid-flight, not known to this status) keeps serving.
            out.traffic = (ready > 0).then(|| TrafficTarget {
                stable: None,
                candidate: Some(cand_rev.clone()),
                weight: cap(100),
                stable_replicas: 0,
                candidate_replicas: n,
            });
            out.deployments.push(candidate);
            return out;
        }
        let (weight, cand_replicas) = match phase {
            _ if !reached => (0, 0),
            Phase::Succeeded | Phase::GoLive => (100, n),
            // A failed candidate is scaled to zero but kept for inspection (after the parts
            // that came after it).
            Phase::RollingBack | Phase::RolledBack | Phase::Failed => (0, self.undo_in_order(v, part, n)),
            _ if v.current && self.waits_for_others(v, part) => (0, 0),
            _ if v.current && self.st.stage_ready_at.is_some() && v.verified => {
                (self.st.weight, traffic::candidate_replicas(method, n, self.st.weight, stable.is_some()))
            }
            _ if v.current => (0, n),
            _ => (100, n),
        };
        let weight = cap(weight);
        // Nor is traffic moved back to a stable version with no Ready pod (deleted by hand
        // and not back yet): the candidate keeps what it has until the stable can take it.
        let stable_ready = stable.as_ref().map(|s| self.ready(&v.namespace, part, &s.revision));
        let (weight, cand_replicas) = match stable_ready {
            Some(0) if reached => {
                let kept = weight.max(seen);
                // With replica ratio the share is the replicas': the candidate keeps enough.
                let replicas = if kept > weight {
                    cand_replicas.max(traffic::candidate_replicas(method, n, kept, stable.is_some()))
                } else {
                    cand_replicas
                };
                (kept, replicas)
            }
            _ => (weight, cand_replicas),
        };
        if let Some(s) = &stable {
            out.deployments.push(stable_deployment(s, n));
        }
        if reached {
            out.deployments.push(DeploymentDesired { replicas: cand_replicas, ..candidate });
        }
        // Where the new version has not gone yet and the stable version has no Ready pod
        // (deleted by hand, or never Ready after a revert), its traffic is left as it is
        // until it has: never raised to pods that cannot serve.
        out.traffic = (reached || stable_ready.is_some_and(|r| r > 0)).then(|| TrafficTarget {
            stable: stable.as_ref().map(|s| s.revision.clone()),
            candidate: reached.then(|| cand_rev.clone()),
            weight,
            stable_replicas: if stable.is_some() { n } else { 0 },
            candidate_replicas: cand_replicas,
        });
        out
    }

    /// A part without traffic (a worker): its new version replaces the old one, which stays
    /// until the new one is Ready (and comes back, Ready before the new one goes, on a rollback).
    fn worker_part(&self, v: &StageView, part: &Part, in_cand: bool, in_stable: bool) -> StageDesired {
        let cand_rev = &self.st.revision;
        let n = part.replicas_in(v.replicas);
        let stable = self.stable_here(&v.namespace, in_stable);
        let undoing = matches!(self.st.phase, Phase::RollingBack | Phase::RolledBack | Phase::Failed);
        let reached = v.reached && in_cand;
        let (mut out, candidate, same) = self.part_start(v, part, in_cand);
        if same {
            out.deployments.push(candidate);
            return out;
        }
        let cand_ready = self.ready(&v.namespace, part, cand_rev);
        if reached && !undoing {
            let replicas = if self.waits_for_others(v, part) { 0 } else { n };
            if let Some(s) = &stable {
                let keep = if replicas > 0 && cand_ready >= n { 0 } else { n };
                out.deployments.push(stable_deployment(s, keep));
            }
            out.deployments.push(DeploymentDesired { replicas, ..candidate });
            return out;
        }
        if let Some(s) = &stable {
            out.deployments.push(stable_deployment(s, n));
        }
        if reached {
            // Undoing: the new version goes once the old one is Ready again (or cannot come
            // back: its Deployment is gone, and only its replicas were ours to manage), and
            // after the parts that came after it. Once the rollback has ended it goes anyway:
            // the new code never keeps running against a restored database.
            let stable_back = stable.as_ref().is_none_or(|s| {
                let dep = names::deployment(&part.base(self.r.name), &s.revision);
                self.obs.deployments.get(&(v.namespace.clone(), dep)).is_none_or(|d| d.ready >= n)
            });
            let ended = self.st.phase != Phase::RollingBack;
            let has = self.candidate_replicas_seen(v, part).min(n);
            let replicas = if stable_back || ended { self.undo_in_order(v, part, n) } else { has };
            out.deployments.push(DeploymentDesired { replicas, ..candidate });
        }
        out
    }
}

/// The stable version's Deployment of a part: only its size is managed.
fn stable_deployment(s: &StableVersion, replicas: i32) -> DeploymentDesired {
    DeploymentDesired { revision: s.revision.clone(), version: s.version.clone(), replicas, from_spec: false }
}
