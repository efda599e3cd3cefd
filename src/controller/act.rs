//! Act: make the children match the engine's desired state. Every write goes through server-side
//! apply with one field manager, and nothing unchanged is written again.

use super::{act_err, build, cache::Slim, Context, Error};
use crate::{
    api::LocallRelease,
    engine::{names, Decision},
    traffic::{Router, Written, MANAGER},
};
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy},
    runtime::reflector::ObjectRef,
    ResourceExt,
};
use std::collections::BTreeSet;

/// Applies a decision's Jobs, Deployments and traffic. Returns the number of traffic writes.
///
/// The order keeps every request served: Deployments are created or grown first, then traffic
/// moves, then what lost its traffic shrinks, and a Deployment is deleted only once its stage's
/// router, read back, no longer sends it anything.
pub async fn act(ctx: &Context, lr: &LocallRelease, d: &Decision, router: Router, written: &Written) -> Result<u32, Error> {
    if d.desired.frozen {
        // The spec cannot be carried out as it stands: nothing is written until it is fixed.
        return Ok(0);
    }
    // Nothing is written in a namespace that does not accept this release (a stage added or
    // changed since preflight, or an opt-in withdrawn).
    let release_ns = lr.namespace().unwrap_or_default();
    let touched: BTreeSet<&str> = d
        .desired
        .stages
        .iter()
        .filter(|s| !s.deployments.is_empty() || s.traffic.is_some())
        .map(|s| s.namespace.as_str())
        .chain(d.jobs.iter().map(|j| j.record.namespace.as_str()))
        .collect();
    for ns in touched.into_iter().filter(|ns| *ns != release_ns) {
        if !accepted(ctx, ns, &release_ns).await {
            let field = (0..lr.spec.stages.len())
                .find(|i| lr.spec.stage_namespace(*i, &release_ns) == ns)
                .map(|i| format!("spec.stages[{i}].namespace: "))
                .unwrap_or_default();
            return Err(Error::NotAccepted(format!(
                "{field}Namespace {ns} does not accept releases from namespace {release_ns} (its annotation {} must name it)",
                super::preflight::ACCEPT
            )));
        }
    }
    // Jobs first: their names are deterministic, so a Job that already exists is simply adopted.
    for j in &d.jobs {
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), &j.record.namespace);
        match api.create(&PostParams::default(), &build::job(lr, j)).await {
            Ok(_) => {
                ctx.metrics.writes.inc();
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(act_err("create", format!("Job {}/{}", j.record.namespace, j.record.job_name))(e)),
        };
    }
    apply_deployments(ctx, lr, d, Resize::Grow, written).await?;
    let traffic_writes = apply_traffic(ctx, lr, d, router, written).await?;
    apply_deployments(ctx, lr, d, Resize::Shrink, written).await?;
    remove_stale_deployments(ctx, lr, d, router, written).await?;
    if d.status.phase.is_terminal() && lr.status.as_ref().map(|s| s.phase) != Some(d.status.phase) {
        remove_stale_services(ctx, lr, d).await?;
    }
    Ok(traffic_writes)
}

/// Whether namespace `ns` accepts releases from `from`: the watch cache says yes, or the API
/// server confirms it (a cache behind a fresh opt-in never refuses).
async fn accepted(ctx: &Context, ns: &str, from: &str) -> bool {
    let cached = ctx.namespaces.get(&ObjectRef::new(ns));
    if super::preflight::accepts(cached.as_ref().and_then(|n| n.metadata.annotations.as_ref()), from) {
        return true;
    }
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    match api.get_opt(ns).await {
        Ok(Some(n)) => super::preflight::accepts(n.metadata.annotations.as_ref(), from),
        _ => false,
    }
}

/// Once a release ends, per-revision Services of versions no longer routed to are removed.
async fn remove_stale_services(ctx: &Context, lr: &LocallRelease, d: &Decision) -> Result<(), Error> {
    use k8s_openapi::api::core::v1::Service;
    // Names and labels are all this reads of them.
    let sel = format!("{}={}", crate::api::labels::RELEASE, names::release_label(&lr.namespace().unwrap_or_default(), &lr.name_any()));
    for stage in d.desired.stages.iter().filter(|s| s.traffic.is_some()) {
        let keep: BTreeSet<String> = stage.traffic.iter().flat_map(|t| t.stable.iter().chain(t.candidate.iter()).cloned()).collect();
        let api: Api<Slim<Service>> = Api::namespaced(ctx.client.clone(), &stage.namespace);
        let list = api
            .list(&kube::api::ListParams::default().labels(&sel))
            .await
            .map_err(act_err("list", format!("Services in {}", stage.namespace)))?;
        // This part's own revision Services only (each component has its own).
        for svc in list.into_iter().filter(|s| s.labels().get(crate::api::labels::COMPONENT) == stage.component.as_ref()) {
            let Some(rev) = svc.labels().get(crate::api::labels::REVISION) else { continue };
            if !keep.contains(rev) {
                match api.delete(&svc.name_any(), &DeleteParams::default()).await {
                    Ok(_) => ctx.metrics.writes.inc(),
                    Err(kube::Error::Api(e)) if e.code == 404 => 0,
                    Err(e) => return Err(act_err("delete", format!("Service {}/{}", stage.namespace, svc.name_any()))(e)),
                };
            }
        }
    }
    Ok(())
}

