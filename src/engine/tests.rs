//! Whole releases driven through the engine tick by tick, against an in-memory world that does
//! what the cluster would: Deployments become Ready, Jobs finish, routers apply weights.

use super::*;
use crate::api::*;
use chrono::TimeZone;
use std::collections::{BTreeMap, BTreeSet};

/// An in-memory cluster that applies the engine's decisions.
#[derive(Default)]
struct World {
    obs: Observed,
    /// Job names (suffix match) that fail when they run.
    failing: BTreeSet<String>,
    /// Jobs created over the whole test, by name, to prove none is created twice.
    created: Vec<String>,
    /// Jobs that finish only on the tick after their creation.
    running: BTreeSet<(String, String)>,
    /// Traffic history per namespace.
    weights: BTreeMap<String, Vec<i32>>,
}

impl World {
    fn apply(&mut self, d: &Decision, method: TrafficMethod) {
        for j in &d.jobs {
            let key = (j.record.namespace.clone(), j.record.job_name.clone());
            assert!(!self.created.contains(&j.record.job_name), "Job {} created twice", j.record.job_name);
            self.created.push(j.record.job_name.clone());
            self.obs.jobs.insert(key.clone(), JobObs::Running);
            self.running.insert(key);
        }
        for s in &d.desired.stages {
            for dep in &s.deployments {
                let name = names::deployment("app", &dep.revision);
                let o = DeploymentObs { replicas: dep.replicas, ready: dep.replicas, updated: dep.replicas, current: true };
                self.obs.deployments.insert((s.namespace.clone(), name), o);
            }
            if let Some(t) = &s.traffic {
                let eff = traffic::effective_weight(method, t.stable_replicas, t.candidate_replicas, t.weight, t.stable.is_some());
                let eff = if t.candidate.is_none() { 0 } else { eff };
                self.obs.traffic.insert(s.namespace.clone(), eff);
                let h = self.weights.entry(s.namespace.clone()).or_default();
                if h.last() != Some(&eff) {
                    h.push(eff);
                }
            }
        }
    }

    /// Jobs created on an earlier tick finish now.
    fn finish_jobs(&mut self) {
        for key in std::mem::take(&mut self.running) {
            let fails = self.failing.iter().any(|f| key.1.ends_with(f.as_str()));
            let state = if fails {
                JobObs::Failed { reason: "BackoffLimitExceeded".into(), message: "Job has reached the specified backoff limit".into() }
            } else {
                JobObs::Succeeded
            };
            self.obs.jobs.insert(key, state);
        }
    }
}

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
}

fn spec(yaml: &str) -> LocallReleaseSpec {
    serde_yaml::from_str(yaml).expect("spec parses")
}

const BASE: &str = r#"
version: "1.0.0"
replicas: 2
template:
  spec:
    containers: [{name: api, image: "locall/api:1.0.0"}]
preflight:
  secrets: [{name: db, keys: [url]}]
hooks:
  preDeploy: [{name: tests, command: [make, test]}, {name: cache-clear}]
  migration:
    changesSchema: true
    backup: {command: [backup]}
    migrate: {command: [migrate]}
    restore: {command: [restore]}
  postDeploy: [{name: alerts}]
stages:
- name: staging
  namespace: stg
  verify: [{name: e2e}]
  steps: [{weight: 100}]
- name: production
  namespace: prod
  approval: true
  steps: [{weight: 5, pause: 1m}, {weight: 25, pause: 1m}, {weight: 50, pause: 1m}, {weight: 100}]
approvals: [{stage: production, version: "1.0.0", by: alice}]
"#;

/// Runs the release until it is terminal or `max` ticks pass; time jumps to each requeue.
fn run(
    world: &mut World,
    spec: &LocallReleaseSpec,
    status: &mut LocallReleaseStatus,
    now: &mut chrono::DateTime<Utc>,
    max: usize,
) -> Vec<Decision> {
    let mut out = vec![];
    for _ in 0..max {
        world.obs.preflight.get_or_insert_with(|| vec![CheckResult { name: "secret".into(), passed: true, message: "ok".into() }]);
        let d = decide(Release { name: "app", namespace: "ns", generation: Some(1), spec, status }, &world.obs, *now);
        world.apply(&d, spec.traffic.method);
        *status = d.status.clone();
        let terminal = status.phase.is_terminal();
        let wait = d.requeue;
        out.push(d);
        if terminal {
            break;
        }
        world.finish_jobs();
        *now += chrono::Duration::from_std(wait.unwrap_or(Duration::from_secs(1)).max(Duration::from_secs(1))).unwrap();
    }
    out
}

