//! `kubectl locall get`: a release drawn as a tree. Pure: the same object always gives the same
//! text (times are printed as they are recorded, in UTC), so `get -w` can redraw on change only.

use crate::api::{JobState, LocallRelease, Phase};
use chrono::{DateTime, Utc};
use kube::ResourceExt;

/// One line of the tree and the lines under it.
#[derive(Debug, Clone, Default)]
struct Node {
    label: String,
    children: Vec<Node>,
}

impl Node {
    fn new(label: impl Into<String>) -> Node {
        Node { label: label.into(), children: vec![] }
    }
    fn with(label: impl Into<String>, children: Vec<Node>) -> Node {
        Node { label: label.into(), children }
    }
}

fn draw(out: &mut String, nodes: &[Node], prefix: &str) {
    for (i, n) in nodes.iter().enumerate() {
        let last = i + 1 == nodes.len();
        let (branch, cont) = if last { ("└─ ", "   ") } else { ("├─ ", "│  ") };
        // A multi-line label keeps the tree's left edge on its continuation lines.
        let mut lines = n.label.lines();
        out.push_str(&format!("{prefix}{branch}{}\n", lines.next().unwrap_or_default()));
        for l in lines {
            out.push_str(&format!("{prefix}{cont}{l}\n"));
        }
        draw(out, &n.children, &format!("{prefix}{cont}"));
    }
}

/// `HH:MM:SS` (UTC) of a recorded time.
pub fn hms(t: DateTime<Utc>) -> String {
    t.format("%H:%M:%S").to_string()
}

/// `YYYY-MM-DD HH:MM:SSZ` of a recorded time.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// A metric value, short: at most 4 decimals, no trailing zeros.
pub fn num(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "0" || s == "-0" {
        format!("{v:.2e}")
    } else {
        s.to_string()
    }
}

fn shorten(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        format!("{}…", one_line.chars().take(max.saturating_sub(1)).collect::<String>())
    }
}

fn ready(lr: &LocallRelease) -> String {
    lr.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
        .unwrap_or_else(|| "Unknown".into())
}

