//! Metric gates, pure: what to measure now, the verdict of a measurement, and whether the gates
//! let a release move on, hold it, or call for a rollback. Missing data or an unreachable
//! Prometheus never promotes (unless a metric's policy explicitly says Pass).

use super::{names, Release};
use crate::api::{GateStatus, LocallReleaseSpec, LocallReleaseStatus, Metric, Phase, Policy, Verdict};
use chrono::{DateTime, Utc};
use std::borrow::Cow;
use std::{collections::BTreeMap, time::Duration};

/// What a measurement is about: a version in a stage namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub service: String,
    pub version: String,
    pub stage: String,
    /// Default interval in this context (analysis interval, or the go-live window's).
    pub interval: Duration,
}

impl Target {
    /// `<stage>/<version>`: recorded with each gate so a value is never read for another target.
    pub fn key(&self) -> String {
        format!("{}/{}", self.stage, self.version)
    }
}

/// One query to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub metric: String,
    pub query: String,
    pub sample_query: Option<String>,
}

/// What came back.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub value: Option<f64>,
    pub sample: Option<f64>,
    pub error: Option<String>,
}

/// The metrics the gates measure: the spec's, and in a multi-component release one per
/// component for each metric that names a component (`component`) or is written for every one
/// (its query names `{{component}}` or `{{service}}`): named `<component>/<metric>`, its
/// `{{component}}` and `{{service}}` filled in. A metric naming neither is shared.
pub fn metrics<'a>(spec: &'a LocallReleaseSpec, release: &str) -> Cow<'a, [Metric]> {
    let Some(a) = &spec.analysis else { return Cow::Borrowed(&[]) };
    if spec.components.is_empty() {
        return Cow::Borrowed(&a.metrics);
    }
    let per = |q: &str| q.contains("{{component}}") || q.contains("{{service}}");
    let mut out = Vec::new();
    for m in &a.metrics {
        let each = per(&m.query) || m.sample_query.as_deref().is_some_and(per);
        for c in spec.components.iter().filter(|c| m.component.as_ref().map_or(each, |x| x == &c.name)) {
            let service = names::entry_service(&names::base(release, Some(&c.name)));
            let fill = |q: &str| q.replace("{{component}}", &c.name).replace("{{service}}", &service);
            out.push(Metric {
                name: format!("{}/{}", c.name, m.name),
                query: fill(&m.query),
                sample_query: m.sample_query.as_deref().map(fill),
                component: Some(c.name.clone()),
                ..m.clone()
            });
        }
        if m.component.is_none() && !each {
            out.push(m.clone());
        }
    }
    Cow::Owned(out)
}

/// The index in `spec.analysis.metrics` of the i-th metric of [`metrics`]: the expansion keeps
/// the spec's order, each metric's instances next to each other.
fn spec_index(metrics: &[Metric], i: usize) -> usize {
    let origin = |m: &Metric| match &m.component {
        Some(c) => m.name.strip_prefix(&format!("{c}/")).unwrap_or(&m.name).to_string(),
        None => m.name.clone(),
    };
    let mut index = 0;
    for k in 1..=i.min(metrics.len().saturating_sub(1)) {
        if origin(&metrics[k]) != origin(&metrics[k - 1]) {
            index += 1;
        }
    }
    index
}

/// Fills a query's placeholders.
pub fn render(query: &str, t: &Target) -> String {
    query
        .replace("{{namespace}}", &t.namespace)
        .replace("{{service}}", &t.service)
        .replace("{{version}}", &t.version)
        .replace("{{stage}}", &t.stage)
}

/// Where a stage of the release lives: where the candidate went, if it did, else the spec's
/// namespace for it; `None` for a stage neither knows.
pub fn stage_namespace(r: &Release<'_>, st: &LocallReleaseStatus, stage: &str) -> Option<String> {
    if let Some(s) = st.reached.iter().find(|s| s.name == stage) {
        return Some(s.namespace.clone());
    }
    let i = r.spec.stages.iter().position(|s| s.name == stage)?;
    Some(r.spec.stage_namespace(i, r.namespace).to_string())
}

