//! Unit tests of the pure traffic model.

use super::*;

fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn pod(name: &str, version: &str, ready: bool, annotations: &[(&str, &str)]) -> PodInfo {
    PodInfo { namespace: "shop".into(), name: name.into(), version: version.into(), ready, annotations: ann(annotations) }
}

fn entry(kind: EntryKind, rps: &str, backends: Vec<Backend>) -> EntryPoint {
    EntryPoint { namespace: "shop".into(), name: "web".into(), kind, annotations: ann(&[(ANN_RPS, rps)]), backends }
}

fn backend(weight: u32, pods: Vec<PodInfo>) -> Backend {
    Backend { weight, pods }
}

fn snapshot(eps: Vec<EntryPoint>) -> Snapshot {
    Snapshot { entry_points: eps }
}

fn series<'a>(plan: &'a RatePlan, version: &str) -> &'a SeriesRate {
    plan.series.iter().find(|s| s.key.version == version).unwrap_or_else(|| panic!("no series for {version}: {plan:?}"))
}

/// Runs `ticks` ticks of `dt` seconds and sums the increments per version.
fn run(plan: &RatePlan, ticks: usize, dt: f64) -> BTreeMap<String, Totals> {
    let mut acc = Accumulator::default();
    let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
    for _ in 0..ticks {
        for inc in acc.tick(&plan.series, dt) {
            let t = totals.entry(inc.key.version.clone()).or_default();
            for (code, n) in inc.requests {
                *t.codes.entry(code).or_default() += n;
            }
            if let Some(s) = inc.served {
                for (value, n) in s.latencies {
                    t.latencies.push((value, n));
                }
                t.db_errors += s.db_errors;
                t.pay_ok += s.payments_success;
                t.pay_fail += s.payments_failure;
            }
        }
    }
    totals
}

#[derive(Default, Debug)]
struct Totals {
    codes: BTreeMap<u16, u64>,
    latencies: Vec<(f64, u64)>,
    db_errors: u64,
    pay_ok: u64,
    pay_fail: u64,
}

impl Totals {
    fn requests(&self) -> u64 {
        self.codes.values().sum()
    }
}

#[test]
fn weight_split_90_10() {
    let snap = snapshot(vec![entry(
        EntryKind::Route,
        "100",
        vec![backend(90, vec![pod("a", "v1", true, &[]), pod("b", "v1", true, &[])]), backend(10, vec![pod("c", "v2", true, &[])])],
    )]);
    let plan = plan(&snap, 20.0);
    assert_eq!(plan.series.len(), 2);
    assert!((series(&plan, "v1").rps - 90.0).abs() < 1e-9);
    assert!((series(&plan, "v2").rps - 10.0).abs() < 1e-9);
    let totals = run(&plan, 100, 1.0);
    assert_eq!(totals["v1"].codes[&200], 9000);
    assert_eq!(totals["v2"].codes[&200], 1000);
    assert_eq!(totals["v2"].codes[&500], 0);
}

#[test]
fn zero_weights() {
    let pods = || vec![pod("a", "v1", true, &[])];
    // A zero-weight backend still gets its series (at 0) but no traffic.
    let snap = snapshot(vec![entry(EntryKind::Route, "50", vec![backend(1, pods()), backend(0, vec![pod("c", "v2", true, &[])])])]);
    let p = plan(&snap, 20.0);
    assert!((series(&p, "v1").rps - 50.0).abs() < 1e-9);
    assert_eq!(series(&p, "v2").rps, 0.0);
    assert_eq!(run(&p, 10, 1.0)["v2"].requests(), 0);

    // All weights zero: nothing served, nothing counted, no 503s either.
    let snap = snapshot(vec![entry(EntryKind::Route, "50", vec![backend(0, pods()), backend(0, vec![])])]);
    let p = plan(&snap, 20.0);
    assert!(p.series.iter().all(|s| s.rps == 0.0 && !s.unavailable));
    let totals = run(&p, 10, 1.0);
    assert!(totals.values().all(|t| t.requests() == 0));
    assert!(!totals.contains_key(UNAVAILABLE_VERSION));
}