fn phases(ds: &[Decision]) -> Vec<Phase> {
    let mut v: Vec<Phase> = vec![];
    for d in ds {
        if v.last() != Some(&d.status.phase) {
            v.push(d.status.phase);
        }
    }
    v
}

#[test]
fn first_release_goes_straight_to_100_and_succeeds() {
    let s = spec(BASE);
    let (mut w, mut st, mut now) = (World::default(), LocallReleaseStatus::default(), t0());
    let ds = run(&mut w, &s, &mut st, &mut now, 100);
    assert_eq!(st.phase, Phase::Succeeded, "{}", st.message);
    assert_eq!(phases(&ds), vec![Phase::PreDeploy, Phase::Staging, Phase::Production, Phase::Succeeded]);
    assert_eq!(st.stable.as_ref().unwrap().version, "1.0.0");
    assert_eq!(w.weights["prod"], vec![0, 100], "nothing to shift from: straight to 100%");
    let kinds: Vec<_> = st.jobs.iter().map(|j| (j.kind, j.name.as_str(), j.state)).collect();
    assert_eq!(
        kinds,
        vec![
            (JobKind::PreDeploy, "tests", JobState::Succeeded),
            (JobKind::PreDeploy, "cache-clear", JobState::Succeeded),
            (JobKind::Backup, "backup", JobState::Succeeded),
            (JobKind::Migrate, "migrate", JobState::Succeeded),
            (JobKind::Verify, "e2e", JobState::Succeeded),
            (JobKind::PostDeploy, "alerts", JobState::Succeeded),
        ]
    );
    assert_eq!(st.approvals[0].by, "alice");
    assert_eq!(st.approvals[0].source, "spec");
    assert!(conditions::is_true(&st.conditions, "Ready"));
    assert!(!conditions::is_true(&st.conditions, "Reconciling"));
}

fn released_v1() -> (World, LocallReleaseStatus, chrono::DateTime<Utc>) {
    let s = spec(BASE);
    let (mut w, mut st, mut now) = (World::default(), LocallReleaseStatus::default(), t0());
    run(&mut w, &s, &mut st, &mut now, 100);
    assert_eq!(st.phase, Phase::Succeeded);
    w.weights.clear();
    (w, st, now)
}

fn v2(method: &str) -> LocallReleaseSpec {
    let y = BASE.replace("1.0.0", "2.0.0");
    let y = if method == "gateway" { format!("{y}traffic: {{method: GatewayAPI, gateway: {{name: public}}}}\n") } else { y };
    spec(&y)
}

#[test]
fn second_release_moves_traffic_through_the_steps_with_pauses() {
    for (method, expected) in [("gateway", vec![0, 5, 25, 50, 100]), ("replicas", vec![0, 33, 50, 100])] {
        let (mut w, mut st, mut now) = released_v1();
        let s = v2(method);
        let start = now;
        let ds = run(&mut w, &s, &mut st, &mut now, 200);
        assert_eq!(st.phase, Phase::Succeeded, "{method}: {}", st.message);
        assert_eq!(w.weights["prod"], expected, "{method}");
        assert_eq!(w.weights["stg"], vec![0, 100], "{method}");
        assert!(now - start >= chrono::Duration::minutes(3), "three 1m pauses are held ({method})");
        assert_eq!(st.stable.as_ref().unwrap().version, "2.0.0");
        let last = ds.last().unwrap();
        for stage in &last.desired.stages {
            assert_eq!(stage.deployments.len(), 1, "old version's Deployment is dropped after success");
            assert_eq!(stage.deployments[0].version, "2.0.0");
        }
        let shifted = ds.iter().flat_map(|d| d.events.iter()).filter(|e| e.reason == "TrafficShifted").count();
        assert_eq!(shifted, 1 + 4, "one per step: staging 100%, production 5/25/50/100");
    }
}

