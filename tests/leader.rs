//! Two operator replicas with leader election through a Lease: only the leader acts; when it is
//! killed, the other takes over within the Lease's duration and the release finishes.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use locall_operator::api::{LocallRelease, Phase};
use std::time::{Duration, Instant};
use support::*;

/// Reconciliations this operator has run (0 when it has run none).
async fn reconciles(metrics_addr: &str) -> f64 {
    scrape(metrics_addr, "controller_runtime_reconcile_total").await
}

#[tokio::test]
async fn only_the_leader_acts_and_a_killed_leader_hands_over() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "leader").await;
    let label = format!("leader-{ns}");
    let selector = format!("locall.io/operator={label}");
    let lease = format!("locall-{ns}");
    let args = ["--leader-elect", "--lease-name", lease.as_str(), "--lease-namespace", ns.as_str(), "--lease-seconds", "10"];
    let mut a = Operator::start_with(&format!("{label}-a"), &selector, &args, &[("POD_NAME", "replica-a")]);
    let holder = |leases: Api<Lease>, lease: String| async move { leases.get_opt(&lease).await.ok().flatten()?.spec?.holder_identity };
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    wait_for(Duration::from_secs(30), "replica-a to lead", || async {
        (holder(leases.clone(), lease.clone()).await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let mut b = Operator::start_with(&format!("{label}-b"), &selector, &args, &[("POD_NAME", "replica-b")]);

    let manifest = |version: &str| {
        format!(
            r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}, labels: {{locall.io/operator: {label}}}}}
spec:
  version: "{version}"
  replicas: 2
  template:
    spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}
  hooks: {{preDeploy: [{{name: tests}}]}}
  stages: [{{name: production, steps: [{{weight: 20, pause: 5s}}, {{weight: 60, pause: 5s}}, {{weight: 100}}]}}]
"#
        )
    };
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    let phase = |version: &'static str, p: Phase| {
        let api = api.clone();
        async move { api.get_opt("locall-api").await.ok()??.status.filter(|s| s.candidate_version == version && s.phase == p).map(|_| ()) }
    };
    apply_yaml(&client, &ns, &manifest("1.0.0")).await;
    wait_for(Duration::from_secs(120), "1.0.0 Succeeded", || phase("1.0.0", Phase::Succeeded)).await;
    assert!(reconciles(&a.metrics_addr).await > 0.0, "the leader reconciles");
    assert_eq!(reconciles(&b.metrics_addr).await, 0.0, "the standby does nothing");

    apply_yaml(&client, &ns, &manifest("2.0.0")).await;
    wait_for(Duration::from_secs(120), "2.0.0 in production", || phase("2.0.0", Phase::Production)).await;
    a.kill();
    let killed = Instant::now();
    wait_for(Duration::from_secs(30), "replica-b to lead", || async {
        (holder(leases.clone(), lease.clone()).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    let handover = killed.elapsed();
    println!("leader killed -> standby holds the Lease: {:.1} s", handover.as_secs_f64());
    assert!(handover <= Duration::from_secs(15), "handover took {handover:?}");
    wait_for(Duration::from_secs(120), "2.0.0 Succeeded under the new leader", || phase("2.0.0", Phase::Succeeded)).await;
    assert!(reconciles(&b.metrics_addr).await > 0.0);
    b.kill();
}
