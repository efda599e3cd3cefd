//! Model-based tests of the pure engine: random specs the API server admits, random histories
//! of hours and days of simulated time (jumps from 100 ms to 24 h), an in-memory cluster whose
//! Jobs fail, hang or vanish, whose Deployments are slow, never Ready or deleted by hand, whose
//! router refuses writes for a while and whose Prometheus answers pass, fail, NaN, no data or errors; spec edits and
//! on-demand requests at any moment, status writes lost. After every tick the invariants a user
//! relies on are checked. No cluster: thousands of histories run in seconds.
//!
//! `make test` runs a fixed budget; `make fuzz` runs many more (PROPTEST_CASES).
//! Shrunk counterexamples are kept as named regression tests at the end of this file.

use chrono::{DateTime, TimeZone, Utc};
use locall_operator::{
    api::{self, conditions, FailureReason, JobKind, JobState, LocallReleaseSpec, LocallReleaseStatus, Phase, Request, Verdict},
    engine::{decide, gates, names, Decision, Refusal, Release},
    plan::world::{self, Behaviour, JobEnd, World},
};
use proptest::{prelude::*, strategy::ValueTree};
use serde_json::{json, Value};
use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

const NAME: &str = "app";
const NS: &str = "team";

// ---------------------------------------------------------------- specs the API server admits

/// The choices that make a spec; `build` turns them into one.
#[derive(Clone, Debug)]
struct SpecParams {
    version: u8,
    stages: Vec<StageParams>,
    pre_deploy: u8,
    migration: Option<bool>,
    post_deploy: u8,
    gateway: bool,
    analysis: Option<AnalysisParams>,
    go_live: Option<Vec<(u64, u64)>>,
    rollback_verify: bool,
    approve_in_spec: bool,
    /// 0: one template; 2 or 3: components (api with traffic, a worker after it, a web with
    /// traffic after both).
    components: u8,
}

#[derive(Clone, Debug)]
struct StageParams {
    name: &'static str,
    own_namespace: bool,
    approval: bool,
    approvers: u8,
    verify: u8,
    steps: Vec<(i32, Option<u64>)>,
    replicas: i32,
}

#[derive(Clone, Debug)]
struct AnalysisParams {
    metrics: Vec<(bool, bool, u32, u8, u8)>,
    interval: u64,
    dry_run: bool,
}

/// Pause lengths, from a second to a day (weighted towards the short ones).
fn arb_pause() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(1u64), 3 => Just(30), 2 => Just(600), 2 => Just(1800), 1 => Just(7200), 1 => Just(86_400)]
}
const STAGE_NAMES: [&str; 3] = ["staging", "canary", "production"];

fn arb_steps() -> impl Strategy<Value = Vec<(i32, Option<u64>)>> {
    let weights =
        prop_oneof![Just(vec![]), Just(vec![100]), Just(vec![10, 100]), Just(vec![5, 25, 50, 100]), Just(vec![1, 2, 3, 50, 99, 100]),];
    weights.prop_flat_map(|w| {
        let n = w.len();
        (Just(w), prop::collection::vec(prop::option::of(arb_pause()), n)).prop_map(|(w, p)| w.into_iter().zip(p).collect())
    })
}

fn arb_stage(i: usize) -> impl Strategy<Value = StageParams> {
    (any::<bool>(), prop::bool::weighted(0.3), 0u8..=2, arb_steps(), 1i32..=3, 1u8..=2).prop_map(
        move |(own, approval, verify, steps, replicas, approvers)| StageParams {
            name: STAGE_NAMES[i],
            own_namespace: own || i > 0,
            approval,
            approvers,
            verify,
            steps,
            replicas,
        },
    )
}

fn arb_spec() -> impl Strategy<Value = SpecParams> {
    let stages = (1usize..=3).prop_flat_map(|n| {
        let all: Vec<_> = (0..n).map(|i| arb_stage(if n == 1 { 2 } else { i * 2 / (n - 1).max(1) }).boxed()).collect();
        all
    });
    let analysis = prop::option::weighted(
        0.7,
        (
            prop::collection::vec((any::<bool>(), any::<bool>(), 1u32..=3, 0u8..3, 0u8..3), 1..=3),
            prop::sample::select(vec![1u64, 30, 300, 30, 300]),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(metrics, interval, dry_run)| AnalysisParams { metrics, interval, dry_run }),
    );
    let go_live = prop::option::weighted(
        0.5,
        prop::collection::vec((prop::sample::select(vec![60u64, 900, 7200, 79_200]), prop::sample::select(vec![60u64, 300, 900])), 0..=3),
    );
    let components = prop_oneof![3 => Just(0u8), 1 => Just(2), 1 => Just(3)];
    (
        (0u8..4, stages, 0u8..=2, prop::option::of(any::<bool>()), 0u8..=1, any::<bool>()),
        (analysis, go_live, any::<bool>(), any::<bool>(), components),
    )
        .prop_map(
            |(
                (version, stages, pre_deploy, migration, post_deploy, gateway),
                (analysis, go_live, rollback_verify, approve_in_spec, components),
            )| {
                SpecParams {
                    version,
                    stages,
                    pre_deploy,
                    migration,
                    post_deploy,
                    gateway,
                    analysis,
                    go_live,
                    rollback_verify,
                    approve_in_spec,
                    components,
                }
            },
        )
}

fn dur(secs: u64) -> String {
    format!("{secs}s")
}