/// Draws the release as a tree (see the module doc).
pub fn render_tree(lr: &LocallRelease) -> String {
    let st = lr.status.clone().unwrap_or_default();
    let spec = &lr.spec;
    let ns = lr.namespace().unwrap_or_default();
    let phase = st.phase;
    let current_gen = st.observed_generation.is_some() && st.observed_generation == lr.metadata.generation;

    let mut head = format!("{} ({ns})  {}  {}  weight {}%  Ready={}", lr.name_any(), spec.version, phase, st.weight, ready(lr));
    if st.paused {
        head.push_str("  PAUSED");
    }
    if !current_gen {
        head.push_str(&format!(
            "  (status describes generation {}, spec is generation {})",
            st.observed_generation.map(|g| g.to_string()).unwrap_or_else(|| "none".into()),
            lr.metadata.generation.map(|g| g.to_string()).unwrap_or_else(|| "?".into())
        ));
    }
    let mut out = format!("{head}\n");
    let mut nodes: Vec<Node> = vec![];

    // Stable version.
    nodes.push(Node::new(match &st.stable {
        Some(s) => format!("stable {} (rev {})", s.version, s.revision),
        None => "stable: none yet (first release)".into(),
    }));
    if !st.candidate_version.is_empty() && st.candidate_version != spec.version {
        nodes.push(Node::new(format!("candidate {} (rev {}) per status", st.candidate_version, st.revision)));
    }
    if let Some(by) = &st.requested_by {
        nodes.push(Node::new(format!("{} requested by {by} (as the API server authenticated them)", st.candidate_version)));
    }

    // Components, with their pods of the version in flight Ready where the release stands.
    if !st.components.is_empty() {
        let failed = st.failure.as_ref().and_then(|f| f.component.clone());
        let parts = st
            .components
            .iter()
            .map(|c| {
                let role = if c.routed { "traffic" } else { "replaced" };
                let after = if c.after.is_empty() { String::new() } else { format!(", after {}", c.after.join(", ")) };
                let ready = if c.ready.is_empty() { String::new() } else { format!(" ready {}", c.ready) };
                let mark = if failed.as_deref() == Some(c.name.as_str()) { "  ✖ failed" } else { "" };
                Node::new(format!("{} ({role}{after}){ready}{mark}", c.name))
            })
            .collect();
        let ready = st.components_ready.clone().unwrap_or_default();
        nodes.push(Node::with(format!("components: {ready} Ready"), parts));
    }

    // Preflight.
    if !st.preflight.is_empty() {
        let passed = st.preflight.iter().filter(|c| c.passed).count();
        let failed: Vec<Node> =
            st.preflight.iter().filter(|c| !c.passed).map(|c| Node::new(format!("✖ {}: {}", c.name, shorten(&c.message, 120)))).collect();
        nodes.push(Node::with(format!("preflight: {passed}/{} passed", st.preflight.len()), failed));
    }

    // Jobs.
    if !st.jobs.is_empty() {
        let w_name = st.jobs.iter().map(|j| job_label(j).chars().count()).max().unwrap_or(0);
        let w_kind = st.jobs.iter().map(|j| format!("{:?}", j.kind).len()).max().unwrap_or(0);
        let jobs = st
            .jobs
            .iter()
            .map(|j| {
                let mark = match j.state {
                    JobState::Succeeded => "✔",
                    JobState::Failed => "✖",
                    JobState::Running => "…",
                };
                let mut outcome = match (j.state, j.reason.is_empty()) {
                    (JobState::Running, _) => "Running".to_string(),
                    (_, false) => j.reason.clone(),
                    (JobState::Succeeded, true) => "Succeeded".into(),
                    (JobState::Failed, true) => "Failed".into(),
                };
                if j.state == JobState::Failed && !j.message.is_empty() {
                    outcome.push_str(&format!(": {}", shorten(&j.message, 100)));
                }
                let kind = format!("{:?}", j.kind);
                format!("{mark} {:<w_name$}  {kind:<w_kind$}  {outcome}", job_label(j))
            })
            .map(Node::new)
            .collect();
        nodes.push(Node::with("jobs", jobs));
    }

    // Stages.
    let stages: Vec<Node> = spec
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let idx = st.stage_index as usize;
            let stage_ns = spec.stage_namespace(i, &ns);
            let failed_here = st.failure.as_ref().is_some_and(|f| f.stage == s.name);
            let is_current = i == idx && matches!(phase, Phase::Staging | Phase::Production | Phase::AwaitingApproval);
            let done = match phase {
                Phase::Succeeded => current_gen,
                Phase::GoLive => true,
                Phase::Staging | Phase::Production | Phase::AwaitingApproval => i < idx,
                _ => i < idx && !failed_here,
            };
            let (mark, detail) = if failed_here {
                ("✖", format!("failed  {}%", st.weight))
            } else if is_current && phase == Phase::AwaitingApproval {
                ("⏸", "awaiting approval".to_string())
            } else if is_current {
                let mut d = String::new();
                if !s.steps.is_empty() {
                    d.push_str(&format!("step {}/{}  ", st.step + 1, s.steps.len()));
                }
                d.push_str(&format!("{}%", st.weight));
                if let (Some(step), Some(started)) = (s.steps.get(st.step as usize), st.step_started_at) {
                    if let Some(p) = &step.pause {
                        if let Ok(d2) = chrono::Duration::from_std(p.get()) {
                            d.push_str(&format!("  holding until {}", hms(started + d2)));
                        }
                    }
                }
                if st.promoted_step == Some(st.step) {
                    d.push_str("  (promoted)");
                }
                ("▶", d)
            } else if done {
                ("✔", "100%".to_string())
            } else if matches!(phase, Phase::RollingBack | Phase::RolledBack | Phase::Failed) && i <= idx {
                ("✖", format!("{}%", if i == idx { st.weight } else { 0 }))
            } else {
                ("○", if s.approval { "needs approval".to_string() } else { "pending".to_string() })
            };
            let mut children = vec![];
            if s.steps.len() > 1 || (is_current && !s.steps.is_empty()) {
                let steps: Vec<String> = s
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(k, step)| {
                        let m = if done {
                            " ✔"
                        } else if is_current && phase != Phase::AwaitingApproval {
                            match (k as u32).cmp(&st.step) {
                                std::cmp::Ordering::Less => " ✔",
                                std::cmp::Ordering::Equal => " ▶",
                                std::cmp::Ordering::Greater => "",
                            }
                        } else if failed_here && (k as u32) < st.step {
                            " ✔"
                        } else if failed_here && k as u32 == st.step {
                            " ✖"
                        } else {
                            ""
                        };
                        let pause = step.pause.as_ref().map(|p| format!(" ({p})")).unwrap_or_default();
                        format!("{}%{pause}{m}", step.weight)
                    })
                    .collect();
                children.push(Node::new(format!("steps: {}", steps.join(" → "))));
            }
            if !s.verify.is_empty() {
                children.push(Node::new(format!("verify: {}", s.verify.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", "))));
            }
            let approval = if s.approval && !is_current { "  (approval)" } else { "" };
            Node::with(format!("{mark} {} ({stage_ns})  {detail}{approval}", s.name), children)
        })
        .collect();
    nodes.push(Node::with("stages", stages));

    // Gates.
    if !st.gates.is_empty() {
        let gates = st
            .gates
            .iter()
            .map(|g| {
                let value = g.value.map(num).unwrap_or_else(|| "-".into());
                let verdict = format!("{:?}", g.verdict);
                // The message usually starts with the raw value ("0.0004 meets < 0.02").
                let msg = match g.message.split_once(' ') {
                    Some((first, rest)) if first.parse::<f64>().is_ok() => rest.to_string(),
                    _ => g.message.clone(),
                };
                let mut l = format!("{} on {} = {value} {verdict}", g.metric, g.target);
                if !msg.is_empty() {
                    l.push_str(&format!(" ({})", shorten(&msg, 100)));
                }
                if g.breaches > 0 {
                    l.push_str(&format!("  breaches {}", g.breaches));
                }
                l.push_str(&format!("  at {}", hms(g.measured_at)));
                Node::new(l)
            })
            .collect();
        nodes.push(Node::with("gates", gates));
    }

    // Go-live windows.
    if let Some(g) = &spec.go_live {
        let windows = g.effective();
        if !windows.is_empty() {
            let wi = st.window_index as usize;
            let parts: Vec<String> = windows
                .iter()
                .enumerate()
                .map(|(k, w)| {
                    let m = match phase {
                        Phase::Succeeded if current_gen => " ✔",
                        Phase::GoLive if k < wi => " ✔",
                        Phase::GoLive if k == wi => " ▶",
                        Phase::RollingBack | Phase::RolledBack
                            if st.failure.as_ref().is_some_and(|f| f.message.contains(&format!("go-live window {}", w.name))) =>
                        {
                            " ✖"
                        }
                        _ => "",
                    };
                    format!("{}{m}", w.name)
                })
                .collect();
            let mut l = format!("go-live: {}", parts.join(" → "));
            if phase == Phase::GoLive {
                if let (Some(w), Some(start)) = (windows.get(wi), st.window_started_at) {
                    if let Ok(d) = chrono::Duration::from_std(w.duration.get()) {
                        l.push_str(&format!("  (window {} since {}, until {})", w.name, hms(start), hms(start + d)));
                    }
                }
            }
            if st.promoted_full {
                l.push_str("  (skipped: promoted in full)");
            }
            nodes.push(Node::new(l));
        }
    }

    // Approvals.
    match st.approvals.len() {
        0 => {}
        1 => {
            let a = &st.approvals[0];
            nodes.push(Node::new(format!("approvals: {} by {} ({}) at {}", a.stage, a.by, a.source, stamp(a.at))));
        }
        _ => nodes.push(Node::with(
            "approvals",
            st.approvals.iter().map(|a| Node::new(format!("{} by {} ({}) at {}", a.stage, a.by, a.source, stamp(a.at)))).collect(),
        )),
    }

    // Failure / rollback.
    if let Some(f) = &st.failure {
        let title = if matches!(phase, Phase::RollingBack | Phase::RolledBack) { "rollback" } else { "failure" };
        let mut c = vec![Node::new(format!("reason: {}", f.reason)), Node::new(format!("what: {}", shorten(&f.message, 160)))];
        if !f.stage.is_empty() {
            c.push(Node::new(format!("stage: {}", f.stage)));
        }
        if let Some(component) = &f.component {
            c.push(Node::new(format!("component: {component} (every component rolled back with it)")));
        }
        c.push(Node::new(format!("detected at {}{}", stamp(f.at), if f.traffic_moved { " (traffic had moved)" } else { "" })));
        if let Some(m) = &f.metric {
            let values: Vec<String> = m.values.iter().copied().map(num).collect();
            c.push(Node::new(format!(
                "metric {} {} in {}: values {} (first breach {})",
                m.metric,
                m.threshold,
                m.context,
                values.join(", "),
                hms(m.first_breach_at)
            )));
        }
        if let Some(t) = f.traffic_restored_at {
            let reaction = f
                .metric
                .as_ref()
                .map(|m| format!(" ({:.1}s after the first breach)", (t - m.first_breach_at).num_milliseconds() as f64 / 1000.0))
                .unwrap_or_default();
            let to = st.stable.as_ref().map(|s| format!(" to {}", s.version)).unwrap_or_default();
            c.push(Node::new(format!("traffic restored{to} at {}{reaction}", hms(t))));
        }
        if let Some(t) = f.database_restored_at {
            c.push(Node::new(format!(
                "database restored at {}{}",
                hms(t),
                st.backup_id.as_ref().map(|b| format!(" (backup {b})")).unwrap_or_default()
            )));
        }
        if let Some(t) = f.verified_at {
            let verdict = st
                .conditions
                .iter()
                .find(|c| c.type_ == "RollbackVerified")
                .map(|c| if c.status == "True" { " ✔".to_string() } else { format!(" ✖ {}", c.message) })
                .unwrap_or_default();
            c.push(Node::new(format!("verified at {}{verdict}", hms(t))));
        }
        nodes.push(Node::with(title, c));
    }

    if !st.message.is_empty() {
        nodes.push(Node::new(format!("message: {}", shorten(&st.message, 200))));
    }
    draw(&mut out, &nodes, "");
    out
}