#[test]
fn backend_without_ready_pods_is_503_unavailable() {
    let snap = snapshot(vec![entry(
        EntryKind::Route,
        "100",
        vec![backend(90, vec![pod("a", "v1", true, &[])]), backend(10, vec![pod("b", "v2", false, &[])])],
    )]);
    let p = plan(&snap, 20.0);
    let u = series(&p, UNAVAILABLE_VERSION);
    assert!(u.unavailable);
    assert!((u.rps - 10.0).abs() < 1e-9);
    assert!(p.series.iter().all(|s| s.key.version != "v2"));
    let totals = run(&p, 10, 1.0);
    assert_eq!(totals[UNAVAILABLE_VERSION].codes, BTreeMap::from([(503, 100)]));
    assert_eq!(totals["v1"].codes[&200], 900);

    // A Service entry point without Ready pods counts nothing at all.
    let snap = snapshot(vec![entry(EntryKind::Service, "100", vec![backend(1, vec![pod("b", "v2", false, &[])])])]);
    assert!(plan(&snap, 20.0).series.is_empty());
}

#[test]
fn replica_ratio_split_75_25() {
    let snap = snapshot(vec![entry(
        EntryKind::Service,
        "40",
        vec![backend(
            1,
            vec![
                pod("a", "v1", true, &[]),
                pod("b", "v1", true, &[]),
                pod("c", "v1", true, &[]),
                pod("d", "v2", true, &[]),
                pod("e", "v2", false, &[]),
            ],
        )],
    )]);
    let p = plan(&snap, 20.0);
    assert!((series(&p, "v1").share - 0.75).abs() < 1e-12);
    assert!((series(&p, "v2").share - 0.25).abs() < 1e-12);
    let totals = run(&p, 100, 1.0);
    assert_eq!(totals["v1"].requests(), 3000);
    assert_eq!(totals["v2"].requests(), 1000);
}

#[test]
fn error_rate_is_exact_over_many_ticks() {
    let anns = [(ANN_ERROR_RATE, "0.08"), (ANN_DB_ERROR_RATE, "0.01"), (ANN_PAYMENTS_FAILURE_RATE, "0.3")];
    let snap = snapshot(vec![entry(EntryKind::Service, "20", vec![backend(1, vec![pod("a", "v1", true, &anns)])])]);
    let p = plan(&snap, 1.0);
    let mut acc = Accumulator::default();
    let (mut total, mut errors) = (0u64, 0u64);
    for tick in 1..=10_000u64 {
        let inc = acc.tick(&p.series, 0.25).remove(0);
        total += inc.requests.iter().map(|r| r.1).sum::<u64>();
        errors += inc.requests.iter().find(|r| r.0 == 500).unwrap().1;
        assert_eq!(total, tick * 5);
        // Never more than one request away from the exact ratio.
        assert!((errors as f64 - 0.08 * total as f64).abs() < 1.0 + 1e-9);
    }
    assert_eq!(total, 50_000);
    assert_eq!(errors, 4_000);
    let totals = run(&p, 1000, 1.0);
    let t = &totals["v1"];
    assert_eq!((t.requests(), t.codes[&500]), (20_000, 1_600));
    assert_eq!(t.db_errors, 200);
    assert_eq!((t.pay_ok, t.pay_fail), (14_000, 6_000));
}

#[test]
fn error_rate_at_full_switches_only_at_100_percent() {
    let v2 = |name: &str| pod(name, "v2", true, &[(ANN_ERROR_RATE, "0.01"), (ANN_ERROR_RATE_AT_FULL, "0.4")]);
    let route = |w1: u32, w2: u32| {
        snapshot(vec![entry(EntryKind::Route, "10", vec![backend(w1, vec![pod("a", "v1", true, &[])]), backend(w2, vec![v2("b")])])])
    };
    for (w1, w2) in [(90, 10), (50, 50), (1, 99)] {
        assert_eq!(series(&plan(&route(w1, w2), 1.0), "v2").error_rate, 0.01);
    }
    assert_eq!(series(&plan(&route(0, 100), 1.0), "v2").error_rate, 0.4);
    // Replica ratio: at full only once no other version has a Ready pod.
    let svc = |pods| snapshot(vec![entry(EntryKind::Service, "10", vec![backend(1, pods)])]);
    let mixed = svc(vec![pod("a", "v1", true, &[]), v2("b")]);
    assert_eq!(series(&plan(&mixed, 1.0), "v2").error_rate, 0.01);
    let full = svc(vec![pod("a", "v1", false, &[]), v2("b"), v2("c")]);
    assert_eq!(series(&plan(&full, 1.0), "v2").error_rate, 0.4);
}

