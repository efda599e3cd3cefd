//! Prometheus stopped in the middle of a release: the release holds where it is, says why, never
//! promotes on missing data, and resumes once Prometheus is back. (Its own test binary: it stops
//! the Prometheus that the other suites share.)

mod support;

use kube::api::Api;
use locall_operator::api::{LocallRelease, Phase};
use std::time::Duration;
use support::*;

fn manifest(ns: &str, version: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}}}
spec:
  version: "{version}"
  replicas: 2
  service: {{port: 8080, annotations: {{sim.locall.io/rps: "100"}}}}
  template:
    spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}
  stages: [{{name: production, steps: [{{weight: 30, pause: 2s}}, {{weight: 100}}]}}]
  traffic: {{method: GatewayAPI, gateway: {{name: public}}}}
  analysis:
    interval: 1s
    metrics:
    - name: error-rate
      query: 'sum(rate(http_requests_total{{namespace="{{{{namespace}}}}",version="{{{{version}}}}",code=~"5.."}}[10s])) / sum(rate(http_requests_total{{namespace="{{{{namespace}}}}",version="{{{{version}}}}"}}[10s]))'
      success: {{op: "<", value: 0.02}}
      rollback: {{op: ">", value: 0.05}}
"#
    )
}

fn prometheus_pid() -> Option<i32> {
    std::fs::read_to_string(cluster().dir.join("pids/prometheus")).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn the_release_holds_while_prometheus_is_down_and_resumes_when_it_returns() {
    shared_operator();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "outage").await;
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    let status = || async { api.get_opt("locall-api").await.ok().flatten().and_then(|lr| lr.status) };
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0")).await;
    wait_for(Duration::from_secs(120), "1.0.0 Succeeded", || async { status().await.filter(|s| s.phase == Phase::Succeeded) }).await;
    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0")).await;
    wait_for(Duration::from_secs(120), "2.0.0 at its first step", || async {
        status().await.filter(|s| s.candidate_version == "2.0.0" && s.weight == 30 && s.step_started_at.is_some())
    })
    .await;

    // Stop Prometheus.
    let pid = prometheus_pid().expect("Prometheus pid");
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let held = wait_for(Duration::from_secs(30), "the release to hold on the gates", || async {
        status().await.filter(|s| s.message.contains("query failed") || s.gates.iter().any(|g| g.message.contains("query failed")))
    })
    .await;
    // It holds for as long as Prometheus is away, with a condition that says why.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = status().await.unwrap();
        assert_eq!((s.phase, s.weight), (Phase::Production, 30), "never promotes on missing data: {}", s.message);
    }
    let s = status().await.unwrap();
    let reconciling = s.conditions.iter().find(|c| c.type_ == "Reconciling").unwrap();
    assert_eq!((reconciling.status.as_str(), reconciling.reason.as_str()), ("True", "GateHold"), "{reconciling:?}");
    assert!(reconciling.message.contains("query failed"), "{}", reconciling.message);
    assert_eq!(held.candidate_version, "2.0.0");

    // Prometheus back: the release goes on and finishes.
    let up = std::process::Command::new(repo().join("tests/cluster/up")).env("LOCALL_CLUSTER_DIR", &cluster().dir).status().unwrap();
    assert!(up.success());
    let done = wait_for(Duration::from_secs(120), "2.0.0 Succeeded", || async {
        status().await.filter(|s| s.candidate_version == "2.0.0" && s.phase == Phase::Succeeded)
    })
    .await;
    assert!(done.gates.iter().all(|g| g.verdict == locall_operator::api::Verdict::Pass), "{:?}", done.gates);
}