fn job_label(j: &crate::api::JobRecord) -> String {
    if j.stage.is_empty() {
        j.name.clone()
    } else {
        format!("{} ({})", j.name, j.stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lr(yaml: &str) -> LocallRelease {
        serde_yaml::from_str(yaml).expect("fixture")
    }

    const SPEC: &str = r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {name: locall-api, namespace: demo, generation: 2}
spec:
  version: 2.0.0
  template: {spec: {containers: [{name: api, image: "locall/api:2.0.0"}]}}
  stages:
  - {name: staging, namespace: demo-staging, verify: [{name: e2e}], steps: [{weight: 100}]}
  - name: production
    approval: true
    steps: [{weight: 10, pause: 20s}, {weight: 25, pause: 20s}, {weight: 50, pause: 20s}, {weight: 100}]
  goLive: {windows: [{name: 0-10s, duration: 10s, interval: 2s}, {name: 10-20s, duration: 10s, interval: 2s}]}
"#;

    fn in_progress() -> LocallRelease {
        lr(&format!(
            "{SPEC}{}",
            r#"status:
  observedGeneration: 2
  phase: Production
  message: "production step 2/4: 25%, holding until 12:31:00"
  revision: 1a2b3c4d
  candidateVersion: 2.0.0
  stable: {version: 1.0.0, revision: 7446d6bc}
  stage: production
  stageIndex: 1
  step: 1
  weight: 25
  stepStartedAt: "2026-11-24T12:30:40Z"
  preflight:
  - {name: Secret demo/locall-db, passed: true, message: ok}
  - {name: Secret demo-staging/locall-db, passed: true, message: ok}
  jobs:
  - {name: tests, kind: PreDeploy, jobName: locall-api-1a2b3c4d-pre-tests, namespace: demo, state: Succeeded, reason: Complete}
  - {name: e2e, kind: Verify, stage: staging, jobName: locall-api-1a2b3c4d-staging-e2e, namespace: demo-staging, state: Succeeded, reason: Complete}
  gates:
  - {metric: error-rate, target: production/2.0.0, value: 0.0004, verdict: Pass, message: "0.0004 meets < 0.02", measuredAt: "2026-11-24T12:30:50Z"}
  approvals:
  - {stage: production, by: alice, at: "2026-11-24T12:29:00Z", source: annotation}
  conditions:
  - {type: Ready, status: "False", reason: Progressing, message: "", lastTransitionTime: "2026-11-24T12:00:00Z"}
"#
        ))
    }

    #[test]
    fn in_progress_with_steps() {
        let mut lr = in_progress();
        lr.status.as_mut().unwrap().requested_by = Some("carol".into());
        let out = render_tree(&lr);
        println!("{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "locall-api (demo)  2.0.0  Production  weight 25%  Ready=False");
        assert_eq!(lines[1], "├─ stable 1.0.0 (rev 7446d6bc)");
        assert_eq!(lines[2], "├─ 2.0.0 requested by carol (as the API server authenticated them)");
        assert!(out.contains("├─ preflight: 2/2 passed\n"));
        assert!(out.contains("│  ├─ ✔ tests          PreDeploy  Complete\n"), "{out}");
        assert!(out.contains("│  └─ ✔ e2e (staging)  Verify     Complete\n"), "{out}");
        assert!(out.contains("│  ├─ ✔ staging (demo-staging)  100%\n"), "{out}");
        assert!(out.contains("│  └─ ▶ production (demo)  step 2/4  25%  holding until 12:31:00\n"), "{out}");
        assert!(out.contains("│     └─ steps: 10% (20s) ✔ → 25% (20s) ▶ → 50% (20s) → 100%\n"), "{out}");
        assert!(out.contains("│  └─ error-rate on production/2.0.0 = 0.0004 Pass (meets < 0.02)  at 12:30:50\n"), "{out}");
        assert!(out.contains("├─ go-live: 0-10s → 10-20s\n"), "{out}");
        assert!(out.contains("├─ approvals: production by alice (annotation) at 2026-11-24 12:29:00Z\n"), "{out}");
        assert!(lines.last().unwrap().starts_with("└─ message: production step 2/4"), "{out}");
        assert!(!out.contains("rollback"), "{out}");
    }

    #[test]
    fn awaiting_approval() {
        let mut r = in_progress();
        let st = r.status.as_mut().unwrap();
        st.phase = Phase::AwaitingApproval;
        st.step = 0;
        st.weight = 0;
        st.step_started_at = None;
        st.approvals.clear();
        st.gates.clear();
        st.message = "waiting for an approval of production for 2.0.0".into();
        let out = render_tree(&r);
        println!("{out}");
        assert!(out.starts_with("locall-api (demo)  2.0.0  AwaitingApproval  weight 0%  Ready=False\n"));
        assert!(out.contains("✔ staging (demo-staging)  100%"), "{out}");
        assert!(out.contains("└─ ⏸ production (demo)  awaiting approval\n"), "{out}");
        assert!(out.contains("steps: 10% (20s) → 25% (20s) → 50% (20s) → 100%\n"), "{out}");
        assert!(!out.contains("approvals:"), "{out}");
        assert!(!out.contains("holding"), "{out}");
    }

    #[test]
    fn a_multi_component_release_shows_each_component_and_the_one_that_failed() {
        let r = lr(&format!(
            "{SPEC}{}",
            r#"status:
  observedGeneration: 2
  phase: RolledBack
  revision: 1a2b3c4d
  candidateVersion: 2.0.0
  stable: {version: 1.0.0, revision: 7446d6bc}
  stage: production
  components:
  - {name: api, routed: true, ready: 0/2}
  - {name: worker, after: [api], ready: 0/1}
  componentsReady: 0/2
  failure:
    reason: MetricBreached
    message: "component worker: metric worker/sync-failures breached its rollback trigger > 0.1 2 times in a row"
    stage: production
    component: worker
    at: "2026-11-24T23:48:06.09Z"
"#
        ));
        let out = render_tree(&r);
        println!("{out}");
        assert!(out.contains("components: 0/2 Ready\n"), "{out}");
        assert!(out.contains("api (traffic) ready 0/2\n"), "{out}");
        assert!(out.contains("worker (replaced, after api) ready 0/1  ✖ failed\n"), "{out}");
        assert!(out.contains("component: worker (every component rolled back with it)"), "{out}");
    }

    #[test]
    fn rolled_back_after_a_metric_breach() {
        let r = lr(&format!(
            "{SPEC}{}",
            r#"status:
  observedGeneration: 2
  phase: RolledBack
  message: "rolled back to 1.0.0: metric error-rate breached its rollback trigger > 0.05 2 times in a row"
  revision: 1a2b3c4d
  candidateVersion: 2.0.0
  stable: {version: 1.0.0, revision: 7446d6bc}
  backupId: locall-api-1a2b3c4d-backup
  stage: staging
  stageIndex: 0
  weight: 0
  jobs:
  - {name: migrate, kind: Migrate, jobName: locall-api-1a2b3c4d-migrate, namespace: demo, state: Succeeded, reason: Complete}
  - {name: restore, kind: Restore, jobName: locall-api-1a2b3c4d-restore, namespace: demo, state: Succeeded, reason: Complete}
  - {name: smoke, kind: Verify, stage: rollback, jobName: locall-api-1a2b3c4d-rollback-smoke, namespace: demo, state: Failed, reason: BackoffLimitExceeded, message: "Job has reached the specified backoff limit"}
  failure:
    reason: MetricBreached
    message: metric error-rate breached its rollback trigger > 0.05 2 times in a row in stage staging, step 1/1 (100%)
    stage: staging
    at: "2026-11-24T23:48:06.09Z"
    trafficMoved: true
    trafficRestoredAt: "2026-11-24T23:48:06.148Z"
    databaseRestoredAt: "2026-11-24T23:48:07.27Z"
    verifiedAt: "2026-11-24T23:48:08.39Z"
    metric:
      metric: error-rate
      context: stage staging, step 1/1 (100%)
      threshold: "> 0.05"
      values: [0.06122448979591837, 0.08]
      firstBreachAt: "2026-11-24T23:48:04.06Z"
  conditions:
  - {type: Ready, status: "False", reason: RolledBack, message: "", lastTransitionTime: "2026-11-24T12:00:00Z"}
  - {type: RollbackVerified, status: "True", reason: RollbackVerified, message: "", lastTransitionTime: "2026-11-24T12:00:00Z"}
"#
        ));
        let out = render_tree(&r);
        println!("{out}");
        assert!(out.starts_with("locall-api (demo)  2.0.0  RolledBack  weight 0%  Ready=False\n"));
        assert!(out.contains("✖ smoke (rollback)  Verify   BackoffLimitExceeded: Job has reached the specified backoff limit"), "{out}");
        assert!(out.contains("├─ ✖ staging (demo-staging)  failed  0%\n"), "{out}");
        assert!(out.contains("└─ ○ production (demo)  needs approval  (approval)\n"), "{out}");
        assert!(out.contains("├─ rollback\n"), "{out}");
        assert!(out.contains("│  ├─ reason: MetricBreached\n"), "{out}");
        assert!(
            out.contains("metric error-rate > 0.05 in stage staging, step 1/1 (100%): values 0.0612, 0.08 (first breach 23:48:04)"),
            "{out}"
        );
        assert!(out.contains("traffic restored to 1.0.0 at 23:48:06 (2.1s after the first breach)"), "{out}");
        assert!(out.contains("database restored at 23:48:07 (backup locall-api-1a2b3c4d-backup)"), "{out}");
        assert!(out.contains("│  └─ verified at 23:48:08 ✔\n"), "{out}");
        assert!(out.lines().last().unwrap().starts_with("└─ message: rolled back to 1.0.0"));
    }

    #[test]
    fn go_live_and_succeeded() {
        let mut r = in_progress();
        let st = r.status.as_mut().unwrap();
        st.phase = Phase::GoLive;
        st.weight = 100;
        st.window_index = 1;
        st.window = "10-20s".into();
        st.window_started_at = Some("2026-11-24T12:40:00Z".parse().unwrap());
        let out = render_tree(&r);
        assert!(out.contains("go-live: 0-10s ✔ → 10-20s ▶  (window 10-20s since 12:40:00, until 12:40:10)"), "{out}");
        assert!(out.contains("✔ production (demo)  100%  (approval)"), "{out}");
        r.status.as_mut().unwrap().phase = Phase::Succeeded;
        let out = render_tree(&r);
        assert!(out.contains("go-live: 0-10s ✔ → 10-20s ✔\n"), "{out}");
    }

    #[test]
    fn no_status_yet_and_stale_generation() {
        let mut r = lr(SPEC);
        let out = render_tree(&r);
        assert!(out.starts_with("locall-api (demo)  2.0.0  Pending  weight 0%  Ready=Unknown  (status describes generation none"));
        assert!(out.contains("stable: none yet"));
        r.metadata.generation = Some(3);
        r.status = in_progress().status;
        assert!(render_tree(&r).contains("(status describes generation 2, spec is generation 3)"));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(num(0.0), "0");
        assert_eq!(num(0.0004), "0.0004");
        assert_eq!(num(0.18015873), "0.1802");
        assert_eq!(num(0.00001234), "1.23e-5");
        assert_eq!(num(12.5), "12.5");
    }
}