#[test]
fn failing_migration_fails_before_any_traffic_moves() {
    let (mut w, mut st, mut now) = released_v1();
    w.failing.insert("migrate".into());
    let s = v2("gateway");
    run(&mut w, &s, &mut st, &mut now, 100);
    assert_eq!(st.phase, Phase::Failed);
    assert!(conditions::is_true(&st.conditions, "Stalled"));
    assert!(!conditions::is_true(&st.conditions, "Ready"));
    let job = st.jobs.iter().find(|j| j.kind == JobKind::Migrate).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.reason, "BackoffLimitExceeded");
    assert!(st.message.contains(&job.job_name) && st.message.contains("BackoffLimitExceeded"), "{}", st.message);
    assert!(w.weights.get("prod").is_none_or(|h| h.iter().all(|&x| x == 0)), "production traffic untouched");
    assert!(!st.jobs.iter().any(|j| j.kind == JobKind::Restore), "no restore for a migration that did not complete");
    assert_eq!(st.stable.as_ref().unwrap().version, "1.0.0");
}

#[test]
fn waits_for_approval_then_records_who_and_when() {
    let (mut w, mut st, mut now) = released_v1();
    let mut s = v2("gateway");
    s.approvals.clear();
    run(&mut w, &s, &mut st, &mut now, 100);
    assert_eq!(st.phase, Phase::AwaitingApproval);
    assert_eq!(st.stage, "production");
    assert!(w.weights.get("prod").is_none_or(|h| h.iter().all(|&x| x == 0)));
    assert!(conditions::is_true(&st.conditions, "Reconciling"));
    // An approval for another version does not count.
    w.obs.annotation_approval = Some(Approval { stage: "production".into(), version: "1.0.0".into(), by: "mallory".into() });
    run(&mut w, &s, &mut st, &mut now, 3);
    assert_eq!(st.phase, Phase::AwaitingApproval);
    w.obs.annotation_approval = Some(Approval { stage: "production".into(), version: "2.0.0".into(), by: "bob".into() });
    let approved_at = now;
    run(&mut w, &s, &mut st, &mut now, 200);
    assert_eq!(st.phase, Phase::Succeeded);
    assert_eq!(st.approvals.len(), 1);
    assert_eq!((st.approvals[0].by.as_str(), st.approvals[0].source.as_str()), ("bob", "annotation"));
    assert!(st.approvals[0].at >= approved_at);
}

#[test]
fn a_stage_needing_two_approvers_waits_for_two_distinct_people() {
    let (mut w, mut st, mut now) = released_v1();
    let mut s = v2("gateway");
    s.approvals.clear();
    s.stages[1].approvers = Some(crate::api::Approvers { required: 2, groups: vec!["release-managers".into()] });
    run(&mut w, &s, &mut st, &mut now, 100);
    assert_eq!(st.phase, Phase::AwaitingApproval);
    w.obs.annotation_approval = Some(Approval { stage: "production".into(), version: "2.0.0".into(), by: "bob".into() });
    run(&mut w, &s, &mut st, &mut now, 5);
    assert_eq!(st.phase, Phase::AwaitingApproval, "one approver of two");
    let wait = st.wait.as_ref().expect("wait");
    assert!(wait.awaiting.contains("by 1 more (approved by bob)"), "{}", wait.awaiting);
    // bob again (the annotation rewritten, or also in git) does not count twice.
    s.approvals.push(Approval { stage: "production".into(), version: "2.0.0".into(), by: "bob".into() });
    run(&mut w, &s, &mut st, &mut now, 5);
    assert_eq!(st.phase, Phase::AwaitingApproval, "bob twice is one approver");
    assert_eq!(st.approvals.len(), 1);
    assert!(w.weights.get("prod").is_none_or(|h| h.iter().all(|&x| x == 0)), "no production traffic before two approvals");
    w.obs.annotation_approval = Some(Approval { stage: "production".into(), version: "2.0.0".into(), by: "carol".into() });
    run(&mut w, &s, &mut st, &mut now, 200);
    assert_eq!(st.phase, Phase::Succeeded, "{}", st.message);
    let by: Vec<_> = st.approvals.iter().map(|a| (a.by.as_str(), a.source.as_str())).collect();
    assert_eq!(by, vec![("bob", "annotation"), ("carol", "annotation")]);
}

