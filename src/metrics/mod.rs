//! The metric provider: runs the gates' PromQL against Prometheus (prometheus-http-query).
//! Every query is bounded by a timeout, and an unreachable server is a measurement error, which
//! the gates' policy turns into a hold by default.

use crate::engine::gates::{Measurement, Request};
use std::{collections::BTreeMap, time::Duration};

/// How long one query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Measures every request against the Prometheus at `url`.
pub async fn measure(url: &str, requests: &[Request]) -> BTreeMap<String, Measurement> {
    let mut out = BTreeMap::new();
    let client = match prometheus_http_query::Client::try_from(url) {
        Ok(c) => c,
        Err(e) => {
            // Scheme and host only: the URL may carry a credential.
            let why = format!("bad Prometheus URL {}: {e}", crate::notify::redact(url));
            for r in requests {
                out.insert(r.metric.clone(), Measurement { value: None, sample: None, error: Some(why.clone()) });
            }
            return out;
        }
    };
    for r in requests {
        let value = scalar(&client, &r.query).await;
        let sample = match &r.sample_query {
            Some(q) => Some(scalar(&client, q).await),
            None => None,
        };
        let m = match (value, sample) {
            (Err(e), _) | (_, Some(Err(e))) => Measurement { value: None, sample: None, error: Some(e) },
            (Ok(v), s) => Measurement { value: v, sample: s.and_then(|s| s.ok()).flatten(), error: None },
        };
        out.insert(r.metric.clone(), m);
    }
    out
}

/// The first sample of an instant query, `None` when the result is empty.
async fn scalar(client: &prometheus_http_query::Client, query: &str) -> Result<Option<f64>, String> {
    let res = tokio::time::timeout(QUERY_TIMEOUT, client.query(query).get())
        .await
        .map_err(|_| format!("Prometheus did not answer within {}s", QUERY_TIMEOUT.as_secs()))?
        .map_err(|e| match &e {
            // Prometheus refused the query itself (a syntax error, a bad function call).
            prometheus_http_query::Error::Prometheus(p) if p.error_type() == prometheus_http_query::error::PrometheusErrorType::BadData => {
                format!("{}: {e}", crate::engine::gates::QUERY_REJECTED)
            }
            _ => e.to_string(),
        })?;
    let data = res.data();
    if let Some(v) = data.as_vector() {
        return Ok(v.first().map(|s| s.sample().value()));
    }
    if let Some(s) = data.as_scalar() {
        return Ok(Some(s.value()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due() -> Vec<Request> {
        vec![Request { metric: "errors".into(), query: "vector(0)".into(), sample_query: None }]
    }

    /// A measurement error goes into status and the log: the URL in it is scheme and host only.
    #[tokio::test]
    async fn a_measurement_error_names_no_credential_of_the_url() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        for url in ["http://admin:FAKESECRET@/", "http://admin:FAKESECRET@prometheus:port/"] {
            let error = measure(url, &due()).await["errors"].error.clone().unwrap();
            assert!(error.starts_with("bad Prometheus URL "), "{error}");
            assert!(!error.contains("FAKESECRET") && !error.contains("admin"), "{error}");
        }
        // Parsed, but nobody listens: the client's error carries no URL either.
        let error = measure("http://admin:FAKESECRET@127.0.0.1:1/prom?token=FAKESECRET", &due()).await["errors"].error.clone().unwrap();
        assert!(!error.contains("FAKESECRET") && !error.contains("admin"), "{error}");
    }
}
