//! The operator's own telemetry: `/metrics` (controller-runtime-style names plus `locall_*`
//! domain metrics), `/healthz`, `/readyz`, and tracing setup. Labels never carry error text or
//! anything but a release's namespace and name.

pub mod auth;

use crate::api::{LocallRelease, Phase};
use axum::{
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use kube::ResourceExt;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::Duration,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub namespace: String,
    pub name: String,
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub name: String,
    pub phase: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Mutex<Registry>,
    pub reconcile_total: Family<ResultLabel, Counter>,
    pub reconcile_duration: Histogram,
    /// API writes made (creates, applies, patches, deletes).
    pub writes: Counter<u64, AtomicU64>,
    /// Every request the operator's client sent to the API server, by verb and resource.
    pub api_requests: Family<VerbLabel, Counter>,
    pub phase: Family<PhaseLabels, Gauge>,
    pub weight: Family<ReleaseLabels, Gauge>,
    pub rollbacks: Family<ReleaseLabels, Counter>,
    pub notifications: Family<TargetLabel, Counter>,
    pub gate_value: Family<GateLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Per component of a multi-component release: 1 when its version in flight is Ready.
    pub component_ready: Family<ComponentLabels, Gauge>,
    /// Rollbacks a component's failure started, by component.
    pub component_failures: Family<ComponentLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    pub verb: String,
    /// The resource, with its subresource if any: `services`, `locallreleases/status`.
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabels {
    pub namespace: String,
    pub name: String,
    pub metric: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            reconcile_total: Family::default(),
            reconcile_duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0]),
            writes: Counter::default(),
            api_requests: Family::default(),
            phase: Family::default(),
            weight: Family::default(),
            component_ready: Family::default(),
            component_failures: Family::default(),
            rollbacks: Family::default(),
            notifications: Family::default(),
            gate_value: Family::default(),
        };
        registry.register(
            "controller_runtime_reconcile",
            "Reconciliations by result (success, conflict, error)",
            m.reconcile_total.clone(),
        );
        registry.register("controller_runtime_reconcile_time_seconds", "Time per reconciliation", m.reconcile_duration.clone());
        registry.register("locall_api_writes", "Writes the operator made to the API server", m.writes.clone());
        registry.register("locall_api_requests", "Requests sent to the API server, by verb and resource", m.api_requests.clone());
        registry.register("locall_release_phase", "1 for each release, labelled with its current phase", m.phase.clone());
        registry.register("locall_release_traffic_weight", "Candidate's traffic share in the current stage", m.weight.clone());
        registry.register("locall_rollbacks", "Automatic rollbacks started", m.rollbacks.clone());
        registry.register("locall_notifications", "Notification delivery attempts by target and result", m.notifications.clone());
        registry.register("locall_gate_value", "Latest measured value of each metric gate", m.gate_value.clone());
        registry.register(
            "locall_component_ready",
            "1 when a component's version in flight is Ready where its release stands",
            m.component_ready.clone(),
        );
        registry.register(
            "locall_component_failures",
            "Rollbacks of a whole release started by one of its components",
            m.component_failures.clone(),
        );
        *m.registry.lock().unwrap() = registry;
        m
    }
}

const PHASES: [Phase; 10] = [
    Phase::Pending,
    Phase::PreDeploy,
    Phase::Staging,
    Phase::AwaitingApproval,
    Phase::Production,
    Phase::GoLive,
    Phase::Succeeded,
    Phase::RollingBack,
    Phase::RolledBack,
    Phase::Failed,
];

/// The resource a request path names, and whether it names the collection (pure):
/// `/api/v1/namespaces/a/services/x` is `services`, `/api/v1/namespaces/a/services` the
/// collection, `/apis/locall.io/v1alpha1/namespaces/a/locallreleases/x/status`
/// `locallreleases/status`, `/api/v1/namespaces/a` the Namespace `a` (`namespaces`).
pub fn resource_of(path: &str) -> (String, bool) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    // Inside a namespace (not a Namespace itself).
    let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 { &rest[2..] } else { rest };
    match rest {
        [] => ("other".into(), false),
        [resource] => (resource.to_string(), true),
        [resource, _, sub, ..] => (format!("{resource}/{sub}"), false),
        [resource, ..] => (resource.to_string(), false),
    }
}

