//! An in-memory cluster that carries out the engine's decisions the way the controller and
//! Kubernetes would: Jobs run and end, Deployments become Ready, routers apply weights, and
//! Prometheus answers the gates. How each of them behaves is the caller's to say (healthy for
//! `kubectl locall plan`; slow, failing, refusing or lying for the model-based tests).
//!
//! It follows `controller::act`'s order (grow, route, shrink, delete only what is no longer
//! routed to) and `controller::observe`'s snapshot, and records what a user would call wrong:
//! traffic sent to a revision without a Ready Deployment, a Job created twice.

use crate::api::{Approval, CheckResult, LocallReleaseSpec, LocallReleaseStatus, Metric, Phase, TrafficMethod};
use crate::engine::{gates, names, traffic, Decision, DeploymentObs, JobObs, JobToCreate, Observed, Release};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How a Job ends.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEnd {
    Succeed,
    Fail,
    /// Runs for ever.
    Hang,
    /// Deleted by someone before it finished.
    Vanish,
}

/// How long a created Job runs and how it ends.
pub type JobHook = Box<dyn FnMut(&JobToCreate) -> (Duration, JobEnd) + Send>;
/// How long a Deployment (namespace, revision) takes to become Ready; `None`: never.
pub type ReadyHook = Box<dyn FnMut(&str, &str) -> Option<Duration> + Send>;
/// What Prometheus answers for a metric about a target at a time.
pub type MeasureHook = Box<dyn FnMut(&Metric, &gates::Target, DateTime<Utc>) -> gates::Measurement + Send>;

/// What the world does: each hook is asked when the thing happens.
pub struct Behaviour {
    pub job: JobHook,
    pub ready_after: ReadyHook,
    /// Whether the router refuses this route write (an API server or router outage): the
    /// reconcile then stops there with an error, as `controller::act` does, and its status is
    /// not written.
    pub router_refuses: Box<dyn FnMut() -> bool + Send>,
    pub measure: MeasureHook,
    /// Whether an approval is granted as soon as one is awaited.
    pub approve: bool,
}

impl Behaviour {
    /// Everything works: Jobs take `job`, Deployments `ready`, the router is instant, every
    /// metric answers a value that passes its gate.
    pub fn healthy(job: Duration, ready: Duration) -> Behaviour {
        Behaviour {
            job: Box::new(move |_| (job, JobEnd::Succeed)),
            ready_after: Box::new(move |_, _| Some(ready)),
            router_refuses: Box::new(|| false),
            measure: Box::new(|m, _, _| gates::Measurement { value: Some(passing_value(m)), sample: Some(1e6), error: None }),
            approve: true,
        }
    }
}

/// A value that passes the metric's gate (meets its success criterion, stays clear of its
/// rollback trigger).
pub fn passing_value(m: &Metric) -> f64 {
    let mut candidates = vec![0.0, 1.0];
    for t in m.success.iter().chain(m.rollback.iter()) {
        let v = t.value;
        candidates.extend([v * 0.5, v * 1.5, v - 1.0, v + 1.0, v, v * 0.999, v * 1.001]);
    }
    let pass = |v: f64| gates::verdict(m, &gates::Measurement { value: Some(v), sample: Some(1e6), error: None }).0;
    candidates.into_iter().find(|v| pass(*v) == crate::api::Verdict::Pass).unwrap_or(0.0)
}

/// A value that breaches the metric's rollback trigger, if it has one.
pub fn breaching_value(m: &Metric) -> Option<f64> {
    let t = m.rollback.as_ref()?;
    let v = t.value;
    [v * 2.0 + 1.0, v + 1.0, v - 1.0, v * 0.5 - 1.0, v].into_iter().find(|x| t.holds(*x))
}

/// One route: the revisions a stage sends traffic to, with their weights (0-100).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Route {
    pub backends: Vec<(String, i32)>,
}

