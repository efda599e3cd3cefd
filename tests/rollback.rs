//! Metric gates and the rollback plan on the local cluster, with real Prometheus scraping the
//! traffic simulator: a bad version is a manifest (a pod annotation), not test code.

mod support;

use k8s_openapi::api::batch::v1::Job;
use kube::{
    api::{Api, ListParams},
    Client,
};
use locall_operator::api::{conditions, JobKind, LocallRelease, Phase};
use std::time::Duration;
use support::*;

/// A production release with metric gates; `annotations` make the version good or bad.
fn manifest(ns: &str, version: &str, annotations: &str, migration: bool, stages: &str, go_live: &str) -> String {
    let migration = if migration {
        "\n    migration: {changesSchema: true, backup: {command: [backup]}, migrate: {command: [migrate]}, restore: {command: [restore]}}"
    } else {
        ""
    };
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
    metadata: {{annotations: {{{annotations}}}}}
    spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}
  hooks:
    preDeploy: [{{name: tests}}]{migration}
  stages: {stages}
  traffic: {{method: GatewayAPI, gateway: {{name: public}}}}
  analysis:
    interval: 2s
    metrics:
    - name: error-rate
      query: '{ERROR_RATIO}'
      success: {{op: "<", value: 0.02}}
      rollback: {{op: ">", value: 0.05}}
      consecutive: 2
  rollback:
    verify: [{{name: smoke}}]{go_live}
  notifications:
  - {{name: oncall, format: Slack, urlSecret: {{name: hooks, key: slack}}, events: [RolledBack]}}
  - {{name: events, format: CloudEvents, urlSecret: {{name: hooks, key: ce}}}}
"#
    )
}

const TWO_STAGES: &str = "[{name: staging, namespace: NS-stg, replicas: 1, steps: [{weight: 100, pause: 4s}]}, {name: production, steps: [{weight: 20, pause: 4s}, {weight: 100}]}]";

async fn setup(prefix: &str, receiver: &Receiver) -> (Client, String) {
    shared_operator();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, prefix).await;
    stage_namespace(&format!("{ns}-stg"), &ns);
    let (ok, _, err) = kubectl(&[
        "-n",
        &ns,
        "create",
        "secret",
        "generic",
        "hooks",
        &format!("--from-literal=slack={}", receiver.url),
        &format!("--from-literal=ce={}", receiver.url),
    ]);
    assert!(ok, "{err}");
    (client, ns)
}

async fn wait_phase(client: &Client, ns: &str, version: &str, phase: Phase, secs: u64) -> LocallRelease {
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), ns);
    wait_for(Duration::from_secs(secs), &format!("{ns} {version} to reach {phase}"), || async {
        let lr = api.get_opt("locall-api").await.ok()??;
        let st = lr.status.as_ref()?;
        (st.phase == phase && st.candidate_version == version).then_some(lr)
    })
    .await
}

/// The stable revision's weight and the sum of every other backend's.
async fn split(client: &Client, ns: &str, stable_rev: &str) -> (i64, i64) {
    let r = route_weights(client, ns).await;
    let stable = r.get(&format!("locall-api-{stable_rev}")).copied().unwrap_or(0);
    (stable, r.values().sum::<i64>() - stable)
}

async fn restore_jobs(client: &Client, ns: &str) -> usize {
    let jobs = Api::<Job>::namespaced(client.clone(), ns).list(&ListParams::default().labels("locall.io/job-kind=Restore")).await.unwrap();
    jobs.items.len()
}

