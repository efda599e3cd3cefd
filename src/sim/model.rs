//! Pure traffic model of the simulator: no Kubernetes client, no I/O.
//!
//! A [`Snapshot`] describes the entry points of the cluster (HTTPRoutes and
//! un-routed Services) with the pods behind each of their backends. [`plan`]
//! turns it into per-series request rates and behaviours ([`SeriesRate`]), and
//! an [`Accumulator`] turns those rates into exact integer increments tick by
//! tick, carrying fractions over so that long-run counts match the rates.

use std::collections::{BTreeMap, HashMap, HashSet};

/// Annotation (HTTPRoute or Service) with the entry point's request rate in requests/second.
pub const ANN_RPS: &str = "sim.locall.io/rps";
/// Pod annotation marking a worker (a component without a Service): the jobs/second its pods
/// handle together. Its series carry `service="<app name>-<component>"`.
pub const ANN_WORKER_RPS: &str = "sim.locall.io/worker-rps";
/// Pod annotation: fraction (0..=1) of requests answered 500.
pub const ANN_ERROR_RATE: &str = "sim.locall.io/error-rate";
/// Pod annotation: error rate used instead while the version receives 100% of the traffic.
pub const ANN_ERROR_RATE_AT_FULL: &str = "sim.locall.io/error-rate-at-full";
/// Pod annotation: the p95 latency in milliseconds.
pub const ANN_LATENCY_P95_MS: &str = "sim.locall.io/latency-p95-ms";
/// Pod annotation: database connection errors per request (0..=1).
pub const ANN_DB_ERROR_RATE: &str = "sim.locall.io/db-error-rate";
/// Pod annotation: fraction (0..=1) of payments integration calls that fail.
pub const ANN_PAYMENTS_FAILURE_RATE: &str = "sim.locall.io/payments-failure-rate";
/// Pod label holding the version of the application.
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";
/// Version reported for pods without a version label.
pub const UNKNOWN_VERSION: &str = "unknown";
/// Version reported for traffic answered 503 because a backend has no Ready pod.
pub const UNAVAILABLE_VERSION: &str = "unavailable";
/// Default p95 latency in milliseconds.
pub const DEFAULT_LATENCY_P95_MS: f64 = 120.0;
/// Buckets (seconds) of the `http_request_duration_seconds` histogram.
pub const LATENCY_BUCKETS: [f64; 14] = [0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0];

/// Fraction of requests observed above the p95 latency.
const SLOW_FRACTION: f64 = 0.05;
/// A version whose share is at least this is considered to receive 100% of the traffic.
const FULL_SHARE: f64 = 1.0 - 1e-9;
/// Tolerance absorbing floating point drift when taking whole counts out of a carry.
const CARRY_EPS: f64 = 1e-9;

/// A pod as seen by the model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
    /// Value of the [`VERSION_LABEL`] label, or [`UNKNOWN_VERSION`].
    pub version: String,
    /// Ready condition is True and the pod is not being deleted.
    pub ready: bool,
    /// The pod's annotations (carrying the behaviour of its version).
    pub annotations: BTreeMap<String, String>,
}

/// What kind of object an entry point is; decides what happens without Ready pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// An HTTPRoute: a backend with weight > 0 and no Ready pod is answered 503.
    Route,
    /// A Service not routed by any HTTPRoute: without Ready pods nothing is counted.
    Service,
}

/// One backend of an entry point: a weight and the pods its Service selects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backend {
    /// Relative weight of the backend (0 receives nothing).
    pub weight: u32,
    /// Pods selected by the backend Service (Ready or not).
    pub pods: Vec<PodInfo>,
}

/// Something that receives traffic: an HTTPRoute or an un-routed Service.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryPoint {
    /// Namespace, exported as the `namespace` label.
    pub namespace: String,
    /// Name, exported as the `service` label.
    pub name: String,
    /// Route or Service.
    pub kind: EntryKind,
    /// Annotations of the HTTPRoute/Service (for [`ANN_RPS`]).
    pub annotations: BTreeMap<String, String>,
    /// Backends between which traffic is split by weight.
    pub backends: Vec<Backend>,
}

/// Everything the model needs to know about the cluster at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// All entry points; the first one with a given namespace/name wins.
    pub entry_points: Vec<EntryPoint>,
}