fn build(p: &SpecParams) -> LocallReleaseSpec {
    let version = format!("{}.0.0", p.version + 1);
    let job = |n: String| json!({"name": n, "command": ["run"]});
    let stages: Vec<Value> = p
        .stages
        .iter()
        .map(|s| {
            let mut v = json!({"name": s.name, "replicas": s.replicas, "approval": s.approval});
            if s.approval && s.approvers > 1 {
                v["approvers"] = json!({"required": s.approvers, "groups": ["release-managers"]});
            }
            if s.own_namespace {
                v["namespace"] = json!(format!("ns-{}", s.name));
            }
            v["verify"] = Value::Array((0..s.verify).map(|i| job(format!("check{i}"))).collect());
            v["steps"] = Value::Array(
                s.steps
                    .iter()
                    .map(|(w, pause)| match pause {
                        Some(p) => json!({"weight": w, "pause": dur(*p)}),
                        None => json!({"weight": w}),
                    })
                    .collect(),
            );
            v
        })
        .collect();
    let mut spec = json!({
        "version": version,
        "template": {"spec": {"containers": [{"name": "app", "image": format!("app:{version}")}]}},
        "stages": stages,
        "hooks": {
            "preDeploy": (0..p.pre_deploy).map(|i| job(format!("pre{i}"))).collect::<Vec<_>>(),
            "postDeploy": (0..p.post_deploy).map(|i| job(format!("post{i}"))).collect::<Vec<_>>(),
        },
        "notifications": [{"name": "oncall", "format": "Slack", "urlSecret": {"name": "hooks", "key": "url"}},
                          {"name": "business", "format": "Webhook", "urlSecret": {"name": "hooks", "key": "biz"}, "events": ["Succeeded"]}],
    });
    if p.components > 0 {
        let template = |c: &str| json!({"spec": {"containers": [{"name": c, "image": format!("{c}:{version}")}]}});
        let mut list = vec![
            json!({"name": "api", "service": {"port": 8080}, "template": template("api")}),
            json!({"name": "worker", "replicas": 1, "after": ["api"], "template": template("worker")}),
        ];
        if p.components > 2 {
            list.push(json!({"name": "web", "service": {"port": 80}, "after": ["api", "worker"], "template": template("web")}));
        }
        spec.as_object_mut().unwrap().remove("template");
        spec["components"] = Value::Array(list);
    }
    if let Some(changes) = p.migration {
        spec["hooks"]["migration"] =
            json!({"changesSchema": changes, "backup": {"command": ["b"]}, "migrate": {"command": ["m"]}, "restore": {"command": ["r"]}});
    }
    if p.gateway {
        spec["traffic"] = json!({"method": "GatewayAPI", "gateway": {"name": "gw"}});
    }
    if let Some(a) = &p.analysis {
        let policy = |i: u8| ["Hold", "Fail", "Pass"][i as usize % 3];
        let metrics: Vec<Value> = a
            .metrics
            .iter()
            .enumerate()
            .map(|(i, (success, rollback, consecutive, no_data, on_error))| {
                let mut m = json!({"name": format!("m{i}"), "query": "q", "consecutive": consecutive,
                    "noData": policy(*no_data), "onError": policy(*on_error)});
                if *success || !*rollback {
                    m["success"] = json!({"op": "<", "value": 0.01});
                }
                if *rollback {
                    m["rollback"] = json!({"op": ">", "value": 0.05});
                }
                // With components: the first gates the api, the second the worker, the third
                // is written for every component ({{component}} in its query).
                if p.components > 0 {
                    match i % 3 {
                        0 => m["component"] = json!("api"),
                        1 => m["component"] = json!("worker"),
                        _ => m["query"] = json!("q{component=\"{{component}}\"}"),
                    }
                }
                m
            })
            .collect();
        spec["analysis"] = json!({"interval": dur(a.interval), "metrics": metrics, "dryRun": a.dry_run});
    }
    if let Some(w) = &p.go_live {
        let windows: Vec<Value> =
            w.iter().enumerate().map(|(i, (d, iv))| json!({"name": format!("w{i}"), "duration": dur(*d), "interval": dur(*iv)})).collect();
        spec["goLive"] = json!({"windows": windows});
    }
    if p.rollback_verify {
        spec["rollback"] = json!({"verify": [job("smoke".into())]});
    }
    if p.approve_in_spec {
        let approvals: Vec<Value> = p
            .stages
            .iter()
            .filter(|s| s.approval)
            .flat_map(|s| {
                ["alice", "bob"][..s.approvers as usize]
                    .iter()
                    .map(|by| json!({"stage": s.name, "version": version, "by": by}))
                    .collect::<Vec<_>>()
            })
            .collect();
        spec["approvals"] = Value::Array(approvals);
    }
    serde_json::from_value(spec).expect("generated spec parses")
}

// ---------------------------------------------------------------- histories

#[derive(Clone, Copy, Debug, PartialEq)]
enum Metric {
    Pass,
    Breach,
    NaN,
    NoData,
    Error,
}

#[derive(Clone, Debug)]
enum Event {
    None,
    Edit(usize),
    Request(&'static str),
    LoseWrite,
    DeleteCandidate,
}

#[derive(Clone, Debug)]
struct Step {
    jump_ms: u64,
    metric: Metric,
    event: Event,
}

fn arb_step(specs: usize) -> impl Strategy<Value = Step> {
    let jump = prop_oneof![
        4 => Just(0u64),
        1 => Just(100),
        2 => Just(1_000),
        2 => Just(10_000),
        2 => Just(60_000),
        1 => Just(600_000),
        1 => Just(3_600_000),
        1 => Just(86_400_000),
    ];
    let metric = prop_oneof![
        12 => Just(Metric::Pass),
        2 => Just(Metric::Breach),
        1 => Just(Metric::NaN),
        1 => Just(Metric::NoData),
        1 => Just(Metric::Error),
    ];
    let event = prop_oneof![
        30 => Just(Event::None),
        2 => (0..specs).prop_map(Event::Edit),
        2 => prop::sample::select(vec!["rollback", "abort", "retry", "pause", "resume", "promote", "promote-full", "bogus"]).prop_map(Event::Request),
        2 => Just(Event::LoseWrite),
        1 => Just(Event::DeleteCandidate),
    ];
    (jump, metric, event).prop_map(|(jump_ms, metric, event)| Step { jump_ms, metric, event })
}

#[derive(Clone, Debug)]
struct Faults {
    /// Per created Job, cycled: (seconds it runs, how it ends).
    jobs: Vec<(u64, u8)>,
    /// Per Deployment, cycled: seconds to Ready, or never.
    ready: Vec<Option<u64>>,
    /// Whether the router refuses a route write, cycled.
    refuse: Vec<bool>,
    /// Per tick, cycled: the API server refuses a child for good (400/422): 0 no, 1 a child a
    /// spec edit can touch (a Service, the route, a hook's Job), 2 the candidate's Deployment.
    refuse_child: Vec<u8>,
}

fn arb_faults(healthy: bool) -> BoxedStrategy<Faults> {
    if healthy {
        (prop::collection::vec((1u64..600, Just(0u8)), 1..4), prop::collection::vec((1u64..300).prop_map(Some), 1..4))
            .prop_map(|(jobs, ready)| Faults { jobs, ready, refuse: vec![false], refuse_child: vec![0] })
            .boxed()
    } else {
        (
            prop::collection::vec((1u64..900, prop_oneof![12 => Just(0u8), 1 => Just(1), 1 => Just(2), 1 => Just(3)]), 1..6),
            prop::collection::vec(prop_oneof![8 => (1u64..900).prop_map(Some), 1 => Just(None)], 1..4),
            prop::collection::vec(prop::bool::weighted(0.15), 1..8),
            prop::collection::vec(prop_oneof![40 => Just(0u8), 1 => Just(1), 1 => Just(2)], 1..40),
        )
            .prop_map(|(jobs, ready, refuse, refuse_child)| Faults { jobs, ready, refuse, refuse_child })
            .boxed()
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap()
}

fn behaviour(f: &Faults, metric: Arc<Mutex<Metric>>, approve: bool) -> Behaviour {
    let (jobs, ready, refuse) = (f.jobs.clone(), f.ready.clone(), f.refuse.clone());
    let (mut j, mut r, mut l) = (0usize, 0usize, 0usize);
    Behaviour {
        job: Box::new(move |_| {
            let (secs, end) = jobs[j % jobs.len()];
            j += 1;
            let end = match end {
                0 => JobEnd::Succeed,
                1 => JobEnd::Fail,
                2 => JobEnd::Hang,
                _ => JobEnd::Vanish,
            };
            (Duration::from_secs(secs), end)
        }),
        ready_after: Box::new(move |_, _| {
            let x = ready[r % ready.len()];
            r += 1;
            x.map(Duration::from_secs)
        }),
        router_refuses: Box::new(move || {
            let x = refuse[l % refuse.len()];
            l += 1;
            x
        }),
        measure: Box::new(move |m, _, _| {
            let mode = *metric.lock().unwrap();
            let value = |v: Option<f64>| gates::Measurement { value: v, sample: Some(1e6), error: None };
            match mode {
                Metric::Pass => value(Some(world::passing_value(m))),
                Metric::Breach => value(Some(world::breaching_value(m).unwrap_or(0.5))),
                Metric::NaN => gates::Measurement { value: Some(f64::NAN), sample: Some(f64::NAN), error: None },
                Metric::NoData => value(None),
                Metric::Error => gates::Measurement { value: None, sample: None, error: Some("connection refused".into()) },
            }
        }),
        approve,
    }
}

// ---------------------------------------------------------------- the status schema

fn status_schema() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let crd = serde_json::to_value(api::crd::crd()).unwrap();
        let schema = crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/status").unwrap().clone();
        jsonschema::draft4::new(&schema).expect("status schema compiles")
    })
}