/// What the gates watch in the release's current state, if anything.
pub fn target(r: &Release<'_>, st: &LocallReleaseStatus) -> Option<Target> {
    let analysis = r.spec.analysis.as_ref()?;
    let mk = |stage: &str, version: &str, interval: Duration| {
        Some(Target {
            namespace: stage_namespace(r, st, stage)?,
            service: names::entry_service(r.name),
            version: version.to_string(),
            stage: stage.to_string(),
            interval,
        })
    };
    match st.phase {
        Phase::Staging | Phase::Production if st.step_started_at.is_some() => mk(&st.stage, &st.candidate_version, analysis.interval.get()),
        Phase::GoLive => {
            let windows = r.spec.go_live.clone().unwrap_or_default().effective();
            // Past the last window (the spec lost windows meanwhile): the last one's interval.
            let w = windows.get(st.window_index as usize).or(windows.last())?;
            mk(&st.stage, &st.candidate_version, w.interval.get())
        }
        Phase::RollingBack => {
            let f = st.failure.as_ref()?;
            f.traffic_restored_at?;
            let stable = st.stable.as_ref().filter(|s| s.revision != st.revision)?;
            // Where it failed; else the last stage it reached, else the spec's last stage.
            let stage = if !f.stage.is_empty() {
                f.stage.clone()
            } else if let Some(s) = st.reached.last() {
                s.name.clone()
            } else {
                r.spec.stages.last()?.name.clone()
            };
            mk(&stage, &stable.version, analysis.interval.get())
        }
        _ => None,
    }
}

fn interval(m: &Metric, t: &Target) -> Duration {
    m.interval.as_ref().map(|d| d.get()).unwrap_or(t.interval)
}

/// The queries due now for `t`: metrics never measured for it, or whose interval has passed.
pub fn due(metrics: &[Metric], gates: &[GateStatus], t: &Target, now: DateTime<Utc>) -> Vec<Request> {
    metrics
        .iter()
        .filter(|m| match gates.iter().find(|g| g.metric == m.name && g.target == t.key()) {
            None => true,
            Some(g) => now >= super::now_plus(g.measured_at, interval(m, t)),
        })
        .map(|m| Request {
            metric: m.name.clone(),
            query: render(&m.query, t),
            sample_query: m.sample_query.as_ref().map(|q| render(q, t)),
        })
        .collect()
}

/// When the next measurement for `t` is due.
pub fn next_due(metrics: &[Metric], gates: &[GateStatus], t: &Target, now: DateTime<Utc>) -> Duration {
    metrics
        .iter()
        .map(|m| match gates.iter().find(|g| g.metric == m.name && g.target == t.key()) {
            None => Duration::ZERO,
            Some(g) => (super::now_plus(g.measured_at, interval(m, t)) - now).to_std().unwrap_or(Duration::ZERO),
        })
        .min()
        .unwrap_or(t.interval)
}

/// How a measurement error starts when Prometheus refused the query itself (not an outage).
pub const QUERY_REJECTED: &str = "Prometheus rejected the query";

