//! The children the status calls for: each stage's Deployments and where its traffic goes.

use super::Tick;
use crate::api::Phase;
use crate::engine::{traffic, DeploymentDesired, Desired, StageDesired, TrafficTarget};

impl Tick<'_> {
    /// `frozen`: the spec cannot be carried out as it stands; nothing is written until it is fixed.
    pub(super) fn desired(&self, frozen: bool) -> Desired {
        if frozen {
            return Desired { stages: vec![], frozen: true };
        }
        let spec = self.r.spec;
        let method = spec.traffic.method;
        let cand_rev = &self.st.revision;
        // Only the spec of the release in flight may build its Deployment: while a rollback
        // finishes under a newer spec, the candidate is only scaled.
        let phase = self.st.phase;
        // A failed candidate is only scaled, never built again: its template may be what the
        // API server refused.
        let from_spec = self.spec_is_current() && !matches!(phase, Phase::RollingBack | Phase::RolledBack | Phase::Failed);
        let succeeded = phase == Phase::Succeeded;
        // The stages reached but no longer in the spec stay: their traffic is still ours to manage.
        let list = crate::engine::stages_in_play(&self.current());
        let mut stages = Vec::new();
        for (index, (name, namespace, n, spec_index)) in list.into_iter().enumerate() {
            // After a success, where it was released (a stage added since waits for the next
            // release; a status from before `reached` was recorded means every stage).
            let reached = self.st.reached.iter().any(|s| s.name == name) || (succeeded && self.st.reached.is_empty());
            let runs_here = |s: &&crate::api::StableVersion| s.namespaces.is_empty() || s.namespaces.contains(&namespace);
            // Re-releasing the stable revision itself (a revert to it) where it runs: it keeps
            // all the traffic there.
            let same = self.st.stable.as_ref().filter(runs_here).is_some_and(|s| &s.revision == cand_rev);
            // The version to shift from, where it runs (a stage added since has none).
            let stable = if succeeded { None } else { self.stable().filter(runs_here).cloned() };
            let candidate =
                DeploymentDesired { revision: cand_rev.clone(), version: self.st.candidate_version.clone(), replicas: n, from_spec };
            // Never more traffic than now to a candidate with no Ready pod (deleted by hand, or
            // scaled down by a reconcile whose status write was lost): it waits for its pods.
            let ready = self.ready(&namespace, cand_rev);
            let cap = |w: i32| if w > 0 && ready == 0 { w.min(self.obs.traffic.get(&namespace).copied().unwrap_or(0)) } else { w };
            if same {
                let traffic = TrafficTarget {
                    stable: None,
                    candidate: Some(cand_rev.clone()),
                    weight: cap(100),
                    stable_replicas: 0,
                    candidate_replicas: n,
                };
                // With no Ready pod yet, the route is left as it is: whatever serves now (a
                // version superseded mid-flight, not known to this status) keeps serving.
                let traffic = (ready > 0).then_some(traffic);
                stages.push(StageDesired { index, name, namespace, replicas: n, deployments: vec![candidate], traffic });
                continue;
            }
            let current = name == self.st.stage && matches!(phase, Phase::Staging | Phase::Production);
            let verified = spec_index.is_none_or(|i| self.verify_done(i));
            let (weight, cand_replicas) = match phase {
                _ if !reached => (0, 0),
                Phase::Succeeded | Phase::GoLive => (100, n),
                // A failed candidate is scaled to zero but kept for inspection.
                Phase::RollingBack | Phase::RolledBack | Phase::Failed => (0, 0),
                _ if current && self.st.stage_ready_at.is_some() && verified => {
                    (self.st.weight, traffic::candidate_replicas(method, n, self.st.weight, stable.is_some()))
                }
                _ if current => (0, n),
                _ => (100, n),
            };
            let weight = cap(weight);
            // Nor is traffic moved back to a stable version with no Ready pod (deleted by hand
            // and not back yet): the candidate keeps what it has until the stable can take it.
            let stable_ready = stable.as_ref().map(|s| self.ready(&namespace, &s.revision));
            let (weight, cand_replicas) = match stable_ready {
                Some(0) if reached => {
                    let kept = weight.max(self.obs.traffic.get(&namespace).copied().unwrap_or(0));
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
            let mut deployments = Vec::new();
            if let Some(s) = &stable {
                deployments.push(DeploymentDesired {
                    revision: s.revision.clone(),
                    version: s.version.clone(),
                    replicas: n,
                    from_spec: false,
                });
            }
            if reached {
                deployments.push(DeploymentDesired { replicas: cand_replicas, ..candidate });
            }
            // Where the new version has not gone yet and the stable version has no Ready pod
            // (deleted by hand, or never Ready after a revert), its traffic is left as it is
            // until it has: never raised to pods that cannot serve.
            let traffic = (reached || stable_ready.is_some_and(|r| r > 0)).then(|| TrafficTarget {
                stable: stable.as_ref().map(|s| s.revision.clone()),
                candidate: reached.then(|| cand_rev.clone()),
                weight,
                stable_replicas: if stable.is_some() { n } else { 0 },
                candidate_replicas: cand_replicas,
            });
            stages.push(StageDesired { index, name, namespace, replicas: n, deployments, traffic });
        }
        Desired { stages, frozen: false }
    }
}