// ---------------------------------------------------------------- the invariants

struct Run {
    specs: Vec<LocallReleaseSpec>,
    spec: usize,
    world: World,
    metric: Arc<Mutex<Metric>>,
    status: LocallReleaseStatus,
    request_seq: u32,
    ticks: usize,
    /// The last ticks, for the message of a failing case.
    trace: Vec<String>,
    /// Skip the per-tick invariants (the long healthy runs check their outcome only).
    fast: bool,
    refuse_child: Vec<u8>,
}

impl Run {
    fn new(specs: Vec<LocallReleaseSpec>, faults: &Faults, approve: bool) -> Run {
        let metric = Arc::new(Mutex::new(Metric::Pass));
        let world = World::new(NAME, NS, t0(), behaviour(faults, metric.clone(), approve));
        Run {
            specs,
            spec: 0,
            world,
            metric,
            status: LocallReleaseStatus::default(),
            request_seq: 0,
            ticks: 0,
            trace: vec![],
            fast: false,
            refuse_child: faults.refuse_child.clone(),
        }
    }

    /// One tick of the controller; checks every invariant. `lose`: the status write is lost.
    fn tick(&mut self, request: Option<&'static str>, lose: bool) -> Result<Decision, TestCaseError> {
        self.ticks += 1;
        let spec = self.specs[self.spec].clone();
        let mut obs = self.world.observe(&spec, &self.status, Some(1));
        if let Some(action) = request {
            self.request_seq += 1;
            obs.request = Some(Request { action: action.into(), id: format!("r{}", self.request_seq), by: "tester".into() });
        }
        if self.fast {
            let d =
                decide(Release { name: NAME, namespace: NS, generation: Some(1), spec: &spec, status: &self.status }, &obs, self.world.now);
            let applied = self.world.apply(&d, spec.traffic.method);
            prop_assert!(self.world.violations.is_empty(), "{:?}", self.world.violations);
            if applied && !lose {
                self.status = d.status.clone();
            }
            return Ok(d);
        }
        let prev = self.status.clone();
        let mut d = decide(Release { name: NAME, namespace: NS, generation: Some(1), spec: &spec, status: &prev }, &obs, self.world.now);
        // The API server refuses a child of this decision for good: as the controller does, the
        // engine decides again from the status it was carrying out, knowing it.
        let refusal = self.refuse_child[self.ticks % self.refuse_child.len()];
        if refusal > 0 && !d.status.phase.is_terminal() {
            let mut obs2 = obs.clone();
            obs2.refused = Some(Refusal { message: "the API server refused to apply a child".into(), candidate: refusal == 2 });
            let first_d = d.clone();
            let first = d.status.clone();
            d = decide(Release { name: NAME, namespace: NS, generation: Some(1), spec: &spec, status: &first }, &obs2, self.world.now);
            // The refused write came after the first decision's Jobs (created first) and carries
            // its Events and notifications along, as the controller does.
            d.jobs.splice(0..0, first_d.jobs);
            d.events.splice(0..0, first_d.events);
            d.notify.splice(0..0, first_d.notify);
            // An edit's refusal never rolls back a release: it fails one that moved nothing, or
            // holds it where it is.
            if refusal == 1 && first.phase != Phase::RollingBack {
                prop_assert!(
                    d.status.phase != Phase::RollingBack,
                    "a refused Service or Job rolled back {} from {}",
                    first.candidate_version,
                    first.phase
                );
            }
        }
        // A refused route write ends the reconcile with an error: its status is not written.
        let applied = self.world.apply(&d, spec.traffic.method);
        let lose = !applied || lose;
        self.trace.push(format!(
            "{} spec#{} {}{}{} -> {} {}% ({}) wait {:?} routes {:?} seen {:?} ready {:?}",
            self.world.now.format("%d %H:%M:%S%.3f"),
            self.spec,
            prev.phase,
            request.map(|r| format!(" +request {r}")).unwrap_or_default(),
            if lose { " [write lost]" } else { "" },
            d.status.phase,
            d.status.weight,
            d.status.message,
            d.status.wait.as_ref().map(|w| &w.awaiting),
            self.world.routes,
            obs.traffic,
            obs.deployments.iter().map(|(k, d)| format!("{}/{}={}/{}", k.0, k.1, d.ready, d.replicas)).collect::<Vec<_>>(),
        ));
        if self.trace.len() > 80 {
            self.trace.remove(0);
        }
        let stored = check(&spec, &prev, &d, &self.world, request, applied)
            .map_err(|e| TestCaseError::fail(format!("{e}\nlast ticks:\n{}", self.trace.join("\n"))))?;
        if !lose {
            // What the API server stores and the next reconcile reads; what it owes is delivered
            // after the write (by the controller) and leaves the outbox, unless the receiver is
            // down (every third reconcile here): then it stays owed.
            self.status = stored;
            if !self.ticks.is_multiple_of(3) {
                self.status.outbox.clear();
            }
        }
        self.world.recorded = Some(self.status.jobs.iter().map(|j| j.job_name.clone()).collect());
        Ok(d)
    }
}