/// Identity of one exported series: `{namespace, service, version}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    /// Namespace of the entry point.
    pub namespace: String,
    /// Name of the entry point.
    pub service: String,
    /// Version of the pods, or [`UNAVAILABLE_VERSION`].
    pub version: String,
}

/// Behaviour of a version, parsed from its pods' annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct Behaviour {
    /// Fraction of requests answered 500.
    pub error_rate: f64,
    /// Error rate used while the version receives 100% of the traffic.
    pub error_rate_at_full: Option<f64>,
    /// p95 latency in milliseconds.
    pub latency_p95_ms: f64,
    /// Database connection errors per request.
    pub db_error_rate: f64,
    /// Fraction of failing payments calls.
    pub payments_failure_rate: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_rate_at_full: None,
            latency_p95_ms: DEFAULT_LATENCY_P95_MS,
            db_error_rate: 0.0,
            payments_failure_rate: 0.0,
        }
    }
}

/// An annotation whose value could not be used (the default was used instead).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AnnotationWarning {
    /// The annotated object, e.g. `pod shop/web-1`.
    pub object: String,
    /// Annotation key.
    pub key: String,
    /// Offending value.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

fn parse_number(
    ann: &BTreeMap<String, String>,
    key: &str,
    object: &str,
    valid: impl Fn(f64) -> bool,
    expected: &str,
    warnings: &mut Vec<AnnotationWarning>,
) -> Option<f64> {
    let raw = ann.get(key)?;
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && valid(v) => Some(v),
        _ => {
            warnings.push(AnnotationWarning {
                object: object.to_string(),
                key: key.to_string(),
                value: raw.clone(),
                reason: format!("expected {expected}; using the default"),
            });
            None
        }
    }
}

fn is_fraction(v: f64) -> bool {
    (0.0..=1.0).contains(&v)
}

impl Behaviour {
    /// Parses the `sim.locall.io/*` pod annotations; invalid values fall back to
    /// the defaults and are reported as warnings for `object`.
    pub fn from_annotations(ann: &BTreeMap<String, String>, object: &str) -> (Self, Vec<AnnotationWarning>) {
        let mut w = Vec::new();
        let d = Self::default();
        let frac = "a number between 0 and 1";
        let b = Self {
            error_rate: parse_number(ann, ANN_ERROR_RATE, object, is_fraction, frac, &mut w).unwrap_or(d.error_rate),
            error_rate_at_full: parse_number(ann, ANN_ERROR_RATE_AT_FULL, object, is_fraction, frac, &mut w),
            latency_p95_ms: parse_number(ann, ANN_LATENCY_P95_MS, object, |v| v > 0.0, "a positive number of milliseconds", &mut w)
                .unwrap_or(d.latency_p95_ms),
            db_error_rate: parse_number(ann, ANN_DB_ERROR_RATE, object, is_fraction, frac, &mut w).unwrap_or(d.db_error_rate),
            payments_failure_rate: parse_number(ann, ANN_PAYMENTS_FAILURE_RATE, object, is_fraction, frac, &mut w)
                .unwrap_or(d.payments_failure_rate),
        };
        (b, w)
    }
}

/// Request rate and behaviour of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesRate {
    /// The series.
    pub key: SeriesKey,
    /// Fraction of the entry point's traffic going to this series.
    pub share: f64,
    /// Requests per second.
    pub rps: f64,
    /// True for the 503 series of backends without Ready pods.
    pub unavailable: bool,
    /// Effective fraction of 500 answers (after `error-rate-at-full`).
    pub error_rate: f64,
    /// p95 latency in milliseconds.
    pub latency_p95_ms: f64,
    /// Database connection errors per request.
    pub db_error_rate: f64,
    /// Fraction of failing payments calls.
    pub payments_failure_rate: f64,
}

/// Output of [`plan`]: series rates plus annotation problems to report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RatePlan {
    /// One entry per series, sorted by key.
    pub series: Vec<SeriesRate>,
    /// Annotation values that were ignored.
    pub warnings: Vec<AnnotationWarning>,
}