impl Metrics {
    /// Counts one request to the API server, by resource: watch, list, get, create, patch, update
    /// or delete; `review` for the TokenReviews and SubjectAccessReviews that guard `/metrics`
    /// (created, but questions that store nothing: not counted as writes).
    pub fn api_request(&self, method: &str, uri: &str) {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let watch = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
        let review = path.ends_with("/tokenreviews") || path.ends_with("/subjectaccessreviews");
        let (resource, collection) = resource_of(path);
        let verb = match method {
            "GET" if watch => "watch",
            "GET" if collection => "list",
            "GET" => "get",
            "POST" if review => "review",
            "POST" => "create",
            "PATCH" => "patch",
            "PUT" => "update",
            "DELETE" => "delete",
            _ => "other",
        };
        self.api_requests.get_or_create(&VerbLabel { verb: verb.into(), resource }).inc();
    }

    /// Counts a finished reconcile by its result: success, conflict (a write refused because
    /// the release changed meanwhile; retried on fresh state) or error.
    pub fn reconcile_done(&self, took: Duration, result: &str) {
        self.reconcile_duration.observe(took.as_secs_f64());
        self.reconcile_total.get_or_create(&ResultLabel { result: result.into() }).inc();
    }

    /// One delivery attempt to a target (`spec.notifications[].name`).
    pub fn notification(&self, target: &str, ok: bool) {
        let result = if ok { "delivered" } else { "failed" };
        self.notifications.get_or_create(&TargetLabel { target: target.into(), result: result.into() }).inc();
    }

    /// Updates the per-release gauges after a reconcile.
    pub fn observe_release(&self, lr: &LocallRelease, status: &crate::api::LocallReleaseStatus) {
        let (namespace, name) = (lr.namespace().unwrap_or_default(), lr.name_any());
        let before = lr.status.as_ref().map(|s| s.phase);
        // One series per release, for its current phase (a phase it left is removed, not kept
        // at 0: ten series per release would cost more than the release itself).
        for p in PHASES.into_iter().filter(|p| *p != status.phase) {
            self.phase.remove(&PhaseLabels { namespace: namespace.clone(), name: name.clone(), phase: p.as_str().into() });
        }
        let l = PhaseLabels { namespace: namespace.clone(), name: name.clone(), phase: status.phase.as_str().into() };
        self.phase.get_or_create(&l).set(1);
        for g in &status.gates {
            if let Some(v) = g.value {
                let gl = GateLabels { namespace: namespace.clone(), name: name.clone(), metric: g.metric.clone() };
                self.gate_value.get_or_create(&gl).set(v);
            }
        }
        for c in &status.components {
            let cl = ComponentLabels { namespace: namespace.clone(), name: name.clone(), component: c.name.clone() };
            let ready = c.ready.split_once('/').is_some_and(|(r, n)| r == n && !n.is_empty());
            self.component_ready.get_or_create(&cl).set(ready as i64);
        }
        let starts_rollback = status.phase == Phase::RollingBack && before != Some(Phase::RollingBack);
        if let Some(component) = status.failure.as_ref().and_then(|f| f.component.clone()).filter(|_| starts_rollback) {
            let cl = ComponentLabels { namespace: namespace.clone(), name: name.clone(), component };
            self.component_failures.get_or_create(&cl).inc();
        }
        let l = ReleaseLabels { namespace, name };
        self.weight.get_or_create(&l).set(status.weight as i64);
        if starts_rollback {
            self.rollbacks.get_or_create(&l).inc();
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().unwrap());
        out
    }
}