#[test]
fn restarting_from_status_alone_creates_no_job_twice() {
    // Every tick starts from the last written status and a fresh observation: a restart is just that.
    let (mut w, mut st, mut now) = released_v1();
    let s = v2("replicas");
    for _ in 0..300 {
        // Lose the decision's status once in a while, as if the operator died before writing it.
        let before = st.clone();
        run(&mut w, &s, &mut st, &mut now, 1);
        if now.timestamp() % 3 == 0 {
            st = before;
        }
        if st.phase.is_terminal() {
            break;
        }
    }
    assert_eq!(st.phase, Phase::Succeeded, "{}", st.message);
    let mut names = w.created.clone();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), w.created.len());
}

#[test]
fn verification_failure_in_production_after_traffic_rolls_back_and_restores_the_database() {
    let (mut w, mut st, mut now) = released_v1();
    let mut s = v2("gateway");
    s.hooks.as_mut().unwrap().post_deploy[0].name = "enable-alerts".into();
    w.failing.insert("post-enable-alerts".into());
    let ds = run(&mut w, &s, &mut st, &mut now, 200);
    assert_eq!(st.phase, Phase::RolledBack, "{}", st.message);
    assert_eq!(w.weights["prod"].last(), Some(&0), "all traffic back on stable");
    let f = st.failure.as_ref().unwrap();
    assert!(f.traffic_moved && f.traffic_restored_at.is_some() && f.database_restored_at.is_some());
    assert_eq!(st.jobs.iter().filter(|j| j.kind == JobKind::Restore).count(), 1);
    assert!(conditions::is_true(&st.conditions, "Stalled"));
    let last = ds.last().unwrap();
    let prod = &last.desired.stages[1];
    let cand = prod.deployments.iter().find(|d| d.version == "2.0.0").unwrap();
    assert_eq!(cand.replicas, 0, "failed version scaled to zero, kept for inspection");
    assert_eq!(st.stable.as_ref().unwrap().version, "1.0.0");
    // A new spec version starts a new release from 1.0.0.
    let s3 = spec(&BASE.replace("1.0.0", "3.0.0"));
    run(&mut w, &s3, &mut st, &mut now, 1);
    assert_eq!(st.candidate_version, "3.0.0");
    assert!(st.failure.is_none() && st.jobs.len() <= 2);
}

#[test]
fn failed_preflight_names_the_check() {
    let (mut w, mut st, mut now) = released_v1();
    let s = v2("gateway");
    w.created.clear();
    w.obs.preflight = Some(vec![CheckResult {
        name: "secret prod/db".into(),
        passed: false,
        message: "spec.preflight.secrets[0]: Secret prod/db not found".into(),
    }]);
    run(&mut w, &s, &mut st, &mut now, 5);
    assert_eq!(st.phase, Phase::Failed);
    assert!(st.message.contains("spec.preflight.secrets[0]"), "{}", st.message);
    assert!(w.created.is_empty(), "no Job runs after a failed preflight");
}

#[test]
fn invalid_spec_is_reported_with_the_field() {
    let mut s = v2("gateway");
    s.stages[1].steps[1].weight = 3;
    let (mut w, mut st, mut now) = (World::default(), LocallReleaseStatus::default(), t0());
    run(&mut w, &s, &mut st, &mut now, 3);
    assert_eq!(st.phase, Phase::Failed);
    assert!(st.message.contains("spec.stages[1].steps[1].weight"), "{}", st.message);
    assert!(conditions::is_true(&st.conditions, "Stalled"));
}

// ---- metric gates, go-live windows, rollback plan ----