async fn apply_traffic(ctx: &Context, lr: &LocallRelease, d: &Decision, router: Router, written: &Written) -> Result<u32, Error> {
    let mut writes = 0;
    for stage in &d.desired.stages {
        writes += router.apply(&ctx.client, written, lr, stage).await?;
    }
    ctx.metrics.writes.inc_by(writes as u64);
    Ok(writes)
}

/// Which Deployment changes a pass makes: before traffic moves (create, grow, new template) or
/// after (shrink).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resize {
    Grow,
    Shrink,
}

async fn apply_deployments(ctx: &Context, lr: &LocallRelease, d: &Decision, pass: Resize, written: &Written) -> Result<(), Error> {
    let release = lr.name_any();
    let observed = super::observe::deployments(&ctx.deployments, &ctx.deployment_index, lr);
    for stage in &d.desired.stages {
        let api: Api<Slim<Deployment>> = Api::namespaced(ctx.client.clone(), &stage.namespace);
        let base = stage.base(&release);
        // A refusal of a component's Deployment names the component's template.
        let of = stage
            .component
            .as_ref()
            .and_then(|c| lr.spec.components.iter().position(|x| &x.name == c))
            .map(|i| format!(" of spec.components[{i}]"))
            .unwrap_or_default();
        for dep in &stage.deployments {
            let name = names::deployment(&base, &dep.revision);
            let seen = observed.get(&(stage.namespace.clone(), name.clone()));
            let shrinks = seen.is_some_and(|o| dep.replicas < o.replicas);
            if shrinks != (pass == Resize::Shrink) {
                continue;
            }
            if dep.from_spec {
                let (obj, hash) = build::stamp(build::deployment(lr, stage, dep));
                // Applied by this reconcile already (the cache lags it by milliseconds), or unchanged.
                if written.deployment_hash(&stage.namespace, &name).as_ref() == Some(&hash) {
                    continue;
                }
                let current = ctx.deployments.get(&ObjectRef::new(&name).within(&stage.namespace));
                if current.as_ref().is_some_and(|c| c.annotations().get(build::APPLIED_HASH) == Some(&hash)) {
                    continue;
                }
                let mut body = serde_json::to_value(&obj).unwrap_or_default();
                body["apiVersion"] = "apps/v1".into();
                body["kind"] = "Deployment".into();
                api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
                    .await
                    .map_err(act_err("apply", format!("Deployment {}/{name}{of}", stage.namespace)))?;
                written.wrote_deployment(&stage.namespace, &name, &hash);
                ctx.metrics.writes.inc();
            } else if seen.is_some_and(|o| o.replicas != dep.replicas) && written.scaled(&stage.namespace, &name) != Some(dep.replicas) {
                // An older version's Deployment: its template is not in the spec any more, so
                // only its size is managed.
                let patch = serde_json::json!({"spec": {"replicas": dep.replicas}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(act_err("scale", format!("Deployment {}/{name}", stage.namespace)))?;
                written.wrote_scale(&stage.namespace, &name, dep.replicas);
                ctx.metrics.writes.inc();
            }
        }
    }
    Ok(())
}

/// Deletes what the release no longer wants (a superseded candidate, the old stable after a
/// success), each only once the router of its namespace, read back, routes nothing to it.
async fn remove_stale_deployments(ctx: &Context, lr: &LocallRelease, d: &Decision, router: Router, written: &Written) -> Result<(), Error> {
    let release = lr.name_any();
    let observed = super::observe::deployments(&ctx.deployments, &ctx.deployment_index, lr);
    let wanted: BTreeSet<(String, String)> = d
        .desired
        .stages
        .iter()
        .flat_map(|s| s.deployments.iter().map(|dep| (s.namespace.clone(), names::deployment(&s.base(&release), &dep.revision))))
        .collect();
    for (ns, name) in observed.keys() {
        if wanted.contains(&(ns.clone(), name.clone())) {
            continue;
        }
        let current = ctx.deployments.get(&ObjectRef::new(name).within(ns));
        let revision = current.as_ref().and_then(|x| x.labels().get(crate::api::labels::REVISION).cloned());
        let component = current.as_ref().and_then(|x| x.labels().get(crate::api::labels::COMPONENT).cloned());
        if let Some(rev) = revision {
            if router
                .routes_to(&ctx.client, lr, written, ns, component.as_deref(), &rev)
                .await
                .map_err(act_err("read back the traffic in namespace", ns.to_string()))?
            {
                // Still routed to (a write not yet made or not yet visible): deleted on a later pass.
                continue;
            }
        }
        let api: Api<Slim<Deployment>> = Api::namespaced(ctx.client.clone(), ns);
        let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        match api.delete(name, &dp).await {
            Ok(_) => {
                ctx.metrics.writes.inc();
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(act_err("delete", format!("Deployment {ns}/{name}"))(e)),
        }
    }
    Ok(())
}
