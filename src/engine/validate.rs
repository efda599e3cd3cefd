//! Checks the schema and CEL rules cannot express, and the admission rules again as defence in
//! depth for objects admitted before those rules existed. Each error names the field, so the
//! operator can put it in a condition and an Event.

use crate::api::{Dur, HookJob, LocallReleaseSpec, TrafficMethod, MIN_INTERVAL, MIN_WINDOW};
use std::collections::HashMap;

/// A spec field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// A release of one template, or of components (each with a pod template, unique names, an
/// order without cycles); metrics name components that exist.
fn components(spec: &LocallReleaseSpec, out: &mut Vec<FieldError>) {
    let has_template = spec.template != Default::default();
    if spec.components.is_empty() {
        if spec.template.spec.as_ref().is_none_or(|p| p.containers.is_empty()) {
            out.push(err("spec.template.spec.containers", "the pod template needs at least one container"));
        }
        if let Some(i) = spec.analysis.iter().flat_map(|a| a.metrics.iter()).position(|m| m.component.is_some()) {
            out.push(err(format!("spec.analysis.metrics[{i}].component"), "only a release with components has components to gate"));
        }
        return;
    }
    if has_template {
        out.push(err("spec.template", "set template (one application) or components (several): exactly one of them"));
    }
    let list = spec.components.iter().map(|c| c.name.as_str()).collect::<Vec<_>>();
    names(&list, "spec.components", "component", out);
    for (i, c) in spec.components.iter().enumerate() {
        if c.template.spec.as_ref().is_none_or(|p| p.containers.is_empty()) {
            out.push(err(format!("spec.components[{i}].template.spec.containers"), "the pod template needs at least one container"));
        }
        for (j, a) in c.after.iter().enumerate() {
            if a == &c.name || !list.contains(&a.as_str()) {
                out.push(err(format!("spec.components[{i}].after[{j}]"), format!("{a:?} is not another component of this release")));
            }
        }
    }
    // An order that loops never deploys: every component must be reachable by following `after`.
    let mut placed: Vec<&str> = Vec::new();
    let distinct = list.iter().collect::<std::collections::HashSet<_>>().len() == list.len();
    while distinct && placed.len() < list.len() {
        let next = spec.components.iter().find(|c| {
            !placed.contains(&c.name.as_str()) && c.after.iter().all(|a| placed.contains(&a.as_str()) || !list.contains(&a.as_str()))
        });
        match next {
            Some(c) => placed.push(&c.name),
            None => {
                let i = spec.components.iter().position(|c| !placed.contains(&c.name.as_str())).unwrap_or(0);
                out.push(err(format!("spec.components[{i}].after"), "the components' order has a cycle"));
                break;
            }
        }
    }
    for (i, m) in spec.analysis.iter().flat_map(|a| a.metrics.iter()).enumerate() {
        if let Some(c) = m.component.as_deref().filter(|c| !list.contains(c)) {
            out.push(err(format!("spec.analysis.metrics[{i}].component"), format!("{c:?} is not a component of this release")));
        }
    }
}

