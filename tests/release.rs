//! The release engine end to end on the local cluster: real API server, Deployment and Job
//! controllers, kwok pods, the operator binary. Given a manifest, when it is applied, then the
//! release ends where a user expects, and status tells the story.

mod support;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{
    api::{Api, DynamicObject, ListParams, Patch, PatchParams},
    Client,
};
use locall_operator::api::{JobKind, JobState, LocallRelease, Phase};
use std::{collections::BTreeMap, time::Duration};
use support::*;

/// A release of `version` into `<ns>-stg` (staging) and `<ns>` (production).
fn manifest(ns: &str, version: &str, method: &str, extra_prod: &str, migrate_fails: bool) -> String {
    let traffic = if method == "gateway" { "{method: GatewayAPI, gateway: {name: public}}" } else { "{method: ReplicaRatio}" };
    let fail = if migrate_fails { r#", podLabels: {pod-container-running-failed.stage.kwok.x-k8s.io: "true"}"# } else { "" };
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}}}
spec:
  version: "{version}"
  replicas: 2
  service: {{port: 8080}}
  template:
    spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}
  preflight:
    secrets: [{{name: locall-db, keys: [url]}}]
  hooks:
    preDeploy: [{{name: tests}}, {{name: cache-clear}}]
    migration:
      changesSchema: true
      backup: {{command: [backup]}}
      migrate: {{command: [migrate]{fail}}}
      restore: {{command: [restore]}}
  stages:
  - {{name: staging, namespace: {ns}-stg, replicas: 1, verify: [{{name: e2e}}], steps: [{{weight: 100}}]}}
  - {{name: production, steps: [{{weight: 10, pause: 3s}}, {{weight: 50, pause: 3s}}, {{weight: 100}}]{extra_prod}}}
  traffic: {traffic}
"#
    )
}

async fn setup(prefix: &str) -> (Client, String) {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, prefix).await;
    let stg = format!("{ns}-stg");
    stage_namespace(&stg, &ns);
    for n in [&ns, &stg] {
        let (ok, _, err) = kubectl(&["-n", n, "create", "secret", "generic", "locall-db", "--from-literal=url=postgres://db"]);
        assert!(ok, "{err}");
    }
    (client, ns)
}

async fn release(client: &Client, ns: &str) -> Option<LocallRelease> {
    Api::<LocallRelease>::namespaced(client.clone(), ns).get_opt("locall-api").await.ok().flatten()
}

/// Waits until the release reaches `phase` for its current generation.
async fn wait_phase(client: &Client, ns: &str, phase: Phase, secs: u64) -> LocallRelease {
    wait_for(Duration::from_secs(secs), &format!("{ns}/locall-api to reach {phase}"), || async {
        let lr = release(client, ns).await?;
        let st = lr.status.as_ref()?;
        (st.phase == phase && st.observed_generation == lr.metadata.generation).then_some(lr)
    })
    .await
}

async fn candidate_route_weights(client: &Client, ns: &str) -> Option<BTreeMap<String, i64>> {
    let ar = locall_operator::traffic::gateway::httproute_resource();
    let r = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar).get_opt("locall-api").await.ok()??;
    let refs = r.data["spec"]["rules"][0]["backendRefs"].as_array()?.clone();
    Some(refs.iter().map(|b| (b["name"].as_str().unwrap_or_default().to_string(), b["weight"].as_i64().unwrap_or(1))).collect())
}