/// Computes the request rate and behaviour of every series in `snapshot`;
/// entry points without an [`ANN_RPS`] annotation receive `default_rps`.
pub fn plan(snapshot: &Snapshot, default_rps: f64) -> RatePlan {
    let mut out = RatePlan::default();
    let mut seen = HashSet::new();
    for ep in &snapshot.entry_points {
        if seen.insert((ep.namespace.as_str(), ep.name.as_str())) {
            plan_entry_point(ep, default_rps, &mut out);
        }
    }
    out.series.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

fn plan_entry_point(ep: &EntryPoint, default_rps: f64, out: &mut RatePlan) {
    let kind = match ep.kind {
        EntryKind::Route => "httproute",
        EntryKind::Service => "service",
    };
    let object = format!("{kind} {}/{}", ep.namespace, ep.name);
    let rps = parse_number(&ep.annotations, ANN_RPS, &object, |v| v >= 0.0, "a non-negative number of requests/second", &mut out.warnings)
        .unwrap_or(default_rps);
    let total_weight: f64 = ep.backends.iter().map(|b| f64::from(b.weight)).sum();
    // version -> (share, representative pod: the Ready pod with the smallest name)
    let mut versions: BTreeMap<&str, (f64, &PodInfo)> = BTreeMap::new();
    let mut unavailable: Option<f64> = None;
    for backend in &ep.backends {
        let share = if total_weight > 0.0 { f64::from(backend.weight) / total_weight } else { 0.0 };
        let ready: Vec<&PodInfo> = backend.pods.iter().filter(|p| p.ready).collect();
        if ready.is_empty() {
            if ep.kind == EntryKind::Route && backend.weight > 0 {
                *unavailable.get_or_insert(0.0) += share;
            }
            continue;
        }
        let per_pod = share / ready.len() as f64;
        for pod in ready {
            let entry = versions.entry(pod.version.as_str()).or_insert((0.0, pod));
            entry.0 += per_pod;
            if (&pod.namespace, &pod.name) < (&entry.1.namespace, &entry.1.name) {
                entry.1 = pod;
            }
        }
    }
    let key = |version: &str| SeriesKey { namespace: ep.namespace.clone(), service: ep.name.clone(), version: version.to_string() };
    for (version, (share, pod)) in versions {
        let object = format!("pod {}/{}", pod.namespace, pod.name);
        let (b, warnings) = Behaviour::from_annotations(&pod.annotations, &object);
        out.warnings.extend(warnings);
        let error_rate = match b.error_rate_at_full {
            Some(at_full) if share >= FULL_SHARE => at_full,
            _ => b.error_rate,
        };
        out.series.push(SeriesRate {
            key: key(version),
            share,
            rps: rps * share,
            unavailable: false,
            error_rate,
            latency_p95_ms: b.latency_p95_ms,
            db_error_rate: b.db_error_rate,
            payments_failure_rate: b.payments_failure_rate,
        });
    }
    if let Some(share) = unavailable {
        out.series.push(SeriesRate {
            key: key(UNAVAILABLE_VERSION),
            share,
            rps: rps * share,
            unavailable: true,
            error_rate: 0.0,
            latency_p95_ms: 0.0,
            db_error_rate: 0.0,
            payments_failure_rate: 0.0,
        });
    }
}

/// Deterministic latency distribution reproducing a p95 under Prometheus'
/// `histogram_quantile` with [`LATENCY_BUCKETS`]: a fraction of requests below the
/// bucket containing the p95, the rest of the fastest 95% exactly at the p95, and
/// 5% slower (inside the same bucket when possible) so that linear interpolation
/// in that bucket lands on the p95.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyMix {
    /// Latency (seconds) of the requests below the p95's bucket.
    pub low_value: f64,
    /// Fraction of all requests observed at `low_value`.
    pub low_fraction: f64,
    /// Latency (seconds) of the remaining fast requests: the p95 itself.
    pub mid_value: f64,
    /// Latency (seconds) of the slowest 5% of requests.
    pub slow_value: f64,
}