/// All the problems found, in field order (empty when the spec is fine). `release_namespace` is
/// the release's own: a stage without `namespace` lives there.
pub fn validate(spec: &LocallReleaseSpec, release_namespace: &str) -> Vec<FieldError> {
    let mut out = Vec::new();
    components(spec, &mut out);
    if let Some(p) = &spec.preflight {
        for (i, t) in p.tls.iter().enumerate() {
            at_most_limit(&t.min_validity, format!("spec.preflight.tls[{i}].minValidity"), &mut out);
        }
    }
    if let Some(h) = &spec.hooks {
        jobs(&h.pre_deploy, "spec.hooks.preDeploy", &mut out);
        if let Some(m) = &h.migration {
            if m.changes_schema && m.restore.is_none() {
                out.push(err("spec.hooks.migration.restore", "a migration that changes the schema needs a restore Job for rollbacks"));
            }
            let templates = [("backup", Some(&m.backup)), ("migrate", Some(&m.migrate)), ("restore", m.restore.as_ref())];
            for (name, t) in templates {
                if let Some(timeout) = t.and_then(|t| t.timeout.as_ref()) {
                    at_most_limit(timeout, format!("spec.hooks.migration.{name}.timeout"), &mut out);
                }
            }
        }
        jobs(&h.post_deploy, "spec.hooks.postDeploy", &mut out);
    }
    if spec.stages.is_empty() {
        out.push(err("spec.stages", "at least one stage is required"));
    }
    let stage_names = spec.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>();
    names(&stage_names, "spec.stages", "stage", &mut out);
    let mut namespaces: HashMap<&str, &str> = HashMap::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        let ns = spec.stage_namespace(i, release_namespace);
        if let Some(other) = namespaces.insert(ns, &stage.name) {
            let how = if stage.namespace.is_none() { " (the release's namespace, by default)" } else { "" };
            out.push(err(
                format!("spec.stages[{i}].namespace"),
                format!("stage {:?} would share namespace {ns:?}{how} with stage {other:?}: each stage needs its own", stage.name),
            ));
            namespaces.insert(ns, other);
        }
        jobs(&stage.verify, &format!("spec.stages[{i}].verify"), &mut out);
        let mut last = 0;
        for (j, step) in stage.steps.iter().enumerate() {
            let f = format!("spec.stages[{i}].steps[{j}].weight");
            if !(1..=100).contains(&step.weight) {
                out.push(err(f, format!("weight {} is outside 1..100", step.weight)));
            } else if step.weight <= last {
                out.push(err(f, format!("weights must increase: {} after {last}", step.weight)));
            }
            last = step.weight;
            if let Some(pause) = &step.pause {
                at_most_limit(pause, format!("spec.stages[{i}].steps[{j}].pause"), &mut out);
            }
        }
        if !stage.steps.is_empty() && last != 100 {
            out.push(err(format!("spec.stages[{i}].steps"), "the last step's weight must be 100"));
        }
    }
    match spec.traffic.method {
        TrafficMethod::GatewayApi if spec.traffic.gateway.is_none() => {
            out.push(err("spec.traffic.gateway", "required when traffic.method is GatewayAPI"))
        }
        TrafficMethod::ReplicaRatio if spec.traffic.gateway.is_some() => {
            out.push(err("spec.traffic.gateway", "must not be set when traffic.method is ReplicaRatio"))
        }
        _ => {}
    }
    if let Some(a) = &spec.analysis {
        between(&a.interval, MIN_INTERVAL, "spec.analysis.interval".into(), &mut out);
        let metric_names = a.metrics.iter().map(|m| m.name.as_str()).collect::<Vec<_>>();
        names(&metric_names, "spec.analysis.metrics", "metric", &mut out);
        for (i, m) in a.metrics.iter().enumerate() {
            if m.query.trim().is_empty() {
                out.push(err(format!("spec.analysis.metrics[{i}].query"), "must not be empty or whitespace only"));
            }
            if m.sample_query.as_ref().is_some_and(|q| q.trim().is_empty()) {
                out.push(err(format!("spec.analysis.metrics[{i}].sampleQuery"), "must not be empty or whitespace only"));
            }
            if let Some(interval) = &m.interval {
                between(interval, MIN_INTERVAL, format!("spec.analysis.metrics[{i}].interval"), &mut out);
            }
        }
    }
    if let Some(g) = &spec.go_live {
        let window_names = g.windows.iter().map(|w| w.name.as_str()).collect::<Vec<_>>();
        unique(&window_names, "spec.goLive.windows", "window", &mut out);
        for (i, w) in g.windows.iter().enumerate() {
            between(&w.duration, MIN_WINDOW, format!("spec.goLive.windows[{i}].duration"), &mut out);
            between(&w.interval, MIN_INTERVAL, format!("spec.goLive.windows[{i}].interval"), &mut out);
        }
    }
    if let Some(r) = &spec.rollback {
        jobs(&r.verify, "spec.rollback.verify", &mut out);
    }
    let notification_names = spec.notifications.iter().map(|n| n.name.as_str()).collect::<Vec<_>>();
    unique(&notification_names, "spec.notifications", "notification", &mut out);
    for (i, a) in spec.approvals.iter().enumerate() {
        if !spec.stages.iter().any(|s| s.name == a.stage) {
            out.push(err(format!("spec.approvals[{i}].stage"), format!("no stage named {:?}", a.stage)));
        }
    }
    out
}

/// A list of Jobs at `field`: names unique and free of `--`, timeouts within the limit.
fn jobs(list: &[HookJob], field: &str, out: &mut Vec<FieldError>) {
    names(&list.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), field, "Job", out);
    for (i, j) in list.iter().enumerate() {
        if let Some(timeout) = &j.job.timeout {
            at_most_limit(timeout, format!("{field}[{i}].timeout"), out);
        }
    }
}