/// The verdict of one measurement and why (pure).
pub fn verdict(m: &Metric, x: &Measurement) -> (Verdict, String) {
    if let Some(e) = &x.error {
        return by_policy(m.on_error, Verdict::Error, format!("query failed: {e}"));
    }
    // NaN or infinity (0/0 and friends) is no sample at all.
    let sample = x.sample.filter(|v| v.is_finite());
    if let (Some(min), Some(sample)) = (m.min_sample, sample) {
        if sample < min {
            return by_policy(m.no_data, Verdict::NoData, format!("sample {sample} below the minimum {min}"));
        }
    }
    if m.min_sample.is_some() && m.sample_query.is_some() && sample.is_none() {
        return by_policy(m.no_data, Verdict::NoData, "no sample".into());
    }
    let Some(v) = x.value.filter(|v| v.is_finite()) else {
        return by_policy(m.no_data, Verdict::NoData, "no data".into());
    };
    if let Some(t) = &m.rollback {
        if t.holds(v) {
            return (Verdict::Fail, format!("{v} breaches the rollback trigger {t}"));
        }
    }
    match &m.success {
        Some(t) if t.holds(v) => (Verdict::Pass, format!("{v} meets {t}")),
        Some(t) => (Verdict::Inconclusive, format!("{v} does not meet {t} yet")),
        None => (Verdict::Pass, format!("{v} within the rollback trigger")),
    }
}

fn by_policy(p: Policy, held: Verdict, why: String) -> (Verdict, String) {
    match p {
        Policy::Hold => (held, format!("{why} (holding)")),
        Policy::Fail => (Verdict::Fail, format!("{why} (counts as a breach)")),
        Policy::Pass => (Verdict::Pass, format!("{why} (counts as a pass)")),
    }
}

/// Folds this tick's measurements into the gates' status.
pub fn fold(metrics: &[Metric], gates: &mut Vec<GateStatus>, t: &Target, measured: &BTreeMap<String, Measurement>, now: DateTime<Utc>) {
    for m in metrics {
        let Some(x) = measured.get(&m.name) else { continue };
        let (v, message) = verdict(m, x);
        let prev = gates.iter().position(|g| g.metric == m.name);
        let same_target = prev.is_some_and(|i| gates[i].target == t.key());
        let (mut breaches, mut values, mut first) = match prev {
            Some(i) if same_target => (gates[i].breaches, gates[i].breach_values.clone(), gates[i].first_breach_at),
            _ => (0, vec![], None),
        };
        match v {
            Verdict::Fail => {
                breaches = breaches.saturating_add(1);
                // A breach on no data (noData: Fail) has no value to show: JSON has no NaN.
                if let Some(v) = x.value.filter(|v| v.is_finite()) {
                    values.push(v);
                }
                first.get_or_insert(now);
            }
            Verdict::Pass | Verdict::Inconclusive => {
                breaches = 0;
                values.clear();
                first = None;
            }
            Verdict::NoData | Verdict::Error => {}
        }
        let keep = values.len().saturating_sub(10);
        let g = GateStatus {
            metric: m.name.clone(),
            target: t.key(),
            value: x.value.filter(|v| v.is_finite()),
            sample: x.sample.filter(|v| v.is_finite()),
            verdict: v,
            message,
            measured_at: now,
            breaches,
            breach_values: values.split_off(keep),
            first_breach_at: first,
        };
        match prev {
            Some(i) => gates[i] = g,
            None => gates.push(g),
        }
    }
}

/// Where the gates stand for a target.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Every metric's latest verdict (taken after `since`) is a pass.
    Pass,
    /// Not yet: the reasons, one per metric holding.
    Hold(Vec<String>),
    /// A rollback trigger breached `consecutive` times: the metric's status.
    Breach(GateStatus),
}

