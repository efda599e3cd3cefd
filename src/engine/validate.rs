//! Checks the schema and CEL rules cannot express. Each error names the field, so the
//! operator can put it in a condition and an Event.

use crate::api::{LocallReleaseSpec, TrafficMethod};
use std::collections::HashSet;

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

/// All the problems found, in field order (empty when the spec is fine).
pub fn validate(spec: &LocallReleaseSpec) -> Vec<FieldError> {
    let mut out = Vec::new();
    if spec.template.spec.as_ref().is_none_or(|p| p.containers.is_empty()) {
        out.push(err("spec.template.spec.containers", "the pod template needs at least one container"));
    }
    if spec.stages.is_empty() {
        out.push(err("spec.stages", "at least one stage is required"));
    }
    let mut names = HashSet::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        if !names.insert(stage.name.as_str()) {
            out.push(err(format!("spec.stages[{i}].name"), format!("duplicate stage name {:?}", stage.name)));
        }
        let mut last = 0;
        for (j, step) in stage.steps.iter().enumerate() {
            let f = format!("spec.stages[{i}].steps[{j}].weight");
            if !(1..=100).contains(&step.weight) {
                out.push(err(f, format!("weight {} is outside 1..100", step.weight)));
            } else if step.weight <= last {
                out.push(err(f, format!("weights must increase: {} after {last}", step.weight)));
            }
            last = step.weight;
        }
        if !stage.steps.is_empty() && last != 100 {
            out.push(err(format!("spec.stages[{i}].steps"), "the last step's weight must be 100"));
        }
        unique_jobs(&stage.verify.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), &format!("spec.stages[{i}].verify"), &mut out);
    }
    if let Some(h) = &spec.hooks {
        unique_jobs(&h.pre_deploy.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), "spec.hooks.preDeploy", &mut out);
        unique_jobs(&h.post_deploy.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), "spec.hooks.postDeploy", &mut out);
        if let Some(m) = &h.migration {
            if m.changes_schema && m.restore.is_none() {
                out.push(err("spec.hooks.migration.restore", "a migration that changes the schema needs a restore Job for rollbacks"));
            }
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
    for (i, a) in spec.approvals.iter().enumerate() {
        if !spec.stages.iter().any(|s| s.name == a.stage) {
            out.push(err(format!("spec.approvals[{i}].stage"), format!("no stage named {:?}", a.stage)));
        }
    }
    out
}

fn unique_jobs(names: &[&str], field: &str, out: &mut Vec<FieldError>) {
    let mut seen = HashSet::new();
    for (i, n) in names.iter().enumerate() {
        if !seen.insert(*n) {
            out.push(err(format!("{field}[{i}].name"), format!("duplicate Job name {n:?}")));
        }
    }
}
