//! Traffic arithmetic shared by the engine and the routers: how many replicas and which
//! effective share a weight gives under each traffic method.

use crate::api::TrafficMethod;

/// Candidate replicas for a weight. Gateway API splits by HTTPRoute weights, so the candidate
/// runs full size. Replica ratio keeps the stable version at full size (ready for an instant
/// rollback) and adds candidate pods so that candidate / (stable + candidate) approaches the
/// weight, at most 4x the stable size (80%) before the switch to 100%.
pub fn candidate_replicas(method: TrafficMethod, replicas: i32, weight: i32, has_stable: bool) -> i32 {
    match method {
        TrafficMethod::GatewayApi => replicas,
        TrafficMethod::ReplicaRatio if !has_stable || weight <= 0 || weight >= 100 => replicas,
        TrafficMethod::ReplicaRatio => {
            let n = replicas as i64;
            let w = weight as i64;
            let c = (n * w + (100 - w) - 1) / (100 - w);
            c.clamp(1, 4 * n) as i32
        }
    }
}

/// The candidate's effective share of traffic once the given replicas are Ready.
pub fn effective_weight(method: TrafficMethod, stable_replicas: i32, candidate_replicas: i32, weight: i32, has_stable: bool) -> i32 {
    if !has_stable {
        return if weight > 0 { 100 } else { 0 };
    }
    match method {
        TrafficMethod::GatewayApi => weight,
        TrafficMethod::ReplicaRatio if weight <= 0 => 0,
        TrafficMethod::ReplicaRatio if weight >= 100 => 100,
        TrafficMethod::ReplicaRatio => ratio(stable_replicas, candidate_replicas),
    }
}

/// round(100 * c / (s + c)).
pub fn ratio(stable: i32, candidate: i32) -> i32 {
    let total = (stable + candidate).max(0) as i64;
    if total == 0 {
        return 0;
    }
    ((200 * candidate as i64 + total) / (2 * total)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use TrafficMethod::*;

    #[test]
    fn replica_ratio_approaches_the_weight() {
        assert_eq!(candidate_replicas(ReplicaRatio, 4, 5, true), 1);
        assert_eq!(effective_weight(ReplicaRatio, 4, 1, 5, true), 20);
        assert_eq!(candidate_replicas(ReplicaRatio, 4, 50, true), 4);
        assert_eq!(effective_weight(ReplicaRatio, 4, 4, 50, true), 50);
        assert_eq!(candidate_replicas(ReplicaRatio, 3, 25, true), 1);
        assert_eq!(candidate_replicas(ReplicaRatio, 2, 90, true), 8);
        assert_eq!(effective_weight(ReplicaRatio, 2, 8, 90, true), 80);
        assert_eq!(effective_weight(ReplicaRatio, 2, 2, 100, true), 100);
    }

    #[test]
    fn gateway_weights_are_exact() {
        assert_eq!(candidate_replicas(GatewayApi, 3, 5, true), 3);
        assert_eq!(effective_weight(GatewayApi, 3, 3, 5, true), 5);
    }

    #[test]
    fn first_release_has_everything_or_nothing() {
        assert_eq!(effective_weight(ReplicaRatio, 0, 2, 30, false), 100);
        assert_eq!(effective_weight(GatewayApi, 0, 2, 0, false), 0);
    }
}