impl Route {
    fn weight_on(&self, rev: &str) -> i32 {
        self.backends.iter().filter(|(r, _)| r == rev).map(|(_, w)| *w).sum()
    }
    /// The revision's share, 0-100.
    pub fn share(&self, rev: &str) -> i32 {
        let total: i32 = self.backends.iter().map(|(_, w)| *w).sum();
        if total == 0 {
            0
        } else {
            (200 * self.weight_on(rev) + total) / (2 * total)
        }
    }
}

/// (namespace, name) of an object.
type Key = (String, String);

/// The in-memory cluster.
pub struct World {
    pub release: String,
    pub namespace: String,
    pub now: DateTime<Utc>,
    pub behaviour: Behaviour,
    /// Each Deployment, with when it becomes Ready (`None`: never).
    deployments: BTreeMap<Key, (DeploymentObs, Option<DateTime<Utc>>)>,
    /// Each Job, with when it ends (`None`: never) and how.
    jobs: BTreeMap<Key, (JobObs, Option<DateTime<Utc>>, JobEnd)>,
    /// The routes as the API server holds them (what the router reads back), by part
    /// (`names::traffic_key`: the namespace, or `<namespace>/<component>`).
    pub routes: BTreeMap<String, Route>,
    /// What the names of the release's parts start with (`names::base`), as desired so far.
    bases: BTreeSet<String>,
    /// Every Job creation the engine asked for, in order.
    pub created: Vec<JobToCreate>,
    /// Every Deployment deletion, in order: (time, namespace, name).
    pub deleted: Vec<(DateTime<Utc>, String, String)>,
    /// What went wrong that a user would see: checked by the model-based tests.
    pub violations: Vec<String>,
    /// When set, a Job vanishes only once its name is in here (the Jobs the stored status
    /// records): a Job deleted in the milliseconds between its creation and the status write
    /// that records it cannot be told from one never created, by anyone.
    pub recorded: Option<BTreeSet<String>>,
}

impl World {
    pub fn new(release: &str, namespace: &str, now: DateTime<Utc>, behaviour: Behaviour) -> World {
        World {
            release: release.into(),
            namespace: namespace.into(),
            now,
            behaviour,
            deployments: BTreeMap::new(),
            jobs: BTreeMap::new(),
            routes: BTreeMap::new(),
            bases: BTreeSet::from([release.to_string()]),
            created: vec![],
            deleted: vec![],
            violations: vec![],
            recorded: None,
        }
    }

    /// The engine's snapshot, as `controller::observe` builds it.
    pub fn observe(&mut self, spec: &LocallReleaseSpec, status: &LocallReleaseStatus, generation: Option<i64>) -> Observed {
        let mut obs = Observed {
            deployments: self.deployments.iter().map(|(k, (d, _))| (k.clone(), d.clone())).collect(),
            jobs: self.jobs.iter().map(|(k, (j, _, _))| (k.clone(), j.clone())).collect(),
            preflight: Some(vec![CheckResult { name: "preflight".into(), passed: true, message: "ok".into() }]),
            ..Default::default()
        };
        let r = Release { name: &self.release, namespace: &self.namespace, generation, spec, status };
        let candidate = crate::engine::candidate_revision(spec, status);
        let namespaces: BTreeSet<String> = crate::engine::stages_in_play(&r).into_iter().map(|(_, ns, _, _)| ns).collect();
        for (key, route) in &self.routes {
            let ns = key.split('/').next().unwrap_or_default();
            if namespaces.contains(ns) {
                obs.traffic.insert(key.clone(), route.share(&candidate));
            }
        }
        if self.behaviour.approve && status.phase == Phase::AwaitingApproval {
            // One more approver each tick, a distinct person each time (a stage may need several).
            let n = status.approvals.iter().filter(|a| a.stage == status.stage).count();
            let by = if n == 0 { "plan".to_string() } else { format!("plan-{}", n + 1) };
            obs.annotation_approval = Some(Approval { stage: status.stage.clone(), version: status.candidate_version.clone(), by });
        }
        if let Some((t, due)) = crate::engine::measurements_due(&r, self.now) {
            let metrics = crate::engine::gates::metrics(spec, &self.release);
            for q in due {
                if let Some(m) = metrics.iter().find(|m| m.name == q.metric) {
                    obs.measurements.insert(q.metric.clone(), (self.behaviour.measure)(m, &t, self.now));
                }
            }
            obs.measured_target = Some(t.key());
        }
        obs
    }