/// Names that become part of Job names or metric keys: unique, and without `--` (the separator).
fn names(list: &[&str], field: &str, what: &str, out: &mut Vec<FieldError>) {
    for (i, n) in list.iter().enumerate() {
        if n.contains("--") {
            out.push(err(format!("{field}[{i}].name"), format!("{what} name {n:?} must not contain \"--\"")));
        }
    }
    unique(list, field, what, out);
}

fn unique(list: &[&str], field: &str, what: &str, out: &mut Vec<FieldError>) {
    let mut seen = HashMap::new();
    for (i, n) in list.iter().enumerate() {
        if let Some(first) = seen.insert(*n, i) {
            out.push(err(format!("{field}[{i}].name"), format!("duplicate {what} name {n:?} (also {field}[{first}])")));
            seen.insert(*n, first);
        }
    }
}

/// At most [`Dur::LIMIT`] (one year).
fn at_most_limit(d: &Dur, field: String, out: &mut Vec<FieldError>) {
    if *d > Dur::LIMIT {
        out.push(err(field, format!("{d} is more than {} (one year)", Dur::LIMIT)));
    }
}

/// At least `min` and at most [`Dur::LIMIT`].
fn between(d: &Dur, min: Dur, field: String, out: &mut Vec<FieldError>) {
    if *d < min {
        out.push(err(field, format!("{d} is less than {min}")));
    } else {
        at_most_limit(d, field, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LocallReleaseSpec;

    /// A valid spec using every list and duration `validate` checks.
    const SPEC: &str = r#"
version: 1.0.0
template: {spec: {containers: [{name: api, image: api:1}]}}
preflight: {tls: [{secretName: tls, minValidity: 720h}]}
hooks:
  preDeploy: [{name: tests, timeout: 10m}, {name: cache-clear}]
  migration: {changesSchema: true, backup: {timeout: 1h}, migrate: {}, restore: {}}
  postDeploy: [{name: alerts}]
stages:
- {name: staging, namespace: stg, verify: [{name: e2e}], steps: [{weight: 100}]}
- {name: production, steps: [{weight: 10, pause: 1m}, {weight: 100}]}
traffic: {method: GatewayAPI, gateway: {name: gw}}
analysis:
  interval: 10s
  metrics:
  - {name: error-rate, query: q, sampleQuery: s, rollback: {op: ">", value: 0.05}, interval: 5s}
  - {name: latency, query: q, success: {op: "<", value: 0.5}}
goLive: {windows: [{name: 0-15m, duration: 15m, interval: 1m}, {name: 15m-2h, duration: 1h45m, interval: 5m}]}
rollback: {verify: [{name: smoke}]}
notifications:
- {name: eng, format: Slack, urlSecret: {name: s, key: k}}
- {name: biz, format: Teams, urlSecret: {name: s, key: k}}
approvals: [{stage: production, version: 1.0.0, by: alice}]
"#;

    fn spec() -> LocallReleaseSpec {
        serde_yaml::from_str(SPEC).unwrap()
    }

    fn fields(s: &LocallReleaseSpec) -> Vec<String> {
        validate(s, "prod").into_iter().map(|e| e.field).collect()
    }

    /// `f` breaks the valid spec; exactly `want` are named.
    #[track_caller]
    fn named(f: impl FnOnce(&mut LocallReleaseSpec), want: &[&str]) -> Vec<FieldError> {
        let mut s = spec();
        f(&mut s);
        let errors = validate(&s, "prod");
        assert_eq!(errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), want, "{errors:?}");
        errors
    }

    #[test]
    fn the_valid_spec_passes() {
        assert_eq!(fields(&spec()), Vec::<String>::new());
    }

    const PLATFORM: &str = r#"
version: "2.0.0"
components:
- {name: api, service: {}, template: {spec: {containers: [{name: api, image: "api:2"}]}}}
- {name: worker, after: [api], template: {spec: {containers: [{name: worker, image: "worker:2"}]}}}
stages: [{name: production}]
analysis: {metrics: [{name: lag, component: worker, query: q, rollback: {op: ">", value: 1}}]}
"#;

    /// `f` breaks the valid multi-component spec; exactly `want` are named.
    #[track_caller]
    fn platform_named(f: impl FnOnce(&mut LocallReleaseSpec), want: &[&str]) {
        let mut s: LocallReleaseSpec = serde_yaml::from_str(PLATFORM).unwrap();
        assert_eq!(fields(&s), Vec::<String>::new(), "the platform spec is valid");
        f(&mut s);
        let errors = validate(&s, "prod");
        assert_eq!(errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), want, "{errors:?}");
    }

    #[test]
    fn components_are_named_ordered_without_cycles_and_gated_only_where_they_exist() {
        platform_named(|s| s.template = spec().template, &["spec.template"]);
        platform_named(
            |s| s.components[1].name = "api".into(),
            &["spec.components[1].name", "spec.components[1].after[0]", "spec.analysis.metrics[0].component"],
        );
        platform_named(|s| s.components[1].after = vec!["db".into()], &["spec.components[1].after[0]"]);
        platform_named(|s| s.components[0].after = vec!["worker".into()], &["spec.components[0].after"]);
        platform_named(
            |s| s.components[1].template.spec.as_mut().unwrap().containers.clear(),
            &["spec.components[1].template.spec.containers"],
        );
        platform_named(|s| s.analysis.as_mut().unwrap().metrics[0].component = Some("web".into()), &["spec.analysis.metrics[0].component"]);
        // A release of one template has no component to gate.
        named(|s| s.analysis.as_mut().unwrap().metrics[0].component = Some("api".into()), &["spec.analysis.metrics[0].component"]);
    }

    #[test]
    fn duplicate_stage_names() {
        named(
            |s| {
                s.stages[1].name = "staging".into();
                s.approvals.clear();
            },
            &["spec.stages[1].name"],
        );
    }

    #[test]
    fn duplicate_metric_names() {
        let e = named(|s| s.analysis.as_mut().unwrap().metrics[1].name = "error-rate".into(), &["spec.analysis.metrics[1].name"]);
        assert!(e[0].message.contains("spec.analysis.metrics[0]"), "{}", e[0]);
    }

    #[test]
    fn duplicate_job_names() {
        named(|s| s.hooks.as_mut().unwrap().pre_deploy[1].name = "tests".into(), &["spec.hooks.preDeploy[1].name"]);
        named(
            |s| {
                let post = &mut s.hooks.as_mut().unwrap().post_deploy;
                post.push(post[0].clone());
            },
            &["spec.hooks.postDeploy[1].name"],
        );
        named(
            |s| {
                let verify = &mut s.stages[0].verify;
                verify.push(verify[0].clone());
            },
            &["spec.stages[0].verify[1].name"],
        );
        named(
            |s| {
                let verify = &mut s.rollback.as_mut().unwrap().verify;
                verify.push(verify[0].clone());
            },
            &["spec.rollback.verify[1].name"],
        );
    }

    #[test]
    fn duplicate_notification_and_window_names() {
        named(|s| s.notifications[1].name = "eng".into(), &["spec.notifications[1].name"]);
        named(|s| s.go_live.as_mut().unwrap().windows[1].name = "0-15m".into(), &["spec.goLive.windows[1].name"]);
    }

    #[test]
    fn double_hyphens_in_names() {
        named(|s| s.stages[0].name = "pre--prod".into(), &["spec.stages[0].name"]);
        named(|s| s.hooks.as_mut().unwrap().pre_deploy[0].name = "unit--tests".into(), &["spec.hooks.preDeploy[0].name"]);
        named(|s| s.hooks.as_mut().unwrap().post_deploy[0].name = "a--b".into(), &["spec.hooks.postDeploy[0].name"]);
        named(|s| s.stages[0].verify[0].name = "e2e--full".into(), &["spec.stages[0].verify[0].name"]);
        named(|s| s.rollback.as_mut().unwrap().verify[0].name = "smoke--test".into(), &["spec.rollback.verify[0].name"]);
        named(|s| s.analysis.as_mut().unwrap().metrics[0].name = "error--rate".into(), &["spec.analysis.metrics[0].name"]);
    }

    #[test]
    fn durations_above_one_year() {
        let big = || "9000h".parse::<Dur>().unwrap();
        // Admitted before the admission limit existed: parsed, saturated, and named here.
        let huge = || "2300000000h".parse::<Dur>().unwrap();
        named(|s| s.stages[1].steps[0].pause = Some(huge()), &["spec.stages[1].steps[0].pause"]);
        named(|s| s.preflight.as_mut().unwrap().tls[0].min_validity = big(), &["spec.preflight.tls[0].minValidity"]);
        named(|s| s.hooks.as_mut().unwrap().pre_deploy[1].job.timeout = Some(big()), &["spec.hooks.preDeploy[1].timeout"]);
        named(
            |s| s.hooks.as_mut().unwrap().migration.as_mut().unwrap().backup.timeout = Some(big()),
            &["spec.hooks.migration.backup.timeout"],
        );
        named(|s| s.stages[0].verify[0].job.timeout = Some(big()), &["spec.stages[0].verify[0].timeout"]);
        named(|s| s.rollback.as_mut().unwrap().verify[0].job.timeout = Some(big()), &["spec.rollback.verify[0].timeout"]);
        named(|s| s.analysis.as_mut().unwrap().interval = big(), &["spec.analysis.interval"]);
        named(|s| s.analysis.as_mut().unwrap().metrics[1].interval = Some(big()), &["spec.analysis.metrics[1].interval"]);
        named(|s| s.go_live.as_mut().unwrap().windows[0].duration = huge(), &["spec.goLive.windows[0].duration"]);
        // The limit itself is fine.
        named(|s| s.stages[1].steps[0].pause = Some(Dur::LIMIT), &[]);
    }

    #[test]
    fn intervals_below_one_second() {
        let e = named(|s| s.analysis.as_mut().unwrap().interval = Dur::from_secs(0), &["spec.analysis.interval"]);
        assert_eq!(e[0].to_string(), "spec.analysis.interval: 0s is less than 1s");
        named(|s| s.analysis.as_mut().unwrap().metrics[0].interval = Some(Dur::from_millis(500)), &["spec.analysis.metrics[0].interval"]);
        named(|s| s.go_live.as_mut().unwrap().windows[1].interval = Dur::from_secs(0), &["spec.goLive.windows[1].interval"]);
        named(|s| s.go_live.as_mut().unwrap().windows[0].duration = Dur::from_secs(0), &["spec.goLive.windows[0].duration"]);
        named(|s| s.analysis.as_mut().unwrap().interval = Dur::from_secs(1), &[]);
    }

    #[test]
    fn stages_sharing_a_namespace() {
        // Explicitly the release's namespace, and the other one defaults to it.
        let e = named(|s| s.stages[0].namespace = Some("prod".into()), &["spec.stages[1].namespace"]);
        assert!(e[0].message.contains("\"prod\"") && e[0].message.contains("by default"), "{}", e[0]);
        // Both explicit.
        named(|s| s.stages[1].namespace = Some("stg".into()), &["spec.stages[1].namespace"]);
        // Both default.
        named(|s| s.stages[0].namespace = None, &["spec.stages[1].namespace"]);
        // A third stage sharing with the first names the third.
        named(
            |s| {
                let mut third = s.stages[1].clone();
                third.name = "canary".into();
                third.namespace = Some("stg".into());
                s.stages.push(third);
            },
            &["spec.stages[2].namespace"],
        );
        // The same spec is fine for a release in another namespace than its staging one.
        let mut s = spec();
        s.stages[0].namespace = Some("prod".into());
        assert_eq!(validate(&s, "elsewhere"), vec![]);
    }

    #[test]
    fn blank_queries() {
        named(|s| s.analysis.as_mut().unwrap().metrics[0].query = " \n\t".into(), &["spec.analysis.metrics[0].query"]);
        named(|s| s.analysis.as_mut().unwrap().metrics[0].sample_query = Some(String::new()), &["spec.analysis.metrics[0].sampleQuery"]);
    }

    #[test]
    fn the_older_checks_still_hold() {
        named(|s| s.stages[1].steps[1].weight = 5, &["spec.stages[1].steps[1].weight", "spec.stages[1].steps"]);
        named(|s| s.stages[1].steps.truncate(1), &["spec.stages[1].steps"]);
        named(|s| s.hooks.as_mut().unwrap().migration.as_mut().unwrap().restore = None, &["spec.hooks.migration.restore"]);
        named(|s| s.traffic.gateway = None, &["spec.traffic.gateway"]);
        named(|s| s.approvals[0].stage = "prod".into(), &["spec.approvals[0].stage"]);
        named(|s| s.template.spec.as_mut().unwrap().containers.clear(), &["spec.template.spec.containers"]);
    }

    #[test]
    fn errors_come_in_field_order() {
        let mut s = spec();
        s.notifications[1].name = "eng".into();
        s.stages[0].name = "a--b".into();
        s.hooks.as_mut().unwrap().pre_deploy[0].name = "x--y".into();
        s.analysis.as_mut().unwrap().interval = Dur::from_secs(0);
        assert_eq!(
            fields(&s),
            ["spec.hooks.preDeploy[0].name", "spec.stages[0].name", "spec.analysis.interval", "spec.notifications[1].name"]
        );
    }
}