impl LatencyMix {
    /// The mix for a p95 of `p95_ms` milliseconds.
    pub fn for_p95_ms(p95_ms: f64) -> Self {
        let p95 = p95_ms / 1000.0;
        let idx = LATENCY_BUCKETS.iter().position(|&le| p95 <= le);
        let mut mix = Self { low_value: p95, low_fraction: 0.0, mid_value: p95, slow_value: p95 * 1.25 };
        let Some(idx) = idx else {
            return mix; // beyond the last bucket: Prometheus reports its bound
        };
        let hi = LATENCY_BUCKETS[idx];
        if p95 >= hi {
            // p95 on a bucket bound: everything fast is at or below it, and the slow 5% stay in
            // the next bucket, so scrape jitter around the 95% rank moves the estimate by at
            // most that bucket's width.
            if let Some(&next) = LATENCY_BUCKETS.get(idx + 1) {
                mix.slow_value = mix.slow_value.min((p95 + next) / 2.0);
            }
            return mix;
        }
        mix.slow_value = (p95 + hi.min(1.5 * p95)) / 2.0;
        if idx == 0 {
            return mix;
        }
        let lo = LATENCY_BUCKETS[idx - 1];
        let below_lo = if idx >= 2 { LATENCY_BUCKETS[idx - 2] } else { 0.0 };
        let alpha = (p95 - lo) / (hi - lo);
        if alpha < 1.0 - SLOW_FRACTION {
            mix.low_value = (below_lo + lo) / 2.0;
            mix.low_fraction = (1.0 - SLOW_FRACTION - alpha) / (1.0 - alpha);
        }
        mix
    }
}

/// Increments of one series for one tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Increment {
    /// The series.
    pub key: SeriesKey,
    /// `(status code, requests)`; every code of the series is listed, even with 0.
    pub requests: Vec<(u16, u64)>,
    /// Everything else, for series of real versions (None for "unavailable").
    pub served: Option<ServedIncrement>,
}

/// Increments of a served (non-503) series beyond its request counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServedIncrement {
    /// `(latency in seconds, number of observations)`.
    pub latencies: Vec<(f64, u64)>,
    /// Database connection errors.
    pub db_errors: u64,
    /// Successful payments calls.
    pub payments_success: u64,
    /// Failed payments calls.
    pub payments_failure: u64,
}

#[derive(Clone, Debug, Default)]
struct Carry {
    requests: f64,
    errors: f64,
    db_errors: f64,
    payments_failures: f64,
    slow: f64,
    low: f64,
}

/// Adds `amount` to `carry` and takes out the whole part (at most `max`).
fn take(carry: &mut f64, amount: f64, max: u64) -> u64 {
    *carry += amount.max(0.0);
    let whole = (*carry + CARRY_EPS).floor().clamp(0.0, max as f64);
    *carry -= whole;
    whole as u64
}

/// Turns rates × elapsed time into exact integer increments, keeping a
/// fractional carry per series and counter.
#[derive(Clone, Debug, Default)]
pub struct Accumulator {
    carries: HashMap<SeriesKey, Carry>,
}

impl Accumulator {
    /// Advances every series of `series` by `dt_secs` seconds.
    pub fn tick(&mut self, series: &[SeriesRate], dt_secs: f64) -> Vec<Increment> {
        let dt = if dt_secs.is_finite() { dt_secs.max(0.0) } else { 0.0 };
        series
            .iter()
            .map(|s| {
                let c = self.carries.entry(s.key.clone()).or_default();
                let n = take(&mut c.requests, s.rps * dt, u64::MAX);
                if s.unavailable {
                    return Increment { key: s.key.clone(), requests: vec![(503, n)], served: None };
                }
                let nf = n as f64;
                let errors = take(&mut c.errors, nf * s.error_rate, n);
                let db_errors = take(&mut c.db_errors, nf * s.db_error_rate, u64::MAX);
                let pay_fail = take(&mut c.payments_failures, nf * s.payments_failure_rate, n);
                let mix = LatencyMix::for_p95_ms(s.latency_p95_ms);
                let slow = take(&mut c.slow, nf * SLOW_FRACTION, n);
                let low = take(&mut c.low, nf * mix.low_fraction, n - slow);
                let latencies = [(mix.low_value, low), (mix.mid_value, n - slow - low), (mix.slow_value, slow)]
                    .into_iter()
                    .filter(|&(_, count)| count > 0)
                    .collect();
                Increment {
                    key: s.key.clone(),
                    requests: vec![(200, n - errors), (500, errors)],
                    served: Some(ServedIncrement { latencies, db_errors, payments_success: n - pay_fail, payments_failure: pay_fail }),
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