#[tokio::test]
async fn a_bad_release_is_rolled_back_with_its_database_and_the_story_is_told() {
    let receiver = Receiver::start().await;
    let (client, ns) = setup("rb-bad", &receiver).await;
    let stages = TWO_STAGES.replace("NS", &ns);
    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0", "", true, &stages, "")).await;
    let v2 = wait_phase(&client, &ns, "2.0.0", Phase::Succeeded, 180).await;
    let stable_rev = v2.status.unwrap().revision;
    apply_yaml(&client, &ns, &manifest(&ns, "3.0.0", r#"sim.locall.io/error-rate: "0.08""#, true, &stages, "")).await;
    let lr = wait_phase(&client, &ns, "3.0.0", Phase::RolledBack, 180).await;
    let st = lr.status.unwrap();
    println!("{}", serde_json::to_string_pretty(&st.failure).unwrap());

    // Traffic: all of it on the previous version, in every stage.
    assert_eq!(split(&client, &ns, &stable_rev).await, (100, 0));
    assert_eq!(split(&client, &format!("{ns}-stg"), &stable_rev).await, (100, 0));
    // Database: restored exactly once, from the backup taken before the migration.
    assert_eq!(restore_jobs(&client, &ns).await, 1);
    let f = st.failure.clone().unwrap();
    assert!(f.database_restored_at.is_some() && f.traffic_restored_at.is_some());
    assert_eq!(st.backup_id.as_deref(), Some(format!("locall-api-{}-{}-backup", st.revision, st.sequence).as_str()));
    // The investigation: which metric, where, which values, when.
    let m = f.metric.clone().expect("breaching metric recorded");
    assert_eq!(m.metric, "error-rate");
    assert_eq!(m.threshold, "> 0.05");
    assert!(m.values.len() >= 2 && m.values.iter().all(|v| *v > 0.05), "{:?}", m.values);
    let reaction = f.traffic_restored_at.unwrap() - m.first_breach_at;
    println!("first breaching measurement to traffic restored: {} ms", reaction.num_milliseconds());
    assert!(conditions::is_true(&st.conditions, "Stalled") && !conditions::is_true(&st.conditions, "Ready"));
    assert!(conditions::is_true(&st.conditions, "RollbackVerified"), "{:?}", st.conditions);
    assert!(st.jobs.iter().any(|j| j.kind == JobKind::Verify && j.stage == "rollback"));
    assert_eq!(st.stable.unwrap().version, "2.0.0");
    // The spec is untouched and the failed version is kept, scaled to zero.
    assert_eq!(lr.spec.version, "3.0.0");
    let failed_in = if st.failure.as_ref().unwrap().stage == "staging" { format!("{ns}-stg") } else { ns.clone() };
    let dep = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &failed_in)
        .get(&format!("locall-api-{}", st.revision))
        .await
        .unwrap();
    assert_eq!(dep.spec.unwrap().replicas, Some(0));
    // Notifications: Slack-compatible and CloudEvents bodies arrived.
    let got = wait_for(Duration::from_secs(20), "notifications", || async {
        let r = receiver.received.lock().unwrap().clone();
        let slack = r.iter().any(|b| b["text"].as_str().is_some_and(|t| t.contains("RolledBack")));
        let ce = r.iter().any(|b| b["type"] == "io.locall.release.rolledback" && b["specversion"] == "1.0");
        (slack && ce).then_some(r)
    })
    .await;
    assert!(got.iter().any(|b| b["type"] == "io.locall.release.succeeded"), "v2's success was announced too");
}

#[tokio::test]
async fn a_bad_release_without_a_migration_restores_no_database() {
    let receiver = Receiver::start().await;
    let (client, ns) = setup("rb-nomig", &receiver).await;
    let stages = TWO_STAGES.replace("NS", &ns);
    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0", "", false, &stages, "")).await;
    wait_phase(&client, &ns, "2.0.0", Phase::Succeeded, 180).await;
    apply_yaml(&client, &ns, &manifest(&ns, "3.0.0", r#"sim.locall.io/error-rate: "0.08""#, false, &stages, "")).await;
    let lr = wait_phase(&client, &ns, "3.0.0", Phase::RolledBack, 180).await;
    assert_eq!(restore_jobs(&client, &ns).await, 0);
    assert!(lr.status.unwrap().failure.unwrap().database_restored_at.is_none());
}

#[tokio::test]
async fn a_degradation_after_100_percent_is_caught_by_a_go_live_window() {
    let receiver = Receiver::start().await;
    let (client, ns) = setup("rb-golive", &receiver).await;
    let stages = "[{name: production, steps: [{weight: 50, pause: 4s}, {weight: 100}]}]";
    let go_live = "\n  goLive: {windows: [{name: 0-15m, duration: 5s, interval: 1s}, {name: 15m-2h, duration: 10s, interval: 1s}]}";
    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0", "", true, stages, go_live)).await;
    let v2 = wait_phase(&client, &ns, "2.0.0", Phase::Succeeded, 180).await;
    let stable_rev = v2.status.unwrap().revision;
    // Healthy while it shares traffic, 20% errors once it takes all of it.
    apply_yaml(&client, &ns, &manifest(&ns, "3.0.0", r#"sim.locall.io/error-rate-at-full: "0.2""#, true, stages, go_live)).await;
    let lr = wait_phase(&client, &ns, "3.0.0", Phase::RolledBack, 180).await;
    let st = lr.status.unwrap();
    let m = st.failure.as_ref().unwrap().metric.clone().unwrap();
    assert!(m.context.starts_with("go-live window"), "caught after 100% by a window: {}", m.context);
    assert_eq!(split(&client, &ns, &stable_rev).await, (100, 0));
    assert_eq!(restore_jobs(&client, &ns).await, 1);
}

#[tokio::test]
async fn a_receiver_that_is_down_neither_blocks_the_rollback_nor_loses_the_notification() {
    // The receiver's port is reserved, then left closed: every delivery fails until it opens.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let placeholder = Receiver { url: url.clone(), received: Default::default(), down: Default::default() };
    let (client, ns) = setup("rb-hookdown", &placeholder).await;
    let stages = TWO_STAGES.replace("NS", &ns);
    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0", "", false, &stages, "")).await;
    wait_phase(&client, &ns, "2.0.0", Phase::Succeeded, 180).await;
    apply_yaml(&client, &ns, &manifest(&ns, "3.0.0", r#"sim.locall.io/error-rate: "0.08""#, false, &stages, "")).await;
    // The rollback completes while nothing listens.
    let lr = wait_phase(&client, &ns, "3.0.0", Phase::RolledBack, 180).await;
    assert!(lr.status.unwrap().failure.unwrap().traffic_restored_at.is_some());
    // The receiver comes up: the retried notification arrives.
    let receiver = Receiver::start_on(port).await;
    wait_for(Duration::from_secs(40), "the retried RolledBack notification", || async {
        let r = receiver.received.lock().unwrap().clone();
        r.iter()
            .any(|b| b["type"] == "io.locall.release.rolledback" || b["text"].as_str().is_some_and(|t| t.contains("RolledBack")))
            .then_some(())
    })
    .await;
}