const ANALYSIS: &str = r#"
analysis:
  interval: 10s
  metrics:
  - name: error-rate
    query: 'errors{version="{{version}}"}'
    success: {op: "<", value: 0.01}
    rollback: {op: ">", value: 0.05}
    consecutive: 2
goLive:
  windows: [{name: 0-15m, duration: 15m, interval: 1m}, {name: 15m-2h, duration: 1h45m, interval: 5m}]
rollback:
  verify: [{name: smoke}]
"#;

/// A world whose Prometheus answers with `value(version, now)`; `None` means unreachable.
fn run_measured(
    world: &mut World,
    spec: &LocallReleaseSpec,
    status: &mut LocallReleaseStatus,
    now: &mut chrono::DateTime<Utc>,
    max: usize,
    value: &dyn Fn(&str, chrono::DateTime<Utc>) -> Option<f64>,
) -> Vec<Decision> {
    let mut out = vec![];
    for _ in 0..max {
        world.obs.measurements.clear();
        world.obs.measured_target = None;
        let r = Release { name: "app", namespace: "ns", generation: Some(1), spec, status };
        if let (Some(a), Some(t)) = (&spec.analysis, gates::target(&r, status)) {
            for req in gates::due(&a.metrics, &status.gates, &t, *now) {
                let m = match value(&t.version, *now) {
                    Some(v) => gates::Measurement { value: Some(v), sample: None, error: None },
                    None => gates::Measurement { value: None, sample: None, error: Some("connection refused".into()) },
                };
                world.obs.measurements.insert(req.metric, m);
            }
            world.obs.measured_target = Some(t.key());
        }
        let mut ds = run(world, spec, status, now, 1);
        let terminal = status.phase.is_terminal();
        out.append(&mut ds);
        if terminal {
            break;
        }
    }
    out
}

fn v2_with_analysis(extra: &str) -> LocallReleaseSpec {
    spec(&format!("{}{ANALYSIS}{extra}", BASE.replace("1.0.0", "2.0.0")))
}

#[test]
fn a_bad_version_is_rolled_back_at_its_first_production_step_with_the_database_restored() {
    let (mut w, mut st, mut now) = released_v1();
    let s = v2_with_analysis("");
    let ds = run_measured(&mut w, &s, &mut st, &mut now, 400, &|v, _| Some(if v == "2.0.0" { 0.08 } else { 0.001 }));
    assert_eq!(st.phase, Phase::RolledBack, "{}", st.message);
    let f = st.failure.as_ref().unwrap();
    let m = f.metric.as_ref().expect("the breaching metric is recorded");
    assert_eq!(m.metric, "error-rate");
    assert_eq!(m.values, vec![0.08, 0.08]);
    assert_eq!(m.threshold, "> 0.05");
    assert!(m.context.starts_with("stage staging"), "caught in staging at 100%: {}", m.context);
    assert!(f.traffic_restored_at.unwrap() >= m.first_breach_at);
    assert!(f.traffic_restored_at.unwrap() - m.first_breach_at <= chrono::Duration::seconds(12), "within one interval (+2 s)");
    assert!(f.database_restored_at.is_some());
    assert_eq!(st.jobs.iter().filter(|j| j.kind == JobKind::Restore).count(), 1);
    assert!(st.jobs.iter().any(|j| j.stage == "rollback" && j.name == "smoke" && j.state == JobState::Succeeded));
    assert!(conditions::is_true(&st.conditions, "RollbackVerified"), "gates pass on the restored version");
    assert!(ds.iter().any(|d| d.notify.iter().any(|(e, _)| *e == NotifyEvent::RolledBack)));
    assert_eq!(w.weights["stg"].last(), Some(&0));
}

#[test]
fn without_a_migration_a_rollback_restores_no_database() {
    let (mut w, mut st, mut now) = released_v1();
    let mut s = v2_with_analysis("");
    s.hooks.as_mut().unwrap().migration = None;
    run_measured(&mut w, &s, &mut st, &mut now, 400, &|v, _| Some(if v == "2.0.0" { 0.08 } else { 0.001 }));
    assert_eq!(st.phase, Phase::RolledBack);
    assert!(st.jobs.iter().all(|j| j.kind != JobKind::Restore));
    assert!(st.failure.as_ref().unwrap().database_restored_at.is_none());
}

