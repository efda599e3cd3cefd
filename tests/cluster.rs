//! The local test cluster does what a real one would for the operator: nodes are Ready,
//! Deployments become Available, Jobs complete or fail on request, and Prometheus measures the
//! traffic the simulator makes from pod annotations.

mod support;

use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job, core::v1::Node};
use kube::api::{Api, ListParams};
use std::time::Duration;
use support::*;

#[tokio::test]
async fn at_least_three_ready_nodes() {
    let client = client().await;
    let nodes = Api::<Node>::all(client).list(&ListParams::default()).await.unwrap();
    let ready = nodes
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    assert!(ready >= 3, "{ready} Ready nodes");
    let server = client_version();
    assert!(server.contains("v1.34"), "the API server reports its real version: {server}");
}

fn client_version() -> String {
    let (_, out, _) = kubectl(&["version", "-o", "json"]);
    out
}

#[tokio::test]
async fn a_deployment_becomes_available_and_jobs_complete_or_fail_on_request() {
    let client = client().await;
    let ns = namespace(&client, "cluster").await;
    apply_yaml(
        &client,
        &ns,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: web:1}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: passes}
spec: {backoffLimit: 0, template: {spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: fails}
spec:
  backoffLimit: 0
  template:
    metadata: {labels: {pod-container-running-failed.stage.kwok.x-k8s.io: "true"}}
    spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}
"#,
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_for(Duration::from_secs(60), "web to be Available with 3 replicas", || async {
        let d = deployments.get("web").await.ok()?;
        let s = d.status?;
        let available = s.conditions?.iter().any(|c| c.type_ == "Available" && c.status == "True");
        (available && s.available_replicas == Some(3)).then_some(())
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let ended = |name: &'static str| {
        let jobs = jobs.clone();
        async move {
            let j = jobs.get(name).await.ok()?;
            let conds = j.status?.conditions?;
            conds.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True").map(|c| c.type_.clone())
        }
    };
    assert_eq!(wait_for(Duration::from_secs(90), "job passes to end", || ended("passes")).await, "Complete");
    assert_eq!(wait_for(Duration::from_secs(90), "job fails to end", || ended("fails")).await, "Failed");
}

#[tokio::test]
async fn prometheus_measures_the_error_rate_a_pod_annotation_asks_for() {
    let client = client().await;
    let ns = namespace(&client, "sim").await;
    apply_yaml(
        &client,
        &ns,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata:
      labels: {app: api, app.kubernetes.io/version: "3.0.0"}
      annotations: {sim.locall.io/error-rate: "0.08", sim.locall.io/latency-p95-ms: "2500"}
    spec: {containers: [{name: api, image: api:3}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, annotations: {sim.locall.io/rps: "100"}}
spec: {selector: {app: api}, ports: [{port: 8080}]}
"#,
    )
    .await;
    let series = format!(r#"http_requests_total{{namespace="{ns}",service="api",version="3.0.0"}}"#);
    wait_for(Duration::from_secs(90), "series for version 3.0.0", || async {
        let v = prom_query(&series).await;
        (!v.is_empty()).then_some(())
    })
    .await;
    // Wait until 20 s of samples exist, then compare the measured 5xx ratio with the annotation.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let q = format!(
        r#"sum(rate(http_requests_total{{namespace="{ns}",code=~"5.."}}[15s])) / sum(rate(http_requests_total{{namespace="{ns}"}}[15s]))"#
    );
    let ratio =
        wait_for(Duration::from_secs(30), "a 5xx ratio", || async { prom_query(&q).await.first().map(|s| s.1).filter(|v| v.is_finite()) })
            .await;
    assert!((0.06..=0.10).contains(&ratio), "measured 5xx ratio {ratio}, annotation asked for 0.08");
    let p95 = format!(r#"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{namespace="{ns}"}}[15s])))"#);
    let p95 = prom_query(&p95).await.first().map(|s| s.1).unwrap_or(f64::NAN);
    assert!((2.0..=3.0).contains(&p95), "measured p95 {p95}s, annotation asked for 2.5s");
}