/// Checks the invariants of one tick; returns the status as the API server would store it.
/// `applied`: the decision was carried out (false when a route write was refused and the
/// reconcile ended with an error: then nothing about the cluster is claimed).
fn check(
    spec: &LocallReleaseSpec,
    prev: &LocallReleaseStatus,
    d: &Decision,
    w: &World,
    request: Option<&str>,
    applied: bool,
) -> Result<LocallReleaseStatus, TestCaseError> {
    let st = &d.status;
    let ctx = || format!("phase {} -> {}, message {:?}", prev.phase, st.phase, st.message);
    // The status is what the API server would store.
    let v = serde_json::to_value(st).map_err(|e| TestCaseError::fail(format!("status does not serialise: {e}")))?;
    if let Err(e) = status_schema().validate(&v) {
        return Err(TestCaseError::fail(format!("status refused by the CRD schema: {e} at {}\n{v:#}", e.instance_path())));
    }
    let back: LocallReleaseStatus =
        serde_json::from_value(v.clone()).map_err(|e| TestCaseError::fail(format!("status does not read back: {e}")))?;
    prop_assert_eq!(&back, st, "status round-trips");
    // Nothing a user would call wrong happened in the cluster.
    prop_assert!(w.violations.is_empty(), "{:?} ({})", w.violations, ctx());
    // Every wait says on what.
    if !st.phase.is_terminal() {
        prop_assert!(st.wait.is_some(), "a release in {} waits on nothing ({})", st.phase, ctx());
    }
    // A stage that needs approval starts only with its required number of distinct approvers.
    let same = prev.sequence == st.sequence && prev.revision == st.revision;
    if same && prev.phase == Phase::AwaitingApproval && matches!(st.phase, Phase::Staging | Phase::Production) {
        if let Some(stage) = spec.stages.iter().find(|s| s.name == st.stage && s.approval) {
            let required = stage.approvers.as_ref().map_or(1, |a| a.required as usize);
            let by: std::collections::BTreeSet<&str> =
                st.approvals.iter().filter(|a| a.stage == stage.name).map(|a| a.by.as_str()).collect();
            prop_assert!(by.len() >= required, "stage {} started with approvers {:?} of {} required", stage.name, by, required);
        }
    }
    // Restores: only with the backup of the attempt that migrated, once.
    for j in d.jobs.iter().filter(|j| j.record.kind == JobKind::Restore) {
        let backup_name = format!("{}backup", j.record.job_name.strip_suffix("restore").unwrap_or_default());
        let backup = w.created.iter().find(|c| c.record.kind == JobKind::Backup && c.record.job_name == backup_name);
        prop_assert!(backup.is_some(), "restore {} with no backup of its own attempt", j.record.job_name);
        prop_assert_eq!(&j.backup_id, &backup.unwrap().backup_id, "restore gets its attempt's backup id");
        prop_assert_eq!(j.backup_id.as_deref(), Some(backup_name.as_str()));
        let migrate = format!("{}migrate", j.record.job_name.strip_suffix("restore").unwrap_or_default());
        let migrated = st.jobs.iter().any(|r| r.job_name == migrate && r.state == JobState::Succeeded);
        prop_assert!(migrated, "restore {} although its attempt's migration did not succeed", j.record.job_name);
    }
    // Every notification announced is owed, in the same status, to every target that wants
    // it, each with a key of its own (none lost, none sent twice under one key).
    let wanted: usize =
        d.notify.iter().map(|(e, _)| spec.notifications.iter().filter(|n| n.events.is_empty() || n.events.contains(e)).count()).sum();
    prop_assert_eq!(st.outbox.len(), (prev.outbox.len() + wanted).min(locall_operator::engine::outbox::MAX_OWED), "owed: {:?}", st.outbox);
    let ids: std::collections::BTreeSet<&str> = st.outbox.iter().map(|o| o.id.as_str()).collect();
    prop_assert_eq!(ids.len(), st.outbox.len(), "idempotency keys are unique");
    prop_assert!(st.notices >= prev.notices, "the notice counter never goes back");
    // Weight rises only on passing gates (or promote), after the pause.
    let promoted = prev.promoted_full || st.promoted_full || request.is_some_and(|r| r.starts_with("promote"));
    let same_attempt = prev.sequence == st.sequence && prev.revision == st.revision;
    if same_attempt && prev.stage == st.stage && st.step > prev.step && matches!(st.phase, Phase::Staging | Phase::Production) {
        let stage = spec.stages.iter().find(|s| s.name == prev.stage);
        if !(promoted || prev.promoted_step == Some(prev.step)) {
            if let (Some(_), Some(started)) = (spec.analysis.as_ref().filter(|a| !a.dry_run), prev.step_started_at) {
                let key = format!("{}/{}", prev.stage, st.candidate_version);
                for m in gates::metrics(spec, NAME).iter() {
                    let g = st.gates.iter().find(|g| g.metric == m.name && g.target == key);
                    prop_assert!(
                        g.is_some_and(|g| g.verdict == Verdict::Pass && g.measured_at >= started),
                        "step {} -> {} in {} without {} passing: {:?}",
                        prev.step,
                        st.step,
                        prev.stage,
                        m.name,
                        g
                    );
                }
            }
            if let (Some(stage), Some(started)) = (stage, prev.step_started_at) {
                if let Some(p) = stage.steps.get(prev.step as usize).and_then(|s| s.pause.as_ref()) {
                    let end = started + chrono::Duration::from_std(p.get()).unwrap_or(chrono::Duration::MAX);
                    prop_assert!(w.now >= end, "step left before its pause of {p} ended");
                }
            }
        }
    }
    // Succeeded only after the gates of the last window passed.
    if st.phase == Phase::Succeeded && prev.phase == Phase::GoLive && !promoted {
        if spec.analysis.as_ref().is_some_and(|a| !a.dry_run) {
            let key = format!("{}/{}", st.stage, st.candidate_version);
            let windows = spec.go_live.clone().map(|g| g.effective()).unwrap_or_default();
            if !windows.is_empty() {
                for m in gates::metrics(spec, NAME).iter() {
                    let g = st.gates.iter().find(|g| g.metric == m.name && g.target == key);
                    prop_assert!(g.is_some_and(|g| g.verdict == Verdict::Pass), "Succeeded without {} passing: {:?}", m.name, g);
                }
            }
        }
        prop_assert!(st.stable.as_ref().is_some_and(|s| s.revision == st.revision));
    }
    // A rollback ends with no traffic on the candidate in every stage it reached.
    if applied && st.phase == Phase::RolledBack && prev.phase != Phase::RolledBack {
        let had_stable = st.stable.as_ref().is_some_and(|s| s.revision != st.revision);
        if had_stable {
            // Every part's route (the namespace's, or each component's).
            for s in &st.reached {
                for (key, r) in w.routes.iter().filter(|(k, _)| k.split('/').next() == Some(s.namespace.as_str())) {
                    let share = r.share(&st.revision);
                    prop_assert_eq!(share, 0, "RolledBack with {}% still on the candidate in {}", share, key);
                }
            }
        }
        // A restore is claimed only when it ran.
        if let Some(at) = st.failure.as_ref().and_then(|f| f.database_restored_at) {
            let restore = st.jobs.iter().any(|j| j.kind == JobKind::Restore && j.state == JobState::Succeeded);
            prop_assert!(restore, "databaseRestoredAt {at} with no restore Job succeeded");
        }
    }
    Ok(back)
}

fn run_history(params: &[SpecParams], faults: &Faults, steps: &[Step]) -> Result<(), TestCaseError> {
    let specs: Vec<_> = params.iter().map(build).collect();
    let mut r = Run::new(specs, faults, true);
    let mut lose = false;
    for s in steps {
        *r.metric.lock().unwrap() = s.metric;
        let mut request = None;
        match &s.event {
            Event::None => {}
            Event::Edit(i) => r.spec = *i % r.specs.len(),
            Event::Request(a) => request = Some(*a),
            Event::LoseWrite => lose = true,
            Event::DeleteCandidate => {
                let rev = r.status.revision.clone();
                for st in r.status.reached.clone() {
                    r.world.delete_deployment(&st.namespace, &rev);
                }
            }
        }
        let d = r.tick(request, lose)?;
        lose = false;
        // Time passes: to the engine's next look, or by the step's jump, whichever the step says.
        let wait = if s.jump_ms == 0 { next_look(&d) } else { Duration::from_millis(s.jump_ms) };
        let next = r.world.now + chrono::Duration::from_std(wait).unwrap();
        r.world.advance_to(next);
    }
    settled_rollback_leaves_nothing_new(&mut r)
}