#[test]
fn a_degradation_in_a_go_live_window_rolls_back_while_the_previous_version_is_still_ready() {
    let s = v2_with_analysis("");
    // Healthy until 20 minutes after reaching 100%, then 20% errors.
    let (mut w, mut st, mut now2) = released_v1();
    let mut first_golive = None;
    for _ in 0..800 {
        let live = first_golive;
        run_measured(&mut w, &s, &mut st, &mut now2, 1, &|v, t| {
            if v == "2.0.0" && live.is_some_and(|at: chrono::DateTime<Utc>| t - at > chrono::Duration::minutes(20)) {
                Some(0.2)
            } else {
                Some(0.001)
            }
        });
        if st.phase == Phase::GoLive && first_golive.is_none() {
            first_golive = Some(now2);
            // While watching after 100%, the previous version is kept deployed and ready.
            let r = Release { name: "app", namespace: "ns", generation: Some(1), spec: &s, status: &st };
            let d = decide(r, &w.obs, now2);
            let prod = &d.desired.stages[1];
            assert!(prod.deployments.iter().any(|d| d.version == "1.0.0" && d.replicas == 2), "{:?}", prod.deployments);
            assert_eq!(prod.traffic.as_ref().unwrap().weight, 100);
        }
        if st.phase.is_terminal() {
            break;
        }
    }
    assert_eq!(st.phase, Phase::RolledBack, "{}", st.message);
    let m = st.failure.as_ref().unwrap().metric.clone().unwrap();
    assert_eq!(m.context, "go-live window 15m-2h", "caught by the second window");
    assert_eq!(w.weights["prod"].last(), Some(&0));
}

#[test]
fn with_prometheus_unreachable_the_release_holds_and_resumes_when_it_returns() {
    let (mut w, mut st, mut now) = released_v1();
    let s = v2_with_analysis("");
    let down_until = now + chrono::Duration::minutes(10);
    let ds = run_measured(&mut w, &s, &mut st, &mut now, 30, &|_, t| if t < down_until { None } else { Some(0.001) });
    assert_eq!(st.phase, Phase::Staging, "holds in staging while Prometheus is down: {}", st.message);
    assert!(st.message.contains("connection refused"), "{}", st.message);
    assert!(ds.last().unwrap().status.conditions.iter().any(|c| c.type_ == "Reconciling" && c.reason == "GateHold"));
    run_measured(&mut w, &s, &mut st, &mut now, 2000, &|_, t| if t < down_until { None } else { Some(0.001) });
    assert_eq!(st.phase, Phase::Succeeded, "{}", st.message);
}

#[test]
fn dry_run_reports_a_breach_without_acting() {
    let (mut w, mut st, mut now) = released_v1();
    let mut s = v2_with_analysis("");
    s.analysis.as_mut().unwrap().dry_run = true;
    s.go_live = None;
    let ds = run_measured(&mut w, &s, &mut st, &mut now, 400, &|v, _| Some(if v == "2.0.0" { 0.08 } else { 0.001 }));
    assert_eq!(st.phase, Phase::Succeeded);
    assert!(ds.iter().flat_map(|d| &d.events).any(|e| e.reason == "DryRunBreach"));
    assert!(st.gates.iter().any(|g| g.verdict == Verdict::Fail));
}

// ---- imperative requests (the plugin's actions) ----

fn request(w: &mut World, action: &str, id: &str) {
    w.obs.request = Some(crate::api::Request { action: action.into(), id: id.into(), by: "alice".into() });
}