#[tokio::test]
async fn v1_then_v2_succeed_and_v2_moves_route_weights_through_the_steps() {
    shared_operator();
    let (client, ns) = setup("rel-gw").await;
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0", "gateway", "", false)).await;
    let v1 = wait_phase(&client, &ns, Phase::Succeeded, 120).await;
    let st = v1.status.unwrap();
    assert!(st.stable.as_ref().is_some_and(|s| s.version == "1.0.0"));
    assert_eq!(st.jobs.len(), 5, "tests, cache-clear, backup, migrate, e2e: {:?}", st.jobs);
    assert!(st.jobs.iter().all(|j| j.state == JobState::Succeeded && j.reason == "Complete"));

    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0", "gateway", "", false)).await;
    // Watch the production HTTPRoute while v2 rolls out: the candidate's weight climbs the steps.
    let mut seen: Vec<i64> = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(w) = candidate_route_weights(&client, &ns).await {
            let total: i64 = w.values().sum();
            let stable_rev = st.stable.as_ref().unwrap().revision.clone();
            let cand: i64 = w.iter().filter(|(k, _)| !k.ends_with(&stable_rev)).map(|(_, v)| *v).sum();
            let pct = if total == 0 { 0 } else { 100 * cand / total };
            if seen.last() != Some(&pct) {
                seen.push(pct);
            }
        }
        let lr = release(&client, &ns).await.unwrap();
        if lr.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded && s.candidate_version == "2.0.0") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "v2 did not finish: {:?}", lr.status.map(|s| s.message));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(seen, vec![0, 10, 50, 100], "candidate weight on the production HTTPRoute over time");

    let lr = release(&client, &ns).await.unwrap();
    let st = lr.status.unwrap();
    assert_eq!(st.stable.unwrap().version, "2.0.0");
    assert!(locall_operator::api::conditions::is_true(&st.conditions, "Ready"));
    // Only v2 remains deployed; the old revision's Service is gone too.
    let deps = Api::<Deployment>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
    assert_eq!(deps.items.len(), 1);
    let svcs = Api::<Service>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
    assert_eq!(svcs.items.len(), 1, "{:?}", svcs.items.iter().map(|s| s.metadata.name.clone()).collect::<Vec<_>>());

    // What a user types.
    let (ok, out, err) = kubectl(&["-n", &ns, "get", "lr"]);
    assert!(ok, "{err}");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "VERSION", "STAGE", "PHASE", "WEIGHT", "COMPONENTS", "READY", "AGE"]);
    // A release of one template leaves COMPONENTS empty.
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..6], ["locall-api", "2.0.0", "production", "Succeeded", "100", "True"]);
    let (ok, _, err) = kubectl(&["-n", &ns, "wait", "--for=condition=Ready", "lr/locall-api", "--timeout=10s"]);
    assert!(ok, "kubectl wait: {err}");
}