/// After a rollback, once the cluster heals (every Deployment Ready, routes accepted), no part
/// of the release is left on the new version: every component's new Deployment at zero, its
/// previous version's Ready, in every stage the new version reached.
fn settled_rollback_leaves_nothing_new(r: &mut Run) -> Result<(), TestCaseError> {
    if r.status.phase != Phase::RolledBack || r.world.routes.is_empty() {
        return Ok(());
    }
    r.world.heal();
    for _ in 0..10 {
        if r.status.phase != Phase::RolledBack {
            return Ok(()); // a spec edit started another release meanwhile
        }
        r.tick(None, false)?;
        let next = r.world.now + chrono::Duration::seconds(5);
        r.world.advance_to(next);
    }
    let st = r.status.clone();
    let Some(stable) = st.stable.clone().filter(|s| s.revision != st.revision) else { return Ok(()) };
    let trace = || format!("\nlast ticks:\n{}\ndeleted: {:?}", r.trace.join("\n"), r.world.deleted);
    for s in &st.reached {
        for part in locall_operator::engine::parts_of(&st.components) {
            let base = part.base(NAME);
            let cand = r.world.deployment(&s.namespace, &names::deployment(&base, &st.revision));
            prop_assert!(
                cand.as_ref().is_none_or(|d| d.replicas == 0),
                "RolledBack with {} of {:?} still on {} in {}{}",
                cand.map_or(0, |d| d.replicas),
                part.component,
                st.candidate_version,
                s.namespace,
                trace()
            );
            let runs_there = stable.namespaces.is_empty() || stable.namespaces.contains(&s.namespace);
            let had = locall_operator::engine::parts_of(&stable.components).iter().any(|p| p.component == part.component);
            if runs_there && had {
                // The previous version's Deployment is back and Ready, unless someone deleted it
                // by hand (its template is no longer in the spec: nobody can rebuild it), and
                // then the rollback does not claim to be verified.
                let old = r.world.deployment(&s.namespace, &names::deployment(&base, &stable.revision));
                let want = part.replicas_in(s.replicas);
                let verified = conditions::is_true(&st.conditions, "RollbackVerified");
                prop_assert!(
                    old.as_ref().map_or(!verified, |d| d.ready >= want),
                    "RolledBack (verified: {}) with {:?} of {} not Ready in {}: {:?}{}",
                    verified,
                    part.component,
                    stable.version,
                    s.namespace,
                    old,
                    trace()
                );
            }
        }
    }
    Ok(())
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `make test` runs the same histories every time (a failure there is reproducible); `make fuzz`
/// (PROPTEST_CASES set) draws new ones on every run.
fn seed() -> proptest::test_runner::RngSeed {
    match std::env::var("PROPTEST_CASES") {
        Ok(_) => proptest::test_runner::RngSeed::Random,
        Err(_) => proptest::test_runner::RngSeed::Fixed(20261130),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1500), max_shrink_iters: 1000, failure_persistence: None, rng_seed: seed(), ..ProptestConfig::default() })]

    /// Anything can happen: the invariants hold after every tick.
    #[test]
    fn invariants_hold_whatever_happens(
        params in prop::collection::vec(arb_spec(), 1..4),
        faults in arb_faults(false),
        steps in (1usize..4).prop_flat_map(|n| prop::collection::vec(arb_step(n), 20..160)),
    ) {
        run_history(&params, &faults, &steps)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), max_shrink_iters: 300, failure_persistence: None, rng_seed: seed(), ..ProptestConfig::default() })]

    /// A release of several components succeeds, then its next version meets anything (faults,
    /// breaches, edits, requests): every invariant holds after every tick, and if it ends
    /// rolled back, once the cluster heals no component is left on the new version and every
    /// component of the previous one is Ready where the new one went.
    #[test]
    fn a_rollback_leaves_no_component_on_the_new_version(
        first in arb_spec(),
        second in arb_spec(),
        faults in arb_faults(false),
        steps in prop::collection::vec(arb_step(2), 20..120),
    ) {
        let (mut first, mut second) = (first, second);
        second.version = (first.version + 1) % 4;
        first.components = first.components.max(2);
        second.components = second.components.max(2);
        // The first release only has to succeed, quickly.
        first.go_live = None;
        for s in first.stages.iter_mut() {
            for step in s.steps.iter_mut() {
                step.1 = step.1.map(|p| p.min(30));
            }
        }
        let healthy = Faults { jobs: vec![(5, 0)], ready: vec![Some(5)], refuse: vec![false], refuse_child: vec![0] };
        let mut r = Run::new(vec![build(&first), build(&second)], &healthy, true);
        let mut ticks = 0;
        while !r.status.phase.is_terminal() || ticks == 0 {
            let d = r.tick(None, false)?;
            ticks += 1;
            prop_assert!(ticks < 20_000, "the first release never ended: {}", r.status.message);
            r.world.advance_to(r.world.now + chrono::Duration::from_std(next_look(&d)).unwrap());
        }
        prop_assert_eq!(r.status.phase, Phase::Succeeded, "{}", r.status.message);
        // Then the second version, with everything that can go wrong.
        r.world.behaviour = behaviour(&faults, r.metric.clone(), true);
        r.refuse_child = faults.refuse_child.clone();
        r.spec = 1;
        let mut lose = false;
        for s in &steps {
            *r.metric.lock().unwrap() = s.metric;
            let mut request = None;
            match &s.event {
                Event::None => {}
                Event::Edit(i) => r.spec = *i % 2,
                Event::Request(a) => request = Some(*a),
                Event::LoseWrite => lose = true,
                Event::DeleteCandidate => {
                    let rev = r.status.revision.clone();
                    for st in r.status.reached.clone() {
                        r.world.delete_deployment(&st.namespace, &rev);
                    }
                }
            }
            let d = r.tick(request, lose)?;
            lose = false;
            let wait = if s.jump_ms == 0 { next_look(&d) } else { Duration::from_millis(s.jump_ms) };
            let next = r.world.now + chrono::Duration::from_std(wait).unwrap();
            r.world.advance_to(next);
        }
        settled_rollback_leaves_nothing_new(&mut r)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(200), max_shrink_iters: 200, failure_persistence: None, rng_seed: seed(), ..ProptestConfig::default() })]

    /// A healthy release ends Succeeded, whatever its pauses and windows (days included), and its
    /// total time is at least the sum of its pauses.
    #[test]
    fn a_healthy_release_succeeds_whatever_its_pauses(
        first in arb_spec(),
        second in arb_spec(),
        faults in arb_faults(true),
    ) {
        let (mut first, mut second) = (first, second);
        second.version = (first.version + 1) % 4;
        // Measuring every second through a day-long pause is realistic but 86,400 ticks: the
        // per-second gates are exercised by the property above.
        for p in [&mut first, &mut second] {
            if let Some(a) = p.analysis.as_mut() {
                a.interval = a.interval.max(30);
            }
        }
        let specs = vec![build(&first), build(&second)];
        let mut r = Run::new(specs, &faults, true);
        r.fast = true;
        for (i, spec) in [0usize, 1].into_iter().enumerate() {
            r.spec = spec;
            let start = r.world.now;
            let mut ticks = 0;
            while ticks == 0 || !r.status.phase.is_terminal() {
                let d = r.tick(None, false)?;
                ticks += 1;
                if ticks % 5000 == 0 && std::env::var("MODEL_DEBUG").is_ok() {
                    eprintln!("tick {ticks} at {} {} {:?}", r.world.now, r.status.message, d.requeue);
                }
                prop_assert!(ticks < 50_000, "no end after 50000 ticks: {}", r.status.message);
                if r.status.phase.is_terminal() { break; }
                r.world.advance_to(r.world.now + chrono::Duration::from_std(next_look(&d)).unwrap());
            }
            prop_assert_eq!(r.status.phase, Phase::Succeeded, "release {} ended {}: {}", i + 1, r.status.phase, r.status.message);
            if i == 1 {
                // Steps are held where the first release runs; a stage new to the second goes
                // straight to 100% (nothing to shift from).
                let (a, b) = (&r.specs[0], &r.specs[1]);
                let before: Vec<&str> = (0..a.stages.len()).map(|k| a.stage_namespace(k, NS)).collect();
                let pauses: u64 = (0..b.stages.len())
                    .filter(|k| before.contains(&b.stage_namespace(*k, NS)))
                    .flat_map(|k| b.stages[k].steps.iter().filter_map(|s| s.pause.as_ref()).map(|p| p.get().as_secs()))
                    .sum();
                let took = (r.world.now - start).num_seconds() as u64;
                // Steps of a first-time stage collapse to 100%; with a stable version they are all held.
                prop_assert!(took + 1 >= pauses, "took {took}s, pauses add up to {pauses}s");
            }
        }
    }
}