    /// Carries out a decision, in `controller::act`'s order. False when a route write was
    /// refused: the rest of the decision was not carried out, and its status must not be stored.
    pub fn apply(&mut self, d: &Decision, method: TrafficMethod) -> bool {
        if d.desired.frozen {
            return true;
        }
        for j in &d.jobs {
            let key = (j.record.namespace.clone(), j.record.job_name.clone());
            if self.created.iter().any(|c| c.record.job_name == j.record.job_name && c.record.namespace == j.record.namespace) {
                self.violations.push(format!("Job {}/{} created twice", key.0, key.1));
            }
            self.created.push(j.clone());
            if self.jobs.contains_key(&key) {
                continue; // 409: adopted
            }
            let (dur, end) = (self.behaviour.job)(j);
            let at = match end {
                JobEnd::Hang => None,
                _ => Some(add(self.now, dur)),
            };
            self.jobs.insert(key, (JobObs::Running, at, end));
        }
        let release = self.release.clone();
        let dep_name = |s: &crate::engine::StageDesired, rev: &str| names::deployment(&s.base(&release), rev);
        self.bases.extend(d.desired.stages.iter().map(|s| s.base(&release)));
        // Grow.
        for s in &d.desired.stages {
            for dep in &s.deployments {
                let key = (s.namespace.clone(), dep_name(s, &dep.revision));
                let cur = self.deployments.get(&key).map(|(o, _)| o.replicas);
                match cur {
                    None if dep.from_spec => {
                        let ready_at = (self.behaviour.ready_after)(&s.namespace, &dep.revision).map(|d| add(self.now, d));
                        let obs = DeploymentObs { replicas: dep.replicas, ready: 0, updated: 0, current: true };
                        self.deployments.insert(key, (obs, ready_at));
                    }
                    Some(n) if dep.replicas > n => {
                        let ready_at = (self.behaviour.ready_after)(&s.namespace, &dep.revision).map(|d| add(self.now, d));
                        if let Some((o, at)) = self.deployments.get_mut(&key) {
                            o.replicas = dep.replicas;
                            *at = ready_at;
                        }
                    }
                    _ => {}
                }
            }
        }
        self.advance_to(self.now);
        // Route.
        for s in &d.desired.stages {
            let Some(t) = &s.traffic else { continue };
            let eff = traffic::effective_weight(method, t.stable_replicas, t.candidate_replicas, t.weight, t.stable.is_some());
            let mut backends = vec![];
            match (&t.stable, &t.candidate) {
                (Some(st), Some(c)) => {
                    backends.push((st.clone(), 100 - eff));
                    backends.push((c.clone(), eff));
                }
                (Some(st), None) => backends.push((st.clone(), 100)),
                (None, Some(c)) => backends.push((c.clone(), if t.weight > 0 { 100 } else { 0 })),
                (None, None) => {}
            }
            let route = Route { backends };
            let route_key = names::traffic_key(&s.namespace, s.component.as_deref());
            let old = self.routes.get(&route_key).cloned().unwrap_or_default();
            if old == route {
                continue;
            }
            // Traffic must only ever grow towards a revision whose Deployment is Ready: never
            // taken from what served it, nor kept from a Ready revision. (A route that served
            // nothing, all weights 0, loses no request when its only backend, unready, gets them.)
            let is_ready = |rev: &str| self.deployments.get(&(s.namespace.clone(), dep_name(s, rev))).is_some_and(|(o, _)| o.ready > 0);
            let served_before = old.backends.iter().any(|(_, w)| *w > 0);
            for (rev, w) in &route.backends {
                if *w > old.weight_on(rev) {
                    let ready_elsewhere = route.backends.iter().any(|(r, _)| r != rev && is_ready(r));
                    if !is_ready(rev) && (served_before || ready_elsewhere) {
                        self.violations.push(format!("traffic raised to {w}% on {rev} in {} whose Deployment is not Ready", s.namespace));
                    }
                }
            }
            if (self.behaviour.router_refuses)() {
                return false;
            }
            self.routes.insert(route_key, route);
        }
        // Shrink.
        for s in &d.desired.stages {
            for dep in &s.deployments {
                let key = (s.namespace.clone(), dep_name(s, &dep.revision));
                if let Some((o, _)) = self.deployments.get_mut(&key) {
                    if dep.replicas < o.replicas {
                        o.replicas = dep.replicas;
                        o.ready = o.ready.min(dep.replicas);
                        o.updated = o.updated.min(dep.replicas);
                    }
                }
            }
        }
        // Delete what is wanted nowhere, once no route sends it traffic.
        let wanted: BTreeSet<(String, String)> = d
            .desired
            .stages
            .iter()
            .flat_map(|s| s.deployments.iter().map(|dep| (s.namespace.clone(), dep_name(s, &dep.revision))))
            .collect();
        self.advance_to(self.now);
        let stale: Vec<(String, String)> = self.deployments.keys().filter(|k| !wanted.contains(*k)).cloned().collect();
        for (ns, name) in stale {
            // As act: not while the route read back still sends it traffic.
            let routed = self.routes.iter().any(|(key, r)| {
                let (route_ns, component) = match key.split_once('/') {
                    Some((n, c)) => (n, Some(c)),
                    None => (key.as_str(), None),
                };
                let base = names::base(&release, component);
                route_ns == ns && r.backends.iter().any(|(rev, w)| *w > 0 && names::deployment(&base, rev) == name)
            });
            if routed {
                continue;
            }
            self.deployments.remove(&(ns.clone(), name.clone()));
            self.deleted.push((self.now, ns, name));
        }
        true
    }

