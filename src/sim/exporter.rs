//! Prometheus metrics of the simulator and the HTTP server exposing them.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::model::{Increment, SeriesKey, LATENCY_BUCKETS};

/// Name of the payments integration in `locall_integration_requests_total`.
pub const PAYMENTS_INTEGRATION: &str = "payments";

/// Labels `{namespace, service, version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeriesLabels {
    /// Namespace of the entry point.
    pub namespace: String,
    /// Name of the entry point (HTTPRoute or Service).
    pub service: String,
    /// Version of the pods that answered.
    pub version: String,
}

impl From<&SeriesKey> for SeriesLabels {
    fn from(k: &SeriesKey) -> Self {
        Self { namespace: k.namespace.clone(), service: k.service.clone(), version: k.version.clone() }
    }
}

/// Labels of `http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Namespace of the entry point.
    pub namespace: String,
    /// Name of the entry point.
    pub service: String,
    /// Version of the pods that answered.
    pub version: String,
    /// HTTP status code.
    pub code: String,
}

/// Labels of `locall_integration_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntegrationLabels {
    /// Namespace of the entry point.
    pub namespace: String,
    /// Name of the entry point.
    pub service: String,
    /// Version of the pods making the call.
    pub version: String,
    /// Integration called (always `payments`).
    pub integration: String,
    /// `success` or `failure`.
    pub result: String,
}

fn new_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The registry and the metric families the simulator updates.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<SeriesLabels, Histogram, fn() -> Histogram>,
    db_errors: Family<SeriesLabels, Counter>,
    integrations: Family<IntegrationLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers all metric families.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Family<SeriesLabels, Histogram, fn() -> Histogram> = Family::new_with_constructor(new_histogram);
        let db_errors = Family::<SeriesLabels, Counter>::default();
        let integrations = Family::<IntegrationLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by status code", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency in seconds", durations.clone());
        registry.register("locall_db_connection_errors", "Database connection errors", db_errors.clone());
        registry.register("locall_integration_requests", "Calls to external integrations, by result", integrations.clone());
        Self { registry, requests, durations, db_errors, integrations }
    }

    /// Applies one tick's increments (creating series at 0 where needed).
    pub fn apply(&self, increments: &[Increment]) {
        for inc in increments {
            let labels = SeriesLabels::from(&inc.key);
            for &(code, n) in &inc.requests {
                let l = RequestLabels {
                    namespace: labels.namespace.clone(),
                    service: labels.service.clone(),
                    version: labels.version.clone(),
                    code: code.to_string(),
                };
                self.requests.get_or_create(&l).inc_by(n);
            }
            let Some(served) = &inc.served else { continue };
            {
                let histogram = self.durations.get_or_create(&labels);
                for &(value, n) in &served.latencies {
                    for _ in 0..n {
                        histogram.observe(value);
                    }
                }
            }
            self.db_errors.get_or_create(&labels).inc_by(served.db_errors);
            for (result, n) in [("success", served.payments_success), ("failure", served.payments_failure)] {
                let l = IntegrationLabels {
                    namespace: labels.namespace.clone(),
                    service: labels.service.clone(),
                    version: labels.version.clone(),
                    integration: PAYMENTS_INTEGRATION.into(),
                    result: result.into(),
                };
                self.integrations.get_or_create(&l).inc_by(n);
            }
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode()).into_response()
}

async fn healthz() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok")
}

/// The HTTP router: `/metrics` and `/healthz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(metrics_handler)).route("/healthz", get(healthz)).with_state(metrics)
}

/// Serves [`router`] on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::model::ServedIncrement;

    fn key(version: &str) -> SeriesKey {
        SeriesKey { namespace: "shop".into(), service: "web".into(), version: version.into() }
    }

    #[test]
    fn exports_all_series_with_expected_names() {
        let m = Metrics::new();
        m.apply(&[
            Increment {
                key: key("v1"),
                requests: vec![(200, 3), (500, 0)],
                served: Some(ServedIncrement { latencies: vec![(0.12, 3)], db_errors: 0, payments_success: 2, payments_failure: 1 }),
            },
            Increment { key: key("unavailable"), requests: vec![(503, 4)], served: None },
        ]);
        let text = m.encode();
        for line in [
            r#"http_requests_total{namespace="shop",service="web",version="v1",code="200"} 3"#,
            r#"http_requests_total{namespace="shop",service="web",version="v1",code="500"} 0"#,
            r#"http_requests_total{namespace="shop",service="web",version="unavailable",code="503"} 4"#,
            r#"http_request_duration_seconds_bucket{le="0.1",namespace="shop",service="web",version="v1"} 0"#,
            r#"http_request_duration_seconds_bucket{le="0.2",namespace="shop",service="web",version="v1"} 3"#,
            r#"http_request_duration_seconds_count{namespace="shop",service="web",version="v1"} 3"#,
            r#"locall_db_connection_errors_total{namespace="shop",service="web",version="v1"} 0"#,
            r#"locall_integration_requests_total{namespace="shop",service="web",version="v1",integration="payments",result="failure"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains(r#"version="unavailable"}"#), "{text}");
    }
}