pub fn outcome(metrics: &[Metric], gates: &[GateStatus], t: &Target, since: Option<DateTime<Utc>>) -> Outcome {
    let mut holding = vec![];
    for (i, m) in metrics.iter().enumerate() {
        match gates.iter().find(|g| g.metric == m.name && g.target == t.key()) {
            Some(g) if g.breaches >= m.consecutive.max(1) => return Outcome::Breach(g.clone()),
            Some(g) if since.is_some_and(|s| g.measured_at < s) => holding.push(format!("{}: not measured yet", m.name)),
            Some(g) if g.verdict == Verdict::Pass => {}
            // The query itself may be what is wrong (a typo, a metric nobody exports): name it.
            Some(g) if g.verdict == Verdict::NoData || g.message.contains(QUERY_REJECTED) => {
                holding.push(format!("{} (spec.analysis.metrics[{}].query): {}", m.name, spec_index(metrics, i), g.message))
            }
            Some(g) => holding.push(format!("{}: {}", m.name, g.message)),
            None => holding.push(format!("{}: not measured yet", m.name)),
        }
    }
    if holding.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Hold(holding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Threshold;

    #[test]
    fn a_multi_component_release_measures_each_component_on_its_own() {
        let spec: LocallReleaseSpec = serde_yaml::from_str(
            r#"
version: "1"
components:
- {name: api, service: {}, template: {spec: {containers: [{name: a, image: a}]}}}
- {name: worker, template: {spec: {containers: [{name: w, image: w}]}}}
stages: [{name: production}]
analysis:
  metrics:
  - {name: errors, query: 'e{service="{{service}}"}', sampleQuery: 'n{c="{{component}}"}', success: {op: "<", value: 1}}
  - {name: lag, component: worker, query: 'lag{service="{{service}}"}', success: {op: "<", value: 1}}
  - {name: alerts, query: 'count(ALERTS)', rollback: {op: ">", value: 0}}
"#,
        )
        .unwrap();
        let m = metrics(&spec, "platform");
        let got: Vec<(&str, &str, Option<&str>)> =
            m.iter().map(|m| (m.name.as_str(), m.query.as_str(), m.sample_query.as_deref())).collect();
        assert_eq!(
            got,
            [
                ("api/errors", r#"e{service="platform-api"}"#, Some(r#"n{c="api"}"#)),
                ("worker/errors", r#"e{service="platform-worker"}"#, Some(r#"n{c="worker"}"#)),
                ("worker/lag", r#"lag{service="platform-worker"}"#, None),
                ("alerts", "count(ALERTS)", None),
            ]
        );
        // A held metric's message names its field in the spec, not its place in the expansion.
        let t = Target {
            namespace: "p".into(),
            service: "platform".into(),
            version: "1".into(),
            stage: "production".into(),
            interval: Duration::from_secs(1),
        };
        let gates: Vec<GateStatus> = m
            .iter()
            .map(|x| GateStatus {
                metric: x.name.clone(),
                target: t.key(),
                value: None,
                sample: None,
                verdict: Verdict::NoData,
                message: "no data".into(),
                measured_at: Utc::now(),
                breaches: 0,
                breach_values: vec![],
                first_breach_at: None,
            })
            .collect();
        let Outcome::Hold(why) = outcome(&m, &gates, &t, None) else { panic!("holds") };
        assert!(
            why[1].contains("spec.analysis.metrics[0]")
                && why[2].contains("spec.analysis.metrics[1]")
                && why[3].contains("spec.analysis.metrics[2]"),
            "{why:?}"
        );
        // A release of one template measures its metrics as written.
        let single: LocallReleaseSpec = serde_yaml::from_str("version: '1'\ntemplate: {spec: {containers: [{name: a, image: a}]}}\nstages: [{name: p}]\nanalysis: {metrics: [{name: e, query: q}]}").unwrap();
        assert!(matches!(metrics(&single, "x"), Cow::Borrowed(_)));
    }

    fn metric(yaml: &str) -> Metric {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn m(v: Option<f64>) -> Measurement {
        Measurement { value: v, sample: None, error: None }
    }

    const ERR: &str =
        r#"{name: error-rate, query: "q", success: {op: "<", value: 0.001}, rollback: {op: ">", value: 0.05}, consecutive: 3}"#;

    #[test]
    fn verdicts_follow_thresholds_and_policies() {
        let e = metric(ERR);
        assert_eq!(verdict(&e, &m(Some(0.0005))).0, Verdict::Pass);
        assert_eq!(verdict(&e, &m(Some(0.01))).0, Verdict::Inconclusive);
        assert_eq!(verdict(&e, &m(Some(0.08))).0, Verdict::Fail);
        assert_eq!(verdict(&e, &m(None)).0, Verdict::NoData, "no data holds by default: never promotes");
        assert_eq!(verdict(&e, &m(Some(f64::NAN))).0, Verdict::NoData, "NaN (0/0) is no data, no hand-written check needed");
        let x = Measurement { value: None, sample: None, error: Some("connection refused".into()) };
        assert_eq!(verdict(&e, &x).0, Verdict::Error);
        let strict = metric(r#"{name: e, query: q, rollback: {op: ">", value: 0.05}, noData: Fail, onError: Fail}"#);
        assert_eq!(verdict(&strict, &m(None)).0, Verdict::Fail);
        assert_eq!(verdict(&strict, &x).0, Verdict::Fail);
        let sample = metric(r#"{name: e, query: q, success: {op: "<", value: 0.01}, sampleQuery: s, minSample: 100}"#);
        let small = Measurement { value: Some(0.0), sample: Some(20.0), error: None };
        assert_eq!(verdict(&sample, &small).0, Verdict::NoData, "too few requests to judge");
        assert!(Threshold { op: ">=".into(), value: 2.0 }.holds(2.0));
    }

    #[test]
    fn consecutive_breaches_trigger_and_a_pass_resets_them() {
        let metrics = vec![metric(ERR)];
        let t = Target {
            namespace: "prod".into(),
            service: "api".into(),
            version: "3.0.0".into(),
            stage: "production".into(),
            interval: Duration::from_secs(10),
        };
        let mut gates = vec![];
        let now = Utc::now();
        let tick = |gates: &mut Vec<GateStatus>, v: Option<f64>, s: i64| {
            fold(&metrics, gates, &t, &BTreeMap::from([("error-rate".to_string(), m(v))]), now + chrono::Duration::seconds(s));
            outcome(&metrics, gates, &t, None)
        };
        assert!(matches!(tick(&mut gates, Some(0.08), 0), Outcome::Hold(_)));
        assert!(matches!(tick(&mut gates, Some(0.0001), 10), Outcome::Pass), "a pass resets the run");
        tick(&mut gates, Some(0.08), 20);
        tick(&mut gates, None, 30); // no data neither counts nor resets
        tick(&mut gates, Some(0.09), 40);
        match tick(&mut gates, Some(0.07), 50) {
            Outcome::Breach(g) => {
                assert_eq!(g.breach_values, vec![0.08, 0.09, 0.07]);
                assert_eq!(g.first_breach_at, Some(now + chrono::Duration::seconds(20)));
            }
            o => panic!("expected a breach, got {o:?}"),
        }
    }

    #[test]
    fn queries_get_their_placeholders_and_are_due_by_interval() {
        let metrics = vec![metric(
            r#"{name: p95, query: "x{namespace=\"{{namespace}}\",version=\"{{version}}\",service=\"{{service}}\"}", rollback: {op: ">", value: 2}, interval: 1m}"#,
        )];
        let t = Target {
            namespace: "prod".into(),
            service: "api".into(),
            version: "3.0.0".into(),
            stage: "production".into(),
            interval: Duration::from_secs(10),
        };
        let now = Utc::now();
        let d = due(&metrics, &[], &t, now);
        assert_eq!(d[0].query, r#"x{namespace="prod",version="3.0.0",service="api"}"#);
        let mut gates = vec![];
        fold(&metrics, &mut gates, &t, &BTreeMap::from([("p95".to_string(), m(Some(0.3)))]), now);
        assert!(due(&metrics, &gates, &t, now + chrono::Duration::seconds(30)).is_empty());
        assert_eq!(due(&metrics, &gates, &t, now + chrono::Duration::seconds(60)).len(), 1);
        assert_eq!(next_due(&metrics, &gates, &t, now + chrono::Duration::seconds(45)), Duration::from_secs(15));
    }
}
