//! Go-live windows after 100% in production, and the metric gates every part consults.

use super::{add_std, until, Flow, Tick};
use crate::api::{FailureReason, GateStatus, MetricBreach, Phase, StableVersion};
use crate::engine::{gates, gates::Outcome, POLL};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// What the gates say about moving on.
pub(super) enum GateFlow {
    Hold(String),
    Stop(Flow),
}

impl Tick<'_> {
    pub(super) fn go_live(&mut self) -> Flow {
        let windows = if self.st.promoted_full { vec![] } else { self.r.spec.go_live.clone().map(|g| g.effective()).unwrap_or_default() };
        let version = self.st.candidate_version.clone();
        while let Some(w) = windows.get(self.st.window_index as usize) {
            if self.st.window_started_at.is_none() {
                self.st.window = w.name.clone();
                self.st.window_started_at = Some(self.now);
                self.event(false, "GoLiveWindow", format!("watching {version} in go-live window {} for {}", w.name, w.duration));
            }
            let context = format!("go-live window {}", w.name);
            let gate = self.gates(&context, None);
            if let Some(GateFlow::Stop(f)) = gate {
                return f;
            }
            let end = add_std(self.st.window_started_at.unwrap_or(self.now), w.duration.get());
            let next_measure = self.next_measure();
            if self.now < end {
                self.st.message = format!("go-live window {}: watching {version} until {}", w.name, end.format("%Y-%m-%d %H:%M:%S"));
                self.await_until(&format!("go-live window {}", w.name), Some(end));
                let wait = until(self.now, end);
                return Flow::Wait(Some(next_measure.map_or(wait, |m| m.min(wait))));
            }
            if let Some(GateFlow::Hold(why)) = gate {
                self.st.message = format!("go-live window {}: holding: metric gates not passed ({why})", w.name);
                self.reason = "GateHold".into();
                self.await_until(&format!("metric gates at the end of go-live window {}", w.name), None);
                return Flow::Wait(next_measure.or(Some(POLL)));
            }
            self.event(false, "GoLiveWindowPassed", format!("go-live window {} passed", w.name));
            self.st.window_index += 1;
            self.st.window_started_at = None;
        }
        // Never declared good on gates that do not pass now (a metric added meanwhile, a window
        // removed under the release): the last word is theirs.
        if !windows.is_empty() {
            match self.gates("the go-live windows", None) {
                Some(GateFlow::Stop(f)) => return f,
                Some(GateFlow::Hold(why)) => {
                    self.st.message = format!("go-live windows passed; holding: metric gates not passed ({why})");
                    self.reason = "GateHold".into();
                    self.await_until("metric gates before the release is declared good", None);
                    return Flow::Wait(self.next_measure().or(Some(POLL)));
                }
                None => {}
            }
        }
        let namespaces = self.st.reached.iter().map(|s| s.namespace.clone()).collect();
        self.st.stable = Some(StableVersion {
            version: version.clone(),
            revision: self.st.revision.clone(),
            namespaces,
            components: self.st.components.iter().map(|c| crate::api::ComponentRef { ready: String::new(), ..c.clone() }).collect(),
        });
        self.set_phase(Phase::Succeeded, format!("{version} released"));
        self.reason = "Succeeded".into();
        Flow::Next
    }

    /// The gates for the current target: `None` when there are none or they pass, a hold with
    /// its reasons, or a stop (rollback) on a breach. Dry-run reports and never acts.
    pub(super) fn gates(&mut self, context: &str, since: Option<DateTime<Utc>>) -> Option<GateFlow> {
        let a = self.r.spec.analysis.as_ref()?;
        let t = gates::target(&self.r, &self.st)?;
        match gates::outcome(&gates::metrics(self.r.spec, self.r.name), &self.st.gates, &t, since) {
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

    pub(super) fn next_measure(&self) -> Option<Duration> {
        self.r.spec.analysis.as_ref()?;
        let t = gates::target(&self.r, &self.st)?;
        Some(gates::next_due(&gates::metrics(self.r.spec, self.r.name), &self.st.gates, &t, self.now).max(Duration::from_millis(200)))
    }

    fn fail_on_metric(&mut self, g: &GateStatus, context: &str) {
        let metrics = gates::metrics(self.r.spec, self.r.name);
        let metric = metrics.iter().find(|m| m.name == g.metric);
        let threshold = metric.and_then(|m| m.rollback.as_ref()).map(|t| t.to_string()).unwrap_or_default();
        let values = g.breach_values.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(", ");
        let values = if values.is_empty() { g.message.clone() } else { format!("values {values}") };
        let component = metric.and_then(|m| m.component.clone());
        let of = component.as_ref().map(|c| format!("component {c}: ")).unwrap_or_default();
        let msg = format!(
            "{of}metric {} breached its rollback trigger {threshold} {} times in a row in {context} ({values})",
            g.metric, g.breaches
        );
        self.fail_in(component.as_deref(), FailureReason::MetricBreached, &msg);
        if let Some(f) = self.st.failure.as_mut() {
            f.metric = Some(MetricBreach {
                metric: g.metric.clone(),
                context: context.into(),
                threshold,
                values: g.breach_values.iter().copied().filter(|v| v.is_finite()).collect(),
                first_breach_at: g.first_breach_at.unwrap_or(g.measured_at),
            });
        }
    }
}
