//! Conditions with kstatus semantics, so Flux, `kubectl wait` and Argo CD read them:
//! `Reconciling=True` while in progress, `Stalled=True` with `Ready=False` on failure,
//! `Ready=True` once done. `lastTransitionTime` only moves when a condition's status does.

use super::status::Phase;
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// The three kstatus conditions for a phase, keeping transition times of unchanged ones.
pub fn for_phase(
    existing: &[Condition],
    phase: Phase,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let (ready, reconciling, stalled) = match phase {
        Phase::Succeeded => (true, false, false),
        Phase::Failed | Phase::RolledBack => (false, false, true),
        _ => (false, true, false),
    };
    let mut out = Vec::with_capacity(existing.len().max(3));
    let mut set = |ty: &str, status: bool| {
        let (r, m) = if status || ty == READY { (reason, message) } else { (phase.as_str(), "") };
        out.push(upsert(existing, ty, status, r, m, generation, now));
    };
    set(READY, ready);
    set(RECONCILING, reconciling);
    set(STALLED, stalled);
    // Keep any other condition (e.g. RollbackVerified) as it is.
    for c in existing {
        if ![READY, RECONCILING, STALLED].contains(&c.type_.as_str()) {
            out.push(c.clone());
        }
    }
    out
}

/// A condition with the given values; its transition time is kept when the status is unchanged.
pub fn upsert(
    existing: &[Condition],
    ty: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last = existing
        .iter()
        .find(|c| c.type_ == ty && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| to_time(now));
    Condition {
        type_: ty.to_string(),
        status,
        reason: if reason.is_empty() { "Unknown".into() } else { reason.to_string() },
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: last,
    }
}

/// Converts to the API's time type, in whole seconds: what the API server stores (RFC 3339
/// without fractions), so a condition read back equals the one written and causes no write.
pub fn to_time(t: DateTime<Utc>) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap_or_default())
}

/// Sets (or replaces) one condition in a list, keeping the transition time when status is unchanged.
pub fn set(list: &mut Vec<Condition>, c: Condition) {
    match list.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => *x = c,
        None => list.push(c),
    }
}

/// Finds a condition's status.
pub fn is_true(list: &[Condition], ty: &str) -> bool {
    list.iter().any(|c| c.type_ == ty && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn kstatus_semantics_per_phase() {
        let c = for_phase(&[], Phase::Production, "Production", "step 1", Some(3), t(0));
        assert!(is_true(&c, RECONCILING) && !is_true(&c, READY) && !is_true(&c, STALLED));
        let c = for_phase(&c, Phase::Failed, "JobFailed", "migrate failed", Some(3), t(1));
        assert!(is_true(&c, STALLED) && !is_true(&c, READY) && !is_true(&c, RECONCILING));
        let c = for_phase(&[], Phase::Succeeded, "Succeeded", "", Some(3), t(2));
        assert!(is_true(&c, READY) && !is_true(&c, STALLED) && !is_true(&c, RECONCILING));
        assert!(c.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let a = for_phase(&[], Phase::Staging, "Staging", "", Some(1), t(0));
        let b = for_phase(&a, Phase::Production, "Production", "", Some(1), t(10));
        let ready_a = a.iter().find(|c| c.type_ == READY).unwrap();
        let ready_b = b.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready_a.last_transition_time, ready_b.last_transition_time);
        let c = for_phase(&b, Phase::Succeeded, "Succeeded", "", Some(1), t(20));
        let ready_c = c.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready_c.last_transition_time, to_time(t(20)));
    }
}