#[test]
fn bad_annotations_fall_back_to_defaults() {
    let bad = [
        (ANN_ERROR_RATE, "lots"),
        (ANN_ERROR_RATE_AT_FULL, "1.5"),
        (ANN_LATENCY_P95_MS, "-3"),
        (ANN_DB_ERROR_RATE, "NaN"),
        (ANN_PAYMENTS_FAILURE_RATE, ""),
    ];
    let (b, warnings) = Behaviour::from_annotations(&ann(&bad), "pod shop/a");
    assert_eq!(b, Behaviour::default());
    assert_eq!(warnings.len(), 5);
    assert!(warnings.iter().all(|w| w.object == "pod shop/a"));

    let (b, warnings) = Behaviour::from_annotations(&ann(&[(ANN_LATENCY_P95_MS, " 800 ")]), "x");
    assert!(warnings.is_empty());
    assert_eq!(b.latency_p95_ms, 800.0);

    let snap = snapshot(vec![entry(EntryKind::Route, "fast", vec![backend(1, vec![pod("a", "v1", true, &bad)])])]);
    let p = plan(&snap, 7.0);
    assert_eq!(series(&p, "v1").rps, 7.0);
    assert_eq!(series(&p, "v1").latency_p95_ms, DEFAULT_LATENCY_P95_MS);
    assert_eq!(p.warnings.len(), 6);
    assert!(p.warnings.iter().any(|w| w.key == ANN_RPS && w.object == "httproute shop/web"));
}

/// Prometheus' `histogram_quantile` over cumulative bucket counts (last = +Inf).
fn histogram_quantile(q: f64, cumulative: &[u64]) -> f64 {
    let total = *cumulative.last().unwrap() as f64;
    let rank = q * total;
    let b = cumulative.iter().position(|&c| c as f64 >= rank).unwrap();
    if b == LATENCY_BUCKETS.len() {
        return LATENCY_BUCKETS[b - 1];
    }
    let (start, before) = if b == 0 { (0.0, 0.0) } else { (LATENCY_BUCKETS[b - 1], cumulative[b - 1] as f64) };
    let end = LATENCY_BUCKETS[b];
    start + (end - start) * (rank - before) / (cumulative[b] as f64 - before)
}

#[test]
fn latency_quantile_lands_on_p95() {
    let interior = [30.0, 60.0, 120.0, 150.0, 250.0, 400.0, 800.0, 1200.0, 2200.0, 4000.0, 7000.0];
    let on_bound = [100.0, 1000.0, 3000.0];
    let other = [10.0, 24.0, 99.0, 199.0, 12_000.0];
    for p95_ms in interior.iter().chain(&on_bound).chain(&other).copied() {
        let p95_str = p95_ms.to_string();
        let snap = snapshot(vec![entry(
            EntryKind::Service,
            "20",
            vec![backend(1, vec![pod("a", "v1", true, &[(ANN_LATENCY_P95_MS, &p95_str)])])],
        )]);
        let totals = run(&plan(&snap, 1.0), 60, 1.0);
        let t = &totals["v1"];
        let mut cumulative = vec![0u64; LATENCY_BUCKETS.len() + 1];
        for &(value, n) in &t.latencies {
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                if value <= *le {
                    cumulative[i] += n;
                }
            }
            cumulative[LATENCY_BUCKETS.len()] += n;
        }
        assert_eq!(cumulative[LATENCY_BUCKETS.len()], t.requests());
        let q = histogram_quantile(0.95, &cumulative);
        let p95 = p95_ms / 1000.0;
        match LATENCY_BUCKETS.iter().position(|&le| p95 <= le) {
            Some(i) => {
                let lo = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
                let hi = LATENCY_BUCKETS[i];
                assert!(q > lo && q <= hi, "p95 {p95}: quantile {q} outside ({lo}, {hi}]");
            }
            None => assert_eq!(q, LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1]),
        }
        if interior.contains(&p95_ms) || on_bound.contains(&p95_ms) {
            assert!((q - p95).abs() <= 0.01 * p95, "p95 {p95}: quantile {q}");
        }
        // 95% of requests at or below the p95, the rest above it.
        let fast: u64 = t.latencies.iter().filter(|l| l.0 <= p95).map(|l| l.1).sum();
        assert_eq!(fast * 20, t.requests() * 19, "p95 {p95}");
    }
}

#[test]
fn duplicate_entry_points_first_wins() {
    let a = entry(EntryKind::Route, "10", vec![backend(1, vec![pod("a", "v1", true, &[])])]);
    let b = entry(EntryKind::Service, "99", vec![backend(1, vec![pod("b", "v2", true, &[])])]);
    let p = plan(&snapshot(vec![a, b]), 1.0);
    assert_eq!(p.series.len(), 1);
    assert_eq!(series(&p, "v1").rps, 10.0);
}