#[tokio::test]
async fn replica_ratio_scales_the_candidate_and_pins_the_service_at_100() {
    shared_operator();
    let (client, ns) = setup("rel-rr").await;
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0", "replicas", "", false)).await;
    wait_phase(&client, &ns, Phase::Succeeded, 120).await;
    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0", "replicas", "", false)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let mut seen_ratio = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let list = deployments.list(&ListParams::default()).await.unwrap();
        let svc = services.get_opt("locall-api").await.unwrap();
        let pinned = svc.and_then(|s| s.spec?.selector?.get("locall.io/revision").cloned());
        if list.items.len() == 2 && pinned.is_none() {
            seen_ratio = true; // both versions behind one Service: the replica-ratio steps
        }
        let lr = release(&client, &ns).await.unwrap();
        if lr.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded && s.candidate_version == "2.0.0") {
            assert_eq!(pinned.as_deref(), Some(lr.status.as_ref().unwrap().revision.as_str()), "Service pinned to v2 at 100%");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "v2 did not finish");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(seen_ratio, "during the steps the Service selected both versions");

    // Deleting the release's namespace: the release goes (its finalizer lets the namespace go)
    // and so do the children of its staging copy in the other namespace, which stays and which
    // no owner reference reaches.
    let stg = format!("{ns}-stg");
    let (ok, _, err) = kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    assert!(ok, "{err}");
    wait_for(Duration::from_secs(90), &format!("namespace {ns} to be gone"), || async {
        let (ok, out, _) = kubectl(&["get", "namespace", &ns, "-o", "name", "--ignore-not-found"]);
        (ok && out.trim().is_empty()).then_some(())
    })
    .await;
    wait_for(Duration::from_secs(30), &format!("the finalizer to remove the children in {stg}"), || async {
        let (ok, out, _) = kubectl(&["-n", &stg, "get", "deployments,jobs,services", "-o", "name"]);
        (ok && out.trim().is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_failing_migration_stops_the_release_and_leaves_production_untouched() {
    shared_operator();
    let (client, ns) = setup("rel-mig").await;
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0", "gateway", "", false)).await;
    let v1 = wait_phase(&client, &ns, Phase::Succeeded, 120).await;
    let stable_rev = v1.status.unwrap().revision;
    apply_yaml(&client, &ns, &manifest(&ns, "2.1.0", "gateway", "", true)).await;
    let lr = wait_phase(&client, &ns, Phase::Failed, 120).await;
    let st = lr.status.unwrap();
    let c = |t: &str| st.conditions.iter().find(|c| c.type_ == t).map(|c| c.status.clone());
    assert_eq!((c("Stalled").as_deref(), c("Ready").as_deref()), (Some("True"), Some("False")));
    let migrate = st.jobs.iter().find(|j| j.kind == JobKind::Migrate).expect("migrate job recorded");
    assert_eq!(migrate.state, JobState::Failed);
    assert!(!migrate.reason.is_empty(), "the Job's reason is recorded");
    assert!(st.message.contains(&migrate.job_name), "status names the Job: {}", st.message);
    assert!(st.message.contains(&migrate.reason), "and its reason: {}", st.message);
    let w = candidate_route_weights(&client, &ns).await.unwrap();
    assert_eq!(w, BTreeMap::from([(format!("locall-api-{stable_rev}"), 100)]), "production traffic untouched");
    assert_eq!(st.stable.unwrap().version, "1.0.0");
    assert!(st.jobs.iter().all(|j| j.kind != JobKind::Verify), "nothing after the migration ran");
}

#[tokio::test]
async fn production_waits_for_approval_and_records_who_and_when() {
    shared_operator();
    let (client, ns) = setup("rel-appr").await;
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0", "gateway", ", approval: true", false)).await;
    let lr = wait_phase(&client, &ns, Phase::AwaitingApproval, 120).await;
    assert_eq!(lr.status.as_ref().unwrap().stage, "production");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(release(&client, &ns).await.unwrap().status.unwrap().phase, Phase::AwaitingApproval, "it keeps waiting");
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"metadata": {"annotations": {"locall.io/approve": r#"{"stage":"production","version":"1.0.0","by":"alice@locall.io"}"#}}});
    api.patch("locall-api", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let lr = wait_phase(&client, &ns, Phase::Succeeded, 120).await;
    let a = &lr.status.unwrap().approvals[0];
    assert_eq!((a.stage.as_str(), a.by.as_str(), a.source.as_str()), ("production", "alice@locall.io", "annotation"));
    assert!(a.at >= before);
}

#[tokio::test]
async fn an_on_demand_rollback_puts_traffic_back_and_restores_the_database() {
    shared_operator();
    let (client, ns) = setup("rel-manual").await;
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0", "gateway", "", false)).await;
    let v1 = wait_phase(&client, &ns, Phase::Succeeded, 120).await;
    let stable_rev = v1.status.unwrap().revision;
    // A long pause at the first production step, to act while traffic is split.
    let slow = manifest(&ns, "2.0.0", "gateway", "", false).replace("{weight: 10, pause: 3s}", "{weight: 10, pause: 10m}");
    apply_yaml(&client, &ns, &slow).await;
    wait_for(Duration::from_secs(120), "2.0.0 at 10% in production", || async {
        let st = release(&client, &ns).await?.status?;
        (st.candidate_version == "2.0.0" && st.phase == Phase::Production && st.weight == 10 && st.step_started_at.is_some()).then_some(())
    })
    .await;
    let (ok, _, err) = kubectl(&[
        "-n",
        &ns,
        "annotate",
        "--overwrite",
        "lr/locall-api",
        r#"locall.io/request={"action":"rollback","id":"r1","by":"oncall@locall.io"}"#,
    ]);
    assert!(ok, "{err}");
    let lr = wait_phase(&client, &ns, Phase::RolledBack, 60).await;
    let st = lr.status.unwrap();
    let f = st.failure.unwrap();
    assert_eq!(f.reason, locall_operator::api::FailureReason::ManualRollback);
    assert!(f.message.contains("oncall@locall.io"), "{}", f.message);
    assert!(f.database_restored_at.is_some(), "the migration changed the schema: restored");
    let w = candidate_route_weights(&client, &ns).await.unwrap();
    assert_eq!(w.get(&format!("locall-api-{stable_rev}")), Some(&100));
    assert_eq!(w.values().sum::<i64>(), 100, "nothing on the rolled-back version: {w:?}");
    assert_eq!(lr.spec.version, "2.0.0", "the spec is untouched");
}