// ---------------------------------------------------------------- named regressions

fn yaml(s: &str) -> LocallReleaseSpec {
    serde_yaml::from_str(s).unwrap()
}

/// Ticks (as the controller would requeue, invariants checked) until `done` holds of the status
/// or `max` ticks have passed.
fn drive_until(r: &mut Run, max: usize, done: impl Fn(&LocallReleaseStatus) -> bool) {
    for _ in 0..max {
        let d = r.tick(None, false).expect("invariants hold");
        if done(&r.status) {
            return;
        }
        r.world.advance_to(r.world.now + chrono::Duration::from_std(next_look(&d)).unwrap());
    }
}

/// Drives the release until it ends (or `max` ticks).
fn settle(r: &mut Run, max: usize) {
    drive_until(r, max, |st| st.phase.is_terminal());
}

/// When the controller would look again after this decision.
fn next_look(d: &Decision) -> Duration {
    d.next_look().unwrap_or(Duration::from_secs(60))
}

fn healthy() -> Faults {
    Faults { jobs: vec![(30, 0)], ready: vec![Some(20)], refuse: vec![false], refuse_child: vec![0] }
}

const API: &str = r#"
version: "1.0.0"
template: {spec: {containers: [{name: api, image: "api:1"}]}}
hooks:
  migration: {changesSchema: true, backup: {command: [b]}, migrate: {command: [m]}, restore: {command: [r]}}
stages:
- name: staging
  namespace: stg
  steps: [{weight: 100}]
- name: production
  namespace: prod
  steps: [{weight: 5, pause: 10m}, {weight: 25, pause: 30m}, {weight: 50, pause: 30m}, {weight: 100, pause: 1h}]
analysis:
  interval: 1m
  metrics:
  - {name: error-rate, query: q, success: {op: "<", value: 0.01}, rollback: {op: ">", value: 0.05}}
goLive: {}
"#;

/// Issue 10, 1: the traffic deadline ran from the stage's readiness, so a healthy release with
/// the example's pauses rolled back (database restored) when it left 25%.
#[test]
fn regression_a_healthy_release_with_long_pauses_is_never_rolled_back() {
    let v1 = yaml(API);
    let v2 = yaml(&API.replace("1.0.0", "2.0.0").replace("api:1", "api:2"));
    let mut r = Run::new(vec![v1, v2], &healthy(), true);
    settle(&mut r, 10_000);
    assert_eq!(r.status.phase, Phase::Succeeded);
    r.spec = 1;
    settle(&mut r, 10_000);
    assert_eq!(r.status.phase, Phase::Succeeded, "{}", r.status.message);
    assert!(!r.world.created.iter().any(|j| j.record.kind == JobKind::Restore), "no restore for a healthy release");
}

/// Issue 10, 1: a Prometheus outage longer than the old 20-minute deadline: the release holds,
/// then resumes and succeeds instead of rolling back.
#[test]
fn regression_a_long_prometheus_outage_holds_then_resumes() {
    let v1 = yaml(API);
    let v2 = yaml(&API.replace("1.0.0", "2.0.0").replace("api:1", "api:2"));
    let mut r = Run::new(vec![v1, v2], &healthy(), true);
    settle(&mut r, 10_000);
    r.spec = 1;
    // Into production at 25%.
    drive_until(&mut r, 10_000, |st| st.phase == Phase::Production && st.weight == 25 && st.step_started_at.is_some());
    assert_eq!(r.status.weight, 25);
    *r.metric.lock().unwrap() = Metric::Error;
    let outage_end = r.world.now + chrono::Duration::hours(2);
    while r.world.now < outage_end {
        r.tick(None, false).unwrap();
        assert_eq!(r.status.weight, 25, "held at 25% through the outage");
        assert_eq!(r.status.phase, Phase::Production);
        r.world.advance_to(r.world.now + chrono::Duration::minutes(1));
    }
    *r.metric.lock().unwrap() = Metric::Pass;
    settle(&mut r, 10_000);
    assert_eq!(r.status.phase, Phase::Succeeded, "{}", r.status.message);
}

/// Issue 10, 1: a second staging stage inherited the first stage's readiness clock.
#[test]
fn regression_each_stage_has_its_own_deadline() {
    let three = r#"
version: "1.0.0"
template: {spec: {containers: [{name: api, image: "api:1"}]}}
stages:
- {name: staging, namespace: stg, steps: [{weight: 50, pause: 15m}, {weight: 100}]}
- {name: canary, namespace: can, steps: [{weight: 50, pause: 15m}, {weight: 100}]}
- {name: production, namespace: prod}
"#;
    let mut r = Run::new(vec![yaml(three), yaml(&three.replace("1.0.0", "2.0.0").replace("api:1", "api:2"))], &healthy(), true);
    settle(&mut r, 10_000);
    r.spec = 1;
    settle(&mut r, 10_000);
    assert_eq!(r.status.phase, Phase::Succeeded, "{}", r.status.message);
}

/// Issue 10, 2: removing the stage a release is in panicked (index out of bounds). Now the
/// release holds, Stalled, naming spec.stages, and writes nothing until the stage is back.
#[test]
fn regression_removing_the_current_stage_holds_naming_the_field() {
    let v1 = yaml(API);
    let v2 = yaml(&API.replace("1.0.0", "2.0.0").replace("api:1", "api:2"));
    let mut v2_short = v2.clone();
    v2_short.stages.truncate(1);
    let mut r = Run::new(vec![v1, v2, v2_short], &healthy(), true);
    settle(&mut r, 10_000);
    r.spec = 1;
    drive_until(&mut r, 10_000, |st| st.phase == Phase::Production && st.step_started_at.is_some());
    r.spec = 2;
    let d = r.tick(None, false).unwrap();
    assert!(d.desired.frozen, "nothing is written while the spec conflicts");
    assert!(r.status.message.contains("spec.stages"), "{}", r.status.message);
    assert!(api::conditions::is_true(&r.status.conditions, "Stalled"));
    assert_eq!(r.status.phase, Phase::Production, "held, not rolled back");
    r.spec = 1;
    settle(&mut r, 10_000);
    assert_eq!(r.status.phase, Phase::Succeeded, "{}", r.status.message);
}