    /// Time passes: Jobs end, Deployments become Ready.
    pub fn advance_to(&mut self, to: DateTime<Utc>) {
        self.now = self.now.max(to);
        let now = self.now;
        let mut vanished = vec![];
        for (key, (state, at, end)) in self.jobs.iter_mut() {
            if *state == JobObs::Running && at.is_some_and(|t| t <= now) {
                match end {
                    JobEnd::Succeed => *state = JobObs::Succeeded,
                    JobEnd::Fail => {
                        *state = JobObs::Failed {
                            reason: "BackoffLimitExceeded".into(),
                            message: "Job has reached the specified backoff limit".into(),
                        }
                    }
                    JobEnd::Vanish if self.recorded.as_ref().is_none_or(|r| r.contains(&key.1)) => vanished.push(key.clone()),
                    JobEnd::Vanish => {}
                    JobEnd::Hang => {}
                }
            }
        }
        for k in vanished {
            self.jobs.remove(&k);
        }
        for (o, at) in self.deployments.values_mut() {
            if at.is_some_and(|t| t <= now) {
                o.ready = o.replicas;
                o.updated = o.replicas;
            }
        }
    }

    /// The cluster heals: every Deployment becomes Ready now, and routes are accepted.
    pub fn heal(&mut self) {
        let now = self.now;
        for (_, at) in self.deployments.values_mut() {
            *at = Some(now);
        }
        self.behaviour.ready_after = Box::new(|_, _| Some(Duration::ZERO));
        self.behaviour.router_refuses = Box::new(|| false);
        self.advance_to(now);
    }

    /// A Deployment as the API server holds it.
    pub fn deployment(&self, ns: &str, name: &str) -> Option<DeploymentObs> {
        self.deployments.get(&(ns.to_string(), name.to_string())).map(|(d, _)| d.clone())
    }

    /// Someone deletes a Deployment by hand.
    pub fn delete_deployment(&mut self, ns: &str, revision: &str) {
        for base in &self.bases {
            self.deployments.remove(&(ns.to_string(), names::deployment(base, revision)));
        }
    }

    /// Whether a revision's Deployment exists in a namespace.
    pub fn has_deployment(&self, ns: &str, revision: &str) -> bool {
        self.bases.iter().any(|b| self.deployments.contains_key(&(ns.to_string(), names::deployment(b, revision))))
    }
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    crate::engine::now_plus(t, d)
}