#[test]
fn on_demand_rollback_pause_resume_promote_and_retry() {
    let (mut w, mut st, mut now) = released_v1();
    let mut s = v2("gateway");
    s.hooks.as_mut().unwrap().migration = None;
    // Reach production's first step (5%, pause 1m), then pause: nothing moves.
    for _ in 0..100 {
        run(&mut w, &s, &mut st, &mut now, 1);
        if st.phase == Phase::Production && st.step_started_at.is_some() {
            break;
        }
    }
    assert_eq!(st.weight, 5);
    request(&mut w, "pause", "1");
    run(&mut w, &s, &mut st, &mut now, 1);
    now += chrono::Duration::minutes(10);
    run(&mut w, &s, &mut st, &mut now, 3);
    assert!(st.paused && st.weight == 5, "paused at 5%: {}", st.message);
    // The same request is handled once: resuming needs a new id.
    request(&mut w, "resume", "2");
    run(&mut w, &s, &mut st, &mut now, 1);
    assert!(!st.paused);
    // Promote skips the current step's pause.
    let (step0, at) = (st.step, now);
    request(&mut w, "promote", "3");
    let d = run(&mut w, &s, &mut st, &mut now, 1);
    assert_eq!(st.step, step0 + 1, "promoted past the 1m pause at once");
    assert_eq!(now - at, chrono::Duration::seconds(d[0].requeue.unwrap().as_secs().max(1) as i64));
    assert_eq!(d[0].desired.stages[1].traffic.as_ref().unwrap().weight, st.weight);
    // On-demand rollback: traffic back at once, no database to restore (no migration).
    request(&mut w, "rollback", "4");
    run(&mut w, &s, &mut st, &mut now, 20);
    assert_eq!(st.phase, Phase::RolledBack);
    assert_eq!(st.failure.as_ref().unwrap().reason, FailureReason::ManualRollback);
    assert!(st.failure.as_ref().unwrap().message.contains("alice"));
    assert_eq!(w.weights["prod"].last(), Some(&0));
    // Retry runs the same version again, with fresh Job names.
    let jobs_before = w.created.len();
    request(&mut w, "retry", "5");
    run(&mut w, &s, &mut st, &mut now, 300);
    assert_eq!(st.phase, Phase::Succeeded, "{}", st.message);
    assert_eq!(st.attempt, 1);
    assert!(w.created.len() > jobs_before, "the retry ran its Jobs again");
    // A request that does not apply is ignored, with an Event.
    request(&mut w, "pause", "6");
    let d = run(&mut w, &s, &mut st, &mut now, 1);
    assert!(d[0].events.iter().any(|e| e.reason == "RequestIgnored"));
}

#[test]
fn promote_full_goes_straight_to_100_and_past_the_windows() {
    let (mut w, mut st, mut now) = released_v1();
    let s = v2_with_analysis("");
    for _ in 0..100 {
        run_measured(&mut w, &s, &mut st, &mut now, 1, &|_, _| Some(0.001));
        if st.phase == Phase::Production && st.step_started_at.is_some() {
            break;
        }
    }
    let start = now;
    request(&mut w, "promote-full", "1");
    run_measured(&mut w, &s, &mut st, &mut now, 50, &|_, _| Some(0.001));
    assert_eq!(st.phase, Phase::Succeeded);
    assert!(now - start < chrono::Duration::minutes(2), "no pauses, no windows");
}

#[test]
fn who_asked_is_recorded_only_for_the_version_the_api_server_saw_them_ask_for() {
    // The annotation names an earlier version (left from 1.0.0, e.g. the policy is not installed
    // any more): nobody is claimed to have asked for 2.0.0.
    let (mut w, mut st, mut now) = released_v1();
    w.obs.requested = Some(("alice".into(), "1.0.0".into()));
    run(&mut w, &v2("replicas"), &mut st, &mut now, 2);
    assert_eq!(st.candidate_version, "2.0.0");
    assert_eq!(st.requested_by, None);
    // Set for 2.0.0 by the API server: recorded for that attempt, and a later version is
    // not credited to them.
    let (mut w, mut st, mut now) = released_v1();
    w.obs.requested = Some(("bob".into(), "2.0.0".into()));
    run(&mut w, &v2("replicas"), &mut st, &mut now, 200);
    assert_eq!(st.phase, Phase::Succeeded);
    assert_eq!(st.requested_by.as_deref(), Some("bob"));
    run(&mut w, &spec(&BASE.replace("1.0.0", "3.0.0")), &mut st, &mut now, 2);
    assert_eq!(st.candidate_version, "3.0.0");
    assert_eq!(st.requested_by, None);
}