/// Issue 10, 2: huge pauses overflowed time arithmetic. Admission bounds durations; one that
/// got past it (stored before the bound) ends the release Failed naming the field, and the
/// engine's time arithmetic saturates rather than panicking.
#[test]
fn regression_a_pause_of_centuries_is_refused_naming_the_field() {
    let mut v2 = yaml(&API.replace("1.0.0", "2.0.0").replace("api:1", "api:2"));
    v2.stages[1].steps[0].pause = Some(api::Dur::from_secs(u64::MAX / 4));
    let mut r = Run::new(vec![yaml(API), v2], &healthy(), true);
    settle(&mut r, 10_000);
    r.spec = 1;
    settle(&mut r, 100);
    assert_eq!(r.status.phase, Phase::Failed);
    assert!(r.status.message.contains("spec.stages[1].steps[0].pause"), "{}", r.status.message);
    assert!(r.world.created.iter().all(|j| j.record.job_name.contains("-1-")), "nothing of 2.0.0 ran");
}

/// Issue 10, 3: a revert (the same revision again) adopted the old release's Jobs and a later
/// rollback restored the backup of that version's first release; a retry passed the previous
/// attempt's BACKUP_ID. Every attempt now has its own Jobs and backup id.
#[test]
fn regression_a_revert_and_a_retry_take_backups_of_their_own() {
    let v1 = yaml(API);
    let v2 = yaml(&API.replace("1.0.0", "2.0.0").replace("api:1", "api:2"));
    let mut r = Run::new(vec![v1.clone(), v2, v1], &healthy(), true);
    settle(&mut r, 10_000);
    r.spec = 1;
    settle(&mut r, 10_000);
    assert_eq!(r.status.phase, Phase::Succeeded);
    // git revert: 1.0.0 again.
    r.spec = 2;
    *r.metric.lock().unwrap() = Metric::Pass;
    drive_until(&mut r, 10_000, |st| st.phase == Phase::Production && st.weight >= 25);
    *r.metric.lock().unwrap() = Metric::Breach;
    settle(&mut r, 10_000);
    assert_eq!(r.status.phase, Phase::RolledBack, "{}", r.status.message);
    let backups: Vec<_> = r.world.created.iter().filter(|j| j.record.kind == JobKind::Backup).collect();
    assert_eq!(backups.len(), 3, "1.0.0, 2.0.0 and the revert each took a backup");
    let restores: Vec<_> = r.world.created.iter().filter(|j| j.record.kind == JobKind::Restore).collect();
    assert_eq!(restores.len(), 1);
    assert_eq!(restores[0].backup_id, backups[2].backup_id, "the revert's own backup is restored");
    assert_ne!(backups[0].backup_id, backups[2].backup_id);
    // Retry: a new backup with a new id.
    r.tick(Some("retry"), false).unwrap();
    settle(&mut r, 10_000);
    let backups: Vec<_> = r.world.created.iter().filter(|j| j.record.kind == JobKind::Backup).collect();
    assert_eq!(backups.len(), 4);
    assert_ne!(backups[3].backup_id, backups[2].backup_id, "a retry's backup has an id of its own");
}

/// Issue 10, 4 and 5: NaN from 0/0 with noData: Fail put NaN in breachValues, which the API
/// server refuses (the release held 25% for ever).
#[test]
fn regression_nan_never_reaches_the_status() {
    let spec = API.replace(
        "success: {op: \"<\", value: 0.01}, rollback",
        "noData: Fail, consecutive: 3, success: {op: \"<\", value: 0.01}, rollback",
    );
    let mut r = Run::new(vec![yaml(&spec), yaml(&spec.replace("1.0.0", "2.0.0").replace("api:1", "api:2"))], &healthy(), true);
    settle(&mut r, 10_000);
    r.spec = 1;
    *r.metric.lock().unwrap() = Metric::NaN;
    settle(&mut r, 10_000);
    assert_eq!(r.status.phase, Phase::RolledBack, "NaN with noData: Fail is a breach: {}", r.status.message);
    assert_eq!(r.status.failure.as_ref().map(|f| f.reason), Some(FailureReason::MetricBreached));
}

/// Issue 10, 6: a stage named `rollback` with a verify Job `smoke` shared its Job name with the
/// rollback plan's `smoke`, so the rollback adopted it and claimed a verification it never ran.
#[test]
fn regression_rollback_verification_runs_its_own_job() {
    let spec = r#"
version: "1.0.0"
template: {spec: {containers: [{name: api, image: "api:1"}]}}
stages:
- {name: rollback, namespace: rb, verify: [{name: smoke}], steps: [{weight: 100}]}
- {name: production, namespace: prod, steps: [{weight: 50, pause: 1m}, {weight: 100}]}
rollback: {verify: [{name: smoke}]}
"#;
    let mut r = Run::new(vec![yaml(spec), yaml(&spec.replace("1.0.0", "2.0.0").replace("api:1", "api:2"))], &healthy(), true);
    settle(&mut r, 10_000);
    r.spec = 1;
    drive_until(&mut r, 1000, |st| st.phase == Phase::Production && st.weight == 50);
    r.tick(Some("rollback"), false).unwrap();
    settle(&mut r, 1000);
    assert_eq!(r.status.phase, Phase::RolledBack);
    let smokes: Vec<_> = r.world.created.iter().filter(|j| j.record.name == "smoke").map(|j| j.record.job_name.clone()).collect();
    assert_eq!(smokes.len(), 3, "the stage's smoke for 1.0.0 and 2.0.0, then the rollback's own: {smokes:?}");
    assert!(smokes.iter().all(|n| smokes.iter().filter(|m| *m == n).count() == 1), "{smokes:?}");
    let rb: Vec<_> = r.status.jobs.iter().filter(|j| j.stage == "rollback" && j.kind == JobKind::Verify).collect();
    assert!(rb.iter().any(|j| j.job_name.contains("-rollback-smoke")), "{rb:?}");
}

/// Issue 10, 7: superseding deleted the candidate before the route left it.
#[test]
fn regression_superseding_moves_traffic_off_before_deleting() {
    let v1 = yaml(&API.replace("goLive: {}", ""));
    let mut specs = vec![v1];
    for v in ["2.0.0", "3.0.0"] {
        specs.push(yaml(&API.replace("goLive: {}", "").replace("1.0.0", v).replace("api:1", &format!("api:{v}"))));
    }
    let mut r = Run::new(specs, &Faults { refuse: vec![false, false, true], ..healthy() }, true);
    settle(&mut r, 10_000);
    r.spec = 1;
    drive_until(&mut r, 10_000, |st| st.phase == Phase::Production && st.weight == 25);
    let old = r.status.revision.clone();
    r.spec = 2;
    // Every third route write is refused: the old candidate stays as long as a route names it.
    for _ in 0..10_000 {
        let d = r.tick(None, false).unwrap();
        let routed = r.world.routes.values().any(|route| route.share(&old) > 0);
        if routed {
            assert!(r.world.has_deployment("prod", &old), "a route sends traffic to a deleted Deployment");
        }
        if r.status.phase.is_terminal() {
            break;
        }
        r.world.advance_to(r.world.now + chrono::Duration::from_std(next_look(&d)).unwrap());
    }
    assert_eq!(r.status.phase, Phase::Succeeded);
    assert!(!r.world.has_deployment("prod", &old), "the superseded candidate is removed once unrouted");
    assert!(r.world.deleted.iter().any(|(_, ns, name)| ns == "prod" && name.ends_with(&old)));
}

