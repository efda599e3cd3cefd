//! `kubectl locall list` and `kubectl locall status`: pure text from releases.

use crate::api::{LocallRelease, Phase};
use chrono::{DateTime, Utc};
use kube::ResourceExt;

/// kubectl-style age: 45s, 12m, 5h, 3d.
pub fn age(created: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(c) = created else { return "<unknown>".into() };
    let s = (now - c).num_seconds().max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The release's phase if it is terminal for its current spec generation and the operator has
/// handled the last `locall.io/request` (a `retry` just sent is not finished yet).
pub fn terminal(lr: &LocallRelease) -> Option<Phase> {
    let st = lr.status.as_ref()?;
    if let Ok(Some(req)) = crate::controller::observe::request(lr) {
        if !req.id.is_empty() && req.id != st.handled_request {
            return None;
        }
    }
    (st.phase.is_terminal() && st.observed_generation.is_some() && st.observed_generation == lr.metadata.generation).then_some(st.phase)
}

/// `status`'s exit code for a terminal phase: 0 Succeeded, 1 RolledBack or Failed.
pub fn exit_code(phase: Phase) -> i32 {
    if phase == Phase::Succeeded {
        0
    } else {
        1
    }
}

/// One line: `demo/locall-api 2.0.0 Succeeded: message`.
pub fn status_line(lr: &LocallRelease) -> String {
    let st = lr.status.clone().unwrap_or_default();
    let mut l = format!("{}/{} {} {}", lr.namespace().unwrap_or_default(), lr.name_any(), lr.spec.version, st.phase);
    if !st.message.is_empty() {
        l.push_str(&format!(": {}", st.message));
    }
    l
}

/// The `list` table. `all_namespaces` adds the NAMESPACE column.
pub fn render_list(items: &[LocallRelease], all_namespaces: bool, now: DateTime<Utc>) -> String {
    let mut rows: Vec<Vec<String>> = vec![];
    let mut header = vec!["NAME", "VERSION", "STABLE", "PHASE", "STAGE", "WEIGHT", "AGE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    rows.push(header.iter().map(|s| s.to_string()).collect());
    let mut sorted: Vec<&LocallRelease> = items.iter().collect();
    sorted.sort_by_key(|l| (l.namespace(), l.name_any()));
    for lr in sorted {
        let st = lr.status.clone().unwrap_or_default();
        let mut row = vec![
            lr.name_any(),
            lr.spec.version.clone(),
            st.stable.map(|s| s.version).unwrap_or_else(|| "<none>".into()),
            format!("{}{}", st.phase, if st.paused { " (paused)" } else { "" }),
            if st.stage.is_empty() { "<none>".into() } else { st.stage },
            format!("{}%", st.weight),
            age(lr.metadata.creation_timestamp.as_ref().and_then(|t| DateTime::from_timestamp_millis(t.0.as_millisecond())), now),
        ];
        if all_namespaces {
            row.insert(0, lr.namespace().unwrap_or_default());
        }
        rows.push(row);
    }
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().enumerate().map(|(c, v)| format!("{v:<w$}", w = widths[c])).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lr(ns: &str, name: &str, gen: i64, status: &str) -> LocallRelease {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: {name}, namespace: {ns}, generation: {gen}, creationTimestamp: "2026-11-24T12:00:00Z"}}
spec:
  version: 2.0.0
  template: {{spec: {{containers: [{{name: api, image: x}}]}}}}
  stages: [{{name: production}}]
status: {status}
"#
        ))
        .unwrap()
    }

    #[test]
    fn table() {
        let now: DateTime<Utc> = "2026-11-24T12:05:00Z".parse().unwrap();
        let items = vec![
            lr("b", "api", 1, "{phase: Production, stage: production, weight: 25, stable: {version: 1.0.0, revision: abc}}"),
            lr("a", "web", 1, "{}"),
        ];
        let out = render_list(&items, true, now);
        assert_eq!(
            out,
            "NAMESPACE   NAME   VERSION   STABLE   PHASE        STAGE        WEIGHT   AGE\n\
             a           web    2.0.0     <none>   Pending      <none>       0%       5m\n\
             b           api    2.0.0     1.0.0    Production   production   25%      5m\n"
        );
        assert!(render_list(&items, false, now).starts_with("NAME   VERSION"));
    }

    #[test]
    fn terminal_only_for_the_current_generation() {
        assert_eq!(terminal(&lr("a", "x", 2, "{phase: Succeeded, observedGeneration: 1}")), None);
        assert_eq!(terminal(&lr("a", "x", 2, "{phase: Production, observedGeneration: 2}")), None);
        assert_eq!(terminal(&lr("a", "x", 2, "{phase: RolledBack, observedGeneration: 2}")), Some(Phase::RolledBack));
        let mut retried = lr("a", "x", 2, "{phase: RolledBack, observedGeneration: 2, handledRequest: r1}");
        retried.metadata.annotations = Some([("locall.io/request".to_string(), r#"{"action":"retry","id":"r2"}"#.to_string())].into());
        assert_eq!(terminal(&retried), None, "a request the operator has not handled yet");
        retried.status.as_mut().unwrap().handled_request = "r2".into();
        assert_eq!(terminal(&retried), Some(Phase::RolledBack));
        assert_eq!(exit_code(Phase::Succeeded), 0);
        assert_eq!(exit_code(Phase::RolledBack), 1);
        assert_eq!(exit_code(Phase::Failed), 1);
        assert_eq!(status_line(&lr("a", "x", 2, "{phase: Succeeded, message: done}")), "a/x 2.0.0 Succeeded: done");
    }

    #[test]
    fn ages() {
        let now: DateTime<Utc> = "2026-11-24T12:00:00Z".parse().unwrap();
        let t = |s: i64| Some(now - chrono::Duration::seconds(s));
        assert_eq!(age(t(5), now), "5s");
        assert_eq!(age(t(600), now), "10m");
        assert_eq!(age(t(3 * 3600), now), "3h");
        assert_eq!(age(t(5 * 86400), now), "5d");
    }
}
