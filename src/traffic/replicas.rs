//! Replica ratio, for clusters without a mesh or gateway: one Service per stage. While weights
//! move it selects both versions and the ratio of Ready replicas splits the traffic; at 0% and
//! 100% its selector pins one revision, so a rollback is one Service update, whatever the pods.

use super::{ensure_service, Written};
use crate::{
    api::{labels, LocallRelease},
    controller::build,
    engine::{names, traffic, Observed, StageDesired},
};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;

/// The Service's selector for the stage's target (pure).
pub fn selector(release: &str, stage: &StageDesired) -> Option<BTreeMap<String, String>> {
    let t = stage.traffic.as_ref()?;
    let mut sel = BTreeMap::from([(labels::NAME.to_string(), release.to_string())]);
    if let Some(c) = &stage.component {
        sel.insert(labels::COMPONENT.into(), c.clone());
    }
    let pin = match (&t.stable, &t.candidate) {
        (Some(s), _) if t.weight <= 0 => Some(s.clone()),
        (_, Some(c)) if t.weight >= 100 => Some(c.clone()),
        (None, Some(c)) => Some(c.clone()),
        (Some(_), Some(_)) => None,
        (Some(s), None) => Some(s.clone()),
        (None, None) => return None,
    };
    if let Some(rev) = pin {
        sel.insert(labels::REVISION.into(), rev);
    }
    Some(sel)
}

pub async fn apply(client: &Client, written: &Written, lr: &LocallRelease, stage: &StageDesired) -> Result<u32, super::WriteError> {
    let Some(sel) = selector(&lr.name_any(), stage) else { return Ok(0) };
    ensure_service(client, written, build::service(lr, stage, &names::entry_service(&stage.base(&lr.name_any())), sel)).await
}

/// The candidate's share: pinned selectors say 0 or 100; otherwise the ratio of Ready pods. The
/// Service is read as [`Written::read_service`] reads it.
pub async fn observe(
    client: &Client,
    lr: &LocallRelease,
    written: &Written,
    stage: &StageDesired,
    obs: &Observed,
) -> Result<Option<i32>, kube::Error> {
    let name = names::entry_service(&stage.base(&lr.name_any()));
    let Some(svc) = written.read_service(client, &stage.namespace, &name).await? else { return Ok(None) };
    let sel = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    Ok(Some(share(&lr.name_any(), stage, &sel, obs)))
}

/// Whether the stage's Service selects the revision's pods: unpinned (both versions), or pinned
/// to it.
pub async fn routes_to(
    client: &Client,
    lr: &LocallRelease,
    written: &Written,
    namespace: &str,
    component: Option<&str>,
    revision: &str,
) -> Result<bool, kube::Error> {
    let name = names::entry_service(&names::base(&lr.name_any(), component));
    let Some(svc) = written.read_service(client, namespace, &name).await? else { return Ok(false) };
    let sel = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    Ok(sel.get(labels::REVISION).is_none_or(|r| r == revision))
}

/// The candidate's share for a selector and the observed Ready replicas (pure).
pub fn share(release: &str, stage: &StageDesired, sel: &BTreeMap<String, String>, obs: &Observed) -> i32 {
    let Some(t) = &stage.traffic else { return 0 };
    let ready = |rev: &Option<String>| {
        rev.as_ref()
            .and_then(|r| obs.deployments.get(&(stage.namespace.clone(), names::deployment(&stage.base(release), r))))
            .map(|d| d.ready)
            .unwrap_or(0)
    };
    match sel.get(labels::REVISION) {
        Some(rev) if Some(rev) == t.candidate.as_ref() => 100,
        Some(_) => 0,
        None => traffic::ratio(ready(&t.stable), ready(&t.candidate)),
    }
}
