//! New release attempts (a new version or template, a revert, a retry) and on-demand requests.

use super::{Tick, ROLLBACK_VERIFIED};
use crate::api::{FailureReason, LocallReleaseStatus, Phase};

impl Tick<'_> {
    /// A new attempt starts from the last good version, with a sequence number of its own: its
    /// Jobs and its backup are its own, whatever revision it releases (a revert gives an old one).
    pub(super) fn start_release(&mut self, revision: String) {
        let version = self.r.spec.version.clone();
        if !self.st.revision.is_empty() && !self.st.phase.is_terminal() {
            let old = self.st.candidate_version.clone();
            let migrated = self.st.database.as_ref().is_some_and(|d| d.migrated && d.changes_schema);
            let note = if migrated { "; its schema migration stays in place (the new release backs up from there)" } else { "" };
            let msg = format!("release of {old} superseded by {version} before it finished{note}");
            self.event(true, "Superseded", msg);
        }
        let stable = self.st.stable.clone();
        let mut conditions = std::mem::take(&mut self.st.conditions);
        conditions.retain(|c| c.type_ != ROLLBACK_VERIFIED);
        let handled_request = std::mem::take(&mut self.st.handled_request);
        let sequence = self.st.sequence.saturating_add(1);
        let attempt = self.st.attempt;
        let same_revision = self.st.revision == revision;
        // What the previous attempt still owes is delivered all the same.
        let outbox = std::mem::take(&mut self.st.outbox);
        let notices = self.st.notices;
        self.st = LocallReleaseStatus {
            outbox,
            notices,
            revision,
            candidate_version: version,
            stable,
            conditions,
            handled_request,
            sequence,
            attempt: if same_revision { attempt } else { 0 },
            components: crate::engine::spec_components(self.r.spec),
            ..Default::default()
        };
        self.st.phase_started_at = Some(self.now);
        // Who asked, only when the API server recorded it for this very version.
        self.st.requested_by = self.obs.requested.as_ref().filter(|(_, v)| *v == self.st.candidate_version).map(|(by, _)| by.clone());
    }

    pub(super) fn handle_request(&mut self, req: &crate::api::Request) {
        self.st.handled_request = req.id.clone();
        let by = if req.by.is_empty() { "someone".to_string() } else { req.by.clone() };
        // A rollback under way is never interrupted by a request.
        let active = !self.st.phase.is_terminal() && self.st.phase != Phase::RollingBack;
        match req.action.as_str() {
            "rollback" | "abort" if active => {
                self.event(true, "RollbackRequested", format!("{} requested by {by}", req.action));
                self.fail(FailureReason::ManualRollback, &format!("{} requested by {by}", req.action));
            }
            "retry" if matches!(self.st.phase, Phase::Failed | Phase::RolledBack) => {
                let attempt = self.st.attempt + 1;
                let revision = self.st.revision.clone();
                self.start_release(revision);
                self.st.attempt = attempt;
                self.st.handled_request = req.id.clone();
                self.event(false, "RetryRequested", format!("retry {attempt} of {} requested by {by}", self.st.candidate_version));
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
}