/// Issue 10, 8: two stages in one namespace fought over the same objects for ever.
#[test]
fn regression_two_stages_in_one_namespace_are_refused_and_write_nothing() {
    let spec = r#"
version: "1.0.0"
template: {spec: {containers: [{name: api, image: "api:1"}]}}
stages:
- {name: staging}
- {name: production, namespace: team}
"#;
    let mut r = Run::new(vec![yaml(spec)], &healthy(), true);
    let d = r.tick(None, false).unwrap();
    assert_eq!(r.status.phase, Phase::Failed);
    assert!(r.status.message.contains("spec.stages[1].namespace"), "{}", r.status.message);
    assert!(d.desired.frozen);
    assert!(r.world.created.is_empty());
}

/// A promote mid-rollback does not interrupt it; a new spec during a rollback waits for it.
#[test]
fn regression_a_new_version_during_a_rollback_waits_for_the_restore() {
    let v1 = yaml(API);
    let v2 = yaml(&API.replace("1.0.0", "2.0.0").replace("api:1", "api:2"));
    let v3 = yaml(&API.replace("1.0.0", "3.0.0").replace("api:1", "api:3"));
    let faults = Faults { jobs: vec![(600, 0)], ..healthy() };
    let mut r = Run::new(vec![v1, v2, v3], &faults, true);
    settle(&mut r, 10_000);
    r.spec = 1;
    drive_until(&mut r, 10_000, |st| st.phase == Phase::Production && st.weight == 5);
    r.tick(Some("rollback"), false).unwrap();
    assert_eq!(r.status.phase, Phase::RollingBack);
    let rolling = r.status.revision.clone();
    r.spec = 2;
    for _ in 0..3 {
        r.tick(None, false).unwrap();
        r.world.advance_to(r.world.now + chrono::Duration::seconds(5));
    }
    assert_eq!(r.status.revision, rolling, "the rollback finishes before 3.0.0 starts");
    settle(&mut r, 10_000);
    assert_eq!((r.status.phase, r.status.candidate_version.as_str()), (Phase::RolledBack, "2.0.0"), "{}", r.status.message);
    let restores = r.world.created.iter().filter(|j| j.record.kind == JobKind::Restore).count();
    assert_eq!(restores, 1, "the owed restore ran");
    settle(&mut r, 10_000);
    assert_eq!(r.status.candidate_version, "3.0.0");
    assert_eq!(r.status.phase, Phase::Succeeded, "{}", r.status.message);
}

#[test]
fn every_generated_spec_is_one_the_runtime_validation_accepts() {
    // The generator must produce admitted specs, or the properties test the wrong thing.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..200 {
        let p = arb_spec().new_tree(&mut runner).unwrap().current();
        let s = build(&p);
        let problems = locall_operator::engine::validate::validate(&s, NS);
        assert!(problems.is_empty(), "{problems:?} for {p:?}");
    }
}

// Counterexamples the harness found while it was written, each shrunk and kept.

/// Found by the harness: a stage added after the stable release routed the stable version's
/// share to a namespace where the stable version had never run.
#[test]
fn regression_a_stage_added_since_the_stable_release_is_not_split_with_a_version_not_there() {
    let v1 = yaml("version: \"1.0.0\"\ntemplate: {spec: {containers: [{name: api, image: \"api:1\"}]}}\nstages:\n- {name: production, namespace: prod, steps: [{weight: 50, pause: 1m}, {weight: 100}]}\n");
    let v2 = yaml("version: \"2.0.0\"\ntemplate: {spec: {containers: [{name: api, image: \"api:2\"}]}}\nstages:\n- {name: staging, namespace: stg, steps: [{weight: 50, pause: 1m}, {weight: 100}]}\n- {name: production, namespace: prod, steps: [{weight: 50, pause: 1m}, {weight: 100}]}\n");
    let mut r = Run::new(vec![v1, v2], &healthy(), true);
    settle(&mut r, 1000);
    let stable = r.status.revision.clone();
    r.spec = 1;
    settle(&mut r, 1000);
    assert_eq!(r.status.phase, Phase::Succeeded, "{}", r.status.message);
    assert_eq!(r.world.routes["stg"].share(&stable), 0, "1.0.0 never ran in stg");
    assert!(!r.world.has_deployment("stg", &stable));
}

/// Found by the harness: a candidate deleted by hand mid-stage was given more traffic before its
/// replacement pods were Ready.
#[test]
fn regression_a_candidate_deleted_by_hand_gets_no_more_traffic_until_it_is_ready_again() {
    let v1 = yaml(&API.replace("goLive: {}", ""));
    let v2 = yaml(&API.replace("goLive: {}", "").replace("1.0.0", "2.0.0").replace("api:1", "api:2"));
    let mut r = Run::new(vec![v1, v2], &Faults { ready: vec![Some(20), Some(20), Some(20), Some(600)], ..healthy() }, true);
    settle(&mut r, 10_000);
    r.spec = 1;
    drive_until(&mut r, 10_000, |st| st.phase == Phase::Production && st.weight == 5 && st.step_started_at.is_some());
    let rev = r.status.revision.clone();
    r.world.delete_deployment("prod", &rev);
    // Past the 10-minute pause: the replacement takes 10 minutes to be Ready; every tick's
    // invariants (no traffic raised towards a Deployment that is not Ready) are checked.
    settle(&mut r, 10_000);
    assert_eq!(r.status.phase, Phase::Succeeded, "{}", r.status.message);
}

/// Found by the harness: a metric added while the last go-live window ran was never measured,
/// and the release was declared good without it.
#[test]
fn regression_a_metric_added_during_go_live_is_measured_before_success() {
    let v1 = yaml(API);
    let v2 = yaml(&API.replace("1.0.0", "2.0.0").replace("api:1", "api:2"));
    let mut v2_more = v2.clone();
    let mut extra = v2_more.analysis.as_ref().unwrap().metrics[0].clone();
    extra.name = "latency".into();
    v2_more.analysis.as_mut().unwrap().metrics.push(extra);
    v2_more.go_live = Some(api::GoLive { windows: vec![] });
    let mut r = Run::new(vec![v1, v2, v2_more], &healthy(), true);
    settle(&mut r, 10_000);
    r.spec = 1;
    drive_until(&mut r, 10_000, |st| st.phase == Phase::GoLive && st.window_index == 2);
    r.spec = 2;
    settle(&mut r, 10_000);
    assert_eq!(r.status.phase, Phase::Succeeded);
    let latency = r.status.gates.iter().find(|g| g.metric == "latency");
    assert!(latency.is_some_and(|g| g.verdict == Verdict::Pass), "{:?}", r.status.gates);
}