/// `/metrics`, `/healthz`, `/readyz` on `addr`; returns the bound address. With a `gate`,
/// `/metrics` answers only a bearer token the API server authenticates for a user allowed
/// `get /metrics` (401 without one, 403 for another user, 503 when the API server cannot say).
pub async fn serve<R: auth::Reviewer>(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    gate: Option<Arc<auth::Gate<R>>>,
) -> std::io::Result<std::net::SocketAddr> {
    let scrape = move |headers: HeaderMap| async move {
        if let Some(gate) = &gate {
            let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            match gate.check(authorization).await {
                Ok(auth::Access::Allowed) => {}
                Ok(auth::Access::Unauthenticated) => {
                    return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "a bearer token is required\n")
                        .into_response()
                }
                Ok(auth::Access::Forbidden(user)) => {
                    return (StatusCode::FORBIDDEN, format!("{user} may not get /metrics\n")).into_response();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot review a /metrics caller");
                    return (StatusCode::SERVICE_UNAVAILABLE, "cannot review the caller now\n").into_response();
                }
            }
        }
        let r: Response = metrics.encode().into_response();
        r
    };
    let app =
        Router::new().route("/metrics", get(scrape)).route("/healthz", get(|| async { "ok" })).route("/readyz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(bound)
}

/// Logs to stderr: JSON (`json`) or human-readable text; level from RUST_LOG (default info).
pub fn init_tracing(format: &str) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    if format == "json" {
        let _ = fmt().json().with_current_span(true).with_env_filter(filter).with_writer(std::io::stderr).try_init();
    } else {
        let _ = fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
}

#[cfg(test)]
mod tests {
    /// Each of `lines` is a line of what `m` encodes.
    fn assert_encodes(m: &super::Metrics, lines: &[&str]) {
        let text = m.encode();
        for line in lines {
            assert!(text.lines().any(|l| l == *line), "{line} in {text}");
        }
    }

    #[test]
    fn the_reviews_guarding_metrics_are_not_counted_as_writes() {
        let m = super::Metrics::default();
        m.api_request("POST", "/apis/authentication.k8s.io/v1/tokenreviews");
        m.api_request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews?timeout=10s");
        m.api_request("POST", "/apis/events.k8s.io/v1/namespaces/a/events");
        m.api_request("GET", "/api/v1/services?watch=true&resourceVersion=1");
        assert_encodes(
            &m,
            &[
                "locall_api_requests_total{verb=\"review\",resource=\"tokenreviews\"} 1",
                "locall_api_requests_total{verb=\"review\",resource=\"subjectaccessreviews\"} 1",
                "locall_api_requests_total{verb=\"create\",resource=\"events\"} 1",
                "locall_api_requests_total{verb=\"watch\",resource=\"services\"} 1",
            ],
        );
    }

    #[test]
    fn requests_are_counted_by_the_resource_their_path_names() {
        use super::resource_of;
        let r = |p: &str| resource_of(p);
        assert_eq!(r("/api/v1/namespaces/a/services/x"), ("services".into(), false));
        assert_eq!(r("/api/v1/namespaces/a/services"), ("services".into(), true));
        assert_eq!(r("/api/v1/services"), ("services".into(), true));
        assert_eq!(r("/api/v1/namespaces/a"), ("namespaces".into(), false));
        assert_eq!(r("/api/v1/namespaces"), ("namespaces".into(), true));
        assert_eq!(r("/apis/locall.io/v1alpha1/namespaces/a/locallreleases/x/status"), ("locallreleases/status".into(), false));
        assert_eq!(r("/apis/apps/v1/namespaces/a/deployments/x"), ("deployments".into(), false));
        assert_eq!(r("/apis/coordination.k8s.io/v1/namespaces/a/leases/op"), ("leases".into(), false));
        assert_eq!(r("/apis/gateway.networking.k8s.io/v1/httproutes"), ("httproutes".into(), true));
        assert_eq!(r("/version").0, "other");
        let m = super::Metrics::default();
        m.api_request("GET", "/api/v1/namespaces/a/services?labelSelector=x");
        m.api_request("GET", "/api/v1/namespaces/a/services/x");
        assert_encodes(
            &m,
            &[
                "locall_api_requests_total{verb=\"list\",resource=\"services\"} 1",
                "locall_api_requests_total{verb=\"get\",resource=\"services\"} 1",
            ],
        );
    }
}
